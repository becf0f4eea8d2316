"""Token-level helpers the local engines share (``engines.tokens``): how a prompt or scoring context and a
continuation are tokenized (so the transformers and vLLM engines see identical ids), the EOS ids of a
model, and where a stop string first occurs."""

from __future__ import annotations

from typing import Sequence


def encode_context(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt or scoring context: with the tokenizer's BOS if it adds one, but never
    two (a rendered chat template often already starts with the BOS text)."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


def encode_continuation(tokenizer, text: str) -> list[int]:
    """A continuation is tokenized on its own, without special tokens, and appended to the
    context's ids: token boundaries are then exactly the ones the score sums over."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _eos_ids(*candidates) -> list[int]:
    ids: list[int] = []
    for c in candidates:
        for t in (c if isinstance(c, (list, tuple)) else [c]):
            if t is not None and t not in ids:
                ids.append(int(t))
    return ids


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    positions = [text.find(s) for s in stop if s]
    positions = [p for p in positions if p >= 0]
    return min(positions) if positions else None
