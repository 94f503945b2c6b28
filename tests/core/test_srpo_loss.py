"""The combined SRPO loss: one denominator, invariant to micro-batch / rank split and to order."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from srpo_verl import core_algos as ca

NAN, INF = float("nan"), float("inf")


def reference_srpo_loss(grpo, sdpo, routed, weights, valid, num_tokens):
    """sum over valid tokens of (z^GRPO l^GRPO + z^SDPO w l^SDPO) / num_tokens, one token at a time."""
    total = 0.0
    for i in range(len(valid)):
        for t in range(len(valid[i])):
            if valid[i][t]:
                total += weights[i][t] * sdpo[i][t] if routed[i] else grpo[i][t]
    return total / num_tokens


def test_hand_worked_two_samples():
    # Sample 0 is GRPO-routed, 2 valid tokens; sample 1 is SDPO-routed, 3 valid tokens.
    grpo = torch.tensor([[1.0, 2.0, 9.0], [NAN, INF, 7.0]])  # 9.0 is masked; row 1 unused
    sdpo = torch.tensor([[NAN, -INF, 5.0], [0.5, 1.5, 3.0]])  # row 0 unused
    weights = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.5, 1.0]])
    valid = torch.tensor([[1, 1, 0], [1, 1, 1]])
    routed = torch.tensor([False, True])
    loss = ca.srpo_loss(grpo, sdpo, routed, weights, valid, num_tokens=None)
    # (1 + 2) + (2 * 0.5 + 0.5 * 1.5 + 1 * 3) = 7.75 over 5 tokens. (Per-branch means would give 3/2 + 4.75/3.)
    torch.testing.assert_close(loss, torch.tensor(7.75 / 5))
    assert loss.dtype == torch.float32 and loss.dim() == 0
    # The global count replaces this batch's own; dp_size multiplies.
    torch.testing.assert_close(ca.srpo_loss(grpo, sdpo, routed, weights, valid, num_tokens=10), torch.tensor(0.775))
    torch.testing.assert_close(
        ca.srpo_loss(grpo, sdpo, routed, weights, valid, num_tokens=10, dp_size=2), torch.tensor(1.55)
    )
    # A (B, T) routing mask selects per token.
    token_routed = routed.unsqueeze(-1).expand(2, 3)
    torch.testing.assert_close(ca.srpo_loss(grpo, sdpo, token_routed, weights, valid, num_tokens=5), loss)


def make_batch(seed, B, T):
    g = torch.Generator().manual_seed(seed)
    grpo_leaf = torch.randn(B, T, generator=g, dtype=torch.float64).requires_grad_()
    sdpo_leaf = torch.rand(B, T, generator=g, dtype=torch.float64).requires_grad_()
    entropy = torch.rand(B, T, generator=g, dtype=torch.float64) * 5
    valid = torch.rand(B, T, generator=g) < 0.8
    routed = torch.rand(B, generator=g) < 0.5
    # The weights are normalised once over the whole mini-batch, then sliced per micro-batch / rank.
    weights = ca.entropy_weights(entropy, routed.unsqueeze(-1) & valid, beta=1.0)
    return grpo_leaf, sdpo_leaf, weights, valid, routed


def losses_over(rows_list, batch, theta, num_tokens, dp_size=1):
    """One loss per piece of the batch; per-token losses depend on a shared 'parameter' theta."""
    grpo_leaf, sdpo_leaf, weights, valid, routed = batch
    out = []
    for rows in rows_list:
        out.append(
            ca.srpo_loss(
                grpo_leaf[rows] * theta[0],
                sdpo_leaf[rows] * theta[1] ** 2,
                routed[rows],
                weights[rows],
                valid[rows],
                num_tokens=num_tokens,
                dp_size=dp_size,
            )
        )
    return out


def grads(loss, batch, theta):
    return torch.autograd.grad(loss, [batch[0], batch[1], theta])


@given(
    st.integers(2, 6),
    st.integers(1, 5),
    st.integers(0, 2**31 - 1),
    st.lists(st.integers(1, 5), min_size=1, max_size=6),
    st.permutations(list(range(6))),
)
def test_loss_and_gradient_unchanged_by_micro_batch_split_and_order(B, T, seed, sizes, perm6):
    batch = make_batch(seed, B, T)
    theta = torch.tensor([0.7, -1.3], dtype=torch.float64, requires_grad=True)
    num_tokens = int(batch[3].sum())
    full = losses_over([slice(None)], batch, theta, num_tokens)[0]
    want_grads = grads(full, batch, theta)

    # Reference value, one token at a time.
    grpo_leaf, sdpo_leaf, weights, valid, routed = batch
    ref = reference_srpo_loss(
        (grpo_leaf * 0.7).tolist(),
        (sdpo_leaf * 1.69).tolist(),
        routed.tolist(),
        weights.tolist(),
        valid.tolist(),
        max(num_tokens, 1),
    )
    assert full.item() == pytest.approx(ref, rel=1e-12, abs=1e-12)

    # Reorder the samples, then cut them into micro-batches of the drawn sizes.
    order = torch.tensor([i for i in perm6 if i < B])
    pieces, start = [], 0
    for size in sizes:
        if start >= B:
            break
        pieces.append(order[start : start + size])
        start += size
    if start < B:
        pieces.append(order[start:])
    split = losses_over(pieces, batch, theta, num_tokens)
    total = torch.stack(split).sum()  # gradient accumulation = summing micro-batch losses
    torch.testing.assert_close(total, full, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads(total, batch, theta), want_grads):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_two_rank_data_parallel_average_equals_single_rank(seed):
    B, T = 6, 4
    batch = make_batch(seed, B, T)
    theta = torch.tensor([0.4, 2.0], dtype=torch.float64, requires_grad=True)
    num_tokens = int(batch[3].sum())
    single = losses_over([slice(None)], batch, theta, num_tokens)[0]
    (want,) = torch.autograd.grad(single, [theta])
    ranks = [torch.tensor([0, 2, 5]), torch.tensor([1, 3, 4])]
    rank_losses = losses_over(ranks, batch, theta, num_tokens, dp_size=2)
    # FSDP all-reduces parameter gradients with a mean over ranks.
    rank_grads = [torch.autograd.grad(loss, [theta])[0] for loss in rank_losses]
    torch.testing.assert_close((rank_grads[0] + rank_grads[1]) / 2, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((rank_losses[0] + rank_losses[1]) / 2, single, rtol=1e-12, atol=1e-12)


def test_zero_routed_tokens_is_the_grpo_token_mean(gen):
    grpo = torch.randn(3, 4, generator=gen)
    sdpo = torch.full((3, 4), NAN)
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[1, 2:] = False
    routed = torch.zeros(3, dtype=torch.bool)
    weights = ca.entropy_weights(torch.rand(3, 4, generator=gen), routed.unsqueeze(-1) & valid)
    loss = ca.srpo_loss(grpo, sdpo, routed, weights, valid, num_tokens=None)
    torch.testing.assert_close(loss, grpo[valid].mean())


def test_no_valid_token_gives_zero_not_nan():
    z = torch.zeros(2, 3)
    loss = ca.srpo_loss(z, z, torch.tensor([True, False]), z, z.bool(), num_tokens=None)
    assert loss.item() == 0.0
    loss0 = ca.srpo_loss(z, z, torch.tensor([True, False]), z, z.bool(), num_tokens=0)
    assert loss0.item() == 0.0


def test_nan_and_inf_in_the_unused_branch_do_not_leak_into_value_or_gradient(gen):
    grpo = torch.randn(3, 4, generator=gen)
    sdpo = torch.rand(3, 4, generator=gen)
    routed = torch.tensor([True, False, True])
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[2, 3] = False
    grpo[routed] = NAN  # no GRPO term for SDPO rows
    sdpo[~routed] = INF  # no teacher pass for GRPO rows
    sdpo[2, 3] = NAN  # padding
    weights = torch.ones(3, 4)
    weights[~routed] = INF
    grpo.requires_grad_()
    sdpo.requires_grad_()
    weights.requires_grad_()
    loss = ca.srpo_loss(grpo, sdpo, routed, weights, valid, num_tokens=None)
    loss.backward()
    assert torch.isfinite(loss)
    for grad in (grpo.grad, sdpo.grad, weights.grad):
        assert torch.isfinite(grad).all()
    assert (grpo.grad[routed] == 0).all() and (sdpo.grad[~routed] == 0).all() and sdpo.grad[2, 3] == 0
    torch.testing.assert_close(sdpo.grad[0], torch.full((4,), 1 / 11))


def test_ema_teacher_update_hand_worked():
    teacher = [torch.tensor([0.0, 0.0]), torch.tensor([[1.0]], dtype=torch.float64)]
    student = [torch.tensor([3.0, 4.0], dtype=torch.bfloat16), torch.tensor([[1.0]], dtype=torch.float64)]
    gap = ca.ema_teacher_update_(list(zip(teacher, student)), 0.05)
    torch.testing.assert_close(teacher[0], torch.tensor([0.15, 0.2]))  # moved 5% of the way, in its own dtype
    assert teacher[1].item() == 1.0  # already equal: unchanged
    assert gap.dim() == 0 and gap.item() == pytest.approx(0.95 * 5.0)  # ||theta - theta'_new|| = 0.95 * ||d||
    assert ca.ema_teacher_update_([(teacher[0], student[0].float())], 0.0).item() == pytest.approx(0.95 * 5.0)
    torch.testing.assert_close(teacher[0], torch.tensor([0.15, 0.2]))  # rate 0 moves nothing
    with pytest.raises(ValueError, match="rate"):
        ca.ema_teacher_update_([(teacher[0], student[0])], 1.5)
