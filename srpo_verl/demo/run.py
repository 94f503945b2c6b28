"""Run methods x seeds of the CPU demo through verl's trainer, then evaluate the saved weights.

    python -m srpo_verl.demo.run --out outputs/demo --methods srpo --seeds 0 --steps 40
    python -m srpo_verl.demo.run --out outputs/compare --methods grpo,sdpo,srpo,srpo_no_dw --seeds 0,1,2

Every run starts from the same warm start (warm_start.py, cached), trains on the same data
(addition.py) with the same settings except `algorithm=<method>`, through
`python -m srpo_verl.main_ppo ... platform=cpu` (the launch harness, harness.py). It saves a checkpoint every
`--eval-every` steps; after the launch each checkpoint's student is scored by evaluate.py on the
256 held-out prompts (greedy, sampled, teacher-prompted) and deleted. Step 0 is the warm start.

Per run, OUT/runs/<method>_s<seed>/ holds
    train.jsonl  verl's per-step metrics (file logger: {"step", "data"})
    train.log    the trainer's console
    eval.jsonl   {"step", "train_s", "greedy_acc", "sampled_acc", "hinted_acc", ...} per checkpoint
    run.json     the run's settings, Hydra overrides, return code and timings
`train_s` is the trainer's own time up to that step: the sum of verl's timing_s/step minus its
checkpoint time (start-up, checkpointing and evaluation are excluded and reported apart). A run
whose run.json records success with the same settings is skipped, so an interrupted comparison
resumes. `--report` (default on) writes OUT/report.md and the PNGs (report.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

METHODS = ("grpo", "sdpo", "srpo", "srpo_no_dw")


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What every method shares. One optimiser step per batch for every method (as SRPO's paper
    runs SRPO and SDPO); one learning rate for all methods so that only the objective differs
    (the paper's per-method rates were tuned for Qwen3-8B, not a 1M-parameter model)."""

    steps: int = 30
    eval_every: int = 10
    # 8 prompts x 8 rollouts per step.
    batch_size: int = 8
    n: int = 8
    # lr 1e-4 without warmup: 3e-4 wrecked the warm start in the prototype, 1e-4 learned.
    lr: float = 1e-4
    warmup_steps: int = 0
    max_prompt_length: int = 32
    # Answers are at most 3 digits plus <|im_end|>.
    max_response_length: int = 8
    timeout_s: int = 1200


def trainer_overrides(method: str, seed: int, s: RunSettings, *, model: str, data: dict, ckpt_dir: str) -> list[str]:
    """Hydra overrides of one run: identical for every method except `algorithm=`."""
    from srpo_verl.demo import addition
    from srpo_verl.demo.harness import tiny_cpu_overrides

    return tiny_cpu_overrides(
        model,
        data,
        ckpt_dir,
        algorithm=method,
        total_steps=s.steps,
        save_freq=s.eval_every,
        batch_size=s.batch_size,
        n=s.n,
        micro_batch_size=s.batch_size * s.n,
        max_prompt_length=s.max_prompt_length,
        max_response_length=s.max_response_length,
        reward_file=addition.__file__,
        lr=s.lr,
        warmup_steps=s.warmup_steps,
        seed=seed,
        rollout_seed=seed,
        project="srpo_verl_demo",
        experiment=f"{method}_s{seed}",
    ) + [
        # Only the student's weights are needed for evaluation.
        "actor_rollout_ref.actor.checkpoint.save_contents=[model]"
    ]


def prepare_assets(ws=None, *, log=print) -> dict:
    """Tiny model, task data and warm start (each cached); returns paths and the warm-start record."""
    from srpo_verl.demo import addition, warm_start
    from srpo_verl.demo.tiny_model import cache_root

    ws = ws or warm_start.WarmStartConfig()
    data_dir = os.path.join(cache_root(), f"data_{addition.RG_DATASET}_t{ws.n_train}_v{ws.n_val}_s{ws.data_seed}")
    if not all(os.path.exists(os.path.join(data_dir, f"{k}.parquet")) for k in ("train", "val")):
        addition.write_rg_data(data_dir, n_train=ws.n_train, n_val=ws.n_val, seed=ws.data_seed)
    data = {k: os.path.join(data_dir, f"{k}.parquet") for k in ("train", "val")}
    log(
        f"[demo] data: {data_dir} ({ws.n_train} train / {ws.n_val} held-out problems, reasoning-gym "
        f"{addition.RG_DATASET})"
    )
    model = warm_start.warm_start(ws, log=log)
    record = warm_start.read_record(model)
    log(
        f"[demo] warm start: {model} "
        + " ".join(f"{k}={v:.3f}" for k, v in record["eval"].items() if k.endswith("acc"))
    )
    return {"model": model, "data": data, "warm_start": record}


class Progress:
    """kill_when hook of harness.launch, polled every second: prints one line per step."""

    KEYS = (("critic/score/mean", "score"), ("srpo/routed_share", "routed"), ("response_length/mean", "len"))

    def __init__(self, name: str, steps: int, log):
        self.name, self.steps, self.log = name, steps, log
        self.start = time.time()
        self.seen = 0
        self.last_beat = self.start

    def __call__(self, metrics: dict) -> bool:
        now = time.time()
        for step in sorted(s for s in metrics if s > self.seen):
            m = metrics[step]
            parts = [f"{label} {m[key]:.3f}" for key, label in self.KEYS if key in m]
            parts.append(f"{m.get('timing_s/step', float('nan')):.1f} s/step")
            self.log(f"[{self.name}] step {step}/{self.steps}  " + "  ".join(parts))
            self.seen = step
        if not self.seen and now - self.last_beat >= 20:
            self.log(f"[{self.name}] starting verl's trainer (Ray, workers, model): {now - self.start:.0f} s")
            self.last_beat = now
        return False


def train_seconds(metrics: dict) -> dict[int, float]:
    """Cumulative trainer time per step: timing_s/step minus the checkpoint save inside it."""
    total, out = 0.0, {}
    for step in sorted(metrics):
        m = metrics[step]
        total += m.get("timing_s/step", 0.0) - m.get("timing_s/save_checkpoint", 0.0)
        out[step] = round(total, 3)
    return out


def evaluate_run(run_dir: str, ckpt_dir: str, assets: dict, metrics: dict, *, log) -> list[dict]:
    """Score every checkpoint of a run (then delete it); the warm start is step 0."""
    from transformers import AutoTokenizer

    from srpo_verl.demo import evaluate

    tokenizer = AutoTokenizer.from_pretrained(assets["model"])
    problems = evaluate.val_problems(assets["data"]["val"])
    elapsed = train_seconds(metrics)
    rows = [{"step": 0, "train_s": 0.0, **assets["warm_start"]["eval"]}]
    steps = sorted(int(d.split("_")[-1]) for d in os.listdir(ckpt_dir) if d.startswith("global_step_"))
    for step in steps:
        model = evaluate.load_checkpoint_policy(assets["model"], ckpt_dir, step)
        row = {"step": step, "train_s": elapsed.get(step), **evaluate.evaluate(model, tokenizer, problems)}
        rows.append(row)
        log(
            f"[eval] step {step}: greedy {row['greedy_acc']:.3f}  sampled {row['sampled_acc']:.3f}  "
            f"teacher-prompted {row['hinted_acc']:.3f}"
        )
        shutil.rmtree(os.path.join(ckpt_dir, f"global_step_{step}"), ignore_errors=True)
    with open(os.path.join(run_dir, "eval.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return rows


def run_one(method: str, seed: int, s: RunSettings, assets: dict, out_dir: str, *, log=print) -> dict:
    """One trainer launch plus its evaluation; returns run.json's content."""
    from srpo_verl.demo.harness import launch

    name = f"{method}_s{seed}"
    # Absolute: the trainer runs with the run directory as its working directory.
    run_dir = os.path.join(os.path.abspath(out_dir), "runs", name)
    record_path = os.path.join(run_dir, "run.json")
    spec = {
        "method": method,
        "seed": seed,
        "settings": dataclasses.asdict(s),
        "warm_start": assets["warm_start"]["key"],
    }
    if os.path.exists(record_path):
        with open(record_path) as f:
            old = json.load(f)
        if old.get("returncode") == 0 and {k: old.get(k) for k in spec} == spec:
            log(f"[{name}] done before: {record_path}")
            return old
    os.makedirs(run_dir, exist_ok=True)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    overrides = trainer_overrides(method, seed, s, model=assets["model"], data=assets["data"], ckpt_dir=ckpt_dir)
    log(f"[{name}] python -m srpo_verl.main_ppo algorithm={method} ... ({s.steps} steps; log: {run_dir}/train.log)")
    result = launch(run_dir, "train", overrides, timeout_s=s.timeout_s, kill_when=Progress(name, s.steps, log))
    record = {
        **spec,
        "overrides": overrides,
        "returncode": result.returncode,
        "launch_s": round(result.wall_s, 1),
        "train_s": train_seconds(result.steps).get(max(result.steps), 0.0) if result.steps else 0.0,
        "steps_logged": len(result.steps),
    }
    record["startup_and_ckpt_s"] = round(record["launch_s"] - record["train_s"], 1)
    if result.returncode != 0:
        log(f"[{name}] trainer failed ({result.returncode}); last lines of {run_dir}/train.log:")
        log(result.log[-3000:])
    else:
        start = time.time()
        evaluate_run(run_dir, ckpt_dir, assets, result.steps, log=log)
        record["eval_s"] = round(time.time() - start, 1)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    with open(record_path, "w") as f:
        json.dump(record, f, indent=1)
    return record


def main(argv=None) -> int:
    import torch

    parser = argparse.ArgumentParser(description="CPU demo runs of srpo_verl through verl's trainer")
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--methods", default="srpo", help=f"comma-separated, from {METHODS}")
    parser.add_argument("--seeds", default="0", help="comma-separated data/rollout seeds")
    defaults = RunSettings()
    for field in dataclasses.fields(RunSettings):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=type(getattr(defaults, field.name)), default=getattr(defaults, field.name))
    parser.add_argument("--warm-start-steps", type=int, default=None)
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--title", default=None, help="report title")
    args = parser.parse_args(argv)

    # One thread: on a 2-core host shared with Ray's workers, OpenMP threads spinning on a busy
    # core made generate() 3-30x slower (docs/demo.md).
    torch.set_num_threads(1)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    seeds = [int(x) for x in args.seeds.split(",") if x]
    settings = RunSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunSettings)})

    def log(msg: str) -> None:
        print(msg, flush=True)

    from srpo_verl.demo import warm_start

    ws = warm_start.WarmStartConfig()
    if args.warm_start_steps is not None:
        ws = dataclasses.replace(ws, steps=args.warm_start_steps)
    start = time.time()
    assets = prepare_assets(ws, log=log)
    os.makedirs(args.out, exist_ok=True)
    failed = []
    # Seeds outermost: an interrupted comparison still has every method at the seeds it reached.
    for seed in seeds:
        for method in methods:
            record = run_one(method, seed, settings, assets, args.out, log=log)
            if record["returncode"] != 0:
                failed.append(f"{method}_s{seed}")
    log(f"[demo] runs finished in {time.time() - start:.0f} s" + (f"; FAILED: {failed}" if failed else ""))
    if not args.no_report:
        from srpo_verl.demo import report

        path = report.build_report(args.out, title=args.title)
        log(f"[demo] report: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
