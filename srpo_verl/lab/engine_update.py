"""One micro-batch's update as verl's engine computes it, on packed logits, without verl.

The engine hands the logits processor the packed (N, V) logits, then computes every token's log-prob
from the same tensor (on GPU with flash-attn's in-place cross-entropy). `update_terms` does the same
with `core_algos` alone: the routed rows' divergence by `lent_gradient.topk_tail_divergence_lent`, the token
log-probs by `logprobs`, and the lend between them, as the SRPO loss does. Shared by the core tests,
scripts/gpu_check.py and `scripts/bench_gpu.py step`.
"""

from __future__ import annotations

import torch

from srpo_verl import lent_gradient


def plain_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """verl's out-of-place token log-prob: log softmax(logits)[labels], in at least fp32."""
    return (
        torch.log_softmax(logits.float() if logits.dtype != torch.float64 else logits, -1)
        .gather(-1, labels.unsqueeze(-1))
        .squeeze(-1)
    )


def update_terms(
    logits, labels, rows, topk_index, teacher_log_q, *, logprobs=plain_logprobs, chunk_size=256, alpha=0.5, book=None
):
    """(token log-probs (N,), divergence (N,), zero off `rows`) with the divergence's gradient lent to
    the log-probs: any loss built from the two has the gradient of the plain computation. The `Lend`
    joining them is added to `book` (a `lent_gradient.LendBook`) when one is given."""
    n = logits.shape[0]
    out = lent_gradient.topk_tail_divergence_lent(
        logits, teacher_log_q, topk_index, labels[rows], rows=rows, alpha=alpha, chunk_size=chunk_size
    )
    token = logprobs(logits, labels)  # created after the divergence, as in the engine: its backward runs first
    if book is not None:
        book.add(out.lend)
    lent = torch.zeros(n, dtype=torch.bool, device=logits.device).index_fill(0, rows, True)
    place = lambda v: torch.zeros(n, dtype=v.dtype, device=v.device).index_copy(0, rows, v)  # noqa: E731
    return lent_gradient.lend_dense_gradient(
        token, place(out.divergence), place(out.dense_weight).to(token.dtype), lent, out.lend
    )
