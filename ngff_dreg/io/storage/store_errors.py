"""Store failures as ngff-dreg errors that name the URL (redacted).

:func:`map_store_errors` turns "not found" and access failures of any store
(local files, s3fs, aiohttp, botocore) into
:class:`~ngff_dreg.errors.StoreNotFoundError` /
:class:`~ngff_dreg.errors.StoreAccessError`; :func:`map_read_errors` also turns
undecodable metadata or data into one error naming what was read. An
``ExceptionGroup`` (zarr's coalescing range reads raise them) is unwrapped
first: its first ngff-dreg error, or its first other error, is what counts.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import zarr.errors

from ngff_dreg.errors import (
    InvalidMetadataError,
    NgffDregError,
    StoreAccessError,
    StoreNotFoundError,
)
from ngff_dreg.io.storage.urls import redact_text, redact_url

__all__ = [
    "classify_store_error",
    "leaf_errors",
    "unwrap_group",
    "map_store_errors",
    "map_read_errors",
]

T = TypeVar("T")


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The exceptions inside ``exc`` (itself when it is not an ``ExceptionGroup``)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaf_errors(inner)]
    return [exc]


def unwrap_group(exc: BaseException) -> BaseException:
    """The error that counts in ``exc``: itself, or from inside an ``ExceptionGroup``.

    zarr's coalescing range reads (zarr >= 3.3) report failures as groups. The
    first ngff-dreg error inside wins (it already names the key), then the
    first error that is not a cancellation.
    """
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves = [e for e in leaf_errors(exc) if not isinstance(e, asyncio.CancelledError)]
    ours = [e for e in leaves if isinstance(e, NgffDregError)]
    return (ours or leaves or [exc])[0]


def classify_store_error(exc: BaseException) -> str:
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
    except BaseExceptionGroup as group:
        inner = unwrap_group(group)
        if inner is group or not isinstance(inner, Exception):
            raise
        map_store_errors(url, what, functools.partial(_reraise, inner, group))
        raise  # pragma: no cover (map_store_errors always raises here)
    except zarr.errors.ContainsArrayError as exc:
        raise InvalidMetadataError(
            f"{redact_url(url)}: is a Zarr array, not a group ({what})"
        ) from exc
    except Exception as exc:
        kind = classify_store_error(exc)
        detail = redact_text(f"{type(exc).__name__}: {exc}")
        if kind == "notfound":
            raise StoreNotFoundError(f"{redact_url(url)}: not found ({what}): {detail}") from exc
        if kind == "access":
            raise StoreAccessError(
                f"{redact_url(url)}: cannot access the store ({what}): {detail}. Check the "
                "endpoint, network and credentials (storage_options)."
            ) from exc
        raise


def _reraise(exc: Exception, group: BaseExceptionGroup[Any]) -> NoReturn:
    """Raise ``exc`` (taken out of ``group``) with the group as its context."""
    raise exc from group


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
