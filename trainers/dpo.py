"""Direct Preference Optimization (Rafailov et al. 2023) with per-example soft labels.

Data: rows with ``prompt`` (messages), ``chosen`` and ``rejected`` (assistant messages) and an optional
``p_chosen`` = P(chosen ≻ rejected) from the AI labeler (absent → 1.0, a hard label). The loss per pair
is ``−[p · log σ(Δ) + (1 − p) · log σ(−Δ)]`` with ``Δ = β[(log π(c) − log π_ref(c)) − (log π(r) −
log π_ref(r))]`` (``trainers.losses.dpo_loss``); log-probs are summed over the response tokens only.

The reference: by default the initial policy. ``--ref-mode precompute`` (default) runs it once over
the train and eval pairs before the first step and caches the numbers in OUT, so no second model is
held in memory and a resumed run reuses them; ``--ref-mode live`` keeps the reference model in memory
and runs it every step (with LoRA and no ``--ref-model`` that is the policy with its adapter switched
off, which costs no memory either). ``--ref-model M`` takes another model as the reference.

Response log-probs and the reference (precompute and cache, or live) are in trainers/reference.py,
shared with trainers/kto.py.
"""

from __future__ import annotations

import time
from typing import Any

from trainers.checkpoint import load_checkpoint, resume_checkpoint, save_checkpoint, save_final_model
from trainers.config import ConfigError, TrainConfig, config_to_dict, opt
from trainers.data import LengthReport, train_and_eval_rows
from trainers.distributed import all_sum, rank_shares, record_rows, sync_unless_last
from trainers.metrics import MetricsLogger, progress_bar
from trainers.models import (
    disable_dropout,
    load_model_and_tokenizer,
    make_accelerator,
    make_optimizer_and_scheduler,
    model_options,
    set_seed,
)
from trainers.plan import plan_steps
from trainers.reference import (
    collate_sequences,
    load_reference_model,
    reference_context,
    reference_logps_for,
    response_logps,
    tokenize_response,
)


class DPOConfig(TrainConfig):
    """Options of `cai train dpo` (plus those of TrainConfig)."""

    data_kind = "preference"  # which rows --data holds (a class attribute, not an option)
    lr: float = opt(1e-6, "peak learning rate (AdamW); DPO wants a much smaller one than SFT")
    beta: float = opt(0.1, "β: strength of the pull towards the reference (larger = stay closer)")
    ref_model: str | None = opt(None, "reference model (default: the initial policy, i.e. --model); must share its tokenizer")
    ref_mode: str = opt("precompute", "precompute: reference log-probs computed once before training and cached in OUT (no second model in memory) | live: the reference runs every step")
    ref_batch_size: int | None = opt(None, "sequences per forward pass when precomputing reference log-probs (default: 2 × --batch-size)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ref_mode not in ("precompute", "live"):
            raise ConfigError(f"--ref-mode must be precompute or live; got {self.ref_mode!r}")
        if not self.beta > 0:
            raise ConfigError(f"--beta must be > 0; got {self.beta}")
        if self.ref_batch_size is not None and self.ref_batch_size < 1:
            raise ConfigError(f"--ref-batch-size must be ≥ 1; got {self.ref_batch_size}")


# ---------------------------------------------------------------- data → token examples


def tokenize_pairs(rows: list[dict[str, Any]], tokenizer, report: LengthReport) -> list[dict[str, Any]]:
    """Each preference row → ``{"id", "chosen", "rejected", "p"}`` where chosen/rejected are (ids, mask);
    rows longer than --max-length are handled (and counted) by ``report``."""
    examples = []
    for row in rows:
        fitted = report.fit(
            row,
            tokenize_response(tokenizer, row["prompt"], row["chosen"]),
            tokenize_response(tokenizer, row["prompt"], row["rejected"]),
        )
        if fitted is None:
            continue
        p = row.get("p_chosen")
        examples.append({"id": row.get("id"), "chosen": fitted[0], "rejected": fitted[1],
                         "p": 1.0 if p is None else float(p)})
    return examples


# ---------------------------------------------------------------- the DPO step


def pair_sequences(examples: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    """All chosen sequences, then all rejected ones (the order of the reference cache and of a batch)."""
    return [e["chosen"] for e in examples] + [e["rejected"] for e in examples]


def dpo_forward(model, examples: list[dict[str, Any]], ref_chosen, ref_rejected, beta: float, pad_token_id: int,
                accelerator, live_reference=None):
    """DPOOutput of a micro-batch: chosen and rejected go through the policy as one batch of 2B.
    ``ref_chosen``/``ref_rejected`` are precomputed ``[B]`` tensors, or None with ``live_reference``
    = (model, context) to compute them now."""
    import torch

    from trainers.losses import dpo_loss

    batch = collate_sequences(pair_sequences(examples), pad_token_id, accelerator.device)
    n = len(examples)
    with accelerator.autocast():
        logps = response_logps(model, batch)
        if live_reference is not None:
            ref_model, context = live_reference
            with torch.no_grad(), context:
                ref = response_logps(ref_model, batch).detach()
            ref_chosen, ref_rejected = ref[:n], ref[n:]
    p = torch.tensor([e["p"] for e in examples], device=logps.device)
    out = dpo_loss(logps[:n], logps[n:], ref_chosen.to(logps.device), ref_rejected.to(logps.device), beta, p)
    return out, int(batch["attention_mask"].sum())


def dpo_metrics(outputs: list, weights: list[float], prefix: str = "", accelerator=None) -> dict[str, float]:
    """Example-weighted means of loss, rewards/chosen, rewards/rejected, rewards/margins and
    rewards/accuracy (share of pairs with Δ > 0) over several DPOOutputs — over all processes when
    ``accelerator`` is given (each rank passes its own outputs)."""
    import torch

    def total(values):
        return sum(float(v) * w for v, w in zip(values, weights))
    sums = [total(o.loss.item() for o in outputs), total(o.chosen_rewards.mean() for o in outputs),
            total(o.rejected_rewards.mean() for o in outputs), total(o.margins.mean() for o in outputs),
            total((o.margins > 0).to(torch.float32).mean() for o in outputs), sum(weights)]
    if accelerator is not None:
        sums = all_sum(accelerator, sums)
    *sums, count = sums
    names = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy")
    return {f"{prefix}{name}": value / count for name, value in zip(names, sums)}


def evaluate_dpo(model, examples, ref_values, config: DPOConfig, pad_token_id: int, accelerator, live=None):
    """DPO metrics (``eval_`` prefixed) over ``examples``, no gradient, policy in eval mode; ``live`` makes
    a fresh live-reference (model, context) per batch, or is None with precomputed ``ref_values``."""
    import torch

    n = len(examples)
    outputs, weights = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, n, config.batch_size):
            index = list(range(start, min(n, start + config.batch_size)))
            chunk = [examples[i] for i in index]
            ref_c = ref_r = None
            if ref_values is not None:
                ref_c, ref_r = ref_values[index], ref_values[[n + i for i in index]]
            out, _ = dpo_forward(model, chunk, ref_c, ref_r, config.beta, pad_token_id, accelerator, live() if live else None)
            outputs.append(out)
            weights.append(len(chunk))
    model.train()
    return dpo_metrics(outputs, weights, "eval_")


# ---------------------------------------------------------------- training


def train_dpo(config: DPOConfig) -> dict[str, Any]:
    """Train ``config.model`` with DPO on ``config.data``; returns the run summary (also OUT/summary.json)."""
    import torch

    set_seed(config.seed)
    accelerator = make_accelerator(config)  # first: the process group (several processes) is set up here
    rows, eval_rows, mix = train_and_eval_rows(config, "preference")

    model, tokenizer = load_model_and_tokenizer(config.model, **model_options(config))
    disable_dropout(model)
    train_report = LengthReport(config.max_length, config.on_long, "train")
    eval_report = LengthReport(config.max_length, config.on_long, "eval")
    train_examples = tokenize_pairs(rows, tokenizer, train_report)
    eval_examples = tokenize_pairs(eval_rows, tokenizer, eval_report)
    for message in (train_report.message(), eval_report.message()):
        if message:
            accelerator.print(message)

    plan = plan_steps(len(train_examples), config)
    optimizer, scheduler = make_optimizer_and_scheduler(model, config, plan.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    pad_id = tokenizer.pad_token_id

    # The reference, before any checkpoint is loaded: the model is still the initial policy here.
    ref_model, ref_train, ref_eval = None, None, None
    if config.ref_mode == "precompute":
        ref_train = reference_logps_for(pair_sequences(train_examples), config, model, tokenizer, accelerator, "train")
        if eval_examples:
            ref_eval = reference_logps_for(pair_sequences(eval_examples), config, model, tokenizer, accelerator, "eval")
    else:
        separate = config.ref_model is not None or config.lora_r == 0
        ref_model = load_reference_model(config, tokenizer, accelerator) if separate else None

    start_step = 0
    checkpoint = resume_checkpoint(config)
    if checkpoint is not None:
        start_step = load_checkpoint(checkpoint, accelerator, model, optimizer, scheduler, config, plan)["step"]
        accelerator.print(f"resuming from {checkpoint} (step {start_step} of {plan.total_steps})")
    logger = MetricsLogger(config.out, config, resume_step=start_step, main=accelerator.is_main_process)

    def live():  # a fresh (model, context) per use: disable_adapter() is a single-use context manager
        return reference_context(ref_model, model, accelerator) if config.ref_mode == "live" else None

    initial_eval = None
    if eval_examples and start_step == 0:
        initial_eval = evaluate_dpo(model, eval_examples, ref_eval, config, pad_id, accelerator, live)
        logger.log(0, initial_eval)

    n_train = len(train_examples)
    bar = progress_bar(plan.total_steps, start_step, "dpo", config.quiet or not accelerator.is_main_process)
    stop_at = plan.total_steps if config.stop_after_steps is None else min(plan.total_steps, start_step + config.stop_after_steps)
    metrics: dict[str, float] = {}
    for step in range(start_step, stop_at):
        began = time.perf_counter()
        micro_batches = plan.micro_batches(step)
        step_rows = sum(len(b) for b in micro_batches)
        shares = rank_shares(micro_batches, accelerator)  # this rank's slice of each micro-batch
        record_rows(accelerator, step + 1, shares)
        outputs, weights, step_tokens = [], [], 0
        for k, (indices, real) in enumerate(shares):
            ref_c = ref_r = None
            if ref_train is not None:
                ref_c, ref_r = ref_train[indices], ref_train[[n_train + i for i in indices]]
            with sync_unless_last(accelerator, model, k, len(shares)):
                out, tokens = dpo_forward(model, [train_examples[i] for i in indices], ref_c, ref_r, config.beta,
                                          pad_id, accelerator, live())
                # The step's loss is the mean over all its pairs: weight micro-batches by their share
                # (× the process count: DDP averages the ranks' gradients).
                accelerator.backward(out.loss * (len(indices) * accelerator.num_processes / step_rows if real else 0.0))
            if real:
                outputs.append(out)
                weights.append(len(indices))
                step_tokens += tokens
        step_tokens = int(all_sum(accelerator, [step_tokens])[0])
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm) if config.max_grad_norm > 0 else None
        optimizer.step()
        lr = scheduler.get_last_lr()[0]  # the rate this step used (before the schedule moves on)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        elapsed = time.perf_counter() - began
        metrics = {**dpo_metrics(outputs, weights, accelerator=accelerator), "lr": lr, "tokens": step_tokens,
                   "tokens_per_s": step_tokens / elapsed, "epoch": plan.epoch_of(step)}
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        if config.eval_every and eval_examples and (step + 1) % config.eval_every == 0:
            metrics.update(evaluate_dpo(model, eval_examples, ref_eval, config, pad_id, accelerator, live))
        logger.log(step + 1, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics['rewards/accuracy']:.2f}",
                        tok_s=f"{metrics['tokens_per_s']:.0f}")
        if (step + 1) % config.save_every == 0 or (step + 1 == stop_at and stop_at < plan.total_steps):
            save_checkpoint(config.out, step + 1, accelerator, model, optimizer, scheduler, config, plan)
    bar.close()
    if stop_at < plan.total_steps:
        logger.close()
        accelerator.print(f"stopped after step {stop_at} of {plan.total_steps} (--stop-after-steps); rerun the same command to continue")
        return {"stopped_at_step": stop_at, "total_steps": plan.total_steps, "out": config.out}

    final_eval = evaluate_dpo(model, eval_examples, ref_eval, config, pad_id, accelerator, live) if eval_examples else None
    if final_eval is not None:
        logger.log(plan.total_steps, final_eval)
    logger.close()
    summary = {
        "trainer": "dpo",
        "steps": plan.total_steps,
        "train_examples": n_train,
        "eval_examples": len(eval_examples),
        "last_train_metrics": metrics,
        "initial_eval": initial_eval,
        "final_eval": final_eval,
        "reference": {"model": config.ref_model or config.model, "mode": config.ref_mode},
        "data": mix,
        "length": {"train": train_report.summary(), "eval": eval_report.summary()},
        "config": config_to_dict(config),
        "device": str(accelerator.device),
        "torch": torch.__version__,
    }
    save_final_model(config.out, accelerator, model, tokenizer, summary)
    return summary
