"""Generalised JSD, the tail bucket, the top-K(+tail) divergence and the trust-region teacher."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from srpo_verl import core_algos as ca


def reference_gjsd(p, q, alpha):
    """One row of probabilities, python floats, 0 log 0 = 0; endpoints are the two KLs (SDPO convention)."""

    def kl(a, b):
        return sum(ai * math.log(ai / bi) for ai, bi in zip(a, b) if ai > 0)

    if alpha == 0:
        return kl(q, p)
    if alpha == 1:
        return kl(p, q)
    m = [(1 - alpha) * pi + alpha * qi for pi, qi in zip(p, q)]
    return (1 - alpha) * kl(p, m) + alpha * kl(q, m)


def reference_gjsd_torch(log_p, log_q, alpha):
    """Differentiable float64 reference in probability space (p > 0 everywhere in its inputs)."""
    p, q = log_p.exp(), log_q.detach().exp()
    m = (1 - alpha) * p + alpha * q
    return (1 - alpha) * (p * (log_p - m.log())).sum(-1) + alpha * (q * (log_q.detach() - m.log())).sum(-1)


def random_log_probs(gen, shape, scale=2.0):
    return torch.log_softmax(torch.randn(*shape, generator=gen, dtype=torch.float64) * scale, -1)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_generalized_jsd_matches_reference(gen, alpha):
    log_p, log_q = random_log_probs(gen, (6, 9)), random_log_probs(gen, (6, 9))
    got = ca.generalized_jsd(log_p, log_q, alpha=alpha)
    want = [reference_gjsd(p, q, alpha) for p, q in zip(log_p.exp().tolist(), log_q.exp().tolist())]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_generalized_jsd_hand_worked():
    # p = (1/2, 1/2), q = (1, 0), alpha = 1/2: M = (3/4, 1/4).
    log_p = torch.tensor([[math.log(0.5), math.log(0.5)]], dtype=torch.float64)
    log_q = torch.tensor([[0.0, float("-inf")]], dtype=torch.float64)
    want = 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) + 0.5 * (1.0 * math.log(1 / 0.75))
    torch.testing.assert_close(ca.generalized_jsd(log_p, log_q, alpha=0.5), torch.tensor([want], dtype=torch.float64))
    # Reverse KL(p || q) is infinite here (p puts mass where q has none); forward KL(q || p) = log 2.
    assert ca.generalized_jsd(log_p, log_q, alpha=1.0).item() == math.inf
    assert ca.generalized_jsd(log_p, log_q, alpha=0.0).item() == pytest.approx(math.log(2))


@given(
    st.lists(st.floats(-3, 3), min_size=2, max_size=7),
    st.lists(st.floats(-3, 3), min_size=2, max_size=7),
)
def test_endpoints_are_forward_and_reverse_kl(x, y):
    n = min(len(x), len(y))
    log_p = torch.log_softmax(torch.tensor(x[:n], dtype=torch.float64), -1)
    log_q = torch.log_softmax(torch.tensor(y[:n], dtype=torch.float64), -1)
    p, q = log_p.exp(), log_q.exp()
    forward = (q * (log_q - log_p)).sum()  # KL(q || p)
    reverse = (p * (log_p - log_q)).sum()  # KL(p || q)
    torch.testing.assert_close(ca.generalized_jsd(log_p, log_q, alpha=0.0), forward)
    torch.testing.assert_close(ca.generalized_jsd(log_p, log_q, alpha=1.0), reverse)
    # ... and they are the leading terms of D_alpha / alpha and D_alpha / (1 - alpha) near the ends.
    a = 1e-9  # the next term is O(a * max p/q); logits in [-3, 3] keep it below the tolerance
    torch.testing.assert_close(ca.generalized_jsd(log_p, log_q, alpha=a) / a, forward, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(ca.generalized_jsd(log_p, log_q, alpha=1 - a) / a, reverse, rtol=1e-3, atol=1e-6)


@given(st.lists(st.floats(-8, 8), min_size=2, max_size=7), st.floats(0, 1), st.integers(0, 2**31 - 1))
def test_divergence_nonnegative_and_zero_iff_equal(x, alpha, seed):
    log_p = torch.log_softmax(torch.tensor(x, dtype=torch.float64), -1)
    g = torch.Generator().manual_seed(seed)
    log_q = torch.log_softmax(torch.randn(len(x), generator=g, dtype=torch.float64) * 3, -1)
    assert ca.generalized_jsd(log_p, log_q, alpha=alpha).item() >= -1e-12
    assert abs(ca.generalized_jsd(log_p, log_p, alpha=alpha).item()) <= 1e-12


def test_zero_probability_buckets_contribute_zero_without_nan():
    log_p = torch.tensor([[0.0, float("-inf"), float("-inf")]], dtype=torch.float64, requires_grad=True)
    log_q = torch.tensor([[math.log(0.5), math.log(0.5), float("-inf")]], dtype=torch.float64)
    # (alpha = 0, forward KL(q || p), is genuinely infinite here: q has mass where p has none.)
    for alpha in (0.5, 1.0):
        out = ca.generalized_jsd(log_p, log_q, alpha=alpha)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(log_p.grad).all()
        log_p.grad = None
    # Bucket 3 is zero on both sides: the value equals the same divergence without it.
    got = ca.generalized_jsd(log_p, log_q, alpha=0.5)
    torch.testing.assert_close(got, ca.generalized_jsd(log_p[:, :2], log_q[:, :2], alpha=0.5))


def test_teacher_side_gets_no_gradient(gen):
    log_p = random_log_probs(gen, (3, 5)).requires_grad_()
    log_q = random_log_probs(gen, (3, 5)).requires_grad_()
    ca.generalized_jsd(log_p, log_q, alpha=0.5).sum().backward()
    assert log_q.grad is None and log_p.grad is not None


def test_add_tail_bucket_sums_to_one_and_handles_full_mass(gen):
    log_probs = random_log_probs(gen, (4, 20))
    top = log_probs.topk(5, dim=-1).values
    with_tail = ca.add_tail_bucket(top)
    assert with_tail.shape == (4, 6)
    torch.testing.assert_close(with_tail.exp().sum(-1), torch.ones(4, dtype=torch.float64))
    want_tail = torch.log1p(-top.exp().sum(-1))
    torch.testing.assert_close(with_tail[:, -1], want_tail)
    # All mass in the top-K (K = V): the tail is tiny but finite and its gradient is not NaN.
    full = random_log_probs(gen, (3, 4)).float().requires_grad_()
    out = ca.add_tail_bucket(full)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(full.grad).all()
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(3), rtol=0, atol=1e-6)


def reference_topk_divergence(student_logits, teacher_logits, index, alpha, tail):
    """Plain log_softmax on the full vocabulary, gather, explicit tail / renormalisation, float64."""
    log_p = torch.log_softmax(student_logits, -1).gather(-1, index)
    log_q = torch.log_softmax(teacher_logits, -1).gather(-1, index)
    if tail:
        log_p = torch.cat([log_p, torch.log1p(-log_p.exp().sum(-1, keepdim=True))], -1)
        log_q = torch.cat([log_q, torch.log1p(-log_q.exp().sum(-1, keepdim=True))], -1)
    else:
        log_p = log_p - log_p.exp().sum(-1, keepdim=True).log()
        log_q = log_q - log_q.exp().sum(-1, keepdim=True).log()
    return reference_gjsd_torch(log_p, log_q, alpha)


@pytest.mark.parametrize("alpha", [0.5, 0.2])
@pytest.mark.parametrize("tail", [True, False])
def test_topk_tail_divergence_value_and_gradient_vs_reference(gen, alpha, tail):
    N, V, K = 6, 30, 5
    student = (torch.randn(N, V, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    teacher = torch.randn(N, V, generator=gen, dtype=torch.float64) * 2
    index = ca.student_topk(student, k=K)
    t_lp = ca.teacher_topk_log_probs(teacher, index, chunk_size=4)
    weights = torch.rand(N, generator=gen, dtype=torch.float64)
    got = ca.topk_tail_divergence(student, t_lp, index, alpha=alpha, tail=tail, chunk_size=4)
    (got * weights).sum().backward()

    ref_student = student.detach().clone().requires_grad_()
    want = reference_topk_divergence(ref_student, teacher, index, alpha, tail)
    (want * weights).sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(student.grad, ref_student.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_with_k_at_least_vocab_equals_full_vocab(gen, alpha, dtype):
    N, V = 5, 8
    student = (torch.randn(N, V, generator=gen) * 2).to(dtype).requires_grad_()
    teacher = (torch.randn(N, V, generator=gen) * 2).to(dtype)
    index = ca.student_topk(student, k=V + 3)
    t_lp = ca.teacher_topk_log_probs(teacher, index)
    got = ca.topk_tail_divergence(student, t_lp, index, alpha=alpha)
    got.sum().backward()
    grad_topk = student.grad.clone()
    student.grad = None
    full = ca.full_vocab_divergence(student, teacher, alpha=alpha)
    full.sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, full, rtol=tol, atol=tol)
    torch.testing.assert_close(grad_topk, student.grad, rtol=tol, atol=tol)
    # The K+1 buckets are a distribution: their probabilities sum to one.
    buckets = ca.add_tail_bucket(ca.gather_log_softmax(student, index))
    torch.testing.assert_close(buckets.exp().sum(-1), torch.ones(N, dtype=dtype), rtol=0, atol=1e-6)


def test_full_vocab_divergence_matches_reference(gen):
    s, t = torch.randn(4, 7, generator=gen, dtype=torch.float64), torch.randn(4, 7, generator=gen, dtype=torch.float64)
    got = ca.full_vocab_divergence(s, t, alpha=0.3)
    want = [reference_gjsd(p, q, 0.3) for p, q in zip(torch.softmax(s, -1).tolist(), torch.softmax(t, -1).tolist())]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))


def test_trust_region_teacher(gen):
    ref = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    cur = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    ref_lp, cur_lp = torch.log_softmax(ref, -1), torch.log_softmax(cur, -1)
    got = ca.trust_region_teacher_log_probs(ref_lp, cur_lp, mix=0.3)
    unnorm = torch.exp(0.7 * ref_lp + 0.3 * cur_lp)
    torch.testing.assert_close(got.exp(), unnorm / unnorm.sum(-1, keepdim=True))
    # Logits give the same answer as log-probs (log_softmax drops per-row constants).
    torch.testing.assert_close(ca.trust_region_teacher_log_probs(ref, cur, mix=0.3), got)
    torch.testing.assert_close(ca.trust_region_teacher_log_probs(ref_lp, cur_lp, mix=1.0), cur_lp)
    torch.testing.assert_close(ca.trust_region_teacher_log_probs(ref_lp, cur_lp, mix=0.0), ref_lp)
