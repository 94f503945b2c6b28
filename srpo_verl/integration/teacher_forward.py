"""The teacher's forward at the response positions, and what the loss needs from it.

No verl import: the worker's teacher pass (worker.py) calls these on each micro-batch, and
`scripts/bench_gpu.py teacher-memory` calls the same functions on a machine with a GPU and no verl.
"""

from __future__ import annotations

import logging

import torch

from srpo_verl import core_algos
from srpo_verl.integration import wire

logger = logging.getLogger(__name__)
_FULL_LOGITS_WARNED: set[str] = set()  # model types warned about once per process


def response_logits(module, inputs: dict, positions: torch.Tensor) -> torch.Tensor:
    """(R, V) logits of a causal LM at `positions` of its packed (1, nnz) input only.

    transformers' causal LMs apply the LM head to `hidden[:, logits_to_keep]` when given an index
    tensor, so the (nnz, V) logits of the whole teacher sequence (prompt + demonstration + response)
    are never made; only the R positions that score response tokens.

    Some forwards drop a tensor `logits_to_keep` (verl replaces the forward of qwen2/2.5/3-VL, glm4v
    and qwen3.5 models with one that runs the LM head at every position). Their (nnz, V) logits are
    detected by shape at the first call and the positions taken from them, with one warning naming the
    model type: the same values, at the memory of the whole sequence's logits.
    """
    logits = module(**inputs, use_cache=False, logits_to_keep=positions).logits  # (1, R, V)
    if logits.shape[-2] == positions.numel():
        return logits.squeeze(0)
    nnz = inputs["input_ids"].shape[-1]
    model_type = getattr(getattr(module, "config", None), "model_type", type(module).__name__)
    if logits.shape[-2] != nnz:
        raise RuntimeError(
            f"the {model_type} forward returned logits for {logits.shape[-2]} positions, neither the "
            f"{positions.numel()} asked for with logits_to_keep nor all {nnz}: unknown output layout"
        )
    if model_type not in _FULL_LOGITS_WARNED:
        _FULL_LOGITS_WARNED.add(model_type)
        logger.warning(
            "the %s forward ignores a tensor logits_to_keep (verl patches it): the SRPO teacher pass takes "
            "the response positions from logits of the whole teacher sequence (more memory per token)",
            model_type,
        )
    return logits.index_select(-2, positions).squeeze(0)


@torch.no_grad()
def score_response_tokens(
    logits: torch.Tensor, temperature: torch.Tensor, topk_ids: torch.Tensor, sampled: torch.Tensor, *, chunk_size: int
) -> dict[str, torch.Tensor]:
    """Per response token: teacher log q at the student's top-K ids, full and K+1-bucket entropy, and
    log q of the sampled token, each in fp32 on the logits' device.

    logits (R, V) are divided by `temperature` (R, 1) in place (they are ours, forward-only: no second
    copy); topk_ids (R, K) long; sampled (R,) long.
    """
    logits.div_(temperature.to(logits.dtype))
    log_q_topk, entropy, log_q_sampled = core_algos.teacher_scores(logits, topk_ids, sampled, chunk_size=chunk_size)
    return {
        wire.TEACHER_TOPK.name: log_q_topk.float(),
        wire.TEACHER_ENTROPY.name: entropy.float(),
        wire.TEACHER_ENTROPY_TOPK.name: core_algos.topk_tail_entropy(core_algos.add_tail_bucket(log_q_topk)).float(),
        wire.TEACHER_LOG_PROB.name: log_q_sampled.float(),
    }
