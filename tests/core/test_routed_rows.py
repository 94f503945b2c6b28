"""The routed-rows form of the vocabulary-wide functions, and its independence from the shared logits.

verl hands the SRPO logits processor one packed (nnz, V) logits tensor; only the SDPO-routed response
tokens are distilled. `rows=` selects them: values and gradients must equal the full-tensor functions on
those rows, every other row must get exactly zero gradient, and the backward must not read the logits
again (on GPU, flash-attn's cross-entropy has overwritten them with its own gradient by then).
"""

import math

import pytest
import torch

import srpo_verl.core_algos as ca
from srpo_verl import lent_gradient
from srpo_verl.lab.engine_update import plain_logprobs, update_terms


def _case(dtype=torch.float64, n=9, v=13, k=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, v, generator=gen, dtype=torch.float64)).to(dtype)
    rows = torch.tensor([7, 1, 4])
    index = torch.stack([torch.randperm(v, generator=gen)[:k] for _ in range(len(rows))])
    log_q = torch.log_softmax(torch.randn(len(rows), v, generator=gen, dtype=torch.float64), -1).gather(-1, index)
    return logits, rows, index, log_q


def test_rows_value_and_gradient_equal_the_dense_reference():
    logits, rows, index, log_q = _case()
    x = logits.clone().requires_grad_()
    got = ca.topk_tail_divergence(x, log_q, index, rows=rows, chunk_size=2)  # (3,)
    weights = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    (got * weights).sum().backward()

    ref_x = logits.clone().requires_grad_()
    ref = ca.topk_tail_divergence(ref_x[rows], log_q, index)  # plain indexing: autograd's own path
    (ref * weights).sum().backward()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-12, atol=1e-12)
    others = torch.ones(len(logits), dtype=torch.bool)
    others[rows] = False
    assert torch.count_nonzero(x.grad[others]) == 0
    assert torch.count_nonzero(x.grad[rows]) > 0


def test_backward_ignores_an_in_place_overwrite_of_the_logits():
    # The flash-attn contract: the newer cross-entropy node runs first and leaves its gradient in the
    # logits' storage. Emulate the overwrite between forward and backward (through .data, so autograd's
    # version counter does not notice, as it does not notice a Triton kernel).
    logits, rows, index, log_q = _case()
    x = logits.clone().requires_grad_()
    div = ca.topk_tail_divergence(x, log_q, index, rows=rows)
    x.data.copy_(torch.randn_like(x))
    div.sum().backward()

    ref_x = logits.clone().requires_grad_()
    ca.topk_tail_divergence(ref_x[rows], log_q, index).sum().backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-12, atol=1e-12)


def test_bf16_rows_gradient_is_bf16_and_close_to_float64():
    logits, rows, index, log_q = _case(dtype=torch.bfloat16)
    x = logits.clone().requires_grad_()
    ca.topk_tail_divergence(x, log_q.float(), index, rows=rows).sum().backward()
    assert x.grad.dtype == torch.bfloat16
    ref_x = logits.double().requires_grad_()
    ca.topk_tail_divergence(ref_x[rows], log_q, index).sum().backward()
    # bf16 keeps 8 bits of mantissa: the gradient is rounded to ~4e-3 relative.
    torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("fn", ["teacher_entropy", "student_topk", "teacher_topk_log_probs"])
def test_rows_forms_of_the_no_grad_functions_equal_indexing(fn):
    logits, rows, index, _ = _case()
    if fn == "teacher_entropy":
        got, ref = ca.teacher_entropy(logits, rows=rows, chunk_size=2), ca.teacher_entropy(logits[rows])
    elif fn == "student_topk":
        got = ca.student_topk(logits, k=4, rows=rows, chunk_size=2).sort(-1).values
        ref = ca.student_topk(logits[rows], k=4).sort(-1).values
    else:
        got = ca.teacher_topk_log_probs(logits, index, rows=rows, chunk_size=2)
        ref = ca.teacher_topk_log_probs(logits[rows], index)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_entropy_weight_log_mean_survives_underflow_and_splits_over_ranks():
    # beta * H = 800 on every routed token: exp underflows to 0 in float64, the log-sum-exp does not.
    entropy = torch.tensor([[800.0, 801.0, 5.0], [802.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    got = ca.entropy_weight_log_mean(entropy, mask, beta=1.0)
    expected = -800.0 + math.log((1 + math.exp(-1) + math.exp(-2)) / 3)
    assert float(got) == pytest.approx(expected, rel=1e-12)
    w = ca.entropy_weights(entropy, mask, beta=1.0, log_mean=got)
    assert float(w[mask].mean()) == pytest.approx(1.0, rel=1e-12)

    # Two "ranks" holding one row each, combined by an all_reduce callback, give the same normaliser.
    shards = [(entropy[:1], mask[:1]), (entropy[1:], mask[1:])]

    maxes = [(-e).masked_fill(~m, float("-inf")).amax() for e, m in shards]
    shift = torch.stack(maxes).amax()
    sums = [
        torch.stack([torch.exp((-e).masked_fill(~m, float("-inf")) - shift).sum(), m.sum().double()]) for e, m in shards
    ]
    for e, m in shards:
        calls = iter([maxes, sums])

        def reduce(t, op, calls=calls):
            parts = next(calls)
            return torch.stack(parts).amax(0) if op == "max" else torch.stack(parts).sum(0)

        assert float(ca.entropy_weight_log_mean(e, m, beta=1.0, all_reduce=reduce)) == pytest.approx(
            expected, rel=1e-12
        )

    nothing = ca.entropy_weight_log_mean(entropy, torch.zeros_like(mask), beta=1.0)
    assert nothing == float("-inf")
    assert float(ca.entropy_weight_log_mean(entropy, mask, beta=0.0)) == 0.0


# ------------------------------------------------------------------ lent gradient (the engine's path)


def _lent_case(seed=0, n=12, vocab=37, k=5, label_in_topk=False):
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(n, vocab, generator=g, dtype=torch.float64)).requires_grad_()
    rows = torch.tensor([1, 4, 5, 9])
    idx = ca.student_topk(x.detach(), k=k, rows=rows)
    log_q = torch.log_softmax(torch.randn(len(rows), vocab, generator=g, dtype=torch.float64), -1).gather(-1, idx)
    labels = torch.randint(0, vocab, (n,), generator=g)
    if label_in_topk:
        labels[rows[:2]] = idx[:2, 1]  # the sampled token is usually among the student's top-K
    return x, rows, idx, log_q, labels


def _weights(n, seed=9):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)


def _reference_gradient(x, rows, idx, log_q, labels):
    a, b = _weights(x.shape[0])
    ref = x.detach().clone().requires_grad_()
    token = torch.log_softmax(ref, -1).gather(-1, labels[:, None]).squeeze(-1)
    div = ca.topk_tail_divergence(ref, log_q, idx, rows=rows)  # the private-copy path, checked by gradcheck
    ((a * token).sum() + (b[rows] * div).sum()).backward()
    return ref.grad, div.detach()


@pytest.mark.parametrize("label_in_topk", [False, True])
@pytest.mark.parametrize("view", [True, False], ids=["engine_view", "other_layout"])
def test_lent_gradient_equals_the_plain_one(label_in_topk, view):
    x, rows, idx, log_q, labels = _lent_case(label_in_topk=label_in_topk)
    expected, expected_div = _reference_gradient(x, rows, idx, log_q, labels)
    a, b = _weights(x.shape[0])
    base = x * 1.0  # a non-leaf, as the engine's logits
    logits = base.unsqueeze(0).squeeze(0) if view else base.t().contiguous().t()  # no hook on a transposed copy
    token, div = update_terms(logits, labels, rows, idx, log_q, chunk_size=3)
    ((a * token).sum() + (b * div).sum()).backward()
    torch.testing.assert_close(div[rows].detach(), expected_div, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


def test_lent_gradient_with_an_inplace_bf16_cross_entropy_is_rounded_once():
    # flash-attn's cross-entropy writes its bf16 gradient into the logits; where it and the divergence's
    # entries nearly cancel (the label, the top-K), the entries are rewritten from the exact sum.
    from srpo_verl.lab.virtual_cuda import inplace_logprobs_from_logits

    x, rows, idx, log_q, labels = _lent_case(1, label_in_topk=True)
    x16 = x.detach().to(torch.bfloat16).requires_grad_()
    expected, _ = _reference_gradient(x16.detach().double(), rows, idx, log_q, labels)
    a, b = _weights(x.shape[0])
    token, div = update_terms(x16 * 1.0, labels, rows, idx, log_q.float(), logprobs=inplace_logprobs_from_logits)
    ((a * token).sum() + (b * div).sum()).backward()
    once = expected.to(torch.bfloat16).double()  # the exact gradient rounded once to bf16
    err = (x16.grad.double() - expected).abs()
    # Within one bf16 rounding of the exact value (fp32 arithmetic on the way adds ~1e-7 relative).
    assert bool((err <= (once - expected).abs() + 2**-9 * expected.abs() + 1e-9).all()), err.max()


def test_lent_divergence_reports_whether_the_support_is_still_the_top_k():
    x, rows, idx, log_q, labels = _lent_case(6, vocab=31)
    moved = x.detach().clone()
    moved[rows[::2], 0] += 50.0  # token 0 enters the top-K of every other routed row
    out = lent_gradient.topk_tail_divergence_lent(moved, log_q, idx, labels[rows], rows=rows, chunk_size=3)
    fresh = ca.student_topk(moved, k=idx.shape[-1], rows=rows)
    expected = torch.tensor([set(a.tolist()) == set(b.tolist()) for a, b in zip(idx, fresh)])
    assert torch.equal(out.topk_unchanged, expected) and not expected.all() and expected.any()


def test_a_divergence_whose_gradient_was_not_lent_refuses_backward():
    x, rows, idx, log_q, labels = _lent_case(2)
    out = lent_gradient.topk_tail_divergence_lent(x * 1.0, log_q, idx, labels[rows], rows=rows)
    with pytest.raises(RuntimeError, match="not lent"):
        out.divergence.sum().backward()


def _lent_terms(x, rows, idx, log_q, labels, logprobs=plain_logprobs):
    """`update_terms` written out, keeping the `Lend` to inspect."""
    out = lent_gradient.topk_tail_divergence_lent(x, log_q, idx, labels[rows], rows=rows)
    lent = torch.zeros(x.shape[0], dtype=torch.bool).index_fill(0, rows, True)
    place = lambda v: torch.zeros(x.shape[0], dtype=v.dtype).index_copy(0, rows, v)  # noqa: E731
    token = logprobs(x, labels)
    terms = lent_gradient.lend_dense_gradient(token, place(out.divergence), place(out.dense_weight), lent, out.lend)
    return terms, out.lend


def test_a_complete_backward_leaves_its_lend_complete():
    x, rows, idx, log_q, labels = _lent_case(3)
    book = lent_gradient.LendBook()
    (token, div), lend = _lent_terms(x * 1.0, rows, idx, log_q, labels)
    book.add(lend)
    assert not lend.incomplete  # nothing owed before backward
    (token.sum() + div.sum()).backward()
    assert not lend.incomplete and book.incomplete() == 0


def test_entries_that_never_reach_the_logits_are_reported_not_lost_silently():
    x, rows, idx, log_q, labels = _lent_case(3)
    other = torch.randn(x.shape, dtype=torch.float64, requires_grad=True)
    book = lent_gradient.LendBook()
    # The lent part goes to a log-prob of *other* logits: nothing reaches these logits to write into.
    (token, div), lend = _lent_terms(
        x * 1.0, rows, idx, log_q, labels, logprobs=lambda _, lb: plain_logprobs(other * 1.0, lb)
    )
    book.add(lend)
    (token.sum() + div.sum()).backward()
    assert lend.incomplete and book.incomplete() == 1
    book.clear()
    assert book.incomplete() == 0


def test_a_backward_that_fails_half_way_leaves_only_its_own_lend_incomplete():
    # The token log-prob's backward runs (lending its part), then a later node raises (an OOM, say):
    # that graph's Lend is incomplete; a fresh graph in the same process is not affected by it.
    x, rows, idx, log_q, labels = _lent_case(3)

    class Boom(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            raise torch.OutOfMemoryError("emulated")

    failing = lambda t, lb: Boom.apply(plain_logprobs(t, lb))  # noqa: E731  the token log-prob's backward fails
    (token, div), failed = _lent_terms(x * 1.0, rows, idx, log_q, labels, logprobs=failing)
    with pytest.raises(torch.OutOfMemoryError):
        (token.sum() + div.sum()).backward()
    assert failed.incomplete
    x.grad = None
    expected, _ = _reference_gradient(x, rows, idx, log_q, labels)
    a, b = _weights(x.shape[0])
    token, div = update_terms(x * 1.0, labels, rows, idx, log_q)
    ((a * token).sum() + (b * div).sum()).backward()
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


def test_repeated_ids_are_refused():
    x, rows, idx, log_q, labels = _lent_case(4)
    idx[0, 1] = idx[0, 0]
    with pytest.raises(ValueError, match="distinct"):
        lent_gradient.topk_tail_divergence_lent(x * 1.0, log_q, idx, labels[rows], rows=rows)


def test_lent_path_keeps_and_makes_no_tensor_of_the_logits_size():
    # Count (N, V)- and (n, V)-sized tensors made in forward and backward beyond the plain update's own:
    # the private-copy path copies the rows (forward) and makes an (N, V) gradient (backward).
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountLarge(TorchDispatchMode):
        def __init__(self, vocab):
            super().__init__()
            self.vocab, self.count = vocab, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {
                a.untyped_storage().data_ptr()
                for a in torch.utils._pytree.tree_leaves((args, kwargs))
                if isinstance(a, torch.Tensor)
            }
            new = (
                isinstance(out, torch.Tensor) and out.untyped_storage().data_ptr() not in inputs
            )  # not a view/in-place
            if new and out.dim() == 2 and out.shape[-1] == self.vocab and out.shape[0] > 3:
                self.count += 1  # wider than one 3-row work chunk: a copy of rows or a full gradient
            return out

    counts = {}
    for path in ("plain", "copy", "lent"):
        x, rows, idx, log_q, labels = _lent_case(5, n=40, vocab=101)
        with CountLarge(101) as mode:
            logits = x * 1.0
            if path == "lent":
                token, div = update_terms(logits, labels, rows, idx, log_q, chunk_size=3)
                loss = token.sum() + div.sum()
            else:
                loss = plain_logprobs(logits, labels).sum()
                if path == "copy":
                    loss = loss + ca.topk_tail_divergence(logits, log_q, idx, rows=rows, chunk_size=3).sum()
            loss.backward()
        counts[path] = mode.count
    assert counts["lent"] == counts["plain"] < counts["copy"], counts


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_teacher_scores_in_one_pass_equal_the_separate_functions(dtype):
    g = torch.Generator().manual_seed(5)
    logits = (3 * torch.randn(11, 53, generator=g, dtype=torch.float64)).to(dtype)
    logits[2, :40] = -float("inf")  # zero-probability tokens, as a masked vocabulary has
    idx = torch.randint(40, 53, (11, 6), generator=g)
    sampled = torch.randint(40, 53, (11,), generator=g)
    log_q, entropy, log_q_sampled = ca.teacher_scores(logits, idx, sampled, chunk_size=4)
    torch.testing.assert_close(log_q, ca.teacher_topk_log_probs(logits, idx, chunk_size=5))
    torch.testing.assert_close(entropy, ca.teacher_entropy(logits, chunk_size=3))
    torch.testing.assert_close(log_q_sampled, ca.teacher_topk_log_probs(logits, sampled[:, None]).squeeze(-1))
    ref = torch.log_softmax(logits.double(), -1)
    torch.testing.assert_close(log_q.double(), ref.gather(-1, idx), rtol=1e-5, atol=1e-5)


def test_topk_unchanged_agrees_with_a_fresh_topk():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(20, 31, generator=g, dtype=torch.float64)
    stored = ca.student_topk(logits, k=5)  # (20, 5)
    moved = logits.clone()
    moved[::3, 0] += 10.0  # token 0 enters the top-5 of every third row
    rows = torch.arange(2, 20, 2)
    got = ca.topk_unchanged(moved, stored[rows], rows=rows, chunk_size=4)
    fresh = ca.student_topk(moved, k=5)[rows]
    expected = (fresh.sort(-1).values == stored[rows].sort(-1).values).all(-1)
    assert torch.equal(got, expected) and not expected.all() and expected.any()
