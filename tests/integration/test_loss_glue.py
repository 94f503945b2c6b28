"""The loss installed on verl's workers, driven the way verl's FSDP engine drives it.

The engine calls `srpo_loss_fn` first as logits processor (packed student logits) and then as loss
(nested log-probs); here the same two calls are made on a hand-built micro-batch in verl's
no-padding layout, and the result is compared with an independent float64 computation written out
below, and across different micro-batch splits.
"""

import math
from functools import partial

import pytest
import torch
from verl.utils import tensordict_utils as tu

from srpo_verl.algo_config import SRPOConfig
from srpo_verl.integration.loss import DIVERGENCE_KEY, srpo_loss_fn

V, K = 13, 4
PROMPT_LENS = [3, 2, 4, 3, 2]
RESPONSE_LENS = [4, 5, 2, 3, 3]
ROUTE = [1, 0, 1, 0, 1]


class _ActorConfig(dict):
    """The fields of verl's ActorConfig the loss reads."""

    __getattr__ = dict.__getitem__


ACTOR = _ActorConfig(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)


def _nested(rows):
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    n = len(PROMPT_LENS)
    seq = [torch.randint(0, V, (p + r,), generator=g) for p, r in zip(PROMPT_LENS, RESPONSE_LENS)]
    student_logits = torch.randn(sum(PROMPT_LENS) + sum(RESPONSE_LENS), V, generator=g, dtype=torch.float64) * 2
    teacher_logits = torch.randn(sum(RESPONSE_LENS), V, generator=g, dtype=torch.float64) * 2
    rows = {
        "old_log_probs": [torch.randn(r, generator=g, dtype=torch.float64) * 0.1 - 2 for r in RESPONSE_LENS],
        "advantages": [torch.full((r,), float(a)) for r, a in zip(RESPONSE_LENS, torch.randn(n, generator=g))],
        "rollout_is_weights": [torch.rand(r, generator=g, dtype=torch.float64) + 0.5 for r in RESPONSE_LENS],
        "srpo_teacher_entropy": [torch.rand(r, generator=g, dtype=torch.float64) * 3 for r in RESPONSE_LENS],
        "srpo_sampled_adv": [torch.zeros(r, dtype=torch.float64) for r in RESPONSE_LENS],
    }
    # Teacher pass outputs: student top-K ids (from the same logits) and teacher log q at them.
    pos = _response_positions()
    topk = student_logits[pos].topk(K, dim=-1).indices
    log_q = torch.log_softmax(teacher_logits, -1).gather(-1, topk)
    split = lambda t: list(t.split(RESPONSE_LENS))  # noqa: E731
    return dict(
        seq=seq,
        student_logits=student_logits,
        teacher_log_q=log_q,
        topk=topk,
        rows=rows,
        topk_rows=split(topk.to(torch.int32)),
        log_q_rows=split(log_q),
    )


def _response_positions():
    out, start = [], 0
    for p, r in zip(PROMPT_LENS, RESPONSE_LENS):
        out += list(range(start + p - 1, start + p - 1 + r))
        start += p + r
    return torch.tensor(out)


def _micro_batch(batch, rows_idx, *, num_tokens, log_mean, dp_size=1):
    """A micro-batch TensorDict in verl's no-padding layout (what the engine hands the loss)."""
    pick = lambda xs: [xs[i] for i in rows_idx]  # noqa: E731
    td = {
        "prompts": _nested(pick([s[:p] for s, p in zip(batch["seq"], PROMPT_LENS)])),
        "responses": _nested(pick([s[p:] for s, p in zip(batch["seq"], PROMPT_LENS)])),
        "response_mask": _nested(pick([torch.ones(r, dtype=torch.int64) for r in RESPONSE_LENS])),
        "srpo_route": torch.tensor(pick(ROUTE)),
        "srpo_topk_ids": _nested(pick(batch["topk_rows"])),
        "srpo_teacher_topk": _nested(pick(batch["log_q_rows"])),
    }
    td.update({k: _nested(pick(v)) for k, v in batch["rows"].items()})
    data = tu.get_tensordict(td)
    tu.assign_non_tensor(data, batch_num_tokens=num_tokens, dp_size=dp_size, srpo_log_mean_weight=log_mean)
    return data


def _engine_like_call(fn, batch, rows_idx, logits, **kw):
    """What verl's engine does for one micro-batch: processor call, nesting, loss call."""
    data = _micro_batch(batch, rows_idx, **kw)
    offsets = [0]
    for p, r in zip(PROMPT_LENS, RESPONSE_LENS):
        offsets.append(offsets[-1] + p + r)
    parts = [logits[offsets[i] : offsets[i + 1]] for i in rows_idx]
    mb_logits = torch.cat(parts)
    mb_tokens = torch.cat([batch["seq"][i] for i in rows_idx])
    cu = torch.tensor([0] + list(torch.tensor([len(p) for p in parts]).cumsum(0)))
    processed = fn(student_logits=mb_logits.unsqueeze(0), data=data)
    log_probs = torch.log_softmax(mb_logits, -1).gather(-1, mb_tokens.roll(-1).unsqueeze(-1)).squeeze(-1)
    model_output = {"log_probs": torch.nested.nested_tensor_from_jagged(log_probs, cu)}
    for key, value in processed.items():
        model_output[key] = torch.nested.nested_tensor_from_jagged(value.squeeze(0), cu)
    return fn(model_output=model_output, data=data)


def _reference_loss(batch, logits, *, beta, alpha, is_clip=2.0):
    """The SRPO objective written out token by token in float64 (SRPO_SPEC.md §1.6-1.8)."""
    pos = _response_positions()
    logp_full = torch.log_softmax(logits, -1)[pos]  # (R, V)
    tokens = torch.cat([s[p:] for s, p in zip(batch["seq"], PROMPT_LENS)])
    logp = logp_full.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    cat = lambda key: torch.cat(batch["rows"][key])  # noqa: E731
    old, adv, rho, ent = cat("old_log_probs"), cat("advantages").double(), cat("rollout_is_weights"), cat("srpo_teacher_entropy")
    route = torch.cat([torch.full((r,), z) for r, z in zip(RESPONSE_LENS, ROUTE)]).bool()
    total = torch.zeros((), dtype=torch.float64)
    w_tilde = torch.exp(-beta * ent[route])
    mean_w = w_tilde.mean()
    w_iter = iter(w_tilde / mean_w)
    for t in range(len(tokens)):
        ratio = torch.exp(logp[t] - old[t])
        if not route[t]:
            a = adv[t]
            l1, l2 = -a * ratio, -a * ratio.clamp(0.8, 1.28)
            l = torch.maximum(l1, l2)
            if a < 0:
                l = torch.minimum(l, -a * 3.0)
            total = total + l * rho[t]
        else:
            p_k = logp_full[t, batch["topk"][t]].exp()
            q_k = batch["teacher_log_q"][t].exp()
            p = torch.cat([p_k, (1 - p_k.sum()).reshape(1)])
            q = torch.cat([q_k, (1 - q_k.sum()).reshape(1)])
            m = (1 - alpha) * p + alpha * q
            d = (1 - alpha) * (p * (p / m).log()).sum() + alpha * (q * (q / m).log()).sum()
            total = total + d * min(ratio.item(), is_clip) * rho[t] * next(w_iter)
    return total / len(tokens), math.log(mean_w.item())


@pytest.mark.parametrize("beta,alpha", [(1.0, 0.5), (0.0, 0.5), (2.0, 0.2)])
def test_engine_call_sequence_equals_reference(batch, beta, alpha):
    srpo = SRPOConfig(beta=beta, alpha=alpha, topk=K)
    fn = partial(srpo_loss_fn, ACTOR, srpo)
    logits = batch["student_logits"].clone().requires_grad_(True)
    ref_logits = batch["student_logits"].clone().requires_grad_(True)
    ref, log_mean = _reference_loss(batch, ref_logits, beta=beta, alpha=alpha)
    n_tokens = sum(RESPONSE_LENS)
    loss, metrics = _engine_like_call(fn, batch, range(5), logits, num_tokens=n_tokens, log_mean=log_mean)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-8)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-8)
    assert metrics["srpo/topk_match_fraction"] == 1.0  # ids stored from the same parameters


@pytest.mark.parametrize("split", [[[0, 1, 2, 3, 4]], [[0, 1], [2, 3, 4]], [[4], [0], [3, 1, 2]]])
def test_micro_batch_split_leaves_loss_and_gradient_unchanged(batch, split):
    srpo = SRPOConfig(topk=K)
    fn = partial(srpo_loss_fn, ACTOR, srpo)
    _, log_mean = _reference_loss(batch, batch["student_logits"], beta=1.0, alpha=0.5)
    n_tokens = sum(RESPONSE_LENS)
    full_logits = batch["student_logits"].clone().requires_grad_(True)
    full, _ = _engine_like_call(fn, batch, range(5), full_logits, num_tokens=n_tokens, log_mean=log_mean)
    full.backward()
    logits = batch["student_logits"].clone().requires_grad_(True)
    total = sum(
        _engine_like_call(fn, batch, rows, logits, num_tokens=n_tokens, log_mean=log_mean)[0] for rows in split
    )
    total.backward()
    torch.testing.assert_close(total, full, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(logits.grad, full_logits.grad, rtol=1e-6, atol=1e-9)


def test_processor_touches_only_routed_response_tokens(batch):
    fn = partial(srpo_loss_fn, ACTOR, SRPOConfig(topk=K))
    data = _micro_batch(batch, range(5), num_tokens=1, log_mean=0.0)
    div = fn(student_logits=batch["student_logits"].unsqueeze(0), data=data)[DIVERGENCE_KEY].squeeze(0)
    expected = torch.zeros(len(div), dtype=torch.bool)
    pos = _response_positions()
    route = torch.cat([torch.full((r,), z) for r, z in zip(RESPONSE_LENS, ROUTE)]).bool()
    expected[pos[route]] = True
    assert (div != 0).equal(expected)
