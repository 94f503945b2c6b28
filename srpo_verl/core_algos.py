"""SRPO math as pure tensor functions (torch and numpy only; no verl import).

SRPO — Sample-Routed Policy Optimization, arXiv 2604.02288 (https://arxiv.org/abs/2604.02288).
SDPO — Reinforcement Learning via Self-Distillation, arXiv 2601.20802 (https://arxiv.org/abs/2601.20802).
Symbols follow docs/spec.md: r_i reward, c_i correctness, m_i teacher availability, z_i routing,
A_i advantage, p = pi_theta (student), q = pi_teacher, H teacher entropy, w entropy weight.

Shapes: B responses, T response tokens, N = flattened tokens, V vocabulary, K top-K support.
Every loss is computed in at least float32 (bf16 inputs are upcast; float64 stays float64 so the
tests can compare against float64 references). Per-token functions return (B, T) matrices; only
`srpo_loss` aggregates, with one denominator passed in by the caller.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

__all__ = [
    "Routing",
    "add_tail_bucket",
    "advantage_mix",
    "correctness",
    "ema_teacher_update_",
    "entropy_weight_log_mean",
    "entropy_weights",
    "full_vocab_divergence",
    "gather_log_softmax",
    "generalized_jsd",
    "group_ids",
    "grpo_advantage",
    "ppo_clip_token_loss",
    "routing_mask",
    "sampled_token_advantage",
    "sdpo_token_loss",
    "srpo_loss",
    "student_topk",
    "teacher_availability",
    "teacher_entropy",
    "teacher_scores",
    "teacher_topk_log_probs",
    "topk_tail_divergence",
    "topk_unchanged",
    "topk_tail_entropy",
    "trust_region_teacher_log_probs",
    "trust_region_teacher_logits_",
]

# Rows of (N, V) logits upcast at a time. 256 rows of a 151,936-token vocabulary are 156 MB in
# float32: small next to the logits themselves, large enough that per-chunk overhead is negligible.
DEFAULT_CHUNK_SIZE = 256

# verl clamps log-ratios to this range before exp (compute_policy_loss_vanilla).
_LOG_RATIO_CLAMP = 20.0


# ----------------------------------------------------------------------------------------------
# Shared private steps (validation, dtype, chunking, safe p*log p). Written once, used everywhere.
# ----------------------------------------------------------------------------------------------


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (low <= value <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


def _check_positive_int(name: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise ValueError naming the arguments when the given tensors' shapes differ."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if len(set(shapes.values())) > 1:
        desc = ", ".join(f"{name}{shape}" for name, shape in shapes.items())
        raise ValueError(f"mismatched shapes: {desc}")


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # Losses in at least float32; float64 is kept so tests can use float64 references.
    return torch.promote_types(t.dtype, torch.float32) if t.is_floating_point() else torch.float32


def _as_float(t: torch.Tensor) -> torch.Tensor:
    return t.to(_compute_dtype(t))


def _row_chunks(n: int, chunk_size: int):
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


def _per_token(values: torch.Tensor, like: torch.Tensor, name: str, like_name: str) -> torch.Tensor:
    """Broadcast a per-response (B,) tensor to (B, 1) against a (B, T) one; pass a (B, T) tensor through."""
    if values.dim() == 1 and like.dim() == 2 and values.shape[0] == like.shape[0]:
        return values.unsqueeze(-1)  # (B, 1)
    if values.shape != like.shape:
        raise ValueError(
            f"mismatched shapes: {name}{tuple(values.shape)} must be (B,) or (B, T) "
            f"with (B, T) = {like_name}{tuple(like.shape)}"
        )
    return values


def _importance_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """r_t(theta) = exp(log p - log p_old), log-ratio clamped to [-20, 20] as in verl."""
    log_ratio = _as_float(log_prob) - _as_float(old_log_prob)  # (B, T)
    return torch.exp(log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP))


def _apply_rollout_is(loss: torch.Tensor, rollout_is_weights: torch.Tensor | None) -> torch.Tensor:
    if rollout_is_weights is None:
        return loss
    _check_same_shape(loss=loss, rollout_is_weights=rollout_is_weights)
    # Weights correct for the rollout engine's sampling distribution; they are data, not a path for gradients.
    return loss * _as_float(rollout_is_weights).detach()


def _sum_p_log_ratio(log_p: torch.Tensor, log_r: torch.Tensor) -> torch.Tensor:
    """sum_v p_v (log p_v - log r_v) over the last dim with the convention 0 * log 0 = 0.

    Zero-probability entries (log p = -inf) are replaced by 0 *before* the arithmetic, so neither
    the value nor the gradient can see -inf - -inf or 0 * inf (a plain torch.where after the fact
    would still back-propagate NaN through the unselected branch).
    """
    support = log_p > float("-inf")  # (..., V)
    log_p = log_p.masked_fill(~support, 0.0)
    log_r = log_r.masked_fill(~support, 0.0)
    # Off the support: exp(0) * (0 - 0) = 0 exactly.
    return (log_p.exp() * (log_p - log_r)).sum(-1)


def _chunk_logsumexp_(chunk: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dim of a float chunk, destroying the chunk (one buffer, no temps)."""
    row_max = chunk.amax(-1, keepdim=True)  # (n, 1)
    # A row of all -inf would give -inf - -inf = NaN; shifting by 0 keeps it -inf instead.
    row_max = row_max.masked_fill(~torch.isfinite(row_max), 0.0)
    return chunk.sub_(row_max).exp_().sum(-1).log_() + row_max.squeeze(-1)  # (n,)


def _chunk_buffer(like: torch.Tensor, chunk_size: int, dtype: torch.dtype) -> torch.Tensor:
    """One (chunk_size, V) work buffer reused by every chunk: allocating a fresh one per chunk costs
    page faults on CPU (each large allocation is a new mmap) and allocator churn elsewhere."""
    return torch.empty((min(chunk_size, like.shape[0]), like.shape[-1]), dtype=dtype, device=like.device)


def _upcast_into(buffer: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """Copy (and upcast) a chunk of rows into the head of the work buffer; returns that view."""
    return buffer[: chunk.shape[0]].copy_(chunk)


# ----------------------------------------------------------------------------------------------
# Routing (SRPO Sec. 3, spec Sec. 1 steps 1-3)
# ----------------------------------------------------------------------------------------------


class Routing(NamedTuple):
    """Per-response routing decision, all bool (B,).

    correct: c_i; demonstration: rows that may serve as a sibling's demonstration (correct, usable
    and with content); teacher_available: m_i; sdpo: z_i^SDPO = (1 - c_i) m_i; grpo: 1 - z_i^SDPO.
    """

    correct: torch.Tensor
    demonstration: torch.Tensor
    teacher_available: torch.Tensor
    sdpo: torch.Tensor
    grpo: torch.Tensor


def group_ids(index: Any, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Map arbitrary group labels (verl's `uid`) to contiguous group ids 0..G-1.

    `index` is a 1-D integer tensor, or a 1-D numpy array / sequence of hashable labels (strings,
    ints). Returns a LongTensor (B,). Ids follow the sorted order of the labels; only equality matters.
    """
    if isinstance(index, torch.Tensor):
        if index.dim() != 1:
            raise ValueError(f"index must be 1-D, got shape {tuple(index.shape)}")
        if index.is_floating_point() or index.is_complex():
            raise ValueError(f"index tensor must be integer, got dtype {index.dtype}")
        ids = torch.unique(index, return_inverse=True)[1]  # (B,)
        return ids.to(device=device if device is not None else index.device)
    labels = np.asarray(index)
    if labels.ndim != 1:
        raise ValueError(f"index must be 1-D, got shape {labels.shape}")
    try:
        ids = np.unique(labels, return_inverse=True)[1].reshape(-1)
    except TypeError:
        # Unorderable mixed labels (e.g. str and None): fall back to first-appearance ids by hashing.
        first_seen: dict[Any, int] = {}
        ids = np.array([first_seen.setdefault(label, len(first_seen)) for label in labels.tolist()])
    return torch.as_tensor(ids, dtype=torch.long, device=device)


def _check_rewards(rewards: torch.Tensor) -> None:
    if rewards.dim() != 1:
        raise ValueError(
            f"rewards must be 1-D (B,) sequence-level scores, got shape {tuple(rewards.shape)}; "
            "sum token-level rewards over the response first"
        )
    if not torch.isfinite(rewards).all():
        rows = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        raise ValueError(
            f"rewards must be finite, got {len(rows)} non-finite value(s) at rows {rows[:10]}, "
            f"e.g. {rewards[rows[0]].item()}"
        )


def _row_mask(name: str, value: Any, like: torch.Tensor) -> torch.Tensor:
    """An optional per-row bool mask (tensor, array or list) on `like`'s device, checked to be (B,)."""
    mask = torch.as_tensor(value, dtype=torch.bool, device=like.device).reshape(-1)
    if mask.shape != like.shape:
        raise ValueError(f"mismatched shapes: {name}{tuple(mask.shape)} for a batch of {like.shape[0]} rows")
    return mask


def correctness(rewards: torch.Tensor, *, success_threshold: float = 0.5) -> torch.Tensor:
    """c_i = 1[r_i >= tau]  (SRPO Sec. 3.1; spec step 1).

    rewards: (B,) sequence-level rewards. Returns bool (B,).
    """
    if not math.isfinite(success_threshold):
        raise ValueError(f"success_threshold must be finite, got {success_threshold!r}")
    _check_rewards(rewards)
    return rewards >= success_threshold  # (B,)


def teacher_availability(
    correct: torch.Tensor, index: Any, *, has_feedback: torch.Tensor | np.ndarray | None = None
) -> torch.Tensor:
    """m_i = 1[exists j != i in group(i) with c_j = 1]  OR  has_feedback_i  (SRPO Sec. 3.1; spec step 2).

    A sample is never its own demonstration, so a correct sample without a correct sibling has m_i = 0.
    correct: bool (B,) (in general: the rows that may serve as a demonstration); index: group labels
    (B,); has_feedback: optional bool (B,), True where the environment returned non-empty feedback
    (SDPO Sec. 3 "rich feedback"). Returns bool (B,).
    """
    if correct.dim() != 1:
        raise ValueError(f"correct must be 1-D (B,), got shape {tuple(correct.shape)}")
    gid = group_ids(index, device=correct.device)  # (B,)
    if gid.shape != correct.shape:
        raise ValueError(f"mismatched shapes: correct{tuple(correct.shape)}, index{tuple(gid.shape)}")
    c = correct.long()  # (B,)
    correct_per_group = torch.zeros(int(gid.max()) + 1 if gid.numel() else 0, dtype=torch.long, device=c.device)
    correct_per_group.index_add_(0, gid, c)  # (G,)
    # Siblings only: remove the sample's own vote.
    available = (correct_per_group[gid] - c) > 0  # (B,)
    if has_feedback is not None:
        available = available | _row_mask("has_feedback", has_feedback, correct)
    return available


def routing_mask(
    rewards: torch.Tensor,
    index: Any,
    *,
    success_threshold: float = 0.5,
    has_feedback: torch.Tensor | np.ndarray | None = None,
    usable: torch.Tensor | np.ndarray | None = None,
    demonstrable: torch.Tensor | np.ndarray | None = None,
) -> Routing:
    """z_i^SDPO = (1 - c_i) m_i,  z_i^GRPO = 1 - z_i^SDPO  (SRPO Sec. 3.1, Eq. routing; spec step 3).

    Wrong samples with a teacher go to SDPO; everything else (correct samples, lone-correct samples,
    all-wrong groups) goes to GRPO, where an all-wrong group's advantage is 0.

    The trainer restricts the paper's rule to rows that can take part: `usable` (default all) marks
    rows that exist and have a response token to score (padding rows and empty responses can neither
    be distilled nor demonstrate); `demonstrable` (default all) marks responses with content a
    teacher can read (not only whitespace or thinking). m_i then counts siblings that are correct,
    usable and demonstrable, and feedback only on usable rows.
    rewards: (B,); index: group labels (B,); masks: bool (B,). Returns Routing of bool (B,) tensors.
    """
    correct = correctness(rewards, success_threshold=success_threshold)  # (B,)
    ok = torch.ones_like(correct) if usable is None else _row_mask("usable", usable, correct)  # (B,)
    demonstration = correct & ok
    if demonstrable is not None:
        demonstration = demonstration & _row_mask("demonstrable", demonstrable, correct)
    feedback = None if has_feedback is None else _row_mask("has_feedback", has_feedback, correct) & ok
    available = teacher_availability(demonstration, index, has_feedback=feedback) & ok  # (B,)
    sdpo = ~correct & available  # (B,)
    return Routing(correct=correct, demonstration=demonstration, teacher_available=available, sdpo=sdpo, grpo=~sdpo)


# ----------------------------------------------------------------------------------------------
# Advantages and the GRPO branch (spec steps 4 and 6)
# ----------------------------------------------------------------------------------------------


def grpo_advantage(rewards: torch.Tensor, index: Any, *, norm_by_std: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """A_i = r_i - mean_{j in group(i)} r_j, optionally / (std_group + eps)  (SRPO Sec. 2; spec step 4).

    Default without std (Dr. GRPO / the SDPO code's `norm_adv_by_std_in_grpo: False`). The std is the
    unbiased one (torch.std, as verl's GRPO). A group of size 1 has advantage 0 (r_i equals its own
    mean; verl instead returns r_i for singleton groups).
    rewards: (B,); index: group labels (B,). Returns float32 (B,) (float64 for float64 rewards).
    Group sums accumulate in float64; an advantage that does not fit the output dtype (finite
    float32 rewards near +-3e38 whose difference from the group mean exceeds float32's range)
    raises ValueError naming the rows rather than returning +-inf.
    """
    _check_rewards(rewards)
    gid = group_ids(index, device=rewards.device)  # (B,)
    if gid.shape != rewards.shape:
        raise ValueError(f"mismatched shapes: rewards{tuple(rewards.shape)}, index{tuple(gid.shape)}")
    r = rewards.detach().double()  # (B,) float64: group sums of many rewards stay exact
    n_groups = int(gid.max()) + 1 if gid.numel() else 0
    count = torch.zeros(n_groups, dtype=torch.float64, device=r.device).index_add_(0, gid, torch.ones_like(r))  # (G,)
    mean = torch.zeros_like(count).index_add_(0, gid, r) / count  # (G,)
    centered = r - mean[gid]  # (B,)
    if norm_by_std:
        sq = torch.zeros_like(count).index_add_(0, gid, centered.square())  # (G,)
        # Bessel's correction; singleton groups get std 0 (their centered reward is 0 anyway).
        std = torch.where(count > 1, sq / (count - 1).clamp(min=1), torch.zeros_like(sq)).sqrt()  # (G,)
        centered = centered / (std[gid] + eps)
    advantages = centered.to(_compute_dtype(rewards))  # (B,)
    if not torch.isfinite(advantages).all():
        rows = (~torch.isfinite(advantages)).nonzero().flatten().tolist()
        raise ValueError(
            f"GRPO advantage does not fit {advantages.dtype} at rows {rows[:10]} (e.g. r - mean = "
            f"{centered[rows[0]].item():.3g}): rewards this large overflow; rescale the reward function"
        )
    return advantages


def ppo_clip_token_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.28,
    clip_ratio_c: float | None = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate per token, asymmetric clip (SRPO Sec. 3.2; spec step 6 GRPO branch).

        l_t = max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high)),   r_t = exp(log p - log p_old)

    With clip_ratio_c = c > 1 (dual-clip PPO, arXiv 1912.09729), tokens with A < 0 use
    min(l_t, -A c), exactly as verl's compute_policy_loss_vanilla (log-ratio clamped to [-20, 20]).
    Multiplied by the rollout importance weights when given.
    log_prob, old_log_prob: (B, T); advantages: (B,) or (B, T); rollout_is_weights: (B, T).
    Returns (loss float32 (B, T), clipfrac bool (B, T) = the clipped term was the larger one).
    """
    _check_range("clip_ratio_low", clip_ratio_low, 0.0, 1.0)
    if clip_ratio_high < 0:
        raise ValueError(f"clip_ratio_high must be >= 0, got {clip_ratio_high!r}")
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 for dual-clip PPO, got {clip_ratio_c!r}")
    _check_same_shape(log_prob=log_prob, old_log_prob=old_log_prob)
    adv = _as_float(_per_token(advantages, log_prob, "advantages", "log_prob")).detach()  # (B, T) or (B, 1)
    ratio = _importance_ratio(log_prob, old_log_prob)  # (B, T)
    loss_unclipped = -adv * ratio  # (B, T)
    loss_clipped = -adv * ratio.clamp(1.0 - clip_ratio_low, 1.0 + clip_ratio_high)  # (B, T)
    loss = torch.maximum(loss_unclipped, loss_clipped)  # (B, T)
    clipfrac = loss_clipped > loss_unclipped  # (B, T)
    if clip_ratio_c is not None:
        # Dual clip: for A < 0 bound the loss by -A c so a huge ratio cannot dominate the step.
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * clip_ratio_c), loss)
    return _apply_rollout_is(loss, rollout_is_weights), clipfrac


def sampled_token_advantage(teacher_log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """A_t = sg[log q(y_t) - log p_old(y_t)]  (SDPO Sec. 3, sampled-token distillation).

    The cheaper SDPO variant: only the sampled token's teacher log-prob, used as a per-token
    advantage in the PPO surrogate (no top-K). teacher_log_prob, old_log_prob: (B, T). Returns (B, T).
    """
    _check_same_shape(teacher_log_prob=teacher_log_prob, old_log_prob=old_log_prob)
    return (_as_float(teacher_log_prob) - _as_float(old_log_prob)).detach()  # (B, T)


def advantage_mix(
    grpo_advantage: torch.Tensor, sdpo_advantage: torch.Tensor, *, mix_lambda: float = 0.9
) -> torch.Tensor:
    """A = lambda A^GRPO + (1 - lambda) A^SDPO on all samples (SRPO ablation "advantage mix", lambda 0.9).

    grpo_advantage: (B,) or (B, T); sdpo_advantage: (B, T). Returns (B, T).
    """
    _check_range("mix_lambda", mix_lambda, 0.0, 1.0)
    a_grpo = _per_token(grpo_advantage, sdpo_advantage, "grpo_advantage", "sdpo_advantage")  # (B, T) or (B, 1)
    a_grpo = _as_float(a_grpo)
    return mix_lambda * a_grpo + (1.0 - mix_lambda) * _as_float(sdpo_advantage)  # (B, T)


# ----------------------------------------------------------------------------------------------
# Log-softmax at a few indices without V-wide autograd buffers
# ----------------------------------------------------------------------------------------------


def _select_rows(flat: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """`rows` as a long index on `flat`'s device (all rows in order when None)."""
    if rows is None:
        return torch.arange(flat.shape[0], device=flat.device)
    if rows.dim() != 1 or rows.is_floating_point():
        raise ValueError(f"rows must be a 1-D integer index, got shape {tuple(rows.shape)} dtype {rows.dtype}")
    return rows.to(device=flat.device, dtype=torch.long)


def _chunks_of_rows(flat: torch.Tensor, rows: torch.Tensor, chunk_size: int):
    """(slice into `rows`, the selected rows of `flat` as a new tensor), `chunk_size` rows at a time."""
    for part in _row_chunks(rows.shape[0], chunk_size):
        yield part, flat.index_select(0, rows[part])


class _GatherLogSoftmax(torch.autograd.Function):
    """log_softmax(x[rows])[index] with chunked logsumexp, on a private copy of the selected rows.

    Identity used: log p_v = x_v - lse(x), d log p_{i_k} / d x_v = 1[v = i_k] - p_v, hence
    grad_x = scatter_add(g) - softmax(x) * sum_k g_k, recomputed chunk by chunk in backward.

    Why a private copy: the logits may be shared with the rest of a forward, and on GPU verl's token
    log-prob (flash-attn's cross-entropy with inplace_backward=True) writes its gradient into the
    logits' storage before older backward nodes run. A backward that re-read the shared logits would
    rebuild the softmax from that gradient. The copy holds only the selected rows; backward writes
    straight into the returned (N, V) gradient through one work chunk. (The engine's loss avoids the
    copy altogether: `lent_gradient.topk_tail_divergence_lent`.)
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, rows: torch.Tensor, index: torch.Tensor, chunk_size: int) -> torch.Tensor:
        keep = ctx.needs_input_grad[0]
        private = logits.index_select(0, rows) if keep else None  # (n, V): saved for backward only
        source = private if keep else logits
        lse, picked, _ = _lse_and_gather(source, None if keep else rows, index, chunk_size)
        if keep:
            ctx.save_for_backward(private, lse, index, rows)
            ctx.chunk_size, ctx.total_rows = chunk_size, logits.shape[0]
        return picked - lse.unsqueeze(-1)  # (n, K)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, lse, index, rows = ctx.saved_tensors  # x: the private (n, V) copy
        dtype = lse.dtype
        grad_out = grad_out.to(dtype)  # (n, K)
        # The one (N, V) buffer is the gradient itself, in the logits' dtype; unselected rows 0.
        grad = torch.zeros((ctx.total_rows, x.shape[-1]), dtype=x.dtype, device=x.device)
        work = _chunk_buffer(x, ctx.chunk_size, dtype)  # (chunk, V), fp32 for bf16 logits
        for part in _row_chunks(x.shape[0], ctx.chunk_size):
            g = grad_out[part]  # (n, K)
            buf = _upcast_into(work, x[part])  # (n, V)
            buf.sub_(lse[part].unsqueeze(-1)).exp_()  # softmax
            buf.mul_(-g.sum(-1, keepdim=True))  # -p_v * sum_k g_k
            buf.scatter_add_(-1, index[part], g)  # + g_k at v = i_k (duplicates add up)
            grad.index_copy_(0, rows[part], buf.to(x.dtype))
        return grad, None, None, None


def _lse_and_gather(
    logits: torch.Tensor, rows: torch.Tensor | None, index: torch.Tensor, chunk_size: int, top: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(logsumexp (n,), logits at `index` (n, K), and with top = k > 0 whether the first k ids of each
    row are still its k largest logits (n,) bool, else None) of logits[rows] (all rows when None), in
    the compute dtype, one upcast (chunk, V) work buffer at a time; the logits are only read."""
    dtype = _compute_dtype(logits)
    n = logits.shape[0] if rows is None else rows.shape[0]
    lse = torch.empty(n, dtype=dtype, device=logits.device)  # (n,)
    picked = torch.empty(index.shape, dtype=dtype, device=logits.device)  # (n, K)
    unchanged = torch.empty(n, dtype=torch.bool, device=logits.device) if top else None  # (n,)
    work = _chunk_buffer(logits, min(chunk_size, max(n, 1)), dtype)  # (chunk, V)
    if rows is None:
        chunks = ((part, logits[part]) for part in _row_chunks(n, chunk_size))
    else:
        chunks = _chunks_of_rows(logits, rows, chunk_size)
    for part, chunk in chunks:
        buf = _upcast_into(work, chunk)
        picked[part] = buf.gather(-1, index[part])
        if top:  # same test as `topk_unchanged`, while the chunk is at hand
            kth = picked[part, :top].amin(-1, keepdim=True)  # (c, 1)
            unchanged[part] = (buf > kth).sum(-1) < top
        lse[part] = _chunk_logsumexp_(buf)
    return lse, picked, unchanged


def gather_log_softmax(
    logits: torch.Tensor,
    index: torch.Tensor,
    *,
    rows: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """log softmax(x)_v at the given vocabulary indices: x_{i_k} - logsumexp_v x_v.

    Equal in value and gradient to `torch.log_softmax(logits.float(), -1).gather(-1, index)`, but the
    logsumexp is computed `chunk_size` rows at a time (each chunk upcast to fp32) and backward works
    on a private copy of the rows it needs (never on `logits` itself, which a later in-place kernel may
    overwrite before this backward runs). `chunk_size` only affects memory, not numerics.

    rows=None: logits (..., V), index (..., K), returns (..., K).
    rows given (unique long (n,)): logits (N, V), index (n, K) for logits[rows]; returns (n, K), and
    only those n rows are copied, read and given a gradient (the others get exactly 0).
    logits: fp32/bf16/fp64; index: long. Returns at least float32.
    """
    _check_positive_int("chunk_size", chunk_size)
    vocab, k = logits.shape[-1], index.shape[-1]
    if rows is None:
        if logits.shape[:-1] != index.shape[:-1]:
            raise ValueError(
                f"mismatched shapes: logits{tuple(logits.shape)} and index{tuple(index.shape)} must share leading dims"
            )
        flat, flat_index = logits.reshape(-1, vocab), index.reshape(-1, k)
    else:
        flat, flat_index = logits, index
        if logits.dim() != 2 or index.dim() != 2 or index.shape[0] != rows.shape[0]:
            raise ValueError(
                f"mismatched shapes: with rows{tuple(rows.shape)}, logits{tuple(logits.shape)} must be (N, V) and "
                f"index{tuple(index.shape)} (n, K) for the n selected rows"
            )
    selected = _select_rows(flat, rows)
    out = _GatherLogSoftmax.apply(flat, selected, flat_index.long(), chunk_size)  # (n, K)
    return out if rows is not None else out.reshape(*index.shape)


def student_topk(
    logits: torch.Tensor, *, k: int, rows: torch.Tensor | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """The student's top-K token indices per position, the SDPO distillation support (K = 100).

    Top-K of logits equals top-K of log-probs (softmax is monotone), so no normalisation is needed.
    K >= V is clamped to V (the support is then the whole vocabulary). logits: (..., V); with `rows`
    (long (n,)), logits (N, V) and only those rows, `chunk_size` at a time.
    Returns long (..., min(K, V)) or (n, min(K, V)), no gradient.
    """
    _check_positive_int("k", k)
    k = min(k, logits.shape[-1])
    with torch.no_grad():
        if rows is None:
            return torch.topk(logits, k=k, dim=-1, sorted=False).indices
        rows = _select_rows(logits, rows)
        out = torch.empty((rows.shape[0], k), dtype=torch.long, device=logits.device)  # (n, K)
        for part, chunk in _chunks_of_rows(logits, rows, chunk_size):
            out[part] = torch.topk(chunk, k=k, dim=-1, sorted=False).indices
        return out


def topk_unchanged(
    logits: torch.Tensor,
    topk_index: torch.Tensor,
    *,
    rows: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """bool: are the stored ids still the K largest logits? (the student's support drifting during the
    update). True when fewer than K logits exceed the smallest stored one: one compare pass per row,
    not a new top-K. logits (N, V) and topk_index (n, K) for `rows` (long (n,), all rows when None).
    `lent_gradient.topk_tail_divergence_lent` returns the same test from its own pass."""
    with torch.no_grad():
        flat = logits.detach()
        return _lse_and_gather(flat, _select_rows(flat, rows), topk_index, chunk_size, top=topk_index.shape[-1])[2]


def teacher_topk_log_probs(
    teacher_logits: torch.Tensor,
    topk_index: torch.Tensor,
    *,
    rows: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """log q_v at the student's top-K indices (no gradient; chunked like `gather_log_softmax`).

    teacher_logits: (..., V); topk_index: long (..., K); or with `rows`, (N, V) and (n, K).
    Returns (..., K) or (n, K) in at least float32.
    """
    with torch.no_grad():
        return gather_log_softmax(teacher_logits.detach(), topk_index, rows=rows, chunk_size=chunk_size)


# ----------------------------------------------------------------------------------------------
# Divergences and entropies (spec steps 6-7)
# ----------------------------------------------------------------------------------------------


def add_tail_bucket(topk_log_probs: torch.Tensor) -> torch.Tensor:
    """Append log(1 - sum_k p_k), the mass outside the top-K, as bucket K+1 (SDPO Sec. 3).

    tail = log(-expm1(logsumexp_k log p_k)): expm1 keeps 1 - S accurate when S is close to 1, where
    1 - exp(log S) would cancel. log S is clamped to <= -eps(dtype) so the tail stays finite (and its
    gradient zero, not NaN) when the top-K hold all the mass (K >= V, or logits of +-1e4); the K+1
    buckets then sum to 1 + eps.
    topk_log_probs: (..., K). Returns (..., K+1) in at least float32.
    """
    log_probs = _as_float(topk_log_probs)  # (..., K)
    log_mass = torch.logsumexp(log_probs, dim=-1, keepdim=True)  # (..., 1)
    log_mass = log_mass.clamp(max=-torch.finfo(log_probs.dtype).eps)
    tail = torch.log(-torch.expm1(log_mass))  # (..., 1)
    return torch.cat([log_probs, tail], dim=-1)  # (..., K+1)


def generalized_jsd(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, *, alpha: float = 0.5
) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence over the last dim (SDPO Sec. 3; SRPO Sec. 3.2).

        M = (1 - alpha) p + alpha q
        D_alpha(p, q) = (1 - alpha) KL(p || M) + alpha KL(q || M)

    with p = student, q = teacher (stop-gradient: q is detached here). log M is computed in log space:
    logaddexp(log(1 - alpha) + log p, log(alpha) + log q). Special cases, as in the SDPO code:
    alpha = 0 is *defined* as forward KL(q || p) and alpha = 1 as reverse KL(p || q). They are not
    the values of the formula at the endpoints (it is 0 there); they are its leading terms,
    D_alpha ~ alpha KL(q||p) as alpha -> 0 and ~ (1 - alpha) KL(p||q) as alpha -> 1.
    Zero-probability buckets (log p = -inf) contribute 0 (0 log 0 = 0), never NaN.
    student_log_probs, teacher_log_probs: (..., V or K+1), normalised. Returns (...) per position.
    """
    _check_range("alpha", alpha, 0.0, 1.0)
    _check_same_shape(student_log_probs=student_log_probs, teacher_log_probs=teacher_log_probs)
    log_p = _as_float(student_log_probs)  # (..., V)
    log_q = teacher_log_probs.detach().to(log_p.dtype)  # (..., V)
    if alpha == 0.0:
        return _sum_p_log_ratio(log_q, log_p)  # forward KL(q || p): mass-covering
    if alpha == 1.0:
        return _sum_p_log_ratio(log_p, log_q)  # reverse KL(p || q): mode-seeking
    a_p, a_q = log_p + math.log1p(-alpha), log_q + math.log(alpha)  # (..., V)
    # Where both p and q are 0, M is 0 too and unused; substitute 0 so logaddexp's backward stays finite.
    both_zero = (a_p == float("-inf")) & (a_q == float("-inf"))  # (..., V)
    log_m = torch.logaddexp(a_p.masked_fill(both_zero, 0.0), a_q.masked_fill(both_zero, 0.0))  # (..., V)
    return (1.0 - alpha) * _sum_p_log_ratio(log_p, log_m) + alpha * _sum_p_log_ratio(log_q, log_m)


def _topk_divergence(log_p: torch.Tensor, teacher_log_probs_topk: torch.Tensor, *, alpha: float, tail: bool):
    """D_alpha between the student's and the teacher's top-K log-probs (..., K): over K+1 buckets
    with the tail, else between the top-K conditionals. The one definition both divergences use."""
    log_q = teacher_log_probs_topk.detach().to(log_p.dtype)  # (..., K)
    if tail:
        log_p, log_q = add_tail_bucket(log_p), add_tail_bucket(log_q)  # (..., K+1)
    else:
        log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)  # (..., K)
        log_q = log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)  # (..., K)
    return generalized_jsd(log_p, log_q, alpha=alpha)


def topk_tail_divergence(
    student_logits: torch.Tensor,
    teacher_log_probs_topk: torch.Tensor,
    topk_index: torch.Tensor,
    *,
    alpha: float = 0.5,
    tail: bool = True,
    rows: torch.Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """SDPO's logit-level divergence on the student's top-K support (SDPO Sec. 3; SRPO Sec. 3.2, K=100).

        tail=True:  D_alpha over K+1 buckets (p_{i_1..i_K}, 1 - sum_k p_{i_k}) vs the same for q.
        tail=False: D_alpha between the top-K *conditionals* p_{i_k} / sum_j p_{i_j} and
                    q_{i_k} / sum_j q_{i_j}: mass outside the top-K is ignored, so a student that
                    moves mass into or out of the support is not penalised for it.

    Student log-probs come from `gather_log_softmax`: beyond the logits' gradient, memory is a copy of
    the rows it reads plus O(N K). teacher_log_probs_topk is the teacher's (full-vocab normalised) log q
    at topk_index, e.g. from `teacher_topk_log_probs`; it gets no gradient.
    student_logits: (..., V); teacher_log_probs_topk, topk_index: (..., K). Returns (...).
    With `rows` (unique long (n,)): student_logits (N, V), the others (n, K); returns (n,), and only
    those rows are read and receive gradient (the SDPO-routed tokens of a packed micro-batch).
    Where a token log-prob of the same logits is also differentiated (verl's engine), use
    `lent_gradient.topk_tail_divergence_lent`: same value and total gradient, no copy of the rows.
    """
    _check_range("alpha", alpha, 0.0, 1.0)
    _check_same_shape(teacher_log_probs_topk=teacher_log_probs_topk, topk_index=topk_index)
    log_p = gather_log_softmax(student_logits, topk_index, rows=rows, chunk_size=chunk_size)
    return _topk_divergence(log_p, teacher_log_probs_topk, alpha=alpha, tail=tail)


def full_vocab_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, alpha: float = 0.5
) -> torch.Tensor:
    """D_alpha(p, q) over the whole vocabulary (SDPO's full-logit option; reference for the top-K path).

    Materialises (N, V) fp32 log-probs for both sides: use for small vocabularies or as a check.
    student_logits, teacher_logits: (..., V). Returns (...).
    """
    _check_same_shape(student_logits=student_logits, teacher_logits=teacher_logits)
    log_p = torch.log_softmax(_as_float(student_logits), dim=-1)  # (..., V)
    log_q = torch.log_softmax(_as_float(teacher_logits.detach()), dim=-1)  # (..., V)
    return generalized_jsd(log_p, log_q, alpha=alpha)


def _entropy_and_lse_(y: torch.Tensor, work_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy and logsumexp of each row of a float chunk `y` (n, V), destroying it; `work_e` is a
    same-sized buffer. With y' = y - max y and e = exp(y'):  H = log sum e - (sum e y') / (sum e),
    lse = max y + log sum e."""
    row_max = y.amax(-1, keepdim=True)  # (n, 1)
    row_max = row_max.masked_fill(~torch.isfinite(row_max), 0.0)
    y.sub_(row_max)
    # q = 0 has y = -inf; the most negative finite value instead makes e * y = 0 * finite = 0.
    y.clamp_(min=torch.finfo(y.dtype).min)
    e = torch.exp(y, out=work_e[: y.shape[0]])  # (n, V)
    total = e.sum(-1)  # (n,)
    log_total = total.log()
    return log_total - e.mul_(y).sum(-1) / total, log_total + row_max.squeeze(-1)


def teacher_entropy(
    teacher_logits: torch.Tensor, *, rows: torch.Tensor | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """H_{i,t} = -sum_v q(v) log q(v) over the full vocabulary (SRPO Sec. 3.3, Eq. entropy weight).

    No gradient. Computed `chunk_size` rows at a time in two reused fp32 work buffers, so a
    151,936-token vocabulary never needs a second full (N, V) buffer; `chunk_size` only affects memory.
    Per row, with y = x - max x and e = exp(y):  H = log sum e - (sum e y) / (sum e).
    teacher_logits: (..., V), returns (...); with `rows` (long (n,)): (N, V), returns (n,) for those
    rows only. At least float32.
    """
    _check_positive_int("chunk_size", chunk_size)
    with torch.no_grad():
        logits = teacher_logits.detach()
        flat = logits.reshape(-1, logits.shape[-1])  # (N, V)
        selected = _select_rows(flat, rows)  # (n,)
        dtype = _compute_dtype(flat)
        entropy = torch.empty(selected.shape[0], dtype=dtype, device=flat.device)  # (n,)
        work_y, work_e = _chunk_buffer(flat, chunk_size, dtype), _chunk_buffer(flat, chunk_size, dtype)
        for part, chunk in _chunks_of_rows(flat, selected, chunk_size):
            entropy[part] = _entropy_and_lse_(_upcast_into(work_y, chunk), work_e)[0]
        return entropy if rows is not None else entropy.reshape(logits.shape[:-1])


def teacher_scores(
    teacher_logits: torch.Tensor,
    topk_index: torch.Tensor,
    sampled: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Everything the teacher pass needs per token, in one pass over the logits (each chunk read and
    upcast once): `teacher_topk_log_probs` at topk_index, `teacher_entropy`, and log q of the sampled
    token. teacher_logits (N, V), topk_index long (N, K), sampled long (N,). Returns fp32 (N, K),
    (N,), (N,) (at least float32); no gradient."""
    _check_positive_int("chunk_size", chunk_size)
    with torch.no_grad():
        flat = teacher_logits.detach()
        n, dtype = flat.shape[0], _compute_dtype(flat)
        log_q_topk = torch.empty(topk_index.shape, dtype=dtype, device=flat.device)  # (N, K)
        entropy = torch.empty(n, dtype=dtype, device=flat.device)  # (N,)
        log_q_sampled = torch.empty(n, dtype=dtype, device=flat.device)  # (N,)
        work_y, work_e = _chunk_buffer(flat, chunk_size, dtype), _chunk_buffer(flat, chunk_size, dtype)
        for part in _row_chunks(n, chunk_size):
            y = _upcast_into(work_y, flat[part])  # (n, V)
            picked = y.gather(-1, topk_index[part])  # (n, K)
            picked_sampled = y.gather(-1, sampled[part].unsqueeze(-1)).squeeze(-1)  # (n,)
            entropy[part], lse = _entropy_and_lse_(y, work_e)
            log_q_topk[part] = picked - lse.unsqueeze(-1)
            log_q_sampled[part] = picked_sampled - lse
        return log_q_topk, entropy, log_q_sampled


def topk_tail_entropy(teacher_log_probs_with_tail: torch.Tensor) -> torch.Tensor:
    """H over the K+1 buckets: -sum_b q_b log q_b (option `topk_tail`; spec step 7).

    Merging the tail's tokens into one bucket can only lower entropy, so this is a lower bound on
    the full-vocabulary entropy (and collapses when the top-K hold nearly all mass).
    teacher_log_probs_with_tail: (..., K+1). Returns (...), no gradient.
    """
    with torch.no_grad():
        log_q = _as_float(teacher_log_probs_with_tail.detach())  # (..., K+1)
        return -_sum_p_log_ratio(log_q, torch.zeros_like(log_q))


def trust_region_teacher_logits_(ref_logits: torch.Tensor, teacher_logits: torch.Tensor, *, mix: float) -> torch.Tensor:
    """Trust-region teacher logits, written into `ref_logits`: (1 - mix) ref + mix teacher  (SDPO Sec. 3).

    These are unnormalised logits of q proportional to exp((1 - mix) log q_ref + mix log q_theta): log_softmax
    ignores a per-row constant, so mixing raw logits is the geometric mixture, and dividing the result
    by a temperature divides both. In place because the teacher pass holds (tokens, V) of each: no
    third buffer. No gradient. ref_logits, teacher_logits: (..., V). Returns ref_logits.
    """
    _check_range("mix", mix, 0.0, 1.0)
    _check_same_shape(ref_logits=ref_logits, teacher_logits=teacher_logits)
    with torch.no_grad():
        return ref_logits.mul_(1.0 - mix).add_(teacher_logits.to(ref_logits.dtype), alpha=mix)


def trust_region_teacher_log_probs(
    ref_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, *, mix: float
) -> torch.Tensor:
    """log q of the trust-region teacher: log_softmax of `trust_region_teacher_logits_` in at least fp32.

    Raw logits work as well as log-probs. Normalisation is over whatever the last dim holds: pass
    full-vocabulary values for the full-vocabulary geometric mixture. No gradient; inputs unchanged.
    ref_log_probs, teacher_log_probs: (..., V). Returns (..., V).
    """
    _check_same_shape(ref_log_probs=ref_log_probs, teacher_log_probs=teacher_log_probs)
    mixed = ref_log_probs.detach().to(_compute_dtype(ref_log_probs), copy=True)  # (..., V)
    return torch.log_softmax(trust_region_teacher_logits_(mixed, teacher_log_probs.detach(), mix=mix), dim=-1)


# ----------------------------------------------------------------------------------------------
# Per-token SDPO loss, entropy weights, the combined loss (spec steps 6-8)
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def ema_teacher_update_(pairs: list[tuple[torch.Tensor, torch.Tensor]], rate: float) -> torch.Tensor:
    """theta' <- theta' + rate (theta - theta') for each (teacher, student) tensor pair, in place on the
    teacher (SDPO's EMA self-teacher; SRPO Sec. 3.2); returns ||theta - theta'_new|| over all pairs as
    a 0-d fp32 tensor where the first teacher tensor lives (not read back: the caller reads it once).

    One difference d = theta - theta' per pair gives both the step (`lerp_`) and the gap
    (||theta - theta'_new|| = (1 - rate) ||d||); the student tensor is moved to the teacher's
    device and dtype one pair at a time (the one temporary, one tensor large). rate 0 moves nothing.
    """
    _check_range("rate", rate, 0.0, 1.0)
    gap = None
    for t, s in pairs:
        d = s.to(t.device, t.dtype) - t
        sq = torch.linalg.vector_norm(d, dtype=torch.promote_types(d.dtype, torch.float32)).square()
        gap = sq if gap is None else gap.add_(sq.to(gap.device))
        if rate:
            t.add_(d, alpha=rate)
    if gap is None:
        raise ValueError("ema_teacher_update_: no parameter pairs")
    return gap.sqrt_().mul_(1.0 - rate)


def sdpo_token_loss(
    divergence: torch.Tensor,
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    *,
    is_clip: float = 2.0,
    rollout_is_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """l^SDPO_t = D_t * sg[min(exp(log p - log p_old), is_clip)] * rho_t  (SDPO Sec. 3; spec step 6).

    The clamped, detached importance ratio corrects for off-policy mini-batch steps without sending
    gradient through the sampled token; rho_t are the rollout importance weights.
    divergence, log_prob, old_log_prob, rollout_is_weights: (B, T). Returns (B, T).
    """
    if not is_clip > 0:
        raise ValueError(f"is_clip must be > 0, got {is_clip!r}")
    _check_same_shape(divergence=divergence, log_prob=log_prob, old_log_prob=old_log_prob)
    ratio = _importance_ratio(log_prob, old_log_prob).clamp(max=is_clip).detach()  # (B, T)
    return _apply_rollout_is(_as_float(divergence) * ratio, rollout_is_weights)


def entropy_weight_log_mean(
    entropy: torch.Tensor,
    sdpo_token_mask: torch.Tensor,
    *,
    beta: float = 1.0,
    all_reduce: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
) -> torch.Tensor:
    """log mean_{routed tokens} exp(-beta H), the normaliser of the entropy weights (SRPO Sec. 3.3).

    A log-sum-exp in float64: with every routed token at beta H >~ 745, exp(-beta H) underflows to 0
    and a linear-space mean would give log(0). `all_reduce(tensor, op)` with op "max" or "sum"
    (e.g. torch.distributed over the data-parallel group, on the tensors' device) extends the mean
    over micro-batches and ranks: the mini-batch-global normaliser `entropy_weights` needs.
    entropy: any shape; sdpo_token_mask: bool, same shape. Returns a float64 0-d tensor on
    entropy's device; -inf when no token is routed anywhere.
    """
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    _check_same_shape(entropy=entropy, sdpo_token_mask=sdpo_token_mask)
    with torch.no_grad():
        mask = sdpo_token_mask.bool()
        log_w = (-beta * entropy.detach().double()).masked_fill(~mask, float("-inf"))  # float64
        shift = log_w.amax() if log_w.numel() else torch.tensor(float("-inf"), dtype=torch.float64, device=log_w.device)
        if all_reduce is not None:
            shift = all_reduce(shift, "max")
        shift = shift.masked_fill(~torch.isfinite(shift), 0.0)
        stats = torch.stack([torch.exp(log_w - shift).sum(), mask.sum().double()])  # (sum w / e^shift, count)
        if all_reduce is not None:
            stats = all_reduce(stats, "sum")
        # No routed token: log(0) - log(0) would be NaN; -inf makes every weight 0.
        return torch.where(stats[1] > 0, stats[0].log() + shift - stats[1].clamp(min=1).log(), float("-inf"))


def entropy_weights(
    entropy: torch.Tensor,
    sdpo_token_mask: torch.Tensor,
    *,
    beta: float = 1.0,
    log_mean: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """w_{i,t} = w~_{i,t} / mean_{SDPO tokens} w~,  w~ = exp(-beta H_{i,t})  (SRPO Sec. 3.3, Eq. DW).

    Low-entropy (confident) teacher tokens weigh more; weights average exactly 1 over the routed
    tokens. Computed in log space, w = exp(-beta H - logmeanexp(-beta H)), so large H cannot underflow
    the normaliser. No gradient; 0 outside the mask; no routed token -> all zeros; beta = 0 -> exactly
    1 on every routed token (the "SRPO w/o DW" ablation).

    The mean must run over *all* SDPO-routed valid tokens of the optimiser mini-batch, across
    micro-batches and data-parallel ranks (normalising per micro-batch changes the objective). Either
    pass the whole mini-batch here, or pass one micro-batch together with `log_mean`, the
    mini-batch-global `entropy_weight_log_mean` (-inf when nothing is routed), which then replaces
    this batch's own normaliser.
    entropy: (B, T); sdpo_token_mask: bool (B, T) = z^SDPO_i and valid token. Returns (B, T).
    """
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    _check_same_shape(entropy=entropy, sdpo_token_mask=sdpo_token_mask)
    mask = sdpo_token_mask.bool()  # (B, T)
    with torch.no_grad():
        if beta == 0:
            return mask.to(_compute_dtype(entropy))
        # float64 for the (B, T) log weights: at H ~ 1e3 fp32 rounding alone would move the mean off 1 by 1e-4.
        log_w = (-beta * entropy.detach().double()).masked_fill(~mask, float("-inf"))  # (B, T)
        if log_mean is None:
            log_mean = entropy_weight_log_mean(entropy, mask, beta=beta)
        else:
            log_mean = torch.as_tensor(log_mean, dtype=torch.float64, device=log_w.device)
            if torch.isnan(log_mean) or log_mean == float("inf"):
                raise ValueError(f"log_mean must be finite or -inf, got {log_mean.item()!r}")
        # With no routed token log_mean is -inf; the masked_fill below still returns zeros.
        weights = torch.exp(log_w - log_mean).masked_fill(~mask, 0.0)  # (B, T)
        return weights.to(_compute_dtype(entropy))


def srpo_loss(
    grpo_token_loss: torch.Tensor,
    sdpo_token_loss: torch.Tensor,
    sdpo_mask: torch.Tensor,
    weights: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    num_tokens: int | float | torch.Tensor | None,
    dp_size: int = 1,
) -> torch.Tensor:
    """L = [ sum z^GRPO l^GRPO + sum z^SDPO w l^SDPO ] / N_tokens * dp_size  (SRPO Sec. 3.4, Eq. objective).

    Sums run over valid response tokens of this micro-batch; N_tokens (`num_tokens`) is the number of
    valid response tokens in the whole optimiser mini-batch (all micro-batches, all ranks). The
    dp_size factor undoes FSDP's gradient averaging over ranks, the convention of verl's agg_loss
    "token-mean": summing this loss over micro-batches, and averaging gradients over ranks, gives the
    gradient of the mini-batch objective, independent of the split. num_tokens=None uses this
    batch's own valid-token count (single micro-batch, single rank).

    Why one denominator: the paper's objective is a single token mean over all samples, no mixing
    coefficient. Normalising each branch by its own token count instead divides the SDPO sum by the
    (small) number of routed tokens, which over-weights SDPO by (all tokens / routed tokens), 2-10x
    in practice, and makes the objective change with the routed share from batch to batch.

    Branches are selected with masking before any arithmetic, so a NaN/inf in the unused branch (e.g.
    no teacher pass ran for GRPO-routed samples) reaches neither the value nor the gradient.
    grpo_token_loss, sdpo_token_loss, weights: (B, T); sdpo_mask: bool (B,) or (B, T);
    response_mask: (B, T). Returns a float32 scalar.
    """
    _check_same_shape(
        grpo_token_loss=grpo_token_loss, sdpo_token_loss=sdpo_token_loss, weights=weights, response_mask=response_mask
    )
    _check_positive_int("dp_size", dp_size)
    valid = response_mask.bool()  # (B, T)
    routed = _per_token(sdpo_mask.bool(), valid, "sdpo_mask", "response_mask")  # (B, T) or (B, 1)
    sdpo_sel, grpo_sel = valid & routed, valid & ~routed  # (B, T)
    l_sdpo = _as_float(sdpo_token_loss).masked_fill(~sdpo_sel, 0.0) * _as_float(weights).masked_fill(~sdpo_sel, 0.0)
    l_grpo = _as_float(grpo_token_loss).masked_fill(~grpo_sel, 0.0)  # (B, T)
    if num_tokens is None:
        if dp_size > 1:
            raise ValueError("num_tokens (global valid-token count) is required when dp_size > 1")
        num_tokens = valid.sum()
    if isinstance(num_tokens, (int, float)) and not num_tokens >= 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens!r}")
    # A mini-batch with no valid token has loss 0 (sum 0), not 0/0.
    denom = torch.as_tensor(num_tokens, dtype=l_grpo.dtype, device=l_grpo.device).clamp(min=1)
    return (l_grpo.sum() + l_sdpo.sum()) / denom * dp_size
