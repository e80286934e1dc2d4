"""Checks of values read from NGFF JSON, raising errors that name the URL and the key."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import InvalidMetadataError, PathEscapeError

__all__ = ["as_dict", "as_list", "check_relative_path", "err", "matrix", "numbers", "opt_str"]

FloatArray = npt.NDArray[np.float64]


def err(url: str, key: str, msg: str) -> InvalidMetadataError:
    return InvalidMetadataError(f"{url}: metadata key '{key}': {msg}")


def as_dict(value: Any, url: str, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise err(url, key, f"expected an object, got {type(value).__name__}")
    return value


def as_list(value: Any, url: str, key: str, *, non_empty: bool = True) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise err(url, key, f"expected a list, got {type(value).__name__}")
    if non_empty and len(value) == 0:
        raise err(url, key, "must not be empty")
    return list(value)


def opt_str(value: Any, url: str, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise err(url, key, f"expected a string, got {type(value).__name__}")
    return value


def numbers(value: Any, url: str, key: str, n: int | None = None) -> FloatArray:
    items = as_list(value, url, key)
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise err(url, key, f"expected numbers, got {v!r}")
        f = float(v)
        if not math.isfinite(f):
            raise err(url, key, f"values must be finite, got {v!r}")
        out.append(f)
    if n is not None and len(out) != n:
        raise err(url, key, f"has {len(out)} entries but the image has {n} axes")
    return np.asarray(out, dtype=np.float64)


def matrix(value: Any, url: str, key: str, rows: int, cols: int) -> FloatArray:
    items = as_list(value, url, key)
    if len(items) != rows:
        raise err(url, key, f"expected {rows} rows, got {len(items)}")
    return np.stack([numbers(r, url, f"{key}[{i}]", cols) for i, r in enumerate(items)])


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def check_relative_path(path: Any, url: str, key: str) -> str:
    """Validate a path found inside NGFF metadata; it must stay inside the store.

    Parameters
    ----------
    path:
        The value found in the metadata.
    url:
        The group's URL, for messages.
    key:
        The metadata key holding ``path``, for messages.

    Returns
    -------
    str
        The path, normalised (no leading ``./``, no trailing ``/``).

    Raises
    ------
    PathEscapeError
        For absolute paths, URL schemes, drive letters, backslashes or ``..``.
    InvalidMetadataError
        If ``path`` is not a non-empty string.

    """
    if not isinstance(path, str) or not path.strip():
        raise err(url, key, f"expected a non-empty relative path, got {path!r}")
    if (
        path.startswith(("/", "~"))
        or "\\" in path
        or _SCHEME.match(path)
        or "\x00" in path
    ):
        raise PathEscapeError(
            f"{url}: metadata key '{key}': path {path!r} is absolute or a URL; "
            "paths must be relative to the group and stay inside the store"
        )
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise PathEscapeError(
            f"{url}: metadata key '{key}': path {path!r} contains '..' and could "
            "escape the store"
        )
    if not parts:
        raise err(url, key, f"expected a non-empty relative path, got {path!r}")
    return "/".join(parts)
