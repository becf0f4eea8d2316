"""The ``openai`` engine: any OpenAI-compatible HTTP server (``vllm serve``, SGLang, llama.cpp server, TGI).

Requests go out concurrently (an ``asyncio.Semaphore`` bounds how many are in flight) and come back in
request order. The HTTP side (retries with backoff on 429/5xx/timeouts/dropped connections, errors,
credentials never shown) is the base class ``OpenAIClient`` in engines/openai_client.py.

Scoring uses the legacy ``/completions`` trick: send ``context + continuation`` with ``echo=true`` and
``logprobs``, and sum the log-probs of the prompt tokens that overlap the continuation. Servers that
do not return prompt log-probs (llama.cpp, TGI, OpenAI's own chat models) raise EngineCapabilityError.

Failures raise OpenAIServerError, a ConnectionError (so an OSError, as with ``requests``), with a
one-line message naming the redacted URL and what happened: the CLIs print it as ``error: …``.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Sequence

import httpx

from .base import Completion, EngineCapabilityError, GenerationParams, Message, Request
from .openai_client import MAX_ERROR_BODY, OpenAIClient, OpenAIServerError, _gather_or_cancel, _run_sync

log = logging.getLogger(__name__)

OPTION_SCORING = ("echo", "top_logprobs")
TOP_LOGPROBS = 20  # vLLM's default --max-logprobs; OpenAI's legacy API allowed at most 5
# A server that answers these to echo/logprobs requests lacks the feature (not a transient failure).
NO_SCORING_STATUSES = (400, 404, 405, 422, 501)
FINISH_REASONS = {"length": "length", "max_tokens": "length", "model_length": "length"}  # all else → "stop"


class OpenAIEngine(OpenAIClient):
    """Client for an OpenAI-compatible server.

    model: the model name the server knows (sent as ``model``; recorded on every record).
    base_url: e.g. http://localhost:8000/v1; default $OPENAI_BASE_URL, else that address. ``user:pass@``
        in it is sent as HTTP basic auth and a query (``?api-version=…``) after every endpoint; the
        ``base_url`` attribute is the form fit to show (``http://***@host/v1?api_key=***``).
    api_key_env: name of the environment variable holding the key (absent is fine for local servers).
    concurrency: requests in flight at once. timeout: seconds per request (connect, read, write).
    max_retries: retries after the first attempt for 429/5xx/timeouts/dropped connections.
    use_chat: chats go to /chat/completions (server applies its template); False renders them with
        ``tokenizer`` and sends raw text to /completions.
    tokenizer: HF id or folder of the served model's tokenizer, for ``render_chat`` (chat-form scoring).
    option_scoring: "echo" (exact, one request per option) or "top_logprobs" (one request per context,
        single-token options only).
    backoff_base, backoff_max: exponential backoff in seconds; max_retry_after caps a server's Retry-After.
    """

    name = "openai"
    can_score = True  # optimistic: a server that cannot return prompt log-probs fails on first use

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        timeout: float = 60.0,
        max_retries: int = 6,
        use_chat: bool = True,
        tokenizer: str | None = None,
        option_scoring: str = "echo",
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_retry_after: float = 600.0,
    ):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        if option_scoring not in OPTION_SCORING:
            raise ValueError(f"option_scoring must be one of {', '.join(OPTION_SCORING)}, got {option_scoring!r}")
        self.model_id = model
        super().__init__(base_url, api_key_env, concurrency, timeout, max_retries, backoff_base, backoff_max,
                         max_retry_after)
        self.use_chat = use_chat
        self.tokenizer_id = tokenizer
        self.option_scoring = option_scoring
        self._tokenizer = None
        # Some servers reject max_tokens=0 for echo scoring; once one has, send 1 straight away.
        self._score_max_tokens = 0


    def __repr__(self) -> str:
        return f"OpenAIEngine(model={self.model_id!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    # ------------------------------------------------------------------ chat rendering

    def render_chat(self, messages: list[Message], add_generation_prompt: bool = True) -> str:
        if self.tokenizer_id is None:
            raise EngineCapabilityError(
                "an OpenAI-compatible server does not expose its chat template, so chat-form scoring (and "
                "use_chat=False) needs the model's tokenizer locally: pass --tokenizer <HF id or folder> "
                "(the engine option tokenizer=...)"
            )
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from .embedded import resolve_model

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.tokenizer_id))
        if not getattr(self._tokenizer, "chat_template", None):
            raise EngineCapabilityError(f"tokenizer {self.tokenizer_id!r} has no chat template")
        return self._tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    # ------------------------------------------------------------------ generation

    def generate(self, requests: Sequence[Request], params: GenerationParams) -> list[Completion]:
        return _run_sync(lambda: self.agenerate(requests, params))

    async def agenerate(self, requests: Sequence[Request], params: GenerationParams) -> list[Completion]:
        bodies = [self._generation_body(request, params, i) for i, request in enumerate(requests)]
        async with self._client() as client:
            semaphore = asyncio.Semaphore(self.concurrency)

            async def one(endpoint: str, body: dict) -> Completion:
                async with semaphore:
                    data = await self._post(client, endpoint, body)
                return _parse_completion(data, endpoint, params.stop)

            return await _gather_or_cancel(one(endpoint, body) for endpoint, body in bodies)

    def _generation_body(self, request: Request, params: GenerationParams, index: int) -> tuple[str, dict]:
        body: dict[str, Any] = {
            "model": self.model_id,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            # One seed per request: samples differ across a batch but a rerun reproduces them.
            body["seed"] = params.seed + index
        if isinstance(request, str):
            return "/completions", {**body, "prompt": request}
        if self.use_chat:
            return "/chat/completions", {**body, "messages": list(request)}
        return "/completions", {**body, "prompt": self.render_chat(list(request))}

    # ------------------------------------------------------------------ scoring

    def score(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        """Summed log-probability of each continuation given its context (echo scoring; not part of the
        Engine protocol: ``score_options`` is)."""
        return _run_sync(lambda: self.ascore(contexts, continuations))

    async def ascore(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[float]:
        if len(contexts) != len(continuations):
            raise ValueError(f"score got {len(contexts)} contexts but {len(continuations)} continuations")
        async with self._client() as client:
            semaphore = asyncio.Semaphore(self.concurrency)

            async def one(context: str, continuation: str) -> float:
                async with semaphore:
                    return await self._score_one(client, context, continuation)

            return await _gather_or_cancel(one(c, k) for c, k in zip(contexts, continuations))

    async def _score_one(self, client: httpx.AsyncClient, context: str, continuation: str) -> float:
        prompt = context + continuation
        body = {"model": self.model_id, "prompt": prompt, "echo": True, "logprobs": 1, "temperature": 0.0}
        while True:
            max_tokens = self._score_max_tokens
            try:
                data = await self._post(client, "/completions", {**body, "max_tokens": max_tokens})
                break
            except OpenAIServerError as error:
                if error.status not in NO_SCORING_STATUSES:
                    raise
                if max_tokens == 0:
                    self._score_max_tokens = 1  # vLLM accepts 0; others insist on generating a token
                    continue
                raise EngineCapabilityError(_cannot_score(self.base_url, str(error))) from error
        choice = _first_choice(data, "/completions")
        return continuation_logprob(choice, prompt, len(context), self.base_url)

    def score_options(self, contexts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        if self.option_scoring == "echo":  # one scored continuation per (context, option)
            flat = self.score([c for c in contexts for _ in options], [o for _ in contexts for o in options])
            k = len(options)
            return [flat[i * k : (i + 1) * k] for i in range(len(contexts))]
        return _run_sync(lambda: self.ascore_options_top_logprobs(contexts, options))

    async def ascore_options_top_logprobs(self, contexts: Sequence[str], options: Sequence[str]) -> list[list[float]]:
        """Fast path: one request per context reading the top-20 log-probs of the first generated token.

        Only correct when every option is a single token (" A"/" B", "1"/"2"): an option is matched by its
        stripped text against the stripped top tokens, so a multi-token option like " (A)" never matches
        and gets -inf. Options outside the top 20 also get -inf.
        """
        keys = [option.strip() for option in options]
        if len(set(keys)) != len(keys) or not all(keys):
            raise ValueError(f"top_logprobs option scoring needs distinct non-blank options, got {list(options)!r}")
        body = {"model": self.model_id, "max_tokens": 1, "logprobs": TOP_LOGPROBS, "temperature": 0.0}
        async with self._client() as client:
            semaphore = asyncio.Semaphore(self.concurrency)

            async def one(context: str) -> list[float]:
                async with semaphore:
                    try:
                        data = await self._post(client, "/completions", {**body, "prompt": context})
                    except OpenAIServerError as error:
                        if error.status not in NO_SCORING_STATUSES:
                            raise
                        raise EngineCapabilityError(_cannot_score(self.base_url, str(error))) from error
                top = _first_top_logprobs(_first_choice(data, "/completions"), self.base_url)
                return option_logprobs_from_top(top, keys)

            rows = await _gather_or_cancel(one(c) for c in contexts)
        missing = sum(all(lp == -math.inf for lp in row) for row in rows)
        if missing:
            log.warning(
                "%d of %d contexts had none of the options %r among the top %d tokens; their labels will be uniform "
                "(use option_scoring='echo' for multi-token options)", missing, len(rows), keys, TOP_LOGPROBS
            )
        return rows

# ---------------------------------------------------------------------- response parsing (tested directly)


def _first_choice(data: dict, endpoint: str) -> dict:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise OpenAIServerError(f"{endpoint}: response has no choices: {str(data)[:MAX_ERROR_BODY]}")
    return choices[0]


def _parse_completion(data: dict, endpoint: str, stop: Sequence[str]) -> Completion:
    choice = _first_choice(data, endpoint)
    if endpoint == "/chat/completions":
        text = (choice.get("message") or {}).get("content") or ""
    else:
        text = choice.get("text") or ""
    finish_reason = FINISH_REASONS.get(choice.get("finish_reason") or "stop", "stop")
    if finish_reason == "stop":
        # The protocol returns text without the stop string; a few servers include it.
        for s in stop:
            if s and text.endswith(s):
                text = text[: -len(s)]
                break
    usage = data.get("usage") or {}
    return Completion(
        text=text,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=finish_reason,
    )


def _cannot_score(base_url: str, detail: str) -> str:
    return (
        f"the server at {base_url} cannot score text: it did not return prompt log-probs for "
        f"echo=true + logprobs on /completions ({detail}). Serve the model with `vllm serve` (which supports "
        "echo with logprobs), or score locally with --engine transformers or --engine vllm."
    )


def token_spans(tokens: Sequence[str], text_offset: Sequence[int] | None, text: str) -> list[tuple[int, int]]:
    """Character span of every token within ``text``.

    The server's ``text_offset`` is used when it agrees with the text. vLLM counts the BOS token's text
    ("<s>") in its offsets although the echoed text lacks it, so otherwise spans are rebuilt from the
    token strings anchored at the END of the text, where prompt and tokens always line up.
    """
    if text_offset is not None and len(text_offset) == len(tokens):
        if all(text[o : o + len(t)] == t for o, t in zip(text_offset, tokens)):
            return [(o, o + len(t)) for o, t in zip(text_offset, tokens)]
    spans, end = [], len(text)
    for token in reversed(tokens):
        spans.append((end - len(token), end))
        end -= len(token)
    return spans[::-1]


def continuation_logprob(choice: dict, prompt: str, context_len: int, base_url: str) -> float:
    """Sum the log-probs of the echoed prompt tokens that overlap ``prompt[context_len:]``.

    A token straddling the context/continuation boundary counts: it is the one whose probability decides
    the continuation's first characters (context "(" + option "A)" may tokenize as "(A" + ")").
    """
    logprobs = choice.get("logprobs") or {}
    tokens, token_logprobs = logprobs.get("tokens"), logprobs.get("token_logprobs")
    text = choice.get("text")
    if not tokens or token_logprobs is None or not isinstance(text, str) or not text.startswith(prompt):
        raise EngineCapabilityError(_cannot_score(base_url, "the response has no echoed prompt with log-probs"))
    start, end = context_len, len(prompt)
    total, counted = 0.0, 0
    for (lo, hi), logprob in zip(token_spans(tokens, logprobs.get("text_offset"), text), token_logprobs):
        overlaps = (lo < end and hi > start) or (lo == hi and start <= lo < end)
        if not overlaps:
            continue
        if logprob is None:
            raise ValueError("the server gave no log-prob for a continuation token: is the context empty?")
        total += float(logprob)
        counted += 1
    if counted == 0 and end > start:
        raise EngineCapabilityError(_cannot_score(base_url, "no echoed token covers the continuation"))
    return total


def _first_top_logprobs(choice: dict, base_url: str) -> dict[str, float]:
    top = (choice.get("logprobs") or {}).get("top_logprobs")
    if not top or not isinstance(top[0], dict):
        raise EngineCapabilityError(
            f"the server at {base_url} returned no top_logprobs for logprobs={TOP_LOGPROBS} on /completions; "
            "use option_scoring='echo' or a server that returns log-probs (vllm serve)"
        )
    return top[0]


def option_logprobs_from_top(top: dict[str, float], stripped_options: Sequence[str]) -> list[float]:
    """Log-prob of each option from one position's top tokens, matching on stripped text.

    " A" and "A" both mean option A, so their probabilities are added (log-sum-exp); absent → -inf.
    """
    out = []
    for option in stripped_options:
        matches = [float(lp) for token, lp in top.items() if token.strip() == option and lp is not None]
        if not matches:
            out.append(-math.inf)
            continue
        m = max(matches)
        out.append(m + math.log(sum(math.exp(lp - m) for lp in matches)))
    return out
