"""Where a block stage's blocks run: contiguous groups of the block grid, one per machine.

Neighbouring blocks share the storage chunks of their halos. Blocks of one
machine fetch a shared chunk once between them (the host cache,
:mod:`ngff_dreg.io.storage.chunk_cache`); blocks on two machines fetch it twice.
So the blocks of a stage are cut into as many compact, contiguous groups as the
cluster has machines (:func:`group_blocks`: recursive bisection of the block
grid along its longest extent, in proportion to the group counts), and each
group's blocks prefer the workers of one machine (:func:`place_blocks`).
Within a machine, blocks are cut again into one slab per worker, as a one-machine
cluster places them (:func:`ngff_dreg.engine.block_placement`), so each
worker's memory cache serves its neighbours.

A *machine* is the set of workers that share a host cache
(:func:`~ngff_dreg.io.storage.chunk_cache.machine_identity`: the host and the
host cache's directory). Pure NumPy: the engine turns places into loose dask
worker restrictions (any worker may still take a task, e.g. when one dies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ngff_dreg.geometry import Box

__all__ = ["group_blocks", "machines_of", "place_blocks", "slab_order", "shared_chunk_count"]


def group_blocks(indices: Sequence[tuple[int, ...]], n_groups: int) -> list[int]:
    """The group (``0..n_groups-1``) of each block: compact contiguous pieces of the grid.

    The blocks are split in two along the axis where they extend furthest (ties:
    the first axis), between two planes of blocks, giving each half its share
    of the groups, and each half is split again. A full grid is thus cut into
    boxes of blocks (octants of a cube for 8 groups); sizes differ by at most
    about a plane of blocks per split.
    """
    n = len(indices)
    out = [0] * n
    if n_groups <= 1 or n == 0:
        return out
    pts = np.asarray(indices, dtype=np.int64).reshape(n, -1)
    _bisect(pts, np.arange(n), 0, min(n_groups, n), out)
    return out


def _bisect(pts: np.ndarray, members: np.ndarray, first: int, count: int,
            out: list[int]) -> None:
    if count <= 1:
        for m in members:
            out[int(m)] = first
        return
    sub = pts[members]
    extent = sub.max(axis=0) - sub.min(axis=0)
    axis = int(np.argmax(extent))
    # sorted along the axis, the other axes breaking ties (slowest first)
    keys = [sub[:, a] for a in reversed(range(sub.shape[1])) if a != axis] + [sub[:, axis]]
    order = members[np.lexsort(keys)]
    left = count // 2
    cut = _plane_cut(pts[order, axis], left, count)
    _bisect(pts, order[:cut], first, left, out)
    _bisect(pts, order[cut:], first + left, count - left, out)


def _plane_cut(coords: np.ndarray, left: int, count: int) -> int:
    """Where to cut sorted plane coordinates so the first part gets ``left`` of ``count`` groups.

    Between two planes when that leaves each part at least as many blocks as
    groups (the parts then stay boxes of a box); else at the balanced rank.
    """
    n = len(coords)
    want = n * left / count
    bounds = np.flatnonzero(np.diff(coords)) + 1  # ranks where a new plane starts
    ok = bounds[(bounds >= left) & (n - bounds >= count - left)]
    if len(ok):
        return int(ok[np.argmin(np.abs(ok - want))])
    return min(max(int(round(want)), left), n - (count - left))


def slab_order(indices: Sequence[tuple[int, ...]], n_parts: int) -> list[int]:
    """The part (``0..n_parts-1``) of each block: contiguous slabs along the grid's longest axis."""
    if n_parts <= 1 or not indices:
        return [0] * len(indices)
    grid = np.asarray(indices).max(axis=0) + 1
    order = np.argsort(-grid, kind="stable")  # longest axis first
    keys = [tuple(int(idx[a]) for a in order) for idx in indices]
    rank = {k: r for r, k in enumerate(sorted(set(keys)))}
    n = len(rank)
    return [min(n_parts - 1, rank[k] * n_parts // n) for k in keys]


def machines_of(identities: Mapping[str, str]) -> tuple[tuple[str, ...], ...]:
    """Workers grouped by machine: ``{address: identity}`` -> sorted tuples of addresses."""
    by: dict[str, list[str]] = {}
    for address, ident in identities.items():
        by.setdefault(ident, []).append(address)
    return tuple(sorted(tuple(sorted(ws)) for ws in by.values()))


def place_blocks(indices: Sequence[tuple[int, ...]],
                 machines: Sequence[Sequence[str]]) -> list[str | None]:
    """The preferred worker of each block (``None``: no preference).

    ``machines`` holds the workers of each machine. One group of blocks per
    machine (:func:`group_blocks`), cut into one slab per worker of that
    machine (:func:`slab_order`).
    """
    machines = [tuple(m) for m in machines if m]
    if not machines:
        return [None] * len(indices)
    groups = group_blocks(indices, len(machines))
    out: list[str | None] = [None] * len(indices)
    for g, workers in enumerate(machines):
        members = [i for i, gi in enumerate(groups) if gi == g]
        parts = slab_order([indices[i] for i in members], len(workers))
        for i, part in zip(members, parts):
            out[i] = workers[part]
    return out


def shared_chunk_count(boxes: Sequence[Box], groups: Sequence[int],
                       chunk: Sequence[int]) -> int:
    """Fetches beyond the first of every storage chunk when each group fetches its chunks once.

    ``boxes`` are the regions the blocks read (e.g. their padded boxes),
    ``groups`` the group of each block, ``chunk`` the storage chunk shape: the
    sum over chunks of (number of groups reading it - 1).
    """
    readers: dict[tuple[int, ...], set[int]] = {}
    for box, g in zip(boxes, groups):
        lo = [s // c for s, c in zip(box.start, chunk)]
        hi = [-(-e // c) for e, c in zip(box.stop, chunk)]
        for idx in np.ndindex(*[h - a for a, h in zip(lo, hi)]):
            key = tuple(int(a + i) for a, i in zip(lo, idx))
            readers.setdefault(key, set()).add(int(g))
    return sum(len(s) - 1 for s in readers.values())
