"""Response log-probs and the reference model, shared by DPO and KTO (trainers/dpo.py, trainers/kto.py).

A *sequence* is ``(ids, mask)``: a prompt and one response rendered with the chat template, mask = 1 on
the response's tokens. ``response_logps`` sums the log-probs of those tokens; the reference's numbers
are either precomputed once before training and cached in OUT (``reference_logps_for``, keyed by a
fingerprint of the reference model and of every sequence) or computed live each step with a frozen
reference model (``load_reference_model``) or, with LoRA, the policy with its adapter switched off
(``reference_context``).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

from trainers.config import ConfigError, TrainConfig
from trainers.data import pad_right, tokenize_messages
from trainers.metrics import progress_bar
from trainers.models import disable_dropout, load_model_and_tokenizer

# ---------------------------------------------------------------- sequences and their log-probs


def tokenize_response(tokenizer, prompt: list[dict], response: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, mask) of prompt + response rendered with the chat template; mask = 1 on the response's
    tokens only (its assistant content and end-of-turn marker)."""
    return tokenize_messages(tokenizer, list(prompt) + list(response), train_from=len(prompt))


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


# ---------------------------------------------------------------- the reference: precomputed and cached, or live


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
    them (once) and save them there (safetensors, written to a temp file and renamed). With several
    processes every rank computes them (the same numbers) and the main process writes the file."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    found = None
    if path.exists():
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("fingerprint") == fingerprint:
                found = handle.get_tensor("logps")
    # every process has looked before the main one may write the file (all then compute, or none)
    accelerator.wait_for_everyone()
    if found is not None:
        return found
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
