"""The ``openai`` engine against a real HTTP server on localhost (tests/fake_openai_server.py).

No mocked client: every test sends real requests over sockets, so retries, timeouts and dropped
connections go through httpx and tenacity exactly as they would against ``vllm serve``.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import math
import socket
import time

import httpx
import pytest
from fake_openai_server import FakeOpenAIServer, Reply, fake_openai_server  # noqa: F401

from engines import EngineCapabilityError, GenerationParams, load_engine
from engines.openai_client import _retry_after, redact_url
from engines.openai_engine import OpenAIEngine, OpenAIServerError, continuation_logprob, option_logprobs_from_top

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0}


def engine_for(server: FakeOpenAIServer, **options) -> OpenAIEngine:
    return OpenAIEngine("toy-model", base_url=server.base_url, **{**FAST, **options})


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------------- generation


def test_generate_keeps_request_order_under_concurrency(fake_openai_server):
    # Early requests answer slowest, so responses arrive in reverse order of sending.
    n = 12
    fake_openai_server.responder = lambda req: Reply(delay=0.02 * (n - int(req.body["messages"][0]["content"])))
    engine = engine_for(fake_openai_server, concurrency=4)
    out = engine.generate([chat(str(i)) for i in range(n)], GenerationParams(max_new_tokens=8, seed=5))
    assert [c.text for c in out] == [f"reply to: {i}" for i in range(n)]
    assert fake_openai_server.max_in_flight == 4  # bounded, and actually concurrent
    seeds = sorted(r.body["seed"] for r in fake_openai_server.requests)
    assert seeds == list(range(5, 5 + n))  # one reproducible seed per request


def test_generate_sends_params_routes_and_parses(fake_openai_server):
    engine = engine_for(fake_openai_server)
    params = GenerationParams(max_new_tokens=3, temperature=0.7, top_p=0.9, stop=["\n\n"], seed=None)
    out = engine.generate([chat("one two three four five"), "a raw prompt"], params)
    chat_req, raw_req = sorted(fake_openai_server.requests, key=lambda r: r.path)
    assert chat_req.path == "/v1/chat/completions" and raw_req.path == "/v1/completions"
    for req in (chat_req, raw_req):
        assert req.body["model"] == "toy-model"
        assert (req.body["max_tokens"], req.body["temperature"], req.body["top_p"]) == (3, 0.7, 0.9)
        assert req.body["stop"] == ["\n\n"] and "seed" not in req.body
    assert raw_req.body["prompt"] == "a raw prompt"
    assert out[0].text == "reply to:" and out[0].finish_reason == "length"  # 3 toy tokens
    assert out[0].prompt_tokens == 5 and out[0].completion_tokens == 3
    assert out[1].text == " ok" and out[1].finish_reason == "stop"


def test_missing_usage_falls_back_to_zero_and_stop_string_is_stripped():
    with FakeOpenAIServer(include_usage=False) as server:
        server.script(Reply({"choices": [{"text": "answer END", "finish_reason": "stop"}]}))
        engine = engine_for(server)
        [out] = engine.generate(["q"], GenerationParams(stop=["END"]))
        assert out.text == "answer " and out.finish_reason == "stop"
        [out] = engine.generate([chat("hi")], GenerationParams())
        assert (out.prompt_tokens, out.completion_tokens) == (0, 0)


def test_generate_works_inside_a_running_event_loop(fake_openai_server):
    engine = engine_for(fake_openai_server)

    async def caller():  # e.g. a notebook cell
        return engine.generate([chat("x")], GenerationParams())

    assert asyncio.run(caller())[0].text == "reply to: x"


def test_use_chat_false_renders_with_the_local_tokenizer(fake_openai_server, tokenizer_dir):
    engine = engine_for(fake_openai_server, use_chat=False, tokenizer=str(tokenizer_dir))
    engine.generate([chat("hello")], GenerationParams())
    [req] = fake_openai_server.requests
    assert req.path == "/v1/completions"
    assert req.body["prompt"].endswith("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")


def test_render_chat_without_tokenizer_explains_the_flag():
    engine = OpenAIEngine("m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(EngineCapabilityError, match="--tokenizer"):
        engine.render_chat(chat("x"))


def test_base_url_from_env_and_load_engine(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://example.invalid:1234/v1/")
    engine = load_engine("openai", "m")
    assert isinstance(engine, OpenAIEngine) and engine.base_url == "http://example.invalid:1234/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAIEngine("m").base_url == "http://localhost:8000/v1"


# ---------------------------------------------------------------------- retries


def test_429_retry_after_is_honoured(fake_openai_server):
    fake_openai_server.script(Reply.error(429, "rate limited", retry_after=0.6))
    [out] = engine_for(fake_openai_server).generate([chat("x")], GenerationParams())
    assert out.text == "reply to: x"
    first, second = fake_openai_server.requests
    assert 0.55 <= second.received_at - first.received_at < 3.0  # backoff alone would be ≤ 0.05 s


def test_retry_after_parses_seconds_and_http_dates():
    assert _retry_after(httpx.Response(429, headers={"Retry-After": "7"})) == 7.0
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= _retry_after(httpx.Response(429, headers={"Retry-After": in_ten})) <= 10.0
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    assert _retry_after(httpx.Response(503, headers={"Retry-After": past})) == 0.0
    assert _retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None
    assert _retry_after(httpx.Response(503)) is None


@pytest.mark.parametrize(
    "fault",
    [Reply.error(500, "boom"), Reply.error(503, "overloaded"), Reply.hang(2.0), Reply.dropped()],
    ids=["500", "503", "timeout", "dropped-connection"],
)
def test_transient_faults_are_retried_then_succeed(fake_openai_server, fault):
    fake_openai_server.script(fault)
    engine = engine_for(fake_openai_server, timeout=0.4)
    [out] = engine.generate(["prompt"], GenerationParams())
    assert out.text == " ok"
    assert len(fake_openai_server.requests) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(fake_openai_server, status):
    fake_openai_server.script(Reply.error(status, "model 'toy-model' does not exist"))
    with pytest.raises(OpenAIServerError) as info:
        engine_for(fake_openai_server).generate([chat("x")], GenerationParams())
    assert len(fake_openai_server.requests) == 1
    message = str(info.value)
    assert f"HTTP {status}" in message and "does not exist" in message and "/v1/chat/completions" in message
    assert info.value.status == status
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, RuntimeError)  # CLIs: OSError → "error:"
    if status == 401:
        assert "HTTP 401 Unauthorized from http://127.0.0.1:" in message
        assert "check the API key variable $OPENAI_API_KEY" in message


def test_long_error_bodies_are_truncated(fake_openai_server):
    fake_openai_server.script(Reply.error(400, "x" * 5000))
    with pytest.raises(OpenAIServerError) as info:
        engine_for(fake_openai_server).generate(["p"], GenerationParams())
    assert 200 < len(str(info.value)) < 800


def test_gives_up_after_max_retries_naming_endpoint_and_cause(fake_openai_server):
    fake_openai_server.script(*[Reply.error(503, "still loading") for _ in range(10)])
    with pytest.raises(OpenAIServerError) as info:
        engine_for(fake_openai_server, max_retries=2).generate(["p"], GenerationParams())
    assert len(fake_openai_server.requests) == 3
    message = str(info.value)
    assert "/v1/completions kept failing: HTTP 503 Service Unavailable: still loading (after 3 tries)" in message
    assert info.value.status == 503 and "\n" not in message


def test_unreachable_server_gives_up_with_a_clear_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = OpenAIEngine("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, **FAST)
    with pytest.raises(OpenAIServerError, match=rf"^cannot reach http://127.0.0.1:{port}/v1/completions "
                       r"\(connection refused\) after 2 tries"):
        engine.generate(["p"], GenerationParams())


@pytest.mark.parametrize("fault,reason", [
    (Reply.hang(2.0), r"\(no response within 0.2 s\) after 1 try; a slow server may need --engine-opt timeout="),
    (Reply.dropped(), r"\(the connection was dropped: .*\) after 1 try$"),
], ids=["timeout", "dropped"])
def test_a_server_that_does_not_answer_is_named_as_such(fake_openai_server, fault, reason):
    fake_openai_server.responder = lambda req: fault
    with pytest.raises(OpenAIServerError, match=r"^no answer from http://127.0.0.1:\d+/v1/completions " + reason):
        engine_for(fake_openai_server, timeout=0.2, max_retries=0).generate(["p"], GenerationParams())


def test_unknown_host_is_named():
    engine = OpenAIEngine("m", base_url="http://user:pw-1234@no-such-host.invalid/v1", max_retries=0, **FAST)
    with pytest.raises(OpenAIServerError, match=r"cannot reach http://\*\*\*@no-such-host.invalid/v1/completions "
                       r"\(host not found") as info:
        engine.generate(["p"], GenerationParams())
    assert "pw-1234" not in str(info.value)


# ---------------------------------------------------------------------- API key hygiene


def test_api_key_is_sent_as_bearer_and_never_leaks(monkeypatch, caplog):
    secret = "sk-test-SECRET-1234567890"
    monkeypatch.setenv("CAI_TEST_KEY", secret)
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(api_key=secret) as server:
        engine = engine_for(server, api_key_env="CAI_TEST_KEY")
        server.script(Reply.error(500, "transient"))  # a retry, so the warning path logs too
        engine.generate([chat("x")], GenerationParams())
        assert server.requests[-1].headers["authorization"] == f"Bearer {secret}"
        # A misbehaving proxy echoing our headers back in its error body.
        server.script(Reply.error(403, f"forbidden for Authorization: Bearer {secret}"))
        with pytest.raises(OpenAIServerError) as info:
            engine.generate(["p"], GenerationParams())
    assert secret not in str(info.value) and "<redacted>" in str(info.value)
    assert secret not in repr(engine) and secret not in repr(vars(engine))
    assert any("retry 1/" in r.getMessage() for r in caplog.records)
    assert secret not in caplog.text


def test_credentials_in_the_base_url_are_used_but_never_shown(monkeypatch, caplog):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    caplog.set_level(logging.DEBUG)  # httpx logs every request's URL at INFO
    password, query_key = "pa:ss/w@rd-SECRET", "query-SECRET-42"
    with FakeOpenAIServer() as server:
        host = server.base_url.removeprefix("http://")
        raw = f"http://me:{password}@{host}/?api_key={query_key}&api-version=2024"
        engine = OpenAIEngine("toy-model", base_url=raw, **FAST)
        assert engine.base_url == f"http://***@{host}?api_key=***&api-version=2024"
        server.script(Reply.error(500, "transient"))  # a retry warning
        engine.generate(["p"], GenerationParams())
        first = server.requests[0]
        # Sent as httpx would: basic auth from the userinfo, the query after the endpoint's path.
        assert first.headers["authorization"] == f"Basic {base64.b64encode(f'me:{password}'.encode()).decode()}"
        assert first.path == f"/v1/completions?api_key={query_key}&api-version=2024"
        # A proxy echoing the URL and the basic-auth header back in an error.
        server.script(Reply.error(400, f"bad {raw} with {first.headers['authorization']}"))
        with pytest.raises(OpenAIServerError) as info:
            engine.generate(["p"], GenerationParams())
    message = str(info.value)
    assert message.startswith(f"HTTP 400 Bad Request from http://***@{host}/completions?api_key=***&api-version=2024: bad ")
    shown = " ".join([message, repr(engine), repr(vars(engine)), caplog.text])
    assert any("HTTP Request: POST" in r.getMessage() for r in caplog.records)  # httpx's line, redacted
    for secret in (password, query_key, base64.b64encode(f"me:{password}".encode()).decode()):
        assert secret not in shown


def test_redact_url():
    assert redact_url("http://localhost:8000/v1") == "http://localhost:8000/v1"
    assert redact_url("http://user:pass@host/v1") == "http://***@host/v1"
    assert redact_url("https://tok@host:1/v1?key=abc&api-version=1;token=t") == "https://***@host:1/v1?key=***&api-version=1;token=***"
    assert redact_url("http://host/v1?x-api-key=a&sig=b&model=m") == "http://host/v1?x-api-key=***&sig=***&model=m"


def test_missing_api_key_sends_no_authorization_header(fake_openai_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    engine_for(fake_openai_server).generate(["p"], GenerationParams())
    assert "authorization" not in fake_openai_server.requests[0].headers


# ---------------------------------------------------------------------- scoring


def position_logprob(prefix: str, token: str) -> float:
    return -(1 + len(prefix)) / 10


@pytest.mark.parametrize(
    "server_options",
    [{}, {"bos_token": "<s>"}, {"include_text_offset": False}, {"reject_max_tokens_zero": True}],
    ids=["plain", "vllm-bos-offsets", "no-text-offset", "needs-max-tokens-1"],
)
def test_score_sums_only_continuation_tokens(server_options):
    """Context "The answer is", continuation " (A)"; toy tokens "The"|" answer"|" is"|" ("|"A"|")".
    Each token's log-prob is -(1 + len(prefix))/10, so the continuation's three tokens, after prefixes of
    13, 15 and 16 characters, sum to -(14 + 16 + 17)/10 = -4.7. Any context token would change it."""
    with FakeOpenAIServer(token_logprob=position_logprob, **server_options) as server:
        engine = engine_for(server)
        assert engine.score(["The answer is", "Hi"], [" (A)", " there"]) == pytest.approx([-4.7, -0.3])
        body = server.requests[0].body
        assert body["echo"] is True and body["logprobs"] >= 0 and body["prompt"] in ("The answer is (A)", "Hi there")
        if server_options.get("reject_max_tokens_zero"):
            assert [r.body["max_tokens"] for r in server.requests][-1] == 1
            sent = len(server.requests)
            engine.score(["a"], [" b"])  # the fallback is remembered: one request, max_tokens=1
            assert len(server.requests) == sent + 1 and server.requests[-1].body["max_tokens"] == 1


def test_score_counts_a_token_straddling_the_boundary():
    choice = {
        "text": "Answer: (A)",
        "logprobs": {"tokens": ["Answer", ":", " (A", ")"], "token_logprobs": [None, -1.0, -2.0, -0.5],
                     "text_offset": [0, 6, 7, 10]},
    }
    assert continuation_logprob(choice, "Answer: (A)", len("Answer: ("), "url") == pytest.approx(-2.5)
    assert continuation_logprob(choice, "Answer: (A)", len("Answer:"), "url") == pytest.approx(-2.5)
    assert continuation_logprob(choice, "Answer: (A)", len("Answer"), "url") == pytest.approx(-3.5)


def test_score_on_a_server_without_echo_raises_capability_error():
    with FakeOpenAIServer(supports_echo=False) as server:
        with pytest.raises(EngineCapabilityError, match="cannot score.*vllm serve.*--engine transformers"):
            engine_for(server).score(["The answer is"], [" (A)"])
        assert [r.body["max_tokens"] for r in server.requests] == [0, 1]  # tried both, no retries


def test_score_when_server_ignores_echo_raises_capability_error(fake_openai_server):
    fake_openai_server.responder = lambda req: {"choices": [{"text": " ok", "logprobs": None}]}
    with pytest.raises(EngineCapabilityError, match="no echoed prompt"):
        engine_for(fake_openai_server).score(["ctx"], [" cont"])


def test_score_auth_failure_is_not_a_capability_error(fake_openai_server):
    fake_openai_server.script(Reply.error(401, "bad key"))
    with pytest.raises(OpenAIServerError, match="HTTP 401"):
        engine_for(fake_openai_server).score(["ctx"], [" cont"])


def test_score_options_echo_path_matches_score():
    with FakeOpenAIServer(token_logprob=position_logprob) as server:
        engine = engine_for(server)
        rows = engine.score_options(["The answer is", "So"], [" (A)", " (B)"])
        assert rows == [[pytest.approx(-4.7)] * 2, [pytest.approx(-(3 + 5 + 6) / 10)] * 2]


def test_score_options_top_logprobs_fast_path():
    top = {" A": -0.3, "A": -2.0, " B": -1.5, " C": -4.0}
    with FakeOpenAIServer(next_tokens=lambda prefix: top) as server:
        engine = engine_for(server, option_scoring="top_logprobs")
        [row] = engine.score_options(["Which is better? Answer:"], [" A", " B", " D"])
        [req] = server.requests
        assert (req.body["max_tokens"], req.body["logprobs"]) == (1, 20) and not req.body.get("echo")
    assert row[0] == pytest.approx(math.log(math.exp(-0.3) + math.exp(-2.0)))
    assert row[1] == pytest.approx(-1.5) and row[2] == -math.inf


def test_top_logprobs_rejects_ambiguous_options():
    engine = OpenAIEngine("m", base_url="http://127.0.0.1:9/v1", option_scoring="top_logprobs")
    with pytest.raises(ValueError, match="distinct"):
        engine.score_options(["c"], [" A", "A"])
    assert option_logprobs_from_top({"1": -1.0}, ["1", "2"]) == [-1.0, -math.inf]


def test_score_rate_limit_exhaustion_is_not_a_capability_error(fake_openai_server):
    fake_openai_server.script(*[Reply.error(429, "slow down", retry_after=0) for _ in range(2)])
    with pytest.raises(OpenAIServerError, match=r"kept failing: HTTP 429 Too Many Requests: slow down \(after 2 tries\)"):
        engine_for(fake_openai_server, max_retries=1).score(["ctx"], [" cont"])


def test_a_failed_request_cancels_the_rest(fake_openai_server):
    # Request "0" fails for good at once; the others would take 3 s each if they were awaited.
    def respond(req):
        if req.body["messages"][0]["content"] == "0":
            return Reply.error(400, "bad request")
        return Reply(delay=3.0)

    fake_openai_server.responder = respond
    started = time.monotonic()
    with pytest.raises(OpenAIServerError, match="HTTP 400"):
        engine_for(fake_openai_server, concurrency=8).generate([chat(str(i)) for i in range(8)], GenerationParams())
    assert time.monotonic() - started < 2.0


def test_error_message_is_extracted_from_common_error_shapes(fake_openai_server):
    bodies = [
        {"error": {"message": "openai-style message", "type": "invalid_request_error"}},
        {"object": "error", "message": "vllm-style message", "code": 400},
        {"error": "tgi-style message"},
    ]
    fake_openai_server.script(*[Reply(body, status=400) for body in bodies])
    engine = engine_for(fake_openai_server)
    for expected in ("openai-style message", "vllm-style message", "tgi-style message"):
        with pytest.raises(OpenAIServerError, match=rf"HTTP 400 Bad Request from .*/v1/completions: {expected}$"):
            engine.generate(["p"], GenerationParams())
