"""Prompt files: formats, hh-rlhf transcripts, errors with file:line, skip-bad-lines, duplicate ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generators.inputs import PromptFileError, parse_hh_transcript, read_prompts
from jobs.rundir import stable_id

DATA = Path(__file__).resolve().parent.parent / "data"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_prompt_messages_and_meta(tmp_path):
    f = write(tmp_path / "p.jsonl", "\n".join([
        json.dumps({"id": "a", "prompt": "  hello  ", "category": "greeting"}),
        "",
        json.dumps({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]}),
        json.dumps({"id": 7, "prompt": "x"}),
    ]) + "\n")
    items = read_prompts(f)
    assert [i.id for i in items] == ["a", stable_id(items[1].messages), "7"]
    assert items[0].messages == [{"role": "user", "content": "hello"}]
    assert items[0].meta == {"category": "greeting"}
    assert items[1].messages[0]["role"] == "system" and items[1].line == 3


def test_plain_text_one_prompt_per_line(tmp_path):
    f = write(tmp_path / "p.txt", "first prompt\n\n  second: with a colon  \n")
    items = read_prompts(f)
    assert [i.messages for i in items] == [[{"role": "user", "content": "first prompt"}], [{"role": "user", "content": "second: with a colon"}]]
    assert items[0].id == stable_id(items[0].messages)  # same prompt, same id on every rerun


def test_hh_transcript_keeps_whole_first_turn_with_colons():
    t = "\n\nHuman: Note: my question is this: how do I bake bread?\n\nAssistant: Knead it.\n\nHuman: Why: exactly?\n\nAssistant: Gluten."
    assert parse_hh_transcript(t) == [
        {"role": "user", "content": "Note: my question is this: how do I bake bread?"},
        {"role": "assistant", "content": "Knead it."},
        {"role": "user", "content": "Why: exactly?"},
    ]


def test_hh_jsonl_chosen_and_transcript_fields(tmp_path):
    f = write(tmp_path / "hh.jsonl", "\n".join([
        json.dumps({"chosen": "\n\nHuman: Re: your offer: is it real?\n\nAssistant: Yes.", "rejected": "\n\nHuman: Re: your offer: is it real?\n\nAssistant: No."}),
        json.dumps({"transcript": "\n\nHuman: one\n\nAssistant: two\n\nHuman: three\n\nAssistant: four"}),
    ]))
    a, b = read_prompts(f)
    assert a.messages == [{"role": "user", "content": "Re: your offer: is it real?"}]
    assert a.meta == {}  # chosen/rejected are the input, not metadata
    assert [m["content"] for m in b.messages] == ["one", "two", "three"]


def test_hh_text_file_with_separators(tmp_path):
    f = write(tmp_path / "hh.txt", "Human: Subject: hi there\n\nAssistant: hello\n\nHuman: bye\n---\nHuman: second: one\n\nAssistant: ok\n")
    a, b = read_prompts(f)
    assert [m["content"] for m in a.messages] == ["Subject: hi there", "hello", "bye"]
    assert b.messages == [{"role": "user", "content": "second: one"}] and b.line == 7


def test_shipped_data_files_read():
    red = read_prompts(DATA / "red_team_prompts.jsonl")
    helpful = read_prompts(DATA / "helpful_prompts.jsonl")
    assert len(red) >= 110 and len(helpful) >= 110
    assert len({i.meta["category"] for i in red}) >= 10
    assert len(read_prompts(DATA / "sample_prompts.txt")) == 5
    hh = read_prompts(DATA / "sample_hh.jsonl")
    assert len(hh) == 3 and all(i.messages[-1]["role"] == "user" for i in hh)
    assert hh[0].messages[0]["content"].startswith("Here's my situation: my neighbor")


@pytest.mark.parametrize("line,expected", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"text": "hi"}', "expected a 'prompt' string"),
    ('{"prompt": ""}', "non-empty string"),
    ('{"messages": [{"role": "user"}]}', "messages[0]"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "messages[0].role"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}', "last message to be from the user"),
    ('{"chosen": "no markers here"}', "starting with 'Human:'"),
    ('{"prompt": "x", "id": [1]}', "'id' to be a string"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, expected):
    f = write(tmp_path / "bad.jsonl", json.dumps({"prompt": "fine"}) + "\n\n" + line + "\n")
    with pytest.raises(PromptFileError) as e:
        read_prompts(f)
    assert f"{f}:3:" in str(e.value) and expected in str(e.value)


def test_skip_bad_lines_writes_rejects(tmp_path):
    f = write(tmp_path / "bad.jsonl", '{"prompt": "ok 1"}\n{oops\n{"prompt": "ok 2"}\n{"foo": 1}\n')
    rejects = tmp_path / "out" / "rejects.jsonl"
    items = read_prompts(f, skip_bad_lines=True, rejects_path=rejects)
    assert [i.text for i in items] == ["ok 1", "ok 2"]
    rows = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [(r["line"], r["text"]) for r in rows] == [(2, "{oops"), (4, '{"foo": 1}')]
    assert all(r["file"] == str(f) and r["error"] for r in rows)


def test_skip_bad_lines_default_rejects_path(tmp_path):
    f = write(tmp_path / "bad.jsonl", '{"prompt": "ok"}\n{oops\n')
    read_prompts(f, skip_bad_lines=True)
    assert (tmp_path / "bad.jsonl.rejects.jsonl").exists()


def test_duplicate_ids(tmp_path):
    same = write(tmp_path / "same.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "x"}\n{"prompt": "y"}\n{"prompt": "y"}\n')
    assert [i.text for i in read_prompts(same)] == ["x", "y"]  # exact repeats are dropped
    clash = write(tmp_path / "clash.jsonl", '{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "z"}\n')
    with pytest.raises(PromptFileError, match=r"clash.jsonl:2: duplicate id 'a' \(first used on line 1"):
        read_prompts(clash)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(PromptFileError, match="not found"):
        read_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(PromptFileError, match="no prompts"):
        read_prompts(write(tmp_path / "empty.txt", "\n\n"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(PromptFileError, match="UTF-8"):
        read_prompts(tmp_path / "bin.txt")
