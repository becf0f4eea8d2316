"""`--executor ray`: generation and labeling sharded over Ray workers (jobs/ray_executor.py).

One local Ray cluster (2 CPUs) serves the whole module. The scripted EchoEngine (tests/ray_fakes.py, named
``ray_fakes:EchoEngine``) covers resume and worker deaths; the embedded SmolLM2 (slow) checks that 2 workers
write the same records as one process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cai_cli import app

TESTS = Path(__file__).resolve().parent
HARMLESS = str(TESTS.parent / "constitution" / "library" / "harmless.yaml")
ECHO = "ray_fakes:EchoEngine"
TIMING = {"seconds", "tokens_per_s"}
runner = CliRunner()


def cai(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def prompts_file(tmp_path, n: int) -> Path:
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"Question number {i}?"}) + "\n" for i in range(n)))
    return f


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def by_id(recs: list[dict]) -> dict:
    return {r["id"]: {k: v for k, v in r.items() if k not in TIMING} for r in recs}


def pairs_args(prompts, out, *more):
    return ["generate", "pairs", "-p", prompts, "--engine", ECHO, "--model", "echo-model", "--batch-size", 1,
            "--temperature", 0.5, "--out", out, "--quiet", *more]


def test_ray_pairs_match_local_and_options_are_not_identity(ray_cluster, tmp_path):
    prompts = prompts_file(tmp_path, 6)  # batch-size 1, n 2 → chunks of 2 prompts: 3 batches
    r = cai(*pairs_args(prompts, tmp_path / "local"))
    assert r.exit_code == 0, r.output
    r = cai(*pairs_args(prompts, tmp_path / "ray", "--executor", "ray", "--num-workers", 2))
    assert r.exit_code == 0, r.output
    assert "6 prompts generated" in r.output
    assert by_id(records(tmp_path / "ray")) == by_id(records(tmp_path / "local")) and len(records(tmp_path / "ray")) == 6
    saved = yaml.safe_load((tmp_path / "ray" / "config.yaml").read_text())
    assert (saved["executor"], saved["num_workers"], saved["ray_address"]) == ("ray", 2, None)
    assert "num_workers" not in (tmp_path / "ray" / "run.json").read_text()
    r = cai(*pairs_args(prompts, tmp_path / "ray"))  # the same run, resumed locally: nothing left to do
    assert r.exit_code == 0 and "0 prompts generated, 6 already done" in r.output, r.output


def test_interrupted_ray_run_resumes_with_other_worker_count(ray_cluster, tmp_path):
    prompts, out, marker = prompts_file(tmp_path, 8), tmp_path / "run", tmp_path / "fail"
    marker.write_text("")
    fail = ["--engine-opt", "fail_on=number 7?", "--engine-opt", f"fail_marker={marker}"]
    r = cai(*pairs_args(prompts, out, "--executor", "ray", "--num-workers", 2, *fail))
    assert r.exit_code == 2 and "scripted failure on number 7?" in r.output, r.output
    first = [x["prompt_id"] for x in records(out)]
    assert len(first) < 8 and len(set(first)) == len(first) and "p7" not in first
    marker.unlink()
    r = cai(*pairs_args(prompts, out, "--executor", "ray", "--num-workers", 1, *fail))
    assert r.exit_code == 0, r.output
    assert f"{8 - len(first)} prompts generated, {len(first)} already done" in r.output
    ids = [x["prompt_id"] for x in records(out)]
    assert sorted(ids) == [f"p{i}" for i in range(8)]  # every input exactly once
    assert yaml.safe_load((out / "config.yaml").read_text())["num_workers"] == 1


def test_worker_dying_mid_shard_is_redone(ray_cluster, tmp_path):
    prompts, out, marker = prompts_file(tmp_path, 8), tmp_path / "run", tmp_path / "died"
    die = ["--engine-opt", "die_on=number 3?", "--engine-opt", f"die_marker={marker}"]
    r = cai(*pairs_args(prompts, out, "--executor", "ray", "--num-workers", 2, *die))
    assert r.exit_code == 0, r.output
    assert marker.exists()  # a worker did die (os._exit) in the batch holding p3
    ids = [x["prompt_id"] for x in records(out)]
    assert sorted(ids) == [f"p{i}" for i in range(8)]  # its shard was redone: nothing lost or duplicated
    r = cai(*pairs_args(prompts, tmp_path / "local"))
    assert by_id(records(out)) == by_id(records(tmp_path / "local"))


@pytest.mark.parametrize("kind", ["preference", "binary", "score"])
def test_ray_labeling_matches_local(ray_cluster, tmp_path, kind, monkeypatch):
    """The labelers' per-batch functions travel too (scored here by a fake labeler built from a spec); the
    driver of the Ray run loads no engine (its head node may have no GPU)."""
    data = tmp_path / "in.jsonl"
    row = (lambda i: {"prompt": f"q{i}", "response_a": f"a{i}", "response_b": f"b{i}"}) if kind == "preference" else \
        (lambda i: {"prompt": f"q{i}", "response": f"r{i}"})
    data.write_text("".join(json.dumps(row(i)) + "\n" for i in range(5)))
    common = ["label", kind, data, "--engine", "ray_fakes:ScoringEngine", "--labeler-model", "fake", "--batch-size", 4, "--quiet"]
    r = cai(*common, "--out", tmp_path / "local")
    assert r.exit_code == 0, r.output
    monkeypatch.setattr("labelers.cli._load_engine", lambda c: pytest.fail("the driver should load no engine"))
    r = cai(*common, "--out", tmp_path / "ray", "--executor", "ray", "--num-workers", 2)
    assert r.exit_code == 0, r.output
    assert by_id(records(tmp_path / "ray")) == by_id(records(tmp_path / "local")) and len(records(tmp_path / "ray")) == 5


@pytest.mark.parametrize("command", [["generate", "pairs", "-p", "prompts.jsonl", "--out", "o"],
                                     ["label", "score", "pairs.jsonl", "--out", "o"]])
def test_executor_ray_without_ray_is_one_line(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    prompts_file(tmp_path, 1)
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "q", "response_a": "a", "response_b": "b"}) + "\n")
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setattr("generators.cli._load_engine", lambda c: pytest.fail("no engine should load"))
    monkeypatch.setattr("labelers.cli._load_engine", lambda c: pytest.fail("no engine should load"))
    r = cai(*command, "--engine", ECHO, "--executor", "ray")
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == ["error: --executor ray needs the ray package: pip install 'cai-toolkit[ray]'"]


@pytest.mark.slow
def test_embedded_model_two_workers_match_one_process_pairs(ray_cluster, tmp_path, embedded_model_dir):
    common = ["generate", "pairs", "-p", prompts_file(tmp_path, 4), "--batch-size", 1, "--temperature", 0,  # chunks of 2: 2 batches
              "--model", "smollm2-135m", "--max-new-tokens", 4, "--quiet"]
    r = cai(*common, "--out", tmp_path / "local")
    assert r.exit_code == 0, r.output
    r = cai(*common, "--out", tmp_path / "ray", "--executor", "ray", "--num-workers", 2)
    assert r.exit_code == 0, r.output
    local, remote = by_id(records(tmp_path / "local")), by_id(records(tmp_path / "ray"))
    assert len(remote) == 4 and remote == local


@pytest.mark.slow
def test_embedded_model_two_workers_match_one_process_sl_cai(ray_cluster, tmp_path, embedded_model_dir):
    """SL-CAI through the API (the CLI's chunks are 4 × batch-size prompts): 2 prompts, one per chunk."""
    from constitution.loader import resolve_constitution
    from engines.base import GenerationParams
    from generators.critique_revision import run_sl_cai
    from generators.inputs import read_prompts
    from jobs.ray_executor import RayExecutor
    from jobs.runner import EngineSpec

    cons, items = resolve_constitution(HARMLESS), read_prompts(prompts_file(tmp_path, 2))
    spec = EngineSpec("transformers", "smollm2-135m", {"batch_size": 1})
    engine = spec.load()
    kw = dict(params=GenerationParams(max_new_tokens=4, temperature=0.0), few_shot=0, chunk_size=1, progress=False)
    run_sl_cai(cons, items, engine, tmp_path / "local", **kw)
    run_sl_cai(cons, items, engine, tmp_path / "ray", executor=RayExecutor(num_workers=2), engine_spec=spec, **kw)
    local, remote = by_id(records(tmp_path / "local")), by_id(records(tmp_path / "ray"))
    assert len(remote) == 2 and remote == local
