"""Shared fixtures: tiny models built from config (never downloaded) and the committed tokenizer.

The tokenizer in ``tests/assets/smollm2-tokenizer`` is the embedded model's own (SmolLM2, Apache-2.0),
with its chat template, so tiny test models speak the same format as the real default model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ASSETS = Path(__file__).parent / "assets"
TOKENIZER_DIR = ASSETS / "smollm2-tokenizer"
REPO_ROOT = Path(__file__).resolve().parent.parent


def build_tiny_model(path: Path, *, seed: int = 0, hidden_size: int = 32, layers: int = 2) -> Path:
    """A randomly initialised Llama with the SmolLM2 tokenizer, saved as a normal model folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Path of a tiny random Llama (hidden 32, 2 layers) with the SmolLM2 tokenizer. Read-only: copy to modify."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The embedded SmolLM2-135M, converted once to the safetensors cache. Use only in @pytest.mark.slow tests."""
    from engines.embedded import resolve_model

    return Path(resolve_model("smollm2-135m"))
