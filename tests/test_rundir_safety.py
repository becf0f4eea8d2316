"""Run directories under hostile use: --overwrite never loses data it does not own, two runs never
share a folder, resume compares paths and input files by content, damaged files are named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from test_critique_revision import PARAMS, FakeEngine, make_prompts
from typer.testing import CliRunner

from cai_cli import app
from generators.exports import export_pairs, export_sl_cai
from generators.pairs import run_pairs
from jobs.rundir import RunDir, RunDirError
from labelers.exports import export_kto, export_preferences, export_scores

ID = {"model": "m"}


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def old_run(path, n=4, identity=ID, kind="pairs"):
    """A finished run with n records, exports, a summary and a file of the user's (written by hand)."""
    (path / "exports").mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"kind": kind, "identity": identity}))
    (path / "records.jsonl").write_text("".join(json.dumps({"id": f"old{i}"}) + "\n" for i in range(n)))
    (path / "exports" / "sft.jsonl").write_text("{}\n")
    (path / "summary.json").write_text("{}")
    (path / "notes.txt").write_text("mine")
    return path


class DownEngine(FakeEngine):
    """A server that is down: every call fails."""

    def generate(self, requests, params):
        raise ConnectionError("server down")


# ---- 1. --overwrite ----------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_that_is_not_a_run_is_refused_and_left_alone(tmp_path, monkeypatch, overwrite):
    folder = tmp_path / "thesis"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("years of work")
    with pytest.raises(RunDirError, match="not empty and is not a run directory .*thesis.txt"):
        RunDir(folder, ID, overwrite=overwrite, kind="pairs")
    with pytest.raises(RunDirError, match="not a run directory"):
        RunDir.check(folder, ID, kind="pairs", overwrite=overwrite)
    monkeypatch.chdir(folder)  # --out . --overwrite
    with pytest.raises(RunDirError, match="not a run directory"):
        RunDir(".", ID, overwrite=overwrite, kind="pairs")
    assert sorted(p.name for p in folder.iterdir()) == ["sub", "thesis.txt"]


def test_overwrite_replaces_only_owned_files_and_only_at_the_first_append(tmp_path):
    run = old_run(tmp_path / "run")
    new = RunDir(run, {"model": "other"}, overwrite=True, kind="pairs")
    assert len(lines(run / "records.jsonl")) == 4 and json.loads((run / "run.json").read_text())["identity"] == ID
    assert new.done_ids() == set()  # the new run starts empty, beside the old one
    new.append([{"id": "new0"}])
    new.close()
    assert [r["id"] for r in lines(run / "records.jsonl")] == ["new0"]
    assert new.records_path == run / "records.jsonl"
    assert json.loads((run / "run.json").read_text())["identity"] == {"model": "other"}
    assert sorted(p.name for p in run.iterdir()) == ["lock", "notes.txt", "records.jsonl", "run.json"]


def test_overwrite_that_fails_before_any_record_leaves_the_old_run(tmp_path):
    run = old_run(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "lock"}
    with pytest.raises(ConnectionError):
        run_pairs(make_prompts(3), DownEngine("other"), run, params=PARAMS, overwrite=True, progress=False)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != "lock"} == before
    assert (run / "exports" / "sft.jsonl").exists() and not list(run.glob(".overwrite-*"))
    RunDir(run, ID, kind="pairs").close()  # resumable as before, and not locked


def test_overwrite_with_nothing_to_do_replaces_the_old_run_by_an_empty_one(tmp_path):
    run = old_run(tmp_path / "run", identity={"x": 1})
    summary = run_pairs([], FakeEngine(), run, params=PARAMS, overwrite=True, progress=False)
    assert summary["records"] == str(run / "records.jsonl") and not (run / "records.jsonl").exists()
    assert json.loads((run / "run.json").read_text())["identity"]["model"] == "fake-model"
    assert export_pairs(run)["pairs"]["rows"] == 0


def test_overwrite_run_returns_and_exports_the_final_location(tmp_path):
    run = old_run(tmp_path / "run", identity={"x": 1})
    summary = run_pairs(make_prompts(3), FakeEngine(), run, params=PARAMS, batch_size=1, overwrite=True, progress=False)
    assert summary["records"] == str(run / "records.jsonl") and len(lines(run / "records.jsonl")) == 3
    assert export_pairs(run)["pairs"]["rows"] == 3


def test_stale_overwrite_folder_of_a_killed_run_is_cleaned_and_interrupted_swap_is_refused(tmp_path):
    run = old_run(tmp_path / "run")
    (run / "notes.txt").unlink()  # with a file of the user's in it, such a folder is refused as foreign
    (run / ".overwrite-99999").mkdir()
    RunDir(run, ID, kind="pairs").close()
    assert not (run / ".overwrite-99999").exists()
    (run / "run.json").unlink()  # a crash between removing the old manifest and placing the new one
    with pytest.raises(RunDirError, match="no run.json .*--overwrite"):
        RunDir(run, ID, kind="pairs")
    RunDir(run, ID, overwrite=True, kind="pairs").close()


def test_cli_overwrite_refuses_a_foreign_folder_and_a_down_server_keeps_the_old_run(tmp_path, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\nworld\n")
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("years of work")
    args = ["generate", "pairs", "-p", str(prompts), "--quiet", "--overwrite", "--out"]
    monkeypatch.setattr("generators.cli._load_engine", lambda *a, **k: DownEngine())
    r = CliRunner().invoke(app, args + [str(foreign)])
    assert r.exit_code == 2 and "not a run directory" in r.output and (foreign / "thesis.txt").exists()

    run = old_run(tmp_path / "run")
    r = CliRunner().invoke(app, args + [str(run)])
    assert r.exit_code != 0 and "server down" in (r.output + repr(r.exception))
    assert [x["id"] for x in lines(run / "records.jsonl")] == [f"old{i}" for i in range(4)]


# ---- 2. two runs at once, duplicates -----------------------------------------------------------


def test_a_second_run_on_the_same_folder_is_refused_naming_the_holder(tmp_path):
    first = RunDir(tmp_path / "r", ID)
    with pytest.raises(RunDirError, match=rf"in use by another run \(pid {os.getpid()} on "):
        RunDir(tmp_path / "r", ID)
    with pytest.raises(RunDirError, match="in use"):
        RunDir.check(tmp_path / "r", ID, kind="run")
    first.close()
    RunDir.check(tmp_path / "r", ID, kind="run")  # the check leaves no lock behind
    with RunDir(tmp_path / "r", ID) as again:
        again.append([{"id": "1"}])
    RunDir(tmp_path / "r", ID).close()


def test_the_lock_holds_against_another_process(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from jobs.rundir import RunDir
        rd = RunDir({str(tmp_path / "r")!r}, {{"model": "m"}})
        print("locked", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"pid {proc.pid} on "):
            RunDir(tmp_path / "r", ID)
    finally:
        proc.communicate("", timeout=30)
    RunDir(tmp_path / "r", ID).close()  # released when the process ended


def test_exports_and_records_count_each_id_once(tmp_path):
    pairs = run_pairs(make_prompts(2), FakeEngine(), tmp_path / "pairs", params=PARAMS, progress=False)
    path = tmp_path / "pairs" / "records.jsonl"
    path.write_text(path.read_text() * 2)  # what two concurrent runs used to leave
    out = export_pairs(tmp_path / "pairs")
    assert out["pairs"]["rows"] == 2 and out["duplicates_dropped"] == 2 and pairs["generated"] == 2

    sl = tmp_path / "sl"
    rec = {"prompt": [{"role": "user", "content": "q"}], "initial_response": "a", "final_revision": "b",
           "rounds": [{"round": 1, "principle_id": "p", "revision": "b"}]}
    with RunDir(sl, ID, kind="sl-cai") as rd:
        rd.append([{**rec, "id": "x"}, {**rec, "id": "y"}, {**rec, "id": "x", "final_revision": "later"}])
        assert [r["id"] for r in rd.records()] == ["x", "y"]
    out = export_sl_cai(sl)
    assert out["sft"]["rows"] == 2 and out["prefs"]["rows"] == 2 and out["duplicates_dropped"] == 1

    labels = tmp_path / "labels"
    labels.mkdir()
    row = {"prompt": [], "response": "r", "response_a": "a", "response_b": "b", "p_a": 0.9, "p_desirable": 0.9,
           "label": True, "confidence": 0.9, "score": 0.5, "expected_rating": 7.0}
    (labels / "records.jsonl").write_text("".join(json.dumps({**row, "id": i}) + "\n" for i in ["a", "b", "a"]))
    for export in (export_preferences, export_kto, export_scores):
        out = export(labels)
        assert out["rows"] == 2 and out["duplicates_dropped"] == 1


# ---- 3. identity paths and input fingerprints --------------------------------------------------


def test_paths_in_the_identity_compare_resolved_but_names_do_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    ident = {"model": "models/mine", "hub": "HuggingFaceTB/SmolLM2-135M", "name": "smollm2-135m"}
    RunDir("run", ident).close()
    manifest = (tmp_path / "run" / "run.json").read_text()
    assert json.loads(manifest)["identity"] == {**ident, "model": str(tmp_path / "models" / "mine")}
    assert str(tmp_path / "run") not in manifest  # the run's own location is never recorded
    RunDir(tmp_path / "run", {**ident, "model": str(tmp_path / "models" / "mine") + "/"}).close()
    monkeypatch.chdir(tmp_path / "models")
    RunDir(tmp_path / "run", {**ident, "model": "mine"}).close()
    with pytest.raises(RunDirError, match="model: was"):
        RunDir(tmp_path / "run", {**ident, "model": "other"})


def test_old_manifests_with_a_relative_path_still_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(json.dumps({"kind": "run", "identity": {"model": "mine"}}))
    RunDir("run", {"model": str(tmp_path / "mine")}).close()


def test_an_input_edited_since_the_run_started_is_refused_appending_is_not(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    RunDir(tmp_path / "r", ID, inputs=[prompts]).close()
    prompts.write_text("one\ntwo\nthree\n")  # grown: the done ids still mean what they meant
    RunDir(tmp_path / "r", ID, inputs=[prompts]).close()
    prompts.write_text("one\nTWO\nthree\n")
    with pytest.raises(RunDirError, match=f"input file {prompts} changed since the run .* --overwrite"):
        RunDir(tmp_path / "r", ID, inputs=[prompts])
    RunDir(tmp_path / "r", ID, inputs=[prompts], overwrite=True).close()

    no_newline = tmp_path / "n.txt"
    no_newline.write_text("one")
    RunDir(tmp_path / "n", ID, inputs=[no_newline]).close()
    no_newline.write_text("one more\n")  # the last line changed, though the old bytes are a prefix
    with pytest.raises(RunDirError, match="changed since"):
        RunDir(tmp_path / "n", ID, inputs=[no_newline])


def test_a_manifest_without_fingerprints_accepts_and_records_them(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\n")
    RunDir(tmp_path / "r", ID).close()  # as 0.1.0 wrote it
    RunDir(tmp_path / "r", ID, inputs=[prompts]).close()
    [fp] = json.loads((tmp_path / "r" / "run.json").read_text())["inputs"]
    assert fp["size"] == 4 and len(fp["sha256"]) == 64


def test_a_runner_refuses_an_edited_prompt_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\n")
    run_pairs(make_prompts(1), FakeEngine(), tmp_path / "r", params=PARAMS, input_files=[prompts], progress=False)
    prompts.write_text("uno\n")
    with pytest.raises(RunDirError, match="prompts.txt changed since"):
        run_pairs(make_prompts(1), FakeEngine(), tmp_path / "r", params=PARAMS, input_files=[prompts], progress=False)


# ---- 4. damaged files --------------------------------------------------------------------------


def test_a_damaged_manifest_is_named(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text('{"kind": "pairs",\n  oops}')
    for attempt in (lambda: RunDir(tmp_path / "r", ID, kind="pairs"), lambda: RunDir.check(tmp_path / "r", ID, kind="pairs")):
        with pytest.raises(RunDirError, match=r"r/run.json is not valid JSON \(line 2\): .*use another --out"):
            attempt()


def test_a_damaged_record_line_is_named_and_the_lock_released(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text(json.dumps({"kind": "run", "identity": ID}))
    path = tmp_path / "r" / "records.jsonl"
    good = ['{"id": "1"}\n', '{"id": "2"}\n', '{"id": "3"}\n']
    path.write_text(good[0] + '{"id": "2", "text": "a\tb"}\n' + good[2] + '{"id": "4", "x"')  # bad line 2, torn tail
    rd = RunDir(tmp_path / "r", ID)
    assert path.read_text().endswith(good[2])  # the torn last line is still cut off
    with pytest.raises(RunDirError, match=r"records.jsonl:2: not valid JSON at column \d+: Invalid control character"):
        rd.done_ids()
    RunDir(tmp_path / "r", ID).close()  # a failed run keeps no one out
