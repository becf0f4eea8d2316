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

The helpers in the middle section (response log-probs, reference precompute and cache) are shared
with trainers/kto.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from trainers.checkpoint import load_checkpoint, resume_checkpoint, save_checkpoint, save_final_model
from trainers.config import ConfigError, TrainConfig, config_to_dict, opt
from trainers.metrics import MetricsLogger, progress_bar
from trainers.models import disable_dropout, load_model_and_tokenizer, make_accelerator, make_optimizer_and_scheduler, model_options, set_seed
from trainers.plan import plan_steps
from trainers.data import LengthReport, pad_right, tokenize_messages, train_and_eval_rows


@dataclass
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


def tokenize_response(tokenizer, prompt: list[dict], response: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, mask) of prompt + response rendered with the chat template; mask = 1 on the response's
    tokens only (its assistant content and end-of-turn marker)."""
    return tokenize_messages(tokenizer, list(prompt) + list(response), train_from=len(prompt))


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


# ---------------------------------------------------------------- response log-probs and the reference
# (shared with kto.py)


def collate_sequences(sequences: list[tuple[list[int], list[int]]], pad_token_id: int, device) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``response_mask`` ([N, T] each)."""
    ids = pad_right([s[0] for s in sequences], pad_token_id)
    mask = pad_right([s[1] for s in sequences], 0)
    attention = pad_right([[1] * len(s[0]) for s in sequences], 0)
    return {"input_ids": ids.to(device), "attention_mask": attention.to(device), "response_mask": mask.to(device)}


def response_logps(model, batch: dict[str, Any]):
    """Summed log-prob of each sequence's response tokens, ``[N]``.

    Only the positions from the earliest response token of the batch onwards go through the output
    projection (``logits_to_keep``): the prompt's logits are never needed, and ``[N, T, vocab]`` logits
    are the largest tensor of a preference step.
    """
    from trainers.losses import sequence_logprobs

    ids, mask = batch["input_ids"], batch["response_mask"]
    width = ids.shape[1]
    first = int(mask.argmax(dim=1).min())  # every sequence has ≥ 1 response token (LengthReport)
    keep = min(width, width - first + 1)  # the logit at position t scores token t + 1
    logits = model(input_ids=ids, attention_mask=batch["attention_mask"], logits_to_keep=keep, use_cache=False).logits
    start = width - logits.shape[1]  # = width - keep, or 0 for a model that ignored logits_to_keep
    return sequence_logprobs(logits, ids[:, start:], mask[:, start:])


def compute_logps(model, sequences: list[tuple[list[int], list[int]]], batch_size: int, pad_token_id: int,
                  accelerator, desc: str, quiet: bool):
    """Response log-probs of many sequences with no gradient, ``[len(sequences)]`` on the CPU; batches
    are formed in length order so padding stays small."""
    import torch

    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    values = torch.zeros(len(sequences), dtype=torch.float32)
    was_training = model.training
    model.eval()
    bar = progress_bar(len(sequences), 0, desc, quiet)
    bar.unit = "seq"
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = collate_sequences([sequences[i] for i in chunk], pad_token_id, accelerator.device)
            with accelerator.autocast():
                values[chunk] = response_logps(model, batch).float().cpu()
            bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return values


def sequences_fingerprint(reference: str, sequences: list[tuple[list[int], list[int]]]) -> str:
    """Identity of a reference computation: the reference model's name and every token and mask."""
    digest = hashlib.sha256(reference.encode())
    for ids, mask in sequences:
        digest.update(json.dumps([ids, mask]).encode())
    return digest.hexdigest()


def model_identity(name: str) -> str:
    """The model's name plus the size and modification time of its weight files (a local folder): a
    model folder overwritten with other weights must not reuse reference numbers cached for the old."""
    from engines.embedded import resolve_model

    try:
        folder = Path(resolve_model(name))
    except OSError:  # a missing folder: reported (one line) when the model is loaded
        return name
    if not folder.is_dir():
        return name
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.glob("*.safetensors"))]
    return json.dumps([name, stats])


def cached_reference_logps(path: Path, fingerprint: str, compute: Callable[[], Any], accelerator):
    """Load the reference log-probs saved at ``path`` when their fingerprint matches; otherwise compute
    them (once) and save them there (safetensors, written to a temp file and renamed)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    if path.exists():
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("fingerprint") == fingerprint:
                return handle.get_tensor("logps")
    values = compute()
    if accelerator.is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"logps": values.contiguous()}, str(tmp), metadata={"fingerprint": fingerprint})
        tmp.replace(path)
    return torch.as_tensor(values)


def load_reference_model(config: TrainConfig, tokenizer, accelerator):
    """The reference for live mode or --ref-model: a frozen model in eval mode on the device, checked
    to share the policy's tokenizer (the token ids are the policy's)."""
    name = config.ref_model or config.model
    what = f"--ref-model {name}" if config.ref_model else None
    model, ref_tokenizer = load_model_and_tokenizer(name, trust_remote_code=config.trust_remote_code, what=what)
    if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"--ref-model {name}: its tokenizer differs from the policy's ({config.model}); "
                         "DPO/KTO need both to score the same token ids")
    disable_dropout(model)
    model.requires_grad_(False)
    return model.eval().to(accelerator.device)


def reference_context(ref_model, policy, accelerator):
    """(model, context manager) that computes reference log-probs live: a separate model, or the
    policy with its LoRA adapter switched off (LoRA without --ref-model: no second copy needed)."""
    if ref_model is not None:
        return ref_model, nullcontext()
    unwrapped = accelerator.unwrap_model(policy)
    return policy, unwrapped.disable_adapter()


def reference_logps_for(sequences, config, policy, tokenizer, accelerator, what: str):
    """Precompute (or load from OUT) the reference log-probs of ``sequences``: with the initial policy
    itself (call this before the first optimizer step and before loading a checkpoint) or --ref-model."""
    name = config.ref_model or config.model
    fingerprint = sequences_fingerprint(model_identity(name), sequences)
    batch_size = config.ref_batch_size or 2 * config.batch_size

    def compute():
        model = load_reference_model(config, tokenizer, accelerator) if config.ref_model else policy
        values = compute_logps(model, sequences, batch_size, tokenizer.pad_token_id, accelerator,
                               f"reference log-probs ({what})", config.quiet)
        del model
        return values

    return cached_reference_logps(Path(config.out) / f"reference_logps_{what}.safetensors", fingerprint, compute, accelerator)


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


def dpo_metrics(outputs: list, weights: list[float], prefix: str = "") -> dict[str, float]:
    """Example-weighted means of loss, rewards/chosen, rewards/rejected, rewards/margins and
    rewards/accuracy (share of pairs with Δ > 0) over several DPOOutputs."""
    import torch

    total = sum(weights)
    def mean(values):
        return sum(float(v) * w for v, w in zip(values, weights)) / total
    return {
        f"{prefix}loss": mean(o.loss.item() for o in outputs),
        f"{prefix}rewards/chosen": mean(o.chosen_rewards.mean() for o in outputs),
        f"{prefix}rewards/rejected": mean(o.rejected_rewards.mean() for o in outputs),
        f"{prefix}rewards/margins": mean(o.margins.mean() for o in outputs),
        f"{prefix}rewards/accuracy": mean((o.margins > 0).to(torch.float32).mean() for o in outputs),
    }


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
    rows, eval_rows, mix = train_and_eval_rows(config, "preference")

    model, tokenizer = load_model_and_tokenizer(config.model, **model_options(config))
    disable_dropout(model)
    train_report = LengthReport(config.max_length, config.on_long, "train")
    eval_report = LengthReport(config.max_length, config.on_long, "eval")
    train_examples = tokenize_pairs(rows, tokenizer, train_report)
    eval_examples = tokenize_pairs(eval_rows, tokenizer, eval_report)
    for message in (train_report.message(), eval_report.message()):
        if message:
            print(message)

    accelerator = make_accelerator(config)
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
        print(f"resuming from {checkpoint} (step {start_step} of {plan.total_steps})")
    logger = MetricsLogger(config.out, config, resume_step=start_step)

    def live():  # a fresh (model, context) per use: disable_adapter() is a single-use context manager
        return reference_context(ref_model, model, accelerator) if config.ref_mode == "live" else None

    initial_eval = None
    if eval_examples and start_step == 0:
        initial_eval = evaluate_dpo(model, eval_examples, ref_eval, config, pad_id, accelerator, live)
        logger.log(0, initial_eval)

    n_train = len(train_examples)
    bar = progress_bar(plan.total_steps, start_step, "dpo", config.quiet)
    stop_at = plan.total_steps if config.stop_after_steps is None else min(plan.total_steps, start_step + config.stop_after_steps)
    metrics: dict[str, float] = {}
    for step in range(start_step, stop_at):
        began = time.perf_counter()
        micro_batches = plan.micro_batches(step)
        step_rows = sum(len(b) for b in micro_batches)
        outputs, weights, step_tokens = [], [], 0
        for indices in micro_batches:
            ref_c = ref_r = None
            if ref_train is not None:
                ref_c, ref_r = ref_train[indices], ref_train[[n_train + i for i in indices]]
            out, tokens = dpo_forward(model, [train_examples[i] for i in indices], ref_c, ref_r, config.beta,
                                      pad_id, accelerator, live())
            # The step's loss is the mean over all its pairs: weight micro-batches by their share.
            accelerator.backward(out.loss * (len(indices) / step_rows))
            outputs.append(out)
            weights.append(len(indices))
            step_tokens += tokens
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm) if config.max_grad_norm > 0 else None
        optimizer.step()
        lr = scheduler.get_last_lr()[0]  # the rate this step used (before the schedule moves on)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        elapsed = time.perf_counter() - began
        metrics = {**dpo_metrics(outputs, weights), "lr": lr, "tokens": step_tokens,
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
        print(f"stopped after step {stop_at} of {plan.total_steps} (--stop-after-steps); rerun the same command to continue")
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
