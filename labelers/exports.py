"""Exports of label runs in the column layouts TRL's trainers read, plus run summaries.

RUN_DIR/exports/ gets a JSONL file and a Hugging Face ``datasets`` folder (``save_to_disk``) of:
- prefs:  prompt / chosen / rejected / p_chosen — chosen is the response with p ≥ 0.5;
          ``min_margin`` drops near-ties (|p − 0.5| < margin)
- kto:    prompt / completion / label (+ p_desirable, confidence) from binary labels
- scores: prompt / completion / score in [-1, 1] from direct scores

Each record id counts once, whatever ``records.jsonl`` holds (the first record of an id is kept;
``duplicates_dropped`` says how many later ones were left out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from jobs.records import ExportError, write_export
from jobs.records import read_records as read_run_records
from jobs.rundir import RunDir

from .records import KEEP, BinaryRecord, KTORow, PreferenceRecord, PrefsRow, ScoreRecord, ScoreRow


def read_records(run_dir: Path, model) -> tuple[list[dict], int]:
    """(the run's records — the first of each id, validated through ``model`` —, later duplicates dropped)."""
    return read_run_records(Path(run_dir) / RunDir.RECORDS, model, error=ExportError)


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _write(run_dir: Path, name: str, rows: list[dict]) -> dict:
    """exports/<name>.jsonl and exports/<name>/ (a datasets folder), each replaced atomically."""
    return write_export(Path(run_dir) / "exports", name, rows)


def preference_rows(records: Iterable[dict], min_margin: float = 0.0) -> list[dict]:
    if not 0.0 <= min_margin <= 0.5:
        raise ValueError(f"min_margin must be between 0 and 0.5, got {min_margin}")
    rows = []
    for r in records:
        p = r["p_a"]
        if abs(p - 0.5) < min_margin:
            continue
        a_wins = p >= 0.5
        rows.append(PrefsRow(
            id=r["id"], prompt=r["prompt"],
            chosen=_assistant(r["response_a"] if a_wins else r["response_b"]),
            rejected=_assistant(r["response_b"] if a_wins else r["response_a"]),
            p_chosen=p if a_wins else 1.0 - p,
            position_flip=r.get("position_flip"),
            **{k: r[k] for k in KEEP if k in r},
        ).dump())
    return rows


def export_preferences(run_dir: str | Path, min_margin: float = 0.0) -> dict:
    records, dropped = read_records(Path(run_dir), PreferenceRecord)
    return {**_write(Path(run_dir), "prefs", preference_rows(records, min_margin)), "duplicates_dropped": dropped}


def kto_rows(records: Iterable[dict], min_margin: float = 0.0) -> list[dict]:
    rows = []
    for r in records:
        if abs(r["p_desirable"] - 0.5) < min_margin:
            continue
        rows.append(KTORow(
            id=r["id"], prompt=r["prompt"], completion=_assistant(r["response"]), label=r["label"],
            p_desirable=r["p_desirable"], confidence=r["confidence"], **{k: r[k] for k in KEEP if k in r},
        ).dump())
    return rows


def export_kto(run_dir: str | Path, min_margin: float = 0.0) -> dict:
    records, dropped = read_records(Path(run_dir), BinaryRecord)
    return {**_write(Path(run_dir), "kto", kto_rows(records, min_margin)), "duplicates_dropped": dropped}


def score_rows(records: Iterable[dict]) -> list[dict]:
    return [ScoreRow(
        id=r["id"], prompt=r["prompt"], completion=_assistant(r["response"]), score=r["score"],
        expected_rating=r["expected_rating"], **{k: r[k] for k in KEEP if k in r},
    ).dump() for r in records]


def export_scores(run_dir: str | Path) -> dict:
    records, dropped = read_records(Path(run_dir), ScoreRecord)
    return {**_write(Path(run_dir), "scores", score_rows(records)), "duplicates_dropped": dropped}


def preference_summary(records: Iterable[dict]) -> dict:
    """Counts over a preference run: position flips, how decisive the labels are, and agreement
    with the input's own chosen/rejected labels when it had them."""
    records = list(records)
    n = len(records)
    both = [r for r in records if r.get("position_flip") is not None]
    flips = sum(1 for r in both if r["position_flip"])
    with_input = [r for r in records if r.get("input_chosen") == "a"]
    summary = {
        "comparisons": n,
        "scored_both_orders": len(both),
        "position_flips": flips,
        "position_flip_rate": flips / len(both) if both else None,
        "mean_p_a": sum(r["p_a"] for r in records) / n if n else None,
        "mean_margin": sum(abs(r["p_a"] - 0.5) for r in records) / n if n else None,
    }
    if with_input:
        summary["agreement_with_input_chosen"] = sum(r["p_a"] >= 0.5 for r in with_input) / len(with_input)
    return summary
