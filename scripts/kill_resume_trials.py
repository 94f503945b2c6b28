"""Kill/resume trials: SIGKILL a CPU SRPO training run at a random point, resume it, compare.

    python scripts/kill_resume_trials.py             # 5 trials: 1 reference + 2 launches per trial, ~1-1.5 min each
    python scripts/kill_resume_trials.py --trials 1  # CI-sized

One uninterrupted reference run (tiny Qwen3 on the addition task, `algorithm=srpo platform=cpu`,
rollout.n=4, routed rows via compute_digit_score with success_threshold 0.15, a checkpoint after
every step) is compared with, per trial, a run of the same seed whose whole process session
(driver, Ray, workers) is SIGKILLed a random delay after a random checkpoint exists, then
resumed from its last checkpoint by the same command. A trial is identical when every step's
metrics (timings excluded) and the final student (actor/model_world_size_1_rank_0.pt) and EMA
teacher (actor/srpo_ema_teacher/rank_0.pt) weights equal the reference's exactly; otherwise the
first differing metric and its step are printed.

Exact equality holds because nothing a launch computes depends on timing or on what an earlier
launch left on disk: the rollout server decodes in fixed-shape chunks (srpo_verl/cpu/hf_rollout.py,
DECODE_ROWS; before that, its timing-dependent batch shapes moved rollout log-probs, hence the IS
weights, by ~5e-7 and two uninterrupted launches already differed from step 2 on), the trainers put
rows in content order, and `setup` builds every cache (model, data, the datasets cache of the
parquet files) before the reference run, so all launches find the same disk state.

A test can call one trial: `setup(workdir)`, `reference_run(...)`, `run_trial(...)`.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

from srpo_verl.demo.harness import Launch, checkpoint_weights, latest_checkpoint, launch, tiny_cpu_overrides

# Metrics that legitimately differ between two launches of the same run (wall-clock and memory).
VOLATILE = ("timing", "perf/", "throughput", "time", "memory", "wall")
# SRPO with rows routed to the teacher on an untrained model (see tests/e2e/test_cpu_srpo.py).
ROUTED = ["algorithm.srpo.success_threshold=0.15"]
LAUNCH_TIMEOUT_S = 900


@dataclass
class TrialResult:
    trial: int
    kill_after_checkpoint: int  # the checkpoint that had to exist before the kill
    delay_s: float  # random wait after that checkpoint appeared
    killed: bool  # False when the run finished before the kill landed (trial invalid)
    last_logged_step_at_kill: int | None = None
    resumed_from: int | None = None
    lost_metric_steps: list[int] = field(default_factory=list)  # checkpointed, killed before logged
    metrics_identical: bool = False
    metrics_max_abs_diff: float = math.inf
    metrics_mismatches: list[str] = field(default_factory=list)
    student_max_abs_diff: float = math.inf
    teacher_max_abs_diff: float = math.inf
    first_difference: str | None = None  # the lowest step's first differing metric, if any
    identical: bool = False
    wall_s: float = 0.0
    error: str | None = None


def stable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not any(word in k for word in VOLATILE)}


def compare_metrics(reference: dict[int, dict], other: dict[int, dict]) -> tuple[float, list[str]]:
    """(max |difference| over numeric metrics, mismatch descriptions) of two step -> metrics maps.

    A missing step or key, or a differing non-numeric value, is a mismatch with difference inf.
    """
    worst, mismatches = 0.0, []
    for step in sorted(set(reference) | set(other)):
        if step not in reference or step not in other:
            mismatches.append(f"step {step} only in {'reference' if step in reference else 'trial'}")
            worst = math.inf
            continue
        a, b = stable(reference[step]), stable(other[step])
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                mismatches.append(f"step {step} {key}: missing in {'trial' if key in a else 'reference'}")
                worst = math.inf
                continue
            x, y = a[key], b[key]
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                both_nan = isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
                diff = 0.0 if both_nan or x == y else abs(x - y)
                if diff != 0.0:
                    mismatches.append(f"step {step} {key}: {x!r} vs {y!r}")
                    worst = max(worst, diff if math.isfinite(diff) else math.inf)
            elif x != y:
                mismatches.append(f"step {step} {key}: {x!r} vs {y!r}")
                worst = math.inf
    return worst, mismatches


def first_difference(mismatches: list[str]) -> str | None:
    """The mismatch of the lowest step (metrics of one step are compared in key order)."""

    def step(text: str) -> int:
        match = re.search(r"step (\d+)", text)
        return int(match.group(1)) if match else -1

    return min(mismatches, key=step) if mismatches else None


def compare_weights(a: dict, b: dict) -> float:
    """max |a - b| over all tensors of two state dicts; inf if their names or shapes differ."""
    if a.keys() != b.keys() or not a:
        return math.inf
    worst = 0.0
    for name, x in a.items():
        y = b[name]
        if x.shape != y.shape:
            return math.inf
        worst = max(worst, float((x.double() - y.double()).abs().max()) if x.numel() else 0.0)
    return worst


def setup(workdir: str) -> tuple[str, dict]:
    """The tiny model and the addition data under `workdir` (built once, reused)."""
    from srpo_verl.demo.addition import write_addition_data
    from srpo_verl.demo.tiny_model import build_tiny_model

    model = build_tiny_model(os.path.join(workdir, "tiny_qwen3"))
    data = write_addition_data(os.path.join(workdir, "addition"), n_train=512, n_val=64)
    # verl reads the parquet files through `datasets`, which caches an Arrow copy on first read:
    # built here, the reference launch does not differ from the others in what it finds on disk.
    import datasets

    for path in (data["train"], data["val"]):
        datasets.load_dataset("parquet", data_files=path)
    return model, data


def overrides(model: str, data: dict, ckpt: str, steps: int, name: str) -> list[str]:
    return [
        *tiny_cpu_overrides(
            model,
            data,
            ckpt,
            algorithm="srpo",
            total_steps=steps,
            save_freq=1,
            n=4,
            micro_batch_size=16,
            reward="compute_digit_score",
            experiment=name,
        ),
        *ROUTED,
    ]


def reference_run(workdir: str, model: str, data: dict, steps: int) -> tuple[Launch, str]:
    """The uninterrupted run: (launch, checkpoint dir)."""
    ckpt = os.path.join(workdir, "reference_ckpt")
    result = launch(workdir, "reference", overrides(model, data, ckpt, steps, "reference"), timeout_s=LAUNCH_TIMEOUT_S)
    if result.returncode != 0:
        raise RuntimeError(f"reference run failed ({result.returncode}):\n{result.log[-4000:]}")
    if sorted(result.steps) != list(range(1, steps + 1)):
        raise RuntimeError(f"reference run logged steps {sorted(result.steps)}, expected 1..{steps}")
    return result, ckpt


def run_trial(
    workdir: str,
    model: str,
    data: dict,
    reference: tuple[Launch, str],
    *,
    steps: int,
    trial: int,
    kill_after_checkpoint: int,
    delay_s: float,
) -> TrialResult:
    """Launch, SIGKILL the session `delay_s` after checkpoint `kill_after_checkpoint` exists, resume, compare."""
    start = time.time()
    result = TrialResult(trial=trial, kill_after_checkpoint=kill_after_checkpoint, delay_s=delay_s, killed=False)
    ckpt = os.path.join(workdir, f"trial{trial}_ckpt")
    args = overrides(model, data, ckpt, steps, f"trial{trial}")
    seen: dict[str, float] = {}

    def kill_when(_steps) -> bool:
        try:
            latest = latest_checkpoint(ckpt)
        except ValueError:  # the tracker file is being written
            return False
        if latest is not None and latest >= kill_after_checkpoint:
            seen.setdefault("t", time.time())
            return time.time() - seen["t"] >= delay_s
        return False

    first = launch(workdir, f"trial{trial}_killed", args, timeout_s=LAUNCH_TIMEOUT_S, kill_when=kill_when)
    result.killed = first.returncode == "killed"
    result.last_logged_step_at_kill = max(first.steps) if first.steps else None
    if not result.killed:
        result.error = f"first launch was not killed (returncode {first.returncode})"
        result.wall_s = time.time() - start
        return result
    resumed_from = latest_checkpoint(ckpt)
    result.resumed_from = resumed_from
    second = launch(workdir, f"trial{trial}_resumed", args, timeout_s=LAUNCH_TIMEOUT_S)
    if second.returncode != 0:
        result.error = f"resumed launch failed ({second.returncode}): {second.log[-2000:]}"
        result.wall_s = time.time() - start
        return result
    if f"global_step_{resumed_from}" not in second.log or "Resuming from" not in second.log:
        result.error = f"resumed launch did not report resuming from global_step_{resumed_from}"

    evaluate(result, reference, first.steps, second.steps, ckpt, steps)
    result.wall_s = time.time() - start
    return result


def evaluate(
    result: TrialResult,
    reference: tuple[Launch, str],
    first_steps: dict[int, dict],
    second_steps: dict[int, dict],
    ckpt: str,
    steps: int,
) -> TrialResult:
    """Fill `result`'s comparisons: killed+resumed metrics and final weights vs the reference."""
    resumed_from = result.resumed_from
    ref_launch, ref_ckpt = reference
    # Trajectory: steps up to the checkpoint from the killed launch, the rest from the resumed one.
    # Steps the killed launch logged after its checkpoint were lost and replayed; they are
    # compared too (a replay must not differ from what was first computed, nor from the reference).
    merged = {s: m for s, m in first_steps.items() if s <= resumed_from}
    merged.update(second_steps)
    replayed = {s: m for s, m in first_steps.items() if s > resumed_from}
    # verl saves step s's checkpoint before it logs step s's metrics: a kill in between loses that
    # line for good (the resume starts after s). Reported, not counted as a difference.
    result.lost_metric_steps = [s for s in sorted(ref_launch.steps) if s not in merged and s <= resumed_from]
    expected = {s: m for s, m in ref_launch.steps.items() if s not in result.lost_metric_steps}
    diff, mismatches = compare_metrics(expected, merged)
    diff_replayed, mismatches_replayed = compare_metrics({s: ref_launch.steps[s] for s in replayed}, replayed)
    result.metrics_max_abs_diff = max(diff, diff_replayed)
    all_mismatches = mismatches + [f"replayed {m}" for m in mismatches_replayed]
    result.first_difference = first_difference(all_mismatches)
    result.metrics_mismatches = all_mismatches[:20]
    result.metrics_identical = not mismatches and not mismatches_replayed

    final = checkpoint_weights(ckpt, steps)
    ref_weights = checkpoint_weights(ref_ckpt, steps)
    result.student_max_abs_diff = compare_weights(ref_weights["student"], final["student"])
    result.teacher_max_abs_diff = compare_weights(ref_weights["teacher"], final["teacher"])
    result.identical = (
        result.error is None
        and result.metrics_identical
        and result.student_max_abs_diff == 0.0
        and result.teacher_max_abs_diff == 0.0
    )
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6, help="training steps of every run (>= 3)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill points (default: random)")
    # A tiny-model step takes ~2 s on CPU (start-up ~1 min): a few seconds spreads the kill over
    # the next step or two, including inside the update and the checkpoint write.
    parser.add_argument("--max-delay", type=float, default=3.0, help="max seconds between checkpoint and kill")
    parser.add_argument("--workdir", default=None, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error("--steps must be >= 3 (a checkpoint must exist before the kill, with steps after it)")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    workdir = args.workdir or tempfile.mkdtemp(prefix="kill_resume_")
    os.makedirs(workdir, exist_ok=True)
    print(f"workdir {workdir}; kill-point seed {seed}; {args.trials} trial(s) of {args.steps} steps", flush=True)

    model, data = setup(workdir)
    t0 = time.time()
    reference = reference_run(workdir, model, data, args.steps)
    print(f"reference run: {args.steps} steps in {time.time() - t0:.0f}s", flush=True)

    results = []
    for trial in range(args.trials):
        # Leave >= 1 step after the kill's step so the delay still lands inside the run.
        point = rng.randint(1, args.steps - 2)
        delay = round(rng.uniform(0.0, args.max_delay), 1)
        r = run_trial(
            workdir, model, data, reference, steps=args.steps, trial=trial, kill_after_checkpoint=point, delay_s=delay
        )
        results.append(r)
        print(
            f"trial {trial}: kill {r.delay_s}s after checkpoint {r.kill_after_checkpoint} "
            f"(last logged step {r.last_logged_step_at_kill}), resumed from {r.resumed_from}: "
            f"{'IDENTICAL' if r.identical else 'DIFFERENT'}; max abs diff metrics {r.metrics_max_abs_diff:g}, "
            f"student {r.student_max_abs_diff:g}, teacher {r.teacher_max_abs_diff:g}; {r.wall_s:.0f}s"
            + (
                f"; metrics of step(s) {r.lost_metric_steps} lost (checkpointed, then killed before logged)"
                if r.lost_metric_steps
                else ""
            )
            + (f"; error: {r.error}" if r.error else ""),
            flush=True,
        )
        if r.first_difference:
            print(f"    first difference: {r.first_difference}", flush=True)
        elif not r.identical and r.error is None:
            print("    metrics identical at every step; only the final weights differ", flush=True)
        for m in r.metrics_mismatches[:5]:
            print(f"    {m}", flush=True)

    same = sum(r.identical for r in results)
    print(
        f"SUMMARY: {same} of {len(results)} identical; max abs diff over trials: "
        f"metrics {max((r.metrics_max_abs_diff for r in results), default=0):g}, "
        f"student {max((r.student_max_abs_diff for r in results), default=0):g}, "
        f"teacher {max((r.teacher_max_abs_diff for r in results), default=0):g}",
        flush=True,
    )
    if os.environ.get("KILL_RESUME_JSON"):
        import json

        with open(os.environ["KILL_RESUME_JSON"], "w") as f:
            report = {"seed": seed, "steps": args.steps, "results": [asdict(r) for r in results]}
            json.dump(report, f, indent=1, default=str)
    return 0 if same == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
