"""scripts/paper_tables.py: the paper's tables from synthetic logs laid out as the recipe cells write them."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
spec = importlib.util.spec_from_file_location("paper_tables", SCRIPTS / "paper_tables.py")
pt = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pt  # its dataclasses look their module up while the class is built
spec.loader.exec_module(pt)

H = 3600.0
TASKS = ("chemistry", "physics", "biology", "materials", "toolalpaca")


def write_cell_log(root, name, records, file="metrics.20260101-000000.jsonl"):
    """verl's FileLogger lines in <root>/srpo_paper/<name>/logs/, where recipes/common.sh puts them."""
    logs = root / "srpo_paper" / name / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (logs / file).write_text("".join(json.dumps({"step": s, "data": d}) + "\n" for s, d in records))
    return logs


def acc(task):
    return f"val-core/{'tooluse' if task == 'toolalpaca' else 'sciknoweval'}/acc/mean@16"


def run(task, base, at_1h, at_5h, at_10h, step_s=0.5 * H, later=None):
    """A 10 h run: validation at step 0 (base) and after 1 h, 5 h and 10 h of training time, steps of
    `step_s` seconds; `later` is a value validated after the 10 h budget."""
    key, records, elapsed, step = acc(task), [(0, {acc(task): base})], 0.0, 0
    marks = {1 * H: at_1h, 5 * H: at_5h, 10 * H: at_10h, 11 * H: later}
    while elapsed < 11 * H - 1:
        step += 1
        elapsed += step_s
        data = {"timing_s/step": step_s}
        if elapsed in marks and marks[elapsed] is not None:
            data[key] = marks[elapsed]
        records.append((step, data))
    return records


def section(text, title_start):
    """{(model, method): [cells after model and method]} of the table under the heading."""
    part = text.split("## " + title_start, 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| Qwen3"):
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


def test_the_cells_are_the_40_recipe_scripts():
    cells = pt.recipe_cells()
    assert len(cells) == 40 and len({c.name for c in cells}) == 40
    for cell in cells:
        # the log folder follows recipes/common.sh's EXPERIMENT_NAME, which the script's name spells too
        assert cell.script.endswith(f"run_{cell.name}.sh")
        assert cell.task in TASKS and cell.model in pt.MODELS and cell.method in pt.METHODS
    assert sum(c.script.startswith("table1/") for c in cells) == 30


@pytest.fixture
def logs(tmp_path):
    root = tmp_path / "checkpoints"
    for i, task in enumerate(TASKS):  # Qwen3-8B SRPO, every task: 1h 0.60+i/100, 5h 0.70+i/100, 10h 0.80+i/100
        write_cell_log(
            root,
            f"qwen3_8b_srpo_{task}",
            run(task, 0.40 + i / 100, 0.60 + i / 100, 0.70 + i / 100, 0.80 + i / 100, later=0.99),
        )
    # GRPO Chemistry only; its best within 10 h comes at 5 h (the 10 h validation is worse).
    write_cell_log(root, "qwen3_8b_grpo_chemistry", run("chemistry", 0.42, 0.50, 0.75, 0.70, step_s=H))
    # A Qwen3-4B SDPO run stopped after 3 h: within 10 h its best is marked as from a shorter run.
    short = [
        (0, {acc("physics"): 0.30}),
        (1, {"timing_s/step": 1.5 * H}),
        (2, {"timing_s/step": 1.5 * H, acc("physics"): 0.55}),
    ]
    write_cell_log(root, "qwen3_4b_sdpo_physics", short)
    # An unreadable cell: a broken JSON line.
    bad = write_cell_log(root, "qwen3_8b_advantage_mix_biology", run("biology", 0.4, 0.5, 0.6, 0.7))
    (bad / "metrics.20260102-000000.jsonl").write_text("{not json\n")
    return root


def test_tables_from_synthetic_logs(logs):
    warnings = []
    cells = pt.recipe_cells()
    results = pt.read_all(cells, str(logs), "srpo_paper", [1.0, 5.0, 10.0], warn=warnings.append)
    assert len(results) == 7
    text = pt.render(cells, results, [1.0, 5.0, 10.0], 10.0)

    table1 = section(text, "Table 1")
    assert table1[("Qwen3-8B", "SRPO")] == ["80.0", "81.0", "82.0", "83.0", "84.0", "82.0"]  # the 0.99 at 11 h is out
    assert table1[("Qwen3-8B", "GRPO")] == ["75.0", "-", "-", "-", "-", "-"]
    # base: step 0, the mean over that model's cells of the task (SRPO's 0.40 and GRPO's 0.42 on Chemistry)
    assert table1[("Qwen3-8B", "base")] == ["41.0", "41.0", "42.0", "43.0", "44.0", "42.2"]
    assert table1[("Qwen3-8B", "SDPO")] == ["-"] * 6
    assert table1[("Qwen3-4B", "SDPO")] == ["-", "55.0*", "-", "-", "-", "-"]
    assert table1[("Qwen3-4B", "base")] == ["-", "30.0", "-", "-", "-", "-"]
    assert list(table1) == [("Qwen3-8B", m) for m in ("base", "GRPO", "SDPO", "SRPO")] + [
        ("Qwen3-4B", m) for m in ("base", "GRPO", "SDPO", "SRPO")
    ]

    ablation = section(text, "Ablation")
    assert list(ablation) == [("Qwen3-8B", "SRPO"), ("Qwen3-8B", "SRPO w/o DW"), ("Qwen3-8B", "advantage mix")]
    assert ablation[("Qwen3-8B", "SRPO")] == table1[("Qwen3-8B", "SRPO")]
    assert ablation[("Qwen3-8B", "advantage mix")] == ["-"] * 6  # the broken log is not read as a result

    budgets = section(text, "Budgets")
    assert budgets[("Qwen3-8B", "SRPO")] == ["62.0", "72.0", "82.0", "1800.0", "1800.0", "1800.0"]
    assert budgets[("Qwen3-8B", "GRPO")] == ["-", "-", "-", "-", "-", "-"]  # four tasks missing

    # one line per cell that could not be read: the broken JSON by file and line, the rest by folder
    assert len(warnings) == 40 - 7
    (broken,) = [w for w in warnings if w.startswith("qwen3_8b_advantage_mix_biology:")]
    assert "metrics.20260102-000000.jsonl:1 is not JSON" in broken
    assert any(w.startswith("qwen3_8b_sdpo_chemistry: no log folder") for w in warnings)


def test_a_resumed_cell_and_an_older_data_source_name(tmp_path):
    root = tmp_path / "ck"
    # two launches of one cell: the second re-runs step 2 after a crash and scores higher there
    write_cell_log(
        root,
        "qwen3_8b_srpo_physics",
        [(0, {acc("physics"): 0.5}), (1, {"timing_s/step": H}), (2, {"timing_s/step": H, acc("physics"): 0.6})],
    )
    write_cell_log(
        root,
        "qwen3_8b_srpo_physics",
        [(2, {"timing_s/step": H, acc("physics"): 0.7})],
        file="metrics.20260101-050000.jsonl",
    )
    # rows written with an earlier data_source name log under that name
    write_cell_log(
        root,
        "qwen3_8b_srpo_biology",
        [
            (0, {"val-core/sciknoweval_biology/acc/mean@16": 0.25}),
            (1, {"timing_s/step": H, "val-core/sciknoweval_biology/acc/mean@16": 0.5}),
        ],
    )
    cells = [c for c in pt.recipe_cells() if c.model == "qwen3_8b" and c.method == "srpo"]
    results = pt.read_all(cells, str(root), "srpo_paper", [10.0], warn=lambda _: None)
    physics = next(c for c in cells if c.task == "physics")
    biology = next(c for c in cells if c.task == "biology")
    assert results[physics].budgets[10.0]["best"] == 0.7 and results[physics].base == 0.5
    assert results[biology].budgets[10.0]["best"] == 0.5 and results[biology].base == 0.25


def test_the_command_prints_the_tables(logs, capsys):
    assert pt.main(["--ckpt-root", str(logs), "--budget-hours", "5"]) == 0
    out, err = capsys.readouterr()
    assert "## Table 1: best avg@16 (%) within 5 h" in out
    assert section(out, "Table 1")[("Qwen3-8B", "SRPO")] == ["70.0", "71.0", "72.0", "73.0", "74.0", "72.0"]
    assert "7 of 40 cells have a readable log" in err
