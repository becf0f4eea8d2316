"""What the report says about the data stages: the constitution, SL-CAI revisions and AI labels.

Each function takes the discovered :class:`report.discover.Run` objects of its kind and returns a plain
dict for the template (numbers, texts, embedded pictures); user text is left as is — the template escapes it.

"Materially revised": a revision whose word-level similarity to the initial answer
(``difflib.SequenceMatcher`` ratio over whitespace-separated words: 1.0 = identical, 0.0 = nothing in
common) is below :data:`MATERIAL_SIMILARITY` (0.9).
"""

from __future__ import annotations

import difflib
from collections import Counter, defaultdict
from statistics import mean
from typing import Any

from jobs.records import read_records

from . import plots
from .discover import ReportError, Run

MATERIAL_SIMILARITY = 0.9


def similarity(a: str, b: str) -> float:
    """Word-level similarity in [0, 1] (1.0 for two empty texts)."""
    wa, wb = a.split(), b.split()
    if not wa and not wb:
        return 1.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def words(text: str | None) -> int:
    return len((text or "").split())


def records(run: Run, model=None) -> list[dict]:
    rows, _ = read_records(run.path / "records.jsonl", model, error=ReportError)
    return rows


def prompt_text(messages: Any) -> str:
    """The last user turn of a chat (the whole text for a plain string)."""
    if isinstance(messages, str):
        return messages
    users = [m.get("content", "") for m in messages or [] if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1] if users else ""


# ---- constitution ----------------------------------------------------------------------------------


def constitution_section(runs: list[Run], loaded: dict[str, Any], explicit: str | None) -> dict | None:
    """Which constitutions the records were made with, their principles, and how often each was drawn.

    ``loaded`` maps run name → the record rows already read (so records are read once per report)."""
    from constitution.loader import ConstitutionError, resolve_constitution

    stamps: Counter = Counter()
    drawn: dict[str, Counter] = {"critique_revision": Counter(), "feedback": Counter()}
    sources: list[str] = [explicit] if explicit else []
    for run in runs:
        rows = loaded.get(run.name)
        if rows is None:
            continue
        part = "critique_revision" if run.kind == "sl-cai" else "feedback"
        for r in rows:
            if r.get("constitution"):
                stamps[(r["constitution"], r.get("constitution_hash") or "?")] += 1
            ids = [rd.get("principle_id") for rd in r.get("rounds", [])] if run.kind == "sl-cai" else r.get("principle_ids", [])
            drawn[part].update(i for i in ids if i)
        if isinstance(run.config.get("constitution"), str):
            sources.append(run.config["constitution"])
    if not stamps and not sources:
        return None
    constitutions, problems = [], []
    for source in dict.fromkeys(sources):
        try:
            c = resolve_constitution(source)
        except ConstitutionError as e:
            if source == explicit:  # asked for on the command line: an error, not a note
                raise ReportError(f"--constitution: {e}") from None
            problems.append(f"{source}: {str(e).splitlines()[0]}")
            continue
        if c.content_hash in {x["hash"] for x in constitutions}:
            continue
        principles = [{"part": "critique_revision", "id": p.id, "text": p.critique, "weight": p.weight, "tags": ", ".join(p.tags),
                       "drawn": drawn["critique_revision"][p.id]} for p in c.critique_revision]
        principles += [{"part": "feedback", "id": p.id, "text": p.text + ("  (inverted)" if p.invert else ""), "weight": p.weight,
                        "tags": ", ".join(p.tags), "drawn": drawn["feedback"][p.id]} for p in c.feedback]
        constitutions.append({"ref": c.ref, "hash": c.content_hash, "source": source, "description": c.description,
                              "principles": principles, "in_records": any(h == c.content_hash for _, h in stamps)})
    known = {c["hash"] for c in constitutions}
    draws = []
    for part, counter in drawn.items():
        total = sum(counter.values())
        draws += [{"part": part, "id": pid, "count": n, "share": n / total} for pid, n in counter.most_common()]
    chart = None
    if draws:
        chart = plots.bars([f"{d['id']}" for d in draws], [d["count"] for d in draws], ylabel="times drawn",
                           title="Principles drawn in the records", ylim=None)
    return {"constitutions": constitutions, "problems": problems, "draws": draws, "chart": chart,
            "stamps": [{"ref": ref, "hash": h, "records": n, "file_found": h in known} for (ref, h), n in stamps.most_common()]}


# ---- SL-CAI ----------------------------------------------------------------------------------------


def sl_cai_section(run: Run, rows: list[dict], max_examples: int) -> dict:
    per: dict[str, dict] = defaultdict(lambda: {"rounds": 0, "changed": 0, "similarity": [], "initial": [], "revision": []})
    examples = []
    for r in rows:
        initial = r.get("initial_response") or ""
        for rd in r.get("rounds", []):
            s = similarity(initial, rd.get("revision") or "")
            p = per[rd.get("principle_id") or "?"]
            p["rounds"] += 1
            p["changed"] += s < MATERIAL_SIMILARITY
            p["similarity"].append(s)
            p["initial"].append(words(initial))
            p["revision"].append(words(rd.get("revision")))
        if len(examples) < max_examples:
            examples.append({"id": r["id"], "prompt": prompt_text(r.get("prompt")), "initial": initial,
                             "principles": " ".join(sorted({rd.get("principle_id") or "?" for rd in r.get("rounds", [])})),
                             "rounds": [{"principle": rd.get("principle_id") or "?", "critique": rd.get("critique"),
                                         "revision": rd.get("revision") or "",
                                         "similarity": similarity(initial, rd.get("revision") or "")} for rd in r.get("rounds", [])]})
    table = [{"principle": pid, "rounds": p["rounds"], "changed": p["changed"] / p["rounds"], "similarity": float(mean(p["similarity"])),
              "initial_words": float(mean(p["initial"])), "revision_words": float(mean(p["revision"]))}
             for pid, p in sorted(per.items())]
    all_rounds = sum(t["rounds"] for t in table)
    chart = plots.bars([t["principle"] for t in table], [t["changed"] for t in table], ylabel="share materially revised",
                       title=f"{run.name}: revisions that differ materially (similarity < {MATERIAL_SIMILARITY})") if table else None
    return {"name": run.name, "records": len(rows), "rounds": all_rounds, "table": table, "chart": chart, "examples": examples,
            "principles": sorted(per), "changed": sum(t["changed"] * t["rounds"] for t in table) / all_rounds if all_rounds else 0.0,
            "model": rows[0].get("model") if rows else None, "shown": len(examples)}


# ---- labels ----------------------------------------------------------------------------------------


def _rate(flags: list) -> float | None:
    known = [bool(f) for f in flags if f is not None]
    return sum(known) / len(known) if known else None


def label_section(run: Run, rows: list[dict]) -> dict:
    """A label-preference / label-binary / label-score run: distribution of its labels, per principle."""
    out: dict[str, Any] = {"name": run.name, "kind": run.kind, "records": len(rows),
                           "labeler": rows[0].get("labeler_model") if rows else None}
    if run.kind == "label-preference":
        values, what = [r["p_a"] for r in rows], "p = P(response_a ≻ response_b), both orders"
        out["flip_rate"] = _rate([r.get("position_flip") for r in rows])
    elif run.kind == "label-binary":
        values, what = [r["p_desirable"] for r in rows], "P(desirable)"
        out["desirable"] = _rate([r.get("label") for r in rows])
    else:
        values, what = [r["score"] for r in rows], "score (reward in [-1, 1])"
    out["what"] = what
    out["short"] = {"label-preference": "p", "label-binary": "P(desirable)"}.get(run.kind, "score")
    out["chart"] = plots.histogram(values, xlabel=what, title=f"{run.name}: {len(values)} labels",
                                   range_=(-1.0, 1.0) if run.kind == "label-score" else (0.0, 1.0)) if values else None
    per: dict[str, list] = defaultdict(list)
    for r, v in zip(rows, values):
        for pid in r.get("principle_ids") or ["(none)"]:
            per[pid].append((v, r.get("position_flip")))
    out["per_principle"] = [{"principle": pid, "n": len(items), "mean": float(mean(v for v, _ in items)),
                             "decisive": sum(abs(v - 0.5) >= 0.25 for v, _ in items) / len(items),
                             "flip_rate": _rate([f for _, f in items])} for pid, items in sorted(per.items())]
    return out


def label_eval_section(run: Run) -> dict:
    """A ``cai label eval`` output: agreement with gold, position consistency, calibration, per principle."""
    from jobs.records import read_jsonl
    from labelers.calibration import calibration_table
    from labelers.evaluate import agreement_metrics

    rows = []
    if "rows" in run.files:
        rows = [obj for _, obj in read_jsonl(run.files["rows"], error=ReportError)]
        for n, r in enumerate(rows, 1):
            for key in ("p_first_avg", "p_first_raw", "p_first_swapped", "gold_first"):
                if key not in r:
                    raise ReportError(f"{run.files['rows']}:{n}: missing key {key!r}")
    metrics = dict(run.summary.get("metrics", run.summary)) if run.summary else {}
    if rows and "agreement_avg" not in metrics:
        metrics = agreement_metrics(rows)
    for key in ("agreement_avg", "comparisons"):
        if key not in metrics:
            where = run.files.get("metrics") or run.path / "summary.json"
            raise ReportError(f"{where}: missing key {key!r} (a label-eval summary needs agreement_avg and comparisons)")
    chart = None
    if rows:
        ece, table = calibration_table([r["p_first_avg"] for r in rows], [r["gold_first"] for r in rows])
        chart = plots.reliability(table, ece)
    per = metrics.get("per_principle") or {}
    return {"name": run.name, "metrics": metrics, "chart": chart,
            "per_principle": [{"principle": pid, "n": m.get("n"), "agreement": m.get("agreement_avg")} for pid, m in sorted(per.items())]}
