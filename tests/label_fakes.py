"""A scripted engine for labeler tests: log-probs come from a function of (context, option)."""

from __future__ import annotations

import math
import re

from constitution.schema import Constitution, FeedbackPrinciple, LabelingExample
from engines.base import Completion


class FakeEngine:
    name = "fake"
    can_score = True

    def __init__(self, logprob, rationale: str = " Response one is kinder.", model_id: str = "fake-labeler"):
        self.logprob = logprob  # (context, option) -> summed log-prob
        self.rationale = rationale
        self.model_id = model_id
        self.score_calls: list[int] = []  # contexts per score_options call
        self.generated_from: list[str] = []
        self.scored_contexts: list[str] = []

    def score_options(self, contexts, options):
        self.score_calls.append(len(contexts))
        self.scored_contexts += list(contexts)
        return [[self.logprob(c, o) for o in options] for c in contexts]

    def score(self, contexts, continuations):
        return [self.logprob(c, o) for c, o in zip(contexts, continuations)]

    def generate(self, requests, params):
        self.generated_from += list(requests)
        return [Completion(self.rationale, 1, 1, "stop") for _ in requests]

    def render_chat(self, messages, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


def listed(context: str) -> tuple[str, str]:
    """The two responses of the LAST comparison in a cai_mc context, in the order they are listed."""
    a, b = re.findall(r"^\(A\) (.*?)\n\(B\) (.*?)(?:\n[A-Z][a-z' ]+:|\Z)", context, re.M | re.S)[-1]
    return a, b


def table_engine(table: dict, **kw) -> FakeEngine:
    """Log-probs by (first-listed response, option): {("alpha", " (A)"): log 0.7, ...}."""
    return FakeEngine(lambda c, o: table[(listed(c)[0], o)], **kw)


def constitution(*, only: tuple[str, ...] | None = None, examples: bool = False, templates: dict | None = None) -> Constitution:
    feedback = [
        FeedbackPrinciple(id="less_harmful", text="Which response is less harmful?"),
        FeedbackPrinciple(id="more_harmful", text="Which response is more harmful?", invert=True),
        FeedbackPrinciple(id="more_helpful", text="Which response is more helpful?"),
    ]
    if only:
        feedback = [p for p in feedback if p.id in only]
    ex = [LabelingExample(prompt="How do I boil an egg?", response_a="Put it in boiling water for 9 minutes.",
                          response_b="No.", principle="more_helpful", answer="A")] if examples else []
    return Constitution(name="test", version="1", feedback=feedback, labeling_examples=ex, templates=templates or {})


LOG = math.log


def rig_tiny_model(src, dst, token_text: str):
    """A copy of the tiny model whose next token is ``token_text`` after ANY context.

    Every layer's output projections are zeroed (the last hidden state is then the last token's
    embedding), the final norm keeps only dimension 0, and dimension 0 of the (tied) embedding is 1
    for every token and 50 for ``token_text``: its logit is 50× every other logit, ≈ 275 nats above."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.copytree(src, dst)
    tok = AutoTokenizer.from_pretrained(dst)
    [token_id] = tok(token_text, add_special_tokens=False)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(dst)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.norm.weight.zero_()
        model.model.norm.weight[0] = 1.0
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 1.0
        emb[token_id, 0] = 50.0
    model.save_pretrained(dst, safe_serialization=True)
    return dst
