"""Preference labeling: the arithmetic by hand, then label_preferences on a scripted engine and on a
rigged tiny model whose labels are known in advance."""

from __future__ import annotations

import json
import math

import pytest
from label_fakes import LOG, FakeEngine, constitution, listed, rig_tiny_model, table_engine

from engines.base import EngineCapabilityError
from jobs.rundir import RunDirError
from labelers.inputs import Comparison, load_comparisons
from labelers.preference import combine_orders, draw_principles, first_option_probability, label_preferences

PROMPT = [{"role": "user", "content": "How do I get rid of a wasp nest?"}]


def comparison(a="alpha", b="beta", cid="c1"):
    return Comparison(cid, "s1", PROMPT, a, b)


def test_normalization_and_order_averaging_by_hand():
    # p(A) = e^-1 / (e^-1 + e^-2) = 1 / (1 + e^-1) = 0.7310586
    assert first_option_probability([-1.0, -2.0]) == pytest.approx(1 / (1 + math.exp(-1)))
    # probabilities 0.2 and 0.6 (not summing to 1) normalize to 0.25 / 0.75
    assert first_option_probability([LOG(0.2), LOG(0.6)]) == pytest.approx(0.25)
    # order AB: raw p(A)=0.8 → p_a|AB = 0.8; order BA: raw p(A)=0.3 is p(response_b) → p_a|BA = 0.7
    r = combine_orders([0.8], [0.3], [False])
    assert r["p_a"] == pytest.approx(0.75) and r["position_flip"] is False
    # the labeler says "first" both times (0.9, 0.8): p_a|AB = 0.9, p_a|BA = 0.2 → 0.55, flipped
    r = combine_orders([0.9], [0.8], [False])
    assert r["p_a"] == pytest.approx(0.55) and r["position_flip"] is True
    # an inverted principle asks for the WORSE response: p_a|AB = 1-0.8, p_a|BA = 0.3 → 0.25
    r = combine_orders([0.8], [0.3], [True])
    assert r["p_a"] == pytest.approx(0.25) and r["p_a_order_ab"] == pytest.approx(0.2)
    # ensemble of two principles (second inverted): AB (0.8, 1-0.4=0.6) → 0.7; BA (1-0.3=0.7, 0.5) → 0.6
    r = combine_orders([0.8, 0.4], [0.3, 0.5], [False, True])
    assert (r["p_a_order_ab"], r["p_a_order_ba"], r["p_a"]) == pytest.approx((0.7, 0.6, 0.65))
    # single order: p_a is the AB value; no flip can be measured
    r = combine_orders([0.8], None, [False])
    assert r["p_a"] == pytest.approx(0.8) and r["position_flip"] is None
    # CoT clamp to [0.4, 0.6] happens per order, before averaging: (0.6 + 0.4) / 2
    r = combine_orders([0.99], [0.99], [False], clamp=(0.4, 0.6))
    assert r["p_a"] == pytest.approx(0.5)


TABLE = {  # order AB (alpha first): p(A) = 0.7/(0.7+0.1) = 0.875; order BA (beta first): 0.6/(0.6+0.4) = 0.6
    ("alpha", " (A)"): LOG(0.7), ("alpha", " (B)"): LOG(0.1),
    ("beta", " (A)"): LOG(0.6), ("beta", " (B)"): LOG(0.4),
}


def test_label_preferences_records_exports_and_resume(tmp_path):
    const = constitution()
    engine = table_engine(TABLE)
    pairs = [comparison(cid=f"c{i}") for i in range(5)]
    summary = label_preferences(const, pairs, engine, tmp_path / "run", batch_size=4, progress=False, min_margin=0.05)
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 5
    r = records[0]
    assert r["p_ab"][0] == pytest.approx(0.875) and r["p_ba"][0] == pytest.approx(0.6)
    inverted = r["inverted"][0]
    expected = combine_orders([0.875], [0.6], [inverted])
    assert r["p_a"] == pytest.approx(expected["p_a"])
    assert r["logprobs"]["ab"][0] == pytest.approx([LOG(0.7), LOG(0.1)])
    assert r["prompt"] == PROMPT and r["response_a"] == "alpha" and r["labeler_model"] == "fake-labeler"
    assert r["constitution"] == "test@1" and r["template"] == "cai_mc" and len(r["principle_ids"]) == 1
    # batches span pairs: 4 contexts per call = 2 pairs × 2 orders
    assert engine.score_calls == [4, 4, 2]
    flips = sum(rec["position_flip"] for rec in records)
    assert summary["position_flips"] == flips and summary["comparisons"] == 5
    # principles are drawn per comparison id, so a fixed seed gives the same draw on every run
    assert [rec["principle_ids"][0] for rec in records] == [draw_principles(const, f"c{i}", 1, 0)[0].id for i in range(5)]
    # exports: chosen is the response with p >= 0.5, p_chosen >= 0.5; near-ties dropped by min_margin
    prefs = [json.loads(line) for line in (tmp_path / "run" / "exports" / "prefs.jsonl").read_text().splitlines()]
    kept = [rec for rec in records if abs(rec["p_a"] - 0.5) >= 0.05]
    assert len(prefs) == len(kept) == summary["exports"]["rows"]
    for p, rec in zip(prefs, kept):
        winner = "alpha" if rec["p_a"] >= 0.5 else "beta"
        assert p["chosen"] == [{"role": "assistant", "content": winner}] and p["p_chosen"] >= 0.5
    assert (tmp_path / "run" / "exports" / "prefs" / "dataset_info.json").exists()
    # resume: nothing left to score; a different setting is refused
    again = table_engine(TABLE)
    label_preferences(const, pairs, again, tmp_path / "run", batch_size=4, progress=False)
    assert again.score_calls == []
    with pytest.raises(RunDirError, match="ensemble"):
        label_preferences(const, pairs, again, tmp_path / "run", ensemble=2, progress=False)


def test_inverted_principle_inverts_the_label(tmp_path):
    # the labeler always answers "(A)" strongly for the question it is asked
    engine = FakeEngine(lambda c, o: LOG(0.9) if o == " (A)" else LOG(0.1))
    [plain] = [json.loads(x) for x in _label(tmp_path / "plain", constitution(only=("less_harmful",)), engine, single=True)]
    [inv] = [json.loads(x) for x in _label(tmp_path / "inv", constitution(only=("more_harmful",)), engine, single=True)]
    assert inv["principle_ids"] == ["more_harmful"] and inv["inverted"] == [True]
    assert inv["p_ab"] == plain["p_ab"] == [pytest.approx(0.9)]  # the same raw answer "(A)" ...
    assert plain["p_a"] == pytest.approx(0.9)
    assert inv["p_a"] == pytest.approx(0.1)  # ... means "response_a is the MORE harmful one"


def _label(run, const, engine, single=False, **kw):
    label_preferences(const, [comparison()], engine, run, both_orders=not single, progress=False, **kw)
    return (run / "records.jsonl").read_text().splitlines()


def test_ensemble_averages_distinct_principles(tmp_path):
    # "less harmful" → p(first)=0.8; "more helpful" → 0.6; "more harmful" (inverted) → 0.3 raw
    per_question = {"less harmful": 0.8, "more helpful": 0.6, "more harmful": 0.3}

    def logprob(context, option):
        question = next(q for q in per_question if f"Which response is {q}?" in context)
        p = per_question[question]
        return LOG(p) if option == " (A)" else LOG(1 - p)

    [rec] = [json.loads(x) for x in _label(tmp_path / "r", constitution(), FakeEngine(logprob), single=True, ensemble=3)]
    assert sorted(rec["principle_ids"]) == ["less_harmful", "more_harmful", "more_helpful"]
    # AB order only: mean(0.8, 0.6, 1 - 0.3) = 0.7
    assert rec["p_a"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="ensemble=4"):
        _label(tmp_path / "r4", constitution(), FakeEngine(logprob), ensemble=4)


def test_cot_generates_a_rationale_then_scores_after_the_answer_cue_and_clamps(tmp_path):
    engine = FakeEngine(lambda c, o: LOG(0.99) if o == " (A)" else LOG(0.01), rationale=" Both are fine.")
    [rec] = [json.loads(x) for x in _label(tmp_path / "r", constitution(only=("less_harmful",)), engine,
                                           cot=True, cot_clamp=(0.3, 0.8))]
    assert len(engine.generated_from) == 2 and all(g.endswith("Let's think step by step:") for g in engine.generated_from)
    assert all(c.endswith("Let's think step by step: Both are fine.\nThe answer is:") for c in engine.scored_contexts)
    assert rec["cot_rationales"] == {"ab": [" Both are fine."], "ba": [" Both are fine."]}
    assert rec["p_ab"][0] == pytest.approx(0.99)  # raw probabilities are kept unclamped
    # each order clamped to [0.3, 0.8]: p_a|AB = min(0.99, 0.8), p_a|BA = max(1 - 0.99, 0.3)
    assert (rec["p_a_order_ab"], rec["p_a_order_ba"], rec["p_a"]) == pytest.approx((0.8, 0.3, 0.55))


def test_few_shot_examples_are_rendered_with_their_own_principle(tmp_path):
    engine = table_engine(TABLE)
    _label(tmp_path / "r", constitution(examples=True), engine, single=True)
    [ctx] = engine.scored_contexts
    assert ctx.count("Consider the following conversation") == 2
    assert "Which response is more helpful?\nOptions:\n(A) Put it in boiling water for 9 minutes.\n(B) No.\nThe answer is: (A)" in ctx
    assert listed(ctx) == ("alpha", "beta")


def test_constitution_template_override(tmp_path):
    const = constitution(templates={"cai_mc": "Q: {{ principle }} 1) {{ response_a }} 2) {{ response_b }}\nA:\n"})
    engine = FakeEngine(lambda c, o: LOG(0.5))
    _label(tmp_path / "r", const, engine, single=True)
    assert engine.scored_contexts[0].startswith("Q: Which response is") and engine.scored_contexts[0].endswith("beta\nA:")


def test_more_than_two_responses_and_input_formats(tmp_path):
    run = tmp_path / "records.jsonl"
    run.write_text(json.dumps({"id": "p1", "messages": PROMPT, "responses": ["x", "y", "z"], "model": "m"}) + "\n")
    assert [c.indices for c in load_comparisons(run)] == [(0, 1)]
    assert [c.indices for c in load_comparisons(run, all_pairs=True)] == [(0, 1), (0, 2), (1, 2)]
    f = tmp_path / "prefs.jsonl"
    f.write_text(json.dumps({"prompt": "hi", "chosen": [{"role": "assistant", "content": "hello"}], "rejected": "go away"})
                 + "\n" + json.dumps({"prompt": "hi", "response_a": "a", "response_b": "b"}) + "\n")
    first, second = load_comparisons(f)
    assert (first.prompt, first.response_a, first.response_b, first.input_chosen) == (
        [{"role": "user", "content": "hi"}], "hello", "go away", "a")
    assert second.input_chosen is None
    f.write_text('{"prompt": "hi", "chosen": "x"}\n')
    with pytest.raises(ValueError, match=r"prefs.jsonl:1: expected 'responses'"):
        load_comparisons(f)


def test_engine_without_logprobs_fails_clearly(tmp_path):
    engine = FakeEngine(lambda c, o: 0.0)
    engine.can_score = False
    with pytest.raises(EngineCapabilityError, match="cannot give log-probabilities"):
        _label(tmp_path / "r", constitution(), engine)


@pytest.mark.parametrize("template", ["cai_mc", "chat"])
def test_rigged_tiny_model_prefers_a_and_flips_are_counted(tmp_path, tiny_model_dir, template):
    from engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(str(rig_tiny_model(tiny_model_dir, tmp_path / "rigged", "A")), batch_size=8)
    pairs = [comparison(a=f"answer {i}", b=f"other {i}", cid=f"c{i}") for i in range(3)]
    const = constitution()
    one = label_preferences(const, pairs, engine, tmp_path / "one", template=template, both_orders=False, progress=False)
    one_records = [json.loads(x) for x in (tmp_path / "one" / "records.jsonl").read_text().splitlines()]
    for rec in one_records:  # the model always answers "A": raw p(A) ≈ 1 in the given order
        assert rec["p_ab"][0] > 0.999
        assert rec["p_a"] == pytest.approx(0.0 if rec["inverted"][0] else 1.0, abs=1e-3)
    assert one["position_flips"] == 0 and one["position_flip_rate"] is None
    both = label_preferences(const, pairs, engine, tmp_path / "both", template=template, progress=False)
    records = [json.loads(x) for x in (tmp_path / "both" / "records.jsonl").read_text().splitlines()]
    assert all(r["position_flip"] and r["p_ba"][0] > 0.999 for r in records)
    assert all(r["p_a"] == pytest.approx(0.5, abs=1e-3) for r in records)  # pure position bias averages out
    assert both["position_flips"] == 3 and both["position_flip_rate"] == 1.0
