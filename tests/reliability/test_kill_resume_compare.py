"""The kill/resume harness (scripts/kill_resume_trials.py) can fail: its comparisons catch one
differing metric or weight. The trials themselves launch verl and are run by hand, not here."""

import importlib.util
import math
import sys
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location(
    "kill_resume_trials", Path(__file__).resolve().parents[2] / "scripts" / "kill_resume_trials.py"
)
krt = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = krt  # its dataclasses resolve annotations through sys.modules
_spec.loader.exec_module(krt)


def test_metric_comparison_catches_any_difference():
    ref = {1: {"actor/pg_loss": 0.25, "srpo/routed_share": 0.5, "timing_s/step": 2.0}, 2: {"actor/pg_loss": float("nan")}}
    same = {1: {"actor/pg_loss": 0.25, "srpo/routed_share": 0.5, "timing_s/step": 9.0}, 2: {"actor/pg_loss": float("nan")}}
    assert krt.compare_metrics(ref, same) == (0.0, [])  # timings ignored, NaN == NaN
    off = {1: {**same[1], "actor/pg_loss": 0.25 + 1e-12}, 2: same[2]}
    diff, mismatches = krt.compare_metrics(ref, off)
    assert 0 < diff < 1e-11 and mismatches == [f"step 1 actor/pg_loss: 0.25 vs {0.25 + 1e-12!r}"]
    diff, mismatches = krt.compare_metrics(ref, {1: same[1]})
    assert diff == math.inf and mismatches == ["step 2 only in reference"]
    diff, _ = krt.compare_metrics(ref, {1: {"actor/pg_loss": 0.25}, 2: same[2]})
    assert diff == math.inf  # a metric missing from a step


def test_weight_comparison_catches_any_difference():
    a = {"w": torch.zeros(3), "b": torch.ones(2)}
    assert krt.compare_weights(a, {k: v.clone() for k, v in a.items()}) == 0.0
    b = {"w": torch.tensor([0.0, 1e-7, 0.0]), "b": torch.ones(2)}
    assert krt.compare_weights(a, b) == torch.tensor(1e-7).double().item()
    assert krt.compare_weights(a, {"w": torch.zeros(3)}) == math.inf  # a tensor missing
    assert krt.compare_weights({}, {}) == math.inf  # no teacher saved is not "identical"


def _checkpoint(root, step, student, teacher):
    actor = root / f"global_step_{step}" / "actor"
    (actor / "srpo_ema_teacher").mkdir(parents=True)
    torch.save(student, actor / "model_world_size_1_rank_0.pt")
    torch.save(teacher, actor / "srpo_ema_teacher" / "rank_0.pt")


def test_trial_evaluation_tolerates_only_a_lost_metrics_line(tmp_path):
    # verl saves step 3's checkpoint, then logs step 3: a kill in between loses that line (the
    # resume starts at 4). Same weights and same logged metrics: identical, with step 3 reported lost.
    from srpo_verl.launch import Launch

    ref_steps = {s: {"actor/pg_loss": 0.1 * s} for s in range(1, 6)}
    w = {"w": torch.arange(3.0)}
    _checkpoint(tmp_path / "ref", 5, w, {"w": w["w"] / 2})
    _checkpoint(tmp_path / "trial", 5, w, {"w": w["w"] / 2})
    reference = (Launch(returncode=0, log="", steps=ref_steps), str(tmp_path / "ref"))
    first = {s: ref_steps[s] for s in (1, 2)}
    second = {s: ref_steps[s] for s in (4, 5)}

    def evaluate(first, second):
        r = krt.TrialResult(trial=0, kill_after_checkpoint=1, delay_s=0.0, killed=True, resumed_from=3)
        return krt.evaluate(r, reference, first, second, str(tmp_path / "trial"), 5)

    r = evaluate(first, second)
    assert r.identical and r.lost_metric_steps == [3] and r.metrics_max_abs_diff == 0.0
    # A step lost after the checkpoint (never replayed) is a real gap, not tolerated.
    r = evaluate(first, {5: ref_steps[5]})
    assert not r.identical and "step 4 only in reference" in r.metrics_mismatches
    # A replayed step (logged before the kill, after the checkpoint) must equal the reference too.
    r = evaluate({**first, 4: {"actor/pg_loss": 0.5}}, second)
    assert not r.identical and r.metrics_mismatches == ["replayed step 4 actor/pg_loss: 0.4 vs 0.5"]
    # One differing teacher element is caught.
    _checkpoint(tmp_path / "trial2", 5, w, {"w": w["w"] / 2 + torch.tensor([0.0, 0.0, 1e-6])})
    r = krt.evaluate(
        krt.TrialResult(trial=0, kill_after_checkpoint=1, delay_s=0.0, killed=True, resumed_from=3),
        reference, first, second, str(tmp_path / "trial2"), 5,
    )
    assert not r.identical and r.student_max_abs_diff == 0.0 and 0 < r.teacher_max_abs_diff < 2e-6
