"""``cai constitution diff OLD NEW [--run DIR]``: what changed between two versions of a constitution, and
which records of a run were made with principles that changed.

Principles are matched by ``id`` within each part (``critique_revision``, ``feedback``). A principle is
*reworded* when a text field differs (critique / revision requests, feedback text, ``invert``); weight
and tag changes are listed apart, since they change how often a principle is drawn, not what a record
made with it says. A record "used a changed principle" when one of its principle ids was reworded or
removed. Lives on the report floor (not in ``constitution/``) because ``--run`` reads stage records.
"""

from __future__ import annotations

import difflib
from collections import Counter
from pathlib import Path
from typing import Any

from constitution.schema import Constitution

TEXT_FIELDS = {"critique_revision": ("critique", "revision"), "feedback": ("text", "invert")}
LABEL_KINDS = ("label-preference", "label-binary", "label-score")
CONTEXT_WORDS = 6  # unchanged words shown on each side of a change


def word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """``[(op, text)]`` with op ``=`` (same), ``-`` (only in old) or ``+`` (only in new), word by word."""
    a, b = old.split(), new.split()
    out: list[tuple[str, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            out.append(("=", " ".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(("-", " ".join(a[i1:i2])))
        if j2 > j1:
            out.append(("+", " ".join(b[j1:j2])))
    return out


def format_word_diff(parts: list[tuple[str, str]], color: bool = False) -> str:
    """``same [-removed-] {+added+}`` (git's --word-diff=plain), or red / green with ``color``."""
    import typer

    shown = []
    for n, (op, text) in enumerate(parts):
        if op == "=":
            words = text.split()
            if len(words) > 2 * CONTEXT_WORDS:  # long unchanged stretches are cut to the words around a change
                head = words[:CONTEXT_WORDS] if n > 0 else []
                tail = words[-CONTEXT_WORDS:] if n < len(parts) - 1 else []
                text = " ".join(head + ["…"] + tail)
            shown.append(text)
        elif color:
            shown.append(typer.style(text, fg="red", strikethrough=True) if op == "-" else typer.style(text, fg="green", bold=True))
        else:
            shown.append(f"[-{text}-]" if op == "-" else f"{{+{text}+}}")
    return " ".join(shown)


def diff_constitutions(old: Constitution, new: Constitution) -> dict[str, Any]:
    """Everything that differs, as plain data (see :func:`format_diff`)."""
    out: dict[str, Any] = {"old": {"ref": old.ref, "hash": old.content_hash}, "new": {"ref": new.ref, "hash": new.content_hash},
                           "identical": old.content_hash == new.content_hash, "parts": {}, "other": []}
    for part, fields in TEXT_FIELDS.items():
        before = {p.id: p for p in getattr(old, part)}
        after = {p.id: p for p in getattr(new, part)}
        section = {"added": [i for i in after if i not in before], "removed": [i for i in before if i not in after],
                   "reworded": [], "weight": [], "tags": []}
        for pid in (i for i in before if i in after):
            p, q = before[pid], after[pid]
            changes = {f: word_diff(str(getattr(p, f)), str(getattr(q, f))) for f in fields if getattr(p, f) != getattr(q, f)}
            if changes:
                section["reworded"].append({"id": pid, "fields": changes})
            if p.weight != q.weight:
                section["weight"].append({"id": pid, "old": p.weight, "new": q.weight})
            if p.tags != q.tags:
                section["tags"].append({"id": pid, "added": [t for t in q.tags if t not in p.tags],
                                        "removed": [t for t in p.tags if t not in q.tags]})
        out["parts"][part] = section
    for name in ("name", "version", "description", "system_prompt"):
        if getattr(old, name) != getattr(new, name):
            out["other"].append({"field": name, "diff": word_diff(str(getattr(old, name) or ""), str(getattr(new, name) or ""))})
    for name in ("few_shot", "labeling_examples", "templates"):
        if getattr(old, name) != getattr(new, name):
            out["other"].append({"field": name, "note": f"{len(getattr(old, name))} → {len(getattr(new, name))} entries, content changed"})
    out["changed_ids"] = {part: sorted(set(s["removed"]) | {r["id"] for r in s["reworded"]}) for part, s in out["parts"].items()}
    return out


def format_diff(d: dict[str, Any], color: bool = False) -> str:
    lines = [f"old: {d['old']['ref']}  {d['old']['hash']}", f"new: {d['new']['ref']}  {d['new']['hash']}"]
    if d["identical"]:
        return "\n".join(lines + ["identical content (same hash): nothing changed"])
    for item in d["other"]:
        text = item.get("note") or format_word_diff(item["diff"], color)
        lines.append(f"{item['field']}: {text}")
    for part, s in d["parts"].items():
        if not any(s.values()):
            lines.append(f"{part}: no change")
            continue
        lines.append(f"{part}:")
        lines += [f"  + added     {pid}" for pid in s["added"]]
        lines += [f"  - removed   {pid}" for pid in s["removed"]]
        for r in s["reworded"]:
            for field, parts in r["fields"].items():
                lines.append(f"  ~ reworded  {r['id']}.{field}: {format_word_diff(parts, color)}")
        lines += [f"  ~ weight    {w['id']}: {w['old']} → {w['new']}" for w in s["weight"]]
        for t in s["tags"]:
            change = ", ".join([f"+{x}" for x in t["added"]] + [f"-{x}" for x in t["removed"]])
            lines.append(f"  ~ tags      {t['id']}: {change}")
    return "\n".join(lines)


def records_affected(d: dict[str, Any], run_root: str | Path) -> list[dict[str, Any]]:
    """Per run in or under ``run_root`` (SL-CAI and label runs): how many records used a reworded or removed
    principle, which ones, and which constitution versions the records were stamped with."""
    from jobs.records import read_records

    from .discover import ReportError, discover

    out = []
    for run in discover([run_root]):
        if run.kind != "sl-cai" and run.kind not in LABEL_KINDS:
            continue
        part = "critique_revision" if run.kind == "sl-cai" else "feedback"
        changed = set(d["changed_ids"][part])
        rows, _ = read_records(run.path / "records.jsonl", error=ReportError)
        hits: Counter = Counter()
        affected = []
        stamps = Counter(f"{r.get('constitution')} {r.get('constitution_hash')}" for r in rows)
        for r in rows:
            ids = [rd.get("principle_id") for rd in r.get("rounds", [])] if run.kind == "sl-cai" else r.get("principle_ids") or []
            used = sorted(changed.intersection(ids))
            if used:
                affected.append(r.get("id"))
                hits.update(used)
        out.append({"run": run.name, "kind": run.kind, "records": len(rows), "affected": affected, "by_principle": dict(hits.most_common()),
                    "stamps": dict(stamps), "made_with_old": any(d["old"]["hash"] in s for s in stamps)})
    return out


def format_affected(runs: list[dict[str, Any]], d: dict[str, Any], shown: int = 10) -> str:
    if not runs:
        return "no SL-CAI or label run found there"
    lines = []
    for r in runs:
        lines.append(f"{r['run']} ({r['kind']}): {len(r['affected'])} of {r['records']} records used a reworded or removed principle")
        for pid, n in r["by_principle"].items():
            lines.append(f"  {pid}: {n} records")
        if r["affected"]:
            more = f" … and {len(r['affected']) - shown} more" if len(r["affected"]) > shown else ""
            lines.append("  ids: " + ", ".join(map(str, r["affected"][:shown])) + more)
        if not r["made_with_old"]:
            lines.append(f"  note: its records are stamped {', '.join(r['stamps'])}, not the old constitution ({d['old']['hash']})")
    return "\n".join(lines)
