"""Supervised fine-tuning (the SL in SL-CAI): train a causal LM on chats, with the loss on the
assistant turns only.

Data: rows with ``messages`` (``cai export`` writes them from critique/revision runs). Several
``--data`` sources may be mixed with weights (``--data revisions.jsonl:0.7 --data helpful.jsonl:0.3``;
the exact rule is in ``trainers.data.load_training_rows``). ``--packing`` concatenates examples into
rows of up to ``--max-length`` tokens; position ids restart at each example, which makes
transformers' attention keep the packed examples apart (no attention across examples).

torch is imported inside the functions so that ``SFTConfig`` (and ``cai --help``) loads instantly.
"""

from __future__ import annotations

import time
from typing import Any

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


class SFTConfig(TrainConfig):
    """Options of `cai train sft` (plus those of TrainConfig)."""

    data_kind = "sft"  # which rows --data holds (a class attribute, not an option)
    lr: float = opt(2e-5, "peak learning rate (AdamW)")
    packing: bool = opt(False, "pack several examples into each row of up to --max-length tokens (attention stays within each example)")


# ---------------------------------------------------------------- data → token examples


def tokenize_sft_rows(rows: list[dict[str, Any]], tokenizer, report: LengthReport) -> list[dict[str, Any]]:
    """Each row → ``{"id", "input_ids", "mask"}`` (mask = 1 on assistant tokens), under --max-length."""
    examples = []
    for row in rows:
        fitted = report.fit(row, tokenize_messages(tokenizer, row["messages"]))
        if fitted is not None:
            ids, mask = fitted[0]
            examples.append({"id": row.get("id"), "input_ids": ids, "mask": mask})
    return examples


def pack_examples(examples: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Greedy packing in order: append examples to the current row while they fit in ``max_length``.
    Each packed row keeps ``position_ids`` restarting at 0 for every example it holds."""
    packed: list[dict[str, Any]] = []
    current = {"input_ids": [], "mask": [], "position_ids": [], "ids": []}
    for example in examples:
        if current["input_ids"] and len(current["input_ids"]) + len(example["input_ids"]) > max_length:
            packed.append(current)
            current = {"input_ids": [], "mask": [], "position_ids": [], "ids": []}
        current["input_ids"] += example["input_ids"]
        current["mask"] += example["mask"]
        current["position_ids"] += list(range(len(example["input_ids"])))
        current["ids"].append(example["id"])
    if current["input_ids"]:
        packed.append(current)
    return packed


def collate(examples: list[dict[str, Any]], pad_token_id: int, device) -> dict[str, Any]:
    """Right-padded tensors: input_ids, labels (-100 outside the mask) and either attention_mask
    (plain rows) or position_ids (packed rows: transformers derives the per-example attention from
    them, so attention_mask must be None)."""
    ids = pad_right([e["input_ids"] for e in examples], pad_token_id)
    mask = pad_right([e["mask"] for e in examples], 0)
    batch = {"input_ids": ids.to(device), "labels": ids.masked_fill(mask == 0, -100).to(device)}
    if "position_ids" in examples[0]:
        width = ids.shape[1]
        # padding continues the last example's positions: it comes after every real token, so
        # causal attention never lets a real token see it, and its labels are -100.
        positions = [e["position_ids"] + list(range(e["position_ids"][-1] + 1, e["position_ids"][-1] + 1 + width - len(e["position_ids"])))
                     for e in examples]
        batch["position_ids"] = pad_right(positions, 0).to(device)
    else:
        lengths = [len(e["input_ids"]) for e in examples]
        batch["attention_mask"] = pad_right([[1] * n for n in lengths], 0).to(device)
    return batch


def forward_loss(model, batch: dict[str, Any]):
    """(loss, n_tokens) of one batch: mean cross-entropy over its assistant tokens."""
    from trainers.losses import sft_loss

    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,
    ).logits
    return sft_loss(logits, batch["labels"])


def evaluate(model, examples: list[dict[str, Any]], config: SFTConfig, pad_token_id: int, device) -> float:
    """Token-weighted mean loss over ``examples`` (model in eval mode for the duration)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), config.batch_size):
            loss, n = forward_loss(model, collate(examples[start : start + config.batch_size], pad_token_id, device))
            total += loss.item() * n.item()
            count += n.item()
    model.train()
    return total / max(count, 1)


# ---------------------------------------------------------------- training


def train_sft(config: SFTConfig) -> dict[str, Any]:
    """Fine-tune ``config.model`` on ``config.data``; returns the run summary (also OUT/summary.json)."""
    import torch

    set_seed(config.seed)
    accelerator = make_accelerator(config)  # first: the process group (several processes) is set up here
    rows, eval_rows, mix = train_and_eval_rows(config, "sft")

    model, tokenizer = load_model_and_tokenizer(config.model, **model_options(config))
    train_report = LengthReport(config.max_length, config.on_long, "train")
    eval_report = LengthReport(config.max_length, config.on_long, "eval")
    train_examples = tokenize_sft_rows(rows, tokenizer, train_report)
    eval_examples = tokenize_sft_rows(eval_rows, tokenizer, eval_report)
    for message in (train_report.message(), eval_report.message()):
        if message:
            accelerator.print(message)
    if config.packing:
        train_examples = pack_examples(train_examples, config.max_length)

    plan = plan_steps(len(train_examples), config)
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
    initial_eval = evaluate(model, eval_examples, config, pad_id, device) if eval_examples and start_step == 0 else None
    if initial_eval is not None:
        logger.log(0, {"eval_loss": initial_eval})

    bar = progress_bar(plan.total_steps, start_step, "sft", config.quiet or not accelerator.is_main_process)
    stop_at = plan.total_steps if config.stop_after_steps is None else min(plan.total_steps, start_step + config.stop_after_steps)
    for step in range(start_step, stop_at):
        began = time.perf_counter()
        # This rank's share of each of the step's micro-batches (all of them with one process).
        shares = rank_shares(plan.micro_batches(step), accelerator)
        record_rows(accelerator, step + 1, shares)
        micro_batches = [collate([train_examples[i] for i in indices], pad_id, device) for indices, _ in shares]
        # The step's loss is the mean over all its assistant tokens (on every rank): weight each
        # micro-batch by its share of the step's tokens, not 1/grad_accum (micro-batches hold different
        # token counts); × the process count, because DDP averages the ranks' gradients.
        local_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b, (_, real) in zip(micro_batches, shares) if real)
        step_tokens = int(all_sum(accelerator, [local_tokens])[0])
        scale = accelerator.num_processes / max(step_tokens, 1)
        local_loss = 0.0
        for k, (batch, (_, real)) in enumerate(zip(micro_batches, shares)):
            with sync_unless_last(accelerator, model, k, len(micro_batches)):
                loss, n_tokens = forward_loss(model, batch)
                weighted = loss * (n_tokens * scale if real else 0.0)
                accelerator.backward(weighted)
            if real:
                local_loss += loss.item() * n_tokens.item()
        step_loss = all_sum(accelerator, [local_loss])[0] / max(step_tokens, 1)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm) if config.max_grad_norm > 0 else None
        optimizer.step()
        lr = scheduler.get_last_lr()[0]  # the rate this step used (before the schedule moves on)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        elapsed = time.perf_counter() - began
        metrics = {"loss": step_loss, "lr": lr, "tokens": step_tokens,
                   "tokens_per_s": step_tokens / elapsed, "epoch": plan.epoch_of(step)}
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        if config.eval_every and eval_examples and (step + 1) % config.eval_every == 0:
            metrics["eval_loss"] = evaluate(model, eval_examples, config, pad_id, device)
        logger.log(step + 1, metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        if (step + 1) % config.save_every == 0 or (step + 1 == stop_at and stop_at < plan.total_steps):
            save_checkpoint(config.out, step + 1, accelerator, model, optimizer, scheduler, config, plan)
    bar.close()
    if stop_at < plan.total_steps:
        logger.close()
        accelerator.print(f"stopped after step {stop_at} of {plan.total_steps} (--stop-after-steps); rerun the same command to continue")
        return {"stopped_at_step": stop_at, "total_steps": plan.total_steps, "out": config.out}

    final_eval = evaluate(model, eval_examples, config, pad_id, device) if eval_examples else None
    if final_eval is not None:
        logger.log(plan.total_steps, {"eval_loss": final_eval})
    logger.close()
    summary = {
        "trainer": "sft",
        "steps": plan.total_steps,
        "train_examples": len(train_examples),
        "eval_examples": len(eval_examples),
        "initial_eval_loss": initial_eval,
        "final_eval_loss": final_eval,
        "data": mix,
        "length": {"train": train_report.summary(), "eval": eval_report.summary()},
        "config": config_to_dict(config),
        "device": str(device),
        "torch": torch.__version__,
    }
    save_final_model(config.out, accelerator, model, tokenizer, summary)
    return summary
