"""A run directory: an append-only ``records.jsonl`` plus a ``run.json`` manifest.

This is what makes every long job resumable. Record ids are derived from the input, so a rerun of
the same command knows which inputs are done; whole lines are written and flushed (and fsynced)
per batch, so a ``kill -9`` at any moment leaves at most one torn last line, which the next open
cuts off. The manifest pins what must not change inside one run (constitution, model, …): a rerun
with different values is refused instead of silently mixing two datasets.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator


class RunDirError(RuntimeError):
    pass


def stable_id(*parts: object) -> str:
    """A short id derived from the input (JSON of the parts), identical on every rerun."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


class RunDir:
    RECORDS = "records.jsonl"
    MANIFEST = "run.json"

    def __init__(self, path: str | os.PathLike, identity: dict, *, overwrite: bool = False, kind: str = "run"):
        """Open (or create) a run directory.

        ``identity`` holds the settings that define the dataset (e.g. constitution hash, model,
        engine, rounds); reopening with a different identity raises :class:`RunDirError` naming
        the keys that differ. ``overwrite`` deletes what is there and starts over.
        """
        self.path = Path(path)
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.records_path = self.path / self.RECORDS
        manifest_path = self.path / self.MANIFEST
        identity = json.loads(json.dumps(identity, default=str))  # normalise tuples etc.
        if manifest_path.exists():
            old = json.loads(manifest_path.read_text())
            if old.get("kind") != kind:
                raise RunDirError(f"{self.path} holds a {old.get('kind')!r} run, not {kind!r}; use another --out or --overwrite")
            old_id = old.get("identity", {})
            diff = sorted(k for k in set(old_id) | set(identity) if old_id.get(k) != identity.get(k))
            if diff:
                detail = "; ".join(f"{k}: was {old_id.get(k)!r}, now {identity.get(k)!r}" for k in diff)
                raise RunDirError(
                    f"{self.path} was started with different settings ({detail}). "
                    "Resume with the original settings, choose another --out, or pass --overwrite to start over."
                )
        else:
            tmp = manifest_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"kind": kind, "identity": identity}, indent=2, ensure_ascii=False))
            os.replace(tmp, manifest_path)
        self.identity = identity
        self._repair_torn_tail()

    def _repair_torn_tail(self) -> None:
        """Cut off a last line that a crash left half-written (no newline, or not valid JSON)."""
        if not self.records_path.exists():
            return
        with open(self.records_path, "rb+") as f:
            data = f.read()
            if not data:
                return
            keep = len(data)
            if not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
            else:
                last_start = data.rfind(b"\n", 0, len(data) - 1) + 1
                try:
                    json.loads(data[last_start:])
                except ValueError:
                    keep = last_start
            if keep != len(data):
                f.truncate(keep)

    def records(self) -> Iterator[dict]:
        if not self.records_path.exists():
            return
        with open(self.records_path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def done_ids(self) -> set[str]:
        return {r["id"] for r in self.records()}

    def append(self, records: Iterable[dict]) -> None:
        """Append whole lines and make them durable before returning."""
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not lines:
            return
        with open(self.records_path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
