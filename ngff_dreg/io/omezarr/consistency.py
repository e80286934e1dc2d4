"""Checks that a level array is still the one a run was planned on.

A run plans its blocks from each level's shape, chunks and dtype, read once
on the client; workers open the arrays again later. If an array was replaced
in between (another shape, dtype or chunking), reading it would give voxels
that do not belong where the plan puts them, so the read stops with a
:class:`~ngff_dreg.errors.StoreChangedError` naming the array instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ngff_dreg.errors import StoreChangedError
from ngff_dreg.io.omezarr.multiscale import LevelInfo
from ngff_dreg.io.storage.urls import redact_url

__all__ = ["check_unchanged"]


def check_unchanged(arr: Any, planned: LevelInfo, url: str) -> None:
    """Raise if ``arr`` differs from the level described at planning time.

    Parameters
    ----------
    arr:
        The level array as opened now.
    planned:
        The level's description when the run was planned.
    url:
        The array's URL, for the message.

    Raises
    ------
    StoreChangedError
        The shape, chunk shape or dtype differs.

    """
    now = {"shape": tuple(int(s) for s in arr.shape),
           "chunks": tuple(int(c) for c in arr.chunks),
           "dtype": np.dtype(arr.dtype)}
    then = {"shape": planned.shape, "chunks": planned.chunks, "dtype": planned.dtype}
    changed = [f"{k} {then[k]} -> {now[k]}" for k in now if now[k] != then[k]]
    if changed:
        raise StoreChangedError(
            f"{redact_url(url)}: the array changed after the run was planned "
            f"({', '.join(changed)}); rerun to plan on the current data"
        )
