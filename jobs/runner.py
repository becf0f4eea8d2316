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

A per-batch function that runs where its engine lives is an :class:`EngineTask`: ``fn(engine, batch)``
(a top-level function or a ``functools.partial`` of one, so it pickles) plus the :class:`EngineSpec`
that builds the engine (name, model, options). Locally the task calls ``fn`` with the engine already
loaded in this process; the Ray executor (:mod:`jobs.ray_executor`) ships ``fn`` and the spec to its
workers, each of which builds one engine from the spec. Progress notes written with :func:`note`
reach the bar from a local run and are dropped on a worker; counts a batch reports in
``BatchResult.counts`` (e.g. tokens) are summed by the runner wherever the batch ran.
"""

from __future__ import annotations

import contextvars
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
    counts: dict[str, int] = field(default_factory=dict)  # e.g. {"completion_tokens": …}: summed into JobStats.counts


@dataclass(frozen=True)
class EngineSpec:
    """How to build an engine anywhere (a picklable recipe): the registered back-end name (or
    ``module:Class``), the model and the constructor options (``engines.engine_options``)."""

    name: str
    model: str
    options: dict = field(default_factory=dict)

    def load(self):
        from engines import load_engine

        return load_engine(self.name, self.model, **self.options)


@dataclass
class EngineTask:
    """A per-batch function that needs an engine, in a form other processes can run:
    ``fn(engine, batch) -> records | BatchResult`` (top-level or a ``functools.partial`` of a top-level
    function: it is pickled) and the ``spec`` a worker builds its engine from. ``engine``, the engine
    already loaded in this process (if any), is used by a local run and never pickled. Calling the task
    with a batch runs it here (loading the engine from ``spec`` on first use when none was given)."""

    fn: Callable[[Any, list], Any]
    spec: EngineSpec | None = None
    engine: Any = None

    def __call__(self, batch: list):
        if self.engine is None:
            if self.spec is None:
                raise ValueError("EngineTask has neither an engine nor an engine spec")
            self.engine = self.spec.load()
        return self.fn(self.engine, batch)

    def __getstate__(self):
        return {"fn": self.fn, "spec": self.spec, "engine": None}


_NOTE: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("jobs_runner_note", default=None)


def note(text: str) -> None:
    """Show ``text`` on the progress bar of the running job (a local run); a no-op on a remote worker."""
    show = _NOTE.get()
    if show is not None:
        show(text)


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
    counts: dict[str, int] = field(default_factory=dict)  # the batches' BatchResult.counts, summed


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
    status: Callable[[dict], str] | None = None,
    executor: Executor | None = None,
    skipped_file: bool = False,
    close: bool = True,
) -> JobStats:
    """Process every item of ``items`` not yet recorded in ``run``, ``chunk_size`` at a time.

    ``process(batch)`` turns a list of items into their records (a list of dicts, appended in one
    write) or a :class:`BatchResult`. ``id_of(item)`` is the id its record will carry (default
    ``item.id``). ``progress`` shows a bar (``desc``, ``unit``) over all items, starting at those
    already done; ``process`` may write notes on it with :func:`note`. ``status(counts)``, if given,
    is shown on the bar after every saved batch (``counts``: the batches' ``BatchResult.counts`` so far). ``executor`` runs the batches
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
    written, batches, skipped, counts, results = 0, 0, [], {}, None
    token = _NOTE.set(bar.note)
    try:
        done = run.done_ids()
        todo = [item for item in items if id_of(item) not in done]
        bar.start(len(items), len(items) - len(todo))
        chunks = [todo[i : i + chunk_size] for i in range(0, len(todo), chunk_size)]
        results = executor.map(process, chunks)
        for batch, result in results:
            if not isinstance(result, BatchResult):
                result = BatchResult(list(result))
            run.append(result.records)
            written += len(result.records)
            skipped += result.skipped
            for key, value in result.counts.items():
                counts[key] = counts.get(key, 0) + value
            batches += 1
            bar.update(len(batch))
            if status is not None:
                bar.note(status(counts))
        run.commit()  # an --overwrite run with nothing to do still replaces the old run (by an empty one)
    except BaseException:
        bar.close()
        run.close()
        raise
    finally:
        _NOTE.reset(token)
        if hasattr(results, "close"):  # a generator left early (an error): let the executor stop its workers now
            results.close()
    bar.close()
    if close:
        run.close()
    if skipped_file:
        write_skipped(run.path, skipped)
    return JobStats(items=len(items), already_done=len(items) - len(todo), todo=len(todo), written=written,
                    skipped=skipped, batches=batches, seconds=time.monotonic() - start, counts=counts)
