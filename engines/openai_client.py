"""The HTTP half of the ``openai`` engine: requests with retries, errors, and credentials kept hidden.

``OpenAIClient`` (the engine's base class) holds the server address and API key and POSTs JSON with
retries: transient failures (HTTP 429, 5xx, timeouts, dropped connections) are retried with
exponential backoff and jitter (tenacity), honouring ``Retry-After``; any other 4xx is the caller's
mistake and fails at once with the server's message. Failures raise OpenAIServerError, a
ConnectionError (so an OSError, as with ``requests``), with a one-line message naming the redacted URL
and what happened.

The API key is read from an environment variable at construction and only ever placed in the
``Authorization`` header: never in repr, logs, errors or records. Credentials in the base URL
(``http://user:pass@host/v1`` → HTTP basic auth, ``?api_key=…``) are used for the requests but shown
everywhere (``engine.base_url``, repr, warnings, errors, httpx's own log lines) as ``http://***@host/v1``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import re
import socket
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, Sequence

import httpx
import tenacity

log = logging.getLogger(__name__)

MAX_ERROR_BODY = 500  # characters of a server's error body quoted in our errors
DEFAULT_BASE_URL = "http://localhost:8000/v1"

# Query parameters whose values are credentials (?api_key=, ?key=, ?token=, ?sig= ...): never shown.
SECRET_QUERY_NAME = re.compile(r"key|token|secret|passw|pwd|auth|sig|cred|session", re.IGNORECASE)
MIN_SECRET_LEN = 4  # shorter credential fragments are not searched for in free text (they would mangle it)


class OpenAIServerError(ConnectionError, RuntimeError):
    """The server refused a request, could not be reached, or kept failing until the retries ran out.

    A ConnectionError (hence an OSError, like ``requests``' errors) so callers that report I/O failures
    as one-line errors report this one too; still a RuntimeError for older callers. ``status`` is the
    HTTP status when there was one.
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _RetryableError(Exception):
    """A transient failure: 429, 5xx or a transport error. ``retry_after`` is the server's hint in seconds.

    ``kind``: "connect" (the server could not be reached), "timeout" (no answer in time), "transport" (the
    connection broke) or "http" (429/5xx).
    """

    def __init__(self, cause: str, retry_after: float | None = None, status: int | None = None, kind: str = "http"):
        super().__init__(cause)
        self.retry_after = retry_after
        self.status = status
        self.kind = kind


class _Secret:
    """Holds the API key so that repr(engine), vars(engine) and tracebacks show only a placeholder."""

    def __init__(self, value: str | None):
        self.value = value

    def __repr__(self) -> str:
        return "<hidden>" if self.value else "<none>"



class OpenAIClient:
    """Server address, API key and POSTs with retries, for the ``openai`` engine (its base class).

    ``base_url`` is the redacted form of the address, the only one ever shown or recorded; the API key
    and the URL's credentials live in ``_Secret`` holders that repr as a placeholder.
    """

    def __init__(self, base_url: str | None, api_key_env: str, concurrency: int, timeout: float, max_retries: int,
                 backoff_base: float, backoff_max: float, max_retry_after: float):
        raw_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).strip()
        # Requests go to _url_base + endpoint + _url_query, userinfo sent as basic auth; base_url is the
        # redacted form, the only one ever shown (repr, warnings, errors) or recorded.
        url_base, url_query, userinfo = _split_base_url(raw_url)
        self._url_base, self._url_query = _Secret(url_base), _Secret(url_query)
        self._basic_auth = _Secret(_basic_auth(userinfo))
        secrets = _url_secrets(raw_url)
        self.base_url = _replace_all(raw_url.partition("?")[0].rstrip("/") + url_query, secrets)
        self.api_key_env = api_key_env
        self._api_key = _Secret(os.environ.get(api_key_env) or None)
        if self._api_key.value:
            secrets = sorted([*secrets, (self._api_key.value, "<redacted>")], key=lambda kv: -len(kv[0]))
        self._secrets = _Secret(secrets)
        _HTTPX_LOG_FILTER.add(self._secrets.value)
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after

    def _client(self) -> httpx.AsyncClient:
        headers = {"Content-Type": "application/json"}
        if self._api_key.value:
            headers["Authorization"] = f"Bearer {self._api_key.value}"
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(self.timeout), limits=limits,
                                 auth=self._basic_auth.value)

    async def _post(self, client: httpx.AsyncClient, endpoint: str, body: dict) -> dict:
        """POST with retries; returns the decoded JSON or raises OpenAIServerError (message already redacted)."""
        url = self._url_base.value + endpoint + self._url_query.value  # credentials in the query, if any
        shown = self._shown(endpoint)
        attempts = self.max_retries + 1
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(_RetryableError),
            before_sleep=lambda state: log.warning(
                "POST %s: %s; retry %d/%d in %.1f s", shown, self._redact(str(state.outcome.exception())),
                state.attempt_number, self.max_retries, state.next_action.sleep,
            ),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._post_once(client, url, endpoint, body)
        except tenacity.RetryError as error:
            cause = error.last_attempt.exception()
            message = self._redact(self._gave_up(shown, cause, attempts))
            raise OpenAIServerError(message, status=getattr(cause, "status", None)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _gave_up(self, shown: str, cause: BaseException, attempts: int) -> str:
        tries = f"{attempts} {'try' if attempts == 1 else 'tries'}"
        kind = getattr(cause, "kind", "http")
        if kind == "connect":
            return (f"cannot reach {shown} ({cause}) after {tries}; is the server running at that address? "
                    "(--base-url, or $OPENAI_BASE_URL)")
        if kind == "timeout":
            return (f"no answer from {shown} ({cause}) after {tries}; a slow server may need "
                    "--engine-opt timeout=<seconds> (or fewer requests at once: --engine-opt concurrency=<n>)")
        if kind == "transport":
            return f"no answer from {shown} ({cause}) after {tries}"
        return (f"{shown} kept failing: {cause} (after {tries}); try again later, or allow more retries with "
                "--engine-opt max_retries=<n>")

    async def _post_once(self, client: httpx.AsyncClient, url: str, endpoint: str, body: dict) -> dict:
        shown = self._shown(endpoint)
        try:
            response = await client.post(url, json=body)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as error:
            raise OpenAIServerError(self._redact(f"bad base_url {self.base_url!r}: {error}")) from None
        except httpx.TransportError as error:  # timeouts, refused or dropped connections
            kind = ("connect" if isinstance(error, (httpx.ConnectError, httpx.ConnectTimeout))
                    else "timeout" if isinstance(error, httpx.TimeoutException) else "transport")
            raise _RetryableError(_transport_reason(error, self.timeout), kind=kind) from None
        status = response.status_code
        what = f"HTTP {status} {response.reason_phrase or httpx.codes.get_reason_phrase(status)}".rstrip()
        if status == 429 and "insufficient_quota" in response.text:
            raise OpenAIServerError(f"{what} from {shown} (quota exhausted): {self._body(response)}", status=status)
        if status == 429 or (status >= 500 and status != 501):
            raise _RetryableError(f"{what}: {self._body(response)}", _retry_after(response), status)
        if status >= 400:
            message = f"{what} from {shown}: {self._body(response)}"
            if status in (401, 403):
                state = "set, but not accepted" if self._api_key.value else "not set"
                message += (f"; check the API key variable ${self.api_key_env} ({state}; another variable: "
                            "--engine-opt api_key_env=NAME)")
            raise OpenAIServerError(message, status=status)
        try:
            return response.json()
        except ValueError:
            raise OpenAIServerError(f"{what} from {shown} but the body is not JSON: {self._body(response)}") from None

    def _shown(self, endpoint: str) -> str:
        """The endpoint's URL as it may be shown: credentials replaced by ***."""
        base, sep, query = self.base_url.partition("?")
        return base + endpoint + sep + query

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        # Exponential backoff with "equal jitter": at least half the step, so retries do not pile up.
        step = min(self.backoff_max, self.backoff_base * 2 ** (state.attempt_number - 1))
        return step / 2 + random.uniform(0, step / 2)

    def _body(self, response: httpx.Response) -> str:
        """The server's error message (OpenAI, vLLM and TGI shapes), else the raw body, truncated and redacted."""
        text = response.text.strip()
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            error = data.get("error")
            message = error.get("message") if isinstance(error, dict) else error if isinstance(error, str) else None
            text = str(message or data.get("message") or data.get("detail") or text)
        text = self._redact(text.replace("\n", " "))  # before truncating: a cut secret would no longer match
        if len(text) > MAX_ERROR_BODY:
            text = text[:MAX_ERROR_BODY] + "…"
        return text or "(empty body)"

    def _redact(self, text: str) -> str:
        """Credentials out of a text: the URL's (also as sent, percent-decoded or base64 basic auth), and
        the API key, which a proxy could echo back in an error body."""
        return _replace_all(text, self._secrets.value)


# ---------------------------------------------------------------------- credentials in URLs


def _split_base_url(url: str) -> tuple[str, str, str | None]:
    """``(scheme://host/path without userinfo or trailing '/', '?query' or '', userinfo or None)``.

    The userinfo ends at the last '@' before the query, so an unencoded '/' or '@' in a password still
    counts as password (and is never shown).
    """
    head, sep, query = url.partition("?")
    scheme, slashes, rest = head.partition("://")
    if not slashes:
        scheme, rest = "", head
    userinfo, at, host_path = rest.rpartition("@")
    if not at:
        userinfo, host_path = "", rest
    return f"{scheme}{slashes}{host_path}".rstrip("/"), (sep + query if query else ""), userinfo or None


def _basic_auth(userinfo: str | None) -> httpx.BasicAuth | None:
    """What httpx would make of ``user:pass@`` in a URL: basic auth with the percent-decoded parts."""
    if userinfo is None:
        return None
    user, _, password = userinfo.partition(":")
    return httpx.BasicAuth(urllib.parse.unquote(user), urllib.parse.unquote(password))


def _url_secrets(url: str) -> list[tuple[str, str]]:
    """``(secret, replacement)`` pairs for the credentials in ``url``, longest first: ``user:pass@`` →
    ``***@`` and ``api_key=value`` → ``api_key=***`` anywhere in a text; the bare password, query secrets
    and basic-auth token (also percent-decoded) → ``***`` when at least MIN_SECRET_LEN long."""
    _, query, userinfo = _split_base_url(url)
    pairs: dict[str, str] = {}
    fragments: list[str] = []
    if userinfo:
        pairs[userinfo + "@"] = "***@"
        user, _, password = userinfo.partition(":")
        fragments += [userinfo, password, urllib.parse.unquote(userinfo), urllib.parse.unquote(password)]
        fragments.append(_basic_auth(userinfo)._auth_header.split(" ", 1)[-1])
    for part in re.split(r"[&;]", query[1:]):
        name, eq, value = part.partition("=")
        if eq and value and SECRET_QUERY_NAME.search(urllib.parse.unquote_plus(name)):
            pairs[part] = f"{name}=***"
            fragments += [value, urllib.parse.unquote_plus(value)]
    for fragment in fragments:
        if len(fragment) >= MIN_SECRET_LEN:
            pairs.setdefault(fragment, "***")
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def redact_url(url: str) -> str:
    """``url`` fit to show: userinfo → ``***``, values of credential-like query parameters → ``***``.

    >>> redact_url("http://user:pass@host:8000/v1?api_key=abc&api-version=2024")
    'http://***@host:8000/v1?api_key=***&api-version=2024'
    """
    return _replace_all(url, _url_secrets(url))


def _replace_all(text: str, replacements: Sequence[tuple[str, str]]) -> str:
    for secret, shown in replacements:
        if secret in text:
            text = text.replace(secret, shown)
    return text


class _RedactingLogFilter(logging.Filter):
    """On httpx's logger, whose INFO lines ("HTTP Request: POST <url> ...") show the URL with its query."""

    def __init__(self) -> None:
        super().__init__()
        self._replacements: list[tuple[str, str]] = []

    def add(self, replacements: Sequence[tuple[str, str]]) -> None:
        known = set(self._replacements)
        new = [r for r in replacements if r not in known]
        if new:
            self._replacements = sorted(self._replacements + new, key=lambda kv: -len(kv[0]))

    def filter(self, record: logging.LogRecord) -> bool:
        if self._replacements:
            message = record.getMessage()
            redacted = _replace_all(message, self._replacements)
            if redacted != message:
                record.msg, record.args = redacted, ()
        return True


_HTTPX_LOG_FILTER = _RedactingLogFilter()
logging.getLogger("httpx").addFilter(_HTTPX_LOG_FILTER)


def _transport_reason(error: httpx.TransportError, timeout: float) -> str:
    """What went wrong on the wire, in words: "connection refused", "no response within 5 s" ..."""
    if isinstance(error, httpx.ConnectTimeout):
        return f"connection timed out after {timeout:g} s"
    if isinstance(error, httpx.TimeoutException):
        return f"no response within {timeout:g} s"
    cause: BaseException | None = error
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"host not found: {cause.strerror or cause}"
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    if isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return f"the connection was dropped: {error or type(error).__name__}"
    return f"{type(error).__name__}: {error or 'connection problem'}"


# ---------------------------------------------------------------------- pure helpers (tested directly)


def _run_sync(make_coroutine: Callable[[], Awaitable]):
    """Run a coroutine from sync code; inside a running event loop (Jupyter, an async caller) run it on a
    worker thread with its own loop, since a loop cannot block on itself."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coroutine())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make_coroutine())).result()


async def _gather_or_cancel(coroutines) -> list:
    """Like gather, but the first failure cancels the requests still running (fail fast, no orphans)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds: either a number of seconds or an HTTP date."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())

