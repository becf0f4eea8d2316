"""Records as contracts (pydantic models, the one JSONL reader) and the one job runner."""

from __future__ import annotations

import json

import pytest
import yaml

from generators.records import PairRecord, SftRow, SLCAIRecord
from jobs.records import JsonlError, MessagesError, check_messages, read_jsonl, read_records
from jobs.rundir import RunDir, RunDirError
from jobs.runner import SKIPPED, BatchResult, LocalExecutor, run_job
from labelers.records import BinaryRecord, PreferenceRecord

MSG = [{"role": "user", "content": "q"}]


# ---- models ----------------------------------------------------------------------------------------


def test_dump_keeps_explicit_none_and_order_and_drops_omitted_meta():
    rec = PairRecord(id="x", prompt_id="p", messages=MSG, responses=["a", "b"], system_prompt=None, meta=None)
    assert rec.dump() == {"id": "x", "prompt_id": "p", "messages": MSG, "responses": ["a", "b"], "system_prompt": None}
    assert list(rec.dump()) == ["id", "prompt_id", "messages", "responses", "system_prompt"]
    assert "meta" in PairRecord(id="x", messages=MSG, responses=["a", "b"], meta={"k": 1}).dump()


def test_extra_keys_are_kept_after_the_declared_fields():
    row = SftRow(id="a", prompt_id="a", messages=MSG, round=1, principle_id="p", model=None, engine="e",
                 constitution=None, constitution_hash=None, seed=0, category="weapons")
    assert list(row.dump())[-2:] == ["seed", "category"] and row.dump()["model"] is None


def test_old_records_still_validate():
    SLCAIRecord.model_validate({"id": "a", "prompt": MSG, "initial_response": "x", "rounds": [{"round": 1, "principle_id": "p", "revision": "y"}]})
    BinaryRecord.model_validate({"id": "a", "prompt": MSG, "response": "r", "p_desirable": 0.7, "label": True,
                                 "confidence": 0.7, "something_new": 1})


def test_ints_from_an_engine_are_written_as_ints():
    rec = BinaryRecord(id="a", prompt=MSG, response="r", p_desirable=0.5, label=True, confidence=0.5, logprobs=[-1, -2.5])
    assert json.dumps(rec.dump()["logprobs"]) == "[-1, -2.5]"


# ---- the reader ------------------------------------------------------------------------------------


def test_reader_names_file_line_and_field(tmp_path):
    f = tmp_path / "r.jsonl"
    good = {"id": "a", "prompt": MSG, "response_a": "x", "response_b": "y", "p_a": 0.5}
    f.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "prompt": [{"role": "user", "content": 3}]}) + "\n")
    with pytest.raises(JsonlError, match=r"r\.jsonl:3: prompt\[0\]\.content: Input should be a valid string"):
        list(read_jsonl(f, PreferenceRecord))
    f.write_text(json.dumps({**good, "p_a": "high"}) + "\n")
    with pytest.raises(JsonlError, match=r"r\.jsonl:1: p_a: "):
        list(read_jsonl(f, PreferenceRecord))


def test_reader_bad_json_non_object_and_non_utf8(tmp_path):
    f = tmp_path / "r.jsonl"
    f.write_text('{"id": 1}\n{oops\n')
    with pytest.raises(JsonlError, match=r"r\.jsonl:2: not valid JSON at column 2: "):
        list(read_jsonl(f))
    f.write_text('[1]\n')
    with pytest.raises(JsonlError, match=r"r\.jsonl:1: expected a JSON object, got list"):
        list(read_jsonl(f))
    f.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')
    with pytest.raises(JsonlError, match=r"r\.jsonl:2: not valid UTF-8 \(byte 0xff at column 8\)"):
        list(read_jsonl(f))


def test_read_records_skips_torn_tail_and_duplicates(tmp_path):
    f = tmp_path / "records.jsonl"
    f.write_text('{"id": "a", "n": 1}\n{"id": "a", "n": 2}\n{"id": "b"}\n{"id": "c", "n"')
    records, dropped = read_records(f)
    assert [r["id"] for r in records] == ["a", "b"] and records[0]["n"] == 1 and dropped == 1
    assert read_records(tmp_path / "missing.jsonl") == ([], 0)


def test_one_messages_check():
    assert check_messages("q", string_role="user") == MSG
    with pytest.raises(MessagesError, match=r"messages\[1\]\.role: expected one of system, user"):
        check_messages([*MSG, {"role": "bot", "content": "x"}], roles=("system", "user", "assistant"))
    with pytest.raises(MessagesError, match="last message to be from the user"):
        check_messages([{"role": "assistant", "content": "x"}], last_role=("user", "the turn to answer"))
    with pytest.raises(MessagesError, match=r"prompt: expected a non-empty list"):
        check_messages([], "prompt")


# ---- the runner ------------------------------------------------------------------------------------


class Item:
    def __init__(self, i):
        self.id = f"i{i}"


def process(batch):
    return BatchResult([{"id": it.id} for it in batch if it.id != "i3"],
                       [{"id": it.id, "reason": "too long"} for it in batch if it.id == "i3"])


def test_runner_resumes_skips_and_uses_the_executor(tmp_path):
    items = [Item(i) for i in range(5)]
    calls = []

    class Recording(LocalExecutor):
        def map(self, fn, batches):
            calls.append([len(b) for b in batches])
            return super().map(fn, batches)

    stats = run_job(RunDir(tmp_path / "r", {"x": 1}), items[:2], process, chunk_size=2, progress=False)
    assert (stats.already_done, stats.todo, stats.written, stats.batches) == (0, 2, 2, 1)
    run = RunDir(tmp_path / "r", {"x": 1}, config={"model": "m", "seed": 3})
    stats = run_job(run, items, process, chunk_size=2, progress=False, executor=Recording(), skipped_file=True)
    assert (stats.already_done, stats.todo, stats.written) == (2, 3, 2) and calls == [[2, 1]]
    assert [json.loads(x)["id"] for x in (tmp_path / "r" / SKIPPED).read_text().splitlines()] == ["i3"]
    assert yaml.safe_load((tmp_path / "r" / RunDir.CONFIG).read_text()) == {"model": "m", "seed": 3}
    RunDir(tmp_path / "r", {"x": 1}).close()  # run_job released the lock (else: "in use by another run")
    with pytest.raises(RunDirError, match="x: was 1, now 2"):
        RunDir(tmp_path / "r", {"x": 2})


def test_runner_error_releases_the_lock_and_keeps_the_old_run(tmp_path):
    run_job(RunDir(tmp_path / "r", {"x": 1}), [Item(0)], process, chunk_size=1, progress=False)

    def boom(batch):
        raise RuntimeError("engine died")

    with pytest.raises(RuntimeError, match="engine died"):
        run_job(RunDir(tmp_path / "r", {"x": 2}, overwrite=True, config={"a": 1}), [Item(1)], boom, chunk_size=1, progress=False)
    assert [r["id"] for r in RunDir(tmp_path / "r", {"x": 1}).records()] == ["i0"]
    assert not (tmp_path / "r" / RunDir.CONFIG).exists()  # the failed overwrite's config went with it


def test_config_is_not_part_of_the_identity_and_moves_in_on_commit(tmp_path):
    with RunDir(tmp_path / "r", {"x": 1}, config={"a": 1}) as run:
        run.append([{"id": "a"}])
    with RunDir(tmp_path / "r", {"x": 1}, config={"a": 2}):  # another config resumes fine
        pass
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text()) == {"a": 2}
    with RunDir(tmp_path / "r", {"x": 9}, overwrite=True, config={"a": 3}) as run:
        assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text()) == {"a": 2}  # not yet replaced
        run.append([{"id": "b"}])
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text()) == {"a": 3}
