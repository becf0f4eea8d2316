"""trainers/losses.py against numbers computed by hand (the arithmetic is in each docstring)."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.losses import dpo_loss, kto_loss, sequence_logprobs, sft_loss, soft_bt_loss, token_logprobs


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_soft_bt_loss_hand_computed():
    """d = 1, p = 0.7: loss = −[0.7·log σ(1) + 0.3·log σ(−1)]
    log σ(1) = −log(1 + e^−1) = −0.313262, log σ(−1) = −1.313262
    loss = 0.7·0.313262 + 0.3·1.313262 = 0.219283 + 0.393979 = 0.613262"""
    loss = soft_bt_loss(torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([0.7]))
    assert loss.item() == pytest.approx(0.613262, abs=1e-6)


def test_soft_bt_loss_hard_label_and_batch_mean():
    """p = 1 (default): loss = −log σ(d). Batch d = [0, 2]: (log 2 + log(1 + e^−2)) / 2
    = (0.693147 + 0.126928) / 2 = 0.410038"""
    loss = soft_bt_loss(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(0.410038, abs=1e-6)


def test_soft_bt_half_label_is_symmetric_with_zero_gradient_at_zero_margin():
    """p = 0.5: loss(d) = −½[log σ(d) + log σ(−d)] = loss(−d); dloss/dd = σ(d) − p = 0 at d = 0,
    and the loss there is log 2 = 0.693147."""
    d = torch.tensor([0.0], requires_grad=True)
    loss = soft_bt_loss(d, torch.zeros(1), 0.5)
    loss.backward()
    assert d.grad.item() == pytest.approx(0.0, abs=1e-8)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    for value in (0.3, 1.7, 5.0):
        assert soft_bt_loss(torch.tensor([value]), torch.zeros(1), 0.5).item() == pytest.approx(
            soft_bt_loss(torch.tensor([-value]), torch.zeros(1), 0.5).item(), abs=1e-7)


def test_soft_bt_gradient_is_sigmoid_minus_p():
    """dloss/dd = −[p(1 − σ(d)) − (1 − p)σ(d)] = σ(d) − p. d = 0.5, p = 0.9: σ(0.5) = 0.622459 → −0.277541"""
    d = torch.tensor([0.5], requires_grad=True)
    soft_bt_loss(d, torch.zeros(1), 0.9).backward()
    assert d.grad.item() == pytest.approx(0.622459 - 0.9, abs=1e-6)


def test_soft_bt_loss_is_finite_for_huge_margins():
    """logsigmoid: d = −200, p = 1 → loss = −log σ(−200) ≈ 200 (a naive log(sigmoid) gives inf)."""
    loss = soft_bt_loss(torch.tensor([-200.0]), torch.zeros(1), 1.0)
    assert loss.item() == pytest.approx(200.0, rel=1e-6)


def test_dpo_loss_hard_label():
    """β = 0.1; policy c/r = −10/−12, reference c/r = −11/−11:
    chosen reward = 0.1·(−10 + 11) = 0.1, rejected reward = 0.1·(−12 + 11) = −0.1, Δ = 0.2
    loss = −log σ(0.2) = log(1 + e^−0.2) = 0.598139"""
    out = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), beta=0.1)
    assert out.loss.item() == pytest.approx(0.598139, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(0.1, abs=1e-6)
    assert out.rejected_rewards.item() == pytest.approx(-0.1, abs=1e-6)
    assert out.margins.item() == pytest.approx(0.2, abs=1e-6)


def test_dpo_loss_soft_label():
    """Same Δ = 0.2 with p = 0.25: loss = −[0.25·log σ(0.2) + 0.75·log σ(−0.2)]
    = 0.25·0.598139 + 0.75·0.798139 = 0.149535 + 0.598604 = 0.748139"""
    out = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]),
                   beta=0.1, p=torch.tensor([0.25]))
    assert out.loss.item() == pytest.approx(0.748139, abs=1e-6)


def test_dpo_gradient_flows_to_policy_only_and_rewards_are_detached():
    """Δ = β(pc − rc − pr + rr); dloss/dΔ = σ(Δ) − p, so dloss/dpc = β(σ(Δ) − p).
    Δ = 0, p = 1, β = 0.1 → 0.1·(0.5 − 1) = −0.05."""
    policy_chosen = torch.tensor([-5.0], requires_grad=True)
    out = dpo_loss(policy_chosen, torch.tensor([-5.0]), torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.1)
    out.loss.backward()
    assert policy_chosen.grad.item() == pytest.approx(-0.05, abs=1e-7)
    assert not out.margins.requires_grad


def test_kto_loss_desirable_and_undesirable():
    """β = 0.5, z0 = max(0.4, 0) = 0.4; r = policy − reference = [1.0, 1.0]:
    desirable: λ_D(1 − σ(0.5·(1 − 0.4))) = 1.0·(1 − σ(0.3)) = 1 − 0.574443 = 0.425557
    undesirable: λ_U(1 − σ(0.5·(0.4 − 1))) = 2.0·(1 − σ(−0.3)) = 2·0.574443 = 1.148885
    mean = (0.425557 + 1.148885) / 2 = 0.787221"""
    out = kto_loss(torch.tensor([-4.0, -4.0]), torch.tensor([-5.0, -5.0]), torch.tensor([True, False]),
                   kl_estimate=torch.tensor(0.4), beta=0.5, lambda_d=1.0, lambda_u=2.0)
    assert out.loss.item() == pytest.approx(0.787221, abs=1e-6)
    assert out.z0.item() == pytest.approx(0.4)


def test_kto_reference_point_is_clamped_and_detached():
    """A negative KL estimate −3 gives z0 = 0: desirable r = 0 → 1 − σ(0) = 0.5; no gradient reaches the estimate."""
    kl = torch.tensor(-3.0, requires_grad=True)
    policy = torch.tensor([-5.0], requires_grad=True)
    out = kto_loss(policy, torch.tensor([-5.0]), torch.tensor([True]), kl_estimate=kl, beta=1.0)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.5, abs=1e-7)
    assert kl.grad is None
    assert policy.grad.item() == pytest.approx(-0.25, abs=1e-7)  # −σ'(0) = −0.25


def two_token_logits() -> torch.Tensor:
    """Vocabulary of 2; logits [0, log 3] at each position → p(token 1) = 3/4, p(token 0) = 1/4."""
    return torch.tensor([[[0.0, math.log(3.0)]] * 3])


def test_sequence_logprobs_sum_and_mean():
    """labels [0, 1, 0]; positions 1 and 2 are scored (shifted): log p(1) + log p(0) = log ¾ + log ¼
    = −0.287682 − 1.386294 = −1.673976; mean over the 2 counted tokens = −0.836988.
    With mask [1, 1, 0] only the token at position 1 counts: log ¾ = −0.287682."""
    logits, labels = two_token_logits(), torch.tensor([[0, 1, 0]])
    assert sequence_logprobs(logits, labels, torch.ones(1, 3)).item() == pytest.approx(-1.673976, abs=1e-6)
    assert sequence_logprobs(logits, labels, torch.ones(1, 3), average=True).item() == pytest.approx(-0.836988, abs=1e-6)
    assert sequence_logprobs(logits, labels, torch.tensor([[1, 1, 0]])).item() == pytest.approx(-0.287682, abs=1e-6)
    assert token_logprobs(logits, labels).shape == (1, 2)


def test_sft_loss_masks_ignored_tokens_and_counts_them():
    """labels [0, −100, 0]: only position 2 (token 0, p = ¼) counts: loss = log 4 = 1.386294, n = 1.
    labels [0, 1, 0]: mean of −log ¾ and −log ¼ = (0.287682 + 1.386294) / 2 = 0.836988, n = 2."""
    loss, n = sft_loss(two_token_logits(), torch.tensor([[0, -100, 0]]))
    assert loss.item() == pytest.approx(1.386294, abs=1e-6) and n.item() == 1
    loss, n = sft_loss(two_token_logits(), torch.tensor([[0, 1, 0]]))
    assert loss.item() == pytest.approx(0.836988, abs=1e-6) and n.item() == 2


def test_sft_loss_with_nothing_to_train_is_zero_not_nan():
    logits = two_token_logits().requires_grad_(True)
    loss, n = sft_loss(logits, torch.full((1, 3), -100))
    loss.backward()
    assert n.item() == 0 and loss.item() == 0.0 and not torch.isnan(logits.grad).any()
