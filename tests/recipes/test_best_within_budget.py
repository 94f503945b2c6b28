"""scripts/best_within_budget.py on small synthetic logs in verl's file-logger and flat formats."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "best_within_budget.py"
spec = importlib.util.spec_from_file_location("best_within_budget", SCRIPT)
bwb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bwb)

ACC = "val-core/sciknoweval/acc/mean@16"
H = 3600.0


def write_verl_log(path, records):
    """verl's FileLogger format: {"step": N, "data": {...}} per line."""
    path.write_text("".join(json.dumps({"step": s, "data": d}) + "\n" for s, d in records))
    return path


@pytest.fixture
def run_log(tmp_path):
    # Base model at step 0; steps of 0.5 h, 0.5 h, 2 h, 3 h, 6 h; validation at steps 2, 4, 5.
    return write_verl_log(
        tmp_path / "metrics.jsonl",
        [
            (0, {ACC: 0.41, "val-core/sciknoweval/acc/best@16/mean": 0.9}),
            (1, {"timing_s/step": 0.5 * H, "actor/lr": 5e-6}),
            (2, {"timing_s/step": 0.5 * H, "timing_s/testing": 600.0, ACC: 0.62}),
            (3, {"timing_s/step": 2 * H}),
            (4, {"timing_s/step": 3 * H, ACC: 0.58, "timing_s/testing": 600.0}),
            (5, {"timing_s/step": 6 * H, ACC: 0.83}),
        ],
    )


def budgets(result):
    return [(b["budget_h"], b["best"], b["step"]) for b in result]


def test_best_per_budget_on_the_step_time_clock(run_log):
    records = bwb.load_records([run_log])
    elapsed, clock = bwb.elapsed_seconds(records)
    assert clock == "step_time"
    assert elapsed == {0: 0.0, 1: 0.5 * H, 2: 1 * H, 3: 3 * H, 4: 6 * H, 5: 12 * H}
    result = bwb.best_within(records, elapsed, ACC)
    # 1h: step 2 ends exactly at the budget (inclusive); 5h: still step 2, since 0.58 at 6h is out;
    # 10h: step 4's 0.58 is worse than 0.62; the 0.83 at 12h is beyond every budget.
    assert budgets(result) == [(1.0, 0.62, 2), (5.0, 0.62, 2), (10.0, 0.62, 2)]
    assert [b["complete"] for b in result] == [True, True, True]
    assert result[0]["s_per_step"] == pytest.approx(0.5 * H)
    assert result[2]["s_per_step"] == pytest.approx(1.5 * H)  # steps 1-4


def test_validation_time_can_be_counted(run_log):
    records = bwb.load_records([run_log])
    elapsed, _ = bwb.elapsed_seconds(records, include_validation=True)
    assert elapsed[2] == pytest.approx(1 * H + 600)
    assert budgets(bwb.best_within(records, elapsed, ACC, [1]))[0] == (1.0, 0.41, 0)  # step 2 now lands after 1h


def test_metric_is_found_automatically_and_short_runs_are_flagged(run_log):
    records = bwb.load_records([run_log])
    assert bwb.find_metrics(records) == [ACC]  # best@16 is not avg@16
    elapsed, _ = bwb.elapsed_seconds(records)
    result = bwb.best_within(records, elapsed, ACC, [20])
    assert result[0]["best"] == 0.83 and result[0]["complete"] is False


def test_a_resumed_run_is_merged_by_step_later_files_win(tmp_path):
    first = write_verl_log(
        tmp_path / "metrics.20260101-000000.jsonl",
        [
            (0, {ACC: 0.40}),
            (1, {"timing_s/step": H}),
            (2, {"timing_s/step": H, ACC: 0.50}),
            (3, {"timing_s/step": H, ACC: 0.99}),
        ],
    )
    # Crashed after step 3 with the last checkpoint at step 2: the resumed launch re-runs step 3.
    second = write_verl_log(tmp_path / "metrics.20260101-060000.jsonl", [(3, {"timing_s/step": 2 * H, ACC: 0.55})])
    records = bwb.load_records([tmp_path])  # a folder: every *.jsonl in name order
    assert records[3][ACC] == 0.55
    elapsed, _ = bwb.elapsed_seconds(records)
    assert elapsed[3] == 4 * H
    assert budgets(bwb.best_within(records, elapsed, ACC, [5])) == [(5.0, 0.55, 3)]
    assert bwb.load_records([first, second]) == records


def test_flat_jsonl_with_wall_clock_seconds_or_timestamps(tmp_path):
    flat = tmp_path / "flat.jsonl"
    flat.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"step": 0, "timing/wall": 0, "val/acc": 0.3},
                {"step": 10, "timing/wall": 0.9 * H, "val/acc": 0.5},
                {"step": 20, "timing/wall": 4.0 * H, "val/acc": 0.7},
                {"step": 30, "timing/wall": 9.0 * H, "val/acc": 0.6},
            ]
        )
    )
    records = bwb.load_records([flat])
    elapsed, clock = bwb.elapsed_seconds(records)
    assert clock == "wall"
    assert budgets(bwb.best_within(records, elapsed, "val/acc")) == [(1.0, 0.5, 10), (5.0, 0.7, 20), (10.0, 0.7, 20)]

    stamped = tmp_path / "stamped.jsonl"
    start = 1_780_000_000
    stamped.write_text(
        "".join(
            json.dumps({"step": s, "timestamp": start + t, "val/acc": a}) + "\n"
            for s, t, a in [(0, 0, 0.3), (5, 2 * H, 0.6)]
        )
    )
    records = bwb.load_records([stamped])
    elapsed, _ = bwb.elapsed_seconds(records, clock="wall", wall_key="timestamp")
    assert elapsed == {0: 0.0, 5: 2 * H}


def test_cli_prints_a_table_and_json(run_log, capsys):
    assert bwb.main([str(run_log)]) == 0
    out = capsys.readouterr().out
    assert ACC in out and "validation excluded" in out
    assert "     1h   0.6200   62.0      2" in out
    assert bwb.main([str(run_log), "--json", "--budgets-hours", "1", "10"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["metric"] == ACC and [b["best"] for b in result["budgets"]] == [0.62, 0.62]


def test_unusable_logs_are_refused_with_a_reason(tmp_path, run_log):
    with pytest.raises(SystemExit, match="val-core"):
        bwb.main([str(run_log), "--metric", "val-core/nope/acc/mean@16"])
    gap = write_verl_log(tmp_path / "gap.jsonl", [(0, {ACC: 0.1}), (1, {ACC: 0.2})])
    with pytest.raises(SystemExit, match="timing"):
        bwb.main([str(gap)])
    with pytest.raises(SystemExit, match="does not exist"):
        bwb.main([str(tmp_path / "missing.jsonl")])


RESUMED = Path(__file__).resolve().parent / "fixtures" / "resumed_cpu_run"  # a real resumed CPU run, see its README


def test_log_of_a_real_resumed_run_is_read_as_one_run(capsys):
    """verl's resumed launch logs a validation-only record at the checkpoint step (2) before step 3;
    the budget script used to stop there ("step 2 has no 'timing_s/step'")."""
    first, resumed = (
        [json.loads(line) for line in (RESUMED / name).read_text().splitlines()]
        for name in ("metrics.1-first.jsonl", "metrics.2-resumed.jsonl")
    )
    assert resumed[0]["step"] == 2 and "timing_s/step" not in resumed[0]["data"]  # what the fixture shows
    step_times = {r["step"]: r["data"]["timing_s/step"] for r in first + resumed if "timing_s/step" in r["data"]}
    assert sorted(step_times) == [1, 2, 3]

    records = bwb.load_records([RESUMED])
    elapsed, clock = bwb.elapsed_seconds(records)
    assert clock == "step_time"
    assert elapsed == pytest.approx(
        {0: 0.0, 1: step_times[1], 2: step_times[1] + step_times[2], 3: sum(step_times.values())}
    )
    assert records[2]["timing_s/step"] == step_times[2]  # the training record of step 2 survives the merge
    metric = "val-core/srpo_verl/addition/acc/mean@16"
    assert bwb.find_metrics(records) == [metric]
    assert bwb.main([str(RESUMED), "--budgets-hours", "0.0015", "1"]) == 0  # 5.4 s: steps 0-2 fit, step 3 does not
    out = capsys.readouterr().out
    assert "last step 3" in out and "0.0015h" in out and "(run shorter than budget)" in out

    # Only the resumed launch's file: the training time before step 3 is unknown, and said so.
    with pytest.raises(SystemExit, match="earlier launches"):
        bwb.main([str(RESUMED / "metrics.2-resumed.jsonl")])
