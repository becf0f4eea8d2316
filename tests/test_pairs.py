"""Pair sampling: N responses per prompt, one generate call per chunk, seeds, resume, identity."""

from __future__ import annotations

import json

import pytest
from test_critique_revision import FakeEngine, make_prompts

from engines.base import GenerationParams
from generators.pairs import pair_id, run_pairs
from jobs.rundir import RunDirError

PARAMS = GenerationParams(max_new_tokens=8, temperature=1.0)


class RowAwareEngine(FakeEngine):
    """Like a sampler: the answer depends on the call seed AND the row of the batch."""

    def generate(self, requests, params):
        out = super().generate(requests, params)
        for row, c in enumerate(out):
            c.text = f"{c.text} row={row}"
        return out


def records(run_dir):
    return [json.loads(x) for x in (run_dir / "records.jsonl").read_text().splitlines()]


def test_pairs_records_and_single_call_per_chunk(tmp_path):
    engine = RowAwareEngine()
    summary = run_pairs(make_prompts(5), engine, tmp_path / "run", n=3, seed=1, params=PARAMS, batch_size=3, progress=False)
    # chunk = batch_size*4 // n = 4 prompts → 12 requests per call, then 3 for the last prompt
    assert [len(reqs) for reqs, _ in engine.calls] == [12, 3]
    assert summary["generated"] == 5
    recs = records(tmp_path / "run")
    r = recs[0]
    assert r["id"] == pair_id("q000", 3) and r["prompt_id"] == "q000"
    assert r["messages"] == [{"role": "user", "content": "question 0"}]
    assert len(r["responses"]) == 3 and len(set(r["responses"])) == 3
    assert r["model"] == "fake-model" and r["engine"] == "fake" and r["seed"] == 1
    assert r["params"]["temperature"] == 1.0 and r["tokens"]["completion_tokens"] == 21
    # the three copies of a prompt are consecutive requests of the same call
    reqs = engine.calls[0][0]
    assert reqs[0] == reqs[1] == reqs[2] != reqs[3]


def test_pairs_rerun_reproduces_and_resume_skips(tmp_path):
    run_pairs(make_prompts(6), RowAwareEngine(), tmp_path / "a", n=2, seed=3, params=PARAMS, batch_size=2, progress=False)
    run_pairs(make_prompts(6), RowAwareEngine(), tmp_path / "b", n=2, seed=3, params=PARAMS, batch_size=2, progress=False)
    assert (tmp_path / "a" / "records.jsonl").read_text() == (tmp_path / "b" / "records.jsonl").read_text()
    run_pairs(make_prompts(6), RowAwareEngine(), tmp_path / "c", n=2, seed=4, params=PARAMS, batch_size=2, progress=False)
    assert records(tmp_path / "a")[0]["responses"] != records(tmp_path / "c")[0]["responses"]  # the seed matters

    engine = RowAwareEngine()
    summary = run_pairs(make_prompts(9), engine, tmp_path / "a", n=2, seed=3, params=PARAMS, batch_size=2, progress=False)
    assert summary["already_done"] == 6 and summary["generated"] == 3
    assert sum(len(reqs) for reqs, _ in engine.calls) == 6
    assert len({r["id"] for r in records(tmp_path / "a")}) == 9


def test_pairs_identity_and_arguments(tmp_path):
    run_pairs(make_prompts(1), FakeEngine(), tmp_path / "run", n=2, params=PARAMS, progress=False)
    with pytest.raises(RunDirError, match="n: was 2, now 3"):
        run_pairs(make_prompts(1), FakeEngine(), tmp_path / "run", n=3, params=PARAMS, progress=False)
    with pytest.raises(ValueError, match="n must be"):
        run_pairs(make_prompts(1), FakeEngine(), tmp_path / "other", n=1, params=PARAMS, progress=False)


def test_pairs_system_prompt(tmp_path):
    engine = FakeEngine()
    run_pairs(make_prompts(1), engine, tmp_path / "run", n=2, params=PARAMS, system_prompt="Be brief.", progress=False)
    assert engine.calls[0][0][0][0] == {"role": "system", "content": "Be brief."}
    assert records(tmp_path / "run")[0]["messages"] == [{"role": "user", "content": "question 0"}]
