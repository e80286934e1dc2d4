"""Plan the blocks: the grid over the fixed image, overlap padding, moving regions, status grid.

Pure NumPy: no I/O and no ITK. Blocks follow the fixed level's storage chunks
so every read is chunk-aligned; a thin last block along an axis is merged into
its neighbour (a few-voxel block cannot be registered).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import Box, ImageGeometry, grid_points, one_per_axis
from ngff_dreg.interfaces import BlockInfo

__all__ = [
    "NO_BLOCK",
    "BlockPlan",
    "align_block_shape",
    "axis_chunks",
    "plan_blocks",
    "grid_chunks",
    "grid_part",
    "GridSlabs",
    "padded_intervals",
    "padding_for",
    "moving_region",
    "status_grid",
]

logger = logging.getLogger(__name__)

#: Status-grid value where the grid has no block result.
NO_BLOCK = -1


@dataclass(frozen=True)
class BlockPlan:
    """One scheduled block: where it is and what it reads.

    Attributes
    ----------
    info:
        The itk-dreg :class:`BlockInfo` (chunk index, unpadded slices).
    box:
        Unpadded block, NumPy order.
    padded:
        Block plus overlap, cropped to the image.

    """

    info: BlockInfo
    box: Box
    padded: Box


def align_block_shape(
    requested: Sequence[int] | None,
    chunk_shape: Sequence[int] | None,
    image_shape: Sequence[int],
    default: int = 128,
) -> tuple[int, ...]:
    """Round a requested block shape up to whole storage chunks (NumPy order).

    A log line says when the request was changed. Blocks never exceed the
    image.
    """
    ndim = len(image_shape)
    req = (
        [default] * ndim
        if requested is None
        else [int(v) for v in one_per_axis(requested, ndim, "block size")]
    )
    if any(v <= 0 for v in req):
        raise ValueError(f"block size must be positive, got {requested}")
    out = []
    for r, n, c in zip(req, image_shape, chunk_shape or [1] * ndim):
        c = max(1, int(c))
        aligned = max(c, int(math.ceil(r / c)) * c)
        out.append(min(aligned, int(math.ceil(n / c)) * c))
    if tuple(out) != tuple(req):
        logger.info(
            "block size %s rounded to %s: a multiple of the storage chunk %s",
            tuple(req),
            tuple(out),
            tuple(chunk_shape) if chunk_shape else None,
        )
    return tuple(out)


def axis_chunks(length: int, block: int, min_fraction: float = 0.5) -> tuple[int, ...]:
    """Block lengths along one axis.

    A last block thinner than ``min_fraction`` of ``block`` is merged into the
    one before it.
    """
    if length <= block:
        return (length,)
    n_full, rest = divmod(length, block)
    sizes = [block] * n_full
    if rest:
        if rest < min_fraction * block:
            sizes[-1] += rest
        else:
            sizes.append(rest)
    return tuple(sizes)


def padding_for(
    block_shape: Sequence[int], overlap_factors: Sequence[float] | float | None
) -> tuple[int, ...]:
    """Voxels of padding on each side: ``ceil(block * overlap / 2)``.

    ``overlap_factors`` is the *total* overlap as a fraction of the block
    length (itk-dreg's meaning), split evenly over the two sides.
    """
    ndim = len(block_shape)
    if overlap_factors is None:
        factors = [0.0] * ndim
    else:
        factors = [float(f) for f in one_per_axis(overlap_factors, ndim, "overlap_factors")]
    if any(f < 0 for f in factors):
        raise ValueError(f"overlap factors must be >= 0, got {overlap_factors}")
    return tuple(int(math.ceil(b * f * 0.5)) for b, f in zip(block_shape, factors))


def grid_chunks(image_shape: Sequence[int], block_shape: Sequence[int]
                ) -> tuple[tuple[int, ...], ...]:
    """Dask-style chunks of the block grid: the block lengths along each axis."""
    return tuple(axis_chunks(int(n), int(b)) for n, b in zip(image_shape, block_shape))


def plan_blocks(
    image_shape: Sequence[int],
    block_shape: Sequence[int],
    overlap_factors: Sequence[float] | float | None,
    *,
    grid_slab: tuple[int, int] | Box | None = None,
) -> tuple[list[BlockPlan], tuple[tuple[int, ...], ...]]:
    """Cut the image into blocks; returns the plans and dask-style chunks.

    ``grid_slab`` plans only a part of the block grid (the chunks are still
    the whole grid's), so a part of a huge grid is planned without the rest:
    ``(first, stop)``, the layers ``first:stop`` along axis 0 (its slowest
    axis), or a :class:`~ngff_dreg.geometry.Box` of block indices (a
    :class:`GridSlabs` slab or piece).
    """
    chunks = grid_chunks(image_shape, block_shape)
    part = grid_part(grid_slab, [len(c) for c in chunks])
    plans: list[BlockPlan] = []
    starts = _axis_starts(chunks)
    padded_axes = padded_intervals(image_shape, chunks, overlap_factors)
    for rest in np.ndindex(*part.shape):
        chunk_index = tuple(int(i) + a for i, a in zip(rest, part.start))
        start = tuple(starts[a][i] for a, i in enumerate(chunk_index))
        box = Box(start, tuple(s + chunks[a][i] for a, (s, i) in enumerate(zip(start,
                                                                                chunk_index))))
        padded = Box(tuple(padded_axes[a][i][0] for a, i in enumerate(chunk_index)),
                     tuple(padded_axes[a][i][1] for a, i in enumerate(chunk_index)))
        plans.append(BlockPlan(BlockInfo(chunk_index, box.slices), box, padded))
    return plans, chunks


def grid_part(grid_slab: tuple[int, int] | Box | None, grid_shape: Sequence[int]) -> Box:
    """The box of block indices a ``grid_slab`` (see :func:`plan_blocks`) names, checked."""
    shape = tuple(int(n) for n in grid_shape)
    if grid_slab is None:
        return Box.full(shape)
    if isinstance(grid_slab, Box):
        box = grid_slab
    else:
        first, stop = grid_slab
        box = Box((first, *(0 for _ in shape[1:])), (stop, *shape[1:]))
    if (box.ndim != len(shape) or box.is_empty
            or any(not 0 <= a < b <= n for a, b, n in zip(box.start, box.stop, shape))):
        raise ValueError(f"grid slab {grid_slab} is not inside the block grid {shape}")
    return box


class GridSlabs:
    """A block grid cut into slabs of at most ``max_blocks`` blocks each, in C order.

    A slab is a run of whole grid layers (along axis 0) when a layer fits;
    when it does not, each layer is cut into runs of whole rows (along axis
    1), and so on down the axes. The slabs are cut along :attr:`axis`,
    :attr:`step` indices at a time, one index along every earlier axis, and
    span the grid along every later one. They are numbered in C order, so a
    block's slab number never falls as any of its indices grows.

    A *piece* is one index along :attr:`axis` of a slab: a slab's part that
    is re-planned alone (its index prefix, ``axis + 1`` long).
    """

    def __init__(self, grid_shape: Sequence[int], max_blocks: int) -> None:
        self.shape = tuple(int(v) for v in grid_shape)
        if int(max_blocks) < 1:
            raise ValueError(f"at most {max_blocks} blocks per slab: needs at least 1")
        if not self.shape or min(self.shape) < 1:
            raise ValueError(f"a block grid of shape {self.shape} has no block")
        axis = next(a for a in range(len(self.shape))
                    if math.prod(self.shape[a + 1:]) <= int(max_blocks))
        self.axis = axis
        self.step = max(1, min(self.shape[axis], int(max_blocks) // math.prod(
            self.shape[axis + 1:])))
        self.per_row = -(-self.shape[axis] // self.step)  # slabs per run of the earlier axes

    def __len__(self) -> int:
        return math.prod(self.shape[:self.axis]) * self.per_row

    def describe(self) -> dict[str, Any]:
        """How the grid is cut, as JSON (what a rerun compares)."""
        return {"grid": list(self.shape), "axis": self.axis, "step": self.step}

    def box(self, s: int) -> Box:
        """Slab ``s`` as a box of block indices."""
        if not 0 <= s < len(self):
            raise IndexError(f"slab {s} of {len(self)}")
        outer = tuple(int(i) for i in np.unravel_index(s // self.per_row,
                                                       self.shape[:self.axis]))
        first = (s % self.per_row) * self.step
        stop = min(first + self.step, self.shape[self.axis])
        rest = self.shape[self.axis + 1:]
        return Box((*outer, first, *(0 for _ in rest)),
                   (*(i + 1 for i in outer), stop, *rest))

    def boxes(self) -> list[Box]:
        """Every slab's box, in order."""
        return [self.box(s) for s in range(len(self))]

    def slab_of(self, index: Sequence[int]) -> int:
        """The slab of a block (or piece) index: only its first ``axis + 1`` entries count."""
        outer = int(np.ravel_multi_index(tuple(int(i) for i in index[:self.axis]),
                                         self.shape[:self.axis]))
        return outer * self.per_row + int(index[self.axis]) // self.step

    def pieces(self, s: int) -> list[tuple[int, ...]]:
        """The pieces of slab ``s``, in order."""
        box = self.box(s)
        return [(*box.start[:self.axis], i)
                for i in range(box.start[self.axis], box.stop[self.axis])]

    def piece_box(self, piece: Sequence[int]) -> Box:
        """A piece as a box of block indices."""
        rest = self.shape[self.axis + 1:]
        return Box((*piece, *(0 for _ in rest)), (*(int(i) + 1 for i in piece), *rest))


def _axis_starts(chunks: Sequence[Sequence[int]]) -> list[list[int]]:
    """Per axis, the first voxel of each block along it."""
    return [[int(v) for v in np.concatenate([[0], np.cumsum(c)[:-1]])] for c in chunks]


def padded_intervals(
    image_shape: Sequence[int],
    chunks: Sequence[Sequence[int]],
    overlap_factors: Sequence[float] | float | None,
) -> list[list[tuple[int, int]]]:
    """Per axis, the padded ``(start, stop)`` of each block index along it.

    The padding of a block along one axis depends only on its length along
    that axis, so a plan's padded box is the product of these intervals
    (:func:`plan_blocks`); this gives the grid's geometry without a plan per
    block.
    """
    ndim = len(image_shape)
    factors = [0.0] * ndim if overlap_factors is None else [
        float(f) for f in one_per_axis(overlap_factors, ndim, "overlap_factors")]
    out = []
    for n, sizes, starts, f in zip(image_shape, chunks, _axis_starts(chunks), factors):
        axis = []
        for a, size in zip(starts, sizes):
            pad = padding_for((int(size),), f)[0]
            axis.append((max(0, a - pad), min(int(n), a + int(size) + pad)))
        out.append(axis)
    return out


def moving_region(
    fixed_geometry: ImageGeometry,
    fixed_box: Box,
    moving_geometry: ImageGeometry,
    map_points: Any,
    *,
    per_axis: int = 7,
    pad_voxels: int | Sequence[int] = 4,
    min_inside_fraction: float = 0.1,
) -> tuple[Box | None, float]:
    """Moving-image box holding the fixed box mapped through a transform.

    Points on a lattice over ``fixed_box`` (its faces, edges and interior,
    ``per_axis`` nodes per axis, not only the corners) are mapped to the
    moving image; their index bounding box is padded by ``pad_voxels`` and
    clipped to the moving image.

    Returns
    -------
    box, inside_fraction:
        ``box`` is ``None`` when fewer than ``min_inside_fraction`` of the
        mapped points fall inside the moving image (the block is out of
        bounds).

    """
    idx = grid_points(fixed_box, per_axis)
    pts = fixed_geometry.array_index_to_physical(idx)
    mapped = np.asarray(map_points(pts), dtype=np.float64)
    midx = moving_geometry.physical_to_index(mapped)[:, ::-1]
    if not np.all(np.isfinite(midx)):
        return None, 0.0
    shape = np.asarray(moving_geometry.shape)
    inside = np.all((midx >= -0.5) & (midx <= shape - 0.5), axis=1)
    frac = float(inside.mean())
    if frac < min_inside_fraction:
        return None, frac
    pad = [int(p) for p in one_per_axis(pad_voxels, moving_geometry.ndim, "pad_voxels")]
    lo = np.floor(midx.min(axis=0)).astype(int)
    hi = np.ceil(midx.max(axis=0)).astype(int) + 1
    box = Box(tuple(lo), tuple(hi)).pad(pad).clip(moving_geometry.shape)
    if box.is_empty:
        return None, frac
    return box, frac


def status_grid(
    entries: Iterable[tuple[Sequence[int], int]], shape: Sequence[int] | None = None
) -> npt.NDArray[np.int16]:
    """Block status codes arranged on the block grid (:data:`NO_BLOCK` where none).

    Parameters
    ----------
    entries:
        ``(chunk_index, status)`` of each block result (NumPy order).
    shape:
        The block grid's shape; by default the smallest grid holding every
        entry (``(0,)`` without entries).

    """
    items = [(tuple(int(i) for i in idx), int(s)) for idx, s in entries]
    if shape is None:
        if not items:
            return np.zeros((0,), dtype=np.int16)
        shape = tuple(int(v) + 1 for v in np.max([i for i, _ in items], axis=0))
    out = np.full(tuple(int(n) for n in shape), NO_BLOCK, dtype=np.int16)
    for idx, s in items:
        out[idx] = s
    return out
