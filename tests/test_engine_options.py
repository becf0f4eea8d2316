"""`--engine-opt KEY=VALUE`: back-end options from the command line, checked against the constructor."""

import json

import pytest
from fake_openai_server import FakeOpenAIServer, Reply
from typer.testing import CliRunner

from cai_cli import app
from engines import engine_options


def test_values_are_json_when_they_parse_and_text_otherwise():
    opts = engine_options("openai", {}, ["concurrency=4", "timeout=2.5", "use_chat=false", "api_key_env=MY_KEY"])
    assert opts == {"concurrency": 4, "timeout": 2.5, "use_chat": False, "api_key_env": "MY_KEY"}


def test_flags_go_only_to_back_ends_that_take_them():
    # batch_size is also the generator's chunk unit: silently not passed to a back end without it
    assert engine_options("openai", {"batch_size": 8, "base_url": "http://x/v1", "device": None}) == {"base_url": "http://x/v1"}
    with pytest.raises(ValueError, match="--device is not an option of the 'openai' engine"):
        engine_options("openai", {"device": "cuda"})
    # vllm takes **llm_options: any --engine-opt key goes through, but our own flags still must be named
    assert engine_options("vllm", {"batch_size": 8}, ["gpu_memory_utilization=0.8"]) == {"gpu_memory_utilization": 0.8}
    with pytest.raises(ValueError, match="--base-url is not an option of the 'vllm' engine"):
        engine_options("vllm", {"base_url": "http://x/v1"})


def test_bad_items_name_what_was_expected():
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        engine_options("openai", {}, ["concurrency"])
    with pytest.raises(ValueError, match="--engine-opt concurenccy: not an option of the 'openai' engine; it takes: .*concurrency"):
        engine_options("openai", {}, ["concurenccy=4"])


def test_cli_engine_opt_bounds_concurrency_against_a_real_server(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("".join(f"question number {i}?\n" for i in range(6)))
    with FakeOpenAIServer() as server:
        server.responder = lambda request: Reply(delay=0.05)  # the default answer, a little slowly
        result = CliRunner().invoke(app, [
            "generate", "pairs", "-p", str(prompts), "--engine", "openai", "--model", "toy", "--base-url", server.base_url,
            "--engine-opt", "concurrency=2", "--n", "2", "--max-new-tokens", "8", "--out", str(tmp_path / "run"), "--quiet"])
        assert result.exit_code == 0, result.output
        assert len(server.requests) == 12 and server.max_in_flight <= 2
    records = [json.loads(line) for line in (tmp_path / "run/records.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(len(r["responses"]) == 2 for r in records)

    bad = CliRunner().invoke(app, ["generate", "pairs", "-p", str(prompts), "--engine", "openai", "--model", "toy",
                                   "--engine-opt", "concurenccy=2", "--out", str(tmp_path / "run2")])
    assert bad.exit_code == 2 and "not an option of the 'openai' engine" in bad.output
