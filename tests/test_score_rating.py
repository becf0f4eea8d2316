"""d-RLAIF ratings follow the probabilities of the number's digits, not of a "/10" suffix."""

from __future__ import annotations

import json
import math

import pytest
from label_fakes import FakeEngine

from labelers.binary import Standard
from labelers.score import expected_rating, label_scores, rating_logprobs, score_details

# A character-level labeler: after "Rating: " it writes a first digit (3 with probability 0.9), after
# "1" a "0" with probability 0.3, and "/10" almost only after an 8 (0.95 against 0.001).
FIRST = {str(d): (0.9 if d == 3 else 0.1 / 9) for d in range(1, 10)}


def next_char(text: str, ch: str) -> float:
    """P(ch | text), text being what follows "Rating:" so far."""
    if text == "":
        return 1.0 if ch == " " else 0.0
    if text == " ":
        return FIRST.get(ch, 0.0)
    number = text[1:]
    if number.isdigit():
        if ch == "0":
            return 0.3 if number == "1" else 0.0
        return (0.95 if number == "8" else 0.001) if ch == "/" else 0.0
    return 1.0  # "/10" once the slash is written


def digit_labeler() -> FakeEngine:
    def logprob(context: str, option: str) -> float:
        text = context[context.rindex("Rating:") + len("Rating:"):]
        total = 0.0
        for ch in option:
            p = next_char(text, ch)
            total += math.log(p) if p > 0 else -1e9
            text += ch
        return total

    return FakeEngine(logprob)


def test_rating_follows_the_digits_not_the_suffix():
    engine = digit_labeler()
    standard = Standard("custom", "Is it kind?")
    [detail] = score_details(engine, ["hi"], ["hello"], [standard])
    # P(1) = (0.1/9)(1 − 0.3), P(3) = 0.9, P(10) = (0.1/9)·0.3, every other rating 0.1/9
    probs = [0.1 / 9] * 10
    probs[0], probs[2], probs[9] = 0.1 / 9 * 0.7, 0.9, 0.1 / 9 * 0.3
    assert [math.exp(x) for x in detail["logprobs"]] == pytest.approx(probs)
    assert detail["expected_rating"] == pytest.approx(sum((i + 1) * p for i, p in enumerate(probs)) / sum(probs))
    assert detail["expected_rating"] < 3.5 and detail["p_zero_after_one"] == pytest.approx(0.3)
    # scoring " i/10" (0.1.0) weighs each rating by P("/10" | digits) and lands near 8
    context = engine.scored_contexts[0]
    [old] = engine.score_options([context], [f" {i}/10" for i in range(1, 11)])
    assert expected_rating(old) > 7


def test_rating_one_without_zero_and_a_certain_zero():
    assert rating_logprobs([math.log(0.5)] + [0.0] * 9, math.log(0.2)) == pytest.approx([math.log(0.4)] + [0.0] * 9)
    one_is_ten = rating_logprobs([0.0] * 10, 0.0)  # "1" is always followed by "0": rating 1 has no mass
    assert math.isfinite(one_is_ten[0]) and expected_rating(one_is_ten) == pytest.approx(6.0)


def test_score_records_keep_their_fields_and_add_the_raw_option_logprobs(tmp_path):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    label_scores(None, inputs, digit_labeler(), tmp_path / "run", question="Is it kind?", progress=False)
    [rec] = [json.loads(x) for x in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert {"logprobs", "expected_rating", "score", "options", "template", "principle_ids"} <= set(rec)
    assert rec["options"] == [f" {i}" for i in range(1, 11)] and len(rec["option_logprobs"]) == 10
    assert rec["expected_rating"] < 3.5
