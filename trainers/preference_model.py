"""Preference model (RL-CAI's reward model): a causal-LM backbone with a scalar head, trained with the
soft-label Bradley–Terry loss on AI preference labels.

Data: rows with ``prompt`` (messages), ``chosen`` / ``rejected`` (assistant messages) and optionally
``p_chosen`` = P(chosen ≻ rejected) from the AI labeler (absent → 1.0, a hard label). The model is
``AutoModelForSequenceClassification(num_labels=1)`` built on the backbone; the reward of a chat is
the head's output at its last non-pad token, so the saved folder loads back with
``AutoModelForSequenceClassification.from_pretrained(OUT)`` and scores any chat the same way.

Accuracy, in training metrics and in evaluation alike (``pairwise_accuracy``): the share of pairs whose
reward margin has the sign of the hard label (p_chosen > 0.5 means chosen wins), over the pairs that are
not ties — a pair with a label of exactly 0.5 (no preference) or a margin of exactly 0 (no prediction)
is left out of it (None when every pair is a tie).

Evaluation (held-out split): loss, accuracy and calibration: the expected calibration error (ECE) of
σ(r_chosen − r_rejected) against the soft labels and against the hard labels, with a reliability
plot written to OUT/calibration.png.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from labelers.calibration import calibration_table, plot_reliability
from trainers.checkpoint import load_checkpoint, resume_checkpoint, save_checkpoint, save_final_model
from trainers.config import TrainConfig, config_to_dict, opt
from trainers.data import LengthReport, pad_right, tokenize_messages, train_and_eval_rows
from trainers.distributed import all_sum, rank_shares, record_rows, sync_unless_last
from trainers.metrics import MetricsLogger, progress_bar
from trainers.models import (
    load_model_and_tokenizer,
    make_accelerator,
    make_optimizer_and_scheduler,
    model_options,
    set_seed,
)
from trainers.plan import plan_steps


class PMConfig(TrainConfig):
    """Options of `cai train pm` (plus those of TrainConfig)."""

    data_kind = "preference"  # which rows --data holds (a class attribute, not an option)
    lr: float = opt(1e-5, "peak learning rate (AdamW)")
    calibration_bins: int = opt(10, "equal-width bins of σ(margin) for the ECE and the reliability plot")


# ---------------------------------------------------------------- data → token pairs


def tokenize_pairs(rows: list[dict[str, Any]], tokenizer, report: LengthReport) -> list[dict[str, Any]]:
    """Each row → ``{"id", "chosen_ids", "rejected_ids", "p"}``: prompt + response rendered with the
    chat template; both sides of a pair are kept or dropped together under --max-length."""
    pairs = []
    for row in rows:
        prompt = row["prompt"]
        chosen = tokenize_messages(tokenizer, prompt + row["chosen"], train_from=len(prompt))
        rejected = tokenize_messages(tokenizer, prompt + row["rejected"], train_from=len(prompt))
        fitted = report.fit(row, chosen, rejected)
        if fitted is not None:
            p = row.get("p_chosen")
            pairs.append({"id": row.get("id"), "chosen_ids": fitted[0][0], "rejected_ids": fitted[1][0],
                          "p": 1.0 if p is None else float(p)})
    return pairs


def pair_rewards(model, pairs: list[dict[str, Any]], pad_token_id: int, device):
    """(r_chosen [B], r_rejected [B], p [B]): one forward pass over the 2B right-padded chats."""
    import torch

    sequences = [p["chosen_ids"] for p in pairs] + [p["rejected_ids"] for p in pairs]
    input_ids = pad_right(sequences, pad_token_id).to(device)
    attention_mask = pad_right([[1] * len(s) for s in sequences], 0).to(device)
    rewards = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.squeeze(-1).float()
    p = torch.tensor([pair["p"] for pair in pairs], dtype=torch.float32, device=device)
    return rewards[: len(pairs)], rewards[len(pairs) :], p


# ---------------------------------------------------------------- evaluation


def pairwise_accuracy(margin, p) -> tuple[int, int]:
    """(correct, counted): pairs whose margin r_chosen − r_rejected has the sign of the label (p > 0.5
    → chosen wins), over the pairs that are not ties (p exactly 0.5, or a margin of exactly 0)."""
    decided = (p != 0.5) & (margin != 0)
    return int(((margin > 0) == (p > 0.5))[decided].sum()), int(decided.sum())


def evaluate_pairs(model, pairs: list[dict[str, Any]], config: PMConfig, pad_token_id: int, device) -> dict[str, Any]:
    """Loss, pairwise accuracy vs hard labels, mean margin, and ECE vs soft and hard labels."""
    import torch

    from trainers.losses import soft_bt_loss

    model.eval()
    margins, labels = [], []
    with torch.no_grad():
        for start in range(0, len(pairs), config.batch_size):
            r_c, r_r, p = pair_rewards(model, pairs[start : start + config.batch_size], pad_token_id, device)
            margins.append(r_c - r_r)
            labels.append(p)
    model.train()
    margin, p = torch.cat(margins).cpu(), torch.cat(labels).cpu()
    decided = p != 0.5
    hard = (p > 0.5).float()
    predicted = torch.sigmoid(margin)
    ece_soft, table_soft = calibration_table(predicted.tolist(), p.tolist(), config.calibration_bins)
    ece_hard, table_hard = calibration_table(predicted[decided].tolist(), hard[decided].tolist(), config.calibration_bins)
    correct, counted = pairwise_accuracy(margin, p)
    accuracy = correct / counted if counted else None
    return {
        "loss": soft_bt_loss(margin, torch.zeros_like(margin), p).item(),
        "accuracy": accuracy,
        "mean_margin": margin.mean().item(),
        "mean_abs_margin": margin.abs().mean().item(),
        "ece_soft": ece_soft,
        "ece_hard": ece_hard if decided.any() else None,
        "calibration_table": {"soft": table_soft, "hard": table_hard},
        "pairs": len(pairs),
    }


def plot_calibration(tables: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Reliability diagram: mean predicted σ(margin) per bin vs the mean label in that bin."""
    plot_reliability({f"vs {name} labels": table for name, table in tables.items()}, path,
                     xlabel="predicted P(chosen ≻ rejected) = σ(margin)", ylabel="label (mean per bin)",
                     legend="upper left", dpi=100)


# ---------------------------------------------------------------- training


def train_preference_model(config: PMConfig) -> dict[str, Any]:
    """Train a preference model on ``config.data``; returns the run summary (also OUT/summary.json)."""
    from trainers.losses import soft_bt_loss

    set_seed(config.seed)
    accelerator = make_accelerator(config)  # first: the process group (several processes) is set up here
    rows, eval_rows, mix = train_and_eval_rows(config, "preference")

    model, tokenizer = load_model_and_tokenizer(config.model, head="score", **model_options(config))
    train_report = LengthReport(config.max_length, config.on_long, "train")
    eval_report = LengthReport(config.max_length, config.on_long, "eval")
    train_pairs = tokenize_pairs(rows, tokenizer, train_report)
    eval_pairs = tokenize_pairs(eval_rows, tokenizer, eval_report)
    for message in (train_report.message(), eval_report.message()):
        if message:
            accelerator.print(message)

    plan = plan_steps(len(train_pairs), config)
    optimizer, scheduler = make_optimizer_and_scheduler(model, config, plan.total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    start_step = 0
    checkpoint = resume_checkpoint(config)
    if checkpoint is not None:
        start_step = load_checkpoint(checkpoint, accelerator, model, optimizer, scheduler, config, plan)["step"]
        accelerator.print(f"resuming from {checkpoint} (step {start_step} of {plan.total_steps})")
    logger = MetricsLogger(config.out, config, resume_step=start_step, main=accelerator.is_main_process)
    pad_id, device = tokenizer.pad_token_id, accelerator.device
    initial_eval = evaluate_pairs(model, eval_pairs, config, pad_id, device) if eval_pairs and start_step == 0 else None
    if initial_eval is not None:
        logger.log(0, {f"eval_{k}": v for k, v in initial_eval.items() if k != "calibration_table"})

    bar = progress_bar(plan.total_steps, start_step, "pm", config.quiet or not accelerator.is_main_process)
    stop_at = plan.total_steps if config.stop_after_steps is None else min(plan.total_steps, start_step + config.stop_after_steps)
    for step in range(start_step, stop_at):
        began = time.perf_counter()
        micro_batches = plan.micro_batches(step)
        step_pairs = sum(len(b) for b in micro_batches)
        shares = rank_shares(micro_batches, accelerator)  # this rank's slice of each micro-batch
        record_rows(accelerator, step + 1, shares)
        loss_sum, correct, counted, margin_sum = 0.0, 0, 0, 0.0
        for k, (indices, real) in enumerate(shares):
            with sync_unless_last(accelerator, model, k, len(shares)):
                r_chosen, r_rejected, p = pair_rewards(model, [train_pairs[i] for i in indices], pad_id, device)
                loss = soft_bt_loss(r_chosen, r_rejected, p)
                # weight by pairs, so the step's loss is the mean over all its pairs (× the process
                # count: DDP averages the ranks' gradients)
                accelerator.backward(loss * (len(indices) * accelerator.num_processes / step_pairs if real else 0.0))
            if not real:
                continue
            loss_sum += loss.item() * len(indices)
            margin = (r_chosen - r_rejected).detach()
            right, decided = pairwise_accuracy(margin, p)
            correct, counted = correct + right, counted + decided
            margin_sum += margin.sum().item()
        loss_sum, correct, counted, margin_sum = all_sum(accelerator, [loss_sum, correct, counted, margin_sum])
        step_loss = loss_sum / step_pairs
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm) if config.max_grad_norm > 0 else None
        optimizer.step()
        lr = scheduler.get_last_lr()[0]  # the rate this step used (before the schedule moves on)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        metrics = {"loss": step_loss, "accuracy": correct / counted if counted else None, "margin": margin_sum / step_pairs,
                   "lr": lr, "pairs_per_s": step_pairs / (time.perf_counter() - began),
                   "epoch": plan.epoch_of(step)}
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        if config.eval_every and eval_pairs and (step + 1) % config.eval_every == 0:
            evaluated = evaluate_pairs(model, eval_pairs, config, pad_id, device)
            metrics.update({f"eval_{k}": v for k, v in evaluated.items() if k != "calibration_table"})
        logger.log(step + 1, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", acc="-" if metrics["accuracy"] is None else f"{metrics['accuracy']:.2f}")
        if (step + 1) % config.save_every == 0 or (step + 1 == stop_at and stop_at < plan.total_steps):
            save_checkpoint(config.out, step + 1, accelerator, model, optimizer, scheduler, config, plan)
    bar.close()
    if stop_at < plan.total_steps:
        logger.close()
        accelerator.print(f"stopped after step {stop_at} of {plan.total_steps} (--stop-after-steps); rerun the same command to continue")
        return {"stopped_at_step": stop_at, "total_steps": plan.total_steps, "out": config.out}

    final_eval = evaluate_pairs(model, eval_pairs, config, pad_id, device) if eval_pairs else None
    if final_eval is not None:
        logger.log(plan.total_steps, {f"eval_{k}": v for k, v in final_eval.items() if k != "calibration_table"})
    logger.close()
    summary = {
        "trainer": "pm",
        "steps": plan.total_steps,
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "initial_eval": initial_eval,
        "final_eval": final_eval,
        "data": mix,
        "length": {"train": train_report.summary(), "eval": eval_report.summary()},
        "config": config_to_dict(config),
        "device": str(device),
    }
    save_final_model(config.out, accelerator, model, tokenizer, summary)
    if final_eval is not None and accelerator.is_main_process:
        plot_calibration(final_eval["calibration_table"], Path(config.out) / "calibration.png")
        summary["calibration_plot"] = str(Path(config.out) / "calibration.png")
    return summary
