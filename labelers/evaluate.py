"""Measure a labeler against gold comparisons: agreement, position bias and calibration.

Gold lines come in two formats (mixing them in one file is fine):
- ours: ``{"prompt", "chosen", "rejected"}`` — chosen is the gold-better response. The comparison
  is rendered with the labeling template and one feedback principle drawn per item (seeded). So that
  "raw order" is not simply "gold first", the raw order lists the gold-better response first for
  about half the items (decided by a hash of the item) — ``gold_first`` in the output says which.
- Anthropic's multiple choice: ``{"prompt": "...(A) [[[x]]]\n (B) [[[y]]]\n\nThe answer is:",
  "corrects": [" (B)"], "incorrects": [" (A)"]}`` — scored as given and with the [[[…]]] contents
  swapped; the option strings are the file's own.

For each item: p_first_raw = P(first-listed response is better) in the raw order; p_first_swapped =
the same response's probability from the swapped order (1 − the labeler's first-option probability
there); p_first_avg = their mean. Agreement compares each with ``gold_first`` (p ≥ 0.5 ⇒ first);
position consistency is the share of items whose raw and swapped verdicts pick the same response;
ECE (10 equal-width bins over p_first_avg, observed frequency of gold_first) measures calibration.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from constitution.schema import Constitution
from engines.base import normalize_logprobs
from jobs.rundir import stable_id

from .calibration import calibration_table, expected_calibration_error, reliability_bins  # noqa: F401  (re-exported)
from .calibration import plot_reliability as draw_reliability
from .inputs import InputError, as_messages, as_response, read_jsonl
from .preference import comparison_context, draw_principles, few_shot_examples, require_scoring
from .prompts import template_spec

_OPTION = {letter: re.compile(rf"\({letter}\) \[\[\[(.*?)\]\]\]", re.DOTALL) for letter in "AB"}


@dataclass(frozen=True)
class GoldItem:
    index: int
    id: str
    format: str  # "pair" or "anthropic_mc"
    gold_first: bool  # the first-listed response (raw order) is the gold-better one
    prompt: object = None  # messages (pair) or the MC prompt text as given
    first: str = ""
    second: str = ""
    options: tuple[str, str] = (" (A)", " (B)")  # MC: the file's option strings for A and B


def swap_mc_prompt(prompt: str) -> str:
    """The Anthropic MC prompt with the contents of the (A) and (B) [[[…]]] blocks exchanged."""
    a, b = (_OPTION[x].findall(prompt) for x in "AB")
    if len(a) != 1 or len(b) != 1:
        raise ValueError(f"expected exactly one '(A) [[[…]]]' and one '(B) [[[…]]]' block, found {len(a)} and {len(b)}")
    ma, mb = _OPTION["A"].search(prompt), _OPTION["B"].search(prompt)
    spans = sorted([(ma.span(1), mb.group(1)), (mb.span(1), ma.group(1))])
    out, last = [], 0
    for (start, end), text in spans:
        out += [prompt[last:start], text]
        last = end
    return "".join(out + [prompt[last:]])


def _parse_mc(obj: dict, where: str, index: int) -> GoldItem:
    corrects, incorrects = obj.get("corrects"), obj.get("incorrects")
    if not (isinstance(obj.get("prompt"), str) and isinstance(corrects, list) and isinstance(incorrects, list)
            and len(corrects) == 1 and len(incorrects) == 1):
        raise InputError(f"{where}: Anthropic MC lines need 'prompt' (str), 'corrects' and 'incorrects' (one option each)")
    letters = {s.strip(): s for s in corrects + incorrects}
    if set(letters) != {"(A)", "(B)"}:
        raise InputError(f"{where}: options must be (A) and (B), got {corrects + incorrects}")
    try:
        swap_mc_prompt(obj["prompt"])
        first, second = (_OPTION[x].search(obj["prompt"]).group(1) for x in "AB")
    except (ValueError, AttributeError) as e:
        raise InputError(f"{where}: key 'prompt': {e}") from None
    return GoldItem(index, str(obj.get("id") or stable_id("mc", obj["prompt"])), "anthropic_mc",
                    corrects[0].strip() == "(A)", obj["prompt"], first, second, (letters["(A)"], letters["(B)"]))


def load_gold(path: str | Path, seed: int = 0) -> list[GoldItem]:
    items = []
    for index, (number, obj) in enumerate(read_jsonl(path)):
        where = f"{path}:{number}"
        if "corrects" in obj:
            items.append(_parse_mc(obj, where, index))
        elif "chosen" in obj and "rejected" in obj and "prompt" in obj:
            prompt = as_messages(obj["prompt"], f"{where}: key 'prompt'")
            good = as_response(obj["chosen"], f"{where}: key 'chosen'")
            bad = as_response(obj["rejected"], f"{where}: key 'rejected'")
            item_id = str(obj.get("id") or stable_id("gold", prompt, good, bad))
            good_first = int(stable_id("gold-order", seed, item_id), 16) % 2 == 0
            first, second = (good, bad) if good_first else (bad, good)
            items.append(GoldItem(index, item_id, "pair", good_first, prompt, first, second))
        else:
            raise InputError(f"{where}: expected {{'prompt', 'chosen', 'rejected'}} or Anthropic's "
                             "{'prompt', 'corrects', 'incorrects'}")
    return items


# ---- metrics (pure) ----------------------------------------------------------------------------------


def agreement_metrics(rows: list[dict]) -> dict:
    n = len(rows)
    if not n:
        raise ValueError("no gold comparisons")

    def agree(key):
        return sum((r[key] >= 0.5) == r["gold_first"] for r in rows) / n

    metrics = {
        "comparisons": n,
        "agreement_raw": agree("p_first_raw"),
        "agreement_swapped": agree("p_first_swapped"),
        "agreement_avg": agree("p_first_avg"),
        "position_consistency": sum((r["p_first_raw"] >= 0.5) == (r["p_first_swapped"] >= 0.5) for r in rows) / n,
        "ece_avg": expected_calibration_error([r["p_first_avg"] for r in rows], [r["gold_first"] for r in rows]),
        "ece_raw": expected_calibration_error([r["p_first_raw"] for r in rows], [r["gold_first"] for r in rows]),
    }
    by_principle = defaultdict(list)
    for r in rows:
        by_principle[r["principle_id"]].append((r["p_first_avg"] >= 0.5) == r["gold_first"])
    if len(by_principle) > 1:
        metrics["per_principle"] = {k: {"n": len(v), "agreement_avg": sum(v) / len(v)} for k, v in sorted(by_principle.items())}
    return metrics


def format_summary(metrics: dict) -> str:
    lines = [f"gold comparisons          {metrics['comparisons']}"]
    for key, label in [("agreement_raw", "agreement, raw order"), ("agreement_swapped", "agreement, swapped order"),
                       ("agreement_avg", "agreement, both orders"), ("position_consistency", "position consistency")]:
        lines.append(f"{label:<26}{metrics[key]:6.1%}")
    lines.append(f"{'ECE (10 bins), both':<26}{metrics['ece_avg']:6.3f}")
    lines.append(f"{'ECE (10 bins), raw':<26}{metrics['ece_raw']:6.3f}")
    per = metrics.get("per_principle", {})
    if per:
        width = max(len(pid) for pid in per) + 2
        lines.append("agreement by principle, both orders:")
        for pid, m in per.items():
            lines.append(f"  {pid:<{width}}{m['agreement_avg']:6.1%}  (n={m['n']})")
    return "\n".join(lines)


def plot_reliability(rows: list[dict], path: str | Path) -> None:
    """The labeler's reliability diagram (both orders against gold) as a PNG."""
    ece, table = calibration_table([r["p_first_avg"] for r in rows], [r["gold_first"] for r in rows])
    draw_reliability({"labeler": table}, path, xlabel="predicted P(first response is better), both orders",
                     ylabel="observed frequency (gold)", title=f"Reliability diagram (ECE {ece:.3f})", counts=True)


# ---- running the labeler ---------------------------------------------------------------------------


def evaluate_labeler(engine, gold: str | Path | Sequence[GoldItem], *, constitution: Constitution | None = None,
                     template: str = "cai_mc", seed: int = 0, batch_size: int = 32, progress: bool = True) -> tuple[list[dict], dict]:
    """Score every gold item in both orders; return (one row per item in input order, metrics)."""
    from tqdm import tqdm

    require_scoring(engine)
    spec = template_spec(template, "comparison")
    items = load_gold(gold, seed) if isinstance(gold, (str, Path)) else list(gold)
    jobs = []  # (item, principle, raw context, swapped context, options)
    for item in items:
        if item.format == "anthropic_mc":
            jobs.append((item, None, item.prompt, swap_mc_prompt(item.prompt), item.options))
            continue
        if constitution is None:
            raise ValueError("gold comparisons in the prompt/chosen/rejected format need a constitution (--constitution)")
        principle = draw_principles(constitution, item.id, 1, seed)[0]
        examples = few_shot_examples(constitution, item.id, seed)
        raw, swapped = (comparison_context(spec, constitution, engine, prompt=item.prompt, first=x, second=y,
                                           principle_text=principle.text, examples=examples)
                        for x, y in ((item.first, item.second), (item.second, item.first)))
        jobs.append((item, principle, raw, swapped, tuple(spec.options)))
    rows = []
    bar = tqdm(total=len(jobs), unit="comparison", desc="evaluating", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(jobs), max(1, batch_size // 2)):
        chunk = jobs[start : start + max(1, batch_size // 2)]
        by_options = defaultdict(list)
        for n, job in enumerate(chunk):
            by_options[job[4]].append(n)
        scored: dict[int, tuple[list[float], list[float]]] = {}
        for options, members in by_options.items():
            contexts = [c for n in members for c in (chunk[n][2], chunk[n][3])]
            lps = engine.score_options(contexts, list(options))
            for k, n in enumerate(members):
                scored[n] = (lps[2 * k], lps[2 * k + 1])
        for n, (item, principle, _, _, _) in enumerate(chunk):
            lp_raw, lp_swapped = scored[n]
            q_raw, q_swapped = normalize_logprobs(lp_raw)[0], normalize_logprobs(lp_swapped)[0]
            invert = bool(principle and principle.invert)
            p_raw = 1.0 - q_raw if invert else q_raw
            p_swapped = q_swapped if invert else 1.0 - q_swapped
            rows.append({
                "index": item.index, "id": item.id, "format": item.format, "gold_first": item.gold_first,
                "p_first_raw": p_raw, "p_first_swapped": p_swapped, "p_first_avg": (p_raw + p_swapped) / 2,
                "principle_id": principle.id if principle else "given", "logprobs_raw": lp_raw,
                "logprobs_swapped": lp_swapped,
            })
        bar.update(len(chunk))
    bar.close()
    return rows, agreement_metrics(rows)
