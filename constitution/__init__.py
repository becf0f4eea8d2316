"""Constitutions: the principles a user writes, validated and stamped on everything made from them."""

from .schema import (
    Constitution,
    CritiqueRevisionPrinciple,
    FeedbackPrinciple,
    FewShotExample,
    LabelingExample,
)

__all__ = [
    "Constitution",
    "CritiqueRevisionPrinciple",
    "FeedbackPrinciple",
    "FewShotExample",
    "LabelingExample",
]
