"""The dask client a run uses, and computing a planned stage on it with progress bars.

A run's client applies its ngff-dreg settings (:mod:`ngff_dreg.config`) on
every worker, workers that join later included: :func:`client_context` (and
``apply_transform``, ``transform_table_file``) call :func:`share_settings`,
which registers a :class:`SettingsPlugin`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any, Protocol

from distributed.diagnostics.plugin import WorkerPlugin

from ngff_dreg import config
from ngff_dreg.engine import RegistrationSchedule
from ngff_dreg.errors import ScheduleError
from ngff_dreg.interfaces import RegistrationResult
from ngff_dreg.io.storage.chunk_cache import cache_enabled, machine_identity
from ngff_dreg.locality import machines_of
from ngff_dreg.methods.bspline import NUMPY_ENGINE_ITK
from ngff_dreg.worker import warm_up_workers, worker_spawn_settings

__all__ = [
    "ProgressBar",
    "SettingsPlugin",
    "HostCachePlugin",
    "ChunkExchangePlugin",
    "share_chunk_exchange",
    "unshare_chunk_exchange",
    "worker_machines",
    "share_host_cache",
    "unshare_host_cache",
    "client_context",
    "compute_stage",
    "compute_with_progress",
    "progress_bar",
    "share_settings",
    "worker_addresses",
]

logger = logging.getLogger(__name__)


def client_context(client: Any, stack: ExitStack) -> Any:
    """The dask client to use: the given one, an address, or a new LocalCluster.

    Parameters
    ----------
    client:
        A ``distributed.Client`` (used as is), a scheduler address
        (``"tcp://host:8786"``), ``"local:N"`` (N local single-threaded worker
        processes) or ``None`` (one per core).
    stack:
        Clusters and clients started here close with it.

    A ``distributed`` client gets this process's ngff-dreg settings applied on
    its workers (:func:`share_settings`).

    Raises
    ------
    ScheduleError
        A ``local:N`` with N < 1.
    ConfigError
        A setting has an unusable value (before any cluster starts).

    """
    from distributed import Client, LocalCluster

    config.settings()  # a bad value fails here, before a cluster starts
    n_workers: int | None = None
    if client is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        n_workers = max(1, len(affinity) if affinity else os.cpu_count() or 1)
    elif isinstance(client, str) and client.startswith("local:"):
        try:
            n_workers = int(client.split(":", 1)[1])
        except ValueError:
            n_workers = 0
        if n_workers < 1:
            raise ScheduleError(f"--scheduler {client!r}: expected local:N with N >= 1")
    if n_workers is not None:
        # One single-threaded process per core: ITK then runs one thread per task.
        with worker_spawn_settings():
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",
                )
            )
        client = stack.enter_context(Client(cluster, set_as_default=False))
        # What the default block method needs of ITK loads in every worker at
        # once; the global stage's worker loads the rest of it.
        warm_up_workers(client, modules=NUMPY_ENGINE_ITK)
    elif isinstance(client, str):
        client = stack.enter_context(Client(client, set_as_default=False))
    share_settings(client)
    link = getattr(client, "dashboard_link", None)
    if link:
        logging.getLogger("ngff_dreg.dashboard").info("dask dashboard: %s", link)
    return client


class SettingsPlugin(WorkerPlugin):
    """Applies a client's ngff-dreg settings on each worker, now and when one joins.

    Registered by :func:`share_settings` under one name, so registering it
    again (the next run, other values) replaces it on every worker.

    Parameters
    ----------
    values:
        :func:`ngff_dreg.config.settings` of the client.
    origin:
        :data:`ngff_dreg.config.PROCESS_ID` of the client's process.

    """

    name = "ngff-dreg-settings"

    def __init__(self, values: Mapping[str, Any], origin: str) -> None:
        self.values = dict(values)
        self.origin = origin

    def setup(self, worker: Any) -> None:
        """Called by ``distributed`` on each worker: put the values in force there."""
        config.apply_settings(self.values, self.origin)


def share_settings(client: Any = None) -> bool:
    """Apply this process's ngff-dreg settings on every worker of ``client``.

    Workers that join the cluster later get them when they start. Calling it
    again replaces the values (idempotent for the same values).

    Parameters
    ----------
    client:
        A ``distributed.Client``; ``None``: the default client, if there is
        one (dask computes on it); anything else (a scheduler name such as
        ``"threads"``) runs in this process, which has the settings already.

    Returns
    -------
    bool
        True when the settings were sent to a cluster.

    Raises
    ------
    ConfigError
        A setting has an unusable value.

    """
    from distributed import Client, default_client

    if client is None:
        try:
            client = default_client()
        except ValueError:  # no client: dask computes in this process
            return False
    if not isinstance(client, Client):
        return False
    plugin = SettingsPlugin(config.settings(), config.PROCESS_ID)
    client.register_plugin(plugin, name=SettingsPlugin.name)
    return True


class HostCachePlugin(WorkerPlugin):
    """Opens a run's host chunk cache on each worker, now and on every worker that joins.

    Without it a worker that joins the cluster in the middle of a run (an
    adaptive cluster scaling up, a restarted worker) has no host cache and
    fetches every chunk again from the store.

    Parameters
    ----------
    token:
        The run's cache token (:func:`ngff_dreg.io.storage.chunk_cache.open_host_cache`).

    """

    def __init__(self, token: str) -> None:
        self.token = token

    @staticmethod
    def name_for(token: str) -> str:
        """The plugin's name on the cluster for ``token`` (one per run)."""
        return f"ngff-dreg-host-cache-{token}"

    def setup(self, worker: Any) -> None:
        """Called by ``distributed`` on each worker: open the host cache there."""
        from ngff_dreg.io.storage.chunk_cache import open_host_cache

        open_host_cache(self.token)


def share_host_cache(client: Any, token: str) -> bool:
    """Open run ``token``'s host cache on every worker of ``client``, late joiners included.

    Returns False when ``client`` is not a ``distributed`` client or refused
    the plugin (the caller then opens it with ``client.run``).
    """
    from distributed import Client

    if not isinstance(client, Client):
        return False
    try:
        client.register_plugin(HostCachePlugin(token), name=HostCachePlugin.name_for(token))
    except Exception as exc:  # an old scheduler, a dying cluster
        logger.warning("host chunk cache plugin not registered: %s", exc)
        return False
    return True


def unshare_host_cache(client: Any, token: str) -> None:
    """Stop opening run ``token``'s host cache on joining workers (best effort)."""
    try:
        client.unregister_worker_plugin(HostCachePlugin.name_for(token))
    except Exception as exc:  # already gone, or the cluster is closing
        logger.debug("host chunk cache plugin not unregistered: %s", exc)


class ChunkExchangePlugin(WorkerPlugin):
    """Installs the chunk exchange between machines on each worker, joiners included.

    See :mod:`ngff_dreg.io.storage.chunk_exchange`. Registered under one name,
    so registering it again (the next stage, other workers) replaces it.

    Parameters
    ----------
    peers:
        Addresses of the workers that keep the exchange's directory.

    """

    name = "ngff-dreg-chunk-exchange"

    def __init__(self, peers: tuple[str, ...]) -> None:
        self.peers = tuple(peers)

    def setup(self, worker: Any) -> None:
        """Called by ``distributed`` on each worker: install the exchange there."""
        from ngff_dreg.io.storage.chunk_exchange import install

        install(worker, self.peers)

    def teardown(self, worker: Any) -> None:
        """Called by ``distributed`` when the plugin is removed: stop asking peers."""
        from ngff_dreg.io.storage.chunk_exchange import uninstall

        uninstall()


def share_chunk_exchange(client: Any, machines: tuple[tuple[str, ...], ...]) -> bool:
    """Exchange chunks between the machines of ``client``'s cluster, or stop doing so.

    Installed when ``ngff-dreg.cluster.chunk-exchange`` is on, the host cache
    is on (the exchange serves pieces from it) and ``machines`` (workers by
    machine, :func:`worker_machines`) holds more than one machine. Returns
    True when installed (remove it with :func:`unshare_chunk_exchange`).
    """
    from distributed import Client

    if not isinstance(client, Client):
        return False
    wanted = (len(machines) > 1 and config.chunk_exchange() and cache_enabled()
              and config.host_cache_bytes() > 0)
    if not wanted:
        return False
    peers = tuple(sorted(w for m in machines for w in m))
    try:
        client.register_plugin(ChunkExchangePlugin(peers), name=ChunkExchangePlugin.name)
    except Exception as exc:  # an old scheduler, a dying cluster: each machine fetches
        logger.warning("chunk exchange not installed: %s", exc)
        return False
    logger.info("chunk exchange between %d machines (%d workers)", len(machines), len(peers))
    return True


def unshare_chunk_exchange(client: Any) -> None:
    """Remove the chunk exchange from ``client``'s workers (best effort; none: nothing)."""
    try:
        client.unregister_worker_plugin(ChunkExchangePlugin.name)
    except Exception as exc:  # never installed, or the cluster is closing
        logger.debug("chunk exchange plugin not unregistered: %s", exc)


def worker_machines(client: Any) -> tuple[tuple[str, ...], ...]:
    """The addresses of ``client``'s workers grouped by machine (empty if unknown).

    A machine is the workers sharing a host cache
    (:func:`~ngff_dreg.io.storage.chunk_cache.machine_identity`, asked of each
    worker under the settings in force there).
    """
    try:
        identities = client.run(machine_identity)
    except Exception:  # not a distributed client, or no workers
        return ()
    return machines_of(identities)


def worker_addresses(client: Any) -> tuple[str, ...]:
    """The addresses of a ``distributed`` client's workers, sorted (empty if none or unknown)."""
    try:
        info = client.scheduler_info()
    except Exception:  # not a distributed client, or no scheduler
        return ()
    return tuple(sorted(info.get("workers", {})))


class ProgressBar(Protocol):
    """What the pipeline uses of a ``tqdm`` bar."""

    def update(self, n: int = 1) -> Any:
        """Advance by ``n``."""
        ...

    def close(self) -> None:
        """Finish the bar."""
        ...


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, total: int, desc: str, unit: str = "stage") -> ProgressBar:
    """A ``tqdm`` bar (terminal or Jupyter), or one that shows nothing."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    bar: ProgressBar = tqdm(total=total, desc=desc, unit=unit, leave=True)
    return bar


def compute_stage(
    client: Any, schedule: RegistrationSchedule, progress: bool, desc: str
) -> RegistrationResult:
    """Compute a planned block stage on ``client`` with a per-block progress bar.

    The first block task that raises (an input that cannot be read, see
    :data:`ngff_dreg.engine.STOP_RUN_ERRORS`) stops the stage: its error is
    raised at once, and the stage's futures are released, so its other tasks
    stop using the cluster and the scheduler forgets the failed ones. A rerun on
    the same client then computes them afresh instead of getting the old
    error back.
    """
    result: RegistrationResult = compute_with_progress(
        client, schedule.block_results, schedule.registration_result, progress, desc)
    return result


def compute_with_progress(client: Any, blocks: list[Any], final: Any, progress: bool,
                          desc: str) -> Any:
    """Compute ``final`` on ``client``, counting the ``blocks`` tasks (among its inputs) done.

    As :func:`compute_stage` (of which this is the body): the first block that
    raises stops it, and every future of the compute is released on an error.
    Returns ``final``'s value.
    """
    from distributed import as_completed

    futures = client.compute([*blocks, final])
    block_futures, final_future = futures[:-1], futures[-1]
    bar = progress_bar(progress, len(block_futures), desc, unit="block")
    try:
        for fut in as_completed(block_futures, loop=client.loop):
            if fut.status == "error":
                fut.result()  # raises the block's error
            bar.update(1)
        result = final_future.result()
    except BaseException:
        # Releasing (not Client.cancel, whose cascade over the reduction's
        # intermediate tasks trips an assertion in the scheduler) lets the
        # scheduler forget the stage's tasks and stop the ones still queued.
        for fut in futures:
            fut.release()
        raise
    finally:
        bar.close()
    return result
