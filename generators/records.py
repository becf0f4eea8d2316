"""The records the generators write and the export rows built from them, as pydantic models.

Writers build every record and row through these models (:meth:`jobs.records.Record.dump` gives the
JSON line: the fields that were set, in the order declared here, then any extra keys); readers
validate through them. Fields that 0.1.0 records may lack have defaults, so old runs still read;
keys unknown here (e.g. ``meta`` columns of export rows) are kept.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

from pydantic import Field

from jobs.records import Message, Record

Messages = list[Message]
TokenCounts = dict[str, int]  # {"prompt_tokens", "completion_tokens"}


class Round(Record):
    """One critique → revision round of an SL-CAI record (the critique fields are None with revision_only)."""

    round: int
    principle_id: str
    critique_request: Optional[str] = None
    critique: Optional[str] = None
    critique_finish_reason: Optional[str] = None
    revision_request: Optional[str] = None
    revision: str = ""
    revision_finish_reason: Optional[str] = None


class SLCAIRecord(Record):
    """A line of an SL-CAI run's ``records.jsonl``."""

    id: str
    prompt: Messages
    initial_response: str = ""
    initial_finish_reason: Optional[str] = None
    rounds: list[Round] = Field(default_factory=list)
    final_revision: Optional[str] = None
    principle_ids: list[str] = Field(default_factory=list)
    revision_only: bool = False
    truncated_stages: list[str] = Field(default_factory=list)
    few_shot: Optional[int] = None
    model: Optional[str] = None
    engine: Optional[str] = None
    constitution: Optional[str] = None
    constitution_hash: Optional[str] = None
    params: Optional[dict[str, Any]] = None
    seed: Optional[int] = None
    tokens: Optional[dict[str, TokenCounts]] = None  # per stage ("initial", "critique", "revision") and "total"
    meta: Optional[dict[str, Any]] = None  # other keys of the input row (category, …); absent when none

    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"meta"})


class PairRecord(Record):
    """A line of a pairs run's ``records.jsonl``: N responses sampled for one prompt."""

    id: str
    prompt_id: Optional[str] = None
    messages: Messages
    responses: list[str] = Field(min_length=2)
    finish_reasons: list[str] = Field(default_factory=list)
    prompt_truncated: bool = False
    model: Optional[str] = None
    engine: Optional[str] = None
    params: Optional[dict[str, Any]] = None
    seed: Optional[int] = None
    system_prompt: Optional[str] = None
    tokens: Optional[TokenCounts] = None
    meta: Optional[dict[str, Any]] = None  # other keys of the input row; absent when none

    OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"meta"})


# ---- export rows (RUN_DIR/exports/) ----------------------------------------------------------------


class SftRow(Record):
    """``exports/sft.jsonl``: the prompt turns plus the revision as the assistant turn (TRL ``messages``),
    then the provenance columns (None when the record lacks one) and the record's scalar meta columns."""

    id: str
    prompt_id: str
    messages: Messages
    round: int
    principle_id: str
    model: Optional[str]
    engine: Optional[str]
    constitution: Optional[str]
    constitution_hash: Optional[str]
    seed: Optional[int]


class SLPrefsRow(Record):
    """``exports/prefs.jsonl`` of an SL-CAI run: chosen = final revision, rejected = initial answer."""

    id: str
    prompt: Messages
    chosen: Messages
    rejected: Messages
    p_chosen: float
    principle_ids: list[str]
    model: Optional[str]
    engine: Optional[str]
    constitution: Optional[str]
    constitution_hash: Optional[str]
    seed: Optional[int]


class PairRow(PairRecord):
    """``exports/pairs.jsonl``: a pair record with its ``meta`` keys as columns instead of ``meta``."""


STAMP_KEYS = ("model", "engine", "constitution", "constitution_hash", "seed")  # provenance columns of SL-CAI rows
