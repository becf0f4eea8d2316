"""Steps 3 and 4 of a PPO / RLOO iteration (``trainers/ppo.py``): advantages from the rollout's scores and
log-probs, then the clipped-surrogate update passes over the rollout batch.

The arithmetic is in ``trainers/losses.py`` (pure functions, looked up at call time); this module wires
it to the config, the prepared model and the optimizer. torch is imported inside the functions.
"""

from __future__ import annotations


def compute_advantages(config, scores, old_logp, ref_logp, old_values, mask, beta: float, accelerator=None):
    """``(advantages [B, R], returns [B, R] or None, per-token KL [B, R])`` of a scored rollout.

    PPO: per-token reward ``−β·(log π − log π_ref)`` plus the score at the last token, GAE over the value
    head's estimates (``gamma``, ``lam``). RLOO: sequence reward ``score − β·Σ(log π − log π_ref)``, advantage
    ``r_i − mean of the other k − 1 samples of its prompt`` on every token, no returns (no value head).
    Both are whitened over the batch with ``--whiten-advantages``. GRPO: ``(score − group mean) / group std``
    (``--no-scale-rewards``: not divided) on every token; never whitened (the groups normalise it).
    With several processes (``accelerator``) the whitening statistics span every rank's rollout.
    """
    import torch

    from trainers.losses import compute_gae, grpo_advantages, kl_penalized_rewards, rloo_advantages, whiten
    from trainers.rl_distributed import whiten_across

    if accelerator is not None and accelerator.num_processes > 1:
        whiten = lambda x, m: whiten_across(x, m, accelerator)  # noqa: E731

    if config.algo == "ppo":
        token_rewards, kl = kl_penalized_rewards(scores, old_logp, ref_logp, mask, beta)
        advantages, returns = compute_gae(token_rewards, old_values, mask, config.gamma, config.lam)
        if config.whiten_advantages:
            advantages = whiten(advantages, mask)
        return advantages, returns, kl
    kl = (old_logp - ref_logp) * mask
    if config.algo == "grpo":  # the KL term is in the loss (k3, per token), not in the reward
        return grpo_advantages(scores, config.group_size, config.scale_rewards)[:, None] * mask, None, kl
    seq_adv = rloo_advantages(scores - beta * kl.sum(-1), config.rloo_k)
    if config.whiten_advantages:
        seq_adv = whiten(seq_adv, torch.ones_like(seq_adv))
    return seq_adv[:, None] * mask, None, kl


def ppo_update(model, optimizer, scheduler, accelerator, roll, mask, old_logp, old_values, advantages, returns,
               config, ref_logp=None, beta: float = 0.0, step: int = 0) -> tuple[dict[str, float], float]:
    """``config.ppo_epochs`` passes over the rollout in shuffled minibatches of ``config.minibatch_size``,
    one optimizer (and scheduler) step each: clipped surrogate, plus ``vf_coef ×`` the clipped value loss
    for PPO; GRPO: ``grpo_loss`` (the clipped surrogate plus ``beta ×`` the k3 KL to ``ref_logp``, aggregated per
    token or per sequence). Returns the mean of each statistic over the updates (policy_loss, clip_fraction,
    approx_kl, for PPO value_loss, value_clip_fraction, for GRPO kl_k3) and the learning rate the last update used.

    Minibatches are drawn from the global sample list (``trainers/rl_distributed.py``) with a generator seeded
    by (seed, ``step``, epoch); with several processes each rank computes its own samples of a minibatch and
    weights its loss by ``world ×`` its share of the minibatch's tokens (sequences, for GRPO's per-sequence
    aggregation), so the DDP-averaged gradient is the one-process gradient."""

    from trainers.distributed import all_sum
    from trainers.losses import grpo_loss, ppo_policy_loss, ppo_value_loss
    from trainers.rl_distributed import minibatch_shares, update_generator

    stats: dict[str, list[float]] = {"policy_loss": [], "clip_fraction": [], "approx_kl": [], "value_loss": [], "value_clip_fraction": [], "kl_k3": []}
    lr, world, k = 0.0, accelerator.num_processes, config.samples_per_prompt
    n_prompts = all_sum(accelerator, [len(roll) // k])[0]
    for epoch in range(config.ppo_epochs):
        for idx, real in minibatch_shares(int(n_prompts), k, config.minibatch_size, update_generator(config.seed, step, epoch), accelerator):
            part, m = roll.select(idx), mask[idx].to(accelerator.device)
            share = 1.0  # this rank's share of the global minibatch's tokens (sequences) — 0 for a stand-in
            if world > 1:
                per_sequence = config.algo == "grpo" and config.loss_aggregation == "sequence"
                mine = (len(idx) if per_sequence else m.sum().item()) if real else 0.0
                share = mine / max(all_sum(accelerator, [mine])[0], 1e-12)
            with accelerator.autocast():
                logp, values, _ = model(part, config.temperature, with_values=config.algo == "ppo")
                if config.algo == "grpo":
                    pg = grpo_loss(logp, old_logp[idx].to(logp.device), advantages[idx].to(logp.device), m, config.clip_range, beta,
                                   None if beta == 0 else ref_logp[idx].to(logp.device), config.loss_aggregation)
                    stats["kl_k3"].append(pg.kl.item() * share)
                else:
                    pg = ppo_policy_loss(logp, old_logp[idx].to(logp.device), advantages[idx].to(logp.device), m, config.clip_range)
                loss = pg.loss
                if values is not None:
                    v_loss, v_clip = ppo_value_loss(values, old_values[idx].to(logp.device), returns[idx].to(logp.device), m,
                                                    config.value_clip_range)
                    loss = loss + config.vf_coef * v_loss
                    stats["value_loss"].append(v_loss.item() * share)
                    stats["value_clip_fraction"].append(v_clip.item() * share)
            accelerator.backward(loss * (world * share) if world > 1 else loss)  # DDP averages over the ranks
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            lr = scheduler.get_last_lr()[0]  # the rate this update used (before the schedule moves on)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stats["policy_loss"].append(pg.loss.item() * share)
            stats["clip_fraction"].append(pg.clip_fraction.item() * share)
            stats["approx_kl"].append(pg.approx_kl.item() * share)
    # each minibatch's statistic is the share-weighted sum of the ranks' (its global value); then the mean
    names = [name for name, values in stats.items() if values]
    totals = all_sum(accelerator, [sum(stats[name]) for name in names])
    return {name: total / len(stats[name]) for name, total in zip(names, totals)}, lr
