"""PPO / RLOO losses checked against numbers worked out by hand (the arithmetic is in each docstring)."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.losses import (
    AdaptiveKLController,
    compute_gae,
    entropy_from_logits,
    kl_penalized_rewards,
    masked_mean,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    whiten,
)


def test_gae_three_tokens_by_hand():
    """γ = 0.9, λ = 0.5, rewards r = [1, 0, 2], values V = [1, 2, 3]; the episode ends after token 2.

    δ2 = 2 + 0.9·0 − 3 = −1            A2 = −1
    δ1 = 0 + 0.9·3 − 2 = 0.7           A1 = 0.7 + 0.45·(−1)  = 0.25
    δ0 = 1 + 0.9·2 − 1 = 1.8           A0 = 1.8 + 0.45·0.25 = 1.9125
    returns = A + V = [2.9125, 2.25, 2.0]
    A 4th, padded position (r = 5, V = 7: garbage) must change nothing and come out 0.
    """
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0]])
    values = torch.tensor([[1.0, 2.0, 3.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[1.9125, 0.25, -1.0, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[2.9125, 2.25, 2.0, 0.0]]))


def test_gae_lambda_one_gamma_one_is_return_minus_value():
    """With γ = λ = 1 the advantage is the plain reward-to-go minus the value: rewards [0, 0, 1],
    V = [0.5, 0.2, 0.1] → reward-to-go [1, 1, 1] → A = [0.5, 0.8, 0.9]; returns = [1, 1, 1]."""
    adv, ret = compute_gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.2, 0.1]]), torch.ones(1, 3), 1.0, 1.0)
    assert torch.allclose(adv, torch.tensor([[0.5, 0.8, 0.9]]))
    assert torch.allclose(ret, torch.ones(1, 3))


def test_kl_penalized_rewards_by_hand():
    """β = 0.1, score 2, log π = [−1, −2, −3, −4], log π_ref = [−1.5, −2, −2, −9], mask [1, 1, 1, 0].

    kl = log π − log π_ref = [0.5, 0, −1, (masked) 0]
    rewards = −0.1·kl + score at the last real token (index 2) = [−0.05, 0, 0.1 + 2, 0] = [−0.05, 0, 2.1, 0]
    Second row, all 4 tokens real: kl = [0, 0, 0, 1], score −1 lands on index 3: [0, 0, 0, −0.1 − 1].
    """
    logp = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0, -9.0], [-1.0, -1.0, -1.0, -2.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    rewards, kl = kl_penalized_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, -1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.0, 2.1, 0.0], [0.0, 0.0, 0.0, -1.1]]))


def test_ppo_policy_loss_by_hand():
    """ε = 0.2, log π_old = 0, four tokens (ρ, A):

    (1.5, +1):  −ρA = −1.5, −clip(ρ)A = −1.2 → max −1.2  (clipped term active)
    (0.5, −1):  −ρA = +0.5, −clip(ρ)A = +0.8 → max +0.8  (clipped term active)
    (1.1, +2):  −ρA = −2.2, −clip(ρ)A = −2.2 → −2.2     (inside the clip range)
    (1.5, −1):  −ρA = +1.5, −clip(ρ)A = +1.2 → +1.5     (pessimistic bound: unclipped term active)
    loss = (−1.2 + 0.8 − 2.2 + 1.5) / 4 = −0.275; clip fraction = 2/4. A 5th, masked token is ignored.
    approx_kl = mean ½(log ρ)² over the 4 tokens.
    """
    ratios = torch.tensor([[1.5, 0.5, 1.1, 1.5, 9.0]])
    adv = torch.tensor([[1.0, -1.0, 2.0, -1.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    out = ppo_policy_loss(ratios.log(), torch.zeros_like(ratios), adv, mask, clip=0.2)
    assert out.loss.item() == pytest.approx(-0.275, abs=1e-6)
    assert out.clip_fraction.item() == pytest.approx(0.5)
    expected_kl = sum(0.5 * math.log(r) ** 2 for r in (1.5, 0.5, 1.1, 1.5)) / 4
    assert out.approx_kl.item() == pytest.approx(expected_kl, rel=1e-5)


def test_ppo_policy_gradient_at_ratio_one_is_policy_gradient():
    """At ρ = 1 the loss is −mean(A·ρ), so ∂loss/∂log π_t = −A_t / N: A = [1, −2], N = 2 → [−0.5, 1.0]."""
    logp = torch.zeros(1, 2, requires_grad=True)
    out = ppo_policy_loss(logp, torch.zeros(1, 2), torch.tensor([[1.0, -2.0]]), torch.ones(1, 2), clip=0.2)
    out.loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.5, 1.0]]))
    assert out.clip_fraction.item() == 0.0


def test_ppo_value_loss_by_hand():
    """ε_v = 0.5, V_old = [0, 0], V_new = [1.0, −0.1], returns R = [2, 1]:

    token 0: V_clip = 0 + clip(1.0) = 0.5; (1 − 2)² = 1, (0.5 − 2)² = 2.25 → 2.25 (clipped error larger)
    token 1: V_clip = −0.1 (inside); both errors (−0.1 − 1)² = 1.21 → 1.21
    loss = ½·(2.25 + 1.21)/2 = 0.865; clip fraction = 1/2.
    """
    loss, frac = ppo_value_loss(
        torch.tensor([[1.0, -0.1]]), torch.zeros(1, 2), torch.tensor([[2.0, 1.0]]), torch.ones(1, 2), clip=0.5
    )
    assert loss.item() == pytest.approx(0.865, abs=1e-6)
    assert frac.item() == pytest.approx(0.5)


def test_whiten_by_hand():
    """x = [1, 2, 3, (masked) 100]: μ = 2, σ² = (1 + 0 + 1)/3 = 2/3 → [−1/√(2/3), 0, 1/√(2/3), 0] = [−1.2247, 0, 1.2247, 0].
    Without the mean shift: x/√(2/3) = [1.2247, 2.4495, 3.6742, 0]."""
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    s = math.sqrt(2 / 3)
    assert torch.allclose(whiten(x, mask), torch.tensor([[-1 / s, 0.0, 1 / s, 0.0]]), atol=1e-5)
    assert torch.allclose(whiten(x, mask, shift_mean=False), torch.tensor([[1 / s, 2 / s, 3 / s, 0.0]]), atol=1e-5)
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_rloo_advantages_by_hand():
    """k = 3, rewards [1, 2, 3 | 10, 10, 10]:
    r0: 1 − (2+3)/2 = −1.5;  r1: 2 − (1+3)/2 = 0;  r2: 3 − (1+2)/2 = 1.5;  the second prompt's equal rewards → 0."""
    adv = rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0]), k=3)
    assert torch.allclose(adv, torch.tensor([-1.5, 0.0, 1.5, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(torch.tensor([1.0, 2.0]), k=1)
    with pytest.raises(ValueError, match="multiple of k"):
        rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), k=2)


def test_entropy_from_logits():
    """Uniform over 4 tokens → log 4; a one-hot-like distribution → ≈ 0."""
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(torch.tensor([100.0, 0.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)


def test_adaptive_kl_controller_by_hand():
    """β = 0.1, target 6, horizon 10 000:
    KL 12 over 1000 steps: e = clip(12/6 − 1) = clip(1) = 0.2 → β = 0.1·(1 + 0.2·0.1) = 0.102
    KL 3 over 1000 steps:  e = clip(−0.5) = −0.2        → β = 0.102·(1 − 0.02) = 0.09996
    A fixed controller (target None) keeps β; the state round-trips."""
    kl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    assert kl.update(12.0, 1000) == pytest.approx(0.102)
    assert kl.update(3.0, 1000) == pytest.approx(0.09996)
    copy = AdaptiveKLController(1.0)
    copy.load_state_dict(kl.state_dict())
    assert copy.value == pytest.approx(0.09996) and copy.target == 6.0
    fixed = AdaptiveKLController(0.05)
    assert fixed.update(100.0, 1000) == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0)
