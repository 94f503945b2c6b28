"""The launch harness: start verl's trainer (`python -m srpo_verl.main_ppo ...`) as a subprocess on a
tiny CPU run and read back its metrics and checkpoints.

Used by the demo, the end-to-end tests and the scripts (benchmarks, kill/resume trials), never by
the plugin itself: one place that knows how a launch is started (its own process session, so Ray's
processes can be killed with it), where its per-step metrics go (verl's `file` logger,
VERL_FILE_LOGGER_PATH), how a checkpoint directory is read, and which Hydra overrides make a small
`platform=cpu` run (`tiny_cpu_overrides`, the one builder every CPU launch starts from).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field


@dataclass
class Launch:
    returncode: int | str  # "timeout" or "killed" when it did not end by itself
    log: str
    steps: dict[int, dict] = field(default_factory=dict)  # step -> verl metrics of that step
    wall_s: float = 0.0


def kill_session(sid: int) -> None:
    """SIGKILL every process of a launch's session: the driver, Ray's gcs/raylet and its workers."""
    ps = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    for line in ps.splitlines():
        pid, session = map(int, line.split())
        if session == sid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def read_metrics(path: str) -> dict[int, dict]:
    """verl's file logger: one JSON line {"step": s, "data": {...}} per step."""
    steps: dict[int, dict] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    steps[record["step"]] = record["data"]
    return steps


def launch(
    workdir: str,
    name: str,
    overrides: list[str],
    *,
    timeout_s: float = 600,
    kill_when=None,
    env: dict | None = None,
    echo: bool = False,
) -> Launch:
    """Run the trainer with Hydra `overrides`; logs go to WORKDIR/NAME.log, metrics to NAME.jsonl.

    kill_when(steps) -> bool is polled every second; when it returns True the whole session is
    SIGKILLed (fault-injection runs). echo=True also copies the log to stdout (visible progress).
    """
    metrics_path = os.path.join(workdir, f"{name}.jsonl")
    log_path = os.path.join(workdir, f"{name}.log")
    if os.path.exists(metrics_path):
        os.remove(metrics_path)
    run_env = {k: v for k, v in os.environ.items() if k not in ("SRPO_VERL_PLATFORM", "VERL_PLATFORM")}
    run_env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VERL_FILE_LOGGER_PATH=metrics_path)
    run_env.update(env or {})
    start = time.time()
    returncode: int | str
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "srpo_verl.main_ppo", *overrides],
            cwd=workdir,
            env=run_env,
            stdout=subprocess.PIPE if echo else log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
        )
        if echo:
            _tee(proc, log)
        returncode = _wait(proc, timeout_s, kill_when, metrics_path)
    with open(log_path) as f:
        text = f.read()
    return Launch(returncode=returncode, log=text, steps=read_metrics(metrics_path), wall_s=time.time() - start)


def _tee(proc, log) -> None:
    import threading

    def pump():
        for line in proc.stdout:
            log.write(line)
            log.flush()
            sys.stdout.write(line)
            sys.stdout.flush()

    threading.Thread(target=pump, daemon=True).start()


def _wait(proc, timeout_s, kill_when, metrics_path) -> int | str:
    deadline = time.time() + timeout_s
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
        if kill_when is not None and kill_when(read_metrics(metrics_path)):
            kill_session(proc.pid)
            proc.wait()
            return "killed"
        if time.time() > deadline:
            kill_session(proc.pid)
            proc.wait()
            return "timeout"


def launch_tiny(workdir, name, model, data, ckpt, *, steps, save_freq, extra=(), timeout_s=480, **overrides) -> Launch:
    """A launch on the tiny model (`tiny_cpu_overrides`, then `extra`) that must exit 0."""
    args = tiny_cpu_overrides(model, data, ckpt, total_steps=steps, save_freq=save_freq, experiment=name, **overrides)
    result = launch(workdir, name, [*args, *extra], timeout_s=timeout_s)
    if result.returncode != 0:
        raise RuntimeError(f"launch {name} ended with {result.returncode}:\n{result.log[-6000:]}")
    return result


def latest_checkpoint(ckpt_dir: str) -> int | None:
    path = os.path.join(ckpt_dir, "latest_checkpointed_iteration.txt")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return int(f.read().strip())


def checkpoint_weights(ckpt_dir: str, step: int) -> dict[str, dict]:
    """{"student": {name: tensor}, "teacher": {name: tensor} or {}} of a single-rank checkpoint."""
    import torch

    actor = os.path.join(ckpt_dir, f"global_step_{step}", "actor")
    student = torch.load(os.path.join(actor, "model_world_size_1_rank_0.pt"), map_location="cpu", weights_only=False)
    student = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in student.items()}
    teacher_path = os.path.join(actor, "srpo_ema_teacher", "rank_0.pt")
    teacher = torch.load(teacher_path, map_location="cpu") if os.path.exists(teacher_path) else {}
    return {"student": student, "teacher": teacher}


def tiny_cpu_overrides(
    model_path: str,
    data: dict,
    ckpt_dir: str,
    *,
    algorithm: str = "srpo",
    total_steps: int,
    save_freq: int = -1,
    batch_size: int = 8,
    n: int = 4,
    micro_batch_size: int = 16,
    max_prompt_length: int = 32,
    max_response_length: int = 8,
    reward_file: str | None = None,
    reward: str = "compute_score",
    lr: float = 1e-3,
    warmup_steps: int = 0,
    seed: int = 0,
    rollout_seed: int | None = None,
    max_teacher_prompt_length: int = 256,
    project: str = "srpo_verl",
    experiment: str = "cpu",
) -> list[str]:
    """Hydra overrides for a small run of `algorithm` on CPU (platform=cpu), one optimiser step per batch.

    The reward defaults to the addition task's exact match (`srpo_verl/demo/addition.py`). The
    teacher-prompt budget (SRPO and SDPO only) defaults to 256 tokens: the tiny model's character
    tokenizer spells the teacher prompt out (~85 tokens for the addition questions).
    """
    if reward_file is None:
        from srpo_verl.demo import addition

        reward_file = addition.__file__
    overrides = [
        f"algorithm={algorithm}",
        "platform=cpu",
        f"actor_rollout_ref.model.path={model_path}",
        f"data.train_files={data['train']}",
        f"data.val_files={data['val']}",
        f"data.train_batch_size={batch_size}",
        f"data.max_prompt_length={max_prompt_length}",
        f"data.max_response_length={max_response_length}",
        f"data.seed={seed}",
        f"actor_rollout_ref.rollout.n={n}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch_size}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro_batch_size}",
        f"actor_rollout_ref.actor.optim.lr={lr}",
        f"actor_rollout_ref.actor.optim.lr_warmup_steps={warmup_steps}",
        f"reward.custom_reward_function.path={reward_file}",
        f"reward.custom_reward_function.name={reward}",
        f"trainer.total_training_steps={total_steps}",
        f"trainer.save_freq={save_freq}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={ckpt_dir}",
        f"trainer.project_name={project}",
        f"trainer.experiment_name={experiment}",
    ]
    if rollout_seed is not None:
        overrides.append(f"actor_rollout_ref.rollout.seed={rollout_seed}")
    if algorithm != "grpo":
        overrides.append(f"algorithm.srpo.max_teacher_prompt_length={max_teacher_prompt_length}")
    return overrides
