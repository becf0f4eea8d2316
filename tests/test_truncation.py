"""Prompts too long for the model's context: on_long = truncate (marked on the record) | skip | error."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from cai_cli import app
from constitution.schema import Constitution, CritiqueRevisionPrinciple, FewShotExample
from engines import GenerationParams, load_engine
from engines.base import Completion, PromptTooLongError, fit_prompt
from generators.critique_revision import run_sl_cai
from generators.inputs import PromptItem
from generators.pairs import run_pairs

LONG = "one two three four five six seven eight nine ten eleven twelve"
GREEDY = GenerationParams(max_new_tokens=4, temperature=0)


# ---- the transformers engine on the tiny model (max_length 12: 8 prompt tokens + 4 new) -----------------


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    first = load_engine("transformers", str(tiny_model_dir), max_length=12)
    made = {"truncate": first}
    for mode in ("skip", "error"):  # same weights, other on_long
        made[mode] = load_engine("transformers", str(tiny_model_dir), max_length=12, on_long=mode)
    return made


def test_truncate_keeps_the_tail_and_marks_the_completion(engines):
    short, long = engines["truncate"].generate(["hi there", LONG], GREEDY)
    assert long.prompt_truncated and long.prompt_tokens == 8 and long.finish_reason in ("stop", "length")
    assert not short.prompt_truncated


def test_skip_generates_nothing_for_the_long_prompt_only(engines):
    long, short = engines["skip"].generate([LONG, "hi there"], GREEDY)
    full = len(engines["skip"].tokenizer(LONG).input_ids)
    assert (long.text, long.finish_reason, long.completion_tokens, long.prompt_tokens) == ("", "skipped", 0, full)
    assert short == engines["truncate"].generate(["hi there"], GREEDY)[0]


def test_error_names_the_request_and_the_token_counts(engines):
    full = len(engines["error"].tokenizer(LONG).input_ids)
    with pytest.raises(PromptTooLongError, match=rf"request 1 has {full} prompt tokens; with max_new_tokens=4 that exceeds max_length 12"):
        engines["error"].generate(["hi there", LONG], GREEDY)
    assert issubclass(PromptTooLongError, ValueError)
    with pytest.raises(ValueError, match="on_long must be one of truncate, skip, error"):
        load_engine("transformers", "unused", on_long="drop")


def test_vllm_engine_fits_prompts_the_same_way(monkeypatch, tokenizer_dir):
    from test_engine_vllm import make_fake_vllm

    calls: list = []
    monkeypatch.setitem(sys.modules, "vllm", make_fake_vllm(tokenizer_dir, calls))
    engine = load_engine("vllm", "some/model", max_model_len=12, on_long="skip")
    long, short = engine.generate([LONG, "hi there"], GenerationParams(max_new_tokens=4, seed=5))
    assert long.finish_reason == "skipped" and not short.prompt_truncated
    [(_, prompts, sampling)] = [c for c in calls if c[0] == "generate"]
    assert len(prompts) == 1 and sampling[0].seed == 6  # the short prompt keeps its own seed (seed + index)
    engine.on_long = "truncate"
    long, _ = engine.generate([LONG, "hi there"], GenerationParams(max_new_tokens=4))
    assert long.prompt_truncated and long.prompt_tokens == 8
    engine.on_long = "error"
    with pytest.raises(PromptTooLongError, match="request 0 has"):
        engine.generate([LONG], GenerationParams(max_new_tokens=4))


# ---- the runners: a fake engine whose tokens are words, fitted like the real engines' ----------------


class WordEngine:
    name = "words"
    model_id = "words"
    can_score = False

    def __init__(self, max_length: int, on_long: str):
        self.max_length, self.on_long = max_length, on_long

    def generate(self, requests, params):
        out = []
        for i, r in enumerate(requests):
            words = " ".join(m["content"] for m in r).split()
            kept = fit_prompt(words, params.max_new_tokens, self.max_length, self.on_long, i)
            out.append(Completion("", len(words), 0, "skipped") if kept is None else
                       Completion("ok ok", len(kept), 2, "stop", prompt_truncated=len(kept) < len(words)))
        return out


CONSTITUTION = Constitution(
    name="t", version="1", system_prompt="SYSTEM",
    critique_revision=[CritiqueRevisionPrinciple(id="p", critique="CRITIQUE", revision="REVISION")],
    few_shot=[FewShotExample(prompt="P", response="R", principle="p", critique="C", revision="V")],
)  # the few-shot prefix is 7 words
PROMPTS = [PromptItem(id="short", messages=[{"role": "user", "content": "hi"}]),
           PromptItem(id="long", messages=[{"role": "user", "content": " ".join(["word"] * 20)}])]
PARAMS = GenerationParams(max_new_tokens=8)


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_sl_cai_marks_truncated_stages(tmp_path):
    # "short": 8 words at the initial answer, 11 at the critique, 14 at the revision; max_length 20 - 8 new = 12
    run_sl_cai(CONSTITUTION, PROMPTS, WordEngine(20, "truncate"), tmp_path / "run", params=PARAMS, progress=False)
    recs = {r["id"]: r for r in lines(tmp_path / "run" / "records.jsonl")}
    assert recs["short"]["truncated_stages"] == ["revision 1"]
    assert recs["long"]["truncated_stages"] == ["initial", "critique 1", "revision 1"]
    assert not (tmp_path / "run" / "skipped.jsonl").exists()


def test_sl_cai_skip_writes_no_record_and_lists_the_prompt(tmp_path):
    summary = run_sl_cai(CONSTITUTION, PROMPTS, WordEngine(22, "skip"), tmp_path / "run", params=PARAMS, progress=False)
    assert [r["id"] for r in lines(tmp_path / "run" / "records.jsonl")] == ["short"]
    assert lines(tmp_path / "run" / "records.jsonl")[0]["truncated_stages"] == []
    [skipped] = lines(tmp_path / "run" / "skipped.jsonl")
    assert skipped["id"] == "long" and skipped["stage"] == "initial" and skipped["prompt_tokens"] == 27
    assert summary["generated"] == 1 and summary["skipped"] == 1
    again = run_sl_cai(CONSTITUTION, PROMPTS, WordEngine(22, "skip"), tmp_path / "run", params=PARAMS, progress=False)
    assert again["already_done"] == 1 and again["skipped"] == 1 and len(lines(tmp_path / "run" / "skipped.jsonl")) == 1


def test_sl_cai_error_names_the_prompt(tmp_path):
    with pytest.raises(PromptTooLongError, match=r"prompt long \(initial\): request 1 has 27 prompt tokens"):
        run_sl_cai(CONSTITUTION, PROMPTS, WordEngine(22, "error"), tmp_path / "run", params=PARAMS, progress=False)


def test_pairs_truncate_skip_and_error(tmp_path):
    run_pairs(PROMPTS, WordEngine(12, "truncate"), tmp_path / "t", params=PARAMS, progress=False)
    assert [r["prompt_truncated"] for r in lines(tmp_path / "t" / "records.jsonl")] == [False, True]
    summary = run_pairs(PROMPTS, WordEngine(12, "skip"), tmp_path / "s", params=PARAMS, progress=False)
    assert [r["prompt_id"] for r in lines(tmp_path / "s" / "records.jsonl")] == ["short"] and summary["skipped"] == 1
    assert [s["id"] for s in lines(tmp_path / "s" / "skipped.jsonl")] == ["long"]
    with pytest.raises(PromptTooLongError, match="prompt long: request 2 has 20 prompt tokens"):
        run_pairs(PROMPTS, WordEngine(12, "error"), tmp_path / "e", params=PARAMS, progress=False)


# ---- the CLI: --on-long on the tiny model --------------------------------------------------------------


def test_cli_on_long(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "short", "prompt": "hi"}) + "\n"
                       + json.dumps({"id": "long", "prompt": " ".join(["word"] * 80)}) + "\n")
    args = ["generate", "pairs", "-p", prompts, "--model", tiny_model_dir, "--engine-opt", "max_length=64",
            "--max-new-tokens", 4, "--quiet"]
    cli = CliRunner()
    r = cli.invoke(app, [str(a) for a in args + ["--out", tmp_path / "e", "--on-long", "error"]])
    assert r.exit_code == 2 and "prompt long: request 2 has" in r.output and "Traceback" not in r.output
    r = cli.invoke(app, [str(a) for a in args + ["--out", tmp_path / "s", "--on-long", "skip"]])
    assert r.exit_code == 0 and "1 skipped as too long" in r.output, r.output
    assert [x["id"] for x in lines(tmp_path / "s" / "skipped.jsonl")] == ["long"]
    r = cli.invoke(app, [str(a) for a in args + ["--out", tmp_path / "t"]])  # truncate by default
    assert r.exit_code == 0, r.output
    assert [x["prompt_truncated"] for x in lines(tmp_path / "t" / "records.jsonl")] == [False, True]
