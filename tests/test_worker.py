"""Worker set-up: the fire-and-forget ITK warm-up reaches every worker."""

from __future__ import annotations

import time

import pytest

from ngff_dreg import worker


def test_warm_up_runs_prepare_worker_on_every_worker(monkeypatch) -> None:
    distributed = pytest.importorskip("distributed")
    calls: list[str] = []
    # the task function may be pickled by value: record through the module
    monkeypatch.setattr(worker, "_test_calls", calls, raising=False)

    def fake_prepare(itk_threads=None, modules=None) -> None:
        worker._test_calls.append(distributed.get_worker().address)

    monkeypatch.setattr(worker, "prepare_worker", fake_prepare)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        n = worker.warm_up_workers(client)  # returns at once
        assert n == 2
        deadline = time.monotonic() + 30
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(calls) == sorted(client.scheduler_info()["workers"])


def test_local_cluster_workers_get_the_malloc_settings() -> None:
    """Workers of the cluster register() starts keep glibc's mmap threshold high.

    (distributed's MALLOC_TRIM_THRESHOLD_ alone pins it at 128 KiB, which made
    NumPy-heavy block and reduction tasks up to 3x slower.)
    """
    import os
    from contextlib import ExitStack

    from ngff_dreg.cluster import client_context

    env = worker.worker_spawn_environ()
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(32 << 20)
    assert env["MALLOC_TRIM_THRESHOLD_"] == str(32 << 20)
    assert env.get("OMP_NUM_THREADS") == "1"  # dask's other settings are kept
    # a value left in the environment by an earlier cluster must not win
    os.environ["MALLOC_TRIM_THRESHOLD_"] = "65536"
    with ExitStack() as stack:
        client = client_context("local:1", stack)
        seen = client.run(
            lambda: {k: os.environ.get(k) for k in worker.WORKER_MALLOC_ENV}
        )
    assert list(seen.values()) == [worker.WORKER_MALLOC_ENV]
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # the client's is restored


def test_itk_loads_with_the_garbage_collector_paused(monkeypatch) -> None:
    import gc

    seen: list[bool] = []
    monkeypatch.setattr(worker, "preload_itk", lambda: seen.append(gc.isenabled()))
    monkeypatch.setattr(worker, "set_itk_threads", lambda n: None)
    monkeypatch.setattr(worker, "_configured", None)
    assert gc.isenabled()
    worker.prepare_worker(3)
    assert seen == [False]
    assert gc.isenabled()


def test_a_worker_freezes_what_itk_loaded(monkeypatch) -> None:
    """On a dask worker the loaded objects leave the collector (gc.freeze); elsewhere not."""
    import gc

    frozen: list[bool] = []
    monkeypatch.setattr(worker, "preload_itk", lambda: None)
    monkeypatch.setattr(worker, "set_itk_threads", lambda n: None)
    monkeypatch.setattr(gc, "freeze", lambda: frozen.append(True))
    for on_worker in (False, True):
        monkeypatch.setattr(worker, "_configured", None)
        monkeypatch.setattr(worker, "_in_dask_worker", lambda on=on_worker: on)
        worker.prepare_worker(2)
    assert frozen == [True]


def test_prepare_worker_loads_only_the_named_modules(monkeypatch) -> None:
    """modules=... touches just those ITK names; a later full preload still runs."""
    import sys

    touched: list[str] = []
    full: list[bool] = []

    class FakeItk:
        def __getattr__(self, name: str) -> None:
            if not name.startswith("__"):  # the import system's own lookups
                touched.append(name)

    monkeypatch.setitem(sys.modules, "itk", FakeItk())
    monkeypatch.setattr(worker, "preload_itk", lambda: full.append(True))
    monkeypatch.setattr(worker, "set_itk_threads", lambda n: None)
    monkeypatch.setattr(worker, "_configured", None)
    monkeypatch.setattr(worker, "_loaded_all", False)
    monkeypatch.setattr(worker, "_loaded", set())
    worker.prepare_worker(1, modules=("Image", "BSplineTransform"))
    worker.prepare_worker(1, modules=("Image",))  # already there: nothing to do
    assert touched == ["Image", "BSplineTransform"] and not full
    worker.prepare_worker(1)
    assert full == [True]
    worker.prepare_worker(1, modules=("WarpImageFilter",))  # covered by the full load
    assert touched == ["Image", "BSplineTransform"]


def test_the_itk_worker_plugin_registers_and_prepares_every_worker() -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster, distributed.Client(cluster) as client:
        client.register_plugin(worker.ItkWorkerPlugin(itk_threads=1))
        plugins = client.run(lambda dask_worker: sorted(dask_worker.plugins))
        assert all(worker.ItkWorkerPlugin.name in names for names in plugins.values())
