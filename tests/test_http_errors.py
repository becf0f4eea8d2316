"""The ``openai`` engine's failures through the real CLI (tests/fake_openai_server.py, real sockets).

An unreachable server, a refused key (HTTP 401) and a server that keeps answering 503 must end
`cai generate …` and `cai label …` with ONE `error: …` line naming the (redacted) URL and what
happened, exit code 2 and no traceback; records already written stay; and credentials in
``--base-url`` (``http://user:secret@host/v1``) never show in the output, the logs or the run directory.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer, Reply
from typer.testing import CliRunner

from cai_cli import app

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-PASSWORD"
# Tiny retries and backoff so every failure takes well under a second.
FAST = ["--engine-opt", "max_retries=2", "--engine-opt", "backoff_base=0.01", "--engine-opt", "backoff_max=0.02",
        "--engine-opt", "timeout=5"]


def with_credentials(base_url: str) -> str:
    return base_url.replace("http://", f"http://user:{SECRET}@", 1)


def closed_port() -> int:
    with socket.socket() as s:  # bound, never listening, then closed: connections are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts_file(tmp_path: Path, n: int = 4) -> Path:
    f = tmp_path / "prompts.jsonl"
    f.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"question number {i}?"}) + "\n" for i in range(n)))
    return f


def comparisons_file(tmp_path: Path, n: int = 3) -> Path:
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"question {i}?", "chosen": f"a kind answer {i}",
                                     "rejected": f"a rude answer {i}"}) + "\n" for i in range(n)))
    return f


def generate_pairs(tmp_path: Path, url: str, out: Path):
    return CliRunner().invoke(app, [
        "generate", "pairs", "-p", str(prompts_file(tmp_path)), "--engine", "openai", "--model", "toy",
        "--base-url", url, "--n", "2", "--max-new-tokens", "8", "--batch-size", "1", "--out", str(out), "--quiet", *FAST])


def generate_sl_cai(tmp_path: Path, url: str, out: Path):
    return CliRunner().invoke(app, [
        "generate", "sl-cai", "-c", "harmless", "-p", str(prompts_file(tmp_path)), "--engine", "openai", "--model", "toy",
        "--base-url", url, "--max-new-tokens", "8", "--batch-size", "1", "--out", str(out), "--quiet", *FAST])


def label_preference(tmp_path: Path, url: str, out: Path):
    return CliRunner().invoke(app, [
        "label", "preference", str(comparisons_file(tmp_path)), "--engine", "openai", "--labeler-model", "toy",
        "--base-url", url, "--batch-size", "2", "--out", str(out), "--quiet", *FAST])


COMMANDS = {"generate-pairs": generate_pairs, "generate-sl-cai": generate_sl_cai, "label-preference": label_preference}


def assert_one_error_line(result, *expected: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def assert_secret_nowhere(result, caplog, folder: Path) -> None:
    assert SECRET not in result.output and SECRET not in result.stderr
    assert SECRET not in caplog.text
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.fixture(autouse=True)
def _no_api_key(monkeypatch, caplog):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    caplog.set_level(logging.DEBUG)  # httpx's own INFO lines ("HTTP Request: POST <url>") included


@pytest.mark.parametrize("command", COMMANDS)
def test_unreachable_server_is_one_error_line(tmp_path, caplog, command):
    port = closed_port()
    out = tmp_path / "run"
    result = COMMANDS[command](tmp_path, with_credentials(f"http://127.0.0.1:{port}/v1"), out)
    line = assert_one_error_line(result, f"cannot reach http://***@127.0.0.1:{port}/v1/", "(connection refused)",
                                 "after 3 tries")
    assert "\n" not in line
    assert any("retry 1/2" in r.getMessage() for r in caplog.records)  # the retries were announced (redacted)
    assert_secret_nowhere(result, caplog, tmp_path)


@pytest.mark.parametrize("command", ["generate-pairs", "label-preference"])
def test_refused_key_is_one_error_line_without_retries(tmp_path, caplog, command):
    with FakeOpenAIServer(api_key="the-right-key") as server:  # 401 unless "Bearer the-right-key" is sent
        result = COMMANDS[command](tmp_path, with_credentials(server.base_url), tmp_path / "run")
        assert len(server.requests) >= 1
        # The userinfo is sent as basic auth (httpx's reading of user:pass@), never in the request line.
        assert all(r.headers["authorization"].startswith("Basic ") and SECRET not in r.path for r in server.requests)
    assert_one_error_line(result, "HTTP 401 Unauthorized from http://***@127.0.0.1:", "invalid api key",
                          "check the API key variable $OPENAI_API_KEY (not set")
    assert_secret_nowhere(result, caplog, tmp_path)


@pytest.mark.parametrize("command", ["generate-pairs", "label-preference"])
def test_server_that_keeps_failing_is_one_error_line(tmp_path, caplog, command):
    with FakeOpenAIServer() as server:
        server.responder = lambda request: Reply.error(503, "model is still loading")
        result = COMMANDS[command](tmp_path, with_credentials(server.base_url), tmp_path / "run")
        assert len(server.requests) >= 3
    assert_one_error_line(result, "http://***@127.0.0.1:", "kept failing: HTTP 503 Service Unavailable: model is still loading",
                          "after 3 tries", "max_retries")
    assert_secret_nowhere(result, caplog, tmp_path)


def fail_after(requests: int, reply: Reply):
    """A responder: the default answer for the first ``requests`` requests, then ``reply`` for good."""
    seen = []

    def respond(request):
        seen.append(request)
        return reply if len(seen) > requests else None

    return respond


@pytest.mark.parametrize("command,ok_requests,kept", [
    ("generate-pairs", 4, 2),  # --batch-size 1, --n 2: chunks of 2 prompts = 4 requests
    ("label-preference", 4, 1),  # --batch-size 2, both orders: one comparison per chunk = 2 contexts × 2 options
])
def test_records_written_before_the_failure_stay_and_the_rerun_resumes(tmp_path, caplog, command, ok_requests, kept):
    out = tmp_path / "run"
    with FakeOpenAIServer() as server:
        server.responder = fail_after(ok_requests, Reply.error(401, "key revoked"))
        url = with_credentials(server.base_url)
        result = COMMANDS[command](tmp_path, url, out)
        assert_one_error_line(result, "HTTP 401 Unauthorized", "key revoked")
        records = (out / "records.jsonl").read_text().splitlines()
        assert len(records) == kept
        assert_secret_nowhere(result, caplog, tmp_path)

        server.responder = None  # healthy again: the same command finishes the job
        again = COMMANDS[command](tmp_path, url, out)
        assert again.exit_code == 0, again.output
    lines = (out / "records.jsonl").read_text().splitlines()
    assert lines[:kept] == records and len(lines) > kept
    assert_secret_nowhere(again, caplog, tmp_path)


def test_real_process_prints_one_redacted_line_and_no_traceback(tmp_path):
    port = closed_port()
    url = f"http://user:{SECRET}@127.0.0.1:{port}/v1?api_key=query-SECRET-123&api-version=1"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("OPENAI_API_KEY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "cai_cli", "label", "preference", str(comparisons_file(tmp_path)), "--engine", "openai",
         "--labeler-model", "toy", "--base-url", url, "--out", str(tmp_path / "run"), "--quiet", *FAST],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"cannot reach http://***@127.0.0.1:{port}/v1/completions?api_key=***&api-version=1" in errors[0]
    assert "retry 1/2" in proc.stderr  # the warnings reach stderr, redacted too
    for secret in (SECRET, "query-SECRET-123"):
        assert secret not in proc.stdout + proc.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.name != "pairs.jsonl":
            assert SECRET.encode() not in path.read_bytes(), path
