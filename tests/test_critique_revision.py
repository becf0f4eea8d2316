"""SL-CAI critique/revision: principle draws, conversation structure, batching by stage, resume."""

from __future__ import annotations

import collections
import json

import pytest

from constitution.schema import Constitution, CritiqueRevisionPrinciple, FewShotExample
from engines.base import Completion, GenerationParams
from generators.critique_revision import conversation_prefix, draw_principle, run_sl_cai
from generators.inputs import PromptItem
from jobs.rundir import RunDirError


class FakeEngine:
    """Implements the engine protocol's generate; answers are derived from the request so tests can
    check what the model was shown. Every generate call is recorded."""

    name = "fake"
    can_score = False

    def __init__(self, model_id: str = "fake-model"):
        self.model_id = model_id
        self.calls: list[tuple[list, GenerationParams]] = []

    def generate(self, requests, params):
        self.calls.append(([json.loads(json.dumps(r)) for r in requests], params))
        out = []
        for r in requests:
            last = r[-1]["content"] if isinstance(r, list) else r
            turn = len(r) if isinstance(r, list) else 0
            text = f"reply#{turn} to <{last[:24]}> seed={params.seed}"
            out.append(Completion(text=text, prompt_tokens=turn * 10, completion_tokens=7, finish_reason="stop"))
        return out

    def render_chat(self, messages, add_generation_prompt=True):
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def make_constitution(*, few_shot: bool = True, system: bool = True, weights=(1.0, 1.0, 1.0)) -> Constitution:
    principles = [
        CritiqueRevisionPrinciple(id=f"p{i}", critique=f"CRITIQUE-REQ-{i}", revision=f"REVISION-REQ-{i}", weight=w)
        for i, w in enumerate(weights)
    ]
    shots = [FewShotExample(prompt="FS-PROMPT", response="FS-RESPONSE", principle="p1", critique="FS-CRITIQUE", revision="FS-REVISION")] if few_shot else []
    return Constitution(name="test", version="1", system_prompt="SYSTEM" if system else None, critique_revision=principles, few_shot=shots)


def make_prompts(n: int) -> list[PromptItem]:
    return [PromptItem(id=f"q{i:03d}", messages=[{"role": "user", "content": f"question {i}"}]) for i in range(n)]


PARAMS = GenerationParams(max_new_tokens=8, temperature=0.7)


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines() if line.strip()]


# ---- principle draws --------------------------------------------------------------------------------


def test_principle_draw_is_seeded_reproducible_and_varies():
    c = make_constitution()
    draws = [draw_principle(c, 0, f"q{i}", 0).id for i in range(60)]
    assert draws == [draw_principle(c, 0, f"q{i}", 0).id for i in range(60)]
    assert set(draws) == {"p0", "p1", "p2"}  # 60 draws over 3 equal weights hit all three
    assert draws != [draw_principle(c, 1, f"q{i}", 0).id for i in range(60)]  # the seed matters
    assert draws != [draw_principle(c, 0, f"q{i}", 1).id for i in range(60)]  # the round matters


def test_principle_draw_follows_weights():
    c = make_constitution(weights=(8.0, 1.0, 1.0))
    counts = collections.Counter(draw_principle(c, 0, f"q{i}", 0).id for i in range(1000))
    assert 720 < counts["p0"] < 880  # expected 800
    assert counts["p1"] > 50 and counts["p2"] > 50


def test_principle_draw_independent_of_batching(tmp_path):
    c = make_constitution()
    prompts = make_prompts(10)
    run_sl_cai(c, prompts, FakeEngine(), tmp_path / "a", rounds=2, params=PARAMS, batch_size=1, progress=False)
    run_sl_cai(c, prompts, FakeEngine(), tmp_path / "b", rounds=2, params=PARAMS, batch_size=4, progress=False)
    a = {r["id"]: r["principle_ids"] for r in records(tmp_path / "a")}
    b = {r["id"]: r["principle_ids"] for r in records(tmp_path / "b")}
    assert a == b and len(a) == 10


# ---- conversation structure ------------------------------------------------------------------------


def test_conversation_has_few_shot_in_front_and_roles_alternate(tmp_path):
    c = make_constitution()
    engine = FakeEngine()
    run_sl_cai(c, make_prompts(2), engine, tmp_path / "run", rounds=2, params=PARAMS, progress=False)
    # stages: initial, critique r1, revision r1, critique r2, revision r2
    assert len(engine.calls) == 5
    last_conv = engine.calls[-1][0][0]
    assert last_conv[0] == {"role": "system", "content": "SYSTEM"}
    few_shot = [m["content"] for m in last_conv[1:7]]
    assert few_shot == ["FS-PROMPT", "FS-RESPONSE", "CRITIQUE-REQ-1", "FS-CRITIQUE", "REVISION-REQ-1", "FS-REVISION"]
    roles = [m["role"] for m in last_conv[1:]]
    assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"] * (len(roles) % 2)
    assert last_conv[-1]["role"] == "user"  # the request being answered
    real = last_conv[7:]
    assert real[0]["content"] == "question 0"
    rec = records(tmp_path / "run")[0]
    p1, p2 = (c.critique_principle(pid) for pid in rec["principle_ids"])
    # the real exchange continues in one conversation: answer, critique, revision, critique, [revision]
    assert [m["content"] for m in real[1:]] == [
        rec["initial_response"], p1.critique, rec["rounds"][0]["critique"], p1.revision,
        rec["rounds"][0]["revision"], p2.critique, rec["rounds"][1]["critique"], p2.revision,
    ]
    assert rec["final_revision"] == rec["rounds"][1]["revision"]
    assert rec["rounds"][1]["revision"].startswith(f"reply#{len(last_conv)} to <{p2.revision[:24]}>")


def test_record_fields(tmp_path):
    c = make_constitution()
    run_sl_cai(c, make_prompts(3), FakeEngine(), tmp_path / "run", rounds=1, seed=5, params=PARAMS, progress=False)
    rec = records(tmp_path / "run")[0]
    assert rec["id"] == "q000" and rec["prompt"] == [{"role": "user", "content": "question 0"}]
    assert rec["model"] == "fake-model" and rec["engine"] == "fake" and rec["seed"] == 5
    assert rec["constitution"] == "test@1" and rec["constitution_hash"] == c.content_hash
    assert rec["params"] == {"max_new_tokens": 8, "temperature": 0.7, "top_p": 1.0, "stop": []}
    r1 = rec["rounds"][0]
    assert set(r1) >= {"round", "principle_id", "critique_request", "critique", "revision_request", "revision"}
    assert r1["critique_request"] == c.critique_principle(r1["principle_id"]).critique
    assert rec["tokens"]["initial"]["completion_tokens"] == 7
    assert rec["tokens"]["critique"]["completion_tokens"] == 7 and rec["tokens"]["revision"]["completion_tokens"] == 7
    assert rec["tokens"]["total"]["completion_tokens"] == 21
    assert rec["tokens"]["total"]["prompt_tokens"] == sum(rec["tokens"][s]["prompt_tokens"] for s in ("initial", "critique", "revision"))


def test_revision_only_skips_the_critique_turn(tmp_path):
    c = make_constitution()
    engine = FakeEngine()
    run_sl_cai(c, make_prompts(3), engine, tmp_path / "run", rounds=2, revision_only=True, params=PARAMS, progress=False)
    assert len(engine.calls) == 3  # initial + 2 revisions
    conv = engine.calls[-1][0][0]
    texts = [m["content"] for m in conv]
    assert not any(t.startswith("CRITIQUE-REQ") for t in texts)
    assert texts[1:5] == ["FS-PROMPT", "FS-RESPONSE", "REVISION-REQ-1", "FS-REVISION"]  # few-shot shaped the same way
    rec = records(tmp_path / "run")[0]
    assert rec["revision_only"] is True
    assert all(r["critique"] is None and r["revision"] for r in rec["rounds"])


def test_no_system_prompt_no_few_shot():
    assert conversation_prefix(make_constitution(few_shot=False, system=False)) == []


def test_constitution_without_principles_is_refused(tmp_path):
    c = Constitution(name="empty", version="1")
    with pytest.raises(ValueError, match="no critique_revision principles"):
        run_sl_cai(c, make_prompts(1), FakeEngine(), tmp_path / "run", params=PARAMS, progress=False)


# ---- batching by stage ------------------------------------------------------------------------------


@pytest.mark.parametrize("n_prompts,batch_size,rounds,revision_only", [(10, 2, 1, False), (33, 4, 2, False), (9, 1, 3, True)])
def test_engine_calls_are_stages_times_chunks(tmp_path, n_prompts, batch_size, rounds, revision_only):
    engine = FakeEngine()
    run_sl_cai(make_constitution(), make_prompts(n_prompts), engine, tmp_path / "run", rounds=rounds,
               revision_only=revision_only, params=PARAMS, batch_size=batch_size, progress=False)
    chunk = batch_size * 4
    chunks = -(-n_prompts // chunk)
    stages = 1 + rounds * (1 if revision_only else 2)
    assert len(engine.calls) == stages * chunks
    assert sum(len(reqs) for reqs, _ in engine.calls) == stages * n_prompts
    assert max(len(reqs) for reqs, _ in engine.calls) == min(chunk, n_prompts)
    assert len(records(tmp_path / "run")) == n_prompts


def test_stage_seeds_differ_and_repeat(tmp_path):
    e1, e2 = FakeEngine(), FakeEngine()
    run_sl_cai(make_constitution(), make_prompts(4), e1, tmp_path / "a", params=PARAMS, progress=False)
    run_sl_cai(make_constitution(), make_prompts(4), e2, tmp_path / "b", params=PARAMS, progress=False)
    seeds = [p.seed for _, p in e1.calls]
    assert len(set(seeds)) == len(seeds)  # each stage samples with its own seed
    assert seeds == [p.seed for _, p in e2.calls]
    assert (tmp_path / "a" / "records.jsonl").read_text() == (tmp_path / "b" / "records.jsonl").read_text()


# ---- resume -----------------------------------------------------------------------------------------


class CrashingEngine(FakeEngine):
    def __init__(self, crash_on_call: int):
        super().__init__()
        self.crash_on_call = crash_on_call

    def generate(self, requests, params):
        if len(self.calls) + 1 == self.crash_on_call:
            raise KeyboardInterrupt("simulated interruption")
        return super().generate(requests, params)


def test_resume_after_interruption_skips_done_ids(tmp_path):
    c, prompts = make_constitution(), make_prompts(20)
    # chunk = 8 prompts, 3 stages per chunk: the 7th call is the first stage of the third chunk
    with pytest.raises(KeyboardInterrupt):
        run_sl_cai(c, prompts, CrashingEngine(7), tmp_path / "run", params=PARAMS, batch_size=2, progress=False)
    assert len(records(tmp_path / "run")) == 16
    engine = FakeEngine()
    summary = run_sl_cai(c, prompts, engine, tmp_path / "run", params=PARAMS, batch_size=2, progress=False)
    assert summary["already_done"] == 16 and summary["generated"] == 4
    assert sum(len(reqs) for reqs, _ in engine.calls) == 4 * 3
    ids = [r["id"] for r in records(tmp_path / "run")]
    assert sorted(ids) == sorted(p.id for p in prompts) and len(set(ids)) == 20


def test_rerun_with_other_settings_is_refused(tmp_path):
    c = make_constitution()
    run_sl_cai(c, make_prompts(2), FakeEngine(), tmp_path / "run", params=PARAMS, progress=False)
    with pytest.raises(RunDirError, match="model"):
        run_sl_cai(c, make_prompts(2), FakeEngine("other-model"), tmp_path / "run", params=PARAMS, progress=False)
    with pytest.raises(RunDirError, match="constitution_hash"):
        run_sl_cai(make_constitution(weights=(2.0, 1.0, 1.0)), make_prompts(2), FakeEngine(), tmp_path / "run", params=PARAMS, progress=False)
    with pytest.raises(RunDirError, match="rounds"):
        run_sl_cai(c, make_prompts(2), FakeEngine(), tmp_path / "run", rounds=2, params=PARAMS, progress=False)
    # overwrite starts over
    run_sl_cai(c, make_prompts(1), FakeEngine("other-model"), tmp_path / "run", params=PARAMS, overwrite=True, progress=False)
    assert [r["model"] for r in records(tmp_path / "run")] == ["other-model"]



def test_few_shot_limit(tmp_path):
    c = Constitution(
        name="t", version="1",
        critique_revision=[CritiqueRevisionPrinciple(id="p", critique="C", revision="R")],
        few_shot=[FewShotExample(prompt=f"FS{i}", response="r", critique="c", revision="v") for i in range(3)],
    )
    assert len(conversation_prefix(c)) == 18 and len(conversation_prefix(c, few_shot=1)) == 6
    assert conversation_prefix(c, few_shot=0) == []
    engine = FakeEngine()
    run_sl_cai(c, make_prompts(1), engine, tmp_path / "run", few_shot=1, params=PARAMS, progress=False)
    assert engine.calls[0][0][0][0]["content"] == "FS0" and len(engine.calls[0][0][0]) == 7
    assert records(tmp_path / "run")[0]["few_shot"] == 1
    with pytest.raises(RunDirError, match="few_shot"):
        run_sl_cai(c, make_prompts(1), FakeEngine(), tmp_path / "run", params=PARAMS, progress=False)
