"""The client context, the settings it applies on the workers, and progress bars.

(The LocalCluster's worker processes themselves: tests/test_worker.py.)
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from typing import Any

import cloudpickle
import pytest

from ngff_dreg import config
from ngff_dreg.cluster import client_context, progress_bar, share_settings
from ngff_dreg.errors import ConfigError, ScheduleError
from ngff_dreg.io.storage.chunk_cache import process_cache

# The workers cannot import this module: functions run there travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.mark.parametrize("spec", ["local:0", "local:-2", "local:many"])
def test_bad_local_specs(spec: str) -> None:
    with ExitStack() as stack, pytest.raises(ScheduleError, match="local:N"):
        client_context(spec, stack)


def test_a_client_is_used_as_is() -> None:
    sentinel = object()
    with ExitStack() as stack:
        assert client_context(sentinel, stack) is sentinel


def test_progress_bars() -> None:
    quiet = progress_bar(False, 3, "stages")
    quiet.update(1)
    quiet.close()
    bar = progress_bar(True, 2, "blocks", unit="block")
    bar.update(2)
    bar.close()


# -- settings on the workers -------------------------------------------------------------


def _worker_view() -> Any:
    """What a worker process reads of the settings (run there through ``client.run``)."""
    return (config.read_attempts(), process_cache().max_bytes, os.getpid())


def _make_process_cache() -> int:
    return process_cache().max_bytes


@pytest.mark.cluster
def test_a_setting_of_the_client_holds_in_every_worker_process(
    dask_client: Any, ngff_config: Any
) -> None:
    """Even a budget read when the process first needs it: the workers made their caches."""
    # each worker's chunk cache exists, at the default budget
    assert set(dask_client.run(_make_process_cache).values()) == {256_000_000}
    ngff_config({"io.read-attempts": 3, "io.chunk-cache-mb": 2})
    assert share_settings(dask_client)
    seen = dask_client.run(_worker_view)
    assert len(seen) == 2
    assert {v[:2] for v in seen.values()} == {(3, 2_000_000)}
    assert os.getpid() not in {v[2] for v in seen.values()}   # other processes


@pytest.mark.cluster
def test_client_context_shares_the_settings_with_a_given_client(
    dask_client: Any, ngff_config: Any
) -> None:
    ngff_config({"io.chunk-inventory": False})
    with ExitStack() as stack:
        assert client_context(dask_client, stack) is dask_client
    assert set(dask_client.run(config.chunk_inventory).values()) == {"off"}


@pytest.mark.cluster
def test_a_worker_that_joins_later_gets_the_settings() -> None:
    import dask
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        with dask.config.set({"ngff-dreg.io.read-backoff": 0.125}):
            assert share_settings(client)
            assert share_settings(client)   # again: the same plugin, replaced
        # The client is back at the default: only the plugin can tell the new worker.
        cluster.scale(2)
        client.wait_for_workers(2, timeout=120)
        seen = client.run(config.read_backoff)
    assert list(seen.values()) == [0.125, 0.125]


def test_a_worker_that_joins_later_gets_the_host_cache(tmp_path: Any) -> None:
    """Issue #23 item 5: a run's host cache is opened on workers that join mid-run."""
    import uuid

    import dask
    from distributed import Client, LocalCluster

    from ngff_dreg.cluster import HostCachePlugin, share_host_cache, unshare_host_cache
    from ngff_dreg.io.storage.chunk_cache import close_host_cache, host_cache

    def opened(token: str) -> bool:
        return host_cache(token) is not None

    token = uuid.uuid4().hex
    with dask.config.set({"ngff-dreg.io.host-cache-dir": str(tmp_path)}), \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        share_settings(client)
        assert share_host_cache(client, token)
        assert list(client.run(opened, token).values()) == [True]
        cluster.scale(2)
        client.wait_for_workers(2, timeout=120)
        assert list(client.run(opened, token).values()) == [True, True]  # the late one too
        unshare_host_cache(client, token)
        client.run(close_host_cache, token)
        assert sorted(client.run(opened, token).values()) == [False, False]
        plugins = client.run(lambda dask_worker: list(dask_worker.plugins))
        assert all(HostCachePlugin.name_for(token) not in p for p in plugins.values())
    assert not share_host_cache("threads", token)


def test_a_worker_in_the_clients_process_keeps_its_settings(ngff_config: Any) -> None:
    from distributed import Client, LocalCluster

    ngff_config({"io.read-attempts": 5})
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        assert share_settings(client)
        seen = client.run(lambda: (config.read_attempts(), config._STATE.from_client))
    assert list(seen.values()) == [(5, False)]   # nothing applied over the client's own


@pytest.mark.cluster
def test_an_old_variable_of_the_client_reaches_the_workers(
    dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "_STATE", config._State())   # nothing warned yet
    monkeypatch.setenv("NGFF_DREG_READ_MAX_WAIT", "3")
    try:
        with pytest.warns(config.DeprecatedSettingWarning, match="NGFF_DREG_READ_MAX_WAIT"):
            assert share_settings(dask_client)
        assert set(dask_client.run(config.read_max_wait).values()) == {3.0}
    finally:
        monkeypatch.delenv("NGFF_DREG_READ_MAX_WAIT")
        share_settings(dask_client)


def test_a_bad_setting_fails_before_a_cluster_starts(ngff_config: Any) -> None:
    ngff_config({"io.read-attempts": 0})
    with ExitStack() as stack, pytest.raises(ConfigError, match=r"ngff-dreg\.io\.read-attempts=0"):
        client_context("local:1", stack)


def test_only_distributed_clients_get_the_settings() -> None:
    assert share_settings("threads") is False
    assert share_settings(object()) is False
