"""Report builder (srpo_verl/demo/report.py) on recorded runs.

tests/demo/fixtures/recorded/ holds 8 real runs of `python -m srpo_verl.demo.run` (GRPO, SDPO,
SRPO, SRPO beta=0 x seeds 0-1, 30 steps), their train.jsonl trimmed to the metrics the report reads.
"""

import json
import os
import shutil

import pytest

from srpo_verl.demo import report

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "recorded")


@pytest.fixture
def out(tmp_path):
    path = tmp_path / "recorded"
    shutil.copytree(FIXTURE, path)
    return str(path)


def test_runs_are_grouped_by_method_in_a_fixed_order(out):
    runs = report.load_runs(out)
    assert list(runs) == ["grpo", "sdpo", "srpo", "srpo_no_dw"]
    assert all([r["seed"] for r in rs] == [0, 1] for rs in runs.values())


def test_report_has_tables_comparisons_and_plots(out):
    path = report.build_report(out, title="recorded")
    text = open(path).read()
    assert text.startswith("# recorded")
    for method in ("GRPO", "SDPO", "SRPO", "SRPO β=0"):
        assert f"| {method} |" in text
    assert "| method | step 0 | step 10 | step 20 | step 30 |" in text
    assert "**final (sampled, step 30)**: SRPO" in text
    assert "**early gain (greedy, step 0 → 10)**: SRPO" in text
    for png in ("accuracy_vs_step.png", "accuracy_vs_time.png", "training_signals.png"):
        assert os.path.getsize(os.path.join(out, png)) > 20_000, png
        assert f"]({png})" in text


def test_table_cells_are_the_seed_mean_and_std(out):
    runs = report.load_runs(out)
    values = []
    for seed in (0, 1):
        with open(os.path.join(out, "runs", f"srpo_s{seed}", "eval.jsonl")) as f:
            values.append(next(r for r in map(json.loads, f) if r["step"] == 30)["sampled_acc"])
    mean, std = report.mean_std(values)
    assert report.eval_table(runs["srpo"], "sampled_acc")[30] == values
    row = next(line for line in open(report.build_report(out)).read().splitlines() if line.startswith("| SRPO |"))
    assert report.fmt(mean, std, 2) in row


def test_trainer_time_excludes_checkpoint_saves():
    from srpo_verl.demo.run import train_seconds

    metrics = {
        1: {"timing_s/step": 10.0},
        2: {"timing_s/step": 3.0, "timing_s/save_checkpoint": 1.0},
        3: {"timing_s/step": 2.5},
    }
    assert train_seconds(metrics) == {1: 10.0, 2: 12.0, 3: 14.5}


def test_failed_runs_are_listed_and_left_out(out):
    run_json = os.path.join(out, "runs", "sdpo_s1", "run.json")
    with open(run_json) as f:
        record = json.load(f)
    record["returncode"] = 1
    with open(run_json, "w") as f:
        json.dump(record, f)
    failed = []
    runs = report.load_runs(out, failed=failed)
    assert failed == ["sdpo_s1"] and [r["seed"] for r in runs["sdpo"]] == [0]
    assert "Failed runs, left out of everything above" in open(report.build_report(out)).read()


def test_comparison_verdict_is_a_t_test_over_seeds():
    clear = report._versus("x", "A", [0.50, 0.52, 0.51], "B", [0.30, 0.31, 0.29])
    noisy = report._versus("x", "A", [0.50, 0.20, 0.35], "B", [0.30, 0.40, 0.31])
    assert "higher: beyond 4.3 SE" in clear
    assert "within noise" in noisy
    # Paired: consistent per-seed differences are clear even when the seeds' spread is large.
    diff, se, verdict = report._difference([0.035, 0.035, 0.043])
    assert abs(diff - 0.0377) < 1e-3 and verdict.startswith("higher")
    # Two seeds: df 1, t = 12.7.
    assert "12.7 SE" in report._difference([0.1, 0.3])[2]
    # Verdicts go into Markdown table cells.
    assert "|" not in clear and "|" not in noisy


def test_empty_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        report.build_report(str(tmp_path))
