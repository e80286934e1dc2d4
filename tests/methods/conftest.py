"""Synthetic block pairs with known fixed→moving ground truth for the method tests."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from ngff_dreg import synthetic
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import BlockInfo
from ngff_dreg.itk_bridge import image_from_array, preload_itk
from ngff_dreg.transforms import AffineTransform, TransformChain


@dataclass
class BlockPair:
    fixed: Any
    moving: Any
    initial: Any
    info: BlockInfo
    truth: Any
    fixed_geom: ImageGeometry
    block: Box

    def errors(self, result_transform: Any, per_axis: int = 6) -> np.ndarray:
        """|initial(result(x)) - truth(x)| over points inside the (unpadded) block."""
        box = Box(
            tuple(a + max(1, (b - a) // 8) for a, b in zip(self.block.start, self.block.stop)),
            tuple(b - max(1, (b - a) // 8) for a, b in zip(self.block.start, self.block.stop)),
        )
        pts = self.fixed_geom.sample_points(box, per_axis)
        want = self.truth.transform_points(pts)
        got = np.empty_like(pts)
        for i, p in enumerate(pts):
            q = result_transform.TransformPoint([float(v) for v in p])
            got[i] = self.initial.TransformPoint([float(v) for v in q])
        return np.linalg.norm(got - want, axis=1)


def texture(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth random texture (band-limited noise) with values in [0, 1]."""
    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.standard_normal(shape), 2.5)
    img += 0.5 * ndimage.gaussian_filter(rng.standard_normal(shape), 6.0)
    img -= img.min()
    return (img / img.max()).astype(np.float32)


def rotation_direction(ndim: int, degrees: float) -> np.ndarray:
    if ndim == 2:
        return synthetic.small_rotation(2, degrees)
    return synthetic.small_rotation(3, degrees, axis=2) @ synthetic.small_rotation(
        3, degrees / 2, axis=0
    )


def make_pair(
    ndim: int,
    *,
    residual: AffineTransform | None = None,
    field_max: float = 0.0,
    initial: AffineTransform | None = None,
    initial_field_max: float = 0.0,
    block: int = 48,
    pad: int = 8,
    spacing: tuple[float, ...] | None = None,
    direction_deg: float = 0.0,
    full: int | None = None,
    seed: int = 0,
    block_start: int | None = None,
) -> BlockPair:
    """Build a fixed block and a moving region whose truth is ``initial ∘ residual``.

    The fixed image is ``full`` voxels per axis with anisotropic ``spacing``
    and a rotated direction; the block sits in its middle (non-zero start).
    """
    preload_itk()
    full = full or (block + 2 * pad + 16)
    spacing = spacing or ((1.0, 0.8) if ndim == 2 else (1.0, 0.8, 1.3))
    direction = rotation_direction(ndim, direction_deg)
    shape = (full,) * ndim
    size_phys = np.asarray(shape[::-1]) * np.asarray(spacing)
    origin = -direction @ (size_phys / 2)  # image centre near the physical origin
    fixed_geom = ImageGeometry(shape, spacing, origin, direction)

    initial_affine = initial or AffineTransform.identity(ndim)
    residual = residual or AffineTransform.identity(ndim)
    field = None
    if field_max > 0:
        field = synthetic.smooth_displacement(
            fixed_geom, field_max, control_points=4, seed=seed + 1
        )
    init_field = None
    if initial_field_max > 0:
        init_field = synthetic.smooth_displacement(
            fixed_geom, initial_field_max, control_points=3, seed=seed + 7
        )
    initial = TransformChain(initial_affine, init_field)
    # truth(x) = initial(residual(x + field(x)))
    truth = Composed(initial, TransformChain(residual, field))

    start = block_start if block_start is not None else (full - block) // 2
    bbox = Box((start,) * ndim, (start + block,) * ndim)
    pbox = bbox.pad([pad] * ndim).clip(shape)

    # moving image: isotropic grid with identity direction around where the
    # padded block lands under the truth, with a margin
    pts = fixed_geom.sample_points(pbox, per_axis=5)
    mspacing = float(np.mean(spacing))
    lo_t = truth.transform_points(pts).min(axis=0)
    hi_t = truth.transform_points(pts).max(axis=0)
    lo_i = initial.transform_points(pts).min(axis=0)
    hi_i = initial.transform_points(pts).max(axis=0)
    lo = np.minimum(lo_t, lo_i) - 2 * pad * mspacing
    hi = np.maximum(hi_t, hi_i) + 2 * pad * mspacing
    mshape = tuple(int(v) for v in np.ceil((hi - lo) / mspacing)[::-1] + 1)
    moving_geom = ImageGeometry(mshape, (mspacing,) * ndim, lo)
    moving = texture(mshape, seed)
    fixed = synthetic.warp_to_fixed(moving, moving_geom, fixed_geom.sub(pbox.slices), truth)
    fixed_img = image_from_array(fixed, fixed_geom, pbox, requested=bbox)

    # moving region: bounds of the padded block mapped through the initial transform
    midx = moving_geom.physical_to_index(initial.transform_points(pts))[:, ::-1]
    mlo = np.floor(midx.min(axis=0)).astype(int) - pad
    mhi = np.ceil(midx.max(axis=0)).astype(int) + pad + 1
    mbox = Box(tuple(mlo), tuple(mhi)).clip(mshape)
    moving_img = image_from_array(moving[mbox.slices], moving_geom, mbox)
    info = BlockInfo(chunk_index=(1,) * ndim, array_slice=bbox.slices)
    return BlockPair(fixed_img, moving_img, initial.to_itk(), info, truth, fixed_geom, bbox)


@dataclass(frozen=True)
class Composed:
    """``outer(inner(x))`` for plain transforms with ``transform_points``."""

    outer: Any
    inner: Any

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        return self.outer.transform_points(self.inner.transform_points(points))


@pytest.fixture
def synth() -> SimpleNamespace:
    """Helpers for the method tests (importlib mode forbids importing conftest)."""
    return SimpleNamespace(
        make_pair=make_pair,
        translation=translation,
        rotation_about=rotation_about,
        random_affine=synthetic.random_affine,
        AffineTransform=AffineTransform,
    )


def translation(ndim: int, shift: tuple[float, ...]) -> AffineTransform:
    return AffineTransform.from_arrays(np.eye(ndim), shift)


def rotation_about(ndim: int, degrees: float, centre: np.ndarray, shift=None) -> AffineTransform:
    m = (
        synthetic.small_rotation(ndim, degrees, axis=2)
        if ndim == 3
        else synthetic.small_rotation(2, degrees)
    )
    t = centre - m @ centre + (np.zeros(ndim) if shift is None else np.asarray(shift))
    return AffineTransform.from_arrays(m, t)
