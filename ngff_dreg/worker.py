"""Per-process set-up for dask workers running ITK tasks.

* ITK's lazy module loading races when several threads first touch ``itk``:
  :func:`prepare_worker` loads what the tasks need before they run.
* ITK uses every core per filter by default; with several dask threads per
  process that oversubscribes the machine. Each task gets
  ``cores / concurrent tasks`` ITK threads (1 when a worker runs one task per
  core, dask's default).
"""

from __future__ import annotations

import gc
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from ngff_dreg._pickling import register_module_reducers
from ngff_dreg.itk_bridge import preload_itk, set_itk_threads

__all__ = [
    "prepare_worker",
    "ItkWorkerPlugin",
    "itk_threads_for_task",
    "warm_up_workers",
    "worker_spawn_environ",
    "worker_spawn_settings",
]

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_configured: int | None = None
_loaded_all = False
_loaded: set[str] = set()


def itk_threads_for_task(requested: int | None = None) -> int:
    """ITK threads a task on this worker should use.

    ``requested`` wins when given. Otherwise: 1 on a dask worker (each of its
    threads runs one task on one core), and every core outside dask.
    """
    if requested:
        return max(1, int(requested))
    if _in_dask_worker():
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def _in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def prepare_worker(itk_threads: int | None = None, modules: Sequence[str] | None = None) -> None:
    """Load ITK's modules and set its thread count, once per process (idempotent).

    ``modules``: only the ITK names a task needs (e.g. a method's
    ``itk_modules``); ``None`` loads everything ngff-dreg uses. Loading all of
    ITK takes several seconds per process, most of it in the registration
    framework that only the global stage and the ITK engines need.
    """
    global _configured, _loaded_all
    n = itk_threads_for_task(itk_threads)
    wanted = None if modules is None else tuple(modules)
    if _configured == n and (_loaded_all or (wanted is not None and set(wanted) <= _loaded)):
        return
    with _lock:
        register_module_reducers()
        # ITK's SWIG modules create a great many Python objects while they load;
        # the cyclic garbage collector scanning them again and again took ~15 %
        # of the load time. Nothing they create is garbage.
        collecting = gc.isenabled()
        gc.disable()
        try:
            if wanted is None:
                preload_itk()
                _loaded_all = True
            elif not _loaded_all:
                import itk

                for name in wanted:
                    if name not in _loaded:
                        getattr(itk, name)
                        _loaded.add(name)
        finally:
            if collecting:
                gc.enable()
        if _in_dask_worker():
            # They live as long as the process: keep them out of later full
            # collections, which otherwise take seconds each (one runs when the
            # worker shuts down: closing a cluster took 2.7 s instead of 0.3 s).
            gc.freeze()
        set_itk_threads(n)
        _configured = n
        logger.debug("ITK ready with %d thread(s) in pid %d", n, os.getpid())


#: glibc malloc settings for worker processes we start. ``distributed`` sets
#: ``MALLOC_TRIM_THRESHOLD_=65536`` so that freed memory goes back to the OS at
#: once; setting it also freezes glibc's mmap threshold at 128 KiB, so every
#: NumPy temporary above that is a fresh ``mmap`` whose pages fault in on first
#: touch. That made the B-spline and reduction tasks 1.2-3x slower. With both
#: thresholds at glibc's largest dynamic mmap threshold (32 MiB), arrays up to
#: 32 MiB reuse heap memory and bigger ones are still mapped and unmapped.
WORKER_MALLOC_ENV = {
    "MALLOC_TRIM_THRESHOLD_": str(32 << 20),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
}


def worker_spawn_environ() -> dict[str, str]:
    """``distributed.nanny.pre-spawn-environ`` for the local clusters ngff-dreg starts.

    Dask's own settings with :data:`WORKER_MALLOC_ENV` on top. Use as
    ``dask.config.set({"distributed.nanny.pre-spawn-environ": worker_spawn_environ()})``
    around the cluster's creation.
    """
    import dask
    import distributed  # noqa: F401  (registers its configuration defaults)

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.update(WORKER_MALLOC_ENV)
    return {str(k): str(v) for k, v in env.items()}


@contextmanager
def worker_spawn_settings() -> Iterator[None]:
    """Context in which new local-cluster workers get :data:`WORKER_MALLOC_ENV`.

    ``distributed`` takes a pre-spawn variable from the client's environment
    before its configuration, and every nanny copies its pre-spawn variables
    into that environment; so an earlier cluster in the same process would
    otherwise impose its settings. Both are set here and restored on exit.
    """
    import dask

    saved = {k: os.environ.get(k) for k in WORKER_MALLOC_ENV}
    os.environ.update(WORKER_MALLOC_ENV)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_spawn_environ()}):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def warm_up_workers(
    client: Any, itk_threads: int | None = None, modules: Sequence[str] | None = None
) -> int:
    """Start :func:`prepare_worker` on every worker of ``client`` without waiting for it.

    Loading ITK's modules takes seconds per process. Started as soon as the
    workers are up, it overlaps with the client's own work and with the first
    task, which would otherwise load them on one worker while the others wait
    for their first task to do the same. Returns the number of workers asked.
    """
    from distributed import fire_and_forget

    workers = list(client.scheduler_info().get("workers", {}))
    futures = [
        client.submit(
            prepare_worker,
            itk_threads,
            modules,
            workers=[address],
            allow_other_workers=False,
            pure=False,
        )
        for address in workers
    ]
    fire_and_forget(futures)
    return len(futures)


class ItkWorkerPlugin(WorkerPlugin):
    """A ``distributed`` worker plugin that runs :func:`prepare_worker` at start-up.

    Register with ``client.register_plugin(ItkWorkerPlugin())``.
    """

    name = "ngff-dreg-itk"

    def __init__(self, itk_threads: int | None = None) -> None:
        self.itk_threads = itk_threads

    def setup(self, worker: Any) -> None:
        """Called by ``distributed`` when the plugin is registered on a worker."""
        prepare_worker(self.itk_threads or 1)

    def teardown(self, worker: Any) -> None:
        """Nothing to release."""
