"""Launch verl's trainer (`python -m srpo_verl.main_ppo ...`) as a subprocess and read its metrics.

Used by the end-to-end tests, the demo, the benchmarks and the kill/resume harness: one place
that knows how a launch is started (its own process session, so Ray's processes can be killed
with it), where its per-step metrics go (verl's `file` logger, VERL_FILE_LOGGER_PATH) and how a
checkpoint directory is read.
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
    reward: str = "compute_score",
    lr: float = 1e-3,
    seed: int = 0,
    experiment: str = "cpu",
) -> list[str]:
    """Hydra overrides for a tiny-model run of `algorithm` on CPU (platform=cpu) on the addition task.

    The SRPO teacher pass works on packed sequences (use_remove_padding=True); the teacher prompt
    of the character-level tokenizer is long, hence its 256-token budget.
    """
    from srpo_verl.demo import addition

    return [
        f"algorithm={algorithm}",
        "platform=cpu",
        f"actor_rollout_ref.model.path={model_path}",
        "actor_rollout_ref.model.use_remove_padding=True",
        f"data.train_files={data['train']}",
        f"data.val_files={data['val']}",
        f"data.train_batch_size={batch_size}",
        "data.max_prompt_length=32",
        "data.max_response_length=8",
        f"data.seed={seed}",
        f"actor_rollout_ref.rollout.n={n}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro_batch_size}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro_batch_size}",
        f"actor_rollout_ref.actor.optim.lr={lr}",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
        f"reward.custom_reward_function.path={addition.__file__}",
        f"reward.custom_reward_function.name={reward}",
        f"trainer.total_training_steps={total_steps}",
        f"trainer.save_freq={save_freq}",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.logger=[console,file]",
        f"trainer.default_local_dir={ckpt_dir}",
        "trainer.project_name=srpo_verl",
        f"trainer.experiment_name={experiment}",
    ] + (["algorithm.srpo.max_teacher_prompt_length=256"] if algorithm != "grpo" else [])
