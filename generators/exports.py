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
import os
import shutil
import tempfile
from pathlib import Path

from jobs.rundir import RunDir, stable_id


log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    pass


_STAMP_KEYS = ("model", "engine", "constitution", "constitution_hash", "seed")


def _run_kind(run_dir: Path) -> str:
    manifest = run_dir / RunDir.MANIFEST
    if not manifest.exists():
        raise ExportError(f"{run_dir} is not a run directory (no {RunDir.MANIFEST}); pass the --out folder of a `cai generate` run")
    try:
        return json.loads(manifest.read_text())["kind"]
    except (ValueError, KeyError) as e:
        raise ExportError(f"{manifest}: expected a JSON object with a 'kind' key ({e})") from None


def read_records(run_dir: Path) -> tuple[list[dict], int]:
    """(the records — the first of each id —, how many later duplicates were dropped); a torn last
    line (a run in progress or killed) is left out, any other bad line raises :class:`ExportError`."""
    path = run_dir / RunDir.RECORDS
    if not path.exists():
        return [], 0
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if not line.endswith("\n"):  # torn tail of a run in progress or killed: the run will redo it
                    break
                raise ExportError(f"{path}:{n}: expected a JSON record, found invalid JSON") from None
    kept, seen = [], set()
    for r in records:
        if r.get("id", id(r)) not in seen:
            seen.add(r.get("id", id(r)))
            kept.append(r)
    if len(kept) < len(records):
        log.warning("%s: %d duplicate record(s) (an id seen before) left out of the export", path, len(records) - len(kept))
    return kept, len(records) - len(kept)


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


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _write_dataset(path: Path, rows: list[dict]) -> bool:
    """Save rows as a ``datasets`` folder; with no rows, remove any old folder (an empty dataset cannot be loaded)."""
    import datasets

    if not rows:
        shutil.rmtree(path, ignore_errors=True)
        return False
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # our own CLI prints one summary instead
    try:
        datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
        if path.exists():
            old = path.with_name(f".{path.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars_were_on:
            datasets.enable_progress_bars()
    return True


def _write(exports: Path, name: str, rows: list[dict]) -> dict:
    _write_jsonl(exports / f"{name}.jsonl", rows)
    saved = _write_dataset(exports / name, rows)
    return {"jsonl": str(exports / f"{name}.jsonl"), "dataset": str(exports / name) if saved else None, "rows": len(rows)}


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
            sft.append({
                # the default (final revision only) keeps the record's id; per-round rows need their own
                "id": stable_id(rec["id"], "round", rd["round"]) if all_rounds else rec["id"],
                "prompt_id": rec["id"],
                "messages": prompt + [{"role": "assistant", "content": rd["revision"]}],
                "round": rd["round"],
                "principle_id": rd["principle_id"],
                **stamp,
                **meta,
            })
        final, initial = rec.get("final_revision") or "", rec.get("initial_response") or ""
        if final and final != initial:
            prefs.append({
                "id": rec["id"],
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": final}],
                "rejected": [{"role": "assistant", "content": initial}],
                "p_chosen": 1.0,
                "principle_ids": list(rec.get("principle_ids") or [r["principle_id"] for r in rounds]),
                **stamp,
                **_meta_values(rec, meta_cols, {"id", "prompt", "chosen", "rejected", "p_chosen", "principle_ids", *stamp}),
            })
    return sft, prefs


def pair_rows(records: list[dict]) -> list[dict]:
    meta_cols = _meta_columns(records)
    rows = []
    for rec in records:
        row = {k: v for k, v in rec.items() if k != "meta"}
        row.update(_meta_values(rec, meta_cols, set(row)))
        rows.append(row)
    return rows


def export_sl_cai(run_dir, *, all_rounds: bool = False) -> dict:
    run_dir = Path(run_dir)
    kind = _run_kind(run_dir)
    if kind != "sl-cai":
        raise ExportError(f"{run_dir} holds a {kind!r} run, not an sl-cai run")
    records, dropped = read_records(run_dir)
    sft, prefs = sl_cai_rows(records, all_rounds=all_rounds)
    exports = run_dir / "exports"
    exports.mkdir(exist_ok=True)
    return {"kind": kind, "records": len(records), "duplicates_dropped": dropped,
            "sft": _write(exports, "sft", sft), "prefs": _write(exports, "prefs", prefs)}


def export_pairs(run_dir) -> dict:
    run_dir = Path(run_dir)
    kind = _run_kind(run_dir)
    if kind != "pairs":
        raise ExportError(f"{run_dir} holds a {kind!r} run, not a pairs run")
    records, dropped = read_records(run_dir)
    exports = run_dir / "exports"
    exports.mkdir(exist_ok=True)
    return {"kind": kind, "records": len(records), "duplicates_dropped": dropped, "pairs": _write(exports, "pairs", pair_rows(records))}


def export_run(run_dir, *, all_rounds: bool = False) -> dict:
    """Export whatever kind of run ``run_dir`` holds."""
    kind = _run_kind(Path(run_dir))
    if kind == "sl-cai":
        return export_sl_cai(run_dir, all_rounds=all_rounds)
    if kind == "pairs":
        return export_pairs(run_dir)
    raise ExportError(f"{run_dir} holds a {kind!r} run; `cai export` handles sl-cai and pairs runs")
