"""Teacher entropy (full vocabulary, chunked), the top-K+tail entropy, and the entropy weights w."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from srpo_verl import core_algos as ca


def reference_entropy(logits):
    rows = []
    for row in torch.softmax(logits.double(), -1).tolist():
        rows.append(-sum(q * math.log(q) for q in row if q > 0))
    return torch.tensor(rows, dtype=torch.float64)


def reference_weights(entropy, mask, beta):
    """w = exp(-beta H) / mean over the masked tokens of exp(-beta H); 0 elsewhere."""
    h, m = entropy.tolist(), mask.tolist()
    routed = [math.exp(-beta * h[i][t]) for i in range(len(h)) for t in range(len(h[0])) if m[i][t]]
    mean = sum(routed) / len(routed) if routed else 1.0
    return torch.tensor(
        [[math.exp(-beta * h[i][t]) / mean if m[i][t] else 0.0 for t in range(len(h[0]))] for i in range(len(h))],
        dtype=torch.float64,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_teacher_entropy_matches_reference(gen, dtype):
    logits = (torch.randn(2, 5, 40, generator=gen) * 3).to(dtype)
    got = ca.teacher_entropy(logits, chunk_size=3)
    assert got.shape == (2, 5) and got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    want = reference_entropy(logits.reshape(-1, 40)).reshape(2, 5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_teacher_entropy_chunk_size_invariance_and_extremes(gen):
    logits = torch.randn(17, 30, generator=gen) * 2
    base = ca.teacher_entropy(logits, chunk_size=17)
    for chunk_size in (1, 4, 100):
        torch.testing.assert_close(ca.teacher_entropy(logits, chunk_size=chunk_size), base, rtol=0, atol=1e-6)
    uniform = ca.teacher_entropy(torch.zeros(2, 30))
    torch.testing.assert_close(uniform, torch.full((2,), math.log(30)))
    one_hot = torch.full((1, 30), -1e4)
    one_hot[0, 3] = 1e4
    assert ca.teacher_entropy(one_hot).item() == 0.0
    masked = torch.zeros(1, 4)
    masked[0, :2] = float("-inf")  # q = 0 on two tokens: 0 log 0 = 0
    torch.testing.assert_close(ca.teacher_entropy(masked), torch.tensor([math.log(2)]))


def test_topk_tail_entropy_is_a_lower_bound(gen):
    logits = torch.randn(8, 50, generator=gen, dtype=torch.float64) * 2
    full = ca.teacher_entropy(logits)
    for k in (1, 5, 20, 50):
        index = ca.student_topk(logits, k=k)
        buckets = ca.add_tail_bucket(ca.teacher_topk_log_probs(logits, index))
        h_topk = ca.topk_tail_entropy(buckets)
        assert (h_topk <= full + 1e-9).all()
        want = [-sum(q * math.log(q) for q in row if q > 0) for row in buckets.exp().tolist()]
        torch.testing.assert_close(h_topk, torch.tensor(want, dtype=torch.float64))
    torch.testing.assert_close(h_topk, full, rtol=1e-6, atol=1e-6)  # K = V: nothing merged


def test_entropy_weights_hand_worked():
    entropy = torch.tensor([[0.0, math.log(3.0), 5.0], [99.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    # w~ = (1, 1/3); mean 2/3 -> w = (3/2, 1/2).
    w = ca.entropy_weights(entropy, mask, beta=1.0)
    torch.testing.assert_close(w, torch.tensor([[1.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))


@given(
    st.integers(1, 4),
    st.integers(1, 6),
    st.floats(0.0, 5.0),
    st.integers(0, 2**31 - 1),
)
def test_entropy_weights_average_one_over_routed_tokens(B, T, beta, seed):
    g = torch.Generator().manual_seed(seed)
    entropy = torch.rand(B, T, generator=g, dtype=torch.float64) * 12  # up to ~log(151936)
    mask = torch.rand(B, T, generator=g) < 0.6
    w = ca.entropy_weights(entropy, mask, beta=beta)
    torch.testing.assert_close(w, reference_weights(entropy, mask, beta), rtol=1e-9, atol=1e-12)
    assert (w[~mask] == 0).all()
    if mask.any():
        torch.testing.assert_close(w[mask].mean(), torch.tensor(1.0, dtype=torch.float64))


def test_entropy_weights_beta_zero_is_exactly_one_and_empty_mask_is_zero(gen):
    entropy = torch.rand(3, 4, generator=gen) * 10
    entropy[0, 0] = float("inf")  # a bad value outside the routed set must not matter
    mask = torch.rand(3, 4, generator=gen) < 0.5
    mask[0, 0] = False
    assert torch.equal(ca.entropy_weights(entropy, mask, beta=0.0), mask.float())
    # beta = 0 switches weighting off entirely: even a routed token with H = inf (0 * inf) weighs 1.
    entropy[1, 1], mask[1, 1] = float("inf"), True
    assert torch.equal(ca.entropy_weights(entropy, mask, beta=0.0), mask.float())
    none = ca.entropy_weights(entropy, torch.zeros(3, 4, dtype=torch.bool), beta=1.0)
    assert torch.equal(none, torch.zeros(3, 4))


def test_entropy_weights_no_gradient_and_huge_entropy(gen):
    entropy = (torch.rand(2, 3, generator=gen) * 10 + 1000).requires_grad_()  # exp(-H) underflows in linear space
    mask = torch.ones(2, 3, dtype=torch.bool)
    w = ca.entropy_weights(entropy, mask, beta=1.0)
    assert not w.requires_grad and torch.isfinite(w).all()
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))


@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.floats(0.1, 3.0))
def test_entropy_weights_with_global_log_mean_match_the_whole_mini_batch(seed, cut, beta):
    g = torch.Generator().manual_seed(seed)
    entropy = torch.rand(6, 4, generator=g, dtype=torch.float64) * 10
    mask = torch.rand(6, 4, generator=g) < 0.5
    whole = ca.entropy_weights(entropy, mask, beta=beta)
    # The caller reduces the normaliser over the mini-batch (here: plainly), then weighs each micro-batch.
    routed = [-beta * h for h, m in zip(entropy.flatten().tolist(), mask.flatten().tolist()) if m]
    log_mean = math.log(sum(math.exp(x) for x in routed) / len(routed)) if routed else float("-inf")
    parts = [
        ca.entropy_weights(entropy[rows], mask[rows], beta=beta, log_mean=log_mean)
        for rows in (slice(0, cut), slice(cut, 6))
    ]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-9, atol=1e-12)


def test_entropy_weights_log_mean_must_not_be_nan():
    with pytest.raises(ValueError, match="log_mean"):
        ca.entropy_weights(torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool), log_mean=float("nan"))
