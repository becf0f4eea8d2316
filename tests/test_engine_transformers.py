"""The transformers engine against naive, one-prompt-at-a-time references on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from engines import GenerationParams, load_engine
from engines.base import Engine


@pytest.fixture(scope="module")
def lively_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama with large random weights. At the default init scale its tied embeddings make
    greedy decoding repeat the prompt's last token forever, which would hide padding bugs; with
    std 0.5 weights every prompt gets its own varied, sharply peaked continuation."""
    import shutil

    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("lively") / "model"
    shutil.copytree(tiny_model_dir, folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def engine(lively_model_dir):
    return load_engine("transformers", str(lively_model_dir), batch_size=4, dtype="float32")  # exact equalities below: float32 on any CPU


CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Tell me a long story about a cat who learns to sail across the ocean."}],
    [{"role": "user", "content": "What is two plus two?"}],
]
RAW = ["Hello there, how are you doing today my friend?", "x", "The quick brown fox jumps over"]


def naive_greedy(engine, request, max_new_tokens):
    """One prompt, no padding: what batched greedy decoding must reproduce."""
    text = engine.render_chat(request) if isinstance(request, list) else request
    ids = engine.tokenizer(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = engine.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=engine.pad_token_id, eos_token_id=engine.eos_token_ids,
        )
    return out[0, ids.shape[1]:].tolist()


def naive_logprob(engine, context, continuation):
    """Full logits of the unpadded concatenation, summed over the continuation positions."""
    ctx = engine.tokenizer(context).input_ids
    cont = engine.tokenizer(continuation, add_special_tokens=False).input_ids
    ids = torch.tensor([ctx + cont])
    with torch.inference_mode():
        logprobs = torch.log_softmax(engine.model(ids).logits.float(), dim=-1)[0]
    return sum(logprobs[len(ctx) + j - 1, t].item() for j, t in enumerate(cont))


def test_satisfies_protocol(engine):
    assert isinstance(engine, Engine)
    assert engine.can_score and engine.name == "transformers"
    assert engine.model_id.endswith("model")  # what the user passed, recorded on every record


def test_greedy_batched_equals_unbatched_in_request_order(engine):
    requests = CHATS + RAW  # different lengths, mixed chats and raw strings, batch_size 4 → 2 batches
    params = GenerationParams(max_new_tokens=10, temperature=0)
    completions = engine.generate(requests, params)
    assert len(completions) == len(requests)
    for request, completion in zip(requests, completions):
        reference = naive_greedy(engine, request, 10)
        text = engine.tokenizer.decode(reference, skip_special_tokens=True)
        assert completion.text == text
        prompt = engine.render_chat(request) if isinstance(request, list) else request
        assert completion.prompt_tokens == len(engine.tokenizer(prompt).input_ids)
        eos_at = [i for i, t in enumerate(reference) if t in engine.eos_token_ids]
        if eos_at:
            assert (completion.completion_tokens, completion.finish_reason) == (eos_at[0] + 1, "stop")
        else:
            assert (completion.completion_tokens, completion.finish_reason) == (10, "length")


def test_eos_ends_a_row_and_counts(engine, lively_model_dir, tmp_path):
    """Declare the 3rd token greedy decoding emits an extra EOS: that row must stop there, count
    3 tokens, say "stop", and not show the EOS token in its text; other rows are unaffected."""
    import json
    import shutil

    params = GenerationParams(max_new_tokens=8, temperature=0)
    free = [naive_greedy(engine, r, 8) for r in RAW]
    third = free[0][2]
    assert third not in free[0][:2], "pick a prompt whose 3rd token is new"
    folder = tmp_path / "eos-model"
    shutil.copytree(lively_model_dir, folder)
    config_path = folder / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = engine.eos_token_ids + [third]
    config_path.write_text(json.dumps(config))
    eng = load_engine("transformers", str(folder), batch_size=2, dtype="float32")
    completions = eng.generate(RAW, params)
    assert completions[0].completion_tokens == 3 and completions[0].finish_reason == "stop"
    assert completions[0].text == eng.tokenizer.decode(free[0][:2], skip_special_tokens=True)
    for tokens, completion in zip(free[1:], completions[1:]):
        n = tokens.index(third) + 1 if third in tokens else 8
        assert completion.completion_tokens == n
        assert completion.finish_reason == ("stop" if third in tokens else "length")


def test_seeded_sampling_is_reproducible(engine):
    params = GenerationParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=7)
    first = engine.generate(CHATS + RAW, params)
    second = engine.generate(CHATS + RAW, params)
    assert [c.text for c in first] == [c.text for c in second]
    other = engine.generate(CHATS + RAW, GenerationParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=8))
    assert [c.text for c in first] != [c.text for c in other]


def test_model_generation_defaults_do_not_leak(engine, lively_model_dir, tmp_path):
    """A Hub model's generation_config (penalties, top_k, do_sample) must not change our outputs:
    the params recorded on every record are the whole sampling recipe."""
    import json
    import shutil

    folder = tmp_path / "opinionated"
    shutil.copytree(lively_model_dir, folder)
    config_path = folder / "generation_config.json"
    config = json.loads(config_path.read_text())
    config.update(do_sample=True, temperature=0.3, top_k=3, repetition_penalty=5.0, no_repeat_ngram_size=2)
    config_path.write_text(json.dumps(config))
    opinionated = load_engine("transformers", str(folder), batch_size=4, dtype="float32")
    for params in (GenerationParams(max_new_tokens=8, temperature=0), GenerationParams(max_new_tokens=8, temperature=1.0, seed=3)):
        assert opinionated.generate(RAW, params) == engine.generate(RAW, params)


def test_stop_strings_truncate_and_count(engine):
    free = engine.generate(RAW, GenerationParams(max_new_tokens=16, temperature=0))
    # Pick, per prompt, a stop string that appears in the middle of its unconstrained output.
    checked = 0
    for request, completion in zip(RAW, free):
        text = completion.text
        if len(text) < 4:
            continue
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        forwards = []
        hook = engine.model.register_forward_hook(lambda *args: forwards.append(1))
        try:
            [stopped] = engine.generate([request], GenerationParams(max_new_tokens=16, temperature=0, stop=[stop, "\x00never"]))
        finally:
            hook.remove()
        # Generation itself stopped at the stop string (one forward per new token), not at 16.
        assert len(forwards) <= stopped.completion_tokens + 1 < 16
        assert stopped.finish_reason == "stop"
        assert stopped.text == text[: text.find(stop)]
        assert stop not in stopped.text
        assert 1 <= stopped.completion_tokens <= completion.completion_tokens
        # the counted tokens are the fewest whose text reaches the stop string
        reference = naive_greedy(engine, request, 16)
        upto = engine.tokenizer.decode(reference[: stopped.completion_tokens], skip_special_tokens=True)
        before = engine.tokenizer.decode(reference[: stopped.completion_tokens - 1], skip_special_tokens=True)
        assert stop in upto and stop not in before
        checked += 1
    assert checked >= 2


def test_score_equals_naive_reference(engine):
    contexts = [engine.render_chat(c) for c in CHATS] + RAW + ["Options: (A) or (B). The answer is:"]
    continuations = [" yes", " The answer is (A).", "Sure, here", " jumps", " hello world", " (B)", " (A)"]
    got = engine.score(contexts, continuations)
    for c, x, g in zip(contexts, continuations, got):
        assert g == pytest.approx(naive_logprob(engine, c, x), abs=1e-4)
    assert engine.score(["abc"], [""]) == [0.0]


def test_score_options_single_token_path(engine):
    contexts = [engine.render_chat(c) for c in CHATS] + RAW
    options = ["A", "B", " yes", " no"]  # each one token, distinct: the one-forward path
    assert all(len(engine.tokenizer(o, add_special_tokens=False).input_ids) == 1 for o in options)
    got = engine.score_options(contexts, options)
    for context, row in zip(contexts, got):
        assert row == pytest.approx([naive_logprob(engine, context, o) for o in options], abs=1e-4)


def test_score_options_multi_token_path(engine):
    contexts = [engine.render_chat(c) + "The better answer is" for c in CHATS] + RAW
    options = [" (A)", " (B)", " neither of them"]  # shared first token, different lengths
    assert len(engine.tokenizer(" (A)", add_special_tokens=False).input_ids) == 3
    got = engine.score_options(contexts, options)
    assert engine._shares_cache, "the shared-context (KV cache) path was used, not the per-pair fallback"
    for context, row in zip(contexts, got):
        assert row == pytest.approx([naive_logprob(engine, context, o) for o in options], abs=1e-4)
    # the per-pair path (models whose cache cannot be shared) gives the same numbers
    engine._shares_cache = False
    try:
        assert engine.score_options(contexts, options) == [pytest.approx(row, abs=1e-4) for row in got]
    finally:
        engine._shares_cache = True


FEW_SHOT = (
    "Consider the following conversation between a human and an assistant: Human: how do I bake bread? "
    "Assistant: Mix flour, water, salt and yeast, knead, let it rise, then bake it hot. Which response is "
    "more helpful? Options: (A) the first one (B) the second one. The answer is: (A)\n\n"
)
SUFFIXES = [
    "Human: hi. Which is kinder? (A) hello (B) go away. The answer is:",
    "Human: Tell me a long story about a cat who learns to sail across the wide and stormy ocean. Which is "
    "more honest? (A) a story (B) a refusal. The answer is:",
    "Human: 2+2? (A) 4 (B) 5. The answer is:",
    "Human: What is the capital of France, and why? (A) Paris (B) Lyon. The answer is:",
]  # as many as the engine's batch_size, so they share one batch


@pytest.mark.parametrize("options", [["A", "B", " yes"], [" (A)", " (B)", " neither of them"]], ids=["single", "multi"])
def test_score_options_shares_a_long_common_prefix(engine, options):
    contexts = [FEW_SHOT + s for s in SUFFIXES]
    ids = [engine.tokenizer(c).input_ids for c in contexts]
    shared = min(next(i for i, t in enumerate(row) if t != ids[0][i]) for row in ids[1:])
    assert shared >= 60 and len({len(r) - shared for r in ids}) >= 3  # long prefix, ragged suffixes
    widths = []
    hook = engine.model.register_forward_pre_hook(lambda m, a, kw: widths.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        got = engine.score_options(contexts, options)
    finally:
        hook.remove()
    assert (1, shared) in widths, "the common prefix ran once, at batch 1"
    assert all(w[1] < min(len(r) for r in ids) for w in widths), "no forward re-ran a whole context"
    for context, row in zip(contexts, got):
        assert row == pytest.approx([naive_logprob(engine, context, o) for o in options], abs=1e-4)
    # a batch of one context, or contexts that share little, take the plain path with the same numbers
    assert engine.score_options(contexts[:1], options)[0] == pytest.approx(got[0], abs=1e-4)
    assert engine.score_options([contexts[0], SUFFIXES[1]], options)[0] == pytest.approx(got[0], abs=1e-4)


SHARED_CHAT_START = [
    {"role": "system", "content": "You are a careful assistant. Point out anything harmful, then rewrite the answer."},
    {"role": "user", "content": "How do I bake bread?"},
    {"role": "assistant", "content": "Mix flour, water, salt and yeast, knead, let it rise, then bake it hot."},
    {"role": "user", "content": "Critique that answer."},
    {"role": "assistant", "content": "It is helpful and harmless; it could mention the oven temperature."},
]  # a constitution's system prompt and few-shot exchange, in front of every request


def test_generate_shares_a_long_common_prefix(engine, monkeypatch):
    """Greedy generation of chats that share a long system + few-shot start: the shared start runs
    once at batch 1, no forward re-runs a whole prompt, and every row's tokens are exactly those of
    the plain path (sharing forced off) and of one-prompt-at-a-time unpadded decoding."""
    from engines import prefix_cache

    chats = [SHARED_CHAT_START + [{"role": "user", "content": s}] for s in SUFFIXES]
    ids = [engine.tokenizer(engine.render_chat(c)).input_ids for c in chats]
    shared = min(next(i for i, t in enumerate(row) if t != ids[0][i]) for row in ids[1:])
    assert shared >= 60 and len({len(r) - shared for r in ids}) >= 3  # long prefix, ragged suffixes
    params = GenerationParams(max_new_tokens=8, temperature=0)
    calls = []
    hook = engine.model.register_forward_pre_hook(
        lambda m, a, kw: calls.append((kw["input_ids"].shape, kw.get("position_ids"))), with_kwargs=True
    )
    try:
        got = engine.generate(chats, params)
    finally:
        hook.remove()
    widths = [shape for shape, _ in calls]
    assert widths[0] == (1, shared), "the common prefix ran once, at batch 1"
    assert widths[1] == (len(chats), max(len(r) for r in ids) - shared), "generate prefilled only the suffixes"
    assert all(w[1] < min(len(r) for r in ids) for w in widths), "no forward re-ran a whole prompt"
    # the suffixes' positions continue after the prefix, as if each row were unpadded
    prefill_positions = calls[1][1]
    for row, prompt in enumerate(sorted(ids, key=len, reverse=True)):  # the engine's batch order
        own = len(prompt) - shared
        assert prefill_positions[row, -own:].tolist() == list(range(shared, len(prompt)))

    monkeypatch.setattr(prefix_cache, "MIN_SHARED_PREFIX", 10_000)
    plain = engine.generate(chats, params)
    for chat, completion, reference in zip(chats, got, plain):
        assert (completion.text, completion.completion_tokens) == (reference.text, reference.completion_tokens)
        assert completion.text == engine.tokenizer.decode(naive_greedy(engine, chat, 8), skip_special_tokens=True)
    assert len({c.text for c in got}) > 1, "rows differ, so a mixed-up row would show"


def test_generate_seeded_sampling_is_the_same_with_a_shared_prefix(engine, monkeypatch):
    from engines import prefix_cache

    chats = [SHARED_CHAT_START + [{"role": "user", "content": s}] for s in SUFFIXES]
    params = GenerationParams(max_new_tokens=8, temperature=1.0, top_p=0.95, seed=3)
    shared = engine.generate(chats, params)
    monkeypatch.setattr(prefix_cache, "MIN_SHARED_PREFIX", 10_000)
    assert [c.text for c in engine.generate(chats, params)] == [c.text for c in shared]


def test_bad_input_errors(engine):
    with pytest.raises(ValueError, match="one continuation per context"):
        engine.score(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="no tokens"):
        engine.score_options(["a"], [" (A)", ""])
    with pytest.raises(TypeError, match="string or a list of chat messages"):
        engine.generate([42], GenerationParams(max_new_tokens=2))
    with pytest.raises(ValueError, match="dtype"):
        load_engine("transformers", "unused", dtype="float8")


def test_max_length_keeps_prompt_tail_and_refuses_long_scores(lively_model_dir):
    short = load_engine("transformers", str(lively_model_dir), max_length=12, dtype="float32")
    long_prompt = "one two three four five six seven eight nine ten eleven twelve"
    ids = short.tokenizer(long_prompt).input_ids
    assert len(ids) + 4 > 12
    [completion] = short.generate([long_prompt], GenerationParams(max_new_tokens=4, temperature=0))
    assert completion.prompt_tokens == 8 and completion.prompt_truncated  # the last 12 - 4 prompt tokens were kept
    with torch.inference_mode():
        tail = torch.tensor([ids[-8:]])
        reference = short.model.generate(tail, attention_mask=torch.ones_like(tail), max_new_tokens=4, do_sample=False,
                                         pad_token_id=short.pad_token_id, eos_token_id=short.eos_token_ids)[0, 8:]
    assert completion.text == short.tokenizer.decode(reference, skip_special_tokens=True)
    with pytest.raises(ValueError, match="longer than max_length 12"):
        short.score([long_prompt], [" thirteen fourteen fifteen"])


@pytest.mark.slow
def test_embedded_model_smoke(embedded_model_dir):
    eng = load_engine("transformers", "smollm2-135m")
    chats = [[{"role": "user", "content": "What is the capital of France?"}], [{"role": "user", "content": "Say hello."}]]
    out = eng.generate(chats, GenerationParams(max_new_tokens=8, temperature=0))
    assert len(out) == 2 and all(c.completion_tokens >= 1 and c.text for c in out)
    assert "Paris" in out[0].text
    context = eng.render_chat(chats[0]) + "The capital of France is"
    paris, london = eng.score_options([context], [" Paris", " London"])[0]
    assert paris > london


def test_auto_dtype_is_bfloat16_only_where_the_cpu_has_native_bf16(monkeypatch, lively_model_dir):
    import engines.dtypes as dtypes

    assert isinstance(dtypes.cpu_has_fast_bf16(), bool)  # this machine's answer, whatever it is

    monkeypatch.setattr(dtypes, "cpu_has_fast_bf16", lambda: False)  # AVX2 only: bf16 would be emulated, slower
    assert dtypes.auto_dtype(torch.device("cpu")) == "float32"
    assert load_engine("transformers", str(lively_model_dir), device="cpu").model.dtype == torch.float32
    monkeypatch.setattr(dtypes, "cpu_has_fast_bf16", lambda: True)  # AVX512-BF16 or AMX
    assert load_engine("transformers", str(lively_model_dir), device="cpu").model.dtype == torch.bfloat16
    forced = load_engine("transformers", str(lively_model_dir), device="cpu", dtype="float32")  # the user's choice wins
    assert forced.model.dtype == torch.float32


def test_bf16_chosen_for_speed_on_cpu_still_scores_in_float32(monkeypatch, lively_model_dir):
    import engines.dtypes as dtypes

    monkeypatch.setattr(dtypes, "cpu_has_fast_bf16", lambda: True)
    fast = load_engine("transformers", str(lively_model_dir), device="cpu", batch_size=4)
    full = load_engine("transformers", str(lively_model_dir), device="cpu", batch_size=4, dtype="float32")
    assert fast.model.dtype == torch.bfloat16 and fast.score_dtype == torch.float32
    contexts = ["The quick brown fox jumps over", "Hello there, how are you doing today my friend?"]
    assert fast.score_options(contexts, [" (A)", " (B)"]) == full.score_options(contexts, [" (A)", " (B)"])
    assert fast.score(contexts, [" the dog", " fine"]) == full.score(contexts, [" the dog", " fine"])
    assert fast.scoring_model()[0] is not fast.model  # a float32 copy, loaded on first use
    bf16 = load_engine("transformers", str(lively_model_dir), device="cpu", dtype="bfloat16")  # asked for: scores in bf16
    assert bf16.score_dtype == torch.bfloat16 and bf16.scoring_model()[0] is bf16.model
    with pytest.raises(ValueError, match="score_dtype"):
        load_engine("transformers", str(lively_model_dir), score_dtype="float8")
