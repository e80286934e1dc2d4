"""Name the object behind a failed read: which chunk of which level could not be read.

A zarr read of a box fans out into one store ``get`` per chunk (or shard
range) and then decodes them; an error deep inside says neither which object
failed nor where. Two pieces put that back:

* :class:`ReadErrorStore` wraps the store a worker reads a level through.
  Any error of a ``get`` other than "no such object" (an HTTP 5xx on every
  attempt s3fs made, a dropped connection, a permission error, a short read)
  becomes a :class:`~ngff_dreg.errors.StoreReadError` naming the image's URL
  (redacted), the level and the key, with the underlying error's type and
  message. It is transient, so :func:`~ngff_dreg.io.storage.retry.retry_transient`
  retries the read; what is left after the retries stops the run.
* :func:`read_selection` reads a selection of a level array, and when zarr
  fails to *decode* it (a chunk replaced by garbage, cut short, or written
  with another codec), reads the storage objects of the selection one by one
  to find the culprit and raises a :class:`~ngff_dreg.errors.CorruptChunkError`
  naming its key. The search only runs on failure.

"Missing" answers (``None``, ``FileNotFoundError``, ``KeyError``) pass
through untouched: zarr reads them as fill value, and
:class:`~ngff_dreg.io.storage.missing_chunk_guard.MissingChunkGuard` decides whether
that chunk existed at planning.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from zarr.abc.store import Store

from ngff_dreg.errors import (
    CorruptChunkError,
    NgffDregError,
    StoreAccessError,
    StoreReadError,
)
from ngff_dreg.io.storage.read_through import RangeBatch, ReadThroughStore
from ngff_dreg.io.storage.store_errors import unwrap_group
from ngff_dreg.io.storage.store_stats import is_metadata_key
from ngff_dreg.io.storage.urls import redact_text, redact_url

if TYPE_CHECKING:
    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = ["ReadErrorStore", "read_selection", "error_detail"]

#: Longest underlying error message quoted in an error (characters).
MAX_DETAIL = 300


def error_detail(exc: BaseException) -> str:
    """``"Type: message"`` of ``exc``, credentials redacted, cut to :data:`MAX_DETAIL`."""
    if isinstance(exc, NgffDregError):
        detail = redact_text(str(exc))
    else:
        detail = redact_text(f"{type(exc).__name__}: {exc}".rstrip(": "))
    return detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL] + "..."


def _what(key: str, level: str | None) -> str:
    if is_metadata_key(key):
        return "metadata"
    if level is not None and not key.startswith(f"{level.strip('/')}/"):
        return "object"
    return "chunk"


def _where(key: str, level: str | None) -> str:
    what = _what(key, level)
    return f"{what} {key!r}" + (f" of level {level!r}" if level is not None else "")


class ReadErrorStore(ReadThroughStore):
    """Turns every failed ``get`` of ``store`` into a :class:`StoreReadError` naming its key.

    Parameters
    ----------
    store:
        The store the level is read through (rooted at the image's group).
    url:
        The image's (multiscale group's) URL; redacted in messages.
    level:
        Path of the level array read, for messages.

    """

    def __init__(self, store: Store, url: str, level: str | None = None) -> None:
        super().__init__(store)
        self.url = url
        self.level = level

    def _with_store(self, store: Store) -> ReadErrorStore:
        return type(self)(store, self.url, self.level)

    def __repr__(self) -> str:
        return f"ReadErrorStore({redact_url(self.url)!r}, level={self.level!r})"

    def __hash__(self) -> int:
        return hash((type(self), self.url, self.level))

    def _failed(self, key: str, exc: BaseException) -> StoreReadError:
        safe = redact_url(self.url)
        return StoreReadError(
            f"{safe}: cannot read {_where(key, self.level)} ({error_detail(exc)})",
            url=safe, key=key, level=self.level,
        )

    def _named(self, key: str, exc: BaseException) -> BaseException | None:
        """The error to raise for a failed read of ``key`` (``None``: let ``exc`` through).

        "No such object" passes (fill value, or the missing-chunk guard's
        call), as do ngff-dreg errors that already say what happened
        (:class:`StoreChangedError`, :class:`StoreNotFoundError`...); a bare
        :class:`StoreAccessError` (a short read) and any other failure become a
        :class:`StoreReadError` naming ``key``.
        """
        if isinstance(exc, (FileNotFoundError, KeyError, StoreReadError)):
            return None
        if isinstance(exc, NgffDregError) and type(exc) is not StoreAccessError:
            return None
        return self._failed(key, exc)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        """``key`` from the store; a failure but "not found" raises :class:`StoreReadError`."""
        try:
            return await self._store.get(key, prototype, byte_range)
        except Exception as exc:
            named = self._named(key, exc)
            if named is None:
                raise
            raise named from exc

    async def get_ranges(
        self,
        key: str,
        byte_ranges: Sequence[ByteRequest | None],
        *,
        prototype: BufferPrototype,
        max_concurrency: int | None = None,
        max_gap_bytes: int | None = None,
        max_coalesced_bytes: int | None = None,
    ) -> AsyncIterator[RangeBatch]:
        """Ranges of ``key`` (zarr >= 3.3's partial shard reads).

        zarr reports failed ranges as an ``ExceptionGroup``; a group that
        holds only "no such object" stays a group (zarr reads the shard as
        gone), anything else is raised on its own: the first ngff-dreg error in
        it, or a :class:`StoreReadError` naming ``key``.
        """
        try:
            async for batch in super().get_ranges(
                    key, byte_ranges, prototype=prototype, max_concurrency=max_concurrency,
                    max_gap_bytes=max_gap_bytes, max_coalesced_bytes=max_coalesced_bytes):
                yield batch
        except BaseExceptionGroup as group:
            _, rest = group.split((FileNotFoundError, KeyError))
            if rest is None:
                raise
            inner = unwrap_group(rest)
            named = self._named(key, inner)
            raise (inner if named is None else named) from group


def _axis_ranges(selection: tuple[Any, ...], shape: tuple[int, ...]) -> list[range]:
    """Index range per axis of a basic selection (integers and step-1 slices)."""
    out = []
    for item, n in zip(selection, shape):
        if isinstance(item, slice):
            start, stop, _ = item.indices(n)
            out.append(range(start, stop))
        else:
            i = int(item)
            i = i + n if i < 0 else i
            out.append(range(i, i + 1))
    return out


def _objects(arr: Any, selection: tuple[Any, ...]
             ) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...]]]:
    """``(grid coordinates, selection)`` of each storage object the selection touches."""
    shape = tuple(int(s) for s in arr.shape)
    outer = tuple(int(c) for c in (getattr(arr, "shards", None) or arr.chunks))
    ranges = _axis_ranges(selection, shape)
    if any(len(r) == 0 for r in ranges) or 0 in outer:
        return
    per_axis = [range(r.start // c, (r.stop - 1) // c + 1) for r, c in zip(ranges, outer)]
    for coords in itertools.product(*per_axis):
        yield coords, tuple(
            slice(max(r.start, g * c), min(r.stop, (g + 1) * c))
            for g, c, r in zip(coords, outer, ranges)
        )


def _culprit(arr: Any, selection: tuple[Any, ...]) -> tuple[str, BaseException] | None:
    """The store key of the first object of ``selection`` that fails to read, and its error.

    Store errors (ngff-dreg's own) propagate; ``None`` when every object
    reads on its own (the failure was not one chunk's).
    """
    prefix = str(arr.store_path.path).strip("/")
    for coords, sub in _objects(arr, selection):
        try:
            arr[sub]
        except NgffDregError:
            raise
        except Exception as exc:
            inner = unwrap_group(exc)
            if isinstance(inner, NgffDregError):
                raise inner from exc
            key = str(arr.metadata.encode_chunk_key(coords))
            return (f"{prefix}/{key}" if prefix else key), exc
    return None


def read_selection(arr: Any, selection: tuple[Any, ...], url: str,
                   level: str | None = None) -> Any:
    """``arr[selection]``, with a chunk that cannot be decoded named in the error.

    Parameters
    ----------
    arr:
        A zarr array (opened through a :class:`ReadErrorStore`, so store
        failures already name their key).
    selection:
        Integers and step-1 slices, one per axis.
    url:
        The image's URL (redacted in messages).
    level:
        The level's path, for messages.

    Raises
    ------
    CorruptChunkError
        A storage object of the selection cannot be decoded; the message
        names its key and the codec's error. Not retried.
    NgffDregError
        Store errors, unchanged (:class:`StoreReadError`...).
    Exception
        A failure no single object explains, unchanged.

    """
    try:
        return arr[selection]
    except NgffDregError:
        raise
    except Exception as exc:
        inner = unwrap_group(exc)
        if isinstance(inner, NgffDregError):
            raise inner from exc
        found = _culprit(arr, selection)
        if found is None:
            raise
        key, cause = found
        safe = redact_url(url)
        raise CorruptChunkError(
            f"{safe}: {_where(key, level)} cannot be decoded: it is corrupt, truncated or "
            f"written with another codec ({error_detail(cause)})",
            url=safe, key=key, level=level,
        ) from exc
