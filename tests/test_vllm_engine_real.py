"""The ``vllm`` engine for real (vLLM's CPU build, in process) on the embedded model: generation,
``score_options`` against the transformers engine, and ``cai generate sl-cai`` + ``cai label preference``
end to end through the CLI with ``--engine vllm``. One vLLM engine serves the whole module: the CLI's
engine loader is pointed at it after checking the options the CLI asked for."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner
from vllm_real import MODEL, P_A_TOLERANCE, VLLM_OPTIONS, needs_vllm, p_a_by_id, write_pairs, write_prompts

pytestmark = [pytest.mark.slow, pytest.mark.vllm, needs_vllm]


@pytest.fixture(scope="module")
def vllm_engine():
    from engines import load_engine

    engine = load_engine("vllm", MODEL, **VLLM_OPTIONS)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine():
    from engines import load_engine

    return load_engine("transformers", MODEL, dtype="float32", device="cpu")


@pytest.fixture
def cli_uses(monkeypatch, vllm_engine):
    """Route the CLI's ``--engine vllm`` to the module's engine; record what the CLI asked for."""
    from jobs.runner import EngineSpec

    asked: list[EngineSpec] = []
    real_load = EngineSpec.load

    def load(spec):
        if spec.name != "vllm":
            return real_load(spec)
        asked.append(spec)
        return vllm_engine

    monkeypatch.setattr(EngineSpec, "load", load)
    return asked


def cai(*args) -> str:
    from cai_cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_cpu_defaults(vllm_engine):
    import os

    assert vllm_engine.on_cpu
    # every CPU of this process is bound (vLLM's own "auto" would keep one of two cores for its scheduler)
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"].split(",") == [str(c) for c in sorted(os.sched_getaffinity(0))]


def test_generation_greedy_matches_transformers(vllm_engine, hf_engine):
    from engines import GenerationParams

    requests = [[{"role": "user", "content": p}] for p in ("What is the capital of France?", "Name three colours.")]
    params = GenerationParams(max_new_tokens=12, temperature=0.0)
    got, want = vllm_engine.generate(requests, params), hf_engine.generate(requests, params)
    assert [c.prompt_tokens for c in got] == [c.prompt_tokens for c in want]  # the same token ids went in
    for g, w in zip(got, want):
        assert g.completion_tokens > 0 and g.text.strip()
        # float32 on both sides: the greedy continuations agree at least on their first words
        assert g.text.split()[:3] == w.text.split()[:3], (g.text, w.text)


def test_score_options_match_transformers(vllm_engine, hf_engine):
    contexts = ["Which answer is less harmful? Answer: (", "Is the sky blue? Answer:"]
    for options in (["A", "B"], [" yes", " no"], [" (A)", " (B)"]):  # top-k fast path and prompt log-probs
        got = vllm_engine.score_options(contexts, options)
        want = hf_engine.score_options(contexts, options)
        assert got == [pytest.approx(w, abs=0.05) for w in want], options


def test_cli_sl_cai_and_labels_with_engine_vllm(tmp_path, cli_uses):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    cai("generate", "sl-cai", "--constitution", "harmless", "--prompts", prompts, "--model", MODEL, "--engine", "vllm",
        "--engine-opt", "enforce_eager=true", "--rounds", "1", "--max-new-tokens", "24", "--out", tmp_path / "sl")
    records = [json.loads(line) for line in (tmp_path / "sl" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["engine"] == "vllm" and r["rounds"] and r["initial_response"] for r in records)
    assert cli_uses and cli_uses[0].options["enforce_eager"] is True

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    cai("label", "preference", pairs, "--engine", "vllm", "--labeler-model", MODEL, "--out", tmp_path / "prefs-vllm")
    cai("label", "preference", pairs, "--engine", "transformers", "--engine-opt", "dtype=float32",
        "--labeler-model", MODEL, "--out", tmp_path / "prefs-hf")
    got, want = p_a_by_id(tmp_path / "prefs-vllm"), p_a_by_id(tmp_path / "prefs-hf")
    assert got.keys() == want.keys() and len(got) == 3
    worst = max(abs(got[k] - want[k]) for k in got)
    assert worst <= P_A_TOLERANCE, (got, want)
