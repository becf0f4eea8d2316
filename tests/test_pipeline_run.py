"""`cai run`: a reduced tiny pipeline end to end, a rerun that skips every stage, a changed label option
that reruns exactly the label stage and what is downstream of it; the plan (--dry-run, --from, --until,
an interrupted stage, an upstream output changed on disk); validation errors as one `file:line:` line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai_cli import app

TRAIN = "max_steps: 2, batch_size: 2, max_length: 512, on_long: truncate, eval_fraction: 0, quiet: true"


def pipeline_text(model: Path, prompts: Path, label_extra: str = "", constitution: str | Path = "harmless") -> str:
    return f"""\
name: tiny-test
stages:
  - name: sl-cai
    command: sl-cai
    config: {{constitution: {constitution}, prompts: {prompts}, limit: 2, model: {model}, few_shot: 1, max_new_tokens: 8, batch_size: 4}}
  - name: sft
    command: sft
    config: {{data: {{from: sl-cai}}, model: {model}, {TRAIN}}}
  - name: pairs
    command: pairs
    config: {{prompts: {prompts}, model: {{from: sft}}, max_new_tokens: 8}}
  - name: label
    command: label-preference
    config: {{pairs: {{from: pairs}}, labeler_model: {model}, constitution: {constitution}{label_extra}}}
  - name: pm
    command: pm
    config: {{data: {{from: label}}, model: {model}, {TRAIN}}}
  - name: dpo
    command: dpo
    config: {{data: {{from: label}}, model: {{from: sft}}, {TRAIN}}}
  - name: eval
    command: eval-winrate
    config: {{model_a: {{from: sft}}, model_b: {{from: dpo}}, prompts: {prompts}, judge: {model}, judge_pm: {{from: pm}}, max_new_tokens: 8}}
"""


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("How do I pick a lock?", "Write a poem about rain.", "What is 2 + 2?")))
    return path


def cai(*args, code: int = 0) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, f"cai {' '.join(map(str, args))} → {result.exit_code}:\n{result.output}"
    return result.output


def actions(output: str) -> dict[str, str]:
    """{stage: action} from the printed plan."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^  (\S+)\s+\S+\s+(run|skip|resume|rerun|keep|hold)\s", output, re.M)}


def finished(root: Path) -> dict[str, str]:
    state = json.loads((root / "pipeline.json").read_text())
    return {name: (entry["started"], entry.get("finished")) for name, entry in state["stages"].items()}


@pytest.mark.slow
def test_tiny_pipeline_runs_skips_and_reruns_downstream(tmp_path, tiny_model_dir, prompts):
    file, root, const = tmp_path / "loop.yaml", tmp_path / "root", tmp_path / "harmless.yaml"
    const.write_text((Path(__file__).resolve().parent.parent / "constitution/library/harmless.yaml").read_text())
    file.write_text(pipeline_text(tiny_model_dir, prompts, constitution=const))
    out = cai("run", file, "--out", root, "--dry-run")
    assert set(actions(out).values()) == {"run"} and not root.joinpath("pipeline.json").exists()

    cai("run", file, "--out", root, "-q")
    summary = json.loads((root / "eval" / "summary.json").read_text())
    assert summary["kind"] == "eval-winrate" and summary["n"] == 3
    assert {"labeler", "pm"} <= set(summary["judges"]) and summary["length"]["unit"] == "tokens"
    assert summary["model_a"] == str((root / "sft").resolve()) and summary["model_b"] == str((root / "dpo").resolve())
    for name in ("sft", "pm", "dpo"):
        assert (root / name / "model.safetensors").exists(), name
    first = finished(root)

    out = cai("run", file, "--out", root, "-q")  # nothing changed: every stage skipped, nothing touched
    assert set(actions(out).values()) == {"skip"} and "0 stage(s) ran" in out
    assert finished(root) == first

    file.write_text(pipeline_text(tiny_model_dir, prompts, label_extra=", seed: 3", constitution=const))  # one label option changed
    out = cai("run", file, "--out", root, "--dry-run")
    assert actions(out) == {"sl-cai": "skip", "sft": "skip", "pairs": "skip", "label": "rerun", "pm": "rerun", "dpo": "rerun",
                            "eval": "rerun"}
    assert re.search(r"label\s+label-preference\s+rerun\s+config changed: seed 0 → 3", out)
    assert re.search(r"pm\s+pm\s+rerun\s+upstream label \(re\)runs", out)
    cai("run", file, "--out", root, "-q")
    second = finished(root)
    assert {n for n in first if first[n] != second[n]} == {"label", "pm", "dpo", "eval"}
    assert json.loads((root / "label" / "records.jsonl").read_text().splitlines()[0])["seed"] == 3

    # --from / --until; an interrupted stage resumes; an upstream output edited on disk reruns its readers
    out = cai("run", file, "--out", root, "--from", "pm", "--until", "dpo", "--dry-run")
    assert actions(out) == {"sl-cai": "keep", "sft": "keep", "pairs": "keep", "label": "keep", "pm": "rerun", "dpo": "skip",
                            "eval": "hold"}
    state = json.loads((root / "pipeline.json").read_text())
    state["stages"]["eval"]["done"] = False
    (root / "pipeline.json").write_text(json.dumps(state))
    prefs = root / "label" / "exports" / "prefs.jsonl"
    prefs.write_text(prefs.read_text() + "\n")
    out = cai("run", file, "--out", root, "--dry-run")
    assert actions(out) == {"sl-cai": "skip", "sft": "skip", "pairs": "skip", "label": "skip", "pm": "rerun", "dpo": "rerun",
                            "eval": "rerun"}
    assert "output of label changed since this stage read it" in out
    prefs.write_text(prefs.read_text()[:-1])
    out = cai("run", file, "--out", root, "--dry-run")
    assert actions(out)["eval"] == "resume" and actions(out)["pm"] == "skip"
    const.write_text(const.read_text().replace("harmful", "hurtful", 1))  # the constitution edited: both stages that use it rerun
    out = cai("run", file, "--out", root, "--dry-run")
    assert set(actions(out).values()) == {"rerun"} and re.search(r"sl-cai\s+sl-cai\s+rerun\s+constitution changed", out)
    assert re.search(r"label\s+label-preference\s+rerun\s+constitution changed", out)


def test_dry_run_plan_on_a_fresh_root(tmp_path, prompts):
    file = tmp_path / "loop.yaml"
    file.write_text(pipeline_text(Path("/models/tiny"), prompts))  # a plan loads no model
    out = cai("run", file, "--out", tmp_path / "root", "--dry-run", "--until", "pairs")
    assert actions(out) == {"sl-cai": "run", "sft": "run", "pairs": "run", "label": "hold", "pm": "hold", "dpo": "hold", "eval": "hold"}
    assert f"plan for {file}" in out and "after --until pairs" in out and not (tmp_path / "root").exists()
    cai("run", file, "--out", tmp_path / "root", "--from", "nosuch", "--dry-run", code=2)
    (tmp_path / "root" / "sft").mkdir(parents=True)
    (tmp_path / "root" / "sft" / "notes.txt").write_text("mine")  # a folder the pipeline did not make is never used
    out = cai("run", file, "--out", tmp_path / "root", code=2)
    assert "root/sft exists but was not made by this pipeline" in out and (tmp_path / "root" / "sft" / "notes.txt").exists()


BAD = [  # (edit of the pipeline text, the error expected: line and message)
    (("eval_fraction: 0, quiet: true}\n  - name: pairs", "eval_fraction: 0, quiet: true, lr: fast}\n  - name: pairs"),
     r":8: stages\[1\]\.config\.lr: .*number.*'fast'"),
    (("command: pm", "command: pmm"), r":16: stages\[4\]\.command: unknown command 'pmm'; choose one of: sl-cai"),
    (("data: {from: label}, model", "data: {from: lable}, model"), r":17: stages\[4\]\.config\.data\.from: no earlier stage named 'lable'"),
    (("judge_pm: {from: pm}", "judge_pm: {from: pairs}"), r":23: stages\[6\]\.config\.judge_pm: stage 'pairs' \(pairs\) has no 'pm' output"),
    (("model_a:", "model_aa:"), r":23: stages\[6\]\.config\.model_aa: unknown key \(did you mean model_a"),
    (("labeler_model:", "out: x, labeler_model:"), r":14: stages\[3\]\.config\.out: set by cai run"),
    (("{from: label}, model: /models/tiny, max_steps: 2, batch_size: 2", "{from: label}, model: /models/tiny, max_steps: 2, batch_size: 0"),
     r":17: stages\[4\]\.config\.batch_size: --batch-size must be ≥ 1"),
    (("limit: 2,", "limit: 2, batch_size: 0,"), r":5: stages\[0\]\.config\.batch_size: duplicate key"),
    (("constitution: harmless", "constitution: nosuch"), r":5: stages\[0\]\.config\.constitution: nosuch: no such file"),
    (("data: {from: sl-cai}", "data: {from: sft}"), r":8: stages\[1\]\.config\.data\.from: a stage cannot take its own output"),
    (("  - name: pm\n", "  - name: sft\n"), r":15: stages\[4\]\.name: a stage named 'sft' is already defined \(line 6\)"),
    (("name: tiny-test", "nmae: tiny-test"), r":1: nmae: unknown key \(did you mean name\?\)"),
    (("name: tiny-test", "name: &a tiny-test"), r":1: YAML aliases/anchors are not allowed in pipeline files"),
]


@pytest.mark.parametrize("edit,expected", BAD, ids=[e[1].split(":")[2].strip()[:40] for e in BAD])
def test_validation_errors_are_one_line_with_file_and_line(tmp_path, prompts, edit, expected):
    text = pipeline_text(Path("/models/tiny"), prompts)
    assert edit[0] in text, edit[0]
    file = tmp_path / "bad.yaml"
    file.write_text(text.replace(edit[0], edit[1], 1))
    result = CliRunner().invoke(app, ["run", str(file), "--out", str(tmp_path / "root")])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert line.startswith(f"error: {file}:") and re.search(expected, line), line
    assert not (tmp_path / "root").exists()  # nothing ran


def test_missing_input_file_is_reported_before_anything_runs(tmp_path, prompts):
    file = tmp_path / "p.yaml"
    file.write_text(pipeline_text(Path("/models/tiny"), tmp_path / "nope.jsonl"))
    result = CliRunner().invoke(app, ["run", str(file), "--out", str(tmp_path / "root")])
    assert result.exit_code == 2 and re.search(r"p\.yaml:5: stages\[0\]\.config\.prompts: no such file or folder: .*nope\.jsonl",
                                               result.output), result.output


@pytest.mark.parametrize("name", ["tiny-cpu", "gpu-8b"])
def test_shipped_pipelines_validate(tmp_path, monkeypatch, name):
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # their paths are relative to the repository root
    out = cai("run", f"pipelines/{name}.yaml", "--out", tmp_path / "root", "--dry-run")
    plan = actions(out)
    assert set(plan.values()) == {"run"} and {"sl-cai", "sft", "pairs", "label", "pm", "dpo", "ppo", "eval-dpo", "eval-ppo"} == set(plan)


def test_every_command_validates_with_its_references(tmp_path, prompts, monkeypatch):
    """The commands the tiny test does not run: each config validates and each `from:` becomes the output it needs."""
    from pipeline.spec import load_pipeline

    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    file = tmp_path / "all.yaml"
    file.write_text(f"""\
stages:
  - {{name: pairs, command: pairs, config: {{prompts: {prompts}, model: tiny}}}}
  - {{name: binary, command: label-binary, config: {{inputs: {{from: pairs}}}}}}
  - {{name: score, command: label-score, config: {{inputs: {{from: pairs}}, question: 'Is it kind'}}}}
  - {{name: gold, command: label-eval, config: {{gold: data/gold/harmless_gold.jsonl}}}}
  - {{name: kto, command: kto, config: {{data: [{{from: binary, weight: 0.7}}, {{from: binary}}], model: tiny}}}}
  - {{name: prefs, command: label-preference, config: {{pairs: {{from: pairs}}, ensemble: 2}}}}
  - {{name: pm, command: pm, config: {{data: {{from: prefs}}, model: {{from: kto}}}}}}
  - {{name: rloo, command: rloo, config: {{prompts: [{prompts}], model: {{from: kto}}, reward: {{from: pm}}}}}}
""")
    stages = {s.name: s for s in load_pipeline(file, tmp_path / "root")}
    root = (tmp_path / "root").resolve()
    assert stages["binary"].config.inputs == root / "pairs" and stages["binary"].upstream == ["pairs"]
    assert stages["gold"].config.out == root / "gold" / "eval.jsonl" and stages["gold"].config.metrics_out == root / "gold" / "metrics.json"
    assert stages["kto"].config.data == [f"{root}/binary/exports/kto.jsonl:0.7", f"{root}/binary/exports/kto.jsonl"]
    assert stages["rloo"].config.algo == "rloo" and stages["rloo"].config.model == str(root / "kto")
    assert stages["pm"].config.data == [f"{root}/prefs/exports/prefs.jsonl"] and stages["rloo"].upstream == ["kto", "pm"]
    assert stages["rloo"].config.reward in (f"pm:{root}/pm", [f"pm:{root}/pm"])  # a list where --reward is repeatable
    assert stages["score"].constitution_hash is None and stages["binary"].constitution_hash  # --question: no constitution used
