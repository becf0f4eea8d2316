"""Exports: training datasets rebuilt from a run's ``records.jsonl`` (idempotent; run it any time).

An SL-CAI run gives (in ``RUN_DIR/exports/``):

- ``sft.jsonl`` + ``sft/`` (Hugging Face ``datasets`` folder): ``{"id", "prompt_id", "messages": prompt
  turns + [assistant revision], "round", "principle_id", …}`` — by default one row per prompt with the
  final revision; ``all_rounds=True`` gives one row per round's revision, as the paper trained on.
- ``prefs.jsonl`` + ``prefs/``: ``{"id", "prompt": [messages], "chosen": [assistant final revision],
  "rejected": [assistant initial response], "p_chosen": 1.0, …}`` (the Hugging Face CAI recipe's
  chosen = revision, rejected = initial answer). Rows whose revision is empty or equals the initial
  answer are left out (nothing to prefer).

A pairs run gives ``pairs.jsonl`` + ``pairs/`` (the records themselves, for labelers or the Hub).
Every file is written to a temporary name and renamed, so a crash never leaves half an export.
Each record id counts once, whatever ``records.jsonl`` holds: the first record of an id is kept and
the number of later ones dropped is reported (``duplicates_dropped``) and logged.
``datasets.load_from_disk(RUN_DIR/exports/sft)`` loads a folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from jobs.records import ExportError, Record, write_export
from jobs.records import read_records as read_run_records
from jobs.rundir import RunDir, stable_id

from .records import STAMP_KEYS, PairRecord, PairRow, SftRow, SLCAIRecord, SLPrefsRow

log = logging.getLogger(__name__)


_STAMP_KEYS = STAMP_KEYS


def _run_kind(run_dir: Path) -> str:
    manifest = run_dir / RunDir.MANIFEST
    if not manifest.exists():
        raise ExportError(f"{run_dir} is not a run directory (no {RunDir.MANIFEST}); pass the --out folder of a `cai generate` run")
    try:
        return json.loads(manifest.read_text())["kind"]
    except (ValueError, KeyError) as e:
        raise ExportError(f"{manifest}: expected a JSON object with a 'kind' key ({e})") from None


def read_records(run_dir: Path, model: type[Record] | None = None) -> tuple[list[dict], int]:
    """(the records — the first of each id, validated through ``model`` —, how many later duplicates
    were dropped); a torn last line (a run in progress or killed) is left out, any other bad line
    raises :class:`ExportError` naming ``records.jsonl:N`` (and the field)."""
    path = run_dir / RunDir.RECORDS
    records, dropped = read_run_records(path, model, error=ExportError)
    if dropped:
        log.warning("%s: %d duplicate record(s) (an id seen before) left out of the export", path, dropped)
    return records, dropped


def _meta_columns(records: list[dict]) -> list[str]:
    """Scalar meta keys (e.g. category) become columns; every row gets every column (None if absent)."""
    keys: dict[str, None] = {}
    for r in records:
        for k in (r.get("meta") or {}):
            keys[k] = None
    return list(keys)


def _meta_values(record: dict, columns: list[str], taken: set[str]) -> dict:
    meta = record.get("meta") or {}
    out = {}
    for k in columns:
        if k in taken:
            continue
        v = meta.get(k)
        out[k] = v if v is None or isinstance(v, (str, int, float, bool)) else json.dumps(v, ensure_ascii=False)
    return out


def sl_cai_rows(records: list[dict], *, all_rounds: bool = False) -> tuple[list[dict], list[dict]]:
    """(sft rows, preference rows) from SL-CAI records; pure, so it is easy to test."""
    meta_cols = _meta_columns(records)
    sft, prefs = [], []
    for rec in records:
        stamp = {k: rec.get(k) for k in _STAMP_KEYS}
        prompt = rec["prompt"]
        rounds = rec.get("rounds") or []
        base_cols = {"prompt_id", "round", "principle_id", "id", "messages", *stamp}
        meta = _meta_values(rec, meta_cols, base_cols)
        chosen_rounds = rounds if all_rounds else rounds[-1:]
        for rd in chosen_rounds:
            if not rd.get("revision"):
                continue
            sft.append(SftRow(
                # the default (final revision only) keeps the record's id; per-round rows need their own
                id=stable_id(rec["id"], "round", rd["round"]) if all_rounds else rec["id"],
                prompt_id=rec["id"],
                messages=prompt + [{"role": "assistant", "content": rd["revision"]}],
                round=rd["round"],
                principle_id=rd["principle_id"],
                **stamp,
                **meta,
            ).dump())
        final, initial = rec.get("final_revision") or "", rec.get("initial_response") or ""
        if final and final != initial:
            prefs.append(SLPrefsRow(
                id=rec["id"],
                prompt=prompt,
                chosen=[{"role": "assistant", "content": final}],
                rejected=[{"role": "assistant", "content": initial}],
                p_chosen=1.0,
                principle_ids=list(rec.get("principle_ids") or [r["principle_id"] for r in rounds]),
                **stamp,
                **_meta_values(rec, meta_cols, {"id", "prompt", "chosen", "rejected", "p_chosen", "principle_ids", *stamp}),
            ).dump())
    return sft, prefs


def pair_rows(records: list[dict]) -> list[dict]:
    meta_cols = _meta_columns(records)
    rows = []
    for rec in records:
        row = {k: v for k, v in rec.items() if k != "meta"}
        rows.append(PairRow(**row, **_meta_values(rec, meta_cols, set(row))).dump())
    return rows


def export_sl_cai(run_dir, *, all_rounds: bool = False) -> dict:
    run_dir = Path(run_dir)
    kind = _run_kind(run_dir)
    if kind != "sl-cai":
        raise ExportError(f"{run_dir} holds a {kind!r} run, not an sl-cai run")
    records, dropped = read_records(run_dir, SLCAIRecord)
    sft, prefs = sl_cai_rows(records, all_rounds=all_rounds)
    exports = run_dir / "exports"
    exports.mkdir(exist_ok=True)
    return {"kind": kind, "records": len(records), "duplicates_dropped": dropped,
            "sft": write_export(exports, "sft", sft), "prefs": write_export(exports, "prefs", prefs)}


def export_pairs(run_dir) -> dict:
    run_dir = Path(run_dir)
    kind = _run_kind(run_dir)
    if kind != "pairs":
        raise ExportError(f"{run_dir} holds a {kind!r} run, not a pairs run")
    records, dropped = read_records(run_dir, PairRecord)
    exports = run_dir / "exports"
    exports.mkdir(exist_ok=True)
    return {"kind": kind, "records": len(records), "duplicates_dropped": dropped, "pairs": write_export(exports, "pairs", pair_rows(records))}


def export_run(run_dir, *, all_rounds: bool = False) -> dict:
    """Export whatever kind of run ``run_dir`` holds."""
    kind = _run_kind(Path(run_dir))
    if kind == "sl-cai":
        return export_sl_cai(run_dir, all_rounds=all_rounds)
    if kind == "pairs":
        return export_pairs(run_dir)
    raise ExportError(f"{run_dir} holds a {kind!r} run; `cai export` handles sl-cai and pairs runs")
