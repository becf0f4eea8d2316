"""Shared-prefix KV reuse for the ``transformers`` engine: a batch's common token prefix runs once.

Every prompt of a generation batch often starts with the same long token prefix (a constitution's
system prompt and few-shot exchanges), and every context of a labeling batch with the same few-shot
examples. ``SharedPrefix`` runs that prefix once, at batch 1, repeats its KV cache for every row and
feeds only the rows' own suffixes after it:

    prefix = SharedPrefix(model, pad_token_id, device)
    ids, mask, kwargs = prefix.generation_inputs(rows)             # then model.generate(ids, mask, **kwargs)
    last_logits, cache, mask = prefix.last_logits(rows, keep_cache)  # one forward over scoring contexts

Both give exactly what the plain left-padded batch gives: the suffixes are left-padded among
themselves, the attention mask is [prefix ones | suffix padding and ones], and positions continue
after the prefix as if each row were unpadded. Every row keeps at least one token of its own.

A common prefix shorter than ``MIN_SHARED_PREFIX`` tokens, or a batch of one row, takes the plain
path. A model whose cache is not plain full attention (sliding-window or recurrent layers, which
would see the padding between prefix and suffix as tokens) turns sharing off for good (``enabled``).
"""

from __future__ import annotations

import inspect
import logging

log = logging.getLogger(__name__)

# A batch's common token prefix shorter than this is not worth a separate forward pass.
MIN_SHARED_PREFIX = 32


class SharedPrefix:
    """Runs a batch's common token prefix once and hands its KV cache to the batch's rows."""

    def __init__(self, model, pad_token_id: int, device):
        self.model = model
        self.pad_token_id = pad_token_id
        self.device = device
        self.enabled = True  # False once a model's cache turned out unfit for sharing
        self.cache_argument = cache_argument(model)

    def generation_inputs(self, rows: list[list[int]]):
        """(input_ids, attention_mask, extra ``generate`` kwargs) for one batch of prompts.

        With a shared prefix the ids are [prefix | left-padded suffixes] and the kwargs hold the
        prefix's cache, repeated for every row: ``generate`` prefills only the columns after the
        cache, and positions from the mask's cumsum skip the holes."""
        import torch

        shared, cache = self._run_prefix(rows)
        if cache is None:
            ids, mask, _ = left_pad(rows, self.pad_token_id, self.device)
            return ids, mask, {}
        suffix_ids, suffix_mask, _ = left_pad([r[shared:] for r in rows], self.pad_token_id, self.device)
        prefix = torch.tensor([rows[0][:shared]], device=self.device)
        ids = torch.cat([prefix.expand(len(rows), -1), suffix_ids], dim=1)
        mask = torch.cat([suffix_mask.new_ones((len(rows), shared)), suffix_mask], dim=1)
        return ids, mask, {self.cache_argument: cache}

    def last_logits(self, rows: list[list[int]], keep_cache: bool):
        """One forward over a batch of contexts: (logits at each row's last token (B, vocab), the KV
        cache if keep_cache else None, the 2D attention mask that cache was built with)."""
        import torch

        shared, cache = self._run_prefix(rows)
        if cache is None:
            ids, mask, positions = left_pad(rows, self.pad_token_id, self.device)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, use_cache=keep_cache)
            return out.logits[:, -1, :], (cache_of(out) if keep_cache else None), mask
        ids, suffix_mask, positions = left_pad([r[shared:] for r in rows], self.pad_token_id, self.device)
        mask = torch.cat([suffix_mask.new_ones((len(rows), shared)), suffix_mask], dim=1)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions + shared,
            logits_to_keep=1, use_cache=True, **{self.cache_argument: cache},
        )
        return out.logits[:, -1, :], (cache_of(out) if keep_cache else None), mask

    def _run_prefix(self, rows: list[list[int]]):
        """(shared length, the prefix's KV cache repeated for every row), or (0, None) when the rows
        share too little to be worth it, or sharing is off."""
        import torch

        shared = common_prefix_length(rows) if self.enabled and len(rows) > 1 else 0
        shared = min(shared, min(len(r) for r in rows) - 1)
        if shared < MIN_SHARED_PREFIX:
            return 0, None
        prefix = torch.tensor([rows[0][:shared]], device=self.device)
        cache = cache_of(self.model(input_ids=prefix, logits_to_keep=1, use_cache=True))
        if not is_plain_dynamic_cache(cache):
            log.info("not sharing a batch's common prefix: the model's cache is a %s", type(cache).__name__)
            self.enabled = False
            return 0, None
        cache.batch_repeat_interleave(len(rows))
        return shared, cache


def left_pad(rows: list[list[int]], pad_token_id: int, device):
    """(input_ids, attention_mask, position_ids) for left-padded rows, on ``device``: every row's
    next token sits in the last column."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    # Positions count real tokens only, so a padded row sees the same positions as unpadded.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def common_prefix_length(rows: list[list[int]]) -> int:
    """How many leading token ids every row shares."""
    first, n = rows[0], min(len(r) for r in rows)
    for row in rows[1:]:
        i = 0
        while i < n and row[i] == first[i]:
            i += 1
        n = i
    return n


def cache_argument(model) -> str:
    """The keyword ``model.forward`` takes a KV cache by: recent transformers 5 releases name it
    ``cache``; earlier 5.x releases (the range vllm pins) and remote-code models ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(out):
    """The KV cache a forward returned, under either name (see ``cache_argument``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def is_plain_dynamic_cache(cache) -> bool:
    """A cache of full-attention key/value layers only, which padding holes in the mask cannot fool."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
