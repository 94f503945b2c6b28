"""The main job, shortened: `DEMO_QUICK=1 bash scripts/demo.sh` (one trainer launch, 2 SRPO steps).

Runs the README command end to end in a temporary cache and output directory: setup (already
done: seconds), tiny model, data, a 30-step warm start, SRPO through verl's trainer, evaluation of
the saved weights and the report. ~2.5 min on 2 cores. It checks the pipeline, not learning
(docs/demo.md has the measured curves).
"""

import json
import os
import subprocess

import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    out = work / "out"
    env = {
        **os.environ,
        "DEMO_QUICK": "1",
        "DEMO_OUT": str(out),
        "SRPO_VERL_CACHE": str(work / "cache"),
    }
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "demo.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        start_new_session=True,
    )
    return {"proc": proc, "out": str(out), "cache": str(work / "cache")}


def test_demo_exits_zero_and_shows_progress(demo):
    proc = demo["proc"]
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    for line in (
        "[warm start] step 30/30",
        "[srpo_s0] step 1/2",
        "[srpo_s0] step 2/2",
        "[eval] step 2",
        "[demo] report:",
    ):
        assert line in proc.stdout, line


def test_run_logged_srpo_metrics_every_step(demo):
    run = os.path.join(demo["out"], "runs", "srpo_s0")
    with open(os.path.join(run, "train.jsonl")) as f:
        steps = {r["step"]: r["data"] for r in map(json.loads, f)}
    assert sorted(steps) == [1, 2]
    for metrics in steps.values():
        for key in ("critic/score/mean", "srpo/routed_share", "timing_s/step", "response_length/mean"):
            assert key in metrics, key
    with open(os.path.join(run, "run.json")) as f:
        record = json.load(f)
    assert record["returncode"] == 0 and "algorithm=srpo" in record["overrides"]
    # Checkpoints are deleted once evaluated.
    assert not os.path.exists(os.path.join(run, "checkpoints"))


def test_eval_and_report_written(demo):
    with open(os.path.join(demo["out"], "runs", "srpo_s0", "eval.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows] == [0, 2]
    assert rows[1]["n_prompts"] == 256 and rows[1]["train_s"] > 0
    report = open(os.path.join(demo["out"], "report.md")).read()
    assert "| SRPO |" in report
    for png in ("accuracy_vs_step.png", "accuracy_vs_time.png", "training_signals.png"):
        path = os.path.join(demo["out"], png)
        assert os.path.getsize(path) > 10_000 and f"]({png})" in report
    # The warm start went to the test's cache, not the user's.
    assert any(name.startswith("warm_start_") for name in os.listdir(demo["cache"]))
