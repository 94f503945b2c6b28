"""One short SIGKILL/resume trial of `scripts/kill_resume_trials.py` (the 5-trial run is the script).

An uninterrupted 4-step SRPO run is the reference; a second run of the same seed is SIGKILLed
(its whole process session) shortly after its step-2 checkpoint, resumed, and compared: the
metrics trajectory and the final student and EMA-teacher weights must be identical, bit for bit
(docs/reliability.md, "Faults: kill and resume"). Three launches, each its own Ray session: an
exact match also shows that two launches of one seed agree, which timing-dependent rollout
batching once broke from step 2 on (srpo_verl/cpu/hf_rollout.py, DECODE_ROWS).
"""

import importlib.util
import os
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "kill_resume_trials.py")
STEPS = 4


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("kill_resume_trials", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def test_killed_and_resumed_run_equals_uninterrupted_run(harness, tmp_path):
    workdir = str(tmp_path)
    model, data = harness.setup(workdir)
    reference = harness.reference_run(workdir, model, data, STEPS)
    result = harness.run_trial(
        workdir, model, data, reference, steps=STEPS, trial=0, kill_after_checkpoint=2, delay_s=0.5
    )
    assert result.killed, result.error
    assert result.resumed_from is not None and result.resumed_from >= 2
    assert result.error is None, result.error
    assert result.metrics_identical, (result.first_difference, result.metrics_mismatches)
    assert result.student_max_abs_diff == 0.0
    assert result.teacher_max_abs_diff == 0.0
