import json

import pytest

from jobs.rundir import RunDir, RunDirError, stable_id


def test_stable_id_is_deterministic_and_input_derived():
    assert stable_id("a", 1) == stable_id("a", 1)
    assert stable_id("a", 1) != stable_id("a", 2)


def test_append_resume_and_torn_tail(tmp_path):
    run = RunDir(tmp_path / "r", {"model": "m"})
    run.append([{"id": "1", "x": 1}, {"id": "2", "x": 2}])
    # simulate a kill -9 in the middle of a write
    with open(run.records_path, "a") as f:
        f.write('{"id": "3", "x"')
    run.close()  # the killed process's lock went with it
    again = RunDir(tmp_path / "r", {"model": "m"})
    assert again.done_ids() == {"1", "2"}
    again.append([{"id": "3", "x": 3}])
    lines = run.records_path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["1", "2", "3"]


def test_changed_identity_is_refused_and_overwrite_starts_over(tmp_path):
    RunDir(tmp_path / "r", {"model": "m", "constitution_hash": "aa"}).append([{"id": "1"}])
    with pytest.raises(RunDirError, match="constitution_hash: was 'aa', now 'bb'"):
        RunDir(tmp_path / "r", {"model": "m", "constitution_hash": "bb"})
    fresh = RunDir(tmp_path / "r", {"model": "m", "constitution_hash": "bb"}, overwrite=True)
    assert fresh.done_ids() == set()
