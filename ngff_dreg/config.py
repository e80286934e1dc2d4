"""ngff-dreg's settings: dask configuration keys under ``ngff-dreg``.

ngff-dreg follows the convention of dask's ecosystem (distributed,
dask-jobqueue): its settings live in :mod:`dask.config` under the
``ngff-dreg`` namespace. Their defaults, each with what it means, are in the
YAML file ``ngff-dreg.yaml`` shipped next to this module and registered with
:func:`dask.config.update_defaults` when this module is imported. Set them

* in a YAML file of dask's configuration folders
  (``~/.config/dask/ngff-dreg.yaml``)::

      ngff-dreg:
        io:
          chunk-cache-mb: 1024

* with environment variables: ``DASK_NGFF_DREG__IO__CHUNK_CACHE_MB=1024``;
* in Python or Jupyter: ``dask.config.set({"ngff-dreg.io.chunk-cache-mb": 1024})``.

A run on a ``distributed`` cluster applies its client's values on every
worker, workers that join later included
(:func:`ngff_dreg.cluster.share_settings`, which calls :func:`apply_settings`
on each worker).

The typed getters (:func:`chunk_cache_bytes`, :func:`read_attempts`...) read
the value in force each time they are called, so a ``dask.config.set`` applies
from the next read on. A value ngff-dreg cannot use raises
:class:`~ngff_dreg.errors.ConfigError`, whose message names the key and the
value.

The ``NGFF_DREG_*`` environment variables of earlier versions still work, with
a :class:`DeprecatedSettingWarning`, for a key left at its default: a value
given the dask way (a YAML file, a ``DASK_`` variable, ``dask.config.set``)
wins. This is the only module of ngff-dreg that reads ngff-dreg settings from
the environment.
"""

from __future__ import annotations

import math
import os
import threading
import uuid
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask.config
import yaml

from ngff_dreg.errors import ConfigError

__all__ = [
    "NAMESPACE",
    "DEFAULTS_FILE",
    "PROCESS_ID",
    "DeprecatedSettingWarning",
    "Setting",
    "SETTINGS",
    "SettingSource",
    "get",
    "settings",
    "sources",
    "apply_settings",
    "chunk_cache_bytes",
    "host_cache_bytes",
    "host_cache_dir",
    "chunk_inventory",
    "read_attempts",
    "read_backoff",
    "read_max_wait",
    "trace_dir",
    "lease_heartbeat",
    "lease_stale_after",
    "lease_max_wait",
    "locality",
    "chunk_exchange",
    "slab_blocks",
    "store_chunks",
]

#: The top-level key of ngff-dreg's settings in dask's configuration.
NAMESPACE = "ngff-dreg"
#: The YAML file of defaults shipped in the package.
DEFAULTS_FILE = Path(__file__).with_name("ngff-dreg.yaml")
#: Names this process (a worker told to apply its own client's settings skips them).
PROCESS_ID = uuid.uuid4().hex

InventoryMode = Literal["auto", "on", "off"]

_MISSING: Any = object()


class DeprecatedSettingWarning(FutureWarning):
    """An ``NGFF_DREG_*`` environment variable is set: use the dask config key it names."""


def _bad(where: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{where}={value!r}: expected {expected}")


def _number(value: Any, where: str, *, minimum: float, integer: bool = False) -> float:
    """``value`` (a number, or its text) as a finite number at least ``minimum``."""
    expected = f"{'a whole number' if integer else 'a number'} >= {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _bad(where, value, expected)
    try:
        number = float(value)
    except ValueError:
        raise _bad(where, value, expected) from None
    if not math.isfinite(number) or number < minimum or (integer and number != int(number)):
        raise _bad(where, value, expected)
    return number


def _megabytes(value: Any, where: str) -> float:
    return _number(value, where, minimum=0)


def _seconds(value: Any, where: str) -> float:
    return _number(value, where, minimum=0)


def _positive_seconds(value: Any, where: str) -> float:
    return _number(value, where, minimum=0.01)


def _attempts(value: Any, where: str) -> int:
    return int(_number(value, where, minimum=1, integer=True))


def _block_count(value: Any, where: str) -> int:
    return int(_number(value, where, minimum=1, integer=True))


def _directory(value: Any, where: str) -> str | None:
    """A directory (``~`` expanded), or ``None`` for null or an empty text."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise _bad(where, value, "a directory or null")
    text = os.fspath(value).strip()
    return os.path.expanduser(text) if text else None


def _text_or_none(value: Any, where: str) -> str | None:
    """A non-empty text, or ``None`` for null or an empty text."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise _bad(where, value, "a text or null")
    text = os.fspath(value).strip()
    return text or None


_ON = ("1", "on", "true", "yes")
_OFF = ("0", "off", "false", "no")


def _on_off(value: Any) -> bool | None:
    """A boolean, or one of the texts of :data:`_ON` and :data:`_OFF`, as a bool; else None."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    return True if text in _ON else False if text in _OFF else None


def _inventory_mode(value: Any, where: str) -> InventoryMode:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return "auto"
    on = _on_off(value)
    if on is None:
        raise _bad(where, value, "auto, true or false")
    return "on" if on else "off"


def _switch(value: Any, where: str) -> bool:
    """On or off: a boolean, or one of the texts of :data:`_ON` and :data:`_OFF`."""
    on = _on_off(value)
    if on is None:
        raise _bad(where, value, "true or false")
    return on


@dataclass(frozen=True)
class Setting:
    """One setting: its key below :data:`NAMESPACE`, its checker, its deprecated variable.

    Attributes
    ----------
    key:
        Below ``ngff-dreg``, e.g. ``"io.chunk-cache-mb"``.
    parse:
        ``parse(value, where)``: the value checked and converted, or a
        :class:`~ngff_dreg.errors.ConfigError` naming ``where`` and the value.
    old_name:
        The environment variable that set it before (deprecated), if any.

    """

    key: str
    parse: Callable[[Any, str], Any] = field(repr=False)
    old_name: str | None = None

    @property
    def path(self) -> str:
        """The full dask config key, e.g. ``"ngff-dreg.io.chunk-cache-mb"``."""
        return f"{NAMESPACE}.{self.key}"

    @property
    def env_name(self) -> str:
        """The environment variable dask reads it from (``DASK_NGFF_DREG__IO__...``)."""
        return "DASK_" + self.path.upper().replace("-", "_").replace(".", "__")


#: Every setting, by key below ``ngff-dreg`` (the same keys as the defaults file).
SETTINGS: dict[str, Setting] = {s.key: s for s in (
    Setting("io.chunk-cache-mb", _megabytes, "NGFF_DREG_CHUNK_CACHE_MB"),
    Setting("io.host-cache-mb", _megabytes, "NGFF_DREG_HOST_CACHE_MB"),
    Setting("io.host-cache-dir", _directory, "NGFF_DREG_HOST_CACHE_DIR"),
    Setting("io.chunk-inventory", _inventory_mode, "NGFF_DREG_CHUNK_INVENTORY"),
    Setting("io.read-attempts", _attempts, "NGFF_DREG_READ_ATTEMPTS"),
    Setting("io.read-backoff", _seconds, "NGFF_DREG_READ_BACKOFF"),
    Setting("io.read-max-wait", _seconds, "NGFF_DREG_READ_MAX_WAIT"),
    Setting("io.trace-dir", _directory, "NGFF_DREG_IO_TRACE"),
    Setting("output.lease-heartbeat", _positive_seconds),
    Setting("output.lease-stale-after", _positive_seconds),
    Setting("output.lease-max-wait", _seconds),
    Setting("output.store-chunks", _block_count),
    Setting("view.chromium", _text_or_none),
    Setting("cluster.locality", _switch),
    Setting("cluster.chunk-exchange", _switch),
    Setting("stage.slab-blocks", _block_count),
)}


def _load_defaults() -> dict[str, Any]:
    with open(DEFAULTS_FILE, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or NAMESPACE not in data:
        raise ConfigError(f"{DEFAULTS_FILE}: no {NAMESPACE!r} section")
    return data


_DEFAULTS = _load_defaults()


def _lookup(tree: Mapping[str, Any], path: str) -> Any:
    """The value of dotted ``path`` in a nested config (``-``/``_`` alike), or ``_MISSING``."""
    return dask.config.get(path, _MISSING, config=dict(tree))


_DEFAULT_VALUES = {key: _lookup(_DEFAULTS, s.path) for key, s in SETTINGS.items()}


def _register_defaults() -> None:
    """Add the shipped defaults to dask's configuration (once per process)."""
    if not any(NAMESPACE in d for d in dask.config.defaults):
        dask.config.update_defaults(_DEFAULTS)


_register_defaults()


@dataclass
class _State:
    """What this process knows beyond dask's configuration."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    #: the settings in force were applied by a run's client (:func:`apply_settings`)
    from_client: bool = False
    #: deprecated variables already warned about
    warned: set[str] = field(default_factory=set)
    #: dask's configuration files and ``DASK_`` variables, read once when needed
    user_config: dict[str, Any] | None = None


_STATE = _State()


def _setting(key: str) -> Setting:
    name = key.removeprefix(f"{NAMESPACE}.")
    setting = SETTINGS.get(name)
    if setting is None:
        raise ConfigError(f"{key!r} is not an ngff-dreg setting (known: "
                          f"{', '.join(s.path for s in SETTINGS.values())})")
    return setting


def _old_value(setting: Setting) -> str | None:
    """The deprecated variable's text, if set in this process's environment (and heeded)."""
    if setting.old_name is None or _STATE.from_client:
        return None
    text = os.environ.get(setting.old_name, "").strip()
    return text or None


def _named_by_user(setting: Setting) -> bool:
    """True when dask's configuration files or ``DASK_`` variables name ``setting``."""
    with _STATE.lock:
        if _STATE.user_config is None:
            _STATE.user_config = dask.config.collect()
        collected = _STATE.user_config
    return _lookup(collected, setting.path) is not _MISSING


def _warn(setting: Setting, used: bool) -> None:
    with _STATE.lock:
        if setting.old_name in _STATE.warned:
            return
        _STATE.warned.add(str(setting.old_name))
    how = (f"set the dask config key {setting.path} instead ({setting.env_name}=..., a YAML "
           "file in ~/.config/dask, or dask.config.set)")
    message = (f"ngff-dreg: the environment variable {setting.old_name} is deprecated: {how}"
               if used else
               f"ngff-dreg: the environment variable {setting.old_name} is deprecated and "
               f"ignored: {setting.path} is set the dask way")
    warnings.warn(message, DeprecatedSettingWarning, stacklevel=4)


def _resolve(setting: Setting) -> tuple[Any, str | None]:
    """``(checked value in force, deprecated variable it came from or None)``."""
    raw = dask.config.get(setting.path, _MISSING)
    default = _DEFAULT_VALUES[setting.key]
    if raw is _MISSING:
        raw = default
    old = _old_value(setting)
    if old is not None:
        if raw == default and not _named_by_user(setting):
            _warn(setting, used=True)
            where = f"{setting.old_name} (deprecated, for {setting.path})"
            return setting.parse(old, where), setting.old_name
        _warn(setting, used=False)
    return setting.parse(raw, setting.path), None


def get(key: str) -> Any:
    """The checked value in force of setting ``key``.

    Parameters
    ----------
    key:
        Below ``ngff-dreg`` (``"io.read-attempts"``) or in full
        (``"ngff-dreg.io.read-attempts"``).

    Raises
    ------
    ConfigError
        ``key`` is not a setting, or its value is not usable (the message
        names the key and the value).

    """
    return _resolve(_setting(key))[0]


def settings() -> dict[str, Any]:
    """Every setting's checked value in force, by full key (``ConfigError`` if one is bad)."""
    return {s.path: get(s.key) for s in SETTINGS.values()}


def chunk_cache_bytes() -> int:
    """Chunk bytes each process's in-memory cache keeps (``ngff-dreg.io.chunk-cache-mb``)."""
    return int(get("io.chunk-cache-mb") * 1e6)


def host_cache_bytes() -> int:
    """Chunk bytes each process may keep in a run's host cache (``io.host-cache-mb``)."""
    return int(get("io.host-cache-mb") * 1e6)


def host_cache_dir() -> str | None:
    """Directory of the host cache (``io.host-cache-dir``; ``None``: the temporary directory)."""
    value: str | None = get("io.host-cache-dir")
    return value


def chunk_inventory() -> InventoryMode:
    """Whether runs list their inputs' chunks: ``"auto"``, ``"on"`` or ``"off"``."""
    value: InventoryMode = get("io.chunk-inventory")
    return value


def read_attempts() -> int:
    """Attempts of a read that fails transiently (``io.read-attempts``, at least 1)."""
    return int(get("io.read-attempts"))


def read_backoff() -> float:
    """Sleep before a read's second attempt, in seconds (``io.read-backoff``)."""
    return float(get("io.read-backoff"))


def read_max_wait() -> float:
    """Upper bound of one sleep between read attempts, in seconds (``io.read-max-wait``)."""
    return float(get("io.read-max-wait"))


def trace_dir() -> str | None:
    """Directory of the per-process fetch logs (``io.trace-dir``; ``None``: no logs)."""
    value: str | None = get("io.trace-dir")
    return value


def chromium() -> str | None:
    """The browser ``ngff-dreg view --screenshot`` runs (``view.chromium``; ``None``: search)."""
    value: str | None = get("view.chromium")
    return value


def lease_heartbeat() -> float:
    """Seconds between two heartbeats of a run's output lease (``output.lease-heartbeat``)."""
    return float(get("output.lease-heartbeat"))


def lease_stale_after() -> float:
    """Seconds without a heartbeat after which a lease is stale (``output.lease-stale-after``)."""
    return float(get("output.lease-stale-after"))


def lease_max_wait() -> float:
    """Longest wait for a live run with the same arguments, s (``output.lease-max-wait``)."""
    return float(get("output.lease-max-wait"))


def locality() -> bool:
    """Place a block stage's blocks by machine, in contiguous groups (``cluster.locality``)."""
    return bool(get("cluster.locality"))


def chunk_exchange() -> bool:
    """Serve chunks between machines instead of fetching them again (``cluster.chunk-exchange``)."""
    return bool(get("cluster.chunk-exchange"))


def slab_blocks() -> int:
    """Most blocks one compute of a block stage registers (``stage.slab-blocks``, at least 1).

    A stage whose block grid has more blocks runs in slabs of at most this
    many: whole grid layers, or rows of a layer when a layer has more
    (:mod:`ngff_dreg.slab_stage`).
    """
    return int(get("stage.slab-blocks"))


def store_chunks() -> int:
    """Most chunks (or shards) one compute writes to an image level (``output.store-chunks``).

    A level with more is written in slabs of whole chunk rows, one compute
    after the other, so the graph that writes it is bounded by this.
    """
    return int(get("output.store-chunks"))


def apply_settings(values: Mapping[str, Any], origin: str) -> bool:
    """Put a run's client's settings (its :func:`settings`) in force in this process.

    Called on every worker by :class:`ngff_dreg.cluster.SettingsPlugin`. From
    then on the deprecated variables of this process are ignored: the client's
    values, which include what its own deprecated variables set, hold.

    Parameters
    ----------
    values:
        Full keys and values, as :func:`settings` returns them.
    origin:
        The :data:`PROCESS_ID` of the client's process: a worker running in
        that very process (a threaded cluster) has the settings already.

    Returns
    -------
    bool
        False when nothing was done (this is the client's process).

    """
    if origin == PROCESS_ID:
        return False
    checked = {}
    for key, value in values.items():
        setting = _setting(key)
        checked[setting.path] = setting.parse(value, f"{setting.path} (from the client)")
    dask.config.set(checked)
    _STATE.from_client = True
    return True


@dataclass(frozen=True)
class SettingSource:
    """A setting's value in force and where it came from (:func:`sources`).

    ``source`` is ``"default"``, a YAML file's path, ``"DASK_... variable"``,
    ``"dask.config.set"``, ``"NGFF_DREG_... (deprecated)"`` or ``"the run's client"``.
    """

    key: str
    value: Any
    source: str


def _yaml_files() -> list[str]:
    """The files dask reads its configuration from, in the order it merges them."""
    files: list[str] = []
    for path in dask.config.paths:
        if os.path.isdir(path):
            try:
                names = sorted(os.listdir(path))
            except OSError:
                continue
            files.extend(os.path.join(path, n) for n in names
                         if n.endswith((".json", ".yaml", ".yml")))
        elif os.path.isfile(path):
            files.append(path)
    return files


def _dask_source(setting: Setting, raw: Any, env_tree: Mapping[str, Any],
                 files: Mapping[str, Mapping[str, Any]]) -> str:
    """Where the dask config value ``raw`` of ``setting`` came from.

    ``env_tree``: what dask reads from ``DASK_`` variables; ``files``: what it
    reads from each configuration file, in merge order.
    """
    env = _lookup(env_tree, setting.path)
    if env is not _MISSING:
        named = setting.env_name in os.environ
        given, label = env, (f"{setting.env_name} variable" if named else "a DASK_ variable")
    else:
        given, label = _MISSING, "default"
        for path, tree in files.items():
            value = _lookup(tree, setting.path)
            if value is not _MISSING:
                given, label = value, path
    if given is _MISSING:
        given = _DEFAULT_VALUES[setting.key]
    return label if raw == given else "dask.config.set"


def sources() -> list[SettingSource]:
    """Every setting's value in force and its source, for ``ngff-dreg info --config``.

    Reads dask's configuration files again to tell which one set a value:
    meant for printing, not for every read.
    """
    files: dict[str, Mapping[str, Any]] = {}
    for path in _yaml_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trees = dask.config.collect_yaml([path])
        if trees:
            files[path] = dask.config.merge(*trees)
    env_tree = dask.config.collect_env()
    out = []
    for setting in SETTINGS.values():
        value, old = _resolve(setting)
        if _STATE.from_client:
            source = "the run's client"
        elif old is not None:
            source = f"{old} (deprecated)"
        else:
            raw = dask.config.get(setting.path, _DEFAULT_VALUES[setting.key])
            source = _dask_source(setting, raw, env_tree, files)
        out.append(SettingSource(setting.path, value, source))
    return out
