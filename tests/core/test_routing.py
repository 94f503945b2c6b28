"""Routing (c_i, m_i, z_i) and advantages, against hand-worked cases and plain-loop references."""

import math
import statistics

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from srpo_verl import core_algos as ca


def reference_routing(rewards, uids, threshold=0.5, has_feedback=None):
    """Spec Sec. 1 steps 1-3, one sample at a time."""
    n = len(rewards)
    correct = [r >= threshold for r in rewards]
    available = []
    for i in range(n):
        sibling_ok = any(correct[j] for j in range(n) if j != i and uids[j] == uids[i])
        available.append(sibling_ok or bool(has_feedback is not None and has_feedback[i]))
    sdpo = [(not c) and m for c, m in zip(correct, available)]
    return correct, available, sdpo


def reference_grpo_advantage(rewards, uids, norm_by_std=False, eps=1e-6):
    out = []
    for i, r in enumerate(rewards):
        group = [rewards[j] for j in range(len(rewards)) if uids[j] == uids[i]]
        a = r - statistics.fmean(group)
        if norm_by_std:
            std = statistics.stdev(group) if len(group) > 1 else 0.0
            a = a / (std + eps)
        out.append(a)
    return out


def test_spec_table_all_four_rows():
    # Group "g": 0 correct (has correct sibling 1), 1 correct, 2 wrong (teacher available).
    # Group "h": 3 lone correct (no correct sibling), 4 wrong (teacher = 3).
    # Group "k": 5, 6 all wrong.
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    uids = np.array(["g", "g", "g", "h", "h", "k", "k"], dtype=object)
    r = ca.routing_mask(rewards, uids)
    assert r.correct.tolist() == [True, True, False, True, False, False, False]
    assert r.teacher_available.tolist() == [True, True, True, False, True, False, False]
    # Rows: correct+teacher -> GRPO, lone correct -> GRPO, wrong+teacher -> SDPO, all wrong -> GRPO.
    assert r.sdpo.tolist() == [False, False, True, False, True, False, False]
    assert r.grpo.tolist() == [not s for s in r.sdpo.tolist()]
    assert all(t.dtype == torch.bool and t.shape == (7,) for t in r)


def test_all_correct_group_is_grpo_with_zero_advantage():
    rewards = torch.ones(4)
    uids = np.array(["a"] * 4, dtype=object)
    r = ca.routing_mask(rewards, uids)
    assert r.teacher_available.all() and r.grpo.all() and not r.sdpo.any()
    assert torch.equal(ca.grpo_advantage(rewards, uids), torch.zeros(4))


def test_all_wrong_group_falls_back_to_grpo_with_zero_advantage():
    rewards = torch.zeros(3)
    uids = np.array(["a"] * 3, dtype=object)
    r = ca.routing_mask(rewards, uids)
    assert not r.teacher_available.any() and r.grpo.all()
    assert torch.equal(ca.grpo_advantage(rewards, uids), torch.zeros(3))


def test_lone_correct_sample_is_not_its_own_teacher():
    rewards = torch.tensor([1.0, 0.0, 0.0])
    r = ca.routing_mask(rewards, np.array(["a", "a", "a"], dtype=object))
    assert r.teacher_available.tolist() == [False, True, True]
    assert r.sdpo.tolist() == [False, True, True]
    assert r.grpo[0]


def test_has_feedback_makes_a_wrong_sample_sdpo_routed():
    rewards = torch.tensor([0.0, 0.0, 1.0])
    uids = np.array(["a", "a", "b"], dtype=object)
    assert not ca.routing_mask(rewards, uids).sdpo.any()
    feedback = torch.tensor([True, False, True])
    r = ca.routing_mask(rewards, uids, has_feedback=feedback)
    assert r.sdpo.tolist() == [True, False, False]  # feedback on a correct sample changes nothing
    r_np = ca.routing_mask(rewards, uids, has_feedback=np.array([True, False, True]))
    assert r_np.sdpo.tolist() == [True, False, False]


def test_threshold_change_reroutes():
    rewards = torch.tensor([0.6, 0.3, 0.3])
    uids = torch.tensor([7, 7, 7])
    assert ca.routing_mask(rewards, uids).sdpo.tolist() == [False, True, True]
    # At 0.7 nobody is correct: all-wrong group -> GRPO.
    assert ca.routing_mask(rewards, uids, success_threshold=0.7).sdpo.tolist() == [False, False, False]
    # At 0.3 everybody is correct.
    r = ca.routing_mask(rewards, uids, success_threshold=0.3)
    assert r.correct.all() and r.grpo.all()


def test_string_uids_and_integer_tensor_index_agree():
    uids = np.array(["3f2a-uid", "zz", "3f2a-uid", "zz", "solo"], dtype=object)
    ints = torch.tensor([10, -2, 10, -2, 99])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    a, b = ca.routing_mask(rewards, uids), ca.routing_mask(rewards, ints)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    gid = ca.group_ids(uids)
    assert gid.dtype == torch.long
    assert gid[0] == gid[2] and gid[1] == gid[3] and len(set(gid.tolist())) == 3
    assert sorted(set(gid.tolist())) == [0, 1, 2]


def test_group_ids_unorderable_labels():
    gid = ca.group_ids(np.array(["a", None, "a", 3], dtype=object))
    assert gid[0] == gid[2] and len(set(gid.tolist())) == 3


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.booleans()), min_size=1, max_size=12
    )
)
def test_routing_matches_reference(rows):
    uids = np.array([f"u{g}" for g, _, _ in rows], dtype=object)
    rewards = [r for _, r, _ in rows]
    feedback = [f for _, _, f in rows]
    for fb in (None, feedback):
        r = ca.routing_mask(torch.tensor(rewards), uids, has_feedback=None if fb is None else torch.tensor(fb))
        correct, available, sdpo = reference_routing(rewards, list(uids), has_feedback=fb)
        assert r.correct.tolist() == correct
        assert r.teacher_available.tolist() == available
        assert r.sdpo.tolist() == sdpo and r.grpo.tolist() == [not s for s in sdpo]


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.floats(-5, 5, allow_nan=False, allow_subnormal=False)), min_size=1, max_size=12
    ),
    st.booleans(),
)
def test_grpo_advantage_matches_reference(rows, norm_by_std):
    uids = np.array([str(g) for g, _ in rows], dtype=object)
    rewards = [r for _, r in rows]
    got = ca.grpo_advantage(torch.tensor(rewards, dtype=torch.float64), uids, norm_by_std=norm_by_std)
    want = reference_grpo_advantage(rewards, list(uids), norm_by_std=norm_by_std)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-9)


def test_grpo_advantage_hand_worked_and_group_of_one():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.7])
    uids = np.array(["a", "a", "a", "a", "solo"], dtype=object)
    adv = ca.grpo_advantage(rewards, uids)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0]))
    # Unbiased std of [1, 0, 0, 1] is sqrt(1/3).
    std = math.sqrt(1 / 3)
    adv_std = ca.grpo_advantage(rewards, uids, norm_by_std=True)
    expected = torch.tensor([0.5 / (std + 1e-6), -0.5 / (std + 1e-6), -0.5 / (std + 1e-6), 0.5 / (std + 1e-6), 0.0])
    torch.testing.assert_close(adv_std, expected)
    assert adv.dtype == torch.float32


def test_advantage_mix_and_sampled_token_advantage():
    a_grpo = torch.tensor([1.0, -2.0])  # (B,) broadcast over tokens
    a_sdpo = torch.tensor([[0.5, 1.5], [-1.0, 3.0]])
    mixed = ca.advantage_mix(a_grpo, a_sdpo, mix_lambda=0.9)
    torch.testing.assert_close(mixed, torch.tensor([[0.95, 1.05], [-1.9, -1.5]]))
    torch.testing.assert_close(ca.advantage_mix(a_grpo, a_sdpo, mix_lambda=0.0), a_sdpo)

    teacher = torch.tensor([[-0.1, -2.0]], requires_grad=True)
    old = torch.tensor([[-0.5, -1.0]])
    adv = ca.sampled_token_advantage(teacher, old)
    torch.testing.assert_close(adv, torch.tensor([[0.4, -1.0]]))
    assert not adv.requires_grad


def test_usable_and_demonstrable_restrict_routing_by_hand():
    # Group a: rows 0 (correct, empty response), 1 (correct, only thinking), 2 (wrong), 3 (wrong, empty).
    # Group b: rows 4 (correct), 5 (wrong).
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    uids = np.array(["a", "a", "a", "a", "b", "b"], dtype=object)
    usable = torch.tensor([False, True, True, False, True, True])
    demonstrable = torch.tensor([True, False, True, True, True, True])
    r = ca.routing_mask(rewards, uids, usable=usable, demonstrable=demonstrable)
    # Row 0 is unusable and row 1 has no content: group a has no demonstration, so row 2 keeps GRPO.
    assert r.demonstration.tolist() == [False, False, False, False, True, False]
    assert r.teacher_available.tolist() == [False, False, False, False, False, True]
    assert r.sdpo.tolist() == [False, False, False, False, False, True]
    # Without the masks the paper's rule alone routes both failed rows of group a.
    assert ca.routing_mask(rewards, uids).sdpo.tolist() == [False, False, True, True, False, True]
    # Feedback gives a teacher only to usable rows.
    fb = ca.routing_mask(rewards, uids, usable=usable, demonstrable=demonstrable, has_feedback=[False] * 3 + [True] * 3)
    assert fb.sdpo.tolist() == [False, False, False, False, False, True]
