"""Markdown + PNG report of demo runs (run.py's OUT/runs/<method>_s<seed>/ directories).

    python -m srpo_verl.demo.report OUT [--title T]

Reads, per run, `run.json` (settings, timings), `eval.jsonl` (held-out accuracy per checkpoint,
evaluate.py) and `train.jsonl` (verl's per-step metrics), groups the runs by method, and writes
into OUT:

    report.md               tables and measured comparisons, with the plots below embedded
    accuracy_vs_step.png    held-out accuracy (sampled, greedy) vs step: mean over seeds, min-max band
    accuracy_vs_time.png    the same vs trainer time (seconds; start-up and evaluation excluded)
    training_signals.png    train reward, distilled share, teacher entropy, response length,
                            seconds per step, teacher-prompted accuracy vs step

Only the standard library, numpy and matplotlib (Agg backend; no display needed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict

# Order and colours used in every table and plot.
METHOD_ORDER = ("grpo", "sdpo", "srpo", "srpo_no_dw", "advantage_mix")
LABELS = {"grpo": "GRPO", "sdpo": "SDPO", "srpo": "SRPO", "srpo_no_dw": "SRPO β=0", "advantage_mix": "adv. mix"}
COLORS = {
    "grpo": "tab:blue",
    "sdpo": "tab:orange",
    "srpo": "tab:green",
    "srpo_no_dw": "tab:olive",
    "advantage_mix": "tab:purple",
}

# (metric key in train.jsonl, panel title); seconds per step is derived (checkpoint time removed).
SIGNALS = (
    ("critic/score/mean", "train reward (mean over rollouts)"),
    # SRPO: z = failed with a correct sibling; SDPO: every rollout with a teacher (correct ones too).
    ("srpo/routed_share", "share of rollouts distilled"),
    ("srpo/teacher_entropy_full", "teacher entropy on distilled tokens (nats)"),
    ("response_length/mean", "response length (tokens)"),
    ("seconds_per_step", "trainer seconds per step"),
)


# --------------------------------------------------------------------------- reading


def _jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_runs(out_dir: str, *, failed: list | None = None) -> dict[str, list[dict]]:
    """{method: [run, ...]} sorted by seed; a run is {"name", "method", "seed", "record", "eval", "train"}.

    Runs whose trainer did not exit 0 are left out (their names are appended to `failed`)."""
    runs_dir = os.path.join(out_dir, "runs")
    by_method: dict[str, list[dict]] = defaultdict(list)
    for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
        run_dir = os.path.join(runs_dir, name)
        record_path = os.path.join(run_dir, "run.json")
        if not os.path.exists(record_path):
            continue
        with open(record_path) as f:
            record = json.load(f)
        if record.get("returncode") != 0:
            if failed is not None:
                failed.append(name)
            continue
        train = {r["step"]: r["data"] for r in _jsonl(os.path.join(run_dir, "train.jsonl"))}
        for data in train.values():
            if "timing_s/step" in data:
                data["seconds_per_step"] = data["timing_s/step"] - data.get("timing_s/save_checkpoint", 0.0)
        run = {
            "name": name,
            "method": record["method"],
            "seed": record["seed"],
            "record": record,
            "eval": sorted(_jsonl(os.path.join(run_dir, "eval.jsonl")), key=lambda r: r["step"]),
            "train": train,
        }
        by_method[record["method"]].append(run)
    ordered = sorted(by_method, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))
    return {m: sorted(by_method[m], key=lambda r: r["seed"]) for m in ordered}


# --------------------------------------------------------------------------- statistics


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def eval_table(runs: list[dict], key: str) -> dict[int, list[float]]:
    """{step: [value of each seed]} over the eval steps every run of the method has."""
    per_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for row in run["eval"]:
            if row.get(key) is not None:
                per_step[row["step"]].append(row[key])
    return {s: v for s, v in sorted(per_step.items()) if len(v) == len(runs)}


def signal_table(runs: list[dict], key: str, window: int = 1) -> dict[int, list[float]]:
    """{step: [per-seed value, trailing mean over `window` steps]} of a train.jsonl metric."""
    per_step: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        steps = sorted(s for s, d in run["train"].items() if key in d)
        values = [run["train"][s][key] for s in steps]
        for i, s in enumerate(steps):
            chunk = values[max(0, i - window + 1) : i + 1]
            per_step[s].append(sum(chunk) / len(chunk))
    return dict(sorted(per_step.items()))


def fmt(mean: float, std: float, n: int, digits: int = 3) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if n > 1 else "")


# --------------------------------------------------------------------------- plots


def _band(ax, xs, table, color, label):
    import numpy as np

    rows = [table[s] for s in xs]
    mean = np.array([np.mean(r) for r in rows])
    ax.plot(xs, mean, color=color, label=label, lw=1.8, marker="o" if len(xs) <= 12 else None, ms=3)
    if max(len(r) for r in rows) > 1:
        ax.fill_between(xs, [min(r) for r in rows], [max(r) for r in rows], color=color, alpha=0.18, lw=0)


def plot_accuracy(runs: dict, path: str, *, x: str) -> None:
    """x = "step" or "time": two panels, sampled and greedy held-out accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for ax, key, title in zip(axes, ("sampled_acc", "greedy_acc"), ("sampled (T=1)", "greedy")):
        for method, method_runs in runs.items():
            table = eval_table(method_runs, key)
            if not table:
                continue
            steps = list(table)
            color = COLORS.get(method, None)
            if x == "step":
                _band(ax, steps, table, color, LABELS.get(method, method))
            else:
                # Each seed's own curve (thin) and the mean curve at the mean time of each step.
                times = eval_table(method_runs, "train_s")
                for run in method_runs:
                    ts = [r["train_s"] for r in run["eval"] if r.get(key) is not None]
                    ax.plot(
                        ts, [r[key] for r in run["eval"] if r.get(key) is not None], color=color, lw=0.6, alpha=0.45
                    )
                common = [s for s in steps if s in times]
                ax.plot(
                    [np.mean(times[s]) for s in common],
                    [np.mean(table[s]) for s in common],
                    color=color,
                    lw=1.8,
                    marker="o",
                    ms=3,
                    label=LABELS.get(method, method),
                )
        ax.set_title(f"held-out accuracy, {title}")
        ax.set_xlabel("training step" if x == "step" else "trainer time (s; start-up and eval excluded)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_signals(runs: dict, path: str, *, window: int = 5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(SIGNALS) + [("hinted_acc", "teacher-prompted greedy accuracy (held-out)")]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (key, title) in zip(axes.flat, panels):
        drawn = False
        for method, method_runs in runs.items():
            if key == "hinted_acc":
                table = eval_table(method_runs, key)
            elif key == "seconds_per_step":
                # Unsmoothed, without step 1 (Ray/engine warm-up, ~5x a later step; in the table).
                table = {s: v for s, v in signal_table(method_runs, key).items() if s > 1}
            else:
                table = signal_table(method_runs, key, window=window)
            if not table:
                continue
            _band(ax, list(table), table, COLORS.get(method), LABELS.get(method, method))
            drawn = True
        if key == "seconds_per_step":
            suffix = " (from step 2)"
        else:
            suffix = "" if key == "hinted_acc" or window == 1 else f" ({window}-step mean)"
        ax.set_title(title + suffix, fontsize=10)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- markdown


def _per_step(run: dict) -> dict[int, float]:
    return {s: d["seconds_per_step"] for s, d in run["train"].items() if "seconds_per_step" in d}


def _at(runs: list[dict], key: str, step: int) -> tuple[float, float, int]:
    values = [r[key] for run in runs for r in run["eval"] if r["step"] == step and r.get(key) is not None]
    mean, std = mean_std(values)
    return mean, std, len(values)


def comparisons(runs: dict) -> list[str]:
    """Measured statements: SRPO vs the better of GRPO/SDPO at every evaluated step (a table), the
    final step, and SRPO's early gain (step 0 to the first evaluation) vs GRPO's, each with the
    verdict of a two-sided 95% t test over seeds (`_difference`)."""
    lines: list[str] = []
    if "srpo" not in runs or not any(m in runs for m in ("grpo", "sdpo")):
        return lines
    srpo = runs["srpo"]
    table = [
        "| step | accuracy | SRPO | better of GRPO/SDPO | SRPO − better | verdict | per seed | verdict, paired by "
        "seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    bullets = []
    for key, label in (("sampled_acc", "sampled"), ("greedy_acc", "greedy")):
        srpo_table = eval_table(srpo, key)
        others = {m: eval_table(runs[m], key) for m in ("grpo", "sdpo") if m in runs}
        steps = [s for s in srpo_table if s > 0 and all(s in t for t in others.values())]
        for step in steps:
            best = max(others, key=lambda m: mean_std(others[m][step])[0])
            diff, se, verdict = _difference(srpo_table[step], others[best][step])
            a, b = srpo_table[step], others[best][step]
            # Runs of one seed share the data order and rollout seeds: their difference is paired.
            if [r["seed"] for r in srpo] == [r["seed"] for r in runs[best]]:
                paired = [x - y for x, y in zip(a, b)]
                per_seed = " / ".join(f"{d:+.3f}" for d in paired)
                _, _, paired_verdict = _difference(paired)
            else:
                per_seed, paired_verdict = "–", "seeds differ"
            table.append(
                f"| {step} | {label} | {fmt(*mean_std(a), len(a))} | {LABELS[best]} {fmt(*mean_std(b), len(b))} | "
                f"{diff:+.3f} | {verdict} | {per_seed} | {paired_verdict} |"
            )
        if steps:
            last = steps[-1]
            best = max(others, key=lambda m: mean_std(others[m][last])[0])
            bullets.append(
                _versus(f"final ({label}, step {last})", "SRPO", srpo_table[last], LABELS[best], others[best][last])
            )
        if "grpo" in others and steps and 0 in srpo_table and 0 in others["grpo"]:
            early = steps[0]
            gain_s = [a - b for a, b in zip(srpo_table[early], srpo_table[0])]
            gain_g = [a - b for a, b in zip(others["grpo"][early], others["grpo"][0])]
            bullets.append(_versus(f"early gain ({label}, step 0 → {early})", "SRPO", gain_s, "GRPO", gain_g))
    if len(table) > 2:
        lines += [
            "SRPO against the better (by mean) of GRPO and SDPO at each evaluated step. Unpaired: the "
            "seed means (Welch SE). Paired: the per-seed differences (same data order and rollout "
            "seeds) against 0. Verdicts: two-sided 95% t tests; with 3 seeds a difference must exceed "
            "4.3 standard errors.",
            "",
            *table,
            "",
        ]
    return lines + bullets


# Two-sided 95% critical values of Student's t, df = 1..10; 1.96 beyond (normal).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def _difference(a: list[float], b: list[float] | None = None) -> tuple[float, float, str]:
    """(mean(a) - mean(b), its standard error, a verdict of a two-sided 95% t test).

    b=None: `a` are paired differences, tested against 0 (df = n - 1). Otherwise Welch's SE with
    the conservative df = min(n_a, n_b) - 1. Seeds are few (3), so the threshold is large (4.3 SE)."""
    ma, sa = mean_std(a)
    if b is None:
        diff, df = ma, len(a) - 1
        se = sa / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    else:
        mb, sb = mean_std(b)
        diff, df = ma - mb, min(len(a), len(b)) - 1
        se = math.sqrt((sa**2) / len(a) + (sb**2) / len(b)) if df >= 1 else float("nan")
    if math.isnan(se):
        return diff, se, "one seed: no spread to judge by"
    t = T975[df - 1] if df <= len(T975) else 1.96
    # No "|" in these strings: they go into Markdown table cells.
    if abs(diff) > t * se:
        return diff, se, f"{'higher' if diff > 0 else 'lower'}: beyond {t:.1f} SE ({t * se:.3f})"
    return diff, se, f"within noise: inside {t:.1f} SE ({t * se:.3f})"


def _versus(what: str, name_a: str, a: list[float], name_b: str, b: list[float]) -> str:
    diff, _, verdict = _difference(a, b)
    sign = "≥" if diff >= 0 else "<"
    return (
        f"- **{what}**: {name_a} {fmt(*mean_std(a), len(a))} {sign} {name_b} {fmt(*mean_std(b), len(b))} "
        f"(difference {diff:+.3f}; {verdict})."
    )


def build_report(out_dir: str, *, title: str | None = None, window: int = 5) -> str:
    """Write report.md and the PNGs into `out_dir`; returns report.md's path."""
    failed: list[str] = []
    runs = load_runs(out_dir, failed=failed)
    if not runs:
        raise FileNotFoundError(f"no finished runs under {out_dir}/runs (run.json missing)")
    plot_accuracy(runs, os.path.join(out_dir, "accuracy_vs_step.png"), x="step")
    plot_accuracy(runs, os.path.join(out_dir, "accuracy_vs_time.png"), x="time")
    plot_signals(runs, os.path.join(out_dir, "training_signals.png"), window=window)

    any_run = next(iter(runs.values()))[0]
    settings = any_run["record"].get("settings", {})
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    md = [f"# {title or 'srpo_verl CPU demo'}", ""]
    md.append(
        f"Methods: {', '.join(LABELS.get(m, m) for m in runs)}; seeds {seeds}; "
        + ", ".join(f"{k}={v}" for k, v in settings.items() if k != "timeout_s")
        + ". Every run starts from the same warm start and trains through verl's trainer "
        "(`python -m srpo_verl.main_ppo platform=cpu`). Held-out accuracy: 256 fixed prompts, "
        "greedy and sampled (4 draws per prompt at T=1), scored by reasoning-gym's verifier on "
        "the saved weights. ± is the standard deviation over seeds; bands are min–max over seeds."
    )
    md.append("")

    eval_steps = sorted(set.intersection(*[set(eval_table(rs, "sampled_acc")) for rs in runs.values()]))
    md.append("## Held-out accuracy at equal steps")
    md.append("")
    for key, label in (("sampled_acc", "sampled (T=1)"), ("greedy_acc", "greedy")):
        md.append(f"**{label}**")
        md.append("")
        md.append("| method | " + " | ".join(f"step {s}" for s in eval_steps) + " |")
        md.append("|---|" + "---|" * len(eval_steps))
        for method, method_runs in runs.items():
            cells = [fmt(*_at(method_runs, key, s)) for s in eval_steps]
            md.append(f"| {LABELS.get(method, method)} | " + " | ".join(cells) + " |")
        md.append("")

    lines = comparisons(runs)
    if lines:
        md.append("## Measured comparisons")
        md.append("")
        md.extend(lines)
        md.append("")

    md.append("## Time")
    md.append("")
    md.append(
        "| method | seeds | trainer s/step (from step 2) | first step s | trainer s (all steps) "
        "| launch wall s (incl. start-up) | eval s |"
    )
    md.append("|---|---|---|---|---|---|---|")
    for method, method_runs in runs.items():
        later = [sum(v for s, v in _per_step(r).items() if s > 1) / max(1, len(_per_step(r)) - 1) for r in method_runs]
        first = [_per_step(r).get(1, float("nan")) for r in method_runs]
        md.append(
            f"| {LABELS.get(method, method)} | {len(method_runs)} | {fmt(*mean_std(later), len(later), 2)} | "
            f"{fmt(*mean_std(first), len(first), 1)} | "
            f"{fmt(*mean_std([r['record']['train_s'] for r in method_runs]), len(method_runs), 1)} | "
            f"{fmt(*mean_std([r['record']['launch_s'] for r in method_runs]), len(method_runs), 1)} | "
            f"{fmt(*mean_std([r['record'].get('eval_s', float('nan')) for r in method_runs]), len(method_runs), 1)} |"
        )
    md.append("")

    md.append("## Plots")
    md.append("")
    md.append("![held-out accuracy vs step](accuracy_vs_step.png)")
    md.append("")
    md.append("![held-out accuracy vs trainer time](accuracy_vs_time.png)")
    md.append("")
    md.append("![training signals](training_signals.png)")
    md.append("")
    md.append(
        "How to read them: docs/demo.md. In short — accuracy curves are the outcome; the distilled "
        "share is the fraction of rollouts trained by self-distillation (SRPO: failed while a sibling "
        "succeeded; SDPO: every rollout whose group has a success); a falling teacher entropy means a confident "
        "self-teacher; response length and teacher-prompted accuracy are the early-warning signals of "
        "self-distillation collapse (docs/spec.md §4)."
    )
    md.append("")
    if failed:
        md.append(f"**Failed runs, left out of everything above (see their train.log): {', '.join(failed)}**")
        md.append("")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Markdown + PNG report of srpo_verl demo runs")
    parser.add_argument("out", help="directory with runs/<method>_s<seed>/ (run.py --out)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--window", type=int, default=5, help="trailing mean of the per-step signals")
    args = parser.parse_args(argv)
    print(build_report(args.out, title=args.title, window=args.window))


if __name__ == "__main__":
    main()
