"""Constitutions: the principles a user writes, validated and stamped on everything made from them."""

from .loader import ConstitutionError, library_names, load_constitution, resolve_constitution
from .schema import (
    Constitution,
    CritiqueRevisionPrinciple,
    FeedbackPrinciple,
    FewShotExample,
    LabelingExample,
)
from .templating import TemplateRenderError, render

__all__ = [
    "Constitution",
    "ConstitutionError",
    "CritiqueRevisionPrinciple",
    "FeedbackPrinciple",
    "FewShotExample",
    "LabelingExample",
    "TemplateRenderError",
    "library_names",
    "load_constitution",
    "render",
    "resolve_constitution",
]
