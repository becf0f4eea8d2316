"""The ``openai`` engine against a real vLLM OpenAI server (the CPU build's
``python -m vllm.entrypoints.openai.api_server``; its ``vllm`` console command does not start on that
build), started on a free localhost port for this module and stopped after it. Generation goes through
``/chat/completions`` and ``/completions``; scoring through ``/completions`` with ``echo=true`` and
``logprobs`` (the prompt's own token log-probs echoed back). Labels must agree with the transformers
engine (both float32). Fault injection stays with the fake server (tests/fake_openai_server.py)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner
from vllm_real import MODEL, P_A_TOLERANCE, cpu_env, needs_vllm, p_a_by_id, write_pairs

pytestmark = [pytest.mark.slow, pytest.mark.vllm, needs_vllm]

START_TIMEOUT = 900  # seconds: a first start on 2 busy cores loads the model and profiles it


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    from engines.embedded import resolve_model
    from engines.vllm_server import VLLMServer

    args = ["--served-model-name", MODEL, "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
            "--kv-cache-memory-bytes", str(512 * 2**20), "--max-logprobs", "20", "--disable-log-stats"]
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    with VLLMServer(resolve_model(MODEL), args, log_path=log, env=cpu_env()) as server:
        try:
            server.wait(START_TIMEOUT)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}:\n{server.log_tail()}")
        yield server.url


@pytest.fixture(scope="module")
def hf_engine():
    from engines import load_engine

    return load_engine("transformers", MODEL, dtype="float32", device="cpu")


def test_generation_chat_and_raw(vllm_server, hf_engine, tokenizer_dir):
    from engines import GenerationParams, load_engine

    engine = load_engine("openai", MODEL, base_url=vllm_server, tokenizer=str(tokenizer_dir))
    params = GenerationParams(max_new_tokens=12, temperature=0.0)
    chat = [[{"role": "user", "content": "What is the capital of France?"}]]
    got, want = engine.generate(chat, params)[0], hf_engine.generate(chat, params)[0]
    assert got.completion_tokens > 0 and got.prompt_tokens == want.prompt_tokens
    assert got.text.split()[:3] == want.text.split()[:3], (got.text, want.text)
    raw = engine.generate(["The sea is"], GenerationParams(max_new_tokens=5, temperature=0.0))[0]
    assert raw.completion_tokens == 5 and raw.finish_reason == "length"


def test_echo_scoring_matches_transformers(vllm_server, hf_engine):
    from engines import load_engine

    engine = load_engine("openai", MODEL, base_url=vllm_server)
    contexts = ["Which answer is less harmful? Answer: (", "Is the sky blue? Answer:"]
    for options in (["A", "B"], [" yes", " no"], [" (A)", " (B)"]):
        got, want = engine.score_options(contexts, options), hf_engine.score_options(contexts, options)
        assert got == [pytest.approx(w, abs=0.05) for w in want], options


def test_cli_labels_through_vllm_serve_agree_with_transformers(vllm_server, tmp_path):
    from cai_cli import app

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    for args in (["--engine", "openai", "--base-url", vllm_server], ["--engine-opt", "dtype=float32"]):
        out = tmp_path / args[1]
        result = CliRunner().invoke(app, ["label", "preference", str(pairs), "--labeler-model", MODEL, "--out", str(out),
                                          *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    got, want = p_a_by_id(tmp_path / "openai"), p_a_by_id(tmp_path / "dtype=float32")
    assert got.keys() == want.keys() and len(got) == 3
    assert max(abs(got[k] - want[k]) for k in got) <= P_A_TOLERANCE, (got, want)
