"""Exports: SFT and preference layouts, all-rounds, datasets folders, idempotence, pairs."""

from __future__ import annotations

import json

import datasets
import pytest
from test_critique_revision import FakeEngine, make_constitution, make_prompts

from engines.base import GenerationParams
from generators.critique_revision import run_sl_cai
from generators.exports import ExportError, export_pairs, export_run, export_sl_cai, sl_cai_rows
from generators.inputs import PromptItem
from generators.pairs import run_pairs

PARAMS = GenerationParams(max_new_tokens=8)


def jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.fixture
def sl_run(tmp_path):
    prompts = make_prompts(4)
    prompts[0] = PromptItem(id="q000", messages=prompts[0].messages, meta={"category": "weapons"})
    run_sl_cai(make_constitution(), prompts, FakeEngine(), tmp_path / "run", rounds=2, params=PARAMS, progress=False)
    return tmp_path / "run"


def test_sl_cai_export_columns_and_load_from_disk(sl_run):
    out = export_sl_cai(sl_run)
    assert out["sft"]["rows"] == 4 and out["prefs"]["rows"] == 4
    records = jsonl(sl_run / "records.jsonl")
    sft = jsonl(sl_run / "exports" / "sft.jsonl")
    prefs = jsonl(sl_run / "exports" / "prefs.jsonl")
    rec, row, pref = records[0], sft[0], prefs[0]
    assert row["id"] == rec["id"] and row["round"] == 2
    assert row["messages"] == rec["prompt"] + [{"role": "assistant", "content": rec["final_revision"]}]
    assert row["principle_id"] == rec["rounds"][-1]["principle_id"] and row["category"] == "weapons"
    assert sft[1]["category"] is None  # every row has every column
    assert pref["prompt"] == rec["prompt"]
    assert pref["chosen"] == [{"role": "assistant", "content": rec["final_revision"]}]
    assert pref["rejected"] == [{"role": "assistant", "content": rec["initial_response"]}]
    assert pref["p_chosen"] == 1.0 and pref["constitution"] == "test@1" and pref["model"] == "fake-model"

    ds = datasets.load_from_disk(str(sl_run / "exports" / "sft"))
    assert len(ds) == 4 and {"id", "messages", "principle_id", "constitution_hash"} <= set(ds.column_names)
    assert ds[0]["messages"][-1]["role"] == "assistant"
    ps = datasets.load_from_disk(str(sl_run / "exports" / "prefs"))
    assert {"prompt", "chosen", "rejected", "p_chosen"} <= set(ps.column_names) and len(ps) == 4


def test_all_rounds_and_idempotence(sl_run):
    export_sl_cai(sl_run, all_rounds=True)
    sft = jsonl(sl_run / "exports" / "sft.jsonl")
    assert len(sft) == 8 and sorted({r["round"] for r in sft}) == [1, 2]
    assert len({r["id"] for r in sft}) == 8
    first = (sl_run / "exports" / "prefs.jsonl").read_text()
    export_sl_cai(sl_run)  # rebuilt, not appended
    assert len(jsonl(sl_run / "exports" / "sft.jsonl")) == 4
    assert (sl_run / "exports" / "prefs.jsonl").read_text() == first
    assert len(datasets.load_from_disk(str(sl_run / "exports" / "sft"))) == 4


def test_prefs_skip_unchanged_and_empty_revisions():
    base = {"prompt": [{"role": "user", "content": "q"}], "model": "m", "engine": "e", "seed": 0}
    recs = [
        {**base, "id": "same", "initial_response": "A", "final_revision": "A", "rounds": [{"round": 1, "principle_id": "p", "revision": "A"}]},
        {**base, "id": "empty", "initial_response": "A", "final_revision": "", "rounds": [{"round": 1, "principle_id": "p", "revision": ""}]},
        {**base, "id": "ok", "initial_response": "A", "final_revision": "B", "rounds": [{"round": 1, "principle_id": "p", "revision": "B"}]},
    ]
    sft, prefs = sl_cai_rows(recs)
    assert [r["id"] for r in sft] == ["same", "ok"]
    assert [r["id"] for r in prefs] == ["ok"]


def test_export_ignores_torn_tail_and_rejects_wrong_dirs(sl_run, tmp_path):
    with open(sl_run / "records.jsonl", "a") as f:
        f.write('{"id": "torn", "prom')
    assert export_run(sl_run)["records"] == 4
    with pytest.raises(ExportError, match="not a run directory"):
        export_run(tmp_path / "nothing")
    with pytest.raises(ExportError, match="not a pairs run"):
        export_pairs(sl_run)


def test_pairs_export(tmp_path):
    run_pairs(make_prompts(3), FakeEngine(), tmp_path / "pairs", n=2, params=PARAMS, progress=False)
    out = export_run(tmp_path / "pairs")
    assert out["pairs"]["rows"] == 3
    rows = jsonl(tmp_path / "pairs" / "exports" / "pairs.jsonl")
    assert rows == jsonl(tmp_path / "pairs" / "records.jsonl")
    ds = datasets.load_from_disk(str(tmp_path / "pairs" / "exports" / "pairs"))
    assert {"id", "prompt_id", "messages", "responses"} <= set(ds.column_names)
