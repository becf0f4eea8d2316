"""A run directory: an append-only ``records.jsonl`` plus a ``run.json`` manifest.

This is what makes every long job resumable. Record ids are derived from the input, so a rerun of
the same command knows which inputs are done; whole lines are written and flushed (and fsynced)
per batch, so a ``kill -9`` at any moment leaves at most one torn last line, which the next open
cuts off. The manifest pins what must not change inside one run (constitution, model, …): a rerun
with different values is refused instead of silently mixing two datasets. Values that name an
existing file or folder are compared as resolved paths, and the input files are fingerprinted
(size + sha256): an input edited since the run started is refused; one that only grew (lines
appended) is accepted.

Safety: an open run holds an exclusive lock (``flock`` on ``lock``, which names the holder) until
:meth:`RunDir.close`, so two runs never write into one directory. Only an empty folder or one with a
``run.json`` of ours is used. ``overwrite`` removes only the files a run owns (:attr:`RunDir.OWNED`),
and only once the new run has written its first records (or has ended normally with nothing to do):
until then it lives in a hidden ``.overwrite-<pid>/`` folder inside, so a new run that fails at once
leaves the old one as it was.

``config.yaml`` (optional) holds the resolved config of the command that last ran in the directory,
so a user can see what produced it; it is not part of the identity. The loop that fills a run
directory is :func:`jobs.runner.run_job`; the record lines are read through :mod:`jobs.records`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Iterable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # Windows: no locking
    fcntl = None


class RunDirError(RuntimeError):
    pass


def stable_id(*parts: object) -> str:
    """A short id derived from the input (JSON of the parts), identical on every rerun."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _resolve(value):
    """A string naming an existing file or folder becomes its resolved absolute path; others are kept."""
    if isinstance(value, str) and value and os.path.exists(value):
        return str(Path(value).resolve())
    return value


def _normalise(identity: dict) -> dict:
    identity = json.loads(json.dumps(identity, default=str))  # tuples → lists etc.
    return {k: _resolve(v) for k, v in identity.items()}


def _hash_file(path: Path, head: int = 0) -> tuple[dict, str, bytes]:
    """(``{"file", "size", "sha256"}`` of the file, sha256 of its first ``head`` bytes, the last of those bytes)."""
    whole, first, size, last = hashlib.sha256(), hashlib.sha256(), 0, b""
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            part = block[: max(head - size, 0)]
            if part:
                first.update(part)
                last = part[-1:]
            whole.update(block)
            size += len(block)
    return {"file": str(path), "size": size, "sha256": whole.hexdigest()}, first.hexdigest(), last


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class RunDir:
    RECORDS = "records.jsonl"
    MANIFEST = "run.json"
    LOCK = "lock"
    CONFIG = "config.yaml"  # the resolved command config of the latest invocation (not part of the identity)
    OWNED = (MANIFEST, RECORDS, CONFIG, "run.tmp", "summary.json", "skipped.jsonl", "exports", LOCK)  # all that overwrite may remove
    STAGING = ".overwrite-"

    def __init__(self, path: str | os.PathLike, identity: dict, *, overwrite: bool = False, kind: str = "run",
                 inputs: Sequence[str | os.PathLike] = (), config=None):
        """Open (or create) a run directory and lock it until :meth:`close` (or the end of a ``with``).

        ``identity`` holds the settings that define the dataset (e.g. constitution hash, model,
        engine, rounds); reopening with a different identity raises :class:`RunDirError` naming
        the keys that differ, as does an edited ``inputs`` file, a run in progress elsewhere, or a
        folder that is not empty and not a run directory. ``overwrite`` starts over: the new run
        replaces the old one's files at its first :meth:`append` (see the module docstring).
        ``config``, the resolved command config, is saved as ``config.yaml`` so a user sees what
        produced the run; it is not compared on a resume (the latest invocation's config is kept).
        """
        self.path = Path(path)
        self.identity = _normalise(identity)
        self._lock_file = None
        self._staging: Path | None = None
        self._inspect(self.path, overwrite)  # refuse a foreign folder before creating anything in it
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._lock()
            old = self._inspect(self.path, overwrite)  # again: now nobody else can change it
            for stale in self.path.glob(self.STAGING + "*"):  # left by a run killed before its first records
                shutil.rmtree(stale, ignore_errors=True)
            if overwrite and (old is not None or (self.path / self.RECORDS).exists()):
                self._staging = self.path / f"{self.STAGING}{os.getpid()}"
                self._staging.mkdir()
                old = None
            manifest = {"kind": kind, "identity": self.identity}
            if old is not None:
                self._compare(self.path, old, kind, self.identity)
                manifest = old
            fingerprints = self._check_inputs(old or {}, inputs)
            if fingerprints:
                manifest = {**manifest, "inputs": fingerprints}
            work = self._staging or self.path
            if manifest != old:
                tmp = work / "run.tmp"
                tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
                os.replace(tmp, work / self.MANIFEST)
            if config is not None:
                self._write_config(work, config)
            self.records_path = work / self.RECORDS  # where records go now; the final place after commit()
            self._repair_torn_tail()
        except BaseException:
            self.close()
            raise

    def _write_config(self, work: Path, config: dict) -> None:
        import yaml

        if hasattr(config, "model_dump"):  # a pydantic config model
            config = config.model_dump(mode="json")
        plain = json.loads(json.dumps(config, default=str))  # paths, tuples … → YAML-safe values
        tmp = work / "run.tmp"
        tmp.write_text(yaml.safe_dump(plain, sort_keys=False, allow_unicode=True), encoding="utf-8")
        os.replace(tmp, work / self.CONFIG)

    # ---- checks --------------------------------------------------------------------------------

    @classmethod
    def check(cls, path: str | os.PathLike, identity: dict, *, kind: str, overwrite: bool = False) -> None:
        """Raise :class:`RunDirError` for what opening would refuse (a foreign or damaged folder,
        other settings, a run in progress), without creating, writing or keeping a lock on anything."""
        path = Path(path)
        old = cls._inspect(path, overwrite)
        if old is not None and not overwrite:
            cls._compare(path, old, kind, _normalise(identity))
        if fcntl and (path / cls.LOCK).exists():
            with open(path / cls.LOCK, "a+", encoding="utf-8") as f:
                cls._flock(f, path)  # released again when f closes

    @classmethod
    def _inspect(cls, path: Path, overwrite: bool) -> dict | None:
        """The manifest of the run at ``path`` (None for a new or empty folder); refuses anything else."""
        if not path.exists():
            return None
        if not path.is_dir():
            raise RunDirError(f"{path} is a file, not a run directory; use another --out")
        manifest = path / cls.MANIFEST
        if manifest.exists():
            try:
                old = json.loads(manifest.read_bytes())
            except ValueError as e:
                where = f" (line {e.lineno})" if hasattr(e, "lineno") else ""
                raise RunDirError(f"{manifest} is not valid JSON{where}: {getattr(e, 'msg', e)}; "
                                  "it is not a run this version can resume — use another --out") from None
            if not isinstance(old, dict) or not isinstance(old.get("kind"), str) or not isinstance(old.get("identity", {}), dict):
                raise RunDirError(f"{manifest} is not the manifest of a cai run; use another --out")
            return old
        foreign = sorted(p.name for p in path.iterdir() if p.name not in cls.OWNED and not p.name.startswith(cls.STAGING))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
            raise RunDirError(f"{path} is not empty and is not a run directory (no {cls.MANIFEST}; it holds {shown}); "
                              "nothing was changed — use a new or empty --out")
        if (path / cls.RECORDS).exists() and not overwrite:
            raise RunDirError(f"{path} holds {cls.RECORDS} but no {cls.MANIFEST} (an interrupted --overwrite?); "
                              "pass --overwrite to start over or use another --out")
        return None

    @staticmethod
    def _compare(path: Path, old: dict, kind: str, identity: dict) -> None:
        if old.get("kind") != kind:
            raise RunDirError(f"{path} holds a {old.get('kind')!r} run, not {kind!r}; use another --out or --overwrite")
        old_id = {k: _resolve(v) for k, v in old.get("identity", {}).items()}
        diff = sorted(k for k in set(old_id) | set(identity) if old_id.get(k) != identity.get(k))
        if diff:
            detail = "; ".join(f"{k}: was {old_id.get(k)!r}, now {identity.get(k)!r}" for k in diff)
            raise RunDirError(
                f"{path} was started with different settings ({detail}). "
                "Resume with the original settings, choose another --out, or pass --overwrite to start over."
            )

    def _check_inputs(self, old: dict, inputs: Sequence) -> list[dict]:
        """Fingerprints of ``inputs``; refuses a file changed since the run started other than by
        appending whole lines (a run without fingerprints, e.g. from 0.1.0, accepts any)."""
        known = old.get("inputs") or []
        if known and len(known) != len(inputs):
            raise RunDirError(f"{self.path} was started from {len(known)} input file(s), now {len(inputs)}; "
                              "pass --overwrite to start over or use another --out")
        out = []
        for i, path in enumerate(inputs):
            path = Path(path)
            if path.is_dir():  # a run directory as input stands for its records
                path = path / self.RECORDS
            was = known[i] if known else None
            now, head, last = _hash_file(path, was["size"] if was else 0)
            if was and not (head == was["sha256"] and now["size"] >= was["size"]
                            and (now["size"] == was["size"] or was["size"] == 0 or last == b"\n")):
                raise RunDirError(
                    f"the input file {path} changed since the run in {self.path} started "
                    f"(was {was['size']} bytes, sha256 {was['sha256'][:12]}…; now {now['size']} bytes, {now['sha256'][:12]}…); "
                    "resuming would mix two inputs — restore it, pass --overwrite to start over, or use another --out"
                )
            out.append(now)
        return out

    # ---- lock ----------------------------------------------------------------------------------

    @staticmethod
    def _flock(f, path: Path) -> None:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            try:
                h = json.loads(f.read())
                holder = f"pid {h['pid']} on {h['host']}, started {h['started']}"
                if h["pid"] == os.getpid() and h["host"] == socket.gethostname():
                    holder += ": this process, which has not closed it"
            except (ValueError, KeyError, TypeError):
                holder = "holder unknown"
            raise RunDirError(f"{path} is in use by another run ({holder}); wait for it to end or use another --out") from None

    def _lock(self) -> None:
        if fcntl is None:
            return
        f = open(self.path / self.LOCK, "a+", encoding="utf-8")
        try:
            self._flock(f, self.path)
        except BaseException:
            f.close()
            raise
        f.truncate(0)
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
        f.flush()
        self._lock_file = f

    # ---- records -------------------------------------------------------------------------------

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

    def records(self, model=None) -> Iterator[dict]:
        """The records, each id once (the first; a damaged file may hold more), each validated through
        the pydantic ``model`` when given. A line that is not a JSON record (or not a valid ``model``)
        raises :class:`RunDirError` naming ``records.jsonl:N``."""
        from jobs.records import read_jsonl, validate

        if not self.records_path.exists():
            return
        seen = set()
        for n, record in read_jsonl(self.records_path, error=RunDirError, hint="; repair or delete that line, or use another --out"):
            if "id" not in record:
                raise RunDirError(f"{self.records_path}:{n}: not a record (a JSON object with an \"id\")")
            if model is not None:
                validate(model, record, f"{self.records_path}:{n}", RunDirError)
            if record["id"] not in seen:
                seen.add(record["id"])
                yield record

    def done_ids(self) -> set[str]:
        try:
            return {r["id"] for r in self.records()}
        except RunDirError:
            self.close()  # the run cannot go on: release the lock now, not when this object is collected
            raise

    def append(self, records: Iterable[dict]) -> None:
        """Append whole lines and make them durable before returning; the first append of an
        ``overwrite`` run then replaces the old run (:meth:`commit`)."""
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not lines:
            return
        with open(self.records_path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        self.commit()

    # ---- end -----------------------------------------------------------------------------------

    def commit(self) -> None:
        """Replace the old run's files with the new run's (``overwrite``); a no-op otherwise or when done.

        The old manifest goes first and the new one comes last, so a crash in between leaves
        records without a manifest, which is refused rather than resumed.
        """
        if self._staging is None:
            return
        for name in self.OWNED:
            if name != self.LOCK:
                _remove(self.path / name)
        for name in (self.RECORDS, self.CONFIG, self.MANIFEST):
            if (self._staging / name).exists():
                os.replace(self._staging / name, self.path / name)
        shutil.rmtree(self._staging)
        self._staging = None
        self.records_path = self.path / self.RECORDS

    def close(self) -> None:
        """Release the lock. An ``overwrite`` run that wrote nothing and was not committed is
        dropped, leaving the old run as it was. Safe to call twice."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
            self.records_path = self.path / self.RECORDS
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file releases the flock
            self._lock_file = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """A normal end commits (an ``overwrite`` run with nothing to do replaces the old run by an
        empty one); an exception leaves an uncommitted old run untouched. Either way the lock is released."""
        try:
            if exc_type is None:
                self.commit()
        finally:
            self.close()
