"""A local vLLM OpenAI-compatible server for the ``openai`` engine, started and stopped from Python.

    with VLLMServer(resolve_model("smollm2-135m"), ["--dtype", "float32"], log_path=Path("server.log")) as server:
        server.wait(600)
        engine = load_engine("openai", "smollm2-135m", base_url=server.url)

It runs ``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console command does not start on
the CPU build) on a free localhost port, in its own process group, so ``stop`` ends the API server and
the engine processes it spawned. Used by the real-server tests and benchmarks/engines.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """The server for the model folder ``model`` with extra command-line ``args``; output to ``log_path``."""

    def __init__(self, model: str, args: Sequence[str] = (), *, log_path: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = Path(log_path)
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
               "--port", str(self.port), *args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait(self, timeout: float) -> None:
        """Return once the server answers; RuntimeError if it exited, TimeoutError if not up in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(2)
        raise TimeoutError(f"the vLLM server was not up after {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self) -> VLLMServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
