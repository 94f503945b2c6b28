"""Numerics at the extremes not covered by tests/core/test_numerics.py: a zero-mass tail with K < V,
K > V, masked (-inf) vocabulary entries, teacher == student at +-1e4, one routed token in bf16 with
a huge beta*H. Loss and student-logit gradients must stay finite, and equal their exact values where
those are known."""

import pytest
import torch

from srpo_verl import core_algos as ca

DTYPES = [torch.float32, torch.bfloat16]
DTYPE_IDS = ["fp32", "bf16"]


def sdpo_loss(student, teacher, *, k, routed=None, valid=None, beta=1.0, alpha=0.5):
    """SDPO branch end to end on (B, T, V) logits through srpo_loss; returns (loss, divergence)."""
    B, T, _ = student.shape
    routed = torch.ones(B, dtype=torch.bool) if routed is None else routed
    valid = torch.ones(B, T, dtype=torch.bool) if valid is None else valid
    index = ca.student_topk(student, k=k)
    t_lp = ca.teacher_topk_log_probs(teacher, index, chunk_size=2)
    div = ca.topk_tail_divergence(student, t_lp, index, alpha=alpha, chunk_size=2)  # (B, T)
    log_prob = ca.gather_log_softmax(student, index[..., :1], chunk_size=2).squeeze(-1)
    l_sdpo = ca.sdpo_token_loss(div, log_prob, log_prob.detach())
    w = ca.entropy_weights(ca.teacher_entropy(teacher, chunk_size=2), routed[:, None] & valid, beta=beta)
    grpo = torch.zeros(B, T)
    return ca.srpo_loss(grpo, l_sdpo, routed, w, valid, num_tokens=None), div


def finite_loss_and_grad(student, teacher, **kw):
    student = student.clone().requires_grad_()
    loss, div = sdpo_loss(student, teacher, **kw)
    loss.backward()
    assert torch.isfinite(loss), loss
    assert torch.isfinite(div).all(), div
    assert torch.isfinite(student.grad.float()).all()
    return loss, div, student.grad


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_zero_mass_tail_with_k_below_vocab(dtype):
    # The top-3 tokens hold all the mass: the other 5 sit 1e4 below, exp(-1e4) == 0 in fp32.
    gen = torch.Generator().manual_seed(1)
    student = torch.full((2, 3, 8), -1e4)
    teacher = torch.full((2, 3, 8), -1e4)
    student[..., :3] = torch.randn(2, 3, 3, generator=gen)
    teacher[..., :3] = torch.randn(2, 3, 3, generator=gen)
    loss, div, grad = finite_loss_and_grad(student.to(dtype), teacher.to(dtype), k=3)
    # With an empty tail the K+1-bucket divergence is the full-vocabulary one.
    full = ca.full_vocab_divergence(student.to(dtype).float(), teacher.to(dtype).float())
    torch.testing.assert_close(div.float(), full, rtol=1e-4, atol=1e-5)
    assert grad.float()[..., 3:].abs().max() == 0  # no gradient leaks to zero-mass tokens


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_k_larger_than_vocab_is_the_full_vocabulary(dtype):
    gen = torch.Generator().manual_seed(2)
    student = (torch.randn(2, 2, 6, generator=gen) * 3).to(dtype)
    teacher = (torch.randn(2, 2, 6, generator=gen) * 3).to(dtype)
    _, div, _ = finite_loss_and_grad(student, teacher, k=6 + 94)
    torch.testing.assert_close(
        div.float(), ca.full_vocab_divergence(student.float(), teacher.float()), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k", [3, 8], ids=["k3", "k8"])
def test_masked_vocabulary_entries_at_minus_inf(dtype, k):
    # Logit processors / padded vocabularies put -inf on some ids; 0 * log 0 must stay 0.
    gen = torch.Generator().manual_seed(3)
    student = torch.randn(2, 2, 8, generator=gen)
    teacher = torch.randn(2, 2, 8, generator=gen)
    student[..., 5:] = float("-inf")
    teacher[..., 4:] = float("-inf")
    _, _, grad = finite_loss_and_grad(student.to(dtype), teacher.to(dtype), k=k)
    assert grad.float()[..., 5:].abs().max() == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_teacher_identical_to_student_at_extreme_logits(dtype):
    gen = torch.Generator().manual_seed(4)
    logits = (torch.randint(0, 2, (2, 3, 8), generator=gen) * 2e4 - 1e4).to(dtype)
    loss, div, grad = finite_loss_and_grad(logits, logits.clone(), k=3)
    assert div.abs().max() <= 1e-6 and loss.abs() <= 1e-6
    assert grad.float().abs().max() <= 1e-6


def test_one_routed_token_in_bf16_with_huge_beta_times_entropy():
    gen = torch.Generator().manual_seed(5)
    student = torch.randn(2, 3, 50, generator=gen).to(torch.bfloat16)
    teacher = torch.zeros(2, 3, 50).to(torch.bfloat16)  # uniform teacher: H = log 50
    valid = torch.zeros(2, 3, dtype=torch.bool)
    valid[1, 2] = True
    routed = torch.tensor([False, True])
    loss, div, grad = finite_loss_and_grad(student, teacher, k=5, routed=routed, valid=valid, beta=1e3)
    # exp(-1e3 * log 50) underflows any float, yet the single routed token's weight is exactly 1,
    # so the loss is that token's divergence (the IS ratio is 1, one valid token).
    torch.testing.assert_close(loss, div[1, 2].float(), rtol=1e-6, atol=1e-7)
    assert grad.float()[0].abs().max() == 0 and grad.float()[1, :2].abs().max() == 0


def test_entropy_weights_finite_and_mean_one_for_extreme_beta_times_entropy():
    entropy = torch.tensor([[0.0, 1e-3, 5.0], [11.9, 2.0, 1e4]])
    mask = torch.tensor([[True, True, True], [True, False, True]])
    for beta in (1e-6, 1.0, 1e3):
        w = ca.entropy_weights(entropy, mask, beta=beta)
        assert torch.isfinite(w).all()
        torch.testing.assert_close(w[mask].double().mean(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-6, atol=0)
        assert (w[~mask] == 0).all()
