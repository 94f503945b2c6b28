#!/usr/bin/env python3
"""The paper's tables from the recipe cells' logs: Table 1, the ablation and the budget view.

Every cell script in recipes/table1/ and recipes/ablation/ names its model, method and task
(`export CELL_MODEL=... CELL_ALGO=... CELL_TASK=...`); recipes/common.sh writes that run's metrics
logs to `<CKPT_ROOT>/<PROJECT_NAME>/<model>_<method>_<task>/logs/`. This reads each cell's folder
with scripts/best_within_budget.py (its functions: the same merging of resumed launches, the same
training-time clock, the same avg@16 key) and prints Markdown tables in the layout of docs/spec.md §3:

  Table 1     model x method rows (base, GRPO, SDPO, SRPO), one column per task and their Avg:
              best avg@16 (%) within --budget-hours (10 h, the paper's); `base` is step 0, the
              validation before training, averaged over that model's cells of the task
  Ablation    Qwen3-8B SRPO, SRPO w/o DW (beta = 0), advantage mix, the same columns
  Budgets     per model and method: Avg of the five tasks within 1 h / 5 h / 10 h, and the mean
              seconds per step in each window (mean over the five tasks; the paper's cost numbers)

A cell without a log folder, or whose log has no avg@16 validation, is `-` (and an Avg over a `-`
is `-`); a value from a run that ended before the budget is marked `*`. What was missing or
unreadable goes to stderr, one line per cell.

    python scripts/paper_tables.py                               # ./checkpoints/srpo_paper/...
    python scripts/paper_tables.py --ckpt-root /shared/checkpoints --project srpo_paper
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any, Optional, Sequence

from srpo_verl.tasks import sciknoweval, toolalpaca


def _sibling(name: str):
    """A script beside this one, loaded by path (scripts/ is not a package; loaded so under pytest too)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the body runs
    spec.loader.exec_module(module)
    return module


bwb = _sibling("best_within_budget")

REPO = Path(__file__).resolve().parents[1]
RECIPE_DIRS = ("table1", "ablation")
TASKS = ("chemistry", "physics", "biology", "materials", "toolalpaca")
TASK_HEADERS = {"chemistry": "Chem", "physics": "Phys", "biology": "Bio", "materials": "Mat", "toolalpaca": "Tool"}
# data_source of each task's rows (srpo_verl.tasks): the avg@16 key is val-core/<source>/acc/mean@16.
SOURCES = {
    **{domain: sciknoweval.DATA_SOURCE for domain in ("chemistry", "physics", "biology", "materials")},
    "toolalpaca": toolalpaca.DATA_SOURCE,
}
MODELS = {"qwen3_8b": "Qwen3-8B", "qwen3_4b": "Qwen3-4B"}
METHODS = {
    "grpo": "GRPO",
    "sdpo": "SDPO",
    "srpo": "SRPO",
    "srpo_no_dw": "SRPO w/o DW",
    "advantage_mix": "advantage mix",
}
TABLE1_METHODS = ("grpo", "sdpo", "srpo")
ABLATION = ("qwen3_8b", ("srpo", "srpo_no_dw", "advantage_mix"))
N_SAMPLES = 16
_CELL_LINE = re.compile(r"CELL_MODEL=(\w+)\s+CELL_ALGO=(\w+)\s+CELL_TASK=(\w+)")


@dataclass(frozen=True)
class Cell:
    model: str
    method: str
    task: str
    script: str  # relative to the repository

    @property
    def name(self) -> str:  # recipes/common.sh's default EXPERIMENT_NAME
        return f"{self.model}_{self.method}_{self.task}"


@dataclass
class CellResult:
    base: Optional[float] = None  # step 0's avg@16
    budgets: dict[float, dict[str, Any]] = field(default_factory=dict)  # budget_h -> best_within's entry


def recipe_cells(recipes: Path = REPO / "recipes") -> list[Cell]:
    """The cells of recipes/table1 and recipes/ablation, read from each script's CELL_* line."""
    cells = []
    for sub in RECIPE_DIRS:
        for script in sorted((recipes / sub).glob("run_*.sh")):
            match = _CELL_LINE.search(script.read_text())
            if match is None:
                raise SystemExit(f"error: {script} has no `export CELL_MODEL=... CELL_ALGO=... CELL_TASK=...` line")
            cells.append(Cell(*match.groups(), script=f"{sub}/{script.name}"))
    return cells


def log_dir(cell: Cell, ckpt_root: str, project: str) -> str:
    return os.path.join(ckpt_root, project, cell.name, "logs")


def avg_key(records: dict[int, dict[str, Any]], task: str) -> str:
    """The task's avg@16 key; a log holding another single avg@n key (rows with an older data_source
    name) uses that one."""
    expected = f"val-core/{SOURCES[task]}/acc/mean@{N_SAMPLES}"
    if any(expected in metrics for metrics in records.values()):
        return expected
    found = bwb.find_metrics(records)
    if len(found) == 1:
        return found[0]
    raise SystemExit(f"no {expected} in the log; its val-core keys: {found}")


def read_cell(folder: str, task: str, budgets_h: Sequence[float], *, include_validation: bool = False) -> CellResult:
    """One cell's base value and best avg@16 per budget (best_within_budget's functions)."""
    records = bwb.load_records([folder])
    elapsed, _ = bwb.elapsed_seconds(records, include_validation=include_validation)
    metric = avg_key(records, task)
    base = records.get(0, {}).get(metric)
    result = bwb.best_within(records, elapsed, metric, budgets_h)
    return CellResult(None if base is None else float(base), {entry["budget_h"]: entry for entry in result})


def read_all(
    cells: Sequence[Cell],
    ckpt_root: str,
    project: str,
    budgets_h: Sequence[float],
    *,
    include_validation: bool = False,
    warn=print,
) -> dict[Cell, CellResult]:
    """{cell: result} for every cell whose log could be read; the others are reported through `warn`."""
    results = {}
    for cell in cells:
        folder = log_dir(cell, ckpt_root, project)
        if not os.path.isdir(folder):
            warn(f"{cell.name}: no log folder {folder} (recipes/{cell.script})")
            continue
        try:
            results[cell] = read_cell(folder, cell.task, budgets_h, include_validation=include_validation)
        except SystemExit as exc:  # best_within_budget's errors name the file or the metric
            warn(f"{cell.name}: {str(exc.code).removeprefix('error: ')}")
    return results


def _pct(value: Optional[float], short: bool = False) -> str:
    return "-" if value is None else f"{100 * value:.1f}" + ("*" if short else "")


def _avg(values: Sequence[Optional[float]]) -> Optional[float]:
    return None if not values or any(v is None for v in values) else mean(values)


def _best(results: dict[Cell, CellResult], cell: Optional[Cell], budget: float) -> tuple[Optional[float], bool]:
    """(best within the budget, whether the run was shorter than the budget)."""
    result = results.get(cell) if cell is not None else None
    entry = result.budgets.get(budget) if result is not None else None
    if entry is None:
        return None, False
    return entry["best"], not entry["complete"]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _task_row(results, index, model: str, method: str, budget: float) -> list[str]:
    values, cells = [], []
    for task in TASKS:
        best, short = _best(results, index.get((model, method, task)), budget)
        values.append(best)
        cells.append(_pct(best, short))
    return [MODELS.get(model, model), METHODS.get(method, method), *cells, _pct(_avg(values))]


def _base_row(results, cells: Sequence[Cell], model: str) -> list[str]:
    values = []
    for task in TASKS:
        bases = [results[c].base for c in cells if c.model == model and c.task == task and c in results]
        bases = [b for b in bases if b is not None]
        values.append(mean(bases) if bases else None)
    return [MODELS.get(model, model), "base", *(_pct(v) for v in values), _pct(_avg(values))]


def render(
    cells: Sequence[Cell], results: dict[Cell, CellResult], budgets_h: Sequence[float], budget_h: float = 10.0
) -> str:
    """The three tables as Markdown. `budget_h` (one of `budgets_h`) is the budget of Table 1 and
    the ablation."""
    index = {(c.model, c.method, c.task): c for c in cells}
    header = ["model", "method", *(TASK_HEADERS[t] for t in TASKS), "Avg"]
    models = [m for m in MODELS if any(c.model == m for c in cells)]
    table1 = []
    for model in models:
        table1.append(_base_row(results, cells, model))
        table1 += [
            _task_row(results, index, model, m, budget_h) for m in TABLE1_METHODS if (model, m, TASKS[0]) in index
        ]
    model, methods = ABLATION
    ablation = [_task_row(results, index, model, m, budget_h) for m in methods]

    budget_rows = []
    for model in models:
        for method in METHODS:
            task_cells = [index.get((model, method, t)) for t in TASKS]
            if all(c is None for c in task_cells):
                continue
            avgs, costs = [], []
            for budget in budgets_h:
                avgs.append(_pct(_avg([_best(results, c, budget)[0] for c in task_cells])))
                speeds = [results[c].budgets[budget]["s_per_step"] if c in results else None for c in task_cells]
                cost = _avg(speeds)
                costs.append("-" if cost is None else f"{cost:.1f}")
            budget_rows.append([MODELS.get(model, model), METHODS.get(method, method), *avgs, *costs])
    hours = [f"{b:g} h" for b in budgets_h]
    budget_header = ["model", "method", *(f"Avg {h}" for h in hours), *(f"s/step {h}" for h in hours)]

    return (
        "\n\n".join(
            [
                f"## Table 1: best avg@16 (%) within {budget_h:g} h",
                _table(header, table1),
                f"## Ablation (Qwen3-8B): best avg@16 (%) within {budget_h:g} h",
                _table(header, ablation),
                "## Budgets: Avg of the five tasks' best avg@16 (%) within each budget; mean seconds per step in it",
                _table(budget_header, budget_rows),
                "`-`: no log, or no validation in the budget (an Avg over a `-` is `-`). "
                "`*`: the run ended before the budget.",
            ]
        )
        + "\n"
    )


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ckpt-root", default="checkpoints", help="CKPT_ROOT of the recipes (default: ./checkpoints)")
    parser.add_argument("--project", default="srpo_paper", help="PROJECT_NAME of the recipes")
    parser.add_argument(
        "--budgets-hours",
        type=float,
        nargs="+",
        default=list(bwb.DEFAULT_BUDGETS_H),
        help="windows of the Budgets table (default: 1 5 10)",
    )
    parser.add_argument(
        "--budget-hours", type=float, default=10.0, help="budget of Table 1 and the ablation (default: 10)"
    )
    parser.add_argument("--include-validation-time", action="store_true", help="count validation time in the clock")
    parser.add_argument("--recipes", default=str(REPO / "recipes"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    budgets = sorted(set(args.budgets_hours) | {args.budget_hours})
    cells = recipe_cells(Path(args.recipes))
    results = read_all(
        cells,
        args.ckpt_root,
        args.project,
        budgets,
        include_validation=args.include_validation_time,
        warn=lambda line: print(line, file=sys.stderr),
    )
    print(f"{len(results)} of {len(cells)} cells have a readable log", file=sys.stderr)
    sys.stdout.write(
        render(cells, results, [b for b in budgets if b in args.budgets_hours] or budgets, args.budget_hours)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
