"""Binary (KTO) labels and direct 1–10 scores on single responses."""

from __future__ import annotations

import json

import pytest
from label_fakes import LOG, FakeEngine, constitution, rig_tiny_model

from labelers.binary import Standard, desirable_probability, label_binary, single_context
from labelers.inputs import load_singles
from labelers.prompts import template_spec
from labelers.score import expected_rating, label_scores, rating_to_reward, score_details, score_responses

PROMPT = [{"role": "user", "content": "Can you help me write a birthday message for my sister?"}]


def test_binary_probability_by_hand():
    # p(yes) = 0.3 / (0.3 + 0.1) = 0.75
    assert desirable_probability([LOG(0.3), LOG(0.1)]) == pytest.approx((0.75, 0.75))
    # an inverted principle asks whether the reply is BAD: yes → undesirable
    assert desirable_probability([LOG(0.3), LOG(0.1)], invert=True) == pytest.approx((0.75, 0.25))


def test_label_binary_records_and_kto_export(tmp_path):
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "hi", "response": "Hello! How can I help?"},
        {"prompt": PROMPT, "completion": [{"role": "assistant", "content": "No."}]},
    ]) + "\n")
    # the labeler says yes to the friendly reply (0.9) and no to the curt one (0.2)
    engine = FakeEngine(lambda c, o: LOG(0.9 if "Hello!" in c else 0.2) if o == " Yes" else LOG(0.1 if "Hello!" in c else 0.8))
    summary = label_binary(constitution(only=("less_harmful",)), inputs, engine, tmp_path / "run",
                           progress=False, min_margin=0.35)
    records = [json.loads(x) for x in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == [True, False]
    assert records[0]["p_yes"] == pytest.approx(0.9) and records[1]["confidence"] == pytest.approx(0.8)
    assert "is the assistant's last reply a good one?" in engine.scored_contexts[0]
    kto = [json.loads(x) for x in (tmp_path / "run" / "exports" / "kto.jsonl").read_text().splitlines()]
    assert len(kto) == 1 and summary["exports"]["rows"] == 1  # 0.8 - 0.5 < 0.35: dropped
    assert kto[0]["completion"] == [{"role": "assistant", "content": "Hello! How can I help?"}] and kto[0]["label"] is True
    # inverted principle: the question asks if the reply is bad, and "yes" means undesirable
    inv = FakeEngine(lambda c, o: LOG(0.9) if o == " Yes" else LOG(0.1))
    label_binary(constitution(only=("more_harmful",)), inputs, inv, tmp_path / "inv", progress=False)
    inv_records = [json.loads(x) for x in (tmp_path / "inv" / "records.jsonl").read_text().splitlines()]
    assert all(r["p_desirable"] == pytest.approx(0.1) and r["label"] is False for r in inv_records)
    assert "is the assistant's last reply a bad one?" in inv.scored_contexts[0]


def test_singles_from_a_pair_run(tmp_path):
    (tmp_path / "records.jsonl").write_text(json.dumps({"id": "p", "messages": PROMPT, "responses": ["a", "b", "c"]}) + "\n")
    singles = load_singles(tmp_path)
    assert [s.response for s in singles] == ["a", "b", "c"] and len({s.id for s in singles}) == 3


def test_binary_on_rigged_tiny_model(tmp_path, tiny_model_dir):
    from engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(rig_tiny_model(tiny_model_dir, tmp_path / "rigged", " Yes")))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    label_binary(None, inputs, engine, tmp_path / "run", question="Is it polite?", progress=False)
    [rec] = [json.loads(x) for x in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert rec["p_yes"] > 0.999 and rec["label"] is True and rec["principle_ids"] == ["custom"]


def test_expected_rating_and_reward_by_hand():
    # P(1) = P(10) = 0.5 → E = 5.5 → reward (5.5 - 1)/4.5 - 1 = 0
    lps = [LOG(0.5)] + [-1e9] * 8 + [LOG(0.5)]
    assert expected_rating(lps) == pytest.approx(5.5) and rating_to_reward(5.5) == pytest.approx(0.0)
    # unnormalized 1:3 on ratings 2 and 8 → E = 0.25·2 + 0.75·8 = 6.5
    lps = [-1e9, LOG(1)] + [-1e9] * 5 + [LOG(3), -1e9, -1e9]
    assert expected_rating(lps) == pytest.approx(6.5)
    assert expected_rating(lps, invert=True) == pytest.approx(11 - 6.5)  # "10 = worst" mirrored
    assert rating_to_reward(1.0) == pytest.approx(-1.0) and rating_to_reward(10.0) == pytest.approx(1.0)


def test_score_ratings_on_a_real_tokenizer(tmp_path, tiny_model_dir):
    """SmolLM2 splits digits, so " 1" is a prefix of " 10": rating 1 is " 1" not followed by "0", i.e.
    P(" 1") − P(" 10"); ratings 2..10 are the engine's summed log-probs of " 2" … " 10"."""
    import math

    from engines.transformers_engine import TransformersEngine
    from labelers.score import RATING_OPTIONS

    engine = TransformersEngine(str(tiny_model_dir))
    spec = template_spec("score", "score")
    ten = engine.tokenizer(" 10", add_special_tokens=False)["input_ids"]
    one = engine.tokenizer(" 1", add_special_tokens=False)["input_ids"]
    assert ten[: len(one)] == one and len(ten) == len(one) + 1
    standard = Standard("custom", "Is it kind?")
    [detail] = score_details(engine, ["hi"], ["hello"], [standard])
    context = single_context(spec, None, engine, [{"role": "user", "content": "hi"}], "hello", standard)
    assert context.endswith("Rating:")
    separate = engine.score([context] * 10, list(RATING_OPTIONS))
    assert detail["option_logprobs"] == pytest.approx(separate, abs=1e-4)
    assert detail["logprobs"][1:] == pytest.approx(separate[1:], abs=1e-4)
    assert math.exp(detail["logprobs"][0]) == pytest.approx(math.exp(separate[0]) - math.exp(separate[9]), rel=1e-3)
    # P("0" | " 1") came from P(" 10") / P(" 1") with no extra row; scoring "0" after context + " 1" agrees
    [[zero]] = engine.score_options([context + " 1"], ["0"])
    assert detail["p_zero_after_one"] == pytest.approx(math.exp(zero), rel=1e-3)
    probs = [math.exp(x) for x in detail["logprobs"]]
    assert detail["expected_rating"] == pytest.approx(sum((i + 1) * p for i, p in enumerate(probs)) / sum(probs), abs=1e-5)
    rewards = score_responses(engine, ["hi", PROMPT], ["hello", "sure"], principle="Is it kind?", batch_size=1)
    assert rewards[0] == pytest.approx(detail["score"], abs=1e-5) and all(-1 <= r <= 1 for r in rewards)


def test_label_scores_and_export(tmp_path):
    def logprob(context, option):  # the labeler puts all its mass on " 8"
        return 0.0 if option == " 8" else -50.0

    inputs = tmp_path / "in.jsonl"
    inputs.write_text(json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    label_scores(constitution(only=("less_harmful",)), inputs, FakeEngine(logprob), tmp_path / "run", progress=False)
    [row] = [json.loads(x) for x in (tmp_path / "run" / "exports" / "scores.jsonl").read_text().splitlines()]
    assert row["expected_rating"] == pytest.approx(8.0) and row["score"] == pytest.approx(7 / 4.5 - 1)
    assert row["completion"] == [{"role": "assistant", "content": "hello"}] and row["principle_ids"] == ["less_harmful"]
