"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests: no mocked client, real sockets.

    from fake_openai_server import FakeOpenAIServer, Reply

    with FakeOpenAIServer() as server:                      # ephemeral port, background thread
        server.script(Reply.error(429, "slow down", retry_after=0.3), Reply.drop())  # faults, FIFO
        engine = OpenAIEngine("toy", base_url=server.base_url)
        ...
        assert server.requests[0].headers["authorization"] == "Bearer ..."

Or as a fixture: ``from fake_openai_server import fake_openai_server`` in a test module.

Every request is answered by, in order: the next scripted ``Reply`` (``server.script``), else
``server.responder(request)`` if set (returning a Reply, a JSON dict, or None), else the default
OpenAI-shaped response. Defaults are deterministic and follow the real servers' formats, including
``echo`` + ``logprobs`` prompt scoring through a toy word-level "language model":

- ``token_logprob(prefix, token) -> float``: log-prob of ``token`` after the text ``prefix``.
- ``next_tokens(prefix) -> {token: logprob}``: the top tokens after ``prefix`` (first one is generated
  by /completions when no ``completion_text`` is given, and feeds ``top_logprobs``).
- ``chat_reply(messages) -> str`` and ``completion_text(prompt) -> str``: the generated text.

Switches that mimic real servers: ``supports_echo=False`` (llama.cpp, TGI: 400 on echo),
``reject_max_tokens_zero=True`` (servers that insist on generating a token), ``bos_token="<s>"``
(vLLM: the BOS token's text is counted in ``text_offset`` although the echoed text lacks it),
``include_usage=False``, ``include_text_offset=False``, ``api_key="..."`` (401 unless it is sent).
"""

from __future__ import annotations

import json
import re
import socket
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import pytest

TOKEN_PATTERN = re.compile(r"\s*[A-Za-z0-9]+|\s*[^A-Za-z0-9\s]|\s+")


def toy_tokenize(text: str) -> list[str]:
    """Words and punctuation marks, each carrying its leading whitespace (like BPE's 'Ġword')."""
    return TOKEN_PATTERN.findall(text)


def default_token_logprob(prefix: str, token: str) -> float:
    """Deterministic pseudo log-prob in [-6, -0.5) that depends on the prefix's last word and the token."""
    seed = zlib.crc32((prefix[-12:] + "\x00" + token).encode())
    return -0.5 - (seed % 1100) / 200


def default_next_tokens(prefix: str) -> dict[str, float]:
    return {" ok": -0.1, " yes": -2.5, " no": -3.0}


@dataclass
class RecordedRequest:
    path: str  # with the query string, as sent
    headers: dict[str, str]  # names lower-cased
    body: dict
    received_at: float


@dataclass
class Reply:
    """One scripted answer. ``body=None`` with status 200 means "the default response"."""

    body: dict | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # sleep before answering; past the client's timeout it is a timeout
    drop: bool = False  # close the connection without sending anything

    @classmethod
    def error(cls, status: int, message: str, retry_after: str | float | None = None) -> "Reply":
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return cls({"error": {"message": message, "type": "fake_error", "code": status}}, status, headers)

    @classmethod
    def hang(cls, seconds: float) -> "Reply":
        return cls(delay=seconds)

    @classmethod
    def dropped(cls) -> "Reply":
        return cls(drop=True)


class FakeOpenAIServer:
    def __init__(
        self,
        *,
        token_logprob: Callable[[str, str], float] = default_token_logprob,
        next_tokens: Callable[[str], dict[str, float]] = default_next_tokens,
        chat_reply: Callable[[list[dict]], str] | None = None,
        completion_text: Callable[[str], str] | None = None,
        supports_echo: bool = True,
        reject_max_tokens_zero: bool = False,
        bos_token: str | None = None,
        include_usage: bool = True,
        include_text_offset: bool = True,
        api_key: str | None = None,
    ):
        self.token_logprob = token_logprob
        self.next_tokens = next_tokens
        self.chat_reply = chat_reply or (lambda messages: f"reply to: {messages[-1]['content']}")
        self.completion_text = completion_text
        self.supports_echo = supports_echo
        self.reject_max_tokens_zero = reject_max_tokens_zero
        self.bos_token = bos_token
        self.include_usage = include_usage
        self.include_text_offset = include_text_offset
        self.api_key = api_key
        self.responder: Callable[[RecordedRequest], Reply | dict | None] | None = None
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeOpenAIServer":
        self._httpd = _QuietHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in a "hang"
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ scripting

    def script(self, *replies: Reply) -> None:
        """Queue replies; each request takes the next one, whatever its path."""
        with self._lock:
            self._script.extend(replies)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._lock:
            scripted = self._script.popleft() if self._script else None
        if scripted is None and self.responder is not None:
            answer = self.responder(request)
            scripted = answer if isinstance(answer, Reply) or answer is None else Reply(answer)
        if scripted is None:
            scripted = Reply()
        if scripted.body is not None or scripted.drop:
            return scripted
        # No body: the default answer, after the scripted delay (a slow but successful server).
        default = self.default_response(request)
        if isinstance(default, Reply):
            return Reply(default.body, default.status, default.headers, scripted.delay)
        return Reply(default, scripted.status, scripted.headers, scripted.delay)

    # ------------------------------------------------------------------ default OpenAI-shaped answers

    def default_response(self, request: RecordedRequest) -> dict | Reply:
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return Reply.error(401, "invalid api key")
        body, path = request.body, request.path.partition("?")[0]  # a query (?api-version=…) does not route
        if path.endswith("/chat/completions"):
            return self._chat(body)
        if path.endswith("/completions"):
            return self._completion(body)
        return Reply.error(404, f"no route {request.path}")

    def _generated(self, text: str, max_tokens: int | None) -> tuple[list[str], str]:
        tokens = toy_tokenize(text)
        limit = 16 if max_tokens is None else max_tokens
        return tokens[:limit], "length" if len(tokens) > limit else "stop"

    def _usage(self, prompt_tokens: int, completion_tokens: int) -> dict:
        if not self.include_usage:
            return {}
        return {"usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _chat(self, body: dict) -> dict | Reply:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return Reply.error(400, "messages must be a non-empty list")
        tokens, finish = self._generated(self.chat_reply(messages), body.get("max_tokens"))
        prompt_tokens = sum(len(toy_tokenize(m.get("content", ""))) for m in messages)
        return {
            "id": "chatcmpl-fake", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(tokens)},
                         "finish_reason": finish}],
            **self._usage(prompt_tokens, len(tokens)),
        }

    def _completion(self, body: dict) -> dict | Reply:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return Reply.error(400, "prompt must be a string")
        echo, k, max_tokens = bool(body.get("echo")), body.get("logprobs"), body.get("max_tokens", 16)
        if echo and not self.supports_echo:
            return Reply.error(400, "echo is not supported by this server")
        if max_tokens == 0 and self.reject_max_tokens_zero:
            return Reply.error(400, "max_tokens must be at least 1")
        if self.completion_text is not None:
            text = self.completion_text(prompt)
        else:
            top = self.next_tokens(prompt)
            text = max(top, key=top.get) if top else ""
        generated, finish = self._generated(text, max_tokens)
        prompt_tokens = toy_tokenize(prompt)
        choice = {"index": 0, "text": (prompt if echo else "") + "".join(generated), "finish_reason": finish,
                  "logprobs": None}
        if k is not None:
            choice["logprobs"] = self._logprobs(prompt, prompt_tokens if echo else [], generated, int(k), echo)
        return {"id": "cmpl-fake", "object": "text_completion", "model": body.get("model"), "choices": [choice],
                **self._usage(len(prompt_tokens), len(generated))}

    def _logprobs(self, prompt: str, echoed: list[str], generated: list[str], k: int, echo: bool) -> dict:
        tokens, logprobs, top = [], [], []
        if echo and self.bos_token is not None:
            tokens.append(self.bos_token), logprobs.append(None), top.append(None)
        prefix = "" if echo else prompt
        for i, token in enumerate(echoed + generated):
            first = echo and i == 0 and self.bos_token is None  # no log-prob without context
            is_generated = i >= len(echoed)
            lp = None if first else (self.next_tokens(prefix).get(token) if is_generated else None)
            if lp is None and not first:
                lp = self.token_logprob(prefix, token)
            tokens.append(token), logprobs.append(lp)
            if first:
                top.append(None)
            elif is_generated:
                candidates = {**self.next_tokens(prefix), token: lp}
                top.append(dict(sorted(candidates.items(), key=lambda kv: -kv[1])[: max(k, 1)]))
            else:
                top.append({token: lp})
            prefix += token
        # Offsets as vLLM computes them: the running length of the token strings (BOS included).
        offsets, position = [], 0 if echo else len(prompt)
        for token in tokens:
            offsets.append(position)
            position += len(token)
        out = {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": top}
        if self.include_text_offset:
            out["text_offset"] = offsets
        return out


class _QuietHTTPServer(ThreadingHTTPServer):
    """A client that gives up (cancelled requests, closed keep-alive connections) is no server error:
    socketserver would print a traceback to stderr, where CLI tests look for "Traceback"."""

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def _make_handler(server: FakeOpenAIServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {"_invalid_json": raw.decode(errors="replace")}
            request = RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
            with server._lock:
                server.requests.append(request)
                server._in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server._in_flight)
            try:
                self._answer(server._next_reply(request))
            finally:
                with server._lock:
                    server._in_flight -= 1

        def _answer(self, reply: Reply) -> None:
            if reply.delay:
                server._stopping.wait(reply.delay)
            if reply.drop:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            data = json.dumps(reply.body).encode()
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (timeout) and closed the socket
                self.close_connection = True

    return Handler


@pytest.fixture
def fake_openai_server():
    with FakeOpenAIServer() as server:
        yield server
