"""Training losses as pure functions of tensors (no models, no state), so each one is testable alone.

Shape conventions used throughout:
- ``logits``: ``[B, T, V]`` from a causal LM run on ``input_ids`` ``[B, T]``.
- ``labels``: ``[B, T]``, aligned with ``input_ids`` (labels are usually the input ids themselves);
  the functions shift internally: the logits at position ``t`` predict the label at ``t + 1``.
- ``mask``: ``[B, T]``, aligned with ``labels``; 1 for tokens whose log-probability counts.

Every function's docstring states its formula; ``tests/test_losses.py`` checks them against numbers
computed by hand.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each next token: ``out[b, t] = log softmax(logits[b, t])[labels[b, t + 1]]``.

    Returns ``[B, T - 1]`` (position ``t`` of the result scores token ``t + 1`` of ``labels``).
    Label values outside the vocabulary (e.g. ``-100``) are read as token 0; mask them out yourself.
    """
    shifted_logits = logits[:, :-1, :].float()
    targets = labels[:, 1:].clamp(min=0).unsqueeze(-1)
    # gather - logsumexp instead of log_softmax(...).gather: never materialises a second [B, T, V] tensor.
    picked = shifted_logits.gather(-1, targets).squeeze(-1)
    return picked - torch.logsumexp(shifted_logits, dim=-1)


def sequence_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, average: bool = False
) -> torch.Tensor:
    """Per-sequence log-probability of the masked tokens: ``[B]``.

    ``sum_t mask[b, t+1] · log p(labels[b, t+1] | labels[b, ≤t])``; with ``average=True`` it is divided
    by the number of counted tokens ``sum_t mask[b, t+1]`` (a sequence with none gives 0, not NaN).
    """
    per_token = token_logprobs(logits, labels)
    shifted_mask = mask[:, 1:].to(per_token.dtype)
    summed = (per_token * shifted_mask).sum(-1)
    if not average:
        return summed
    return summed / shifted_mask.sum(-1).clamp(min=1.0)


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token cross-entropy for supervised fine-tuning: ``(loss, n_tokens)``.

    ``loss = −(1/N) Σ_{b,t : labels[b,t+1] ≠ ignore_index} log p(labels[b,t+1] | prefix)``, where N is
    the number of counted tokens (returned as ``n_tokens``, a 0-d long tensor). With N = 0 the loss is
    an exact 0 that still has a graph (so a batch with no assistant tokens does not produce NaN).
    """
    shifted_logits = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    n_tokens = (targets != ignore_index).sum()
    summed = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.size(-1)),
        targets.reshape(-1),
        ignore_index=ignore_index,
        reduction="sum",
    )
    return summed / n_tokens.clamp(min=1), n_tokens


def soft_bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, p: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Soft-label Bradley–Terry loss for a preference model, mean over the batch.

    With ``d = r_chosen − r_rejected`` and ``p = P(chosen ≻ rejected)`` (the AI label; hard labels are
    ``p = 1``): ``loss = −[p · log σ(d) + (1 − p) · log σ(−d)]``. Written with ``logsigmoid`` so large
    ``|d|`` stays finite. Its gradient wrt ``d`` is ``σ(d) − p``: zero exactly when ``σ(d) = p``.
    """
    d = r_chosen.float() - r_rejected.float()
    p = torch.as_tensor(p, dtype=d.dtype, device=d.device)
    return -(p * F.logsigmoid(d) + (1 - p) * F.logsigmoid(-d)).mean()


class DPOOutput(NamedTuple):
    loss: torch.Tensor  # scalar, mean over the batch
    chosen_rewards: torch.Tensor  # [B], detached: β (log π(c) − log π_ref(c))
    rejected_rewards: torch.Tensor  # [B], detached: β (log π(r) − log π_ref(r))
    margins: torch.Tensor  # [B], detached: chosen_rewards − rejected_rewards (= Δ)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
    p: torch.Tensor | float | None = None,
) -> DPOOutput:
    """Direct Preference Optimization with per-example soft labels.

    ``Δ = β [(log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))]`` (sequence log-probs, ``[B]`` each);
    ``loss = mean −[p · log σ(Δ) + (1 − p) · log σ(−Δ)]``; ``p = None`` means hard labels (``p = 1``,
    the original ``−log σ(Δ)``). Rewards and margins are returned detached, for logging.
    """
    chosen_rewards = beta * (policy_chosen_logps.float() - reference_chosen_logps.float())
    rejected_rewards = beta * (policy_rejected_logps.float() - reference_rejected_logps.float())
    margins = chosen_rewards - rejected_rewards
    p = 1.0 if p is None else p
    p = torch.as_tensor(p, dtype=margins.dtype, device=margins.device)
    loss = -(p * F.logsigmoid(margins) + (1 - p) * F.logsigmoid(-margins)).mean()
    return DPOOutput(loss, chosen_rewards.detach(), rejected_rewards.detach(), margins.detach())


class KTOOutput(NamedTuple):
    loss: torch.Tensor  # scalar, mean over the batch
    rewards: torch.Tensor  # [B], detached: r = log π(y|x) − log π_ref(y|x)
    z0: torch.Tensor  # 0-d, detached reference point max(kl_estimate, 0)


def kto_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    is_desirable: torch.Tensor,
    kl_estimate: torch.Tensor | float,
    beta: float,
    lambda_d: float = 1.0,
    lambda_u: float = 1.0,
) -> KTOOutput:
    """Kahneman–Tversky Optimization (Ethayarajh et al. 2024), mean over the batch.

    ``r = log π(y|x) − log π_ref(y|x)``; reference point ``z0 = max(kl_estimate, 0)``, detached (no
    gradient flows through the KL estimate). Per example:
    desirable ``λ_D · (1 − σ(β (r − z0)))``, undesirable ``λ_U · (1 − σ(β (z0 − r)))``.
    """
    rewards = policy_logps.float() - reference_logps.float()
    z0 = torch.as_tensor(kl_estimate, dtype=rewards.dtype, device=rewards.device).detach().clamp(min=0)
    desirable = is_desirable.to(torch.bool)
    desirable_losses = lambda_d * (1 - torch.sigmoid(beta * (rewards - z0)))
    undesirable_losses = lambda_u * (1 - torch.sigmoid(beta * (z0 - rewards)))
    losses = torch.where(desirable, desirable_losses, undesirable_losses)
    return KTOOutput(losses.mean(), rewards.detach(), z0)


# ---- PPO / RLOO ------------------------------------------------------------------------------------
# Owned by trainers/ppo.py. Shapes: everything per-token is ``[B, T]`` over the RESPONSE tokens only
# (position t = the t-th generated token); ``mask`` is 1 on real response tokens (up to and including
# EOS) and 0 on the padding after it, so the 1s always form a prefix of each row.
# Tests: tests/test_ppo_losses.py (hand-computed numbers in the docstrings).


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``Σ x·mask / Σ mask`` over all entries (a mask of all zeros gives 0, not NaN)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to zero mean and unit variance over its masked entries: ``(x − μ) / √(σ² + eps)``.

    μ and σ² (population variance) are taken over the entries where ``mask`` is 1; masked-out entries
    of the result are 0. With ``shift_mean=False`` only the scale changes (``x / √(σ² + eps)``): used for
    rewards, whose sign carries meaning.
    """
    maskf = mask.to(x.dtype)
    mean = masked_mean(x, maskf)
    var = masked_mean((x - mean) ** 2, maskf)
    out = (x - mean) if shift_mean else x
    return out * torch.rsqrt(var + eps) * maskf


def kl_penalized_rewards(
    score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO rewards: ``−β·(log π − log π_ref)`` at every response token, plus ``score`` at the last one.

    ``score`` is ``[B]`` (one reward-model score per sequence), the rest ``[B, T]``. Returns
    ``(rewards, kl)``, both ``[B, T]`` and zero where ``mask`` is 0; ``kl = log π − log π_ref`` is the
    per-token estimate whose sum over a sequence estimates KL(π‖π_ref) for that sample.
    """
    maskf = mask.to(logp.dtype)
    kl = (logp - ref_logp) * maskf
    rewards = -beta * kl
    last = (maskf.sum(-1).long() - 1).clamp(min=0)  # index of the last real token (EOS or the cut)
    rewards = rewards.scatter_add(1, last.unsqueeze(1), score.to(rewards.dtype).unsqueeze(1))
    return rewards * maskf, kl


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens: ``(advantages, returns)``.

    ``δ_t = r_t + γ·V_{t+1} − V_t`` with ``V_{t+1} = 0`` after the last real token (the episode ends
    there), and ``A_t = δ_t + γλ·A_{t+1}``; ``returns = A + V`` (the value head's regression target).
    Both outputs are 0 where ``mask`` is 0 and carry no gradient.
    """
    maskf = mask.to(values.dtype)
    rewards, values = rewards.detach() * maskf, values.detach() * maskf
    T = rewards.shape[1]
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = (delta + gamma * lam * next_adv) * maskf[:, t]
        advantages[:, t] = adv_t
        next_value, next_adv = values[:, t], adv_t  # both 0 on padding, so the episode ends at the last token
    return advantages, (advantages + values) * maskf


class PolicyLossOutput(NamedTuple):
    loss: torch.Tensor  # scalar: token-level mean of the clipped surrogate loss
    clip_fraction: torch.Tensor  # 0-d, detached: share of tokens where the clipped term was the active one
    approx_kl: torch.Tensor  # 0-d, detached: mean of ½(log ρ)², a cheap estimate of KL(π_old‖π_new)


def ppo_policy_loss(
    logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip: float
) -> PolicyLossOutput:
    """PPO clipped surrogate (Schulman et al. 2017), as a loss to minimise.

    ``ρ = exp(log π_new − log π_old)``; per token ``−min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)``, averaged over the
    tokens where ``mask`` is 1. With ``ρ = 1`` (first minibatch of an epoch) the gradient is the plain
    policy gradient ``−A·∇log π``.
    """
    log_ratio = (logp_new - logp_old.detach()).float()
    ratio = torch.exp(log_ratio)
    adv = adv.detach().float()
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask).detach()
    approx_kl = masked_mean(0.5 * log_ratio.detach() ** 2, mask)
    return PolicyLossOutput(loss, clip_fraction, approx_kl)


def ppo_value_loss(
    v_new: torch.Tensor, v_old: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: ``(loss, clip_fraction)``.

    ``V_clip = V_old + clip(V_new − V_old, −ε_v, ε_v)``; per token ``½·max((V_new − R)², (V_clip − R)²)``,
    averaged over masked tokens. ``clip_fraction`` (detached) is the share of tokens where the clipped
    error was the larger one.
    """
    v_new, v_old, returns = v_new.float(), v_old.detach().float(), returns.detach().float()
    v_clipped = v_old + torch.clamp(v_new - v_old, -clip, clip)
    err_new = (v_new - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err_new, err_clipped), mask)
    clip_fraction = masked_mean((err_clipped > err_new).float(), mask).detach()
    return loss, clip_fraction


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024): ``A_i = r_i − mean_{j≠i} r_j``.

    ``rewards`` is ``[N·k]`` with the k samples of each prompt next to each other
    (``[p0s0, p0s1, …, p0s(k−1), p1s0, …]``); returns the same shape. Needs ``k ≥ 2``.
    """
    if k < 2:
        raise ValueError(f"RLOO needs k >= 2 samples per prompt, got k={k}")
    if rewards.numel() % k:
        raise ValueError(f"rloo_advantages: {rewards.numel()} rewards is not a multiple of k={k}")
    grouped = rewards.reshape(-1, k)
    others_mean = (grouped.sum(-1, keepdim=True) - grouped) / (k - 1)
    return (grouped - others_mean).reshape(rewards.shape)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax at each position: ``H = logsumexp(z) − Σ softmax(z)·z`` (``[..., V] → [...]``)."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)


class AdaptiveKLController:
    """The KL coefficient β, fixed or adapted towards a target KL (Ziegler et al. 2019).

    With ``target`` set: after each rollout batch with measured KL ``k`` (mean over sequences of
    ``Σ_t log π − log π_ref``), ``e = clip(k / target − 1, −0.2, 0.2)`` and
    ``β ← β · (1 + e · n_steps / horizon)``: β grows while the policy drifts past the target and
    shrinks while it stays closer. With ``target=None`` β never changes.
    """

    def __init__(self, init_beta: float, target: float | None = None, horizon: int = 10000):
        if init_beta < 0:
            raise ValueError(f"the KL coefficient must be >= 0, got {init_beta}")
        if target is not None and target <= 0:
            raise ValueError(f"the target KL must be > 0, got {target}")
        self.value, self.target, self.horizon = float(init_beta), target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = float(state["value"]), state["target"], int(state["horizon"])


# ---- GRPO ------------------------------------------------------------------------------------------
# Owned by trainers/ppo.py (--algo grpo). Same shapes as PPO / RLOO above. Tests: tests/test_grpo_losses.py.


def grpo_advantages(rewards: torch.Tensor, k: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Group-normalised advantages (Shao et al. 2024, DeepSeekMath): ``A_i = (r_i − mean_g) / (std_g + eps)``.

    ``rewards`` is ``[N·k]`` with the k samples of each prompt side by side (as :func:`rloo_advantages`);
    ``std_g`` is the sample standard deviation (n − 1) of the group. ``scale=False`` keeps ``r_i − mean_g``
    (Dr. GRPO, Liu et al. 2025: dividing by the std up-weights prompts whose samples barely differ).
    A group whose rewards are all equal gets advantage 0. Needs ``k ≥ 2``.
    """
    if k < 2:
        raise ValueError(f"GRPO needs k >= 2 samples per prompt, got k={k}")
    if rewards.numel() % k:
        raise ValueError(f"grpo_advantages: {rewards.numel()} rewards is not a multiple of k={k}")
    grouped = rewards.float().reshape(-1, k)
    centred = grouped - grouped.mean(-1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(-1, keepdim=True) + eps)
    return centred.reshape(rewards.shape)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π‖π_ref) (Schulman 2020): ``exp(log π_ref − log π) − (log π_ref − log π) − 1``.

    Unbiased for samples from π, always ≥ 0, and lower-variance than ``log π − log π_ref``."""
    d = ref_logp.float() - logp.float()
    return torch.exp(d) - d - 1.0


class GRPOLossOutput(NamedTuple):
    loss: torch.Tensor  # scalar: clipped surrogate + β·KL, aggregated as asked
    clip_fraction: torch.Tensor  # 0-d, detached: share of tokens where the clipped term was active
    approx_kl: torch.Tensor  # 0-d, detached: mean ½(log ρ)² (old → new policy)
    kl: torch.Tensor  # 0-d, detached: mean k3 KL(π‖π_ref) per token (0 when there is no reference)


def grpo_loss(
    logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, clip: float,
    beta: float = 0.0, ref_logp: torch.Tensor | None = None, aggregation: str = "token",
) -> GRPOLossOutput:
    """GRPO loss to minimise: per token ``ℓ_t = −min(ρ_t·A, clip(ρ_t, 1−ε, 1+ε)·A) + β·k3_t``, with
    ``ρ_t = exp(log π_new − log π_old)`` and ``k3_t = k3_kl(log π_new, log π_ref)`` (β = 0 needs no reference).

    ``adv`` is ``[B]`` (one advantage per sequence, broadcast over its tokens) or ``[B, T]`` per token (e.g.
    already multiplied by importance weights). Aggregation over the masked tokens:
    ``"token"`` — ``Σ_{b,t} ℓ·m / Σ m`` (every token weighs the same; DAPO, Dr. GRPO);
    ``"sequence"`` — ``mean_b (Σ_t ℓ·m / Σ_t m)`` (each sequence weighs the same; the original GRPO).
    """
    if aggregation not in ("token", "sequence"):
        raise ValueError(f"aggregation must be 'token' or 'sequence', got {aggregation!r}")
    maskf = mask.to(torch.float32)
    adv = adv.detach().float()
    if adv.dim() == 1:
        adv = adv[:, None].expand_as(maskf)
    log_ratio = (logp_new - logp_old.detach()).float()
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    per_token = torch.maximum(unclipped, clipped)
    kl = torch.zeros_like(per_token)
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("grpo_loss: beta > 0 needs ref_logp")
        kl = k3_kl(logp_new, ref_logp.detach())
        per_token = per_token + beta * kl
    if aggregation == "token":
        loss = masked_mean(per_token, maskf)
    else:
        loss = ((per_token * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0)).mean()
    clip_fraction = masked_mean((clipped > unclipped).float(), maskf).detach()
    approx_kl = masked_mean(0.5 * log_ratio.detach() ** 2, maskf)
    return GRPOLossOutput(loss, clip_fraction, approx_kl, masked_mean(kl.detach(), maskf))


def truncated_is_weights(trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance weights ``min(π_trainer / π_sampler, cap)`` per token (Yao et al. 2025), detached:
    the correction for rollouts sampled by an engine (vLLM) whose log-probs differ from the trainer's for the
    same weights. Multiplying a token's advantage by its (positive) weight multiplies its clipped-surrogate
    loss by it."""
    return torch.exp(trainer_logp.float() - sampler_logp.float()).clamp(max=cap).detach()
