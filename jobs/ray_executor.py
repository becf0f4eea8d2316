"""The Ray executor: a run's batches sharded over a pool of Ray workers, each owning one engine.

    executor = RayExecutor(num_workers=2)              # a local cluster, or RAY_ADDRESS / address="auto"
    run_job(run, items, EngineTask(fn, spec), chunk_size=8, executor=executor)

Every worker is a Ray actor that builds its engine once from the task's :class:`~jobs.runner.EngineSpec`
(transformers on CPU here; vLLM on GPU nodes is the intended large-scale setup) and then runs
``fn(engine, batch)`` on the batches it is handed. ``ray.util.ActorPool.map_unordered`` hands out the
batches as workers come free and streams the results back as they finish; the driver (the process
that called :func:`~jobs.runner.run_job`) alone appends them to the run directory, so the run stays
resumable exactly as a local one: a rerun, with any number of workers, does what is not yet recorded.

Fault tolerance is Ray's: a worker process that dies (killed, out of memory, a crash in native code)
is restarted — it rebuilds its engine — and the batch it was running is retried
(``max_restarts`` / ``max_task_retries``, :data:`RETRIES` times), so nothing is lost or written twice.
An exception raised by ``fn`` itself is not retried: it stops the run with that exception, as a local
run would.

Resources: each worker asks for ``min(1, cluster CPUs / workers)`` CPUs (fractional when asking for
more workers than CPUs, so the pool never waits on CPUs it cannot get) and ``num_gpus`` GPUs. A local
cluster is started with ``num_cpus`` = this machine's cores. ``ray`` is imported only when an executor
is made: without it, :class:`RayMissingError` says how to install it.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

from jobs.runner import EngineTask

RETRIES = 3  # restarts of a dead worker, and retries of the batch it was running
INSTALL_HINT = "--executor ray needs the ray package: pip install 'cai-toolkit[ray]'"


class RayMissingError(ImportError):
    """``--executor ray`` without the ``ray`` package."""


class RayExecutorError(RuntimeError):
    """A worker could not be started or kept dying; the message says which and why."""


def import_ray():
    try:
        import ray
        import ray.util
    except ImportError:
        raise RayMissingError(INSTALL_HINT) from None
    return ray


class _Worker:
    """One Ray actor: builds its engine from the spec once, then runs batches."""

    def __init__(self, task: EngineTask):
        self.fn = task.fn
        self.engine = task.spec.load()

    def run(self, index: int, batch: list) -> tuple[int, Any]:
        return index, self.fn(self.engine, batch)

    def ready(self) -> bool:
        return True


class RayExecutor:
    """``map(task, batches)`` over ``num_workers`` Ray actors (default: one per CPU of the cluster,
    at most one per batch). ``address``: ``None`` starts a local cluster (or joins ``$RAY_ADDRESS``
    when set), ``"auto"`` joins the cluster started on this machine by ``ray start --head``,
    ``"ray://host:10001"`` a remote one. ``num_gpus`` per worker (e.g. 1 for vLLM on GPU nodes)."""

    def __init__(self, num_workers: int | None = None, address: str | None = None, *, num_gpus: float = 0):
        if num_workers is not None and num_workers < 1:
            raise ValueError(f"--num-workers must be ≥ 1, got {num_workers}")
        self.ray = import_ray()
        self.num_workers, self.address, self.num_gpus = num_workers, address, num_gpus

    def connect(self) -> None:
        """Start or join the cluster, unless this process already did."""
        ray = self.ray
        if ray.is_initialized():
            return
        if self.address is None and not os.environ.get("RAY_ADDRESS"):
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False)
        else:
            ray.init(address=self.address)

    def map(self, process, batches: Sequence[list]) -> Iterator[tuple[list, Any]]:
        if not isinstance(process, EngineTask) or process.spec is None:
            raise TypeError("the Ray executor runs an EngineTask with an engine spec (a stage's picklable per-batch function)")
        if not batches:
            return
        ray = self.ray
        from ray.util import ActorPool

        self.connect()
        cpus = float(ray.cluster_resources().get("CPU", 1.0)) or 1.0
        workers = min(self.num_workers or max(1, int(cpus)), len(batches))
        actor = ray.remote(_Worker).options(num_cpus=min(1.0, cpus / workers), num_gpus=self.num_gpus,
                                            max_restarts=RETRIES, max_task_retries=RETRIES)
        actors = [actor.remote(process) for _ in range(workers)]
        try:
            pool = ActorPool(actors)
            results = pool.map_unordered(lambda a, job: a.run.remote(*job), list(enumerate(batches)))
            while True:
                try:
                    index, result = next(results)
                except StopIteration:
                    return
                except ray.exceptions.RayTaskError as exc:  # fn raised: the run stops with that error
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, BaseException):
                        raise cause from None
                    raise
                except ray.exceptions.RayActorError as exc:
                    raise RayExecutorError(f"a Ray worker died and could not be brought back ({RETRIES} restarts): {exc}") from None
                yield batches[index], result
        finally:
            for a in actors:
                ray.kill(a)


def make_executor(config) -> RayExecutor | None:
    """The executor a command's :class:`jobs.options.ExecutorOptions` name (``None``: local)."""
    if getattr(config, "executor", "local") != "ray":
        return None
    return RayExecutor(config.num_workers, config.ray_address)
