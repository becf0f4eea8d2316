"""The ``transformers`` engine: a local Hugging Face causal LM, on CPU or one GPU.

``dtype="auto"`` (the default) is bfloat16 on a GPU that supports it and on a CPU with native bf16
matrix instructions (AVX512-BF16 or AMX), float32 elsewhere (engines/dtypes.py); ``dtype="float32"``
forces full precision.

Generation is batched: requests are tokenized, sorted by length (so a batch holds prompts of
similar length and little padding), left-padded (so every row's next token sits in the last
column) and handed to ``model.generate``; completions come back in request order. Sampling seeds
the torch generator with ``seed + batch index`` before each batch: a run is reproducible for the
same requests, seed and batch size. When every prompt of a batch starts with the same long token
prefix (a constitution's system prompt and few-shot exchanges), that prefix is run once and its KV
cache handed to ``generate`` for all the batch's rows (engines/prefix_cache.py). A prompt that
leaves no room for max_new_tokens within ``max_length`` is handled by ``on_long``: "truncate" (the
default) keeps its last tokens and marks the completion ``prompt_truncated``, "skip" generates
nothing for it (finish reason "skipped"), "error" raises PromptTooLongError.

Scoring computes the summed log-probability of continuation tokens. Contexts are left-padded so
every row's continuation sits at the end, and ``logits_to_keep`` asks the model for the output
projection of only those last positions: the vocabulary projection is the most expensive part of a
forward for a small model with a 49k vocabulary and a long context. ``score_options`` encodes each
context once and shares its KV cache across the options; and when every context of a batch starts
with the same long token prefix (a labeling prompt's few-shot examples), that prefix is run once and
its KV cache shared by the batch's rows (engines/prefix_cache.py).
"""

from __future__ import annotations

import logging
from typing import Sequence

from .base import Completion, GenerationParams, Message, Request, check_on_long, fit_prompt
from .dtypes import auto_dtype, score_dtype_for
from .embedded import resolve_model
from .prefix_cache import SharedPrefix, left_pad
from .tokens import _eos_ids, _first_stop, encode_context, encode_continuation

log = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


class TransformersEngine:
    name = "transformers"
    can_score = True

    def __init__(
        self,
        model: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        score_dtype: str | None = None,
        batch_size: int = 16,
        trust_remote_code: bool = False,
        max_length: int | None = None,
        on_long: str = "truncate",
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        dtype = dtype or "auto"
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.model_id = model
        self.batch_size = batch_size
        self.on_long = check_on_long(on_long)  # a prompt + max_new_tokens over max_length: truncate, skip or error
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch_dtype = getattr(torch, auto_dtype(self.device) if dtype == "auto" else dtype)
        # Scoring (labels) in float32 when bf16 was only chosen for speed on a CPU: see engines/dtypes.py.
        self.score_dtype = score_dtype_for(score_dtype, dtype, torch_dtype, self.device)

        path = self._path = resolve_model(model)
        self._trust_remote_code = trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()

        tok = self.tokenizer
        self.eos_token_ids = _eos_ids(self.model.generation_config.eos_token_id, tok.eos_token_id)
        if tok.pad_token_id is None:
            # Padding positions are masked out, so any id works; EOS is the usual choice.
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.convert_ids_to_tokens(0)
        self.pad_token_id = tok.pad_token_id
        self.max_length = max_length or getattr(self.model.config, "max_position_embeddings", None)
        self._stop_criteria_cache: dict[tuple[str, ...], object] = {}
        self._shares_cache = True  # score_options reuses a context's KV cache across its options
        # ... and generate and score_options run a batch's common prefix once for all its rows
        self._prefix = SharedPrefix(self.model, self.pad_token_id, self.device)
        self._scorer = None  # (model, SharedPrefix) for scoring, loaded on first use if score_dtype differs

    # ------------------------------------------------------------------ rendering and tokenizing

    def render_chat(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"model {self.model_id!r} has no chat template; pass raw string prompts or use an instruct model"
            )
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _encode_context(self, text: str) -> list[int]:
        return encode_context(self.tokenizer, text)

    def _encode_continuation(self, text: str) -> list[int]:
        return encode_continuation(self.tokenizer, text)

    def _encode_request(self, request: Request) -> list[int]:
        if isinstance(request, str):
            return self._encode_context(request)
        if isinstance(request, list):
            return self._encode_context(self.render_chat(request, add_generation_prompt=True))
        raise TypeError(f"a request is a string or a list of chat messages, got {type(request).__name__}")

    def _left_pad(self, rows: list[list[int]]):
        """(input_ids, attention_mask, position_ids) for left-padded rows, on the engine's device."""
        return left_pad(rows, self.pad_token_id, self.device)

    # ------------------------------------------------------------------ generation

    def generate(self, requests: Sequence[Request], params: GenerationParams) -> list[Completion]:
        import torch

        if params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {params.max_new_tokens}")
        full = [self._encode_request(r) for r in requests]
        encoded = [fit_prompt(ids, params.max_new_tokens, self.max_length, self.on_long, i) for i, ids in enumerate(full)]
        results: list[Completion | None] = [None if ids is not None else Completion("", len(whole), 0, "skipped")
                                            for whole, ids in zip(full, encoded)]
        # Longest first: a batch holds similar lengths, and an out-of-memory shows up at once.
        order = sorted((i for i, ids in enumerate(encoded) if ids is not None), key=lambda i: -len(encoded[i]))
        config = self._generation_config(params)
        stop_kwargs = self._stop_kwargs([s for s in params.stop if s])
        for batch_index, start in enumerate(range(0, len(order), self.batch_size)):
            batch = order[start : start + self.batch_size]
            rows = [encoded[i] for i in batch]
            with torch.inference_mode():
                ids, mask, prefix_kwargs = self._prefix.generation_inputs(rows)
                # Seeded after the shared prefix's forward (which draws no random numbers), at the
                # same point as without sharing, so a seeded run samples the same tokens either way.
                if params.seed is not None and config.do_sample:
                    torch.manual_seed(params.seed + batch_index)
                out = self.model.generate(
                    input_ids=ids, attention_mask=mask, generation_config=config, **prefix_kwargs, **stop_kwargs
                )
            new_tokens = out[:, ids.shape[1] :].tolist()
            for row, request_index in enumerate(batch):
                results[request_index] = self._finish(
                    new_tokens[row], len(encoded[request_index]), params
                )
                results[request_index].prompt_truncated = len(encoded[request_index]) < len(full[request_index])
        return results  # type: ignore[return-value]

    def _generation_config(self, params: GenerationParams):
        from transformers import GenerationConfig

        sample = params.temperature > 0
        # Unset fields would be filled from the model's own generation_config (a Hub model may ship
        # repetition_penalty=1.1, say): set the ones that change outputs, so the recorded params
        # are the whole sampling recipe.
        options = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_ids or None,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
        )
        if sample:
            options.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:  # neutral values, so the model's sampling defaults are not flagged as ignored
            options.update(temperature=1.0, top_p=1.0, top_k=50)
        return GenerationConfig(**options)

    def _stop_kwargs(self, stop: list[str]) -> dict:
        """transformers' own stop-string criterion ends a row (and so a batch) as soon as the stop
        string is produced; the text is still truncated afterwards, since the criterion works on
        tokens and may stop a little after the exact character."""
        if not stop:
            return {}
        key = tuple(stop)
        if key not in self._stop_criteria_cache:
            try:
                from transformers.generation.stopping_criteria import StopStringCriteria

                self._stop_criteria_cache[key] = StopStringCriteria(self.tokenizer, list(stop))
            except Exception as exc:  # an unusual tokenizer: fall back to truncating afterwards
                log.warning("stop strings will only be applied after generation: %s", exc)
                self._stop_criteria_cache[key] = None
        criterion = self._stop_criteria_cache[key]
        if criterion is None:
            return {}
        from transformers import StoppingCriteriaList

        return {"stopping_criteria": StoppingCriteriaList([criterion])}

    def _finish(self, tokens: list[int], prompt_tokens: int, params: GenerationParams) -> Completion:
        """Cut one row's new tokens at EOS, padding or the first stop string."""
        end = len(tokens)
        finish = "length"
        for i, t in enumerate(tokens):
            if t in self.eos_token_ids:
                end, finish = i + 1, "stop"  # EOS was generated: it counts, but is not text
                break
        if finish == "length" and self.pad_token_id not in self.eos_token_ids:
            # Rows ended by the stop-string criterion are padded to the batch's width.
            while end > 0 and tokens[end - 1] == self.pad_token_id:
                end -= 1
        tokens = tokens[: end - 1] if finish == "stop" else tokens[:end]
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = _first_stop(text, params.stop)
        if cut is not None:
            text = text[:cut]
            finish = "stop"
            end = self._tokens_until_stop(tokens, params.stop)
        elif finish == "length" and len(tokens) < params.max_new_tokens:
            finish = "stop"  # stopped early by the criterion although the decoded text hides it
        return Completion(text=text, prompt_tokens=prompt_tokens, completion_tokens=end, finish_reason=finish)

    def _tokens_until_stop(self, tokens: list[int], stop: list[str]) -> int:
        """The fewest leading tokens whose decoded text contains a stop string (binary search:
        once a prefix contains a stop string, every longer prefix does too)."""
        lo, hi = 1, len(tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            text = self.tokenizer.decode(tokens[:mid], skip_special_tokens=True)
            if _first_stop(text, stop) is not None:
                hi = mid
            else:
                lo = mid + 1
        return lo

    # ------------------------------------------------------------------ scoring

    def scoring_model(self):
        """(model, SharedPrefix) that scoring runs on: the generation model, or a copy in score_dtype."""
        if self.score_dtype == self.model.dtype:
            return self.model, self._prefix
        if self._scorer is None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(self._path, dtype=self.score_dtype, use_safetensors=True,
                                                         trust_remote_code=self._trust_remote_code).to(self.device).eval()
            self._scorer = (model, SharedPrefix(model, self.pad_token_id, self.device))
        return self._scorer

    def score(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        """Summed log-probability of each continuation given its context (not part of the Engine
        protocol: ``score_options`` is)."""
        if len(contexts) != len(continuations):
            raise ValueError(f"score needs one continuation per context, got {len(contexts)} and {len(continuations)}")
        pairs = [(self._encode_context(c), self._encode_continuation(x)) for c, x in zip(contexts, continuations)]
        return self._sum_logprobs(pairs)

    def score_options(self, contexts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        if not options:
            raise ValueError("score_options needs at least one option")
        option_ids = [self._encode_continuation(o) for o in options]
        for text, ids in zip(options, option_ids):
            if not ids:
                raise ValueError(f"option {text!r} has no tokens")
        context_ids = [self._encode_context(c) for c in contexts]
        if all(len(ids) == 1 for ids in option_ids) or self._shares_cache:
            try:
                return self._options_after_shared_context(context_ids, option_ids)
            except (AttributeError, NotImplementedError, TypeError) as exc:
                if all(len(ids) == 1 for ids in option_ids):
                    raise
                # A model whose cache cannot be repeated across rows: score each pair on its own.
                log.warning("scoring options without a shared context cache (%s: %s)", type(exc).__name__, exc)
                self._shares_cache = False
        pairs = [(ctx, opt) for ctx in context_ids for opt in option_ids]
        flat = self._sum_logprobs(pairs)
        k = len(options)
        return [flat[i * k : (i + 1) * k] for i in range(len(contexts))]

    def _check_context(self, ctx: list[int]) -> None:
        if not ctx:
            raise ValueError(
                "cannot score a continuation of an empty context with a tokenizer that adds no BOS token"
            )
        if self.max_length is not None and len(ctx) > self.max_length:
            raise ValueError(f"context of {len(ctx)} tokens is longer than max_length {self.max_length}")

    def _options_after_shared_context(self, context_ids: list[list[int]], option_ids: list[list[int]]) -> list[list[float]]:
        """Summed log-probs of every option after every context, running each context only once.

        Pass 1: the left-padded contexts, keeping one position of logits: that gives every option's
        first token at once (all that single-token options such as " A"/" B" need). Pass 2, only for
        multi-token options (" (A)" is three tokens in SmolLM2): the context's KV cache is repeated
        once per option, and each option's tokens but the last are fed after it, right-padded; their
        logits give the rest of the option's tokens. A long labeling prompt is thus encoded once,
        not once per option, and the few-shot examples all its contexts start with once per batch
        (SharedPrefix.last_logits)."""
        import torch

        for ctx in context_ids:
            self._check_context(ctx)
        k = len(option_ids)
        first = torch.tensor([o[0] for o in option_ids], device=self.device)
        tail_width = max(len(o) for o in option_ids) - 1
        tail_ids = torch.full((k, max(tail_width, 1)), self.pad_token_id, dtype=torch.long)
        tail_mask = torch.zeros((k, max(tail_width, 1)), dtype=torch.long)
        tail_targets = torch.zeros((k, max(tail_width, 1)), dtype=torch.long)
        for j, option in enumerate(option_ids):
            n = len(option) - 1
            if n:
                tail_ids[j, :n] = torch.tensor(option[:-1])
                tail_targets[j, :n] = torch.tensor(option[1:])
                tail_mask[j, :n] = 1
        tail_ids, tail_mask, tail_targets = tail_ids.to(self.device), tail_mask.to(self.device), tail_targets.to(self.device)

        order = sorted(range(len(context_ids)), key=lambda i: -len(context_ids[i]))
        results: list[list[float]] = [[] for _ in context_ids]
        model, prefix = self.scoring_model()
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            with torch.inference_mode():
                last_logits, cache, mask = prefix.last_logits([context_ids[i] for i in batch], keep_cache=tail_width > 0)
                totals = torch.log_softmax(last_logits.float(), dim=-1)[:, first]  # (B, k)
                if tail_width:
                    # after the repeat, row r*k + j is context r followed by option j
                    cache.batch_repeat_interleave(k)
                    lengths = mask.sum(-1).repeat_interleave(k)
                    tail_positions = lengths[:, None] + torch.arange(tail_width, device=self.device)
                    logits = model(
                        input_ids=tail_ids[:, :tail_width].repeat(len(batch), 1),
                        attention_mask=torch.cat([mask.repeat_interleave(k, 0), tail_mask[:, :tail_width].repeat(len(batch), 1)], dim=1),
                        position_ids=tail_positions,
                        **{prefix.cache_argument: cache},
                    ).logits
                    picked = torch.log_softmax(logits.float(), dim=-1).gather(
                        -1, tail_targets[:, :tail_width].repeat(len(batch), 1).unsqueeze(-1)
                    ).squeeze(-1)
                    keep = tail_mask[:, :tail_width].repeat(len(batch), 1).bool()
                    totals = totals + torch.where(keep, picked, 0.0).sum(-1).view(len(batch), k)
            for row, i in enumerate(batch):
                results[i] = totals[row].tolist()
        return results

    def _sum_logprobs(self, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
        """Σ log p(target tokens | prefix) for each (prefix ids, target ids) pair.

        Each row is prefix + target without its last token, left-padded, so the logits that predict
        the target sit in the last len(target) columns of every row: logits_to_keep = the batch's
        longest target is all the projection needed."""
        import torch

        results = [0.0] * len(pairs)
        todo = []
        for i, (ctx, target) in enumerate(pairs):
            if target:  # an empty continuation has probability 1
                self._check_context(ctx)
                if self.max_length is not None and len(ctx) + len(target) - 1 > self.max_length:
                    raise ValueError(
                        f"context plus continuation is {len(ctx) + len(target)} tokens, longer than max_length {self.max_length}"
                    )
                todo.append(i)
        todo.sort(key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        model, _ = self.scoring_model()
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            rows = [(pairs[i][0] + pairs[i][1])[:-1] for i in batch]
            keep = max(len(pairs[i][1]) for i in batch)
            ids, mask, positions = self._left_pad(rows)
            targets = torch.full((len(batch), keep), 0, dtype=torch.long)
            target_mask = torch.zeros((len(batch), keep), dtype=torch.bool)
            for row, i in enumerate(batch):
                target = pairs[i][1]
                targets[row, keep - len(target) :] = torch.tensor(target)
                target_mask[row, keep - len(target) :] = True
            with torch.inference_mode():
                logits = model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep
                ).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            picked = logprobs.gather(-1, targets.to(self.device).unsqueeze(-1)).squeeze(-1)
            sums = torch.where(target_mask.to(self.device), picked, 0.0).sum(-1).tolist()
            for row, i in enumerate(batch):
                results[i] = sums[row]
        return results
