"""The SRPO step inside verl's real trainer on CPU: routing, teacher pass, EMA teacher, resume.

Six launches of `python -m srpo_verl.main_ppo` share this module (~8 min on 2 cores):

  srpo_first    algorithm=srpo, steps 1-2, a checkpoint after every step      (dir A)
  srpo_resumed  the same command to step 3: resumes from step 2               (dir A)
  srpo_straight the same run, steps 1-3 without interruption                  (dir B)
  sdpo_first    algorithm=sdpo, steps 1-2, checkpoint at 2                     (dir C)
  sdpo_resumed  resumes to step 3                                              (dir C)
  srpo_async    trainer.v1.trainer_mode=srpo_colocate_async, use_feedback, 1-2 (dir D)

The tiny model starts untrained, so the reward is `compute_digit_score` (fraction of digit
characters, ~0.1) with success_threshold 0.15: a random model then has both correct and failed
samples in most groups, which is what routing needs. lr 1e-3 makes one step move the weights
far enough for the EMA closed form to be checked against float noise.
"""

import os

import pytest
import torch
from safetensors.torch import load_file

from srpo_verl.demo.harness import checkpoint_weights, launch_tiny

pytestmark = pytest.mark.slow

N_PER_STEP = 8 * 4  # prompts x rollout.n
TIMEOUT_S = 480
ROUTED = ["reward.custom_reward_function.name=compute_digit_score", "algorithm.srpo.success_threshold=0.15"]
# Metrics that legitimately differ between two launches of the same run.
VOLATILE = ("timing", "perf/", "throughput", "time", "memory", "wall")


def run(workdir, name, *, extra=(), **kw):
    return launch_tiny(workdir, name, extra=[*ROUTED, *extra], timeout_s=TIMEOUT_S, **kw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_path, addition_data):
    work = str(tmp_path_factory.mktemp("cpu_srpo"))
    dirs = {key: os.path.join(work, key) for key in "ABCD"}
    out = {"dirs": dirs}
    common = dict(model=tiny_model_path, data=addition_data)
    out["srpo_first"] = run(work, "srpo_first", ckpt=dirs["A"], steps=2, save_freq=1, **common)
    out["srpo_resumed"] = run(work, "srpo_resumed", ckpt=dirs["A"], steps=3, save_freq=1, **common)
    out["srpo_straight"] = run(work, "srpo_straight", ckpt=dirs["B"], steps=3, save_freq=3, **common)
    out["sdpo_first"] = run(work, "sdpo_first", ckpt=dirs["C"], algorithm="sdpo", steps=2, save_freq=2, **common)
    out["sdpo_resumed"] = run(work, "sdpo_resumed", ckpt=dirs["C"], algorithm="sdpo", steps=3, save_freq=2, **common)
    out["srpo_async"] = run(
        work,
        "srpo_async",
        ckpt=dirs["D"],
        steps=2,
        save_freq=-1,
        extra=["trainer.v1.trainer_mode=srpo_colocate_async", "algorithm.srpo.use_feedback=True"],
        **common,
    )
    return out


def stable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not any(word in k for word in VOLATILE)}


# --------------------------------------------------------------------------- routing and metrics


@pytest.mark.parametrize("name", ["srpo_first", "srpo_resumed", "srpo_straight", "srpo_async"])
def test_srpo_logs_its_metrics_every_step(runs, name):
    for step, m in runs[name].steps.items():
        for key in (
            "srpo/routed_share",
            "srpo/all_wrong_group_share",
            "srpo/teacher_rows",
            "srpo/teacher_pass_rows",
            "actor/srpo/grpo_token_share",
            "actor/srpo/sdpo_token_share",
            "srpo/teacher_student_l2",
            "timing_s/srpo_teacher",
        ):
            assert key in m, (name, step, key)


def test_teacher_pass_runs_for_exactly_the_routed_rows(runs):
    routed_steps = 0
    for name in ("srpo_first", "srpo_resumed", "srpo_straight", "srpo_async"):
        for step, m in runs[name].steps.items():
            routed = round(m["srpo/routed_share"] * N_PER_STEP)
            assert m["srpo/teacher_rows"] == routed, (name, step)
            assert m["srpo/teacher_pass_rows"] == routed, (name, step)  # counted on the workers
            if routed:
                routed_steps += 1
                for key in (
                    "srpo/teacher_entropy_full",
                    "srpo/teacher_entropy_topk",
                    "srpo/teacher_tail_mass",
                    "actor/srpo/divergence_mean",
                    "actor/srpo/weight_mean",
                    "actor/srpo/weight_max",
                    "actor/srpo/weight_std",
                    "actor/srpo/sdpo_loss",
                    "actor/srpo/grpo_loss",
                ):
                    assert key in m, (name, step, key)
                # With one optimiser step per batch the student's top-K at the update equals the
                # top-K taken from the (same) parameters in the teacher pass.
                assert m["actor/srpo/topk_match_fraction"] == 1.0, (name, step)
    assert routed_steps >= 4, "the routed branch never ran: the test would prove nothing"


def test_srpo_routes_failed_samples_with_a_correct_sibling_only(runs):
    for step, m in runs["srpo_straight"].steps.items():
        # Routed rows are failed ones: routed + correct <= all rows.
        assert m["srpo/routed_share"] + m["srpo/correct_share"] <= 1.0 + 1e-9, step
        if m["srpo/all_wrong_group_share"] == 1.0 or m["srpo/correct_share"] == 0.0:
            assert m["srpo/routed_share"] == 0.0, step


def test_srpo_never_distils_a_correct_row_and_sdpo_does(runs):
    for name in ("srpo_first", "srpo_resumed", "srpo_straight", "srpo_async"):
        for step, m in runs[name].steps.items():
            assert m["srpo/distilled_correct_rows"] == 0, (name, step)
            if m["srpo/routed_share"] > 0:  # the weights read the full-vocabulary entropy (entropy_mode=full)
                assert m["actor/srpo/weight_entropy_mean"] == pytest.approx(m["srpo/teacher_entropy_full"], rel=1e-4)
    sdpo = [m for name in ("sdpo_first", "sdpo_resumed") for m in runs[name].steps.values()]
    assert sum(m["srpo/distilled_correct_rows"] for m in sdpo) > 0


def test_sdpo_distils_every_sample_that_has_a_teacher(runs):
    for name in ("sdpo_first", "sdpo_resumed"):
        for step, m in runs[name].steps.items():
            routed = round(m["srpo/routed_share"] * N_PER_STEP)
            assert m["srpo/teacher_pass_rows"] == routed, (name, step)
            # SDPO also distils correct samples that have another correct sibling.
            assert m["srpo/routed_share"] >= m["srpo/correct_share"] - 1 / N_PER_STEP or routed == 0, (name, step)


# --------------------------------------------------------------------------- EMA teacher


def initial_weights(model_path: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(model_path, "model.safetensors"))


def test_teacher_after_one_step_is_the_ema_closed_form(runs, tiny_model_path):
    theta0 = initial_weights(tiny_model_path)
    step1 = checkpoint_weights(runs["dirs"]["A"], 1)
    teacher, theta1 = step1["teacher"], step1["student"]
    assert teacher, "no EMA teacher in the checkpoint"
    moved = 0.0
    for name, t in teacher.items():
        expected = 0.95 * theta0[name].double() + 0.05 * theta1[name].double()
        torch.testing.assert_close(t.double(), expected, rtol=0, atol=1e-7)
        moved = max(moved, float((theta1[name] - theta0[name]).abs().max()))
    assert moved > 1e-4, "the student did not move: the closed form would hold trivially"


def test_teacher_after_two_steps_follows_the_recursion(runs):
    step1 = checkpoint_weights(runs["dirs"]["A"], 1)
    step2 = checkpoint_weights(runs["dirs"]["A"], 2)
    for name, t in step2["teacher"].items():
        expected = 0.95 * step1["teacher"][name].double() + 0.05 * step2["student"][name].double()
        torch.testing.assert_close(t.double(), expected, rtol=0, atol=1e-7)


def test_teacher_is_not_the_student(runs):
    final = checkpoint_weights(runs["dirs"]["B"], 3)
    gap = max(float((t - final["student"][n]).abs().max()) for n, t in final["teacher"].items())
    assert gap > 1e-4


# --------------------------------------------------------------------------- save and resume


def test_resume_continues_bit_for_bit(runs):
    resumed, straight = runs["srpo_resumed"], runs["srpo_straight"]
    assert f"Resuming from {runs['dirs']['A']}/global_step_2" in resumed.log
    assert sorted(resumed.steps) == [3]
    assert stable(resumed.steps[3]) == stable(straight.steps[3])
    a = checkpoint_weights(runs["dirs"]["A"], 3)
    b = checkpoint_weights(runs["dirs"]["B"], 3)
    for part in ("student", "teacher"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)


def test_first_steps_repeat_exactly_across_launches(runs):
    for step in (1, 2):
        assert stable(runs["srpo_first"].steps[step]) == stable(runs["srpo_straight"].steps[step])


def test_sdpo_saves_and_resumes(runs):
    assert f"Resuming from {runs['dirs']['C']}/global_step_2" in runs["sdpo_resumed"].log
    assert sorted(runs["sdpo_first"].steps) == [1, 2]
    assert sorted(runs["sdpo_resumed"].steps) == [3]
    assert checkpoint_weights(runs["dirs"]["C"], 2)["teacher"]


def test_colocate_async_mode_runs_the_srpo_step(runs):
    steps = runs["srpo_async"].steps
    assert sorted(steps) == [1, 2]
    assert any(m["srpo/teacher_pass_rows"] > 0 for m in steps.values())


def test_feedback_from_the_reward_function_gives_a_teacher(runs):
    # compute_digit_score returns a feedback string for every non-digit answer; with use_feedback a
    # failed sample without a correct sibling is taught from it (verl keeps it in reward_extra_info).
    steps = runs["srpo_async"].steps
    assert sum(m["srpo/feedback_rows"] for m in steps.values()) > 0
    for m in runs["srpo_straight"].steps.values():
        assert m["srpo/feedback_rows"] == 0  # use_feedback off
