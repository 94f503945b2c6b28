"""The method as one object (`SRPOConfig`): every method/mode question has one answer, and the loss
follows it (sdpo's distilled-token denominator, advantage_mix without the top-K processor)."""

from functools import partial

import pytest
import torch

from srpo_verl import core_algos
from srpo_verl.algo_config import SRPOConfig
from srpo_verl.integration.loss import srpo_loss_fn
from srpo_verl.lab.loss_case import ACTOR, PROMPT_LENS, RESPONSE_LENS, ROUTE, engine_like_call, make_batch

# Rows: 0 correct with a correct sibling, 1 failed with one, 2 failed in an all-wrong group,
# 3 lone correct, 4 failed with feedback only.
ROUTING = core_algos.Routing(
    correct=torch.tensor([True, False, False, True, False]),
    demonstration=torch.tensor([True, False, False, True, False]),
    teacher_available=torch.tensor([True, True, False, False, True]),
    sdpo=torch.tensor([False, True, False, False, True]),
    grpo=torch.tensor([True, False, True, True, False]),
)


@pytest.mark.parametrize(
    "method,distilled,taught",
    [
        ("srpo", [0, 1, 0, 0, 1], [0, 1, 0, 0, 1]),
        ("sdpo", [1, 1, 0, 0, 1], [1, 1, 0, 0, 1]),  # correct rows with a teacher are distilled too
        ("advantage_mix", [0, 0, 0, 0, 0], [1, 1, 0, 0, 1]),
    ],
)
def test_routes_by_hand(method, distilled, taught):
    srpo = SRPOConfig(method=method)
    d, t = srpo.routes(ROUTING)
    assert d.long().tolist() == distilled and t.long().tolist() == taught
    # What the guard, the lab and the engine probe ask instead of naming a method.
    assert srpo.distils_rows == any(distilled)


def test_advantage_per_method_by_hand():
    # Row 0 has a teacher, row 1 does not (its sampled-token advantage is 0: no teacher values).
    grpo, sampled = torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.tensor([[-1.0, 2.0], [0.0, 0.0]])
    taught = torch.tensor([True, False])
    assert SRPOConfig(method="srpo").advantage(grpo, sampled, taught).tolist() == grpo.tolist()
    assert SRPOConfig(method="sdpo").advantage(grpo, sampled, taught).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    mix = SRPOConfig(method="advantage_mix", mix_lambda=0.9).advantage(grpo, sampled, taught)
    assert mix[0].tolist() == pytest.approx([0.35, 0.65])
    # Rows without a teacher keep A_GRPO (not lambda * A_GRPO).
    assert mix[1].tolist() == [0.5, 0.5]


@pytest.mark.parametrize(
    "kw,distils,k",
    [
        ({}, True, 100),
        ({"distill_mode": "full_vocab"}, True, 1000),
        ({"distill_mode": "sampled_token"}, False, 1),
        ({"method": "advantage_mix"}, False, 1),
        ({"topk": 5000}, True, 1000),
    ],
)
def test_processor_and_support_size(kw, distils, k):
    cfg = SRPOConfig(**kw)
    assert cfg.distils_logits is distils and cfg.support_size(1000) == k


def test_teacher_mode_gives_the_ema_rate_and_the_student_mix():
    ema, tr = SRPOConfig(ema_rate=0.05), SRPOConfig(teacher="trust_region", trust_region_mix=0.3)
    assert (ema.teacher_ema_rate, ema.student_mix) == (0.05, None)
    assert (tr.teacher_ema_rate, tr.student_mix) == (0.0, 0.3)  # theta_0 frozen; the student mixed in


def test_weight_entropy_field_follows_entropy_mode():
    assert SRPOConfig().weight_entropy_field == "srpo_teacher_entropy"
    assert SRPOConfig(entropy_mode="topk_tail").weight_entropy_field == "srpo_teacher_entropy_topk"


@pytest.fixture(scope="module")
def batch():
    b = make_batch()
    b["rows"]["advantages"] = [torch.zeros(r) for r in RESPONSE_LENS]  # sdpo: no GRPO term
    return b


def test_sdpo_divides_by_the_distilled_tokens_and_srpo_by_all(batch):
    distilled = sum(r for r, z in zip(RESPONSE_LENS, ROUTE) if z)
    total = sum(RESPONSE_LENS)
    losses = {}
    for method in ("srpo", "sdpo"):
        fn = partial(srpo_loss_fn, ACTOR, SRPOConfig(method=method, beta=0.0, topk=4))
        logits = batch["student_logits"].clone().requires_grad_(True)
        losses[method], _ = engine_like_call(
            fn, batch, range(5), logits, num_tokens=total, log_mean=0.0, srpo_num_distilled_tokens=float(distilled)
        )
    # Same routed rows, zero GRPO advantage: only the denominators differ.
    assert float(losses["srpo"]) > 0
    assert float(losses["sdpo"]) == pytest.approx(float(losses["srpo"]) * total / distilled, rel=1e-9)


def test_advantage_mix_runs_without_the_processor_and_is_the_ppo_loss(batch):
    # verl does not call the processor for advantage_mix (no top-K distillation): no divergence output.
    # The loss mixes verl's GRPO advantage with the sampled-token advantage log q(y) - log p_old(y) on
    # the rows the teacher scored (row 1 has no teacher values: it keeps A_GRPO).
    fn = partial(srpo_loss_fn, ACTOR, SRPOConfig(method="advantage_mix", mix_lambda=0.9, topk=4))
    grpo = [torch.full((r,), 0.3 * (i - 2)) for i, r in enumerate(RESPONSE_LENS)]
    teacher = list(batch["rows"]["srpo_teacher_log_prob"])
    teacher[1] = teacher[1][:0]
    b = dict(batch, rows=dict(batch["rows"], advantages=grpo, srpo_teacher_log_prob=teacher))
    logits = batch["student_logits"].clone().requires_grad_(True)
    loss, metrics = engine_like_call(
        fn, b, range(5), logits, processor=False, route=[0] * 5, num_tokens=sum(RESPONSE_LENS), log_mean=0.0
    )
    logp = torch.log_softmax(batch["student_logits"], -1)
    ref = torch.zeros((), dtype=torch.float64)
    offset = 0
    for i, (p, r) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS)):
        tokens = batch["seq"][i][p:]
        lp = logp[offset + p - 1 : offset + p - 1 + r].gather(-1, tokens[:, None]).squeeze(-1)
        old = batch["rows"]["old_log_probs"][i]
        mixed = grpo[i].double() if i == 1 else 0.9 * grpo[i].double() + 0.1 * (teacher[i] - old)
        token_loss, _ = core_algos.ppo_clip_token_loss(
            lp[None],
            old[None],
            mixed[None],
            clip_ratio_c=3.0,
            rollout_is_weights=batch["rows"]["rollout_is_weights"][i][None],
        )
        ref = ref + token_loss.sum()
        offset += p + r
    assert float(loss) == pytest.approx(float(ref / sum(RESPONSE_LENS)), rel=1e-6)
    assert metrics["srpo/sdpo_token_share"].aggregate() == 0.0
    assert metrics["srpo/grpo_token_share"].aggregate() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "taught,n,dp", [([0, 3, 5], 8, 2), ([1], 8, 4), ([0, 1], 8, 2), ([], 8, 2), ([2, 3, 4, 5, 6], 6 + 2, 8)]
)
def test_teacher_pass_padding_uses_distinct_rows_outside_the_teacher_set(taught, n, dp):
    from srpo_verl.integration.trainer import teacher_pass_padding

    pad = teacher_pass_padding(taught, n, dp)
    assert (len(taught) + len(pad)) % dp == 0 and len(pad) < dp
    assert len(set(pad)) == len(pad) and not set(pad) & set(taught)  # TransferQueue refuses a key twice
    assert all(0 <= i < n for i in pad)


def test_teacher_pass_padding_refuses_a_batch_that_cannot_be_padded():
    from srpo_verl.integration.trainer import teacher_pass_padding

    with pytest.raises(RuntimeError, match="cannot pad 3 teacher rows to a multiple of 4"):
        teacher_pass_padding([0, 1, 2], 3, 4)


def test_teacher_pass_plan_on_two_ranks_with_an_odd_teacher_row_count():
    # The plan the trainer's teacher pass stores and sends (a pure function: no TransferQueue, no
    # workers). An odd teacher row count on two ranks is padded with a distinct row outside the
    # teacher set (TransferQueue refuses a key twice: repeating a teacher row crashed the step).
    from srpo_verl.integration import wire
    from srpo_verl.integration.trainer import StepRouting, teacher_pass_plan

    n, teacher_idx, k = 6, [1, 2, 4], 4
    responses = [torch.arange(2 + i % 2) + 100 * i for i in range(n)]
    taught = torch.tensor([i in teacher_idx for i in range(n)])
    step = StepRouting(None, taught, taught, None, None, None, [])
    plan = teacher_pass_plan(step, responses, dp_size=2, k=k)

    assert plan.rows == [1, 2, 4, 0] and plan.pad == [0]
    # The pad row runs a one-token teacher sequence (it carries no top-K ids, so it is not scored).
    assert torch.equal(plan.pad_inputs[wire.TEACHER_INPUT_IDS.name].unbind()[0], responses[0][:1])
    # Every row outside the teacher set, the pad row included, gets empty teacher fields; the top-K
    # ids and the route were stored with the teacher rows before verl's old-log-prob forward.
    assert plan.others == [0, 3, 5]
    assert set(plan.others_fields) == set(wire.TEACHER_OUTPUT_NAMES)
    for key, value in plan.others_fields.items():
        assert value.offsets().diff().tolist() == [0, 0, 0], key
    assert plan.others_fields[wire.TEACHER_TOPK.name].values().shape[-1] == k


def test_teacher_pass_plan_of_a_step_that_routes_nothing():
    # Nothing taught: no pass, and one store gives every row its empty teacher fields, empty top-K
    # ids (verl's old-log-prob forward ran as in GRPO) and its route.
    from srpo_verl.integration import wire
    from srpo_verl.integration.trainer import StepRouting, teacher_pass_plan

    n = 4
    none = torch.zeros(n, dtype=torch.bool)
    plan = teacher_pass_plan(StepRouting(None, none, none, None, None, None, []), [torch.arange(3)] * n, dp_size=2, k=3)
    assert plan.rows == [] and plan.pad == [] and plan.others == list(range(n))
    assert set(plan.others_fields) == {*wire.TEACHER_OUTPUT_NAMES, wire.TOPK_IDS.name, wire.ROUTE.name}
    assert plan.others_fields[wire.ROUTE.name].tolist() == [0] * n
    assert plan.others_fields[wire.TOPK_IDS.name].dtype == torch.int32
