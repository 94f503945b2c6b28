"""The distillation gradient lent to the token log-prob: SDPO's top-K divergence at O(n K) extra memory.

Pure torch (no verl import), like `core_algos`, whose plain `topk_tail_divergence` is the reference
this path is tested against. Why a second path: in verl's engine the same logits also give every
token's log-prob, and on GPU that log-prob's backward (flash-attn's cross-entropy with
`inplace_backward=True`) writes its gradient into the logits' storage before older backward nodes
run. The divergence here keeps nothing of the logits for backward and makes no (rows, V) gradient.

The divergence's gradient w.r.t. a row's logits is sum_k s_k e_{i_k} - S p, with s_k = dD/d log p_k
and S = sum_k s_k. The dense -S p has the token log-prob's own gradient shape (e_y - p), so it is
lent to that log-prob (`lend_dense_gradient` adds u S to its upstream gradient) and the divergence's
backward writes only the K + 1 remaining entries per row.

State: the two backward halves of one lent gradient meet in a `Lend` (one per divergence call, held by
its autograd nodes and returned with its outputs), never in module globals: a backward that fails half
way leaves its `Lend` incomplete and nothing else behind. A trainer that wants to refuse an optimiser
step with an incomplete lend keeps the `Lend`s of the current step in a `LendBook`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from srpo_verl import core_algos as ca

__all__ = ["Lend", "LendBook", "LentDivergence", "lend_dense_gradient", "topk_tail_divergence_lent"]


class Lend:
    """The meeting point of one lent gradient's two backward halves.

    `upstream`: the token log-prob's upstream gradient on the divergence's rows, set by
    `lend_dense_gradient`'s backward and taken by the divergence's (which always runs after it: its
    gradient comes through the lend). `entries`: the sparse part computed by the divergence's backward,
    waiting for the hook on the logits' base to write it into the logits' gradient. Both are None
    before backward and after a complete one."""

    __slots__ = ("upstream", "entries")

    def __init__(self) -> None:
        self.upstream: torch.Tensor | None = None
        self.entries: tuple | None = None

    @property
    def incomplete(self) -> bool:
        """True when a part of this gradient was computed but has not reached the logits' gradient."""
        return self.upstream is not None or self.entries is not None


class LendBook:
    """The `Lend`s of one optimiser step, for the gate before it: a trainer adds each micro-batch's
    `Lend`, refuses to step while any is `incomplete`, and clears the book when the next step starts, so
    a step whose backward failed leaves nothing behind for the next."""

    def __init__(self) -> None:
        self._lends: list[Lend] = []

    def add(self, lend: Lend) -> None:
        self._lends.append(lend)

    def clear(self) -> None:
        self._lends.clear()

    def incomplete(self) -> int:
        return sum(lend.incomplete for lend in self._lends)


def _write_into_base(logits: torch.Tensor, lend: Lend) -> bool:
    """Register the hook that writes `lend.entries` into the gradient of the tensor `logits` views.

    Only when `logits` covers that tensor's memory row for row (a squeeze/unsqueeze view or the tensor
    itself); returns False otherwise (the caller then returns the entries as a dense gradient)."""
    base = logits if logits._base is None else logits._base
    if not base.requires_grad or not (base.is_contiguous() and logits.is_contiguous()):
        return False
    if base.numel() != logits.numel() or base.storage_offset() != logits.storage_offset():
        return False
    vocab = logits.shape[-1]

    def write_entries(grad: torch.Tensor | None) -> torch.Tensor | None:
        if grad is None or lend.entries is None:
            return grad  # this output took no part in the loss: nothing to add
        (row, col, token_part, add), lend.entries = lend.entries, None
        flat = grad.reshape(-1, vocab)
        # The token log-prob's backward stored token_part rounded to the gradient's dtype; put back
        # what the rounding lost, add this divergence's part, and round once (one value per entry).
        rounding = token_part - token_part.to(flat.dtype).to(token_part.dtype)
        flat[row, col] = (flat[row, col].to(add.dtype) + rounding + add).to(flat.dtype)
        return flat.view(grad.shape)

    base.register_hook(write_entries)
    return True


class _LentTopKDivergence(torch.autograd.Function):
    """D(logits[rows]) on the top-K(+tail) support, its gradient split as in the module docstring.

    The K + 1 entries this backward leaves per row (u s_k at i_k, -u S at the label y) are where the
    token log-prob's value c (1[v = y] - p_v), of the size of c, and this part nearly cancel; in a
    bf16 gradient that value is already rounded, so they are rewritten from the exact sum
    (`_write_into_base`), not accumulated onto it.
    """

    @staticmethod
    def forward(ctx, logits, rows, index, labels, teacher_topk, alpha, tail, chunk_size, lend, hooked):
        columns = torch.cat([index, labels.unsqueeze(-1)], -1)  # (n, K+1)
        lse, picked, unchanged = ca._lse_and_gather(logits, rows, columns, chunk_size, top=index.shape[-1])
        log_p = picked - lse.unsqueeze(-1)  # (n, K+1): log p at the top-K and at the label
        with torch.enable_grad():
            leaf = log_p[:, :-1].detach().requires_grad_()
            divergence = ca._topk_divergence(leaf, teacher_topk, alpha=alpha, tail=tail)  # (n,)
            (slope,) = torch.autograd.grad(divergence.sum(), leaf)  # (n, K): rows are independent
        dense_weight = slope.sum(-1)  # (n,) S
        ctx.save_for_backward(slope, dense_weight, log_p, rows, index, labels)
        ctx.lend, ctx.hooked, ctx.shape, ctx.dtype = lend, hooked, logits.shape, logits.dtype
        label_log_p = log_p[:, -1].clone()
        ctx.mark_non_differentiable(dense_weight, label_log_p, unchanged)
        return divergence.detach(), dense_weight, label_log_p, unchanged

    @staticmethod
    def backward(ctx, grad_div, _grad_dense, _grad_label, _grad_unchanged):
        lend = ctx.lend
        if lend.upstream is None:
            raise RuntimeError(
                "topk_tail_divergence_lent: the dense part of the distillation gradient was not lent to the "
                "token log-prob (lend_dense_gradient was not applied to this divergence in the loss)"
            )
        c, lend.upstream = lend.upstream, None  # (n,) the token log-prob's upstream gradient, lent part included
        slope, dense_weight, log_p, rows, index, labels = ctx.saved_tensors
        u = grad_div.to(slope.dtype)  # (n,)
        c = c.to(slope.dtype)
        col = torch.cat([index, labels.unsqueeze(-1)], -1)  # (n, K+1)
        is_label = col == labels.unsqueeze(-1)  # (n, K+1): the label column, and a top-K id equal to it
        add = torch.cat([u.unsqueeze(-1) * slope, torch.zeros_like(u).unsqueeze(-1)], -1)  # u s_k at i_k
        add = add - (u * dense_weight).unsqueeze(-1) * is_label  # -u S at y
        # An entry listed twice (the label among the top-K) must carry its whole value in both places.
        in_topk = is_label[:, :-1].any(-1)  # (n,)
        add[:, -1] = torch.where(in_topk, (add[:, :-1] * is_label[:, :-1]).sum(-1), add[:, -1])
        token_part = c.unsqueeze(-1) * (is_label.to(c.dtype) - log_p.exp())  # (n, K+1)
        row = rows.unsqueeze(-1).expand_as(col)
        if ctx.hooked:
            lend.entries = (row, col, token_part, add)
            return (None,) * 10
        grad = torch.zeros(ctx.shape, dtype=ctx.dtype, device=slope.device)
        grad[row, col] = add.to(ctx.dtype)  # a duplicate entry carries the same value twice
        return (grad,) + (None,) * 9


class _LendDenseGradient(torch.autograd.Function):
    """Identity on (token log-prob, divergence); backward adds u_div * S into the log-prob's gradient
    and hands the resulting upstream gradient on the lent tokens to the divergence's backward."""

    @staticmethod
    def forward(ctx, token_log_prob, divergence, dense_weight, lent_tokens, lend):
        ctx.save_for_backward(dense_weight, lent_tokens)
        ctx.dtype, ctx.lend = token_log_prob.dtype, lend
        return token_log_prob.clone(), divergence.clone()

    @staticmethod
    def backward(ctx, grad_log_prob, grad_div):
        if grad_div is None or not ctx.needs_input_grad[1]:
            return grad_log_prob, None, None, None, None  # no divergence backward will come to finish a lent part
        dense_weight, lent_tokens = ctx.saved_tensors
        lent = (grad_div * dense_weight).to(ctx.dtype)
        grad_log_prob = lent if grad_log_prob is None else grad_log_prob + lent
        ctx.lend.upstream = grad_log_prob[lent_tokens]
        return grad_log_prob, grad_div, None, None, None


class LentDivergence(NamedTuple):
    """`topk_tail_divergence_lent`'s outputs: for the n rows (each (n,)) the divergence D; S, the weight of
    its dense gradient part; log p at the labels, which the token log-prob the gradient is lent to must
    equal; `core_algos.topk_unchanged` of the ids (bool), taken in the same pass. Only D has a gradient.
    `lend` joins this divergence to its `lend_dense_gradient`."""

    divergence: torch.Tensor
    dense_weight: torch.Tensor
    label_log_prob: torch.Tensor
    topk_unchanged: torch.Tensor
    lend: Lend


def topk_tail_divergence_lent(
    student_logits: torch.Tensor,
    teacher_log_probs_topk: torch.Tensor,
    topk_index: torch.Tensor,
    labels: torch.Tensor,
    *,
    rows: torch.Tensor,
    alpha: float = 0.5,
    tail: bool = True,
    chunk_size: int = ca.DEFAULT_CHUNK_SIZE,
) -> LentDivergence:
    """`core_algos.topk_tail_divergence` on `rows` of logits whose token log-probs log p(labels) are
    differentiated too, as in verl's engine: the same value and the same total gradient.

    Pass `dense_weight` and `lend` to `lend_dense_gradient` on the token log-prob; this backward then
    adds the K + 1 remaining entries per row into the logits' gradient, through a hook on the tensor the
    logits view (in place: on GPU the storage flash-attn's cross-entropy writes its gradient into), else
    as a dense gradient. The logits are only read in forward, never kept.

    A backward that reaches this divergence without `lend_dense_gradient` raises; a part that never
    reaches the logits' gradient leaves `lend.incomplete` True.
    student_logits (N, V); teacher_log_probs_topk, topk_index (n, K); labels (n,) the token each row's
    log-prob scores; rows unique long (n,); each row of topk_index distinct ids (a top-K, as
    `core_algos.student_topk` gives). Returns `LentDivergence`.
    """
    ca._check_range("alpha", alpha, 0.0, 1.0)
    ca._check_positive_int("chunk_size", chunk_size)
    ca._check_same_shape(teacher_log_probs_topk=teacher_log_probs_topk, topk_index=topk_index)
    if (
        student_logits.dim() != 2
        or topk_index.dim() != 2
        or not topk_index.shape[0] == rows.shape[0] == labels.shape[0]
    ):
        raise ValueError(
            f"mismatched shapes: logits{tuple(student_logits.shape)} must be (N, V), index{tuple(topk_index.shape)} "
            f"(n, K) and labels{tuple(labels.shape)} (n,) for rows{tuple(rows.shape)}"
        )
    if student_logits.requires_grad and topk_index.shape[-1] > 1:
        ids = topk_index.sort(-1).values
        if bool((ids[:, 1:] == ids[:, :-1]).any()):  # backward writes one value per (row, id)
            raise ValueError("topk_tail_divergence_lent: each row of topk_index must hold distinct ids (a top-K)")
    selected = ca._select_rows(student_logits, rows)
    lend = Lend()
    hooked = student_logits.requires_grad and _write_into_base(student_logits, lend)
    out = _LentTopKDivergence.apply(
        student_logits,
        selected,
        topk_index.long(),
        labels.to(device=student_logits.device, dtype=torch.long),
        teacher_log_probs_topk.detach(),
        alpha,
        tail,
        chunk_size,
        lend,
        hooked,
    )
    return LentDivergence(*out, lend)


def lend_dense_gradient(
    token_log_prob: torch.Tensor,
    divergence: torch.Tensor,
    dense_weight: torch.Tensor,
    lent_tokens: torch.Tensor,
    lend: Lend,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Identity on (token_log_prob, divergence); in backward, adds grad(divergence) * dense_weight into
    the token log-prob's gradient: the dense part of `topk_tail_divergence_lent`'s gradient, whose
    `lend` this is. Use the returned tensors in the loss in place of the inputs. All four tensors have
    one shape, e.g. (B, T); lent_tokens (bool) marks the divergence's rows, in their order (row-major),
    and dense_weight is read only there."""
    ca._check_same_shape(
        token_log_prob=token_log_prob, divergence=divergence, dense_weight=dense_weight, lent_tokens=lent_tokens
    )
    weight = dense_weight.detach() * lent_tokens
    return _LendDenseGradient.apply(token_log_prob, divergence, weight, lent_tokens.bool(), lend)
