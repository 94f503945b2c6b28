"""Every method and mode through verl's real trainer on CPU (`python -m srpo_verl.main_ppo`), 2 steps
each, with each one's defining property checked in the logged metrics or the saved state.

grpo, srpo and sdpo (and the async trainer) run in test_cpu_grpo.py / test_cpu_srpo.py; the other
modes share four launches here (~6 min on 2 cores), switches that do not interact combined:

  mix        algorithm=advantage_mix           nothing routed to distillation; the teacher still scores
                                               the rows that have one (for the mixed advantage)
  no_dw      algorithm=srpo_no_dw + distill_mode=sampled_token
                                               beta = 0: every weight exactly 1; sampled-token: no top-K
                                               processor in the update
  region     teacher=trust_region + entropy_mode=topk_tail (topk=8 < V)
                                               teacher frozen at theta_0; weights read the K+1-bucket entropy
  full       distill_mode=full_vocab           K = V: the top-K hold all teacher mass (empty tail)
  dp2        srpo on 2 data-parallel ranks     routed SRPO runs on 2 ranks; the teacher pass scores exactly
                                               the teacher rows (odd counts are padded with distinct rows)
"""

import os

import pytest
import torch
from safetensors.torch import load_file

from srpo_verl.demo.harness import checkpoint_weights, launch, tiny_cpu_overrides

pytestmark = pytest.mark.slow

TIMEOUT_S = 480
ROUTED = ["reward.custom_reward_function.name=compute_digit_score", "algorithm.srpo.success_threshold=0.15"]
MODES = {
    "mix": ("advantage_mix", []),
    "no_dw": ("srpo_no_dw", ["algorithm.srpo.distill_mode=sampled_token"]),
    "region": (
        "srpo",
        ["algorithm.srpo.teacher=trust_region", "algorithm.srpo.entropy_mode=topk_tail", "algorithm.srpo.topk=8"],
    ),
    "full": ("srpo", ["algorithm.srpo.distill_mode=full_vocab"]),
    "dp2": ("srpo", ["trainer.n_gpus_per_node=2"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_path, addition_data):
    work = str(tmp_path_factory.mktemp("cpu_modes"))
    out = {}
    for name, (algorithm, extra) in MODES.items():
        ckpt = os.path.join(work, name)
        args = tiny_cpu_overrides(
            tiny_model_path, addition_data, ckpt, algorithm=algorithm, total_steps=2, save_freq=2, experiment=name
        )
        result = launch(work, name, [*args, *ROUTED, *extra], timeout_s=TIMEOUT_S)
        assert result.returncode == 0, result.log[-6000:]
        assert sorted(result.steps) == [1, 2], (name, sorted(result.steps))
        out[name] = result
        out[name + "_dir"] = ckpt
    return out


def routed_steps(run):
    return [m for m in run.steps.values() if m["srpo/routed_share"] > 0]


def test_advantage_mix_routes_nothing_but_teaches_rows_with_a_teacher(runs):
    steps = runs["mix"].steps.values()
    for m in steps:
        assert m["srpo/routed_share"] == 0.0
        assert m["actor/srpo/sdpo_token_share"] == 0.0
        assert m["actor/srpo/grpo_token_share"] == pytest.approx(1.0)
        assert m["srpo/teacher_pass_rows"] == m["srpo/teacher_rows"]
    assert sum(m["srpo/teacher_rows"] for m in steps) > 0, "no row had a teacher: the mix was never exercised"


def test_no_dw_weights_are_exactly_one_and_sampled_token_skips_the_processor(runs):
    steps = routed_steps(runs["no_dw"])
    assert steps, "nothing was routed"
    for m in steps:
        assert m["actor/srpo/weight_mean"] == 1.0
        assert m["actor/srpo/weight_max"] == 1.0
        assert m["actor/srpo/weight_std"] == 0.0
        assert m["actor/srpo/sdpo_token_share"] > 0
        # Sampled-token distillation: verl does not call the top-K processor (no match metric).
        assert "actor/srpo/topk_match_fraction" not in m


def test_trust_region_teacher_stays_at_the_initial_weights(runs, tiny_model_path):
    theta0 = load_file(os.path.join(tiny_model_path, "model.safetensors"))
    saved = checkpoint_weights(runs["region_dir"], 2)
    assert saved["teacher"], "no teacher in the checkpoint"
    for name, t in saved["teacher"].items():
        assert torch.equal(t, theta0[name].to(t.dtype)), name
    moved = max(float((saved["student"][n] - theta0[n]).abs().max()) for n in saved["teacher"])
    assert moved > 1e-4, "the student did not move: a frozen teacher would be trivially equal"
    assert all(m["srpo/teacher_student_l2"] > 0 for m in runs["region"].steps.values())


def test_topk_tail_entropy_mode_weights_read_the_bucket_entropy(runs):
    steps = routed_steps(runs["region"])
    assert steps, "nothing was routed"
    for m in steps:
        # The loss's token mean of the entropy it weighs with = the teacher pass's K+1-bucket entropy,
        # which is a strict lower bound of the full one at K = 8 < V.
        assert m["actor/srpo/weight_entropy_mean"] == pytest.approx(m["srpo/teacher_entropy_topk"], rel=1e-4)
        assert m["srpo/teacher_entropy_topk"] < m["srpo/teacher_entropy_full"]


def test_full_vocab_distils_over_the_whole_vocabulary(runs):
    steps = routed_steps(runs["full"])
    assert steps, "nothing was routed"
    for m in steps:
        assert m["srpo/teacher_tail_mass"] < 1e-5  # K = V: no mass outside the support
        assert m["srpo/teacher_entropy_topk"] == pytest.approx(m["srpo/teacher_entropy_full"], rel=1e-4, abs=1e-5)
        assert m["actor/srpo/weight_entropy_mean"] == pytest.approx(m["srpo/teacher_entropy_full"], rel=1e-4)


def test_two_data_parallel_ranks_score_exactly_the_teacher_rows(runs):
    # Routed SRPO on 2 ranks end to end. Whether a step needs a padding row (an odd teacher-row count)
    # depends on the rollouts, which 2 rollout replicas make timing-dependent; the padding itself is
    # tested deterministically in tests/integration/test_method.py.
    steps = runs["dp2"].steps.values()
    assert sum(m["srpo/teacher_rows"] for m in steps) > 0, "nothing was routed"
    for m in steps:
        assert m["srpo/teacher_pass_rows"] == m["srpo/teacher_rows"]
