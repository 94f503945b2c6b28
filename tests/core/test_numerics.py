"""The whole SDPO/SRPO path stays finite at the extremes: +-1e4 logits, teacher == student,
top-K holding all mass (K >= V), a single routed token; fp32 and bf16."""

import ast
import inspect

import pytest
import torch

from srpo_verl import core_algos as ca


def srpo_step(student_logits, teacher_logits, *, k, routed, valid, beta=1.0, alpha=0.5, chunk_size=3):
    """Both branches end to end on (B, T, V) logits; returns the loss."""
    B, T, V = student_logits.shape
    sampled = torch.zeros(B, T, 1, dtype=torch.long)
    log_prob = ca.gather_log_softmax(student_logits, sampled, chunk_size=chunk_size).squeeze(-1)  # (B, T)
    old = log_prob.detach()
    grpo, _ = ca.ppo_clip_token_loss(log_prob, old, torch.tensor([1.0, -1.0])[:B])
    index = ca.student_topk(student_logits, k=k)
    t_lp = ca.teacher_topk_log_probs(teacher_logits, index, chunk_size=chunk_size)
    div = ca.topk_tail_divergence(student_logits, t_lp, index, alpha=alpha, chunk_size=chunk_size)  # (B, T)
    sdpo = ca.sdpo_token_loss(div, log_prob, old)
    entropy = ca.teacher_entropy(teacher_logits, chunk_size=chunk_size)  # (B, T)
    weights = ca.entropy_weights(entropy, routed[:, None] & valid, beta=beta)
    return ca.srpo_loss(grpo, sdpo, routed, weights, valid, num_tokens=None), div


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [3, 8, 50])
def test_extreme_logits_are_finite(gen, dtype, k):
    B, T, V = 2, 3, 8
    student = (torch.randint(0, 2, (B, T, V), generator=gen) * 2e4 - 1e4).to(dtype).requires_grad_()
    teacher = (torch.randint(0, 2, (B, T, V), generator=gen) * 2e4 - 1e4).to(dtype)
    valid = torch.ones(B, T, dtype=torch.bool)
    loss, div = srpo_step(student, teacher, k=k, routed=torch.tensor([True, False]), valid=valid)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(div).all()
    assert torch.isfinite(student.grad.float()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_teacher_equal_to_student_gives_zero_divergence_and_gradient(gen, dtype):
    logits = (torch.randn(2, 3, 10, generator=gen) * 3).to(dtype)
    student = logits.clone().requires_grad_()
    valid = torch.ones(2, 3, dtype=torch.bool)
    routed = torch.tensor([True, True])
    loss, div = srpo_step(student, logits, k=4, routed=routed, valid=valid)
    loss.backward()
    torch.testing.assert_close(div, torch.zeros(2, 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(student.grad.float(), torch.zeros(2, 3, 10), rtol=0, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_tail_of_zero_mass_k_at_least_vocab(gen, alpha):
    student = (torch.randn(2, 2, 5, generator=gen) * 4).requires_grad_()
    teacher = torch.randn(2, 2, 5, generator=gen) * 4
    valid = torch.ones(2, 2, dtype=torch.bool)
    loss, div = srpo_step(student, teacher, k=5, routed=torch.tensor([True, True]), valid=valid, alpha=alpha)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    torch.testing.assert_close(div, ca.full_vocab_divergence(student, teacher, alpha=alpha), rtol=1e-5, atol=1e-6)


def test_single_routed_token(gen):
    student = torch.randn(2, 3, 6, generator=gen).requires_grad_()
    teacher = torch.randn(2, 3, 6, generator=gen)
    valid = torch.zeros(2, 3, dtype=torch.bool)
    valid[0, 1] = True
    valid[1] = True
    routed = torch.tensor([True, False])
    loss, _ = srpo_step(student, teacher, k=2, routed=routed, valid=valid)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    weights = ca.entropy_weights(ca.teacher_entropy(teacher), routed[:, None] & valid)
    assert weights[0, 1] == 1.0 and weights.sum() == 1.0


def test_module_imports_no_verl():
    tree = ast.parse(inspect.getsource(ca))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "math", "typing", "numpy", "torch"}, imported


def test_api_page_documents_every_public_function():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    missing = [name for name in ca.__all__ if f"`{name}(" not in page and name != "Routing"]
    assert not missing, f"docs/api.md lacks: {missing}"


def test_grpo_advantage_at_the_edge_of_float32():
    # Finite float32 rewards near +-3e38: the group sum needs float64, and r - mean can exceed
    # float32's range. Before: -inf/+inf came back silently. Now: exact where it fits, else a
    # ValueError naming the row.
    big = torch.tensor([3e38, -3e38, 3e38, -3e38])
    adv = ca.grpo_advantage(big, [0, 0, 1, 1])
    assert adv.dtype == torch.float32 and torch.equal(adv, big)  # means are 0: A = r exactly
    assert ca.grpo_advantage(torch.tensor([3e38, 3e38, 3e38]), [0, 0, 0]).abs().max() == 0  # sum 9e38 in float64
    over = torch.tensor([3e38, -3e38, -3e38, 1.0, 2.0])  # mean -1e38: A_0 = 4e38 > float32 max
    with pytest.raises(ValueError, match=r"does not fit torch.float32 at rows \[0\]"):
        ca.grpo_advantage(over, [0, 0, 0, 1, 1])
    # The same rewards in float64 fit, and agree with a hand computation.
    adv64 = ca.grpo_advantage(over.double(), [0, 0, 0, 1, 1])
    a = over[0].double().item()  # float32's nearest value to 3e38; group 0 is (a, -a, -a), mean -a/3
    expected = torch.tensor([4 * a / 3, -2 * a / 3, -2 * a / 3, -0.5, 0.5], dtype=torch.float64)
    assert adv64.dtype == torch.float64 and torch.allclose(adv64, expected, rtol=1e-12, atol=0)
