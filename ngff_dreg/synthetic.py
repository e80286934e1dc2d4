"""Synthetic ground truth: smooth warps, phantoms and exact resampling.

Used by the demo, the tests and the benchmarks to build image pairs whose
fixed→moving transform is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.transforms import AffineTransform, DisplacementField, TransformChain

__all__ = [
    "smooth_displacement",
    "textured_phantom",
    "warp_to_fixed",
    "small_rotation",
    "random_affine",
]


def smooth_displacement(
    geometry: ImageGeometry,
    max_displacement: float,
    *,
    grid_spacing: Sequence[float] | None = None,
    control_points: int = 4,
    seed: int = 0,
) -> DisplacementField:
    """A smooth random displacement field with a known maximum magnitude.

    Random vectors on a coarse lattice of ``control_points`` nodes per axis are
    interpolated with cubic splines onto a grid over ``geometry``'s extent, then
    scaled so the largest component magnitude is ``max_displacement``
    (physical units).
    """
    rng = np.random.default_rng(seed)
    field_geom = geometry.with_spacing(
        grid_spacing if grid_spacing is not None else tuple(4 * s for s in geometry.spacing)
    )
    ndim = geometry.ndim
    coarse = rng.standard_normal((ndim,) + (control_points,) * ndim)
    zoom = [(n - 1) / (control_points - 1) if control_points > 1 else 1 for n in field_geom.shape]
    data = np.empty((ndim, *field_geom.shape))
    for c in range(ndim):
        up = ndimage.zoom(coarse[c], [max(z, 1e-9) for z in zoom], order=3, mode="nearest")
        sl = tuple(slice(0, n) for n in field_geom.shape)
        pad = [(0, max(0, n - u)) for n, u in zip(field_geom.shape, up.shape)]
        data[c] = np.pad(up, pad, mode="edge")[sl]
    peak = float(np.abs(data).max()) or 1.0
    data *= max_displacement / peak
    return DisplacementField(field_geom, data=data)


def textured_phantom(
    shape: Sequence[int], *, seed: int = 0, blobs: int = 60, texture: float = 0.0
) -> npt.NDArray[np.float32]:
    """A textured phantom (Gaussian blobs over an ellipsoid), values in [0, 1].

    ``texture`` adds that much band-limited random texture (features of a
    few voxels, like tissue) inside the ellipsoid; without it the phantom has
    only smooth blobs, which constrain a deformable fit poorly.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = cast(npt.NDArray[np.float64], sum(g**2 / 0.8**2 for g in grids))
    img = 0.3 * (r2 < 1.0).astype(np.float64)
    for _ in range(blobs):
        c = rng.uniform(-0.75, 0.75, len(shape))
        w = rng.uniform(0.04, 0.15)
        a = rng.uniform(0.2, 0.8)
        img += a * np.exp(-sum((g - ci) ** 2 for g, ci in zip(grids, c)) / (2 * w**2))
    if texture > 0:
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
        noise /= np.abs(noise).max() or 1.0
        img += texture * noise * (r2 < 1.0)
    img = ndimage.gaussian_filter(img, 1.0)
    img -= img.min()
    img /= img.max() or 1.0
    out: npt.NDArray[np.float32] = img.astype(np.float32)
    return out


def warp_to_fixed(
    moving: npt.NDArray[np.floating],
    moving_geometry: ImageGeometry,
    fixed_geometry: ImageGeometry,
    transform: TransformChain | AffineTransform,
    *,
    order: int = 1,
    chunk: int = 1 << 20,
) -> npt.NDArray[np.float32]:
    """Resample ``moving`` onto ``fixed_geometry`` through a fixed→moving transform.

    ``out[x] = moving(transform(x))``. If ``fixed = warp_to_fixed(moving, ...)``
    then ``transform`` is the ground truth a registration must recover.
    """
    out = np.empty(fixed_geometry.shape, dtype=np.float32)
    flat = out.reshape(-1)
    total = flat.size
    shape = np.asarray(fixed_geometry.shape)
    for start in range(0, total, chunk):
        lin = np.arange(start, min(total, start + chunk))
        idx = np.stack(np.unravel_index(lin, shape), axis=-1).astype(np.float64)
        pts = fixed_geometry.array_index_to_physical(idx)
        mpts = transform.transform_points(pts)
        midx = moving_geometry.physical_to_index(mpts)[:, ::-1]
        flat[start : start + lin.size] = ndimage.map_coordinates(
            moving, midx.T, order=order, mode="constant", cval=0.0
        )
    return out


def small_rotation(ndim: int, degrees: float, axis: int = 0) -> npt.NDArray[np.float64]:
    """Rotation matrix by ``degrees`` (about ITK axis ``axis`` in 3D)."""
    th = np.deg2rad(degrees)
    c, s = np.cos(th), np.sin(th)
    if ndim == 2:
        return np.array([[c, -s], [s, c]])
    r = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def random_affine(
    ndim: int,
    *,
    degrees: float,
    scale: float,
    shear: float,
    translation: float,
    center: npt.ArrayLike,
    seed: int = 0,
) -> AffineTransform:
    """A random affine about ``center``: rotation, scale, shear and translation bounds."""
    rng = np.random.default_rng(seed)
    m = np.eye(ndim)
    for axis in range(3 if ndim == 3 else 1):
        m = small_rotation(ndim, rng.uniform(-degrees, degrees), axis) @ m
    m = m @ np.diag(1 + rng.uniform(-scale, scale, ndim))
    sh = np.eye(ndim) + np.triu(rng.uniform(-shear, shear, (ndim, ndim)), 1)
    m = m @ sh
    c = np.asarray(center, dtype=np.float64)
    t = c - m @ c + rng.uniform(-translation, translation, ndim)
    return AffineTransform.from_arrays(m, t)
