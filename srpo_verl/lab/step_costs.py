"""The step benchmarks' bookkeeping: methods timed round-robin, medians, the phase table, SRPO's bound,
and the mode dispatch of both benchmark scripts (`run_modes`).

Shared by `scripts/bench_cpu.py update` (verl's engine on CPU) and `scripts/bench_gpu.py step` (the
workers' functions on one GPU), so both print the same columns and the same target. Pure Python: the
GPU script runs where verl is absent.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

# Seconds per phase of one step, as each `step(method)` returns them.
PHASES = ("old_log_prob", "teacher", "teacher_forward", "update", "ema", "step")


def round_robin(
    step: Callable[[str], dict[str, float]], methods: list[str], repeats: int, log: Callable | None = None
) -> dict[str, dict[str, float]]:
    """Per method, the median of each number `step(method)` returns: one warm-up call per method,
    then `repeats` rounds that run every method once, so that drift hits them all alike."""
    for method in methods:
        step(method)
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(repeats):
        for method in methods:
            results[method].append(step(method))
        if log is not None:
            log(f"repeat {r + 1}/{repeats} done")
    return {m: {key: statistics.median(t[key] for t in results[m]) for key in results[m][0]} for m in methods}


def phase_table(med: dict[str, dict[str, float]], extra: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """One line per method: the PHASES in seconds, then the `extra` (title, key) columns."""
    cols = [(f"{p} s", p) for p in PHASES] + list(extra)
    lines = [f"{'method':<11}" + "".join(f"{title:>18}" for title, _ in cols)]
    for method, t in med.items():
        lines.append(f"{method:<11}" + "".join(f"{t[key]:>18.3f}" for _, key in cols))
    return lines


def bound_lines(med: dict[str, dict[str, float]], methods=("srpo_25", "srpo_50")) -> list[str]:
    """SRPO step - GRPO step against the target: the teacher's forward on the routed rows (the cost SRPO
    cannot avoid) + 5% of the GRPO step; and what is left beyond the forward, as a share of the GRPO step."""
    grpo, lines = med["grpo"]["step"], []
    for m in methods:
        if m not in med:
            continue
        forward = med[m]["teacher_forward"]
        extra, bound = med[m]["step"] - grpo, forward + 0.05 * grpo
        beyond = extra - forward
        lines.append(
            f"{m}: step - GRPO step = {extra:.3f} s vs teacher forward {forward:.3f} s + 5% GRPO step "
            f"{0.05 * grpo:.3f} s = {bound:.3f} s ({'met' if extra <= bound else 'NOT met'}); beyond the teacher "
            f"forward: {beyond:.3f} s = {beyond / grpo:.1%} of the GRPO step"
        )
    return lines


def run_modes(description: str, modes: dict, argv: list[str] | None = None) -> int:
    """`script MODE [flags]`: modes maps a name to (add_args(parser), run(args) -> exit code); each
    mode's help is its run function's docstring."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub_parsers = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    for name, (add_args, run) in modes.items():
        sub = sub_parsers.add_parser(
            name,
            help=run.__doc__.split("\n")[0],
            description=run.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_args(sub)
        sub.set_defaults(run=run)
    args = parser.parse_args(argv)
    return args.run(args)
