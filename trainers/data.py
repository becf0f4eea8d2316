"""Training data: loading rows, validating their columns, mixing sources, splitting off an eval set,
tokenizing chats with a loss mask on assistant turns, and enforcing ``max_length`` visibly.

Rows are plain dicts in the toolkit's column conventions (``messages``; ``prompt``/``chosen``/
``rejected``/``p_chosen``; ``prompt``/``completion``/``label``). Each loaded row carries ``_where``
("file:line" or "folder[index]") so every error can name the row it is about.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from jobs.records import MessagesError, check_messages, read_jsonl

WHERE = "_where"
# Columns each kind of training data needs.
REQUIRED_COLUMNS = {
    "sft": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "kto": ("prompt", "completion", "label"),
    "prompt": ("prompt",),
}
# File names looked for inside an export folder, by kind.
EXPORT_NAMES = {
    "sft": ("sft.jsonl", "sft"),
    "preference": ("preferences.jsonl", "preference.jsonl", "prefs.jsonl", "preferences", "prefs"),
    "kto": ("kto.jsonl", "kto"),
    "prompt": ("prompts.jsonl", "prompts"),
}


class DataError(ValueError):
    """Bad training data; the message names the file and row."""


# ---------------------------------------------------------------- loading


def load_rows(source: str | Path, kind: str) -> list[dict[str, Any]]:
    """Rows of one source: a JSONL file, a `datasets` folder (``save_to_disk``; a DatasetDict uses its
    "train" split), or an export folder holding the file for ``kind`` (e.g. ``sft.jsonl``)."""
    path = resolve_source(source, kind)
    return _read_jsonl(path) if path.is_file() else _read_datasets_folder(path)


def resolve_source(source: str | Path, kind: str) -> Path:
    """The JSONL file or `datasets` folder that ``load_rows`` reads for a source (an export folder
    becomes the file for ``kind`` inside it)."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        return path
    if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return path
    for name in EXPORT_NAMES[kind]:
        if (path / name).exists():
            return resolve_source(path / name, kind)
    jsonl = sorted(path.glob("*.jsonl"))
    if len(jsonl) == 1:
        return jsonl[0]
    raise DataError(f"{path}: cannot tell which data to use for {kind} training; expected one of "
                    f"{', '.join(EXPORT_NAMES[kind])}, a single *.jsonl or a `datasets` folder; found "
                    f"{', '.join(p.name for p in sorted(path.iterdir())) or 'nothing'}")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [{**row, WHERE: f"{path}:{number}"}
            for number, row in read_jsonl(path, error=DataError, utf8_message=_not_utf8)]


def _not_utf8(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"not UTF-8 text (byte {raw[exc.start]:#04x} at position {exc.start + 1} of the line); save the file as UTF-8"


def _read_datasets_folder(path: Path) -> list[dict[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    loaded = load_from_disk(str(path))
    if isinstance(loaded, DatasetDict):
        if "train" not in loaded:
            raise DataError(f"{path}: a DatasetDict without a 'train' split (splits: {', '.join(loaded)})")
        loaded = loaded["train"]
    return [{**row, WHERE: f"{path}[{index}]"} for index, row in enumerate(loaded)]


def parse_data_arg(value: str) -> tuple[str, float | None]:
    """``"a.jsonl:0.7"`` → ``("a.jsonl", 0.7)``; ``"a.jsonl"`` → ``("a.jsonl", None)``. A path that
    exists as written is never split (so a file name containing ':' still works)."""
    if Path(value).exists() or ":" not in value:
        return value, None
    path, _, weight = value.rpartition(":")
    try:
        number = float(weight)
    except ValueError:
        return value, None
    if not number > 0 or math.isinf(number):
        raise DataError(f"--data {value}: the mixing weight must be a positive number")
    return path, number


def load_training_rows(sources: list[str], kind: str, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Load, validate and (with several sources) mix the ``--data`` arguments.

    One source: its rows as they are. Several sources, each optionally ``PATH:WEIGHT`` (default weight
    1): with ``T`` = the total number of rows of all sources, source ``i`` contributes exactly
    ``round(T · w_i / Σw)`` rows per epoch: its rows shuffled (seed) and taken in that order, cycling
    through a fresh shuffle when it needs more rows than it has (up-sampling) or stopping early when
    it needs fewer (down-sampling). Returns (rows, a description of the mix for the summary).
    """
    import numpy as np

    parsed = [parse_data_arg(s) for s in sources]
    loaded = []
    for path, weight in parsed:
        rows = load_rows(path, kind)
        if not rows:
            raise DataError(f"{path}: no rows")
        validate_rows(rows, kind)
        loaded.append((path, 1.0 if weight is None else weight, rows))
    if len(loaded) == 1:
        path, _, rows = loaded[0]
        return rows, {"sources": [{"path": path, "rows": len(rows), "used": len(rows)}]}
    total = sum(len(rows) for _, _, rows in loaded)
    weight_sum = sum(w for _, w, _ in loaded)
    mixed, described = [], []
    for index, (path, weight, rows) in enumerate(loaded):
        want = round(total * weight / weight_sum)
        rng = np.random.default_rng([seed, index])
        picked: list[int] = []
        while len(picked) < want:
            picked.extend(rng.permutation(len(rows)).tolist())
        mixed.extend(rows[i] for i in picked[:want])
        described.append({"path": path, "weight": weight, "rows": len(rows), "used": want})
    return mixed, {"sources": described}


# ---------------------------------------------------------------- validation


def validate_rows(rows: list[dict[str, Any]], kind: str) -> None:
    """Check every row has the columns ``kind`` needs, with well-formed messages and non-empty
    responses; raises DataError naming the first bad row ("file:line (id …)") and what was expected."""
    for row in rows:
        missing = [c for c in REQUIRED_COLUMNS[kind] if c not in row or row[c] is None]
        if missing:
            _fail(row, f"missing column(s) {', '.join(missing)} (has: {', '.join(k for k in row if k != WHERE)})")
        if kind == "sft":
            _check_messages(row, "messages")
            if not any(m["role"] == "assistant" and m["content"].strip() for m in row["messages"]):
                _fail(row, "`messages` has no non-empty assistant turn to train on")
        elif kind == "preference":
            _check_messages(row, "prompt")
            for column in ("chosen", "rejected"):
                _check_response(row, column)
            if "p_chosen" in row and row["p_chosen"] is not None:
                p = row["p_chosen"]
                if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                    _fail(row, f"p_chosen must be a number in [0, 1], got {p!r}")
        elif kind == "kto":
            _check_messages(row, "prompt")
            _check_response(row, "completion")
            if not isinstance(row["label"], bool):
                _fail(row, f"label must be true or false, got {row['label']!r}")
        elif kind == "prompt":
            _check_messages(row, "prompt")


def _check_messages(row: dict[str, Any], column: str) -> None:
    try:
        messages = check_messages(row[column], column, string_role="user")  # a bare prompt string is a one-turn chat
    except MessagesError as exc:
        path, _, problem = str(exc).partition(": ")
        _fail(row, f"`{path}`: {problem}")
    if isinstance(row[column], str):
        row[column] = messages


def _check_response(row: dict[str, Any], column: str) -> None:
    value = row[column]
    if isinstance(value, str):
        row[column] = value = [{"role": "assistant", "content": value}]
    _check_messages(row, column)
    if not any(m["role"] == "assistant" for m in value):
        _fail(row, f"`{column}` has no assistant message")
    if not "".join(m["content"] for m in value).strip():
        _fail(row, f"`{column}` is an empty response")


def _fail(row: dict[str, Any], problem: str) -> None:
    raise DataError(f"{describe_row(row)}: {problem}")


def describe_row(row: dict[str, Any]) -> str:
    """``"data.jsonl:12 (id abc)"`` — how errors and reports name a row."""
    where = row.get(WHERE, "<row>")
    return f"{where} (id {row['id']})" if "id" in row else where


def row_name(row: dict[str, Any]) -> str:
    return str(row.get("id", row.get(WHERE, "?")))


def split_eval(rows: list[dict[str, Any]], eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): a seeded random ``eval_fraction`` of the rows (at least one when > 0) held out."""
    import numpy as np

    if eval_fraction <= 0 or len(rows) < 2:
        return rows, []
    n_eval = min(len(rows) - 1, max(1, round(len(rows) * eval_fraction)))
    order = np.random.default_rng([seed, 7919]).permutation(len(rows))
    held = set(order[:n_eval].tolist())
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def train_and_eval_rows(config, kind: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(train rows, eval rows, mixing report) for a trainer config: ``config.data`` mixed and
    validated; the eval rows from ``config.eval_data`` when given, else a seeded split of the training rows."""
    rows, mix = load_training_rows(config.data, kind, config.seed)
    if config.eval_data:
        eval_rows = load_rows(config.eval_data, kind)
        validate_rows(eval_rows, kind)
    else:
        rows, eval_rows = split_eval(rows, config.eval_fraction, config.seed)
    return rows, eval_rows, mix


# ---------------------------------------------------------------- tokenization


def tokenize_messages(tokenizer, messages: list[dict[str, str]], train_from: int = 0) -> tuple[list[int], list[int]]:
    """Token ids of a chat rendered with the tokenizer's chat template, and a 0/1 mask that is 1 on the
    tokens of the assistant turns at message index ≥ ``train_from`` (their content and end-of-turn
    marker, not the role header the template adds before them).

    How: for each such turn, render the chat up to the turn with the generation prompt (where the turn
    begins) and up to and including it (where it ends); these are character offsets into the full
    render, and a token belongs to the turn when its first character lies in between.
    """
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    mask = [0] * len(ids)
    for index in range(train_from, len(messages)):
        if messages[index]["role"] != "assistant":
            continue
        start_text = tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True)
        end_text = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        if not full.startswith(start_text) or not full.startswith(end_text):
            raise DataError("the chat template does not render a conversation's prefixes as text prefixes; "
                            "cannot locate the assistant turns to train on")
        start, end = len(start_text), len(end_text)
        for t, (first, _) in enumerate(offsets):
            if start <= first < end:
                mask[t] = 1
    return ids, mask


class LengthReport:
    """Applies ``--max-length`` / ``--on-long`` to tokenized examples and remembers what it did, so a
    run can say how many examples were cut or dropped and which (never silently)."""

    def __init__(self, max_length: int, on_long: str, what: str = "train"):
        self.max_length, self.on_long, self.what = max_length, on_long, what
        self.too_long: list[str] = []
        self.no_target_left: list[str] = []
        self.longest = 0

    def fit(self, row: dict[str, Any], *sequences: tuple[list[int], list[int]]):
        """Each sequence is (ids, mask). Returns them (truncated if asked) or None when the row is
        skipped; raises DataError under ``on_long="error"``. A row whose truncated sequences keep no
        token to train on is skipped and reported."""
        longest = max(len(ids) for ids, _ in sequences)
        self.longest = max(self.longest, longest)
        if longest <= self.max_length:
            return list(sequences)
        self.too_long.append(row_name(row))
        if self.on_long == "error":
            raise DataError(f"{describe_row(row)}: {longest} tokens > --max-length {self.max_length} "
                            f"(use --on-long skip|truncate, or a larger --max-length)")
        if self.on_long == "skip":
            return None
        cut = [(ids[: self.max_length], mask[: self.max_length]) for ids, mask in sequences]
        if any(sum(mask) == 0 for _, mask in cut):
            self.no_target_left.append(row_name(row))
            return None
        return cut

    def summary(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "on_long": self.on_long, "too_long": len(self.too_long),
                "too_long_examples": self.too_long[:5], "skipped_no_response_left": len(self.no_target_left),
                "longest": self.longest}

    def message(self) -> str | None:
        if not self.too_long:
            return None
        action = {"skip": "skipped", "truncate": "truncated"}[self.on_long]
        text = (f"{self.what}: {len(self.too_long)} example(s) longer than --max-length {self.max_length} "
                f"were {action} (e.g. {', '.join(self.too_long[:5])})")
        if self.no_target_left:
            text += f"; {len(self.no_target_left)} kept no response token after truncation and were skipped"
        return text


def pad_right(sequences: list[list[int]], value: int):
    """A [B, max_len] LongTensor, each sequence padded on the right with ``value``."""
    import torch

    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences], dtype=torch.long)
