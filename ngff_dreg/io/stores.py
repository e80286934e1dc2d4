"""Open Zarr stores from URLs (local, ``file://``, ``s3://``, ``http(s)://``).

Remote stores are built with :meth:`zarr.storage.FsspecStore.from_url`, which
creates the asynchronous fsspec filesystem zarr needs (a synchronous
``s3fs.S3FileSystem`` object handed to ``FsspecStore`` fails with "attached to
a different loop"). Every failure is mapped to
:class:`~ngff_dreg.errors.StoreAccessError` /
:class:`~ngff_dreg.errors.StoreNotFoundError` with the URL, redacted.

Nothing here logs or formats ``storage_options`` without passing them through
:func:`redact_options` first.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import zarr
import zarr.errors
from zarr.abc.store import Store

from ngff_dreg.errors import (
    InvalidMetadataError,
    NgffDregError,
    StoreAccessError,
    StoreNotFoundError,
)
from ngff_dreg.io.chunk_cache import CachingStore
from ngff_dreg.io.counting_store import CountingStore

__all__ = [
    "REMOTE_SCHEMES",
    "map_read_errors",
    "redact_url",
    "redact_options",
    "redact_text",
    "is_remote",
    "local_path",
    "location_key",
    "join_url",
    "open_store",
    "open_group",
    "zarr_group",
    "zarr_array",
    "destination_state",
    "map_store_errors",
]

logger = logging.getLogger(__name__)

REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "http", "https", "az", "abfs", "memory")

_SECRET_KEY = re.compile(
    r"(secret|token|passw|key|credential|auth|signature|session|cookie|bearer)", re.IGNORECASE
)
_SAFE_KEYS = {"anon", "endpoint_url", "region_name", "use_ssl", "requester_pays", "asynchronous"}
_SECRET_QUERY = re.compile(
    r"(x-amz-[a-z-]*|signature|sig|token|key|secret|password|credential|policy|expires)",
    re.IGNORECASE,
)

T = TypeVar("T")


def redact_url(url: Any) -> str:
    """A URL safe to print: user info and credential-bearing query values hidden.

    Parameters
    ----------
    url:
        Any URL or path (non-strings are converted with ``str``).

    Returns
    -------
    str
        ``url`` with ``user:password@`` replaced by ``***@`` and the values of
        query parameters such as ``X-Amz-Signature`` or ``token`` replaced by
        ``***``.

    """
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return "<unparseable url>"
    if not parts.scheme or "://" not in text:
        return text
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = []
        for pair in query.split("&"):
            k, sep, _value = pair.partition("=")
            pairs.append(f"{k}{sep}***" if sep and _SECRET_QUERY.search(k) else pair)
        query = "&".join(pairs)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_USERINFO_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@]+@")
_QUERY_IN_TEXT = re.compile(
    r"([?&](?:x-amz-[a-z-]*|signature|sig|token|key|secret|password|credential|policy)=)"
    r"[^&\s'\"]+",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """Hide URL user info and credential query values anywhere inside ``text``."""
    text = _USERINFO_IN_TEXT.sub(r"\1***@", str(text))
    return _QUERY_IN_TEXT.sub(r"\1***", text)


def redact_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of fsspec ``storage_options`` with every secret value hidden.

    Keys that look like credentials (``key``, ``secret``, ``token``,
    ``password``, ``aws_session_token``...) get ``"***"``; nested mappings
    (``client_kwargs``, ``config_kwargs``) are redacted recursively.
    """
    if not options:
        return {}
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, Mapping):
            out[k] = redact_options(v)
        elif str(k) in _SAFE_KEYS:
            out[k] = redact_url(v) if isinstance(v, str) else v
        elif _SECRET_KEY.search(str(k)):
            out[k] = "***"
        elif isinstance(v, str):
            out[k] = redact_url(v)
        else:
            out[k] = v
    return out


def _scheme(url: str) -> str:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://", url)
    return m.group(1).lower() if m else ""


def is_remote(url: str | os.PathLike[str]) -> bool:
    """True for URLs handled by fsspec (``s3://``, ``http(s)://``...), not local files."""
    scheme = _scheme(str(url))
    return bool(scheme) and scheme != "file"


def local_path(url: str | os.PathLike[str]) -> Path:
    """Local filesystem path of a plain path or ``file://`` URL."""
    text = os.fspath(url)
    if _scheme(text) == "file":
        text = text[len("file://") :]
    return Path(text).expanduser()


def location_key(url: str | os.PathLike[str]) -> str:
    """A comparable form of a location: local paths resolved, no trailing ``/``.

    Two URLs naming the same group give the same key (``./a.zarr``,
    ``file:///abs/a.zarr/`` and ``/abs/a.zarr``); remote URLs are kept as given.
    """
    text = os.fspath(url)
    if not is_remote(text):
        return os.path.realpath(local_path(text)).rstrip("/")
    return text.rstrip("/")


def join_url(url: str, *parts: str) -> str:
    """Join path components onto a URL or path with ``/``."""
    base = str(url).rstrip("/")
    tail = "/".join(p.strip("/") for p in parts if p)
    return f"{base}/{tail}" if tail else base


def _classify(exc: BaseException) -> str:
    """``"notfound"``, ``"access"`` or ``""`` for an exception from a store."""
    if isinstance(exc, (FileNotFoundError, zarr.errors.NodeNotFoundError)):
        return "notfound"
    name = type(exc).__name__
    text = str(exc)
    if name in ("NoSuchBucket", "NoSuchKey") or "NoSuchBucket" in text:
        return "notfound"
    if isinstance(exc, (PermissionError, ConnectionError, TimeoutError, OSError)):
        return "access"
    module = type(exc).__module__ or ""
    if module.startswith(("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "urllib3")):
        return "access"
    if name in ("ClientError", "NoCredentialsError", "EndpointConnectionError",
                "ClientConnectorError", "ServerTimeoutError", "ClientResponseError"):
        return "access"
    return ""


def map_store_errors(url: str, what: str, func: Callable[[], T]) -> T:
    """Run ``func`` and turn store failures into ngff-dreg errors naming ``url``.

    Parameters
    ----------
    url:
        The URL being accessed (it is redacted in messages).
    what:
        A short description of the operation, e.g. ``"open group"``.
    func:
        The operation.

    Raises
    ------
    StoreNotFoundError
        When the object does not exist.
    StoreAccessError
        For connection, permission or credential failures.

    """
    try:
        return func()
    except NgffDregError:
        raise
    except zarr.errors.ContainsArrayError as exc:
        raise InvalidMetadataError(
            f"{redact_url(url)}: is a Zarr array, not a group ({what})"
        ) from exc
    except Exception as exc:
        kind = _classify(exc)
        detail = redact_text(f"{type(exc).__name__}: {exc}")
        if kind == "notfound":
            raise StoreNotFoundError(f"{redact_url(url)}: not found ({what}): {detail}") from exc
        if kind == "access":
            raise StoreAccessError(
                f"{redact_url(url)}: cannot access the store ({what}): {detail}. Check the "
                "endpoint, network and credentials (storage_options)."
            ) from exc
        raise


def map_read_errors(
    url: str, what: str, func: Callable[[], T], *,
    error: type[NgffDregError] = InvalidMetadataError,
) -> T:
    """Like :func:`map_store_errors`, and any other failure of a read becomes ``error``.

    Corrupt or unsupported Zarr metadata or chunks make zarr, numcodecs and
    the JSON decoder raise their own errors (``TypeError``, ``ValueError``,
    ``MetadataValidationError``, ``UnknownCodecError``, ``JSONDecodeError``...);
    here they become one ngff-dreg error naming ``url`` and ``what``.
    ``KeyError`` (a missing child node) is left to the caller, which knows
    which metadata key named it.
    """
    try:
        return map_store_errors(url, what, func)
    except (NgffDregError, KeyError):
        raise
    except Exception as exc:
        detail = redact_text(f"{type(exc).__name__}: {exc}")
        if len(detail) > 300:
            detail = detail[:300] + "..."
        raise error(f"{redact_url(url)}: cannot {what}: corrupt or unsupported Zarr "
                    f"metadata or data ({detail})") from exc


def open_store(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    read_only: bool = True,
    cache: str | None = None,
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
        fetch (:mod:`ngff_dreg.io.store_stats`, under the redacted URL).
    cache:
        A cache token (one per run): repeated reads are then served from this
        process's chunk cache (:mod:`ngff_dreg.io.chunk_cache`), and metadata
        is read once per process. ``None``: no cache.

    Returns
    -------
    zarr.abc.store.Store
        A ``LocalStore`` or an ``FsspecStore``; read-only, wrapped in a
        :class:`~ngff_dreg.io.counting_store.CountingStore` (and a
        :class:`~ngff_dreg.io.chunk_cache.CachingStore` with ``cache``).

    Raises
    ------
    StoreNotFoundError
        A local path opened read-only does not exist.
    StoreAccessError
        The remote filesystem cannot be set up (unknown protocol, bad options).

    """
    text = os.fspath(url)
    if not is_remote(text):
        path = local_path(text)
        if read_only and not path.exists():
            raise StoreNotFoundError(f"{redact_url(text)}: no such file or directory")
        return _metered(zarr.storage.LocalStore(path, read_only=read_only), text, cache)
    opts = dict(storage_options or {})
    logger.debug("opening %s with storage options %s", redact_url(text), redact_options(opts))

    def make() -> Store:
        return zarr.storage.FsspecStore.from_url(text, storage_options=opts, read_only=read_only)

    try:
        return _metered(map_store_errors(text, "create store", make), text, cache)
    except (ValueError, TypeError, ImportError) as exc:
        raise StoreAccessError(
            f"{redact_url(text)}: cannot create a store: {type(exc).__name__}: "
            f"{redact_text(str(exc))}"
        ) from exc


def _metered(store: Store, url: str, cache: str | None) -> Store:
    """A read-only store wrapped to count its reads (and to cache them with a token)."""
    if not store.read_only:
        return store
    image = redact_url(url.rstrip("/"))
    counted = CountingStore(store, image)
    if cache is None:
        return counted
    return CachingStore(counted, (cache, location_key(url)), image)


def open_group(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    mode: str = "r",
    cache: str | None = None,
    wrap: Callable[[Store], Store] | None = None,
) -> zarr.Group:
    """Open the Zarr group at ``url`` (read-only by default).

    ``wrap``, if given, wraps the store (after counting and caching) before
    the group is opened on it, e.g. in a
    :class:`~ngff_dreg.io.missing_chunk_guard.MissingChunkGuard`.

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
    store = open_store(text, storage_options, read_only=(mode == "r"), cache=cache)
    if wrap is not None:
        store = wrap(store)

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
