"""ngff_dreg.config: settings in dask's configuration, checked getters, deprecated variables."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import pytest
import yaml

from ngff_dreg import config
from ngff_dreg.errors import ConfigError, NgffDregError

OLD_NAMES = [s.old_name for s in config.SETTINGS.values() if s.old_name]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No deprecated variable set, nothing warned yet, dask's configuration restored after."""
    for name in OLD_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(config, "_STATE", config._State())
    saved = copy.deepcopy(dask.config.config)
    try:
        yield
    finally:
        dask.config.config.clear()
        dask.config.config.update(saved)


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter whose environment has ``env`` added."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("NGFF_DREG_", "DASK_NGFF_DREG"))}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**base, **env},
                          capture_output=True, text=True, timeout=120, check=True)


def test_the_defaults_file_lists_every_setting_with_a_comment() -> None:
    text = config.DEFAULTS_FILE.read_text()
    tree = yaml.safe_load(text)["ngff-dreg"]
    keys = {f"{group}.{name}" for group, names in tree.items() for name in names}
    assert keys == set(config.SETTINGS)
    lines = text.splitlines()
    for key in keys:
        name = key.rsplit(".", 1)[1]
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{name}:"))
        assert lines[at - 1].strip().startswith("#"), f"{key} has no comment above it"


def test_the_defaults_are_in_dask_config() -> None:
    assert dask.config.get("ngff-dreg.io.chunk-cache-mb") == 256
    assert dask.config.get("ngff-dreg.io.chunk-inventory") == "auto"
    assert config.settings() == {
        "ngff-dreg.io.chunk-cache-mb": 256.0,
        "ngff-dreg.io.host-cache-mb": 4096.0,
        "ngff-dreg.io.host-cache-dir": None,
        "ngff-dreg.io.chunk-inventory": "auto",
        "ngff-dreg.io.read-attempts": 4,
        "ngff-dreg.io.read-backoff": 0.5,
        "ngff-dreg.io.read-max-wait": 8.0,
        "ngff-dreg.io.trace-dir": None,
        "ngff-dreg.output.lease-heartbeat": 10.0,
        "ngff-dreg.output.lease-stale-after": 30.0,
        "ngff-dreg.output.lease-max-wait": 86400.0,
        "ngff-dreg.output.store-chunks": 20000,
        "ngff-dreg.view.chromium": None,
        "ngff-dreg.cluster.locality": True,
        "ngff-dreg.cluster.chunk-exchange": True,
        "ngff-dreg.stage.slab-blocks": 20000,
    }


def test_the_getters_read_dask_config_at_each_call(tmp_path: Path) -> None:
    with dask.config.set({"ngff-dreg.io.chunk-cache-mb": 1.5, "ngff-dreg.io.host-cache-mb": 0,
                          "ngff-dreg.io.host-cache-dir": "~/cache",
                          "ngff-dreg.io.chunk-inventory": False,
                          "ngff-dreg.io.read-attempts": "7", "ngff-dreg.io.read-backoff": 0,
                          "ngff-dreg.io.read-max-wait": 2, "ngff-dreg.io.trace-dir": tmp_path}):
        assert config.chunk_cache_bytes() == 1_500_000
        assert config.host_cache_bytes() == 0
        assert config.host_cache_dir() == os.path.expanduser("~/cache")
        assert config.chunk_inventory() == "off"
        assert config.read_attempts() == 7
        assert config.read_backoff() == 0.0
        assert config.read_max_wait() == 2.0
        assert config.trace_dir() == str(tmp_path)
    assert config.read_attempts() == 4
    assert config.trace_dir() is None


@pytest.mark.parametrize(("value", "mode"), [
    ("auto", "auto"), (None, "auto"), (True, "on"), (1, "on"), ("yes", "on"), ("ON", "on"),
    (False, "off"), (0, "off"), ("false", "off"), ("0", "off"),
])
def test_chunk_inventory_spellings(value: Any, mode: str) -> None:
    with dask.config.set({"ngff-dreg.io.chunk-inventory": value}):
        assert config.chunk_inventory() == mode


@pytest.mark.parametrize(("key", "value"), [
    ("io.chunk-cache-mb", "lots"),
    ("io.chunk-cache-mb", -1),
    ("io.host-cache-mb", float("nan")),
    ("io.host-cache-mb", True),
    ("io.host-cache-dir", 12),
    ("io.chunk-inventory", "sometimes"),
    ("io.read-attempts", 0),
    ("io.read-attempts", 2.5),
    ("io.read-attempts", [3]),
    ("io.read-backoff", "-0.1"),
    ("io.read-max-wait", "inf"),
    ("io.trace-dir", 3.0),
])
def test_a_bad_value_is_an_error_naming_key_and_value(key: str, value: Any) -> None:
    with dask.config.set({f"ngff-dreg.{key}": value}), \
            pytest.raises(ConfigError) as err:
        config.get(key)
    assert isinstance(err.value, NgffDregError) and isinstance(err.value, ValueError)
    assert f"ngff-dreg.{key}={value!r}" in str(err.value)
    with dask.config.set({f"ngff-dreg.{key}": value}), pytest.raises(ConfigError):
        config.settings()   # what a run checks before it starts


def test_an_unknown_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="not an ngff-dreg setting"):
        config.get("io.chunk-cache")
    assert config.get("ngff-dreg.io.read-attempts") == 4   # the full key works too


def test_dask_environment_variables_set_them() -> None:
    out = _run("""
        from ngff_dreg import config
        print(config.read_attempts(), config.chunk_inventory(), config.trace_dir())
        """, DASK_NGFF_DREG__IO__READ_ATTEMPTS="9", DASK_NGFF_DREG__IO__CHUNK_INVENTORY="0",
        DASK_NGFF_DREG__IO__TRACE_DIR="/tmp/trace")
    assert out.stdout.split() == ["9", "off", "/tmp/trace"]
    assert config.SETTINGS["io.read-attempts"].env_name == "DASK_NGFF_DREG__IO__READ_ATTEMPTS"


def test_a_yaml_file_sets_them_and_sources_names_it(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text("ngff-dreg:\n  io:\n    read-backoff: 0.25\n")
    out = _run("""
        import dask
        from ngff_dreg import config
        with dask.config.set({"ngff-dreg.io.read-max-wait": 1}):
            for s in config.sources():
                print(s.key, s.value, s.source, sep="|")
        """, DASK_CONFIG=str(tmp_path), DASK_NGFF_DREG__IO__CHUNK_CACHE_MB="64",
        NGFF_DREG_READ_ATTEMPTS="3")
    rows = {k: (v, src) for k, v, src in (line.split("|") for line in out.stdout.splitlines())}
    assert rows["ngff-dreg.io.read-backoff"] == ("0.25", str(tmp_path / "mine.yaml"))
    assert rows["ngff-dreg.io.chunk-cache-mb"] == (
        "64.0", "DASK_NGFF_DREG__IO__CHUNK_CACHE_MB variable")
    assert rows["ngff-dreg.io.read-max-wait"] == ("1.0", "dask.config.set")
    assert rows["ngff-dreg.io.read-attempts"] == ("3", "NGFF_DREG_READ_ATTEMPTS (deprecated)")
    assert rows["ngff-dreg.io.host-cache-mb"] == ("4096.0", "default")


def test_an_old_variable_still_works_and_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGFF_DREG_READ_ATTEMPTS", "6")
    with pytest.warns(config.DeprecatedSettingWarning,
                      match="NGFF_DREG_READ_ATTEMPTS is deprecated.*ngff-dreg.io.read-attempts"):
        assert config.read_attempts() == 6
    assert issubclass(config.DeprecatedSettingWarning, FutureWarning)   # shown by default
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config.read_attempts() == 6   # warned once per process


def test_the_new_way_wins_over_an_old_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGFF_DREG_CHUNK_CACHE_MB", "1")
    with dask.config.set({"ngff-dreg.io.chunk-cache-mb": 20}), \
            pytest.warns(config.DeprecatedSettingWarning, match="ignored"):
        assert config.chunk_cache_bytes() == 20_000_000


def test_a_dask_variable_wins_even_at_the_default_value() -> None:
    out = subprocess.run(
        [sys.executable, "-W", "always", "-c",
         "from ngff_dreg import config; print(config.read_attempts())"],
        env={**os.environ, "DASK_NGFF_DREG__IO__READ_ATTEMPTS": "4",
             "NGFF_DREG_READ_ATTEMPTS": "7"},
        capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "4"
    assert "NGFF_DREG_READ_ATTEMPTS is deprecated and ignored" in out.stderr


def test_a_bad_old_variable_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGFF_DREG_READ_ATTEMPTS", "lots")
    with pytest.warns(config.DeprecatedSettingWarning), \
            pytest.raises(ConfigError, match=re.escape("NGFF_DREG_READ_ATTEMPTS (deprecated, "
                                                       "for ngff-dreg.io.read-attempts)='lots'")):
        config.read_attempts()


def test_an_empty_old_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGFF_DREG_IO_TRACE", "  ")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config.trace_dir() is None


def test_sources_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGFF_DREG_HOST_CACHE_MB", "10")
    with dask.config.set({"ngff-dreg.io.read-attempts": 2}), \
            pytest.warns(config.DeprecatedSettingWarning):
        got = {s.key: (s.value, s.source) for s in config.sources()}
    assert got["ngff-dreg.io.read-attempts"] == (2, "dask.config.set")
    assert got["ngff-dreg.io.host-cache-mb"] == (10.0, "NGFF_DREG_HOST_CACHE_MB (deprecated)")
    assert got["ngff-dreg.io.read-backoff"] == (0.5, "default")


def test_a_clients_settings_hold_on_a_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {**config.settings(), "ngff-dreg.io.read-attempts": 3}
    assert not config.apply_settings(values, origin=config.PROCESS_ID)   # the client itself
    assert config.read_attempts() == 4
    monkeypatch.setenv("NGFF_DREG_READ_BACKOFF", "9")   # the worker's own (deprecated) one
    assert config.apply_settings(values, origin="another process")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config.read_attempts() == 3
        assert config.read_backoff() == 0.5   # the client's value, not the worker's variable
    assert {s.source for s in config.sources()} == {"the run's client"}
    with pytest.raises(ConfigError, match="from the client"):
        config.apply_settings({"ngff-dreg.io.read-attempts": 0}, origin="another process")


def test_the_screenshot_browser_is_a_setting() -> None:
    assert config.chromium() is None
    with dask.config.set({"ngff-dreg.view.chromium": " /opt/chrome/chrome "}):
        assert config.chromium() == "/opt/chrome/chrome"
    with dask.config.set({"ngff-dreg.view.chromium": 3}), pytest.raises(ConfigError):
        config.chromium()


def test_slab_blocks_is_a_whole_number_of_blocks() -> None:
    from ngff_dreg.engine import MAX_BLOCKS

    assert config.slab_blocks() == MAX_BLOCKS
    with dask.config.set({"ngff-dreg.stage.slab-blocks": "12"}):
        assert config.slab_blocks() == 12
    for bad in (0, -3, 2.5, "many", True, None):
        with dask.config.set({"ngff-dreg.stage.slab-blocks": bad}), \
                pytest.raises(ConfigError, match=re.escape("ngff-dreg.stage.slab-blocks")):
            config.slab_blocks()


@pytest.mark.parametrize("key", ["cluster.locality", "cluster.chunk-exchange"])
def test_the_cluster_switches_take_words_and_refuse_others(key: str) -> None:
    getter = config.locality if key == "cluster.locality" else config.chunk_exchange
    for value, expected in ((False, False), ("off", False), ("0", False), ("yes", True),
                            (True, True)):
        with dask.config.set({f"ngff-dreg.{key}": value}):
            assert getter() is expected
    with dask.config.set({f"ngff-dreg.{key}": "sometimes"}), \
            pytest.raises(ConfigError, match=key):
        getter()
