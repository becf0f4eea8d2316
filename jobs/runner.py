"""The one resumable job runner every generating and labeling stage uses.

A stage hands :func:`run_job` an open :class:`~jobs.rundir.RunDir`, its input items and a per-batch
function ``process(batch) -> records`` (or a :class:`BatchResult` that also lists inputs left out,
e.g. prompts too long for the model). The runner does the rest, the same way for every stage:

1. todo = the items whose id (``id_of(item)``) is not yet in the run's records;
2. cut todo into batches of ``chunk_size`` and hand them to the executor;
3. append each batch's records as they come back (whole lines, fsynced: a killed run loses at most
   the batches in flight), and move a progress bar;
4. at the end commit the run (an ``--overwrite`` run with nothing to do still replaces the old run),
   write or remove ``skipped.jsonl`` when asked to, and close the run directory (release the lock);
5. return :class:`JobStats` (counts and timings) for the stage's summary.

Executors: the default :class:`LocalExecutor` runs the batches one after another in this process.
Another executor (e.g. one built on Ray that shards the batches over workers, each owning an engine)
only has to provide ``map(process, batches)`` yielding ``(batch, result)`` pairs as batches finish,
in any order; records are appended by this process only, so the run directory stays the single
writer. A per-batch function must therefore depend only on its batch (and on what it was built
with), never on the order in which batches run — every stage's function already derives its seeds
from the ids in the batch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from jobs.rundir import RunDir

SKIPPED = "skipped.jsonl"  # inputs a stage left out (e.g. too long for the model); tried again on a rerun


@dataclass
class BatchResult:
    """What a per-batch function returns when it left some inputs out: the records to append, and one
    ``{"id", "reason", …}`` entry per input left out (it gets no record, so a rerun tries it again)."""

    records: list[dict]
    skipped: list[dict] = field(default_factory=list)


@dataclass
class JobStats:
    """Counts and timings of one :func:`run_job` call."""

    items: int  # all the inputs given
    already_done: int  # inputs with a record before this call (a resume)
    todo: int  # inputs processed by this call
    written: int  # records appended by this call
    skipped: list[dict]  # entries of the inputs left out by this call
    batches: int
    seconds: float


class Executor(Protocol):
    def map(self, process: Callable[[list], Any], batches: Sequence[list]) -> Iterator[tuple[list, Any]]:
        """Run ``process`` on every batch, yielding ``(batch, result)`` as each one finishes."""


class LocalExecutor:
    """Every batch in this process, one after another, in order."""

    def map(self, process, batches):
        for batch in batches:
            yield batch, process(batch)


class Progress:
    """A tqdm bar (created lazily, silent when disabled) that a stage can also write notes on, e.g.
    the stage of the batch in flight. Pass one to :func:`run_job` instead of ``progress=True`` to
    get at :meth:`note` from inside the per-batch function."""

    def __init__(self, enabled: bool = True, *, desc: str = "", unit: str = "item"):
        self.enabled, self.desc, self.unit = enabled, desc, unit
        self.bar = None

    def start(self, total: int, initial: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit=self.unit, desc=self.desc, disable=not self.enabled, dynamic_ncols=True)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_skipped(run_dir, skipped: list[dict]) -> None:
    """List the inputs a run left out in RUN_DIR/skipped.jsonl (none: no file). They have no record,
    so a rerun tries them again and rewrites the list."""
    path = Path(run_dir) / SKIPPED
    if skipped:
        path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in skipped), encoding="utf-8")
    else:
        path.unlink(missing_ok=True)


def run_job(
    run: RunDir,
    items: Iterable,
    process: Callable[[list], list[dict] | BatchResult],
    *,
    id_of: Callable[[Any], str] = lambda item: item.id,
    chunk_size: int,
    progress: bool | Progress = True,
    desc: str = "",
    unit: str = "item",
    status: Callable[[], str] | None = None,
    executor: Executor | None = None,
    skipped_file: bool = False,
    close: bool = True,
) -> JobStats:
    """Process every item of ``items`` not yet recorded in ``run``, ``chunk_size`` at a time.

    ``process(batch)`` turns a list of items into their records (a list of dicts, appended in one
    write) or a :class:`BatchResult`. ``id_of(item)`` is the id its record will carry (default
    ``item.id``). ``progress`` shows a bar (``desc``, ``unit``) over all items, starting at those
    already done; pass a :class:`Progress` to write notes on it from ``process``. ``status()``, if
    given, is shown on the bar after every saved batch. ``executor`` runs the batches
    (:class:`LocalExecutor` by default; see the module docstring). ``skipped_file`` writes the
    entries of skipped inputs to RUN_DIR/skipped.jsonl (removing an old list when none were).

    On success the run is committed and, unless ``close=False`` (a caller that still writes exports
    under the lock and closes the run itself), closed. On an error it is closed, an uncommitted
    ``--overwrite`` run leaving the old run as it was.
    """
    start = time.monotonic()
    items, chunk_size = list(items), max(1, chunk_size)
    bar = progress if isinstance(progress, Progress) else Progress(bool(progress), desc=desc, unit=unit)
    executor = executor or LocalExecutor()
    written, batches, skipped = 0, 0, []
    try:
        done = run.done_ids()
        todo = [item for item in items if id_of(item) not in done]
        bar.start(len(items), len(items) - len(todo))
        chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
        for batch, result in executor.map(process, chunks):
            if not isinstance(result, BatchResult):
                result = BatchResult(list(result))
            run.append(result.records)
            written += len(result.records)
            skipped += result.skipped
            batches += 1
            bar.update(len(batch))
            if status is not None:
                bar.note(status())
        run.commit()  # an --overwrite run with nothing to do still replaces the old run (by an empty one)
    except BaseException:
        bar.close()
        run.close()
        raise
    bar.close()
    if close:
        run.close()
    if skipped_file:
        write_skipped(run.path, skipped)
    return JobStats(items=len(items), already_done=len(items) - len(todo), todo=len(todo), written=written,
                    skipped=skipped, batches=batches, seconds=time.monotonic() - start)
