"""The records the labelers write and the export rows built from them, as pydantic models.

Writers build every record and row through these models (:meth:`jobs.records.Record.dump`: the
fields that were set, in the order declared here, then extra keys); readers validate through them.
Fields that 0.1.0 records may lack have defaults, so old runs still read; unknown keys are kept.
The constitution stamp (``constitution``, ``constitution_hash``) of binary and score records is
absent when a ``--question`` was used instead of a constitution.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import Field

from jobs.records import Message, Record

Messages = list[Message]
Number = Union[int, float]  # engines' log-probs, written as they came


class PreferenceRecord(Record):
    """A line of a ``label preference`` run: p(response_a ≻ response_b), both orders."""

    id: str
    source_id: Optional[str] = None
    prompt: Messages
    response_a: str
    response_b: str
    response_indices: Optional[list[int]] = None
    input_chosen: Optional[str] = None
    p_a: float
    p_a_order_ab: Optional[float] = None
    p_a_order_ba: Optional[float] = None
    position_flip: Optional[bool] = None
    p_ab: Optional[list[float]] = None
    p_ba: Optional[list[float]] = None
    principle_ids: list[str] = Field(default_factory=list)
    inverted: list[bool] = Field(default_factory=list)
    logprobs: Optional[dict[str, list[list[Number]]]] = None  # per order: per principle, per option
    options: list[str] = Field(default_factory=list)
    template: Optional[str] = None
    labeler_model: Optional[str] = None
    engine: Optional[str] = None
    constitution: Optional[str] = None
    constitution_hash: Optional[str] = None
    seed: Optional[int] = None
    source: dict[str, Any] = Field(default_factory=dict)  # the input's model/engine/constitution
    cot_rationales: Optional[dict[str, list[str]]] = None  # with --cot only
    cot_clamp: Optional[list[float]] = None  # with --cot only


class BinaryRecord(Record):
    """A line of a ``label binary`` run (KTO): is one response desirable under a principle?"""

    id: str
    source_id: Optional[str] = None
    prompt: Messages
    response: str
    p_yes: Optional[float] = None
    p_desirable: float
    label: bool
    confidence: float
    principle_ids: list[str] = Field(default_factory=list)
    inverted: list[bool] = Field(default_factory=list)
    logprobs: Optional[list[Number]] = None
    options: list[str] = Field(default_factory=list)
    template: Optional[str] = None
    labeler_model: Optional[str] = None
    engine: Optional[str] = None
    constitution: Optional[str] = None
    constitution_hash: Optional[str] = None
    seed: Optional[int] = None
    source: dict[str, Any] = Field(default_factory=dict)


class ScoreRecord(Record):
    """A line of a ``label score`` run: the expected 1–10 rating of one response and its reward."""

    id: str
    source_id: Optional[str] = None
    prompt: Messages
    response: str
    logprobs: Optional[list[Number]] = None  # log P(rating i), i = 1 … 10
    expected_rating: float
    score: float  # reward in [-1, 1]
    option_logprobs: Optional[list[Number]] = None
    p_zero_after_one: Optional[float] = None
    principle_ids: list[str] = Field(default_factory=list)
    inverted: list[bool] = Field(default_factory=list)
    options: list[str] = Field(default_factory=list)
    template: Optional[str] = None
    labeler_model: Optional[str] = None
    engine: Optional[str] = None
    constitution: Optional[str] = None
    constitution_hash: Optional[str] = None
    seed: Optional[int] = None
    source: dict[str, Any] = Field(default_factory=dict)


# ---- export rows (RUN_DIR/exports/), in TRL's column layouts -----------------------------------------

KEEP = ("labeler_model", "engine", "template", "constitution", "constitution_hash", "principle_ids", "seed", "source_id")
"""Provenance columns copied from the record into every export row (when the record has them)."""


class PrefsRow(Record):
    """``exports/prefs.jsonl``: prompt / chosen / rejected (+ p_chosen, position_flip) and :data:`KEEP`."""

    id: str
    prompt: Messages
    chosen: Messages
    rejected: Messages
    p_chosen: float
    position_flip: Optional[bool] = None


class KTORow(Record):
    """``exports/kto.jsonl``: prompt / completion / label (+ p_desirable, confidence) and :data:`KEEP`."""

    id: str
    prompt: Messages
    completion: Messages
    label: bool
    p_desirable: float
    confidence: float


class ScoreRow(Record):
    """``exports/scores.jsonl``: prompt / completion / score (+ expected_rating) and :data:`KEEP`."""

    id: str
    prompt: Messages
    completion: Messages
    score: float
    expected_rating: float


RECORD_MODELS = {"label-preference": PreferenceRecord, "label-binary": BinaryRecord, "label-score": ScoreRecord}
