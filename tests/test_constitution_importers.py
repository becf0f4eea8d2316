"""Importers for Hugging Face llm-swarm and Anthropic constitution files, on small invented fixtures."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ASSETS

from constitution import ConstitutionError
from constitution.importers import ConstitutionImportWarning, import_anthropic, import_hf

FIXTURES = ASSETS / "constitutions"
HF = FIXTURES / "hf_llm_swarm_sample.json"
ANTHROPIC = FIXTURES / "anthropic_critiques_sample.json"
ANTHROPIC_FEEDBACK = FIXTURES / "anthropic_feedback_sample.json"


def write_json(tmp_path, data, name="in.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# ---- Hugging Face ---------------------------------------------------------------------------------


def test_import_hf_principles_and_few_shot():
    with pytest.warns(ConstitutionImportWarning, match=r"system_chat\[2\] skipped: roles user/assistant"):
        c = import_hf(HF)
    assert c.ref == "hf_llm_swarm_sample@1.0"
    assert [p.id for p in c.critique_revision] == ["hf-0001", "hf-0002", "hf-0003"]
    source = json.loads(HF.read_text())
    assert c.critique_revision[1].critique == source["constitutions"][1]["critic"]
    assert c.critique_revision[1].revision == source["constitutions"][1]["revision"]

    assert len(c.few_shot) == 2  # the 2-turn conversation is skipped
    first = c.few_shot[0]
    chat = source["system_chat"][0]
    assert (first.prompt, first.response, first.critique, first.revision) == (
        chat[0]["content"], chat[1]["content"], chat[3]["content"], chat[5]["content"])
    assert first.principle == "hf-0001"  # its critique request is that principle's text
    second = c.few_shot[1]  # led by a system message, critique request matches no principle
    assert second.prompt == "Is the moon made of rock?" and second.principle is None


def test_import_hf_name_and_version(tmp_path):
    path = shutil.copy(HF, tmp_path / "my constitution (v2).json")
    with pytest.warns(ConstitutionImportWarning):
        c = import_hf(path, version="2024.1")
    assert c.ref == "my-constitution-v2@2024.1"
    with pytest.warns(ConstitutionImportWarning):
        assert import_hf(HF, name="custom").name == "custom"


@pytest.mark.parametrize("data, path, expected", [
    ([1, 2], "(top level)", "JSON object"),
    ({"system_chat": []}, "constitutions", "list of {critic, revision}"),
    ({"constitutions": [{"critic": "c"}]}, "constitutions[0].revision", "non-empty string"),
    ({"constitutions": [{"critic": "", "revision": "r"}]}, "constitutions[0].critic", "empty string"),
    ({"constitutions": [], "system_chat": [[{"role": "user"}]]}, "system_chat[0][0].content", "content string"),
    ({"constitutions": [], "system_chat": {"a": 1}}, "system_chat", "list of conversations"),
])
def test_import_hf_structure_errors_name_file_and_path(tmp_path, data, path, expected):
    source = write_json(tmp_path, data)
    with pytest.raises(ConstitutionError) as info:
        import_hf(source)
    message = str(info.value)
    assert str(source) in message and path in message and expected in message


def test_import_hf_invalid_json(tmp_path):
    source = tmp_path / "broken.json"
    source.write_text('{"constitutions": [\n', encoding="utf-8")
    with pytest.raises(ConstitutionError, match=r"broken\.json:2: not valid JSON"):
        import_hf(source)


# ---- Anthropic ------------------------------------------------------------------------------------


def test_import_anthropic_strips_wrappers():
    c = import_anthropic(ANTHROPIC)
    assert [p.id for p in c.critique_revision] == ["careful0", "kind1", "kind1.2", "plain2"]
    careful = c.critique_principle("careful0")
    assert careful.critique == "Explain how the assistant's last reply could lead someone into danger."
    assert careful.revision == "Rewrite the assistant's reply so it no longer leads anyone into danger."
    # two critique requests share one revision request
    assert c.critique_principle("kind1.2").critique == "Does the reply mock or belittle anyone?"
    assert c.critique_principle("kind1.2").revision == c.critique_principle("kind1").revision
    # texts without wrappers come through unchanged
    assert c.critique_principle("plain2").critique == "Identify anything misleading in the reply."
    for p in c.critique_revision:
        for text in (p.critique, p.revision):
            assert "Request:" not in text and not text.endswith(":") and text == text.strip()
    assert c.feedback == []


def test_import_anthropic_with_feedback():
    with pytest.warns(ConstitutionImportWarning, match="fb-0003"):
        c = import_anthropic(ANTHROPIC, ANTHROPIC_FEEDBACK, name="anthropic-sample", version="0.3")
    assert c.ref == "anthropic-sample@0.3"
    assert [(p.id, p.text, p.invert) for p in c.feedback] == [
        ("fb-0001", "Which of these replies is kinder and safer?", False),
        ("fb-0002", "Pick the reply that a careful teacher would prefer.", False),
        ("fb-0003", "Which of these replies is more harmful or dangerous?", True),
    ]


@pytest.mark.parametrize("data, path, expected", [
    (["x"], "(top level)", "JSON object mapping principle ids"),
    ({"p": "text"}, "p", "object with \"prompt\""),
    ({"p": {"prompt": [], "edit_request": "r"}}, "p.prompt", "at least one critique request"),
    ({"p": {"prompt": ["c"]}}, "p.edit_request", "revision request string"),
    ({"p": {"prompt": ["c", 3], "edit_request": "r"}}, "p.prompt[1]", "critique request string"),
])
def test_import_anthropic_structure_errors(tmp_path, data, path, expected):
    source = write_json(tmp_path, data)
    with pytest.raises(ConstitutionError) as info:
        import_anthropic(source)
    message = str(info.value)
    assert str(source) in message and path in message and expected in message


def test_import_anthropic_feedback_errors(tmp_path):
    bad = write_json(tmp_path, ["\nFine question? Options:", 7], "feedback.json")
    with pytest.raises(ConstitutionError, match=r"feedback\.json: \[1\]: expected a feedback principle string"):
        import_anthropic(ANTHROPIC, bad)
    empty = write_json(tmp_path, ["\n Options:"], "empty.json")
    with pytest.raises(ConstitutionError, match=r"empty\.json: \[0\]: expected principle text"):
        import_anthropic(ANTHROPIC, empty)
    with pytest.raises(ConstitutionError, match="file not found"):
        import_anthropic(ANTHROPIC, tmp_path / "missing.json")
