"""engines/view.py: what the driver of a Ray run knows of an engine without loading its model."""

from __future__ import annotations

import pytest

from engines import load_engine
from engines.embedded import ModelNotFoundError
from engines.view import EngineView


def test_view_renders_chats_as_the_engine_does_without_loading_the_model(tiny_model_dir, monkeypatch):
    engine = load_engine("transformers", str(tiny_model_dir), dtype="float32")
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    view = EngineView("transformers", str(tiny_model_dir), batch_size=4)
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi <b>there</b>"}]
    assert view.render_chat(chat) == engine.render_chat(chat)
    assert view.render_chat(chat, add_generation_prompt=False) == engine.render_chat(chat, add_generation_prompt=False)
    assert (view.name, view.model_id, view.can_score) == (engine.name, engine.model_id, True)
    with pytest.raises(RuntimeError, match="runs no model"):
        view.generate(["x"], None)
    with pytest.raises(RuntimeError, match="runs no model"):
        view.score_options(["x"], ["A"])


def test_view_of_a_missing_folder_fails_at_once(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        EngineView("vllm", str(tmp_path / "nope"))
