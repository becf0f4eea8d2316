"""Small run directories for the report tests: hand-written records / metrics / summaries of every kind,
a real SL-CAI run written by ``run_sl_cai`` (with an engine that answers from a table, no model), and
hostile HTML in the user text."""

from __future__ import annotations

import json
import math
from pathlib import Path

from constitution.loader import resolve_constitution
from engines.base import Completion, GenerationParams
from generators.critique_revision import run_sl_cai
from generators.inputs import PromptItem

HOSTILE = '<script>window.__pwned = 1; console.error("pwned")</script><img src=x onerror="console.error(1)">'


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")


class EchoEngine:
    """Initial answers echo the prompt ("Answer: …"); the turn after an answer or a revision is a critique, the
    turn after a critique a revision ("Revised: …"), which keeps the answer when the prompt's last character has
    an odd code and rewrites it otherwise — so some revisions differ materially and some do not."""

    name, model_id, can_score = "fake", "echo-model", False

    def generate(self, requests, params):
        out = []
        for r in requests:
            before = r[-2]["content"] if len(r) >= 2 and r[-2]["role"] == "assistant" else ""
            if before.startswith(("Answer:", "Revised:")):
                text = f"Critique {HOSTILE}: the answer could be more careful."
            elif before.startswith("Critique"):
                answer = next(m["content"] for m in reversed(r) if m["role"] == "assistant" and m["content"].startswith("Answer:"))
                keep = ord(answer.split("|")[1][-1:] or "a") % 2
                text = "Revised: " + (answer if keep else "A completely different, careful and harmless reply.")
            else:
                text = f"Answer: |{r[-1]['content']}| with some more words to make it long enough"
            out.append(Completion(text=text, prompt_tokens=5, completion_tokens=5, finish_reason="stop"))
        return out


def sl_cai_run(out: Path, n: int = 6) -> Path:
    const = resolve_constitution("harmless")
    prompts = [PromptItem(id=f"q{i}", messages=[{"role": "user", "content": f"{HOSTILE} question {i}"}]) for i in range(n)]
    run_sl_cai(const, prompts, EchoEngine(), out, rounds=2, params=GenerationParams(max_new_tokens=8), progress=False,
               few_shot=0, config={"constitution": "harmless", "rounds": 2})
    return out


def preference_records(n: int = 12) -> list[dict]:
    rows = []
    for i in range(n):
        p_ab, p_ba = 0.2 + 0.6 * ((i * 7) % n) / n, 0.3 + 0.4 * (i % 3) / 2
        p_a = (p_ab + 1 - p_ba) / 2
        rows.append({"id": f"l{i}", "prompt": [{"role": "user", "content": f"{HOSTILE} q{i}"}], "response_a": "a", "response_b": "b",
                     "p_a": p_a, "p_a_order_ab": p_ab, "p_a_order_ba": 1 - p_ba, "position_flip": (p_ab >= .5) != (1 - p_ba >= .5),
                     "principle_ids": ["less-harmful" if i % 2 else "respectful"], "labeler_model": "fake-labeler",
                     **resolve_constitution("harmless").stamp()})
    return rows


def metrics_rows(kind: str, steps: int = 8) -> list[dict]:
    rows = []
    for s in range(1, steps + 1):
        decay = math.exp(-s / 4)
        if kind == "ppo":
            rows.append({"step": s, "reward": 1 - decay, "kl": 0.1 * s, "entropy": 2 - 0.1 * s, "response_length": 30 + s, "kl_coef": 0.05})
        elif kind == "pm":
            rows.append({"step": s, "loss": decay, "accuracy": 0.5 + 0.05 * s, "margin": 0.1 * s})
        elif kind == "dpo":
            rows.append({"step": s, "loss": decay, "rewards/chosen": 0.1 * s, "rewards/rejected": -0.1 * s,
                         "rewards/margins": 0.2 * s, "rewards/accuracy": min(1.0, 0.5 + 0.1 * s)})
        elif kind == "kto":
            rows.append({"step": s, "loss": decay, "kl": 0.01, "rewards/desirable": 0.1 * s, "rewards/undesirable": -0.1 * s,
                         "rewards/margins": 0.2 * s})
        else:
            rows.append({"step": s, "loss": 2 * decay, "lr": 1e-5, "tokens": 100})
    if kind == "sft":
        rows += [{"step": 0, "eval_loss": 2.1}, {"step": steps, "eval_loss": 1.1}]
    return rows


EVAL_SUMMARY = {
    "kind": "eval-winrate", "n": 40, "model_a": "runs/sft", "model_b": f"runs/ppo {HOSTILE}",
    "judges": {
        "labeler": {"win": 0.55, "tie": 0.1, "loss": 0.35, "win_ci95": [0.4, 0.69],
                    "per_principle": {"harmless-a": {"win": 0.6, "tie": 0.1, "loss": 0.3, "n": 20, "win_ci95": [0.39, 0.78]},
                                      HOSTILE: {"win": 0.5, "tie": 0.1, "loss": 0.4, "n": 20}}},
        "pm": {"win": 0.6, "tie": 0.0, "loss": 0.4, "win_ci95": [0.45, 0.74], "per_principle": {}},
    },
    "length": {"a": 41.5, "b": 57.25, "unit": "tokens"},
}


def label_eval_rows(n: int = 20) -> list[dict]:
    return [{"index": i, "id": f"g{i}", "format": "pair", "gold_first": i % 2 == 0, "p_first_raw": 0.3 + 0.4 * (i % 2),
             "p_first_swapped": 0.35 + 0.3 * (i % 3 == 0), "p_first_avg": 0.3 + 0.02 * i, "principle_id": "harmless-a" if i % 2 else "harmless-b"}
            for i in range(n)]


def pipeline_root(root: Path) -> Path:
    """A `cai run`-like root: ROOT/<stage>/ for every kind the report draws."""
    sl_cai_run(root / "sl-cai")
    write_json(root / "labels" / "run.json", {"kind": "label-preference", "identity": {}})
    write_jsonl(root / "labels" / "records.jsonl", preference_records())
    write_json(root / "label-eval" / "summary.json", {"kind": "label-eval", "comparisons": 20, "agreement_avg": 0.6,
                                                      "agreement_raw": 0.55, "position_consistency": 0.7, "ece_avg": 0.12,
                                                      "per_principle": {"harmless-a": {"n": 10, "agreement_avg": 0.5},
                                                                        "harmless-b": {"n": 10, "agreement_avg": 0.7}}})
    write_jsonl(root / "label-eval" / "rows.jsonl", label_eval_rows())
    for kind in ("sft", "pm", "dpo", "kto", "ppo"):
        write_jsonl(root / kind / "metrics.jsonl", metrics_rows(kind))
    write_json(root / "sft" / "summary.json", {"trainer": "sft", "steps": 8})
    write_jsonl(root / "ppo" / "samples.jsonl", [{"step": s, "prompt": [{"role": "user", "content": f"{HOSTILE} p{k}"}],
                                                  "response": f"response {k} at step {s}", "score": 0.1 * s}
                                                 for s in range(1, 9) for k in range(2)])
    write_json(root / "eval" / "summary.json", EVAL_SUMMARY)
    write_json(root / "pipeline.json", {"stages": {name: {"command": name, "done": name != "eval", "started": "2026-11-27T10:00:00",
                                                          "finished": None if name == "eval" else "2026-11-27T10:01:00"}
                                                   for name in ("sl-cai", "sft", "eval")}})
    return root
