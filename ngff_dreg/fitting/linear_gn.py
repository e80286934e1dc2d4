"""Gauss-Newton fit of a rigid or affine transform between two whole images (NumPy only).

The global stage's solver. Fixed voxels (on a lattice) are mapped through the
current transform into the moving image; the residual of the intensity model
(:mod:`~ngff_dreg.fitting.intensity`) is linearised in the transform's
parameters and every Levenberg-Marquardt step solves a small dense system.
Rigid steps are rotations about the mapped centre of the fixed image
(small-angle updates composed with Rodrigues' formula) plus a translation;
affine steps act on coordinates centred there. Each kind runs at every
smoothing sigma, coarse to fine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ngff_dreg.fitting.descriptors import (
    GLOBAL_LOCAL_FLOOR_SIGMA,
    SIMILARITIES,
    mind_ssc,
)
from ngff_dreg.fitting.intensity import IntensityModel, polynomial_terms
from ngff_dreg.fitting.interpolation import ChannelSampler
from ngff_dreg.fitting.lattice import lattice_strides, physical_sigmas
from ngff_dreg.geometry import ImageGeometry

__all__ = ["KINDS", "MAX_SAMPLES", "LinearFitResult", "capped_strides", "linear_fit"]

FloatArray = npt.NDArray[np.float64]
KINDS = ("translation", "rigid", "affine")


@dataclass
class LinearFitResult:
    """The fixed→moving map ``x -> matrix @ x + translation`` (physical, ITK order)."""

    matrix: FloatArray
    translation: FloatArray
    value: float
    iterations: int
    history: list[tuple[str, float, float]] = field(default_factory=list)


def rotation_matrix(omega: FloatArray) -> FloatArray:
    """Rotation of a rotation vector (3-D) or of an angle (2-D, one entry)."""
    if omega.size == 1:
        c, s = math.cos(float(omega[0])), math.sin(float(omega[0]))
        return np.array([[c, -s], [s, c]])
    theta = float(np.linalg.norm(omega))
    if theta < 1e-12:
        return np.eye(3)
    k = omega / theta
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.asarray(np.eye(3) + math.sin(theta) * kx + (1 - math.cos(theta)) * (kx @ kx))


class _MovingSampler:
    """The smoothed moving image (or its descriptors) and physical gradients at points."""

    def __init__(self, moving: FloatArray, geom: ImageGeometry, sigma: float,
                 similarity: str = "intensity", patch_sigma: float = 2.0) -> None:
        img = ndimage.gaussian_filter(moving, physical_sigmas(sigma, geom)) if sigma > 0 \
            else moving
        imgs = list(mind_ssc(img, physical_sigmas(patch_sigma, geom),
                             local_floor_sigma=GLOBAL_LOCAL_FLOOR_SIGMA)) \
            if similarity == "mind" else [img]
        self.to_index = np.linalg.inv(geom.index_to_physical_matrix)
        # d(NumPy index)/d(physical, ITK order): the sampler gives physical gradients
        self.channels = ChannelSampler(imgs, gradient_matrix=self.to_index[::-1])
        self.origin = np.asarray(geom.origin, dtype=np.float64)
        self.shape = np.asarray(img.shape)

    def __call__(self, pts: FloatArray, gradient: bool
                 ) -> tuple[FloatArray, FloatArray | None, npt.NDArray[np.bool_]]:
        """``(channels (C, n), physical gradients (C, n, nd), inside)`` at ``pts``."""
        cidx = ((pts - self.origin) @ self.to_index.T)[:, ::-1].T
        inside = np.all((cidx >= 0) & (cidx <= (self.shape - 1)[:, None]), axis=0)
        w, g = self.channels.sample(cidx, gradient)
        return w, None if g is None else g.astype(np.float64), inside


def _jacobian(kind: str, sg: FloatArray, xc: FloatArray, q: FloatArray,
              mapped_centre: FloatArray) -> FloatArray:
    """d(residual)/d(step parameters) of ``kind`` (``sg``: one channel's slope x gradient)."""
    nd = sg.shape[1]
    if kind == "translation":
        return sg
    if kind == "rigid":
        r = q - mapped_centre
        if nd == 2:
            return np.column_stack([sg[:, 1] * r[:, 0] - sg[:, 0] * r[:, 1], sg])
        return np.column_stack([np.cross(r, sg), sg])
    cols = [sg[:, i] * xc[:, j] for i in range(nd) for j in range(nd)]
    return np.column_stack([*cols, sg])


def _apply_step(kind: str, delta: FloatArray, a: FloatArray, t: FloatArray,
                centre: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The transform after a step (``centre``: the fixed image's centre)."""
    nd = a.shape[0]
    mapped_centre = a @ centre + t
    if kind == "translation":
        return a, t + delta
    if kind == "rigid":
        n_rot = 1 if nd == 2 else 3
        a_new = rotation_matrix(delta[:n_rot]) @ a
        return a_new, mapped_centre + delta[n_rot:] - a_new @ centre
    a_new = a + delta[: nd * nd].reshape(nd, nd)
    return a_new, mapped_centre + delta[nd * nd :] - a_new @ centre


Evaluation = tuple[float, FloatArray, FloatArray, FloatArray]


def _levenberg_marquardt(
    kind: str,
    evaluate: Callable[[FloatArray, FloatArray], Evaluation],
    a: FloatArray, t: FloatArray, xc: FloatArray, centre: FloatArray,
    iterations: int, tolerance: float, history: list[tuple[str, float, float]],
) -> tuple[FloatArray, FloatArray, float, int]:
    """Iterate one kind at one smoothing level; returns the transform and objective.

    ``evaluate(a, t)`` gives ``(objective, residuals (C, n), Jacobians in the
    mapped point (C, n, nd), mapped points)``: one channel per residual.
    """
    val, r, jg, q = evaluate(a, t)
    kappa = float(np.mean(np.sum(jg**2, axis=(0, 2)))) / jg.shape[2] or 1.0
    mu = 1e-3
    its = 0
    for _ in range(int(iterations)):
        its += 1
        h = rhs = None
        for c in range(jg.shape[0]):
            jac = _jacobian(kind, jg[c], xc, q, a @ centre + t)
            h = jac.T @ jac if h is None else h + jac.T @ jac
            rhs = jac.T @ r[c] if rhs is None else rhs + jac.T @ r[c]
        assert h is not None and rhs is not None
        d = np.diag(h).copy()
        d[d <= 0] = 1.0
        try:
            delta = -np.asarray(np.linalg.solve(h + mu * np.diag(d), rhs), np.float64)
        except np.linalg.LinAlgError:
            break
        a_new, t_new = _apply_step(kind, delta, a, t, centre)
        new = evaluate(a_new, t_new)
        history.append((kind, val / kappa, new[0] / kappa))
        if new[0] < val:
            rel = (val - new[0]) / max(val, 1e-30)
            a, t = a_new, t_new
            val, r, jg, q = new
            mu = max(mu / 3.0, 1e-7)
            if rel < tolerance:
                break
        else:
            mu *= 8.0
            if mu > 1e3:
                break
    return a, t, val / kappa, its


#: Default cap on the samples of one level of :func:`linear_fit`.
MAX_SAMPLES = 200_000


def capped_strides(stride: int, geom: ImageGeometry, max_samples: int) -> list[int]:
    """:func:`lattice_strides` from ``stride`` up, until at most ``max_samples`` samples."""
    factor = max(1, int(stride))
    while True:
        steps = lattice_strides(factor, geom)
        count = int(np.prod([-(-n // s) for n, s in zip(geom.shape, steps)]))
        if count <= max_samples or all(s >= n for n, s in zip(geom.shape, steps)):
            return steps
        factor += 1


def _fixed_samples(fixed: FloatArray, geom: ImageGeometry, centre: FloatArray, sigma: float,
                   steps: Sequence[int], similarity: str, patch_sigma: float
                   ) -> tuple[tuple[int, ...], FloatArray, FloatArray]:
    """One smoothing level's lattice shape, sample positions and fixed channels.

    Positions are relative to ``centre``; the channels are ``(C, N)``.
    """
    axes = [np.arange((n % s) // 2, n, s) for n, s in zip(fixed.shape, steps)]
    lat_shape = tuple(len(ax) for ax in axes)
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, geom.ndim)
    xc = geom.array_index_to_physical(idx.astype(np.float64)) - centre
    f_img = ndimage.gaussian_filter(fixed, physical_sigmas(sigma, geom)) if sigma > 0 \
        else fixed
    f_chan = list(mind_ssc(f_img, physical_sigmas(patch_sigma, geom),
                           local_floor_sigma=GLOBAL_LOCAL_FLOOR_SIGMA)) \
        if similarity == "mind" else [f_img]
    f_all = np.stack([np.asarray(c, dtype=np.float64)[np.ix_(*axes)].reshape(-1)
                      for c in f_chan])
    return lat_shape, xc, f_all


def linear_fit(
    fixed: FloatArray,
    fixed_geom: ImageGeometry,
    moving: FloatArray,
    moving_geom: ImageGeometry,
    matrix: FloatArray,
    translation: FloatArray,
    *,
    kinds: Sequence[str] = ("rigid", "affine"),
    sigmas: Sequence[float] = (2.0, 1.0, 0.0),
    strides: Sequence[int] = (2, 1, 1),
    iterations: int = 20,
    intensity: str = "piecewise",
    gain_degree: int = 1,
    tolerance: float = 1e-4,
    max_samples: int = MAX_SAMPLES,
    similarity: str = "intensity",
    patch_sigma: float = 2.0,
) -> LinearFitResult:
    """Refine the fixed→moving affine ``(matrix, translation)`` by Gauss-Newton.

    Parameters
    ----------
    fixed, moving:
        Whole images (NumPy order) and their geometries.
    matrix, translation:
        The starting transform (physical, ITK order).
    kinds:
        Run in order at every smoothing level: ``"translation"``,
        ``"rigid"``, ``"affine"``.
    sigmas, strides:
        Per level, coarse to fine: Gaussian sigma and lattice stride, in
        voxels of the finest axis.
    iterations, tolerance:
        Per kind and level: maximum iterations, and the relative decrease
        below which an iteration ends it.
    intensity, gain_degree:
        The intensity model (:class:`~ngff_dreg.fitting.intensity.IntensityModel`).
    max_samples:
        A level's stride grows until its lattice has at most this many
        samples: twelve parameters need far fewer than a whole image's
        voxels, and the cost of a level stays bounded whatever its size.
        With ``similarity="mind"`` each sample holds several channels, so a
        quarter as many samples are taken.
    similarity:
        ``"intensity"`` (the intensity model) or ``"mind"`` (MIND-SSC
        descriptors of both images, :mod:`~ngff_dreg.fitting.descriptors`).
    patch_sigma:
        MIND-SSC patch size (Gaussian sigma, voxels): larger than the block
        fits' by default, for the wider capture range a coarse whole-image
        alignment needs.

    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if similarity == "mind":
        max_samples = max(1, max_samples // 4)
    if bad := [k for k in kinds if k not in KINDS]:
        raise ValueError(f"linear kind {bad[0]!r} is not one of {KINDS}")
    if len(sigmas) != len(strides):
        raise ValueError("sigmas and strides need the same length")
    a = np.asarray(matrix, dtype=np.float64).copy()
    t = np.asarray(translation, dtype=np.float64).copy()
    centre = fixed_geom.index_to_physical((np.asarray(fixed_geom.size) - 1) / 2.0)
    history: list[tuple[str, float, float]] = []
    its, value = 0, math.nan
    moving = np.asarray(moving, dtype=np.float64)
    for sigma, stride in zip(sigmas, strides):
        lat_shape, xc, f_all = _fixed_samples(fixed, fixed_geom, centre, float(sigma),
                                              capped_strides(int(stride), fixed_geom,
                                                             max_samples),
                                              similarity, patch_sigma)
        sampler = _MovingSampler(moving, moving_geom, float(sigma), similarity, patch_sigma)
        for kind in kinds:
            _, _, inside = sampler(xc @ a.T + (a @ centre + t), False)
            n_in = int(inside.sum())
            if n_in < 64:
                continue
            fm, xm = f_all[:, inside], xc[inside]
            poly = polynomial_terms(lat_shape, gain_degree)[inside] if gain_degree else None
            model = IntensityModel.for_samples(intensity, 12, poly, n_in)

            def evaluate(a_: FloatArray, t_: FloatArray, xm: FloatArray = xm,
                         fm: FloatArray = fm, model: IntensityModel = model,
                         sampler: _MovingSampler = sampler) -> Evaluation:
                q = xm @ a_.T + (a_ @ centre + t_)
                w, g, _ = sampler(q, True)
                assert g is not None
                if similarity == "mind":
                    r = w - fm
                    return float(np.sum(r * r)) / r.shape[1], r, g, q
                pred, slope = model.fit(w[0], fm[0])
                r = (pred - fm[0])[None]
                return float(np.sum(r * r)) / r.shape[1], r, slope[None, :, None] * g, q

            a, t, value, n = _levenberg_marquardt(kind, evaluate, a, t, xm, centre,
                                                  iterations, tolerance, history)
            its += n
    return LinearFitResult(a, t, value, its, history)
