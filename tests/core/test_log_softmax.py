"""gather_log_softmax (chunked custom autograd), student_topk and teacher_topk_log_probs."""

import pytest
import torch

from srpo_verl import core_algos as ca


def reference(logits, index):
    return torch.log_softmax(logits.double(), dim=-1).gather(-1, index)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_value_and_gradient_match_log_softmax_gather(gen, chunk_size):
    N, V, K = 7, 11, 4
    logits = (torch.randn(N, V, generator=gen) * 3).requires_grad_()
    index = torch.randint(0, V, (N, K), generator=gen)
    index[0] = torch.tensor([2, 2, 5, 2])  # duplicated indices: their gradients add up
    upstream = torch.randn(N, K, generator=gen)

    out = ca.gather_log_softmax(logits, index, chunk_size=chunk_size)
    (out * upstream).sum().backward()
    ref_logits = logits.detach().double().requires_grad_()
    ref = reference(ref_logits, index)
    (ref * upstream.double()).sum().backward()

    assert out.dtype == torch.float32 and out.shape == (N, K)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logits.grad.double(), ref_logits.grad, rtol=1e-5, atol=1e-6)


def test_gradcheck_float64(gen):
    logits = torch.randn(5, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 9, (5, 3), generator=gen)
    assert torch.autograd.gradcheck(lambda x: ca.gather_log_softmax(x, index, chunk_size=2), (logits,))


def test_chunk_size_does_not_change_numerics(gen):
    logits = torch.randn(33, 50, generator=gen) * 4
    index = torch.randint(0, 50, (33, 6), generator=gen)
    outs, grads = [], []
    for chunk_size in (1, 5, 32, 1000):
        x = logits.clone().requires_grad_()
        out = ca.gather_log_softmax(x, index, chunk_size=chunk_size)
        out.sum().backward()
        outs.append(out)
        grads.append(x.grad)
    for out, grad in zip(outs[1:], grads[1:]):
        torch.testing.assert_close(out, outs[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(grad, grads[0], rtol=0, atol=1e-6)


def test_bf16_logits_fp32_output(gen):
    logits = (torch.randn(6, 40, generator=gen) * 5).bfloat16().requires_grad_()
    index = torch.randint(0, 40, (6, 3), generator=gen)
    out = ca.gather_log_softmax(logits, index, chunk_size=4)
    assert out.dtype == torch.float32
    # Same numbers as upcasting the bf16 logits first: the upcast is exact, only the output is fp32.
    ref_x = logits.detach().float().requires_grad_()
    ref = torch.log_softmax(ref_x, -1).gather(-1, index)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    out.sum().backward()
    ref.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad.float(), ref_x.grad, rtol=1e-2, atol=1e-2)


def test_leading_dims_are_flattened(gen):
    logits = torch.randn(2, 3, 8, generator=gen)
    index = torch.randint(0, 8, (2, 3, 1), generator=gen)
    out = ca.gather_log_softmax(logits, index)
    assert out.shape == (2, 3, 1)
    torch.testing.assert_close(out.double(), reference(logits, index))


def test_student_topk_and_k_at_least_vocab(gen):
    logits = torch.randn(4, 10, generator=gen)
    idx = ca.student_topk(logits, k=3)
    assert idx.shape == (4, 3)
    for row, chosen in zip(logits, idx):
        assert set(chosen.tolist()) == set(torch.argsort(row, descending=True)[:3].tolist())
    full = ca.student_topk(logits, k=50)
    assert full.shape == (4, 10)
    assert all(sorted(r.tolist()) == list(range(10)) for r in full)


def test_teacher_topk_log_probs_no_grad(gen):
    teacher = torch.randn(5, 12, generator=gen, requires_grad=True)
    idx = torch.randint(0, 12, (5, 4), generator=gen)
    got = ca.teacher_topk_log_probs(teacher, idx, chunk_size=2)
    assert not got.requires_grad
    torch.testing.assert_close(got.double(), reference(teacher.detach(), idx))
