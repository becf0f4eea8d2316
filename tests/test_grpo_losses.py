"""GRPO's pure functions checked against numbers worked out by hand (the arithmetic is in each docstring)."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.losses import grpo_advantages, grpo_loss, k3_kl, truncated_is_weights


def test_group_advantages_by_hand():
    """k = 2, rewards [1, 2 | 3, 6 | 2, 2].

    group 1: mean 1.5, sample std √((0.5² + 0.5²)/1) = 0.70711 → A = ∓0.5 / (0.70711 + 1e-4) = ∓0.70701
    group 2: mean 4.5, sample std √(2·1.5²) = 2.12132           → A = ∓1.5 / (2.12132 + 1e-4) = ∓0.70707
    group 3: all equal                                            → A = 0 (no signal, no NaN)
    Dr. GRPO (no std): [−0.5, 0.5, −1.5, 1.5, 0, 0].
    """
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 2.0, 2.0])
    adv = grpo_advantages(rewards, k=2)
    assert adv.tolist() == pytest.approx([-0.70701, 0.70701, -0.70707, 0.70707, 0.0, 0.0], abs=1e-5)
    assert grpo_advantages(rewards, k=2, scale=False).tolist() == pytest.approx([-0.5, 0.5, -1.5, 1.5, 0.0, 0.0])
    with pytest.raises(ValueError, match="k >= 2"):
        grpo_advantages(rewards, k=1)
    with pytest.raises(ValueError, match="multiple"):
        grpo_advantages(rewards, k=4)


def test_k3_by_hand():
    """d = log π_ref − log π; k3 = e^d − d − 1: d = −1 → e⁻¹ = 0.36788; d = 1 → e − 2 = 0.71828; d = 0 → 0."""
    logp = torch.tensor([-1.0, -2.0, -3.0])
    ref = torch.tensor([-2.0, -1.0, -3.0])
    assert k3_kl(logp, ref).tolist() == pytest.approx([math.exp(-1), math.e - 2, 0.0], abs=1e-6)


def _batch():
    """Two sequences of 3 tokens, clip ε = 0.2, log π_old = −1 everywhere.

    row 0: A = 1,  ρ = [1, 1.5, 0.5], mask [1, 1, 1]
      t0: −min(1·1, 1·1) = −1
      t1: −min(1.5, 1.2) = −1.2   (the clipped term is the active one)
      t2: −min(0.5, 0.8) = −0.5
    row 1: A = −2, ρ = [1.5, 1, 7 (padding)], mask [1, 1, 0]
      t0: −min(−3, −2.4) = 3
      t1: −min(−2, −2) = 2
    token aggregation:    (−1 − 1.2 − 0.5 + 3 + 2) / 5 = 2.3 / 5 = 0.46
    sequence aggregation: mean(−2.7 / 3, 5 / 2) = mean(−0.9, 2.5) = 0.8
    clip fraction: 1 of 5 tokens.
    """
    old = torch.full((2, 3), -1.0)
    new = old + torch.log(torch.tensor([[1.0, 1.5, 0.5], [1.5, 1.0, 7.0]]))
    return new.requires_grad_(True), old, torch.tensor([1.0, -2.0]), torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_grpo_loss_without_kl_by_hand():
    new, old, adv, mask = _batch()
    out = grpo_loss(new, old, adv, mask, clip=0.2)
    assert out.loss.item() == pytest.approx(0.46, abs=1e-6)
    assert out.clip_fraction.item() == pytest.approx(0.2)
    assert out.kl.item() == 0.0
    assert grpo_loss(new, old, adv, mask, clip=0.2, aggregation="sequence").loss.item() == pytest.approx(0.8, abs=1e-6)
    # gradient wrt log π_new = −A·ρ/N where the unclipped term is active, 0 where the clip is
    out.loss.backward()
    assert torch.allclose(new.grad, torch.tensor([[-1 / 5, 0.0, -0.5 / 5], [2 * 1.5 / 5, 2 / 5, 0.0]]), atol=1e-6)
    # advantages may also come per token (e.g. multiplied by importance weights): same result when broadcast
    per_token = grpo_loss(new.detach(), old, adv[:, None].expand(2, 3), mask, clip=0.2)
    assert per_token.loss.item() == pytest.approx(0.46, abs=1e-6)


def test_grpo_loss_with_k3_kl_by_hand():
    """As above plus β = 0.1, with log π_ref − log π_new = −1 at row 0 t0 (k3 = 0.36788), +1 at row 1 t1
    (k3 = 0.71828), 0 elsewhere, and +5 on the padded token (ignored).

    token:    (2.3 + 0.1·(0.36788 + 0.71828)) / 5 = 2.408616 / 5 = 0.481723;  kl = 1.08616 / 5 = 0.217232
    sequence: mean((−2.7 + 0.036788) / 3, (5 + 0.071828) / 2) = mean(−0.887737, 2.535914) = 0.824088
    """
    new, old, adv, mask = _batch()
    ref = new.detach() + torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 5.0]])
    out = grpo_loss(new, old, adv, mask, clip=0.2, beta=0.1, ref_logp=ref)
    assert out.loss.item() == pytest.approx(0.481723, abs=1e-5)
    assert out.kl.item() == pytest.approx(0.217232, abs=1e-5)
    seq = grpo_loss(new, old, adv, mask, clip=0.2, beta=0.1, ref_logp=ref, aggregation="sequence")
    assert seq.loss.item() == pytest.approx(0.824088, abs=1e-5)
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_loss(new, old, adv, mask, clip=0.2, beta=0.1)
    with pytest.raises(ValueError, match="aggregation"):
        grpo_loss(new, old, adv, mask, clip=0.2, aggregation="sum")


def test_truncated_is_weights_by_hand():
    """π_trainer / π_sampler = e^(−1 − (−2)) = e → capped at 2;  e^(−2 − (−1)) = e⁻¹ = 0.36788 stays."""
    w = truncated_is_weights(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]), cap=2.0)
    assert w.tolist() == pytest.approx([2.0, math.exp(-1)], abs=1e-6)
