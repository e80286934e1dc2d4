"""MIND-SSC self-similarity descriptors: a similarity that holds across contrasts.

The modality independent neighbourhood descriptor (MIND, Heinrich et al. 2012)
describes each voxel by how alike small patches around it are to one another,
not by its intensity. Its self-similarity-context form (MIND-SSC, Heinrich et
al. 2013) compares the patches centred on pairs of the voxel's 2·ndim direct
neighbours that are √2 apart: 4 pairs in 2D, 12 in 3D. For a pair ``(a, b)``

    D_ab(x) = G_σ * (I(x + a) - I(x + b))²              (patch distance)
    MIND_ab(x) = exp(-(D_ab(x) - min_pairs D(x)) / V(x)),

with ``V`` the mean over pairs of the shifted distances (a local noise
estimate), floored at a fraction of its median over the image so that flat
background reads as "every patch alike" in both images. A T1 edge and a T2 edge
at the same place give the same descriptor although their intensities are
unrelated, and a smooth multiplicative attenuation (lightsheet illumination,
bias fields) scales both the distances and ``V`` and cancels.

The descriptors are smooth functions of the image, so the sum of squared
descriptor differences over the channels is a least-squares data term that the
Gauss-Newton solvers fit like an intensity residual, one residual per channel.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = [
    "AUTO",
    "BLOCK_NOISE_FLOOR",
    "GLOBAL_LOCAL_FLOOR_SIGMA",
    "SIMILARITIES",
    "channel_gradients",
    "mind_ssc",
    "ssc_pairs",
]

FloatArray = npt.NDArray[np.float64]

#: Similarities the Gauss-Newton solvers fit: an intensity model (a function of
#: the moving intensity predicts the fixed one), or MIND-SSC descriptors.
SIMILARITIES = ("intensity", "mind")
#: Also accepted by schedules: the global stage aligns with MIND and then picks
#: one of :data:`SIMILARITIES` for the block stages (see
#: :func:`ngff_dreg.global_stage.choose_similarity`).
AUTO = "auto"
#: ``V`` is floored at this fraction of its :data:`FLOOR_PERCENTILE` th
#: percentile over the image.
VARIANCE_FLOOR = 0.5
FLOOR_PERCENTILE = 50.0
#: The noise level of an image region: this percentile over the image of the
#: mean patch distance ``mean_pairs D`` (in flat regions, about twice the
#: noise variance of the smoothed image; edges and texture are far above it).
NOISE_PERCENTILE = 10.0
#: The block solvers floor ``V`` at this multiple of the noise level too, so
#: that noise in flat background reads as flat instead of as structure.
#: Without it the per-block floor (half the median ``V``) sits below the noise
#: of a block that is mostly background, the descriptors of the noise take
#: their full range, and the fit matches noise to noise and folds there
#: (whole-field det J down to -1 on 2D T1 against T2-like pairs; with it, > 0).
BLOCK_NOISE_FLOOR = 6.0
#: The global stage floors ``V`` locally (``local_floor_sigma``, voxels of its
#: level): on a 3D lightsheet-like pair lit from opposite sides, this took the
#: global stage's p95 error from 2.98 to 1.93 voxels (2D: 1.82 to 1.67); the
#: other contrasts' moved by under 0.1 voxel either way (reduced tuning cases).
GLOBAL_LOCAL_FLOOR_SIGMA = 8.0


def ssc_pairs(ndim: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The pairs of direct neighbours that are √2 apart (NumPy-order offsets)."""
    units = []
    for axis in range(ndim):
        for sign in (-1, 1):
            off = [0] * ndim
            off[axis] = sign
            units.append(tuple(off))
    # two unit offsets are √2 apart when they lie on different axes
    return [(a, b) for a, b in itertools.combinations(units, 2)
            if int(np.argmax(np.abs(a))) != int(np.argmax(np.abs(b)))]


def channel_gradients(channels: list[npt.NDArray[np.floating]] | npt.NDArray[np.floating]
                      ) -> list[list[FloatArray]]:
    """Per channel, its central-difference gradient along every axis (zero on length-1 axes)."""
    return [[np.gradient(c, axis=k) if c.shape[k] > 1 else np.zeros_like(c)
             for k in range(c.ndim)] for c in channels]


def _shifted(padded: npt.NDArray[np.float32], offset: tuple[int, ...], shape: tuple[int, ...]
             ) -> npt.NDArray[np.float32]:
    """``I(x + offset)`` from an image padded by one voxel per side."""
    return padded[tuple(slice(1 + o, 1 + o + n) for o, n in zip(offset, shape))]


def mind_ssc(image: npt.ArrayLike, patch_sigma: float | Sequence[float] = 1.0,
             valid: npt.NDArray[np.bool_] | None = None,
             noise_floor: float = 0.0,
             local_floor_sigma: float = 0.0) -> npt.NDArray[np.float32]:
    """MIND-SSC descriptors of ``image``: ``(channels, *image.shape)`` float32 in (0, 1].

    Parameters
    ----------
    image:
        2D or 3D image (NumPy order); axes of length 1 are allowed.
    patch_sigma:
        Gaussian patch size in voxels: one for every axis, or one per axis
        (NumPy order; a physically isotropic patch on anisotropic voxels).
    valid:
        Where the image holds data; the variance floor is taken over it.
    noise_floor:
        Also floor ``V`` at this multiple of the image's noise level (the
        :data:`NOISE_PERCENTILE` th percentile of the mean patch distance);
        0 leaves noise its full descriptor range.
    local_floor_sigma:
        > 0: floor ``V`` at half its local mean (Gaussian of this sigma, in
        voxels) instead of half its median over the image (and still at
        the noise floor). An image lit unevenly (10x across it) has its dim
        side's ``V`` far below the image's median, which a global floor
        flattens; the local floor scales with the light.

    """
    img = np.asarray(image, dtype=np.float32)
    shape = img.shape
    padded = np.pad(img, 1, mode="edge")
    pairs = ssc_pairs(img.ndim)
    dist = np.empty((len(pairs), *shape), dtype=np.float32)
    for c, (a, b) in enumerate(pairs):
        diff = _shifted(padded, a, shape) - _shifted(padded, b, shape)
        ndimage.gaussian_filter(diff * diff, patch_sigma, output=dist[c], mode="nearest")
    inside = valid if valid is not None and valid.any() else None
    noise = 0.0
    if noise_floor > 0 and dist.size:
        mean_dist = dist.mean(axis=0)
        noise = float(np.percentile(mean_dist if inside is None else mean_dist[inside],
                                    NOISE_PERCENTILE))
    dist -= dist.min(axis=0, keepdims=True)
    var = dist.mean(axis=0)
    floor: float | npt.NDArray[np.float32]
    if local_floor_sigma > 0:  # half the local mean of V instead of half its median
        weight = np.ones(shape, np.float32) if inside is None else inside.astype(np.float32)
        num = ndimage.gaussian_filter(var * weight, local_floor_sigma, mode="nearest")
        den = ndimage.gaussian_filter(weight, local_floor_sigma, mode="nearest")
        floor = VARIANCE_FLOOR * num / np.maximum(den, 1e-6)
    else:
        sel = var if inside is None else var[inside]
        floor = float(np.percentile(sel, FLOOR_PERCENTILE)) * VARIANCE_FLOOR if sel.size else 0.0
    var = np.maximum(var, np.maximum(floor, max(noise_floor * noise, 1e-12)))
    np.divide(dist, var[None], out=dist)
    np.negative(dist, out=dist)
    np.exp(dist, out=dist)
    return dist
