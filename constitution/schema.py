"""The constitution file format: pydantic models, strict (unknown keys are errors).

A constitution is what a user edits. Everything produced from it is stamped with
``name@version`` and the content hash (:meth:`Constitution.stamp`), so a dataset always says
which principles made it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class CritiqueRevisionPrinciple(_Strict):
    """One SL-CAI principle: how to critique an answer, and how to revise it given the critique."""

    id: str = Field(pattern=_ID_PATTERN, description="Stable id, recorded on every revision made with it.")
    critique: str = Field(min_length=1, description="The critique request put to the model.")
    revision: str = Field(min_length=1, description="The revision request put to the model.")
    tags: list[str] = Field(default_factory=list)
    weight: float = Field(default=1.0, gt=0, description="Relative probability of being drawn.")


class FeedbackPrinciple(_Strict):
    """One RL-CAI feedback principle: the question a feedback model answers about two responses."""

    id: str = Field(pattern=_ID_PATTERN)
    text: str = Field(min_length=1, description="e.g. 'Which of these responses is less harmful?'")
    invert: bool = Field(
        default=False,
        description="True when the question asks which response is *worse* (e.g. 'more harmful'): "
        "the label is inverted so p_chosen is always the probability of the better response.",
    )
    tags: list[str] = Field(default_factory=list)
    weight: float = Field(default=1.0, gt=0)


class FewShotExample(_Strict):
    """A whole critique→revision exchange, shown before the real one so small models keep roles straight."""

    prompt: str = Field(min_length=1)
    response: str = Field(min_length=1)
    principle: str | None = Field(default=None, description="Id of the critique/revision principle used.")
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)


class LabelingExample(_Strict):
    """A few-shot example for the preference labeler: a comparison and the correct option."""

    prompt: str = Field(min_length=1)
    response_a: str = Field(min_length=1)
    response_b: str = Field(min_length=1)
    principle: str | None = Field(default=None, description="Id of a feedback principle.")
    answer: Literal["A", "B"]


class Constitution(_Strict):
    name: str = Field(pattern=_ID_PATTERN)
    version: str = Field(min_length=1)
    description: str = ""
    system_prompt: str | None = None
    critique_revision: list[CritiqueRevisionPrinciple] = Field(default_factory=list)
    feedback: list[FeedbackPrinciple] = Field(default_factory=list)
    few_shot: list[FewShotExample] = Field(default_factory=list)
    labeling_examples: list[LabelingExample] = Field(default_factory=list)
    templates: dict[str, str] = Field(
        default_factory=dict,
        description="Optional overrides of the labeler's prompt templates (name → Jinja text, rendered sandboxed).",
    )

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v):  # YAML reads `version: 1.0` as a float
        return str(v) if isinstance(v, (int, float)) else v

    @model_validator(mode="after")
    def _check_ids(self) -> "Constitution":
        for field in ("critique_revision", "feedback"):
            seen: set[str] = set()
            for i, p in enumerate(getattr(self, field)):
                if p.id in seen:
                    raise ValueError(f"{field}[{i}].id: duplicate principle id {p.id!r}")
                seen.add(p.id)
        cr_ids = {p.id for p in self.critique_revision}
        for i, ex in enumerate(self.few_shot):
            if ex.principle is not None and ex.principle not in cr_ids:
                raise ValueError(f"few_shot[{i}].principle: {ex.principle!r} is not a critique_revision id")
        fb_ids = {p.id for p in self.feedback}
        for i, ex in enumerate(self.labeling_examples):
            if ex.principle is not None and ex.principle not in fb_ids:
                raise ValueError(f"labeling_examples[{i}].principle: {ex.principle!r} is not a feedback id")
        return self

    # ---- identity -------------------------------------------------------------------------------

    @property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the validated content (formatting and comments do not count)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def stamp(self) -> dict[str, str]:
        """What every record made from this constitution carries."""
        return {"constitution": self.ref, "constitution_hash": self.content_hash}

    def critique_principle(self, pid: str) -> CritiqueRevisionPrinciple:
        for p in self.critique_revision:
            if p.id == pid:
                return p
        raise KeyError(f"no critique_revision principle {pid!r} in {self.ref}")

    def feedback_principle(self, pid: str) -> FeedbackPrinciple:
        for p in self.feedback:
            if p.id == pid:
                return p
        raise KeyError(f"no feedback principle {pid!r} in {self.ref}")
