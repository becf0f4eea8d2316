"""`cai report`: run discovery, each section from hand-written and real run directories, escaping of hostile
text, error messages naming the file and key, and the page in a real headless Chromium (no console errors,
every section in the DOM, the example filter working, a screenshot kept in tests/artifacts/)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from report_browser import Browser, find_browser
from report_fixtures import EVAL_SUMMARY, HOSTILE, metrics_rows, pipeline_root, sl_cai_run, write_json, write_jsonl
from typer.testing import CliRunner

from cai_cli import app
from report.discover import ReportError, discover
from report.render import build_report
from report.sections import MATERIAL_SIMILARITY, similarity

ARTIFACTS = Path(__file__).parent / "artifacts"
SECTION_IDS = ("constitution", "sl-cai", "labels", "training", "evaluation")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return pipeline_root(tmp_path_factory.mktemp("pipeline") / "tiny")


@pytest.fixture(scope="module")
def rendered(root, tmp_path_factory) -> tuple[Path, str, dict]:
    """(the page's file, its HTML, what each section shows) for the pipeline-like root, 4 examples per SL-CAI run."""
    html, shown = build_report([root], max_examples=4)
    out = tmp_path_factory.mktemp("report") / "report.html"
    out.write_text(html, encoding="utf-8")
    return out, html, shown


def test_discovery_finds_every_kind(root):
    kinds = {r.name.split("/")[-1]: r.kind for r in discover([root])}
    assert kinds == {"sl-cai": "sl-cai", "labels": "label-preference", "label-eval": "label-eval", "sft": "train-sft",
                     "pm": "train-pm", "dpo": "train-dpo", "kto": "train-kto", "ppo": "train-ppo", "eval": "eval-winrate"}
    assert [r.kind for r in discover([root / "ppo"])] == ["train-ppo"]  # a single run directory as the root


def test_online_algo_from_config_or_summary(tmp_path):
    for algo in ("rloo", "grpo"):
        write_jsonl(tmp_path / algo / "metrics.jsonl", metrics_rows("ppo"))
        (tmp_path / algo / "config.yaml").write_text(f"algo: {algo}\nmodel: runs/sft\n")
    write_jsonl(tmp_path / "done" / "metrics.jsonl", metrics_rows("ppo"))
    write_json(tmp_path / "done" / "summary.json", {"algo": "grpo", "model": "runs/sft"})
    assert {r.name: r.kind for r in discover([tmp_path])} == {f"{tmp_path.name}/done": "train-grpo",
                                                             f"{tmp_path.name}/grpo": "train-grpo", f"{tmp_path.name}/rloo": "train-rloo"}


def test_similarity_definition():
    assert similarity("a b c", "a b c") == 1.0
    assert similarity("", "") == 1.0
    assert similarity("one two three four", "five six") == 0.0
    assert MATERIAL_SIMILARITY > similarity("the cat sat on the mat", "a dog lay under a table")


def test_page_is_self_contained_and_escapes_user_text(rendered):
    _, html, _ = rendered
    assert HOSTILE not in html and "<script>window.__pwned" not in html  # escaped everywhere
    assert "&lt;script&gt;window.__pwned" in html
    assert html.count("<script>") == 1  # only the page's own filter script
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched at view time
    assert html.count('src="data:image/png;base64,') >= 8
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in html


def test_sections_hold_the_numbers(rendered):
    _, html, shown = rendered
    assert shown["training"] == [f"tiny/{k}" for k in ("sft", "pm", "dpo", "kto", "ppo")]
    assert "harmless@1.0" in html and "40 prompts" in html and "55.0 %" in html and "40.0 % – 69.0 %" in html
    assert "position-flip rate" in html and "agreement, both orders" in html
    assert "response 1 at step 8" in html and "response 0 at step 1" in html  # samples over time: first and last step
    assert "Examples (4 of 6)" in html and "Pipeline tiny" in html and "not finished" in html
    assert "57.25" not in html and "57.2" in html  # length of B, as read from summary.json


def test_sl_cai_materially_revised_share(root):
    from report.discover import classify
    from report.sections import records, sl_cai_section

    run = classify(root / "sl-cai", "sl")
    section = sl_cai_section(run, records(run), 10)
    changed = sum(t["changed"] * t["rounds"] for t in section["table"])
    assert section["rounds"] == 12 and 0 < changed < 12  # the echo engine rewrites every other answer
    assert all(ex["rounds"][0]["critique"].startswith("Critique <script>") for ex in section["examples"])


def test_empty_sections_say_so(tmp_path):
    write_jsonl(tmp_path / "dpo" / "metrics.jsonl", metrics_rows("dpo"))
    html, shown = build_report([tmp_path / "dpo"])
    assert shown["training"] == ["dpo"] and not shown["sl-cai"]
    for kind in ("SL-CAI", "labeling", "eval-winrate"):
        assert f"No {kind} run found." in html


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["judges"]["labeler"].pop("win"), "judges.labeler.win: expected a rate"),
    (lambda s: s["judges"]["pm"].update(win_ci95=[0.1]), "judges.pm.win_ci95: expected [low, high]"),
    (lambda s: s["judges"]["labeler"]["per_principle"]["harmless-a"].pop("n"), "judges.labeler.per_principle.harmless-a.n"),
    (lambda s: s.update(judges={}), "judges: expected an object"),
])
def test_bad_eval_summary_names_file_and_key(tmp_path, edit, message):
    summary = json.loads(json.dumps(EVAL_SUMMARY))
    edit(summary)
    write_json(tmp_path / "eval" / "summary.json", summary)
    with pytest.raises(ReportError, match=re.escape(message)) as e:
        build_report([tmp_path])
    assert str(tmp_path / "eval" / "summary.json") in str(e.value)


def test_bad_lines_name_file_and_line(tmp_path):
    write_jsonl(tmp_path / "pm" / "metrics.jsonl", metrics_rows("pm"))
    with open(tmp_path / "pm" / "metrics.jsonl", "a") as f:
        f.write('{"step": "x", "loss": 1}\n')
    with pytest.raises(ReportError, match=r"metrics.jsonl:9: key 'step'"):
        build_report([tmp_path])
    sl = sl_cai_run(tmp_path / "sl", n=2)
    (sl / "records.jsonl").write_text((sl / "records.jsonl").read_text() + '{"id": "x", "rounds": 3}\n')
    with pytest.raises(ReportError, match=r"records.jsonl:3: prompt: Field required"):
        build_report([sl])


def test_cli(root, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(root / "sft"), str(root / "eval"), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert "training      sft" in result.output and "sl-cai        (no run of this kind found)" in result.output
    assert (tmp_path / "r.html").exists()
    result = runner.invoke(app, ["report", str(root / "sl-cai"), "--constitution", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "--constitution:" in result.output and "missing.yaml" in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "nothing-here")])
    assert result.exit_code == 2 and "not a folder" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no runs found" in result.output


def test_renders_in_headless_chromium(rendered, tmp_path):
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium installed (apt-get install -y chromium, or `make setup-browser`); the report was not opened in a browser")
    path = rendered[0]
    with Browser(browser) as b:
        tab = b.open(path.as_uri())
        assert tab.console_errors() == []
        assert tab.evaluate("window.__pwned === undefined")  # hostile <script> in records did not run
        for sid in SECTION_IDS:
            assert tab.evaluate(f"!!document.querySelector('section#{sid} h2')"), sid
        assert tab.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        assert tab.evaluate("document.querySelectorAll('section#training img').length") == 5
        # the example browser's principle filter
        total = tab.evaluate("document.querySelectorAll('#ex-1 .ex').length")
        pick = tab.evaluate("document.querySelector('select.pfilter').options[1].value")
        tab.evaluate(f"var s = document.querySelector('select.pfilter'); s.value = {json.dumps(pick)}; s.dispatchEvent(new Event('change'))")
        shown = tab.evaluate("[...document.querySelectorAll('#ex-1 .ex')].filter(e => !e.hidden).length")
        assert 0 < shown < total and tab.evaluate("document.getElementById('ex-1-count').textContent") == str(shown)
        shot = tmp_path / "report.png"
        tab.screenshot(str(shot))
        assert tab.console_errors() == []
    assert shot.stat().st_size > 10_000
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "report.png")
    print(f"screenshot: {ARTIFACTS / 'report.png'}")


def test_reads_a_summary_built_by_the_winrate_code(tmp_path):
    """The judges' blocks as `cai eval winrate` builds them (pipeline.stats), not only the hand-written one."""
    from pipeline.stats import agreement, judge_summary

    p_b, groups = [0.9, 0.8, 0.5, 0.2, 0.7, 0.52], [["less-harmful"], ["respectful"], ["less-harmful"], ["respectful"], ["less-harmful"], ["x"]]
    summary = {"kind": "eval-winrate", "n": 6, "model_a": "runs/sft", "model_b": "runs/dpo", "constitution": "harmless@1.0",
               "judges": {"labeler": {**judge_summary(p_b, groups), "judge": "smollm2-135m", "position_flip_rate": 0.25},
                          "pm": {**judge_summary(p_b[::-1], groups), "judge": "runs/pm"}},
               "judge_agreement": agreement(p_b, p_b[::-1]), "prompts_skipped": 1,
               "length": {"a": 20.5, "b": 31.0, "unit": "tokens", "a_chars": 90.0, "b_chars": 140.0}}
    write_json(tmp_path / "eval" / "summary.json", summary)
    html, shown = build_report([tmp_path / "eval"])
    assert shown["evaluation"] == ["eval"]
    assert "B wins" in html and "66.7 %" in html and "1 prompt(s) skipped" in html and "(90 and 140 characters)" in html
    assert "give the same verdict on" in html and "25.0 %" in html


def test_binary_and_score_label_runs(tmp_path):
    prompt = [{"role": "user", "content": "q"}]
    write_json(tmp_path / "kto-labels" / "run.json", {"kind": "label-binary", "identity": {}})
    write_jsonl(tmp_path / "kto-labels" / "records.jsonl", [
        {"id": f"b{i}", "prompt": prompt, "response": "r", "p_desirable": i / 10, "label": i >= 5, "confidence": abs(i / 10 - 0.5) * 2,
         "principle_ids": ["less-harmful"]} for i in range(10)])
    write_json(tmp_path / "scores" / "run.json", {"kind": "label-score", "identity": {}})
    write_jsonl(tmp_path / "scores" / "records.jsonl", [
        {"id": f"s{i}", "prompt": prompt, "response": "r", "expected_rating": 1 + i, "score": -1 + i / 4.5} for i in range(10)])
    html, shown = build_report([tmp_path])
    assert shown["labels"] == [f"{tmp_path.name}/kto-labels", f"{tmp_path.name}/scores"]
    assert "50.0 % labelled desirable" in html and "label-score" in html and "mean score" in html
