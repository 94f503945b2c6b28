"""The collapse guard inside verl's real trainer on CPU: a run forced into collapse is stopped.

Two launches (~1.5 min each on 2 cores). The first: the tiny model with the digit-fraction reward of test_cpu_srpo.py
and a learning rate of 1.0 (1,000x the other CPU runs'). By step 3 every rollout runs to the 8-token
limit without a digit: the correct share falls from 0.5 to 0 and the rewards go flat.
`algorithm.srpo.guard.action=stop` with a short history (the run is 10 steps long) must then warn,
log `srpo/guard/correct_share` = 1 at step 3, not save step 3's checkpoint, end the run cleanly
(exit 0, no step 4) and report the last checkpoint saved before the breach (step 2) and the best
checkpoint by validation. The second runs the same collapse in verl's colocated asynchronous
trainer (`srpo_colocate_async`) and stops on the degenerate signals (N = 3 here): once no failed
row has a correct sibling nothing is routed, and the guard fires on the third such step in a row
(flat rewards and no-correct with it where their own conditions held as long).
"""

import json
import os
import re

import pytest

from srpo_verl import guard as collapse_guard
from srpo_verl.demo.harness import latest_checkpoint, launch, tiny_cpu_overrides

pytestmark = pytest.mark.slow

FORCED = [
    "reward.custom_reward_function.name=compute_digit_score",
    "algorithm.srpo.success_threshold=0.15",
    "algorithm.srpo.guard.action=stop",
    "algorithm.srpo.guard.min_history=2",
    "algorithm.srpo.guard.smooth=1",
]
VALIDATE = ["trainer.test_freq=1", "actor_rollout_ref.rollout.val_kwargs.n=2"]  # every step, kept cheap


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, tiny_model_path, addition_data):
    work = str(tmp_path_factory.mktemp("cpu_guard"))
    ckpt = os.path.join(work, "ckpt")
    args = tiny_cpu_overrides(
        tiny_model_path, addition_data, ckpt, total_steps=10, save_freq=1, lr=1.0, experiment="guard_stop"
    )
    # Room for the teacher's template around the question (verl's rollout cuts a longer prompt).
    teacher_prompted = [
        "algorithm.srpo.guard.teacher_prompted_validation=True",
        f"trainer.validation_data_dir={work}/val",
        "data.max_prompt_length=96",
    ]
    result = launch(work, "guard_stop", [*args, *FORCED, *VALIDATE, *teacher_prompted], timeout_s=480)
    assert result.returncode == 0, result.log[-6000:]
    return result, ckpt, work


def test_the_guard_fires_at_the_collapse(stopped):
    result, *_ = stopped
    steps = result.steps
    assert sorted(steps) == [1, 2, 3], "the run went on past the breach"
    assert steps[2]["srpo/correct_share"] > 0 and steps[3]["srpo/correct_share"] == 0  # the forced collapse
    assert [steps[s]["srpo/guard/correct_share"] for s in (1, 2, 3)] == [0, 0, 1]
    warning = [line for line in result.log.splitlines() if "collapse guard: correct_share at step 3" in line]
    assert warning and "srpo/correct_share recent values" in warning[0] and "threshold" in warning[0]


def test_stop_keeps_the_last_checkpoint_before_the_breach(stopped):
    result, ckpt, _ = stopped
    assert latest_checkpoint(ckpt) == 2
    assert os.path.isdir(os.path.join(ckpt, "global_step_2", "actor"))
    assert not os.path.exists(os.path.join(ckpt, "global_step_3"))
    assert "step 3's checkpoint not saved" in result.log


def test_stop_reports_the_checkpoints(stopped):
    result, *_ = stopped
    report = [line for line in result.log.splitlines() if "collapse guard stopped the run" in line]
    assert report, result.log[-4000:]
    assert "last checkpoint saved before the breach: global_step_2" in report[0]
    # The best of the validated checkpoints (steps 1 and 2) by verl's val-core accuracy, the earliest
    # of equals (the untrained tiny model scores 0 on exact addition at both).
    val = {s: [v for k, v in result.steps[s].items() if re.match(r"val-core/.*/acc/mean@\d+$", k)] for s in (1, 2)}
    assert all(val.values()), sorted(result.steps[1])
    best = max((1, 2), key=lambda s: (sum(val[s]) / len(val[s]), -s))
    assert f"best checkpoint by validation: global_step_{best} " in report[0]


def test_teacher_prompted_validation_runs_beside_verls_and_is_judged(stopped):
    # Each validation is run twice: verl's, and with every prompt rewritten as the teacher's (the gold
    # answer as the demonstration), dumped apart. The guard's metric is 1 exactly where that score is
    # more than 0.25 below its best earlier validation.
    result, _, work = stopped
    validated = [s for s in sorted(result.steps) if collapse_guard.TEACHER_PROMPTED in result.steps[s]]
    assert validated[:2] == [1, 2], sorted(result.steps[1])
    best = None
    for s in validated:
        m = result.steps[s]
        assert any(k.startswith("srpo/val_teacher_prompted/") and "/acc/mean@" in k for k in m)
        value = m[collapse_guard.TEACHER_PROMPTED]
        assert m["srpo/guard/teacher_prompted"] == int(best is not None and best - value > 0.25), s
        best = value if best is None else max(best, value)
    plain = sorted(os.listdir(os.path.join(work, "val")))
    taught = sorted(os.listdir(os.path.join(work, "val", "teacher_prompted")))
    assert "1.jsonl" in plain and "1.jsonl" in taught
    rows = [json.loads(line) for line in open(os.path.join(work, "val", "teacher_prompted", "1.jsonl"))]
    plain_rows = [json.loads(line) for line in open(os.path.join(work, "val", "1.jsonl"))]
    # The teacher's template around the question, with the gold answer shown; verl's own prompts without.
    assert rows and all("Correct solution" in r["input"] and str(r["gts"]) in r["input"] for r in rows)
    assert not any("Correct solution" in r["input"] for r in plain_rows)


@pytest.fixture(scope="module")
def stopped_async(tmp_path_factory, tiny_model_path, addition_data):
    work = str(tmp_path_factory.mktemp("cpu_guard_async"))
    ckpt = os.path.join(work, "ckpt")
    args = tiny_cpu_overrides(
        tiny_model_path, addition_data, ckpt, total_steps=10, save_freq=1, lr=1.0, experiment="guard_async"
    )
    degenerate = [
        "trainer.v1.trainer_mode=srpo_colocate_async",
        "algorithm.srpo.guard.degenerate_steps=3",
        "algorithm.srpo.guard.correct_share_drop=null",  # only the degenerate signals here
    ]
    result = launch(work, "guard_async", [*args, *FORCED, *degenerate], timeout_s=480)
    assert result.returncode == 0, result.log[-6000:]
    return result, ckpt


def test_degenerate_signals_stop_the_async_trainer(stopped_async):
    result, ckpt = stopped_async
    steps = result.steps
    order = sorted(steps)
    assert order == list(range(1, max(order) + 1))
    # The asynchronous run is not bit-reproducible: the collapse goes to 8 non-digits (every rollout
    # wrong), to 8 digits (every rollout "correct"), or to partial digit scores below the success
    # threshold. Each signal's condition, read from the logged metrics; the guard must fire each one
    # exactly at the first step that ends 3 steps of it in a row, and the run stop at the first such step.
    held = {
        "nothing_routed": [steps[s]["srpo/routed_share"] == 0 for s in order],
        "flat_rewards": [steps[s]["srpo/reward_range"] == 0 for s in order],
        "no_correct": [steps[s]["srpo/correct_share"] == 0 for s in order],
    }
    third = {
        signal: next((s for s in order[2:] if all(h[s - 3 : s])), None) for signal, h in held.items()
    }  # the step ending the first run of 3
    assert third["nothing_routed"] is not None, "the collapse was not forced"
    fired = min(t for t in third.values() if t is not None)
    assert max(order) == fired  # the run stops there
    for signal in held:
        fires = third[signal] == fired
        assert [steps[s][f"srpo/guard/{signal}"] for s in order] == [int(fires and s == fired) for s in order]
        assert (f"collapse guard: {signal} at step {fired}" in result.log) == fires
    assert all(steps[s]["srpo/guard/distillation_inactive"] == 0 for s in order)  # nothing routed: not inactive
    assert latest_checkpoint(ckpt) == fired - 1 and not os.path.exists(os.path.join(ckpt, f"global_step_{fired}"))
    assert f"last checkpoint saved before the breach: global_step_{fired - 1}" in result.log
    assert "best checkpoint by validation: unknown" in result.log  # test_freq=-1: nothing validated
