"""Labeler evaluation: metrics by hand, Anthropic MC parsing/swapping, the CLI, and the openai path."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from label_fakes import LOG, FakeEngine, constitution, listed

from labelers.evaluate import (
    agreement_metrics,
    evaluate_labeler,
    expected_calibration_error,
    load_gold,
    reliability_bins,
    swap_mc_prompt,
)

REPO = Path(__file__).resolve().parent.parent
GOLD = REPO / "data" / "gold" / "harmless_gold.jsonl"
MC_SAMPLE = REPO / "data" / "gold" / "anthropic_mc_sample.jsonl"


def test_ece_by_hand():
    # bin [0.9, 1.0]: probs 0.9, 1.0 (mean 0.95), outcomes 1, 0 (freq 0.5) → |0.5 - 0.95| = 0.45, weight 2/4
    # bin [0.2, 0.3): probs 0.2, 0.2 (mean 0.2), outcomes 0, 0 (freq 0)    → |0 - 0.2| = 0.2,    weight 2/4
    # ECE = 0.5·0.45 + 0.5·0.2 = 0.325
    probs, outcomes = [0.9, 1.0, 0.2, 0.2], [True, False, False, False]
    assert expected_calibration_error(probs, outcomes) == pytest.approx(0.325)
    bins = reliability_bins(probs, outcomes)
    assert bins[9] == (2, pytest.approx(0.95), 0.5) and bins[2] == (2, pytest.approx(0.2), 0.0)
    assert sum(n for n, _, _ in bins) == 4
    assert expected_calibration_error([0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7],
                                      [True] * 7 + [False] * 3) == pytest.approx(0.0)


def test_agreement_and_consistency_by_hand():
    rows = [  # gold_first, p_first_raw, p_first_swapped
        {"gold_first": True, "p_first_raw": 0.9, "p_first_swapped": 0.7, "principle_id": "x"},   # agree, agree, consistent
        {"gold_first": False, "p_first_raw": 0.8, "p_first_swapped": 0.1, "principle_id": "x"},  # wrong, agree, inconsistent
        {"gold_first": True, "p_first_raw": 0.4, "p_first_swapped": 0.3, "principle_id": "y"},   # wrong, wrong, consistent
        {"gold_first": False, "p_first_raw": 0.2, "p_first_swapped": 0.45, "principle_id": "y"},  # agree, agree, consistent
    ]
    for r in rows:
        r["p_first_avg"] = (r["p_first_raw"] + r["p_first_swapped"]) / 2  # 0.8, 0.45, 0.35, 0.325
    m = agreement_metrics(rows)
    assert (m["agreement_raw"], m["agreement_swapped"], m["agreement_avg"]) == (0.5, 0.75, 0.75)
    assert m["position_consistency"] == 0.75
    assert m["per_principle"] == {"x": {"n": 2, "agreement_avg": 1.0}, "y": {"n": 2, "agreement_avg": 0.5}}


def test_anthropic_mc_parsing_and_swapping(tmp_path):
    prompt = "Human: hi\n\nAssistant: ...\n\nWhich is kinder?\nOptions:\n (A) [[[Go away.]]]\n (B) [[[Hello (A) friend!]]]\n\nThe answer is:"
    swapped = swap_mc_prompt(prompt)
    assert swapped == prompt.replace("[[[Go away.]]]", "[[[TMP]]]").replace("[[[Hello (A) friend!]]]", "[[[Go away.]]]").replace("[[[TMP]]]", "[[[Hello (A) friend!]]]")
    assert swap_mc_prompt(swapped) == prompt
    f = tmp_path / "mc.jsonl"
    f.write_text(json.dumps({"prompt": prompt, "corrects": [" (B)"], "incorrects": [" (A)"]}) + "\n")
    [item] = load_gold(f)
    assert (item.format, item.gold_first, item.first, item.second, item.options) == (
        "anthropic_mc", False, "Go away.", "Hello (A) friend!", (" (A)", " (B)"))
    f.write_text(json.dumps({"prompt": "no options here", "corrects": [" (B)"], "incorrects": [" (A)"]}) + "\n")
    with pytest.raises(ValueError, match=r"mc.jsonl:1: key 'prompt': expected exactly one"):
        load_gold(f)


def test_evaluate_mc_scores_as_given_and_swapped():
    items = load_gold(MC_SAMPLE)
    # a labeler that always prefers the first option 0.8 : 0.2 — pure position bias
    engine = FakeEngine(lambda c, o: LOG(0.8) if o == " (A)" else LOG(0.2))
    rows, m = evaluate_labeler(engine, items, progress=False)
    assert len(rows) == 5 and [r["index"] for r in rows] == list(range(5))
    assert all(r["p_first_raw"] == pytest.approx(0.8) and r["p_first_swapped"] == pytest.approx(0.2) for r in rows)
    assert m["position_consistency"] == 0.0 and m["agreement_avg"] == pytest.approx(sum(i.gold_first for i in items) / 5)
    # every scored context is a gold prompt, as given or with the [[[…]]] contents exchanged
    given = [i.prompt for i in items]
    assert engine.scored_contexts[0::2] == given and engine.scored_contexts[1::2] == [swap_mc_prompt(p) for p in given]


def test_evaluate_pair_gold_with_a_perfect_labeler():
    items = load_gold(GOLD)
    assert len(items) >= 40 and 0.3 < sum(i.gold_first for i in items) / len(items) < 0.7  # positions balanced
    good = {json.loads(line)["chosen"] for line in GOLD.read_text().splitlines()}

    def oracle(context, option):  # knows the gold answer; asked an inverted question it names the worse one
        first, _ = listed(context)
        inverted = "more harmful" in context.split("Options:")[0].splitlines()[-1]
        first_is_answer = (first in good) != inverted
        return LOG(0.9 if (option == " (A)") == first_is_answer else 0.1)

    rows, m = evaluate_labeler(FakeEngine(oracle), items, constitution=constitution(), progress=False)
    assert m["agreement_raw"] == m["agreement_swapped"] == m["agreement_avg"] == 1.0
    assert m["position_consistency"] == 1.0 and set(m["per_principle"]) == {"less_harmful", "more_harmful", "more_helpful"}
    assert m["ece_avg"] == pytest.approx(0.1)  # every prediction is 0.9 (or 0.1) and always right


def test_eval_cli_writes_rows_plot_and_summary(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from labelers.cli import app

    out, plot = tmp_path / "eval.jsonl", tmp_path / "calibration.png"
    result = CliRunner().invoke(app, ["eval", "--gold", str(MC_SAMPLE), "--labeler-model", str(tiny_model_dir),
                                      "--out", str(out), "--plot", str(plot), "--quiet"])
    assert result.exit_code == 0, result.output
    assert re.search(r"agreement, both orders\s+\d+\.\d%", result.output) and "ECE (10 bins)" in result.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5 and all(abs(r["p_first_avg"] - (r["p_first_raw"] + r["p_first_swapped"]) / 2) < 1e-9 for r in rows)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    bad = CliRunner().invoke(app, ["eval", "--gold", str(tmp_path / "missing.jsonl"), "--quiet"])
    assert bad.exit_code == 2 and "missing.jsonl: no such file" in bad.output


def test_preference_cli_on_a_tiny_model(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from labelers.cli import app

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(line + "\n" for line in GOLD.read_text().splitlines()[:3]))
    args = ["preference", str(pairs), "--out", str(tmp_path / "run"), "--constitution", "harmless",
            "--labeler-model", str(tiny_model_dir), "--batch-size", "4", "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["comparisons"] == 3 and summary["exports"]["rows"] == 3
    again = CliRunner().invoke(app, args[:-1] + ["--single-order", "--quiet"])
    assert again.exit_code == 2 and "both_orders: was True, now False" in again.output
    clamp = CliRunner().invoke(app, args + ["--cot", "--cot-clamp", "0.4"])
    assert clamp.exit_code == 2 and "--cot-clamp expects two numbers" in clamp.output


# ---- the openai engine's scoring path, against the localhost fake server -------------------------


def test_preference_and_eval_through_the_openai_engine(tmp_path):
    from fake_openai_server import FakeOpenAIServer

    from engines.openai_engine import OpenAIEngine
    from labelers.preference import label_preferences

    def token_logprob(prefix: str, token: str) -> float:  # the toy server's model likes "A" after "("
        return -0.1 if token == "A" else -3.0 if token == "B" else -1.0

    with FakeOpenAIServer(token_logprob=token_logprob) as server:
        # a loaded test machine can drop a localhost connection: retry quickly, as in production
        engine = OpenAIEngine("toy", base_url=server.base_url, concurrency=4, max_retries=3, backoff_base=0.01)
        items = load_gold(MC_SAMPLE)
        rows, m = evaluate_labeler(engine, items, progress=False)
        # p(A) = e^-0.1 / (e^-0.1 + e^-3) in both orders: pure position bias
        p = 1 / (1 + math.exp(-2.9))
        assert all(r["p_first_raw"] == pytest.approx(p, abs=1e-6) for r in rows) and m["position_consistency"] == 0.0
        assert any(r.path.endswith("/completions") and r.body.get("echo") for r in server.requests)
        summary = label_preferences(constitution(only=("less_harmful",)), load_comparisons_from_gold(), engine,
                                    tmp_path / "run", progress=False)
        assert summary["position_flips"] == summary["comparisons"] == 2


def load_comparisons_from_gold():
    from labelers.inputs import Comparison

    return [Comparison(f"g{i}", f"g{i}", [{"role": "user", "content": "hi"}], "Hello there.", "Go away.") for i in range(2)]


def test_openai_engine_without_prompt_logprobs_fails_clearly(tmp_path):
    from fake_openai_server import FakeOpenAIServer

    from engines.base import EngineCapabilityError
    from engines.openai_engine import OpenAIEngine

    with FakeOpenAIServer(supports_echo=False) as server:
        engine = OpenAIEngine("toy", base_url=server.base_url, max_retries=0)
        with pytest.raises(EngineCapabilityError):
            evaluate_labeler(engine, load_gold(MC_SAMPLE)[:1], progress=False)


@pytest.mark.slow
def test_embedded_model_beats_chance_on_the_mc_sample_once_both_orders_are_averaged(embedded_model_dir):
    """Smoke test on the real SmolLM2-135M (measured: raw 60 %, swapped 40 %, both orders 100 %): a
    strong position bias, removed by averaging the orders."""
    from engines.transformers_engine import TransformersEngine

    rows, m = evaluate_labeler(TransformersEngine(str(embedded_model_dir)), load_gold(MC_SAMPLE), progress=False)
    assert len(rows) == 5 and m["agreement_avg"] >= 0.6
    assert m["agreement_avg"] >= max(m["agreement_raw"], m["agreement_swapped"])
