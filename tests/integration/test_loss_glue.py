"""The loss installed on verl's workers, driven the way verl's FSDP engine drives it.

The engine calls `srpo_loss_fn` first as logits processor (packed student logits) and then as loss
(nested log-probs); here the same two calls are made on a hand-built micro-batch in verl's
no-padding layout (srpo_verl/lab/loss_case.py), and the result is compared with an independent float64
computation, and across different micro-batch splits. tests/gpu/ repeats them with CUDA semantics.
"""

from functools import partial

import pytest
import torch

from srpo_verl.algo_config import SRPOConfig
from srpo_verl.integration import wire
from srpo_verl.integration.loss import srpo_loss_fn
from srpo_verl.lab.loss_case import (
    ACTOR,
    K,
    RESPONSE_LENS,
    ROUTE,
    engine_like_call,
    make_batch,
    micro_batch,
    reference_loss,
    response_positions,
)


@pytest.fixture(scope="module")
def batch():
    return make_batch()


@pytest.mark.parametrize("taught_only", [False, True], ids=["fields_on_every_row", "fields_on_taught_rows"])
@pytest.mark.parametrize("beta,alpha", [(1.0, 0.5), (0.0, 0.5), (2.0, 0.2)])
def test_engine_call_sequence_equals_reference(batch, beta, alpha, taught_only):
    srpo = SRPOConfig(beta=beta, alpha=alpha, topk=K)
    fn = partial(srpo_loss_fn, ACTOR, srpo)
    logits = batch["student_logits"].clone().requires_grad_(True)
    ref_logits = batch["student_logits"].clone().requires_grad_(True)
    ref, log_mean = reference_loss(batch, ref_logits, beta=beta, alpha=alpha)
    n_tokens = sum(RESPONSE_LENS)
    loss, metrics = engine_like_call(
        fn, batch, range(5), logits, num_tokens=n_tokens, log_mean=log_mean, taught_only=taught_only
    )
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-8)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-8)
    assert metrics["srpo/topk_match_fraction"] == 1.0  # ids stored from the same parameters


@pytest.mark.parametrize("split", [[[0, 1, 2, 3, 4]], [[0, 1], [2, 3, 4]], [[4], [0], [3, 1, 2]], [[1], [3, 0]]])
def test_micro_batch_split_leaves_loss_and_gradient_unchanged(batch, split):
    srpo = SRPOConfig(topk=K)
    fn = partial(srpo_loss_fn, ACTOR, srpo)
    _, log_mean = reference_loss(batch, batch["student_logits"], beta=1.0, alpha=0.5)
    n_tokens = sum(RESPONSE_LENS)
    full_logits = batch["student_logits"].clone().requires_grad_(True)
    full, _ = engine_like_call(fn, batch, range(5), full_logits, num_tokens=n_tokens, log_mean=log_mean)
    full.backward()
    logits = batch["student_logits"].clone().requires_grad_(True)
    # Micro-batches with teacher fields only on taught rows (some hold none: [1], [3, 0] has one).
    total = sum(
        engine_like_call(fn, batch, rows, logits, num_tokens=n_tokens, log_mean=log_mean, taught_only=True)[0]
        for rows in split
    )
    if split == [[1], [3, 0]]:  # rows 2 and 4 left out: compare with the full batch's same rows only
        full_logits = batch["student_logits"].clone().requires_grad_(True)
        full = engine_like_call(fn, batch, [1, 3, 0], full_logits, num_tokens=n_tokens, log_mean=log_mean)[0]
        full.backward()
    total.backward()
    torch.testing.assert_close(total, full, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(logits.grad, full_logits.grad, rtol=1e-6, atol=1e-9)


def test_processor_touches_only_routed_response_tokens(batch):
    fn = partial(srpo_loss_fn, ACTOR, SRPOConfig(topk=K))
    data = micro_batch(batch, range(5), num_tokens=1, log_mean=0.0)
    div = fn(student_logits=batch["student_logits"].unsqueeze(0), data=data)[wire.DIVERGENCE].squeeze(0)
    expected = torch.zeros(len(div), dtype=torch.bool)
    pos = response_positions()
    route = torch.cat([torch.full((r,), z) for r, z in zip(RESPONSE_LENS, ROUTE)]).bool()
    expected[pos[route]] = True
    assert (div != 0).equal(expected)


def test_a_token_log_prob_from_other_logits_is_refused(batch):
    # The lent gradient assumes verl's token log-prob is log p(response token) of the logits the
    # processor saw; a log-prob of other logits (here: a temperature applied after the processor)
    # would receive a dense part that does not match, so the loss refuses it.
    fn = partial(srpo_loss_fn, ACTOR, SRPOConfig(topk=K))
    logits = batch["student_logits"].clone().requires_grad_(True)

    def tempered(lg, labels, inplace_backward=True):
        return torch.log_softmax(lg / 1.5, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)

    with pytest.raises(RuntimeError, match="differ from log p of the response tokens"):
        engine_like_call(fn, batch, range(5), logits, logprobs=tempered, num_tokens=sum(RESPONSE_LENS), log_mean=0.0)


def test_an_update_with_nothing_routed_is_grpos_without_a_processor_call(batch, monkeypatch):
    # A worker whose share of the step has no routed row asks verl for no processor call (the update
    # is GRPO's); the loss then equals the PPO term over all tokens, processor or not.
    from verl.workers.engine_workers import ActorRolloutRefWorker

    from srpo_verl.integration.worker import SRPOActorRolloutRefWorker

    seen = []
    monkeypatch.setattr(
        ActorRolloutRefWorker,
        "update_actor",
        lambda self, data: seen.append(data.get_non_tensor("distillation_use_topk", False)),
    )
    worker = SRPOActorRolloutRefWorker.__new__(SRPOActorRolloutRefWorker)  # no Ray, no engine
    worker.srpo = SRPOConfig(topk=K)
    for route in ([0] * 5, list(ROUTE)):
        worker.update_actor(micro_batch(batch, range(5), num_tokens=1, log_mean=0.0, route=route))
    assert seen == [False, True]

    fn = partial(srpo_loss_fn, ACTOR, SRPOConfig(topk=K))
    n_tokens = sum(RESPONSE_LENS)
    grads, losses = [], []
    for processor in (False, True):
        logits = batch["student_logits"].clone().requires_grad_(True)
        loss, metrics = engine_like_call(
            fn, batch, range(5), logits, processor=processor, route=[0] * 5, num_tokens=n_tokens, log_mean=0.0
        )
        loss.backward()
        losses.append(loss)
        grads.append(logits.grad)
        assert metrics["srpo/sdpo_token_share"].aggregate() == 0.0
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    # The PPO term alone, written out: the GRPO loss of the same batch.
    logp = torch.log_softmax(batch["student_logits"], -1)[response_positions()]
    tokens = torch.cat([s[-r:] for s, r in zip(batch["seq"], RESPONSE_LENS)])
    lp = logp.gather(-1, tokens[:, None]).squeeze(-1)
    cat = lambda key: torch.cat(batch["rows"][key])  # noqa: E731
    ratio = torch.exp(lp - cat("old_log_probs"))
    adv = cat("advantages").double()
    token_loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(0.8, 1.28))
    token_loss = torch.where(adv < 0, torch.minimum(token_loss, -adv * 3.0), token_loss)
    ref = (token_loss * cat("rollout_is_weights")).sum() / n_tokens
    torch.testing.assert_close(losses[0].double(), ref, rtol=1e-9, atol=1e-12)
