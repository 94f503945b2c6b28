"""The SRPO loss installed on the training workers with `set_loss_fn`.

verl's FSDP engine calls one function in two roles (the hook verl's own top-K distillation uses):
  1. as a logits processor, `fn(student_logits=(1, nnz, V), data=micro_batch)`, inside the forward,
     returning per-token (1, nnz) tensors: here the top-K+tail divergence of SDPO-routed tokens
     against the teacher log-probs stored by the teacher pass (never a (nnz, V) tensor);
  2. as the loss, `fn(model_output=..., data=micro_batch, dp_group=...)`, returning the
     one-denominator SRPO objective of `core_algos.srpo_loss` and metrics.
Nothing here holds math: every formula is a `srpo_verl.core_algos` function.

The batch fields it reads (route, top-K ids, teacher values, the mini-batch normaliser) are declared
in `wire.py`; each row's advantage for the method (`SRPOConfig.advantage`) is formed here, from verl's
GRPO advantage and, where the method uses it, the sampled-token advantage of the teacher's log-prob.
The teacher's fields are nested tensors with the response's length on rows the teacher scored and an
empty row elsewhere (nothing is shipped for a GRPO row): their values are the response tokens of the
scored rows, in order (`teacher_token_mask`).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.padding import no_padding_2_padding

from srpo_verl import core_algos
from srpo_verl.algo_config import SRPOConfig
from srpo_verl.integration import wire
from srpo_verl.lent_gradient import LendBook, lend_dense_gradient, topk_tail_divergence_lent


def packed_response_positions(seq_lens: torch.Tensor, response_lens: torch.Tensor) -> torch.Tensor:
    """Packed (rmpad) positions of the logits that score each response token, row-major.

    Each row's packed sequence ends with its response; the logit at position p scores token p + 1, so
    response token t of a row ending at offset e with R response tokens is scored at e - R - 1 + t
    (the same left shift as verl's `no_padding_2_padding`). seq_lens, response_lens: (B,) on the
    micro-batch's device; the result (R_total,) is on it too, computed without reading values on the
    host (on GPU every tensor verl hands the loss is on the accelerator).
    """
    rows = torch.arange(response_lens.numel(), device=response_lens.device)
    token_row = torch.repeat_interleave(rows, response_lens)  # (R_total,)
    first = seq_lens.cumsum(0) - response_lens - 1  # (B,) the position scoring each row's first token
    row_start = response_lens.cumsum(0) - response_lens  # (B,) offset of each row among response tokens
    t = torch.arange(token_row.numel(), device=response_lens.device) - row_start[token_row]
    return first[token_row] + t


def response_positions(data) -> torch.Tensor:
    """`packed_response_positions` of a student micro-batch: sequences are [prompt | response]."""
    prompt_lens = data["prompts"].offsets().diff()
    response_lens = data["responses"].offsets().diff()
    return packed_response_positions(prompt_lens + response_lens, response_lens)


def response_tokens_of(data, rows: torch.Tensor) -> torch.Tensor:
    """(R_total,) bool: the response tokens of the rows flagged in `rows` ((B,) bool), in the packed
    order of `data["responses"]`, on the micro-batch's device."""
    return torch.repeat_interleave(rows.bool(), data["responses"].offsets().diff())


def routed_response_tokens(data) -> torch.Tensor:
    """(R_total,) bool: the response tokens of SDPO-routed rows, on the micro-batch's device."""
    return response_tokens_of(data, data[wire.ROUTE.name])


def teacher_token_mask(data, key: str = wire.TEACHER_ENTROPY.name) -> torch.Tensor:
    """(R_total,) bool: the response tokens that have teacher values in field `key` (the tokens of
    rows the teacher scored; other rows carry an empty row). `data[key].values()[i]` belongs to the
    i-th True token. On the micro-batch's device."""
    return response_tokens_of(data, data[key].offsets().diff() > 0)


def padded_teacher_field(data, key: str, shape: torch.Size) -> torch.Tensor:
    """A teacher field as a (B, T) response-aligned tensor, zero where the row carries none."""
    field = data[key]
    lens = field.offsets().diff()  # (B,)
    values = field.values()
    present = torch.arange(shape[1], device=lens.device).unsqueeze(0) < lens.unsqueeze(-1)  # (B, T)
    out = values.new_zeros(shape)
    out[present] = values  # row-major order = the order of the packed values
    return out


def distillation_divergence(
    student_logits: torch.Tensor, data, srpo: SRPOConfig, lends: LendBook | None = None
) -> dict[str, torch.Tensor]:
    """Logits-processor role: per-token divergence D_alpha on SDPO-routed response tokens.

    Only the routed tokens' rows of the logits are read (`lent_gradient.topk_tail_divergence_lent`): work
    follows the routed share, and nothing of the logits' size is kept for backward (verl's in-place
    cross-entropy overwrites them on GPU). Besides D it returns, per token, the weight S of D's dense
    gradient part and log p at the response token, for the loss role to lend S to verl's token log-prob
    (which the engine computes from these same logits right after this call). The `Lend` joining the
    two rides on the micro-batch (verl hands both roles the same object) and is added to `lends`.
    """
    logits = student_logits.squeeze(0)  # (nnz, V)
    nnz = logits.shape[0]
    out = {
        key: logits.new_zeros(nnz, dtype=torch.float32)
        for key in (wire.DIVERGENCE, wire.DENSE_WEIGHT, wire.LABEL_LOG_PROB, wire.TOPK_MATCH)
    }
    lend = None
    if srpo.distils_logits and wire.TOPK_IDS.name in data and bool(data[wire.ROUTE.name].any()):
        routed = routed_response_tokens(data)  # (R_total,)
        positions = response_positions(data)[routed]  # (n,)
        if positions.numel() > 0:
            # Routed rows are scored by the teacher: their tokens' places among the teacher's values.
            taught = teacher_token_mask(data, wire.TEACHER_TOPK.name)  # (R_total,)
            index = (taught.cumsum(0) - 1)[routed]  # (n,)
            topk_ids = data[wire.TOPK_IDS.name].values()[index].long()  # (n, K)
            teacher_topk = data[wire.TEACHER_TOPK.name].values()[index].float()  # (n, K)
            lent = topk_tail_divergence_lent(
                logits,
                teacher_topk,
                topk_ids,
                data["responses"].values()[routed],  # the token verl's log-prob scores at each position
                rows=positions,
                alpha=srpo.alpha,
                tail=True,
                chunk_size=srpo.chunk_size,
            )  # (n,) each
            for key, value in zip((wire.DIVERGENCE, wire.DENSE_WEIGHT, wire.LABEL_LOG_PROB, wire.TOPK_MATCH), lent[:4]):
                out[key] = out[key].index_copy(0, positions, value.float())
            lend = lent.lend
            if lends is not None:
                lends.add(lend)
    # Always set (None when nothing is lent): a micro-batch object reused by a later call must not
    # carry an earlier call's Lend.
    tu.assign_non_tensor(data, **{wire.LEND: lend})
    return {key: value.unsqueeze(0) for key, value in out.items()}


def lend_to_token_log_prob(log_prob: torch.Tensor, divergence: torch.Tensor, model_output, data):
    """(log_prob, divergence) (B, T) with the divergence's dense gradient lent to verl's token log-prob
    (`lent_gradient.lend_dense_gradient`), after checking that this log-prob is the one the lent gradient
    assumes: log p of the response token from the same logits, on every routed token."""
    dense_weight = no_padding_2_padding(model_output[wire.DENSE_WEIGHT], data)  # (B, T)
    expected = no_padding_2_padding(model_output[wire.LABEL_LOG_PROB], data)  # (B, T)
    lens = data["responses"].offsets().diff()  # (B,)
    present = torch.arange(log_prob.shape[1], device=lens.device) < lens.unsqueeze(-1)  # (B, T)
    routed = present & data[wire.ROUTE.name].bool().unsqueeze(-1)  # the processor's rows, row-major
    # verl's torch path keeps bf16 logits' log-probs in bf16 (flash-attn's and the fp32 path give fp32).
    tol = max(1e-3, torch.finfo(log_prob.dtype).eps)
    gap = ((log_prob.detach().float() - expected).abs() - tol * (1.0 + expected.abs())) * routed
    if gap.max().item() > 0.0:
        raise RuntimeError(
            "verl's token log-probs differ from log p of the response tokens the SRPO divergence computed "
            f"from the same logits (by {gap.max().item():.3g} beyond the tolerance): the engine's log-prob "
            "path is not the one this loss lends its gradient to (docs/verl_surfaces.md S45)"
        )
    lend = tu.get_non_tensor_data(data, wire.LEND, None)
    if lend is None:  # nothing routed in this micro-batch: the divergence is a constant 0
        return log_prob, divergence
    return lend_dense_gradient(log_prob, divergence, dense_weight, routed, lend)


def srpo_policy_objective(model_output, data, *, actor_config, srpo: SRPOConfig):
    """Loss role: the one-denominator SRPO objective on this micro-batch (sdpo: the distilled-token mean)."""
    log_prob = no_padding_2_padding(model_output["log_probs"], data)  # (B, T)
    fields = ["response_mask", "old_log_probs", "advantages"]
    if "rollout_is_weights" in data:
        fields.append("rollout_is_weights")
    padded = dict(data.select(*fields).to_padded_tensor().items())
    mask = padded["response_mask"].bool()  # (B, T)
    old_log_prob, rho = padded["old_log_probs"], padded.get("rollout_is_weights", None)
    route = data[wire.ROUTE.name].bool()  # (B,)
    # Teacher fields are empty rows outside the taught ones (zero once padded).
    weight_entropy = padded_teacher_field(data, srpo.weight_entropy_field, old_log_prob.shape)
    sampled_adv = None
    if not srpo.distils_logits:  # the SDPO signal is the sampled token's teacher log-prob
        taught = data[wire.TEACHER_LOG_PROB.name].offsets().diff() > 0  # (B,)
        teacher_log_prob = padded_teacher_field(data, wire.TEACHER_LOG_PROB.name, old_log_prob.shape)
        sampled_adv = core_algos.sampled_token_advantage(teacher_log_prob, old_log_prob) * taught.unsqueeze(-1)
        advantages = srpo.advantage(padded["advantages"], sampled_adv, taught)
    else:
        advantages = srpo.advantage(padded["advantages"], None, None)

    clip_kwargs = dict(
        clip_ratio_low=actor_config.clip_ratio_low,
        clip_ratio_high=actor_config.clip_ratio_high,
        clip_ratio_c=actor_config.get("clip_ratio_c", None),
        rollout_is_weights=rho,
    )
    sdpo_tokens = mask & route.unsqueeze(-1)  # (B, T)
    if srpo.distils_logits:
        if wire.DIVERGENCE in model_output:
            divergence = no_padding_2_padding(model_output[wire.DIVERGENCE], data)  # (B, T)
            log_prob, divergence = lend_to_token_log_prob(log_prob, divergence, model_output, data)
        else:  # no routed row in this worker's update: the worker asked verl for no processor call
            divergence = torch.zeros_like(log_prob)
        sdpo_loss = core_algos.sdpo_token_loss(
            divergence, log_prob, old_log_prob, is_clip=srpo.is_clip, rollout_is_weights=rho
        )
    else:  # sampled-token distillation (and advantage_mix, which routes nothing)
        sdpo_loss, _ = core_algos.ppo_clip_token_loss(log_prob, old_log_prob, sampled_adv, **clip_kwargs)
        divergence = torch.zeros_like(log_prob)
    grpo_loss, clipped = core_algos.ppo_clip_token_loss(log_prob, old_log_prob, advantages, **clip_kwargs)
    weights = core_algos.entropy_weights(
        weight_entropy,
        sdpo_tokens,
        beta=srpo.beta,
        log_mean=data[wire.LOG_MEAN_WEIGHT],
    )
    num_tokens, dp_size = data["batch_num_tokens"], data["dp_size"]
    # SRPO: one denominator, all valid tokens of the mini-batch. sdpo: the distilled tokens of the
    # mini-batch (SDPO's token mean over distilled tokens; its reference code takes it per micro-batch).
    denominator = data[wire.NUM_DISTILLED_TOKENS] if srpo.distilled_tokens_denominator else num_tokens
    loss = core_algos.srpo_loss(grpo_loss, sdpo_loss, route, weights, mask, num_tokens=denominator, dp_size=dp_size)

    # Metrics summed over micro-batches and ranks are normalised by the global token counts.
    def share(x: torch.Tensor, sel: torch.Tensor) -> Metric:
        return Metric(
            value=(x.float() * sel).sum().item() / max(num_tokens, 1) * dp_size, aggregation=AggregationType.SUM
        )

    grpo_tokens = mask & ~route.unsqueeze(-1)
    metrics: dict[str, Any] = {
        "actor/pg_loss": Metric(value=loss.detach(), aggregation=AggregationType.SUM),
        "srpo/grpo_loss": share(grpo_loss.detach(), grpo_tokens),
        "srpo/sdpo_loss": share((sdpo_loss * weights).detach(), sdpo_tokens),
        "srpo/grpo_token_share": share(torch.ones_like(log_prob), grpo_tokens),
        "srpo/sdpo_token_share": share(torch.ones_like(log_prob), sdpo_tokens),
        "actor/pg_clipfrac": share(clipped, grpo_tokens),
    }
    if wire.NUM_DISTILLED_TOKENS in data:
        # The entropy the weights read (entropy_mode), as a token mean over the mini-batch's routed tokens.
        distilled = max(float(data[wire.NUM_DISTILLED_TOKENS]), 1.0)
        metrics["srpo/weight_entropy_mean"] = Metric(
            value=(weight_entropy.float() * sdpo_tokens).sum().item() / distilled * dp_size,
            aggregation=AggregationType.SUM,
        )
    if sdpo_tokens.any():
        w = weights[sdpo_tokens]
        metrics.update(
            {
                "srpo/divergence_mean": divergence[sdpo_tokens].mean().item(),
                "srpo/weight_mean": w.mean().item(),  # 1 over the mini-batch; per micro-batch it varies
                "srpo/weight_max": w.max().item(),
                "srpo/weight_std": w.std(unbiased=False).item(),
            }
        )
        if wire.TOPK_MATCH in model_output:
            match = no_padding_2_padding(model_output[wire.TOPK_MATCH], data)
            metrics["srpo/topk_match_fraction"] = match[sdpo_tokens].mean().item()
    return loss, metrics


def srpo_loss_fn(
    actor_config,
    srpo: SRPOConfig,
    model_output: Optional[dict] = None,
    data=None,
    dp_group=None,
    student_logits: Optional[torch.Tensor] = None,
    *,
    lends: LendBook | None = None,
):
    """Both roles in one picklable function (bind the first two arguments, and the worker's `LendBook`
    as `lends`, with functools.partial)."""
    if student_logits is not None:
        return distillation_divergence(student_logits, data, srpo, lends)
    return srpo_policy_objective(model_output, data, actor_config=actor_config, srpo=srpo)
