"""Bad batch inputs of one SRPO step: `check_step_inputs` and `route_step` (srpo_verl/integration/step_checks.py).

Each test is one row of docs/reliability.md: an error naming the field and the rows, or a
documented behaviour whose counts and routing are checked against hand-worked values.
"""

import logging
import re

import numpy as np
import pytest
import torch

from srpo_verl import core_algos as ca
from srpo_verl.integration.step_checks import check_step_inputs, route_step

NAN, INF = float("nan"), float("inf")


def masks(*lengths, width=4):
    """Per-row response masks with `lengths` valid tokens (right padding to `width`)."""
    return [torch.arange(width) < n for n in lengths]


def step(rewards, uid, lengths=None, **kw):
    lengths = lengths if lengths is not None else [3] * len(uid)
    return check_step_inputs(rewards, uid, masks(*lengths), **kw)


# ------------------------------------------------------------------------------------------- rewards


@pytest.mark.parametrize(
    "rewards, rows",
    [
        ([1.0, NAN, 0.0, 1.0], "[1]"),
        ([1.0, 0.0, INF, -INF], "[2, 3]"),
        (torch.tensor([NAN, 0.0, 0.0, NAN]), "[0, 3]"),
        ([torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, NAN]), torch.tensor([1.0]), torch.tensor(0.0)], "[1]"),
    ],
    ids=["nan", "inf", "nan_tensor", "nan_token_level"],
)
def test_non_finite_reward_is_an_error_naming_the_rows(rewards, rows):
    with pytest.raises(ValueError, match=re.escape(f"rewards: non-finite values at rows {rows}")):
        step(rewards, ["a", "a", "b", "b"])


def test_none_reward_is_an_error_naming_the_rows():
    with pytest.raises(ValueError, match=r"rewards: None at rows \[0, 2\]"):
        step([None, 1.0, None, 0.0], ["a", "a", "b", "b"])


def test_non_numeric_reward_is_an_error():
    with pytest.raises(ValueError, match="rewards: value '1.0' of type str"):
        step([1.0, "1.0"], ["a", "a"])


def test_rewards_of_the_wrong_length_is_an_error_naming_both_lengths():
    with pytest.raises(ValueError, match="rewards: 3 values for a batch of 4 rows"):
        step([1.0, 0.0, 1.0], ["a", "a", "b", "b"])


def test_two_dimensional_rewards_tensor_is_an_error():
    with pytest.raises(ValueError, match=r"rewards: shape \(2, 3\)"):
        step(torch.zeros(2, 3), ["a", "a"])


def test_core_estimator_names_non_finite_reward_rows():
    # The registered `srpo` estimator calls core_algos.grpo_advantage before any trainer hook.
    with pytest.raises(ValueError, match=r"rewards must be finite.*rows \[1, 3\]"):
        ca.grpo_advantage(torch.tensor([0.0, NAN, 1.0, INF]), np.array(["a", "a", "b", "b"], dtype=object))


def test_non_binary_rewards_are_counted_and_routed_by_the_threshold():
    # Partial credit: c_i = [r >= 0.15]; A_i uses the raw rewards.
    rewards = [0.1, 0.2, 0.0, 1.0, 0.14, 0.5]
    uid = ["a", "a", "a", "b", "b", "b"]
    s = step(rewards, uid)
    assert s.metrics["srpo/check/non_binary_rewards"] == 4  # 0.1, 0.2, 0.14, 0.5
    r = route_step(s, success_threshold=0.15)
    assert r.correct.tolist() == [False, True, False, True, False, True]
    assert r.sdpo.tolist() == [True, False, True, False, True, False]
    adv = ca.grpo_advantage(s.rewards, s.uid)
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.1, -0.1, 1 - 1.64 / 3, 0.14 - 1.64 / 3, 0.5 - 1.64 / 3]))


# ------------------------------------------------------------------------------------------- groups


def test_missing_uid_field_is_an_error():
    with pytest.raises(ValueError, match="uid: the batch has no `uid` field"):
        check_step_inputs([1.0, 0.0], None, masks(2, 2))


@pytest.mark.parametrize(
    "bad", [None, NAN, "", "  ", "None", "nan"], ids=["none", "nan", "empty", "blank", "str_none", "str_nan"]
)
def test_missing_uid_value_is_an_error_naming_the_rows(bad):
    with pytest.raises(ValueError, match=r"uid: missing \(None, NaN or empty\) at rows \[2\]"):
        step([1.0, 0.0, 1.0, 0.0], ["a", "a", bad, "b"])


def test_missing_uid_on_a_padding_row_is_allowed():
    s = step([1.0, 0.0, 0.0], ["a", "a", None], real=[True, True, False])
    assert s.uid.tolist() == ["a", "a", "__pad_2"]


def test_uid_shared_by_two_prompts_is_an_error():
    # 6 rows with one uid but rollout.n=4: two prompts merged; demonstrations would cross prompts.
    with pytest.raises(ValueError, match=r"more than actor_rollout_ref.rollout.n=4 rows \(e.g. 'a': 6"):
        step([1.0, 0.0] * 3 + [0.0], ["a"] * 6 + ["b"], group_size=4)


PROMPT_A, PROMPT_B = [0, 0, 5, 6, 7], [0, 9, 5, 6, 7]  # left-padded as verl stores them


@pytest.mark.parametrize(
    "group_size, as_nested",
    [(4, False), (None, False), (4, True)],
    ids=["within_rollout_n", "group_size_unknown", "nested_prompts"],
)
def test_uid_shared_by_two_prompts_within_rollout_n_is_an_error(group_size, as_nested):
    # Before: only detected when the uid had more rows than rollout.n. 2 + 2 rows of one uid fit
    # n=4, so prompt A's correct answer became prompt B's demonstration silently.
    prompts = [PROMPT_A, PROMPT_A, PROMPT_B, PROMPT_B, PROMPT_B]
    rows = [torch.tensor(p) for p in prompts]
    prompts = torch.nested.as_nested_tensor(rows, layout=torch.jagged) if as_nested else torch.stack(rows)
    with pytest.raises(
        ValueError, match=re.escape("uid: 1 uid(s) shared by different prompts (e.g. 'a': rows [0, 1] vs rows [2, 3])")
    ):
        step([1.0, 0.0, 0.0, 0.0, 1.0], ["a", "a", "a", "a", "b"], group_size=group_size, prompts=prompts)
    # Control: the same batch with one prompt per uid passes; a padding row may hold anything.
    ok = [PROMPT_A] * 4 + [PROMPT_B, [1, 2, 3, 4, 5]]
    s = step(
        [1.0, 0.0, 0.0, 0.0, 1.0, 1.0],
        ["a"] * 4 + ["b", "a"],
        group_size=group_size,
        prompts=torch.tensor(ok),
        real=[True] * 5 + [False],
    )
    assert s.uid.tolist() == ["a"] * 4 + ["b", "__pad_5"]


def test_group_of_size_one_has_no_teacher_and_zero_advantage(caplog):
    rewards = [0.0, 1.0, 0.0]
    uid = ["solo", "pair", "pair"]
    with caplog.at_level(logging.WARNING, logger="srpo_verl.integration.step_checks"):
        s = step(rewards, uid, group_size=2)
    assert s.metrics["srpo/check/singleton_groups"] == 1
    assert "1 group(s) of a single response" in caplog.text
    r = route_step(s, success_threshold=0.5)
    assert r.teacher_available.tolist() == [False, False, True]
    assert r.sdpo.tolist() == [False, False, True]
    assert ca.grpo_advantage(s.rewards, s.uid).tolist() == [0.0, 0.5, -0.5]


def test_all_correct_group_is_grpo_with_zero_advantage():
    s = step([1.0, 1.0, 1.0, 0.0, 1.0], ["a", "a", "a", "b", "b"])
    r = route_step(s, success_threshold=0.5)
    assert r.sdpo.tolist() == [False, False, False, True, False]
    assert ca.grpo_advantage(s.rewards, s.uid)[:3].tolist() == [0.0, 0.0, 0.0]


def test_all_wrong_group_has_no_teacher_and_zero_advantage():
    s = step([0.0, 0.0, 0.0, 0.0, 1.0], ["a", "a", "a", "b", "b"])
    r = route_step(s, success_threshold=0.5)
    assert r.teacher_available.tolist() == [False, False, False, True, False]
    assert r.sdpo.tolist() == [False, False, False, True, False]
    assert ca.grpo_advantage(s.rewards, s.uid)[:3].tolist() == [0.0, 0.0, 0.0]


def test_incomplete_group_is_counted_and_routed_within_itself():
    s = step([1.0, 0.0, 1.0, 0.0, 0.0, 1.0], ["a", "a", "b", "b", "b", "b"], group_size=4)
    assert s.metrics["srpo/check/incomplete_groups"] == 1
    assert route_step(s, success_threshold=0.5).sdpo.tolist() == [False, True, False, True, True, False]


def test_padding_rows_form_their_own_groups_and_are_never_routed():
    # Row 3 is verl padding that copies row 0 (uid "a", correct): it must not be a demonstration.
    s = step([0.0, 0.0, 0.0, 1.0], ["a", "a", "b", "a"], real=[True, True, True, False])
    r = route_step(s, success_threshold=0.5)
    assert s.uid.tolist() == ["a", "a", "b", "__pad_3"]
    assert r.demonstration.tolist() == [False, False, False, False]
    assert not r.sdpo.any()


# ------------------------------------------------------------------------------------------- responses


@pytest.mark.parametrize("layout", ["zero_length", "all_padding"], ids=["zero_length", "all_padding"])
def test_response_without_valid_tokens_is_never_routed_nor_a_demonstration(layout, caplog):
    # Group a: row 0 correct but empty, row 1 wrong; row 2 wrong and empty, row 3 correct.
    if layout == "zero_length":
        mask = [
            torch.ones(0, dtype=torch.bool),
            torch.ones(3, dtype=torch.bool),
            torch.ones(0, dtype=torch.bool),
            torch.ones(2, dtype=torch.bool),
        ]
    else:
        mask = masks(0, 3, 0, 2)
    with caplog.at_level(logging.WARNING, logger="srpo_verl.integration.step_checks"):
        s = check_step_inputs([1.0, 0.0, 0.0, 1.0], ["a", "a", "b", "b"], mask)
    assert "2 response(s) with no valid token (rows [0, 2])" in caplog.text
    assert s.metrics["srpo/check/empty_response_rows"] == 2
    assert s.usable.tolist() == [False, True, False, True]
    r = route_step(s, success_threshold=0.5)
    assert r.correct.tolist() == [True, False, False, True]  # the reward still counts
    assert r.demonstration.tolist() == [False, False, False, True]
    # Row 1's only correct sibling is empty: no teacher. Row 2 has a teacher but nothing to distil.
    assert r.sdpo.tolist() == [False, False, False, False]
    # Without the check, core routing would send both wrong rows to the teacher.
    assert ca.routing_mask(s.rewards, s.uid).sdpo.tolist() == [False, True, True, False]


def test_truncated_response_without_eos_is_counted_and_routed_normally():
    eos, pad = 9, 0
    responses = [
        torch.tensor([1, 2, 3, 4]),
        torch.tensor([1, 2, 9, pad]),
        torch.tensor([1, 2, 3, 9]),
        torch.tensor([5, 5, 5, 5]),
    ]
    mask = masks(4, 3, 4, 4)
    s = check_step_inputs(
        [0.0, 1.0, 1.0, 0.0],
        ["a", "a", "b", "b"],
        mask,
        responses=responses,
        eos_token_id=[eos, 10],
        max_response_length=4,
    )
    assert s.metrics["srpo/check/truncated_rows"] == 2  # rows 0 and 3 hit the limit without EOS
    assert s.usable.all()
    assert route_step(s, success_threshold=0.5).sdpo.tolist() == [True, False, False, True]


def test_responses_not_aligned_with_the_mask_is_an_error():
    with pytest.raises(ValueError, match=r"responses: length differs from response_mask at rows \[1\]"):
        check_step_inputs([1.0, 0.0], ["a", "a"], masks(2, 2), responses=[torch.zeros(4), torch.zeros(3)])


def test_response_mask_with_the_wrong_row_count_is_an_error():
    with pytest.raises(ValueError, match="response_mask: 3 rows for a batch of 2"):
        check_step_inputs([1.0, 0.0], ["a", "a"], masks(2, 2, 2))


def test_clean_batch_passes_unchanged():
    # Control: a well-formed batch yields the same routing as core_algos.routing_mask, zero counts.
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    uid = np.array(["x", "x", "x", "y", "y", "y"], dtype=object)
    s = check_step_inputs(rewards, uid, torch.ones(6, 5), group_size=3)
    assert all(v == 0 for v in s.metrics.values()), s.metrics
    core = ca.routing_mask(rewards, uid)
    got = route_step(s, success_threshold=0.5)
    assert got.sdpo.tolist() == core.sdpo.tolist() == [False, True, True, True, False, False]
    assert got.teacher_available.tolist() == core.teacher_available.tolist()


def test_feedback_gives_a_teacher_only_to_usable_rows():
    s = step([0.0, 0.0, 0.0], ["a", "b", "c"], lengths=[2, 0, 2])
    r = route_step(s, success_threshold=0.5, has_feedback=[True, True, False])
    assert r.sdpo.tolist() == [True, False, False]


def test_verl_nested_tensors_are_accepted_as_the_trainer_fetches_them():
    # Control: TransferQueue returns jagged nested tensors (rm_scores with the score on the last
    # valid token, response_mask, responses); passed as is they give the hand-worked result.
    def nested(rows):
        return torch.nested.as_nested_tensor(rows, layout=torch.jagged)

    rm_scores = nested([torch.tensor([0.0, 0.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 0.0, 0.0, 0.0])])
    mask = nested([torch.ones(3, dtype=torch.long), torch.ones(2, dtype=torch.long), torch.tensor([1, 1, 1, 1])])
    responses = nested([torch.tensor([4, 5, 9]), torch.tensor([4, 9]), torch.tensor([4, 4, 4, 4])])
    s = check_step_inputs(
        rm_scores, ["u", "u", "u"], mask, responses=responses, eos_token_id=9, max_response_length=4, group_size=3
    )
    assert s.rewards.tolist() == [1.0, 0.0, 0.0] and s.metrics["srpo/check/truncated_rows"] == 1
    assert route_step(s, success_threshold=0.5).sdpo.tolist() == [False, True, True]
