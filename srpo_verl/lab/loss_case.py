"""A hand-built micro-batch in verl's no-padding layout, the engine's call sequence, and a float64
reference of the SRPO objective: shared by the loss-glue tests and their GPU-semantics variants.

The engine calls `srpo_loss_fn` first as logits processor (packed student logits) and then as loss
(nested log-probs); `engine_like_call` makes the same two calls. `reference_loss` writes the
objective out token by token (docs/spec.md §1.6-1.8).
"""

import math

import torch
from verl.utils import tensordict_utils as tu

from srpo_verl.integration import wire

V, K = 13, 4
PROMPT_LENS = [3, 2, 4, 3, 2]
RESPONSE_LENS = [4, 5, 2, 3, 3]
ROUTE = [1, 0, 1, 0, 1]


class _ActorConfig(dict):
    """The fields of verl's ActorConfig the loss reads."""

    __getattr__ = dict.__getitem__


ACTOR = _ActorConfig(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)


def nested(rows):
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged)


def make_batch():
    g = torch.Generator().manual_seed(0)
    n = len(PROMPT_LENS)
    seq = [torch.randint(0, V, (p + r,), generator=g) for p, r in zip(PROMPT_LENS, RESPONSE_LENS)]
    student_logits = torch.randn(sum(PROMPT_LENS) + sum(RESPONSE_LENS), V, generator=g, dtype=torch.float64) * 2
    teacher_logits = torch.randn(sum(RESPONSE_LENS), V, generator=g, dtype=torch.float64) * 2
    rows = {
        "old_log_probs": [torch.randn(r, generator=g, dtype=torch.float64) * 0.1 - 2 for r in RESPONSE_LENS],
        "advantages": [torch.full((r,), float(a)) for r, a in zip(RESPONSE_LENS, torch.randn(n, generator=g))],
        "rollout_is_weights": [torch.rand(r, generator=g, dtype=torch.float64) + 0.5 for r in RESPONSE_LENS],
        wire.TEACHER_ENTROPY.name: [torch.rand(r, generator=g, dtype=torch.float64) * 3 for r in RESPONSE_LENS],
        wire.TEACHER_LOG_PROB.name: [torch.randn(r, generator=g, dtype=torch.float64) * 0.1 - 2 for r in RESPONSE_LENS],
    }
    # Teacher pass outputs: student top-K ids (from the same logits) and teacher log q at them.
    pos = response_positions()
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


def response_positions():
    out, start = [], 0
    for p, r in zip(PROMPT_LENS, RESPONSE_LENS):
        out += list(range(start + p - 1, start + p - 1 + r))
        start += p + r
    return torch.tensor(out)


TEACHER_ROW_FIELDS = (wire.TOPK_IDS.name, wire.TEACHER_TOPK.name, wire.TEACHER_ENTROPY.name, wire.TEACHER_LOG_PROB.name)


def micro_batch(batch, rows_idx, *, num_tokens, log_mean, dp_size=1, route=ROUTE, taught_only=False, **non_tensor):
    """A micro-batch TensorDict in verl's no-padding layout (what the engine hands the loss).

    taught_only: the teacher's fields carry an empty row for rows off the distillation branch, as
    the trainer ships them (nothing for GRPO rows); else every row carries them."""
    pick = lambda xs: [xs[i] for i in rows_idx]  # noqa: E731
    td = {
        "prompts": nested(pick([s[:p] for s, p in zip(batch["seq"], PROMPT_LENS)])),
        "responses": nested(pick([s[p:] for s, p in zip(batch["seq"], PROMPT_LENS)])),
        "response_mask": nested(pick([torch.ones(r, dtype=torch.int64) for r in RESPONSE_LENS])),
        wire.ROUTE.name: torch.tensor(pick(route)),
        wire.TOPK_IDS.name: nested(pick(batch["topk_rows"])),
        wire.TEACHER_TOPK.name: nested(pick(batch["log_q_rows"])),
    }
    td.update({k: nested(pick(v)) for k, v in batch["rows"].items()})
    if taught_only:
        for key in TEACHER_ROW_FIELDS:
            td[key] = nested([v if route[i] else v[:0] for i, v in zip(rows_idx, td[key].unbind())])
    data = tu.get_tensordict(td)
    tu.assign_non_tensor(
        data, batch_num_tokens=num_tokens, dp_size=dp_size, srpo_log_mean_weight=log_mean, **non_tensor
    )
    return data


def _log_probs(logits, tokens, inplace_backward=True):
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def engine_like_call(fn, batch, rows_idx, logits, *, logprobs=_log_probs, move=None, processor=True, **kw):
    """What verl's engine does for one micro-batch: processor call, token log-probs, nesting, loss call.

    `logprobs(logits, labels, inplace_backward=True)` computes the token log-probs after the processor
    (verl's `logprobs_from_logits`); `move` maps the micro-batch to the engine's device first;
    processor=False is the engine without `distillation_use_topk` (no processor call).
    """
    data = micro_batch(batch, rows_idx, **kw)
    if move is not None:
        data = move(data)
    offsets = [0]
    for p, r in zip(PROMPT_LENS, RESPONSE_LENS):
        offsets.append(offsets[-1] + p + r)
    parts = [logits[offsets[i] : offsets[i + 1]] for i in rows_idx]
    mb_logits = torch.cat(parts)
    mb_tokens = torch.cat([batch["seq"][i] for i in rows_idx]).to(mb_logits.device)
    cu = data["prompts"].offsets() + data["responses"].offsets()  # packed sequence boundaries
    processed = fn(student_logits=mb_logits.unsqueeze(0), data=data) if processor else {}
    log_probs = logprobs(mb_logits, mb_tokens.roll(-1), inplace_backward=True)
    model_output = {"log_probs": torch.nested.nested_tensor_from_jagged(log_probs, cu)}
    for key, value in processed.items():
        model_output[key] = torch.nested.nested_tensor_from_jagged(value.squeeze(0), cu)
    return fn(model_output=model_output, data=data)


def reference_loss(batch, logits, *, beta, alpha, is_clip=2.0):
    """The SRPO objective written out token by token in float64 (docs/spec.md §1.6-1.8)."""
    pos = response_positions()
    logp_full = torch.log_softmax(logits, -1)[pos]  # (R, V)
    tokens = torch.cat([s[p:] for s, p in zip(batch["seq"], PROMPT_LENS)])
    logp = logp_full.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    cat = lambda key: torch.cat(batch["rows"][key])  # noqa: E731
    old, adv, rho, ent = (
        cat("old_log_probs"),
        cat("advantages").double(),
        cat("rollout_is_weights"),
        cat(wire.TEACHER_ENTROPY.name),
    )
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
            token_loss = torch.maximum(l1, l2)
            if a < 0:
                token_loss = torch.minimum(token_loss, -a * 3.0)
            total = total + token_loss * rho[t]
        else:
            p_k = logp_full[t, batch["topk"][t]].exp()
            q_k = batch["teacher_log_q"][t].exp()
            p = torch.cat([p_k, (1 - p_k.sum()).reshape(1)])
            q = torch.cat([q_k, (1 - q_k.sum()).reshape(1)])
            m = (1 - alpha) * p + alpha * q
            d = (1 - alpha) * (p * (p / m).log()).sum() + alpha * (q * (q / m).log()).sum()
            total = total + d * min(ratio.item(), is_clip) * rho[t] * next(w_iter)
    return total / len(tokens), math.log(mean_w.item())
