#!/usr/bin/env python3
"""Best validation score of a run within wall-clock budgets (SRPO Table 1: best avg@16 within 1h/5h/10h).

Reads a run's metrics log and prints, for each budget, the best value of the validation metric
among the validations that happened within that much training time, the step where it happened,
and the mean seconds per step in that window (the paper's efficiency numbers).

Input (one or more files or folders; a folder means every *.jsonl in it, in name order):

- verl's `file` logger (`trainer.logger=[console,file]`): JSON lines `{"step": N, "data": {...}}`,
  written to $VERL_FILE_LOGGER_PATH, or $VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl
  (default root: the working directory). verl opens that file in write mode, so a resumed run
  overwrites it; the recipes give every launch its own file (metrics.<timestamp>.jsonl) and this
  script merges them by step: a later file's training record replaces a step logged twice, and
  the validation-only record a resumed run logs at its checkpoint step is merged into that step.
- any JSONL of flat records `{"step": N, "timing/wall": seconds, "<metric>": value, ...}`.

Wall clock. `--clock step_time` (the default whenever the log has it): the cumulative sum of
verl's `timing_s/step` over steps 1..N, i.e. rollout + reward + teacher + update (+ checkpoint
saving in verl's v1 trainer) time, **excluding validation** (`timing_s/testing`) and start-up; add
validation with --include-validation-time. `--clock wall`: the `timing/wall` field (or
--wall-key), seconds since the start of training, or Unix timestamps (then measured from the
first record). Step 0 (validation before training, the base model) counts as time 0.

Metric: by default every `val-core/<data_source>/acc/mean@<n>` key in the log (verl's avg@n;
`.../reward/mean@<n>` when the reward has no `acc` field); choose with --metric.

    python scripts/best_within_budget.py checkpoints/srpo_paper/qwen3_8b_srpo_chemistry/logs
    python scripts/best_within_budget.py run.jsonl --metric val-core/tooluse/acc/mean@16 --json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from typing import Any, Iterable, Optional, Sequence

STEP_TIME_KEY = "timing_s/step"
VALIDATION_TIME_KEY = "timing_s/testing"
WALL_KEY = "timing/wall"
DEFAULT_BUDGETS_H = (1.0, 5.0, 10.0)
_CORE = re.compile(r"^val-core/(?P<source>.+)/(?P<var>acc|reward)/mean@(?P<n>\d+)$")
_EPOCH_SECONDS = 1e9  # values above this are Unix timestamps, not elapsed seconds


def _files(paths: Iterable[str]) -> list[str]:
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "*.jsonl")))
            if not found:
                raise SystemExit(f"error: no *.jsonl file in {path}")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise SystemExit(f"error: {path} does not exist")
    return files


def load_records(paths: Iterable[str], *, step_time_key: str = STEP_TIME_KEY) -> dict[int, dict[str, Any]]:
    """{step: metrics} merged over the files in order.

    A later file's training record (with `step_time_key`) replaces the step: a resumed run
    re-runs the steps after its checkpoint. A later validation-only record (no `step_time_key`)
    is merged into the step, its keys winning: verl validates the checkpoint it resumed from and
    logs that at the checkpoint's step, whose training time the earlier file holds."""
    merged: dict[int, dict[str, Any]] = {}
    for file in _files(paths):
        this_file: dict[int, dict[str, Any]] = {}
        with open(file, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise SystemExit(f"error: {file}:{lineno} is not JSON ({exc})") from exc
                if isinstance(record.get("data"), dict):
                    step, metrics = record.get("step"), record["data"]
                else:
                    metrics = {k: v for k, v in record.items() if k != "step"}
                    step = record.get("step", metrics.get("training/global_step"))
                if step is None:
                    raise SystemExit(f"error: {file}:{lineno} has no step")
                this_file.setdefault(int(step), {}).update(metrics)
        for step, metrics in this_file.items():
            if step_time_key in metrics or step not in merged:
                merged[step] = metrics
            else:
                merged[step].update(metrics)
    return dict(sorted(merged.items()))


def find_metrics(records: dict[int, dict[str, Any]]) -> list[str]:
    """The avg@n keys of the log: `val-core/<source>/acc/mean@n` (or `reward` when no `acc`)."""
    keys = sorted({k for metrics in records.values() for k in metrics if _CORE.match(k)})
    with_acc = {_CORE.match(k)["source"] for k in keys if _CORE.match(k)["var"] == "acc"}
    return [k for k in keys if _CORE.match(k)["var"] == "acc" or _CORE.match(k)["source"] not in with_acc]


def elapsed_seconds(
    records: dict[int, dict[str, Any]],
    *,
    clock: str = "auto",
    step_time_key: str = STEP_TIME_KEY,
    wall_key: str = WALL_KEY,
    include_validation: bool = False,
) -> tuple[dict[int, float], str]:
    """({step: seconds of training at the end of that step}, the clock used)."""
    if clock == "auto":
        if any(step_time_key in m for m in records.values()):
            clock = "step_time"
        elif any(wall_key in m for m in records.values()):
            clock = "wall"
        else:
            raise SystemExit(
                f"error: the log has neither {step_time_key!r} nor {wall_key!r}; pass --step-time-key or --wall-key"
            )
    elapsed: dict[int, float] = {}
    if clock == "step_time":
        total = 0.0
        for step, metrics in records.items():
            if step_time_key in metrics:
                total += float(metrics[step_time_key])
            elif step > 0:
                raise SystemExit(
                    f"error: step {step} has no {step_time_key!r}: a validation-only record (verl logs one at the step "
                    "a resumed run starts from) without the training record of that step; pass the logs of the "
                    "earlier launches too (the run's logs/ folder), or use --clock wall"
                )
            if include_validation and step > 0:
                total += float(metrics.get(VALIDATION_TIME_KEY, 0.0))
            elapsed[step] = total
    elif clock == "wall":
        values = {s: float(m[wall_key]) for s, m in records.items() if wall_key in m}
        if not values:
            raise SystemExit(f"error: no record has {wall_key!r}")
        origin = min(values.values()) if max(values.values()) > _EPOCH_SECONDS else 0.0
        elapsed = {s: v - origin for s, v in values.items()}
    else:
        raise SystemExit(f"error: unknown clock {clock!r} (auto, step_time, wall)")
    return elapsed, clock


def best_within(
    records: dict[int, dict[str, Any]],
    elapsed: dict[int, float],
    metric: str,
    budgets_h: Sequence[float] = DEFAULT_BUDGETS_H,
    *,
    step_time_key: str = STEP_TIME_KEY,
) -> list[dict[str, Any]]:
    """Per budget: the best value of `metric` at a step whose elapsed time is within the budget.

    Each entry: budget_h, best (None when no validation fell inside), step, hours (elapsed at
    that step), s_per_step (mean step time of the steps inside the budget, None without
    step times) and complete (whether the run lasted at least the budget).
    """
    points = [(elapsed[s], s, float(m[metric])) for s, m in records.items() if metric in m and s in elapsed]
    if not points:
        raise SystemExit(
            f"error: no record has {metric!r} (and a time); metrics with 'val-core': {find_metrics(records)}"
        )
    run_seconds = max(elapsed.values())
    out = []
    for budget in budgets_h:
        limit = budget * 3600.0 + 1e-6
        inside = [p for p in points if p[0] <= limit]
        best = max(inside, key=lambda p: (p[2], -p[0])) if inside else None
        step_times = [
            float(m[step_time_key])
            for s, m in records.items()
            if s > 0 and step_time_key in m and s in elapsed and elapsed[s] <= limit
        ]
        out.append(
            {
                "budget_h": budget,
                "best": best[2] if best else None,
                "step": best[1] if best else None,
                "hours": best[0] / 3600.0 if best else None,
                "s_per_step": sum(step_times) / len(step_times) if step_times else None,
                "complete": run_seconds >= budget * 3600.0,
            }
        )
    return out


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(
    paths: Sequence[str], metrics: Sequence[str], budgets_h: Sequence[float], **clock_kwargs: Any
) -> list[dict[str, Any]]:
    records = load_records(paths, step_time_key=clock_kwargs.get("step_time_key", STEP_TIME_KEY))
    elapsed, clock = elapsed_seconds(records, **clock_kwargs)
    metrics = list(metrics) or find_metrics(records)
    if not metrics:
        raise SystemExit("error: no val-core/<source>/acc/mean@<n> metric in the log; pass --metric")
    step_key = clock_kwargs.get("step_time_key", STEP_TIME_KEY)
    return [
        {
            "metric": metric,
            "clock": clock,
            "run_hours": max(elapsed.values()) / 3600.0,
            "last_step": max(records),
            "budgets": best_within(records, elapsed, metric, budgets_h, step_time_key=step_key),
        }
        for metric in metrics
    ]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("logs", nargs="+", help="JSONL files or folders of them (merged by step, later files win)")
    parser.add_argument(
        "--metric", action="append", default=[], help="metric key (repeatable); default: every val-core avg@n"
    )
    parser.add_argument("--budgets-hours", type=float, nargs="+", default=list(DEFAULT_BUDGETS_H))
    parser.add_argument("--clock", choices=["auto", "step_time", "wall"], default="auto")
    parser.add_argument("--step-time-key", default=STEP_TIME_KEY)
    parser.add_argument("--wall-key", default=WALL_KEY)
    parser.add_argument(
        "--include-validation-time", action="store_true", help=f"add {VALIDATION_TIME_KEY} to the step-time clock"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    results = report(
        args.logs,
        args.metric,
        args.budgets_hours,
        clock=args.clock,
        step_time_key=args.step_time_key,
        wall_key=args.wall_key,
        include_validation=args.include_validation_time,
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        if result["clock"] == "wall":
            what = args.wall_key
        else:
            what = f"cumulative {args.step_time_key}"
            what += " + validation" if args.include_validation_time else " (validation excluded)"
        print(f"{result['metric']}  [clock: {what}; run: {result['run_hours']:.2f} h, last step {result['last_step']}]")
        print(f"  {'budget':>7}  {'best':>7}  {'(%)':>5}  {'step':>5}  {'at (h)':>6}  {'s/step':>6}")
        for b in result["budgets"]:
            pct = None if b["best"] is None else 100 * b["best"]
            note = "" if b["complete"] else "  (run shorter than budget)"
            print(
                f"  {b['budget_h']:>6g}h  {_fmt(b['best'], '.4f'):>7}  {_fmt(pct, '.1f'):>5}  "
                f"{_fmt(b['step'], 'd'):>5}  "
                f"{_fmt(b['hours'], '.2f'):>6}  {_fmt(b['s_per_step'], '.1f'):>6}{note}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
