"""PPO clipped surrogate (GRPO branch) and the SDPO per-token loss, against element-wise references."""

import math

import pytest
import torch

from srpo_verl import core_algos as ca


def reference_ppo(lp, old, adv, low, high, c=None, w=None):
    """verl compute_policy_loss_vanilla, one token at a time in python floats."""
    loss, clipped = [], []
    for i in range(len(lp)):
        row_l, row_c = [], []
        for t in range(len(lp[i])):
            a = adv[i][t]
            ratio = math.exp(min(max(lp[i][t] - old[i][t], -20.0), 20.0))
            l1 = -a * ratio
            l2 = -a * min(max(ratio, 1 - low), 1 + high)
            value = max(l1, l2)
            if c is not None and a < 0:
                value = min(value, -a * c)
            if w is not None:
                value *= w[i][t]
            row_l.append(value)
            row_c.append(l2 > l1)
        loss.append(row_l)
        clipped.append(row_c)
    return torch.tensor(loss, dtype=torch.float64), torch.tensor(clipped)


def test_ppo_clip_hand_worked_both_sides_and_dual_clip():
    # ratio 1.5 with A>0 hits the upper clip; 0.5 with A<0 the lower clip; 5.0 with A<0 the dual clip.
    ratios = torch.tensor([[1.5, 0.5, 5.0, 1.0]], dtype=torch.float64)
    old = torch.zeros_like(ratios)
    lp = ratios.log()
    adv = torch.tensor([[2.0, -1.0, -1.0, 3.0]], dtype=torch.float64)
    loss, clipfrac = ca.ppo_clip_token_loss(lp, old, adv, clip_ratio_low=0.2, clip_ratio_high=0.28)
    # max(-2*1.5, -2*1.28) = -2.56; max(0.5, 0.8) = 0.8; max(5, 1.28) = 5; -3.
    torch.testing.assert_close(loss, torch.tensor([[-2.56, 0.8, 5.0, -3.0]], dtype=torch.float64))
    assert clipfrac.tolist() == [[True, True, False, False]]
    loss_c, _ = ca.ppo_clip_token_loss(lp, old, adv, clip_ratio_c=3.0)
    torch.testing.assert_close(loss_c, torch.tensor([[-2.56, 0.8, 3.0, -3.0]], dtype=torch.float64))


@pytest.mark.parametrize("clip_ratio_c", [None, 3.0])
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_ppo_clip_matches_reference(gen, clip_ratio_c, per_token_adv):
    B, T = 4, 6
    lp = torch.randn(B, T, generator=gen, dtype=torch.float64) * 0.7 - 1
    old = torch.randn(B, T, generator=gen, dtype=torch.float64) * 0.7 - 1
    lp[0, 0] = old[0, 0] + 30.0  # exercises the [-20, 20] log-ratio clamp
    adv = torch.randn(B, T, generator=gen, dtype=torch.float64) if per_token_adv else torch.randn(B, generator=gen)
    w = torch.rand(B, T, generator=gen, dtype=torch.float64) * 2
    adv_full = adv if per_token_adv else adv.double().unsqueeze(-1).expand(B, T)
    loss, clipfrac = ca.ppo_clip_token_loss(
        lp, old, adv, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=clip_ratio_c, rollout_is_weights=w
    )
    ref_loss, ref_clip = reference_ppo(
        lp.tolist(), old.tolist(), adv_full.tolist(), 0.2, 0.28, clip_ratio_c, w.tolist()
    )
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-9)
    assert torch.equal(clipfrac, ref_clip)


def test_ppo_clip_agrees_with_verl(gen):
    verl_algos = pytest.importorskip("verl.trainer.ppo.core_algos")

    class Cfg(dict):  # the attributes compute_policy_loss_vanilla reads
        clip_ratio, clip_ratio_low, clip_ratio_high, global_batch_info = 0.2, 0.2, 0.28, {}

    B, T = 3, 5
    lp, old = torch.randn(B, T, generator=gen) - 1, torch.randn(B, T, generator=gen) - 1
    adv = torch.randn(B, T, generator=gen)
    w = torch.rand(B, T, generator=gen) + 0.5
    mask = torch.ones(B, T)
    mask[2, 3:] = 0
    cfg = Cfg(clip_ratio_c=3.0)
    verl_loss, _ = verl_algos.compute_policy_loss_vanilla(old, lp, adv, mask, "token-mean", cfg, rollout_is_weights=w)
    ours, _ = ca.ppo_clip_token_loss(lp, old, adv, clip_ratio_c=3.0, rollout_is_weights=w)
    torch.testing.assert_close((ours * mask).sum() / mask.sum(), verl_loss)


def test_ppo_clip_gradient_flows_only_through_log_prob(gen):
    lp = torch.randn(2, 3, generator=gen, requires_grad=True)
    adv = torch.randn(2, requires_grad=True)
    loss, _ = ca.ppo_clip_token_loss(lp, lp.detach() + 0.1, adv)
    loss.sum().backward()
    assert lp.grad is not None and torch.isfinite(lp.grad).all()
    assert adv.grad is None  # advantages are data


def test_sdpo_token_loss_clamps_and_detaches_the_ratio(gen):
    div = torch.tensor([[0.3, 0.2, 0.1]], requires_grad=True)
    lp = torch.tensor([[0.0, math.log(1.5), math.log(10.0)]], requires_grad=True)
    old = torch.zeros(1, 3)
    w = torch.tensor([[1.0, 2.0, 0.5]])
    loss = ca.sdpo_token_loss(div, lp, old, is_clip=2.0, rollout_is_weights=w)
    torch.testing.assert_close(loss, torch.tensor([[0.3 * 1.0, 0.2 * 1.5 * 2.0, 0.1 * 2.0 * 0.5]]))
    loss.sum().backward()
    torch.testing.assert_close(div.grad, torch.tensor([[1.0, 3.0, 1.0]]))
    assert lp.grad is None  # the ratio is stop-gradient
    assert loss.dtype == torch.float32
    bf = ca.sdpo_token_loss(div.detach().bfloat16(), lp.detach().bfloat16(), old.bfloat16())
    assert bf.dtype == torch.float32
