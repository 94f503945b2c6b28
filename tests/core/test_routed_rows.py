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
    sums = [torch.stack([torch.exp((-e).masked_fill(~m, float("-inf")) - shift).sum(), m.sum().double()]) for e, m in shards]
    for e, m in shards:
        calls = iter([maxes, sums])

        def reduce(t, op, calls=calls):
            parts = next(calls)
            return torch.stack(parts).amax(0) if op == "max" else torch.stack(parts).sum(0)

        assert float(ca.entropy_weight_log_mean(e, m, beta=1.0, all_reduce=reduce)) == pytest.approx(expected, rel=1e-12)

    nothing = ca.entropy_weight_log_mean(entropy, torch.zeros_like(mask), beta=1.0)
    assert nothing == float("-inf")
    assert float(ca.entropy_weight_log_mean(entropy, mask, beta=0.0)) == 0.0


# ------------------------------------------------------------------ merged gradient (merge_grad=True)


def _merge_case(seed=0, n=12, vocab=37, k=5):
    g = torch.Generator().manual_seed(seed)
    x = (2 * torch.randn(n, vocab, generator=g, dtype=torch.float64)).requires_grad_()
    rows = torch.tensor([1, 4, 5, 9])
    idx = torch.randint(0, vocab, (len(rows), k), generator=g)
    log_q = torch.log_softmax(torch.randn(len(rows), vocab, generator=g, dtype=torch.float64), -1).gather(-1, idx)
    labels = torch.randint(0, vocab, (n,), generator=g)
    return x, rows, idx, log_q, labels


def _loss(x, rows, idx, log_q, labels, merge, squeeze=True):
    base = x * 1.0  # a non-leaf, as the engine's logits are
    view = base.unsqueeze(0).squeeze(0) if squeeze else base  # the loss sees a view, as from verl
    div = ca.topk_tail_divergence(view, log_q, idx, rows=rows, chunk_size=3, merge_grad=merge)
    token_lp = torch.log_softmax(base, -1).gather(-1, labels[:, None]).squeeze(-1)  # verl's log-prob
    return 0.3 * token_lp.sum() + div.sum()


def test_merged_gradient_equals_the_dense_one_and_is_added_once():
    x, rows, idx, log_q, labels = _merge_case()
    _loss(x, rows, idx, log_q, labels, merge=False).backward()
    dense = x.grad.clone()
    x.grad = None
    assert ca.pending_gradient_merges() == 0
    _loss(x, rows, idx, log_q, labels, merge=True).backward()
    assert ca.pending_gradient_merges() == 0
    torch.testing.assert_close(x.grad, dense, rtol=1e-12, atol=1e-12)


def test_merge_with_no_other_backward_is_reported_not_lost_silently(monkeypatch):
    monkeypatch.setattr(ca, "_PENDING_MERGES", [0])
    x, rows, idx, log_q, _ = _merge_case(1)
    ca.topk_tail_divergence(x * 1.0, log_q, idx, rows=rows, merge_grad=True).sum().backward()
    assert ca.pending_gradient_merges() == 1  # nothing reached the logits to add the rows into
    assert x.grad is None


def test_merged_backward_makes_no_second_full_gradient():
    # Count (N, V) tensors created during backward: the merged path adds into the log-prob's gradient.
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountFull(TorchDispatchMode):
        def __init__(self, shape):
            super().__init__()
            self.shape, self.count = shape, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and tuple(out.shape) == self.shape and not func._schema.is_mutable:
                self.count += 1
            return out

    counts = {}
    for merge in (False, True):
        x, rows, idx, log_q, labels = _merge_case(2)
        loss = _loss(x, rows, idx, log_q, labels, merge=merge)
        with CountFull(tuple(x.shape)) as mode:
            loss.backward()
        counts[merge] = mode.count
    assert counts[True] < counts[False]


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
