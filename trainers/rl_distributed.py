"""PPO / RLOO / GRPO on several processes (torchrun / accelerate launch): which prompts each rank rolls out,
the cross-rank statistics, and the global minibatches of the update. Plumbing for ``trainers/ppo.py`` and
``trainers/ppo_update.py``; with one process every function reduces to the one-process computation.

- Prompts: an iteration's ``batch_size`` prompts (the global step plan, as sft/pm/dpo/kto) are dealt out
  ``rows[rank::world]``; each rank samples all k responses of its prompts, so RLOO / GRPO groups never
  straddle ranks. Sampling uses a per-rank RNG stream (seed + rank), so ranks do not draw the same noise.
- Statistics that span the batch are reduced over ranks: the running reward moments, the whitening of
  PPO / RLOO advantages, the KL fed to the adaptive controller, and every logged mean.
- Update: the minibatches are drawn from the GLOBAL sample list with a generator seeded by (seed, step,
  epoch) — the same on every rank and under any process count. A rank computes its own samples of each
  minibatch and scales its (mean) loss by ``world × its share`` of the minibatch's tokens (or sequences),
  so DDP's gradient average is the one-process gradient. A rank with no sample in a minibatch runs a
  stand-in with weight 0 (DDP's collectives must line up).
"""

from __future__ import annotations

import torch

from trainers.distributed import all_sum


def my_prompts(rows: list[int], accelerator) -> list[int]:
    """This rank's prompts of the iteration: ``rows[rank::world]``."""
    return rows[accelerator.process_index :: accelerator.num_processes]


def sample_location(g: int, k: int, world: int) -> tuple[int, int]:
    """``(rank, local index)`` of global sample ``g``: prompt ``j = g // k`` (its ``s = g % k``-th sample)
    lives on rank ``j % world`` at local index ``(j // world)·k + s``."""
    j, s = divmod(g, k)
    return j % world, (j // world) * k + s


def minibatch_shares(n_prompts: int, k: int, minibatch_size: int, generator: torch.Generator, accelerator):
    """This rank's ``(local indices, real)`` for each global minibatch of one epoch over ``n_prompts × k``
    samples; ``([0], False)`` — a stand-in — where the minibatch holds none of this rank's samples."""
    world, rank = accelerator.num_processes, accelerator.process_index
    order = torch.randperm(n_prompts * k, generator=generator).tolist()
    shares = []
    for start in range(0, len(order), minibatch_size):
        mine = [local for r, local in (sample_location(g, k, world) for g in order[start : start + minibatch_size]) if r == rank]
        shares.append((mine, True) if mine else ([0], False))
    return shares


def update_generator(seed: int, step: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 1_009 + epoch)


def global_means(accelerator, sums: dict[str, tuple[float, float]]) -> dict[str, float]:
    """``{name: Σ_ranks sum / Σ_ranks count}`` for ``{name: (sum, count)}`` (0 where the count is 0)."""
    names = list(sums)
    flat = all_sum(accelerator, [v for name in names for v in sums[name]])
    return {name: flat[2 * i] / flat[2 * i + 1] if flat[2 * i + 1] else 0.0 for i, name in enumerate(names)}


def update_moments(moments, scores: torch.Tensor, accelerator) -> None:
    """The running reward moments over every rank's scores (one process: ``moments.update(scores)``)."""
    if accelerator.num_processes == 1:
        moments.update(scores)
        return
    s = scores.double()
    n, total, squares = all_sum(accelerator, [s.numel(), s.sum().item(), (s * s).sum().item()])
    mean = total / n
    moments.update_stats(int(n), mean, max(squares / n - mean * mean, 0.0))


def whiten_across(x: torch.Tensor, mask: torch.Tensor, accelerator, eps: float = 1e-8) -> torch.Tensor:
    """``losses.whiten`` with the mean and variance taken over the masked entries of every rank."""
    from trainers.losses import whiten

    if accelerator.num_processes == 1:
        return whiten(x, mask)
    m = mask.to(x.dtype)
    n, total = all_sum(accelerator, [m.sum().item(), (x * m).sum().item()])
    mean = total / max(n, 1.0)
    (squares,) = all_sum(accelerator, [(((x - mean) ** 2) * m).sum().item()])
    return (x - mean) * torch.rsqrt(torch.tensor(squares / max(n, 1.0) + eps, dtype=x.dtype)) * m


def iteration_metrics(accelerator, raw_scores: torch.Tensor, seq_kl: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor,
                      finished: torch.Tensor) -> dict[str, float]:
    """The per-iteration means logged by the RL trainer, over every rank's samples: reward (and its population
    std), KL per sequence, entropy per token, response length, share of responses that ended with EOS, and
    ``samples`` (how many there were in all)."""
    s, m = raw_scores.double(), mask.double()
    n = float(len(s))
    means = global_means(accelerator, {
        "reward": (s.sum().item(), n), "reward_sq": ((s * s).sum().item(), n), "kl": (seq_kl.double().sum().item(), n),
        "entropy": ((entropy.double() * m).sum().item(), m.sum().item()), "response_length": (m.sum().item(), n),
        "eos_fraction": (finished.double().sum().item(), n), "samples": (n, 1.0),
    })
    reward_sq = means.pop("reward_sq")
    means["reward_std"] = max(reward_sq - means["reward"] ** 2, 0.0) ** 0.5
    means["samples"] *= accelerator.num_processes  # mean of the per-rank counts × ranks = the total
    return means
