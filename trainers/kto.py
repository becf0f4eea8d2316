"""Kahneman–Tversky Optimization (Ethayarajh et al. 2024): learn from single responses labelled
desirable or undesirable (the toolkit's binary-label export: ``prompt``, ``completion``, ``label``).

Per example, with ``r = log π(y|x) − log π_ref(y|x)`` summed over the response tokens and the reference
point ``z0 = max(KL estimate, 0)`` (no gradient): desirable ``λ_D · (1 − σ(β(r − z0)))``, undesirable
``λ_U · (1 − σ(β(z0 − r)))`` (``trainers.losses.kto_loss``).

The KL estimate: every row gets a fixed *mismatched* partner, its prompt with another row's completion
(the completions of a seeded shuffle of the rows shifted by one); a step's estimate is the mean of
``log π − log π_ref`` over its rows' mismatched pairs, under no gradient. Because the pairing is fixed
before training, the reference log-probs of the mismatched pairs are precomputed with the others.

``--balance`` sets ``λ_U = λ_D · n_D / n_U`` so both classes weigh the same in total (the paper's advice
when the classes are unbalanced). The reference options are the same as DPO's (trainers/dpo.py); the
log-prob and reference helpers both use are in trainers/reference.py.
"""

from __future__ import annotations

import time
from typing import Any

from trainers.checkpoint import load_checkpoint, resume_checkpoint, save_checkpoint, save_final_model
from trainers.config import ConfigError, TrainConfig, config_to_dict, opt
from trainers.data import DataError, LengthReport, train_and_eval_rows
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


class KTOConfig(TrainConfig):
    """Options of `cai train kto` (plus those of TrainConfig)."""

    data_kind = "kto"  # which rows --data holds (a class attribute, not an option)
    lr: float = opt(1e-6, "peak learning rate (AdamW); KTO, like DPO, wants a much smaller one than SFT")
    beta: float = opt(0.1, "β: strength of the pull towards the reference (larger = stay closer)")
    desirable_weight: float = opt(1.0, "λ_D: weight of the desirable examples' loss")
    undesirable_weight: float = opt(1.0, "λ_U: weight of the undesirable examples' loss (ignored with --balance)")
    balance: bool = opt(False, "set λ_U = λ_D · n_desirable / n_undesirable so both classes weigh the same")
    ref_model: str | None = opt(None, "reference model (default: the initial policy, i.e. --model); must share its tokenizer")
    ref_mode: str = opt("precompute", "precompute: reference log-probs computed once before training and cached in OUT (no second model in memory) | live: the reference runs every step")
    ref_batch_size: int | None = opt(None, "sequences per forward pass when precomputing reference log-probs (default: 2 × --batch-size)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ref_mode not in ("precompute", "live"):
            raise ConfigError(f"--ref-mode must be precompute or live; got {self.ref_mode!r}")
        if not self.beta > 0:
            raise ConfigError(f"--beta must be > 0; got {self.beta}")
        if self.desirable_weight < 0 or self.undesirable_weight < 0:
            raise ConfigError("--desirable-weight and --undesirable-weight must be ≥ 0")
        if self.ref_batch_size is not None and self.ref_batch_size < 1:
            raise ConfigError(f"--ref-batch-size must be ≥ 1; got {self.ref_batch_size}")


# ---------------------------------------------------------------- data → token examples


def mismatched_partners(n: int, seed: int) -> list[int]:
    """``partner[i]`` ≠ i (for n ≥ 2): rows in a seeded random order, each paired with the next one's
    completion (cyclically). Random order, so rows that share a prompt (adjacent in most exports)
    rarely pair with each other."""
    import numpy as np

    order = np.random.default_rng([seed, 1543]).permutation(n).tolist()
    partner = [0] * n
    for k, row in enumerate(order):
        partner[row] = order[(k + 1) % n]
    return partner


def tokenize_kto_rows(rows: list[dict[str, Any]], tokenizer, report: LengthReport, seed: int) -> list[dict[str, Any]]:
    """Each row → ``{"id", "sequence", "kl_sequence", "desirable"}``: (ids, mask) of its prompt with its
    completion, and of its prompt with its mismatched partner's completion."""
    if len(rows) < 2:
        raise DataError(f"KTO needs at least 2 rows (the KL estimate pairs prompts with other rows' completions); got {len(rows)}")
    partner = mismatched_partners(len(rows), seed)
    examples = []
    for i, row in enumerate(rows):
        fitted = report.fit(
            row,
            tokenize_response(tokenizer, row["prompt"], row["completion"]),
            tokenize_response(tokenizer, row["prompt"], rows[partner[i]]["completion"]),
        )
        if fitted is not None:
            examples.append({"id": row.get("id"), "sequence": fitted[0], "kl_sequence": fitted[1],
                             "desirable": bool(row["label"])})
    return examples


def class_weights(examples: list[dict[str, Any]], config: KTOConfig) -> tuple[float, float]:
    """(λ_D, λ_U); with --balance λ_U = λ_D · n_D / n_U."""
    n_desirable = sum(e["desirable"] for e in examples)
    n_undesirable = len(examples) - n_desirable
    if not config.balance:
        return config.desirable_weight, config.undesirable_weight
    if n_desirable == 0 or n_undesirable == 0:
        raise ConfigError(f"--balance needs both desirable and undesirable examples; the training data has "
                         f"{n_desirable} desirable and {n_undesirable} undesirable")
    return config.desirable_weight, config.desirable_weight * n_desirable / n_undesirable


def kto_sequences(examples: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    """All matched sequences, then all mismatched (KL) ones: the order of the reference cache."""
    return [e["sequence"] for e in examples] + [e["kl_sequence"] for e in examples]


# ---------------------------------------------------------------- the KTO step


def kl_estimate(model, examples, ref_kl, pad_token_id: int, accelerator, live_reference=None):
    """Mean of ``log π − log π_ref`` over the mismatched pairs of ``examples`` (no gradient), a 0-d
    tensor; ``ref_kl`` is the precomputed ``[B]`` reference, or None with ``live_reference``."""
    import torch

    batch = collate_sequences([e["kl_sequence"] for e in examples], pad_token_id, accelerator.device)
    with torch.no_grad(), accelerator.autocast():
        policy = response_logps(model, batch)
        if live_reference is not None:
            ref_model, context = live_reference
            with context:
                ref_kl = response_logps(ref_model, batch)
    return (policy.float() - ref_kl.to(policy.device).float()).mean()


def kto_forward(model, examples, ref_logps, z0, config: KTOConfig, weights: tuple[float, float], pad_token_id: int,
                accelerator, live_reference=None):
    """(KTOOutput, tokens) of a micro-batch given its reference point ``z0``."""
    import torch

    from trainers.losses import kto_loss

    batch = collate_sequences([e["sequence"] for e in examples], pad_token_id, accelerator.device)
    with accelerator.autocast():
        logps = response_logps(model, batch)
        if live_reference is not None:
            ref_model, context = live_reference
            with torch.no_grad(), context:
                ref_logps = response_logps(ref_model, batch).detach()
    desirable = torch.tensor([e["desirable"] for e in examples], device=logps.device)
    out = kto_loss(logps, ref_logps.to(logps.device), desirable, z0, config.beta, *weights)
    return out, int(batch["attention_mask"].sum())


def kto_metrics(outputs: list, examples_per_output: list[list[dict]], prefix: str = "", accelerator=None) -> dict[str, float]:
    """Example-weighted loss, mean reward of each class (when present), their margin, and the mean
    reference point ``kl`` (= z0, after clamping at 0) — over all processes when ``accelerator`` is
    given (each rank passes its own outputs)."""
    sizes = [len(e) for e in examples_per_output]
    sums = [sum(o.loss.item() * n for o, n in zip(outputs, sizes)), sum(o.z0.item() * n for o, n in zip(outputs, sizes)), sum(sizes)]
    for wanted in (True, False):
        rewards = [float(r) for o, ex in zip(outputs, examples_per_output) for r, e in zip(o.rewards, ex) if e["desirable"] == wanted]
        sums += [sum(rewards), len(rewards)]
    if accelerator is not None:
        sums = all_sum(accelerator, sums)
    loss, kl, count, desirable, n_desirable, undesirable, n_undesirable = sums
    metrics = {f"{prefix}loss": loss / count, f"{prefix}kl": kl / count}
    if n_desirable:
        metrics[f"{prefix}rewards/desirable"] = desirable / n_desirable
    if n_undesirable:
        metrics[f"{prefix}rewards/undesirable"] = undesirable / n_undesirable
    if n_desirable and n_undesirable:
        metrics[f"{prefix}rewards/margins"] = metrics[f"{prefix}rewards/desirable"] - metrics[f"{prefix}rewards/undesirable"]
    return metrics


def evaluate_kto(model, examples, ref_values, config: KTOConfig, weights, pad_token_id: int, accelerator, live=None):
    """KTO metrics (``eval_`` prefixed) over ``examples``; z0 is estimated per eval batch. ``live`` makes
    a fresh live-reference (model, context) per use, or is None with precomputed ``ref_values``."""
    import torch

    n = len(examples)
    outputs, chunks = [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, n, config.batch_size):
            index = list(range(start, min(n, start + config.batch_size)))
            chunk = [examples[i] for i in index]
            ref, ref_kl = (None, None) if ref_values is None else (ref_values[index], ref_values[[n + i for i in index]])
            z0 = kl_estimate(model, chunk, ref_kl, pad_token_id, accelerator, live() if live else None)
            out, _ = kto_forward(model, chunk, ref, z0, config, weights, pad_token_id, accelerator, live() if live else None)
            outputs.append(out)
            chunks.append(chunk)
    model.train()
    return kto_metrics(outputs, chunks, "eval_")


# ---------------------------------------------------------------- training


def train_kto(config: KTOConfig) -> dict[str, Any]:
    """Train ``config.model`` with KTO on ``config.data``; returns the run summary (also OUT/summary.json)."""
    import torch

    set_seed(config.seed)
    accelerator = make_accelerator(config)  # first: the process group (several processes) is set up here
    rows, eval_rows, mix = train_and_eval_rows(config, "kto")

    model, tokenizer = load_model_and_tokenizer(config.model, **model_options(config))
    disable_dropout(model)
    train_report = LengthReport(config.max_length, config.on_long, "train")
    eval_report = LengthReport(config.max_length, config.on_long, "eval")
    train_examples = tokenize_kto_rows(rows, tokenizer, train_report, config.seed)
    eval_examples = tokenize_kto_rows(eval_rows, tokenizer, eval_report, config.seed) if len(eval_rows) >= 2 else []
    for message in (train_report.message(), eval_report.message()):
        if message:
            accelerator.print(message)
    weights = class_weights(train_examples, config)

    plan = plan_steps(len(train_examples), config)
    optimizer, scheduler = make_optimizer_and_scheduler(model, config, plan.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    pad_id = tokenizer.pad_token_id

    # The reference, before any checkpoint is loaded: the model is still the initial policy here.
    ref_model, ref_train, ref_eval = None, None, None
    if config.ref_mode == "precompute":
        ref_train = reference_logps_for(kto_sequences(train_examples), config, model, tokenizer, accelerator, "train")
        if eval_examples:
            ref_eval = reference_logps_for(kto_sequences(eval_examples), config, model, tokenizer, accelerator, "eval")
    elif config.ref_model is not None or config.lora_r == 0:
        ref_model = load_reference_model(config, tokenizer, accelerator)

    def live():  # a fresh (model, context) per use: disable_adapter() is a single-use context manager
        return reference_context(ref_model, model, accelerator) if config.ref_mode == "live" else None

    start_step = 0
    checkpoint = resume_checkpoint(config)
    if checkpoint is not None:
        start_step = load_checkpoint(checkpoint, accelerator, model, optimizer, scheduler, config, plan)["step"]
        accelerator.print(f"resuming from {checkpoint} (step {start_step} of {plan.total_steps})")
    logger = MetricsLogger(config.out, config, resume_step=start_step, main=accelerator.is_main_process)
    initial_eval = None
    if eval_examples and start_step == 0:
        initial_eval = evaluate_kto(model, eval_examples, ref_eval, config, weights, pad_id, accelerator, live)
        logger.log(0, initial_eval)

    n_train = len(train_examples)
    bar = progress_bar(plan.total_steps, start_step, "kto", config.quiet or not accelerator.is_main_process)
    stop_at = plan.total_steps if config.stop_after_steps is None else min(plan.total_steps, start_step + config.stop_after_steps)
    metrics: dict[str, float] = {}
    for step in range(start_step, stop_at):
        began = time.perf_counter()
        micro_batches = plan.micro_batches(step)
        step_rows = sum(len(b) for b in micro_batches)
        shares = rank_shares(micro_batches, accelerator)  # this rank's slice of each micro-batch
        record_rows(accelerator, step + 1, shares)
        # One reference point for the whole step (all its micro-batches, on all processes), so z0 does
        # not depend on how the step is split by --grad-accum or over ranks.
        kl_sum = 0.0
        for indices, real in shares:
            ref_kl = None if ref_train is None else ref_train[[n_train + i for i in indices]]
            kl = kl_estimate(model, [train_examples[i] for i in indices], ref_kl, pad_id, accelerator, live())
            kl_sum += kl.item() * len(indices) if real else 0.0
        z0 = torch.tensor(all_sum(accelerator, [kl_sum])[0] / step_rows, dtype=torch.float32, device=accelerator.device)
        outputs, chunks, step_tokens = [], [], 0
        for k, (indices, real) in enumerate(shares):
            chunk = [train_examples[i] for i in indices]
            ref = None if ref_train is None else ref_train[indices]
            with sync_unless_last(accelerator, model, k, len(shares)):
                out, tokens = kto_forward(model, chunk, ref, z0, config, weights, pad_id, accelerator, live())
                # × the process count: DDP averages the ranks' gradients
                accelerator.backward(out.loss * (len(indices) * accelerator.num_processes / step_rows if real else 0.0))
            if real:
                outputs.append(out)
                chunks.append(chunk)
                step_tokens += tokens
        step_tokens = int(all_sum(accelerator, [step_tokens])[0])
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm) if config.max_grad_norm > 0 else None
        optimizer.step()
        lr = scheduler.get_last_lr()[0]  # the rate this step used (before the schedule moves on)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        elapsed = time.perf_counter() - began
        metrics = {**kto_metrics(outputs, chunks, accelerator=accelerator), "kl_raw": z0.item(), "lr": lr,
                   "tokens": step_tokens, "tokens_per_s": step_tokens / elapsed, "epoch": plan.epoch_of(step)}
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        if config.eval_every and eval_examples and (step + 1) % config.eval_every == 0:
            metrics.update(evaluate_kto(model, eval_examples, ref_eval, config, weights, pad_id, accelerator, live))
        logger.log(step + 1, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", kl=f"{metrics['kl']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        if (step + 1) % config.save_every == 0 or (step + 1 == stop_at and stop_at < plan.total_steps):
            save_checkpoint(config.out, step + 1, accelerator, model, optimizer, scheduler, config, plan)
    bar.close()
    if stop_at < plan.total_steps:
        logger.close()
        accelerator.print(f"stopped after step {stop_at} of {plan.total_steps} (--stop-after-steps); rerun the same command to continue")
        return {"stopped_at_step": stop_at, "total_steps": plan.total_steps, "out": config.out}

    final_eval = evaluate_kto(model, eval_examples, ref_eval, config, weights, pad_id, accelerator, live) if eval_examples else None
    if final_eval is not None:
        logger.log(plan.total_steps, final_eval)
    logger.close()
    n_desirable = sum(e["desirable"] for e in train_examples)
    summary = {
        "trainer": "kto",
        "steps": plan.total_steps,
        "train_examples": n_train,
        "train_desirable": n_desirable,
        "train_undesirable": n_train - n_desirable,
        "lambda_d": weights[0],
        "lambda_u": weights[1],
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
