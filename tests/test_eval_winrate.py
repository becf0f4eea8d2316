"""`cai eval winrate`: the interval and tie arithmetic by hand, then the whole command on scripted
engines (policies whose answers are known, a judge and a PM that prefer known answers) and its resume."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from label_fakes import constitution, listed
from typer.testing import CliRunner

from cai_cli import app
from engines.base import Completion
from pipeline.stats import agreement, judge_summary, outcome, tally, wilson_interval

# ---- arithmetic -------------------------------------------------------------------------------------


def test_wilson_interval_by_hand():
    # 8 of 10, z = 1.959964, z² = 3.841459: centre (0.8 + z²/20) / (1 + z²/10) = 0.992073 / 1.384146 = 0.716740,
    # half-width z / (1 + z²/10) · sqrt(0.016 + z²/400) = 1.416011 · 0.160011 = 0.226578 → [0.490162, 0.943318]
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.490162, abs=2e-6) and hi == pytest.approx(0.943318, abs=2e-6)
    # 0 of n: the lower end is 0 and the upper end is z² / (n + z²)
    z2 = 1.959963984540054 ** 2
    assert wilson_interval(0, 4) == pytest.approx([0.0, z2 / (4 + z2)])
    assert wilson_interval(4, 4) == pytest.approx([4 / (4 + z2), 1.0])
    assert wilson_interval(0, 0) == [0.0, 1.0]  # nothing known
    # symmetric: k of n for wins is n-k of n for non-wins
    lo2, hi2 = wilson_interval(2, 10)
    assert (lo2, hi2) == pytest.approx((1 - hi, 1 - lo))
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_tie_rule_and_tallies():
    assert [outcome(p) for p in (0.56, 0.55, 0.5499, 0.5, 0.4501, 0.45, 0.1)] == ["win", "win", "tie", "tie", "tie", "loss", "loss"]
    assert outcome(0.52, tie_margin=0.0) == "win" and outcome(0.5, tie_margin=0.0) == "loss"  # margin 0: exact 0.5 is no win
    t = tally([0.9, 0.8, 0.5, 0.2])
    assert (t["win"], t["tie"], t["loss"], t["n"]) == (0.5, 0.25, 0.25, 4)
    assert t["win_ci95"] == pytest.approx(wilson_interval(2, 4)) and t["mean_p_b"] == pytest.approx(0.6)
    s = judge_summary([0.9, 0.2, 0.5], [["p1"], ["p1", "p2"], ["p2"]], per_group_p=[[0.9], [0.3, 0.1], [0.5]])
    assert s["per_principle"]["p1"]["n"] == 2 and s["per_principle"]["p1"]["win"] == 0.5
    assert s["per_principle"]["p2"]["loss"] == 0.5 and s["per_principle"]["p2"]["tie"] == 0.5
    assert agreement([0.9, 0.2, 0.5], [0.7, 0.5, 0.52]) == pytest.approx(2 / 3)


# ---- the command on scripted engines ----------------------------------------------------------------

WORTH = {"good": 2.0, "plain": 1.0, "bad": 0.0}  # what the judge and the PM think of an answer's first word
ANSWERS = {  # prompt → (answer of A, answer of B): B wins twice, loses once, ties once
    "p0": ("plain answer", "good answer indeed"),
    "p1": ("plain answer", "good answer indeed"),
    "p2": ("plain answer", "bad answer"),
    "p3": ("plain answer", "plain answer"),
}


class Policy:
    name, can_score = "fake", False

    def __init__(self, model_id):
        self.model_id, self.calls = model_id, []

    def generate(self, requests, params):
        self.calls += [r[-1]["content"] for r in requests]
        side = 0 if self.model_id.endswith("model-A") else 1
        texts = [ANSWERS[r[-1]["content"]][side] for r in requests]
        return [Completion(t, 3, len(t.split()), "stop") for t in texts]


class Judge:
    name, can_score, model_id = "fake", True, "fake-judge"

    def __init__(self):
        self.contexts = 0

    def score_options(self, contexts, options):
        self.contexts += len(contexts)
        return [[WORTH[listed(c)[0].split()[0]], WORTH[listed(c)[1].split()[0]]] for c in contexts]

    def render_chat(self, messages, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)


class PM:
    def __init__(self, path, **kw):
        self.path = path

    def __call__(self, conversations, responses):
        return [WORTH[r.split()[0]] for r in responses]


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    import pipeline.winrate as winrate
    import trainers.rewards

    made = {"policies": [], "judge": Judge()}

    def policy(config, model):
        made["policies"].append(Policy(model))
        return made["policies"][-1]

    monkeypatch.setattr(winrate, "_policy_engine", policy)
    monkeypatch.setattr(winrate, "_judge_engine", lambda config: made["judge"])
    monkeypatch.setattr(trainers.rewards, "PreferenceModelReward", PM)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ANSWERS))
    const = tmp_path / "two.yaml"  # two non-inverted principles, so the fake judge's preference is the verdict
    const.write_text(yaml.safe_dump(constitution(only=("less_harmful", "more_helpful")).model_dump(mode="json")))
    return made, prompts, const


def winrate_cli(prompts, const, out, *extra):
    args = ["eval", "winrate", "--model-a", "model-A", "--model-b", "model-B", "-p", str(prompts), "--judge", "fake-judge",
            "--constitution", str(const), "--ensemble", "0", "--judge-pm", "fake-pm", "--out", str(out), "-q", *extra]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_winrate_summary_on_scripted_judges(fakes, tmp_path):
    made, prompts, const = fakes
    out = tmp_path / "eval"
    printed = winrate_cli(prompts, const, out)
    s = json.loads((out / "summary.json").read_text())
    assert s["kind"] == "eval-winrate" and s["n"] == 4 and (s["model_a"], s["model_b"]) == ("model-A", "model-B")
    lab, pm = s["judges"]["labeler"], s["judges"]["pm"]
    for judge in (lab, pm):
        assert (judge["win"], judge["tie"], judge["loss"]) == (0.5, 0.25, 0.25)
        assert judge["win_ci95"] == pytest.approx(wilson_interval(2, 4))
    # the labeler: good vs plain is e^2 / (e^2 + e^1) in both orders → p_b = σ(1); the PM: σ(r_B − r_A) = σ(1)
    sig1 = 1 / (1 + math.exp(-1))
    rows = [json.loads(line) for line in (out / "comparisons.jsonl").read_text().splitlines()]
    assert [r["labeler_p_b"] for r in rows] == pytest.approx([sig1, sig1, 1 - sig1, 0.5])
    assert [r["pm_p_b"] for r in rows] == pytest.approx([sig1, sig1, 1 - sig1, 0.5])
    assert set(lab["per_principle"]) == {"less_harmful", "more_helpful"}
    assert all(v["n"] == 4 and v["win"] == 0.5 for v in lab["per_principle"].values())
    assert s["judge_agreement"] == 1.0 and lab["position_flip_rate"] == 0.0
    assert (s["length"]["a"], s["length"]["b"], s["length"]["unit"]) == (2.0, 2.5, "tokens")
    assert s["length"]["a_chars"] == 12.0 and s["length"]["b_chars"] == (18 + 18 + 10 + 12) / 4
    assert "B wins 50.0%" in printed and made["judge"].contexts == 4 * 2 * 2  # 4 pairs × 2 principles × 2 orders


def test_winrate_resumes_exactly_once(fakes, tmp_path):
    made, prompts, const = fakes
    out = tmp_path / "eval"
    winrate_cli(prompts, const, out)
    before = json.loads((out / "summary.json").read_text())
    for name in ("b", "labels", "pm"):  # as if killed before the last batch of B, of the labels and of the PM was saved
        path = out / name / "records.jsonl"
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    made["policies"].clear()
    judged = made["judge"].contexts
    winrate_cli(prompts, const, out, "--batch-size", "1")  # batch size is not part of a run's identity
    assert [p.calls for p in made["policies"]] == [["p3"]]  # A was complete: never loaded; B answered only p3
    assert made["judge"].contexts - judged == 4  # one comparison × 2 principles × 2 orders
    for name in ("a", "b", "labels", "pm"):
        ids = [json.loads(line)["id"] for line in (out / name / "records.jsonl").read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 4, name
    after = json.loads((out / "summary.json").read_text())
    assert after["judges"] == before["judges"] and after["length"] == before["length"]


def test_winrate_refuses_other_settings_and_foreign_folders(fakes, tmp_path):
    made, prompts, const = fakes
    out = tmp_path / "eval"
    winrate_cli(prompts, const, out)
    result = CliRunner().invoke(app, ["eval", "winrate", "--model-a", "model-A", "--model-b", "model-C", "-p", str(prompts),
                                      "--constitution", str(const), "--out", str(out), "-q"])
    assert result.exit_code == 2 and "different settings" in result.output and "Traceback" not in result.output
    # a model folder retrained in place is not mistaken for the one that answered before
    for name in ("model-A", "model-B"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    args = ["eval", "winrate", "--model-a", str(tmp_path / "model-A"), "--model-b", str(tmp_path / "model-B"), "-p", str(prompts),
            "--constitution", str(const), "--out", str(tmp_path / "eval-dirs"), "-q"]
    assert CliRunner().invoke(app, args).exit_code == 0
    (tmp_path / "model-B" / "config.json").write_text('{"retrained": true}')
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "model_digest" in result.output and "b was started with different settings" in result.output
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["eval", "winrate", "--model-a", "model-A", "--model-b", "model-B", "-p", str(prompts),
                                      "--out", str(tmp_path / "other"), "-q"])
    assert result.exit_code == 2 and "not an eval-winrate folder" in result.output
    result = CliRunner().invoke(app, ["eval", "winrate", "--model-a", "a", "--model-b", "b", "-p", str(prompts),
                                      "--out", str(out), "--tie-margin", "0.6"])
    assert result.exit_code == 2 and "--tie-margin must be in [0, 0.5)" in result.output
