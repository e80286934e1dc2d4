"""Open Zarr stores and groups from URLs (local, ``file://``, ``s3://``, ``http(s)://``).

Remote stores are built with :meth:`zarr.storage.FsspecStore.from_url`, which
creates the asynchronous fsspec filesystem zarr needs (a synchronous
``s3fs.S3FileSystem`` object handed to ``FsspecStore`` fails with "attached to
a different loop"). Every failure is mapped to
:class:`~ngff_dreg.errors.StoreAccessError` /
:class:`~ngff_dreg.errors.StoreNotFoundError` with the URL, redacted. A
read-only store is handed out wrapped in the read stack of
:mod:`ngff_dreg.io.storage.stack`.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from typing import Any

import zarr
import zarr.errors
from zarr.abc.store import Store

from ngff_dreg.errors import InvalidMetadataError, StoreAccessError, StoreNotFoundError
from ngff_dreg.io.storage.stack import LevelReads, read_stack
from ngff_dreg.io.storage.store_errors import map_read_errors, map_store_errors
from ngff_dreg.io.storage.urls import (
    is_remote,
    join_url,
    local_path,
    redact_options,
    redact_text,
    redact_url,
)

__all__ = [
    "open_store",
    "open_group",
    "zarr_group",
    "zarr_array",
    "destination_state",
]

logger = logging.getLogger(__name__)


def open_store(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    read_only: bool = True,
    cache: str | None = None,
    level: LevelReads | None = None,
) -> Store:
    """A zarr 3 store for ``url``.

    Parameters
    ----------
    url:
        Local path, ``file://`` URL, or an fsspec URL (``s3://bucket/key``,
        ``https://host/path``...).
    storage_options:
        fsspec options for remote URLs (``anon``, ``key``, ``secret``,
        ``client_kwargs={"endpoint_url": ...}``...). Ignored for local paths.
    read_only:
        Open for reading only (the default). Read-only stores count what they
        fetch (:mod:`ngff_dreg.io.storage.store_stats`, under the redacted URL).
    cache:
        A cache token (one per run): repeated reads are then served from this
        process's chunk cache (:mod:`ngff_dreg.io.storage.chunk_cache`), and
        metadata is read once per process. ``None``: no cache.
    level:
        The level array the store is opened to read: its reads are guarded
        against chunks deleted since planning and failures name their key.

    Returns
    -------
    zarr.abc.store.Store
        A ``LocalStore`` or an ``FsspecStore``; read-only, wrapped in the read
        stack of :func:`~ngff_dreg.io.storage.stack.read_stack`.

    Raises
    ------
    StoreNotFoundError
        A local path opened read-only does not exist.
    StoreAccessError
        The remote filesystem cannot be set up (unknown protocol, bad options).

    """
    text = os.fspath(url)
    if text.startswith("virtual://"):  # a procedural image (scale tests)
        if not read_only:
            raise StoreAccessError(f"{text}: a virtual image is read-only")
        from ngff_dreg.io.storage.virtual_store import open_virtual_store

        return _stacked(open_virtual_store(text), text, cache, level)
    if not is_remote(text):
        path = local_path(text)
        if read_only and not path.exists():
            raise StoreNotFoundError(f"{redact_url(text)}: no such file or directory")
        return _stacked(zarr.storage.LocalStore(path, read_only=read_only), text, cache, level)
    opts = dict(storage_options or {})
    logger.debug("opening %s with storage options %s", redact_url(text), redact_options(opts))

    def make() -> Store:
        return zarr.storage.FsspecStore.from_url(text, storage_options=opts, read_only=read_only)

    try:
        return _stacked(map_store_errors(text, "create store", make), text, cache, level)
    except (ValueError, TypeError, ImportError) as exc:
        raise StoreAccessError(
            f"{redact_url(text)}: cannot create a store: {type(exc).__name__}: "
            f"{redact_text(str(exc))}"
        ) from exc


def _stacked(store: Store, url: str, cache: str | None, level: LevelReads | None) -> Store:
    """A read-only store in its read stack (a writable one as it is)."""
    if not store.read_only:
        return store
    return read_stack(store, url.rstrip("/"), cache=cache, level=level)


def open_group(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    mode: str = "r",
    cache: str | None = None,
    level: LevelReads | None = None,
) -> zarr.Group:
    """Open the Zarr group at ``url`` (read-only by default).

    ``cache`` and ``level`` choose the read stack (:func:`open_store`).

    Raises
    ------
    StoreNotFoundError
        No Zarr group exists at ``url``.
    InvalidMetadataError
        ``url`` holds a Zarr array, not a group.
    StoreAccessError
        The store cannot be reached or read.

    """
    text = os.fspath(url)
    store = open_store(text, storage_options, read_only=(mode == "r"), cache=cache,
                       level=level)

    def op(fmt: int | None) -> zarr.Group:
        return zarr.open_group(store=store, mode=mode, zarr_format=fmt)  # type: ignore[arg-type]

    # Probe Zarr v3 first, then v2: one metadata request for v3 data instead of
    # the v2+v3 fan-out (and no directory listings on object stores).
    formats: tuple[int | None, ...] = (3, 2) if mode == "r" else (None,)
    last: BaseException | None = None
    for fmt in formats:
        meta = {3: "zarr.json", 2: ".zgroup"}.get(fmt or 0, "group metadata")
        try:
            return map_read_errors(join_url(text, meta), "open group", functools.partial(op, fmt))
        except StoreNotFoundError as exc:
            last = exc
        except KeyError as exc:
            last = exc
        except InvalidMetadataError as exc:
            if isinstance(exc.__cause__, zarr.errors.NodeNotFoundError):
                last = exc
                continue
            raise
    raise StoreNotFoundError(
        f"{redact_url(text)}: no Zarr group (neither zarr.json nor .zgroup) at this URL"
    ) from last


def _store(
    where: str | os.PathLike[str] | Store, storage_options: Mapping[str, Any] | None, mode: str,
    cache: str | None = None,
) -> Store:
    if isinstance(where, Store):
        return where
    return open_store(where, storage_options, read_only=(mode == "r"), cache=cache)


def zarr_group(
    where: str | os.PathLike[str] | Store,
    storage_options: Mapping[str, Any] | None = None,
    *,
    mode: str = "r",
    path: str | None = None,
    zarr_format: int | None = None,
) -> zarr.Group:
    """``zarr.open_group`` on the store at ``where`` (a URL, or a store already open).

    Unlike :func:`open_group`, errors are zarr's own: the writers and the
    output-state checks tell "absent" from "foreign" by them.
    """
    store = _store(where, storage_options, mode)
    return zarr.open_group(
        store=store, path=path, mode=mode, zarr_format=zarr_format  # type: ignore[arg-type]
    )


def zarr_array(
    where: str | os.PathLike[str] | Store,
    path: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    mode: str = "r",
    cache: str | None = None,
) -> zarr.Array:
    """``zarr.open_array`` of ``path`` in the store at ``where`` (``cache``: :func:`open_store`)."""
    store = _store(where, storage_options, mode, cache)
    return zarr.open_array(store=store, path=path, mode=mode)


def destination_state(store: Store) -> str:
    """``"empty"``, ``"zarr"`` (a Zarr node) or ``"foreign"`` (other files) at a store's root."""
    from zarr.core.sync import sync

    try:
        zarr.open(store=store, mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError):
        pass
    else:
        return "zarr"
    try:
        empty = bool(sync(store.is_empty("")))
    except FileNotFoundError:
        empty = True
    return "empty" if empty else "foreign"
