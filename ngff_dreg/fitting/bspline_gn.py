"""Gauss-Newton fit of a cubic B-spline deformation over one block (NumPy only).

Given the padded fixed block ``F`` and the moving image resampled onto the
same grid through the initial transform, ``W(x) = moving(initial(x))``, find
B-spline coefficients ``c`` (the displacement ``u(x) = B(x) c`` acting before
the initial transform) that minimise

    mean over samples of (model(W(x + u(x))) - F(x))² / kappa  +  bending · c^T Q c

where ``model`` is the intensity model of :mod:`~ngff_dreg.fitting.intensity`,
``kappa`` the data term's curvature for a uniform one-unit shift (so the data
term is in squared physical units whatever the contrast), and ``Q`` the
bending energy measured in control cells (:func:`~ngff_dreg.fitting.lattice.
bending_operator`).

The samples sit on a regular lattice, so the displacement, the gradient and
the Gauss-Newton matrix-vector product are tensor products of per-axis weight
matrices (:mod:`~ngff_dreg.fitting.lattice`). Each Levenberg-Marquardt
iteration solves ``(J^T J / n kappa + Q + mu D) dc = -g`` with a few
Jacobi-preconditioned conjugate-gradient steps; a step is kept only when it
lowers the objective. Passes run coarse to fine over lattice strides and
smoothing sigmas, the sample mask (samples whose displaced point stays inside
the moving data) fixed per pass, so dropping samples can never lower the
objective. A held-out lattice, between the last pass's samples, measures the
data term before and after the fit, for the caller's acceptance test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage, sparse

from ngff_dreg.fitting.descriptors import (
    BLOCK_NOISE_FLOOR,
    SIMILARITIES,
    mind_ssc,
)
from ngff_dreg.fitting.intensity import INTENSITY_MODELS, IntensityModel, polynomial_terms
from ngff_dreg.fitting.interpolation import ChannelSampler
from ngff_dreg.fitting.lattice import (
    BSplineLattice,
    apply_axes,
    bending_operator,
    lattice_strides,
    physical_sigmas,
)
from ngff_dreg.fitting.smoothing import masked_smooth
from ngff_dreg.geometry import ImageGeometry

__all__ = ["GaussNewtonOptions", "GaussNewtonResult", "gauss_newton_fit"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
#: Per-sample ``J^T r`` ``(N, nd)`` and ``J^T J`` ``(N, nd, nd)`` of a pass's lattice.
Terms = tuple[FloatArray, FloatArray]

#: Smallest automatic MIND-SSC patch (Gaussian sigma, voxels).
MIN_PATCH_SIGMA = 0.8
#: On an every-voxel lattice, one sample in this many is held out for validation.
HOLD_OUT_EVERY = 5
#: Samples whose Gauss-Newton terms are formed at a time (:func:`_gauss_newton_terms`).
TERM_CHUNK = 8192


@dataclass(frozen=True)
class GaussNewtonOptions:
    """Settings of :func:`gauss_newton_fit`.

    Attributes
    ----------
    shrink_factors, smoothing_sigmas:
        One entry per pass, coarse to fine: the lattice stride and the
        Gaussian sigma of both images, in voxels of the block's finest axis
        (other axes get the same physical stride and sigma).
    iterations:
        Maximum Gauss-Newton iterations per pass.
    cg_iterations:
        Conjugate-gradient steps per iteration (an inexact solve is enough).
    bending:
        Weight of the bending energy measured in control cells (mean squared
        second differences of the coefficients, mixed ones counted twice).
    ridge:
        Weight of the mean squared coefficient (pulls unsupported control
        points towards the initial transform).
    intensity:
        ``"affine"`` or ``"piecewise"`` (:mod:`~ngff_dreg.fitting.intensity`).
    intensity_bins:
        Segments of the piecewise-linear intensity map.
    gain_degree:
        Degree of the polynomial gain: 0 (none), 1 or 2.
    tolerance:
        A pass stops when an iteration lowers the objective by less than this
        fraction.
    similarity:
        ``"intensity"`` (the intensity model above) or ``"mind"`` (MIND-SSC
        descriptors of both images, :mod:`~ngff_dreg.fitting.descriptors`: for
        contrasts that are not a function of each other and strong
        illumination differences; the intensity settings are then unused).
    patch_sigma:
        MIND-SSC patch size (Gaussian sigma, voxels of the finest axis; the
        patch is as long physically along the other axes); ``None``: half the
        pass's lattice stride, at least
        :data:`MIN_PATCH_SIGMA` (a sparse lattice samples descriptors of
        patches about as large as the gaps between its samples, which are
        less noisy than single-voxel ones).

    """

    shrink_factors: tuple[int, ...] = (2,)
    smoothing_sigmas: tuple[float, ...] = (0.5,)
    iterations: int = 10
    cg_iterations: int = 5
    bending: float = 0.003
    ridge: float = 0.0
    intensity: str = "piecewise"
    intensity_bins: int = 12
    gain_degree: int = 2
    tolerance: float = 1e-3
    similarity: str = "intensity"
    patch_sigma: float | None = None

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(
                f"similarity must be one of {SIMILARITIES}, got {self.similarity!r}")
        if self.intensity not in INTENSITY_MODELS:
            raise ValueError(f"intensity must be one of {INTENSITY_MODELS}, got {self.intensity!r}")
        if len(self.shrink_factors) != len(self.smoothing_sigmas) or not self.shrink_factors:
            raise ValueError("shrink_factors and smoothing_sigmas need the same, non-zero length")
        if any(int(f) < 1 for f in self.shrink_factors):
            raise ValueError(f"shrink factors must be >= 1, got {self.shrink_factors}")
        if self.gain_degree not in (0, 1, 2):
            raise ValueError(f"gain_degree must be 0, 1 or 2, got {self.gain_degree}")
        if self.bending < 0 or self.ridge < 0:
            raise ValueError("bending and ridge must be >= 0")
        if self.iterations < 1 or self.cg_iterations < 1 or self.intensity_bins < 2:
            raise ValueError("iterations, cg_iterations must be >= 1 and intensity_bins >= 2")


@dataclass
class GaussNewtonResult:
    """Fitted coefficients and what the fit did.

    Attributes
    ----------
    params:
        Coefficients in ITK's parameter layout (component-major, nodes ``x``
        fastest; physical, ITK-order components).
    value:
        Final objective of the last pass.
    iterations, cg_iterations:
        Work done.
    before, after:
        Data term on the held-out lattice at the initial transform and after
        the fit (``None`` without validation), in squared physical units: the
        data term a uniform misalignment of one unit has is one.
    motion:
        Mean squared length of the fitted displacement at the held-out
        samples (squared physical units; ``None`` without validation). A fit
        that moves its points much farther than ``before`` says they are
        misaligned follows something other than the alignment.
    ncc_before, ncc_after:
        Correlation of the fixed samples with the intensity model's
        prediction on the held-out lattice, before and after.
    held_out:
        Number of held-out samples.
    history:
        ``(samples, objective, trial objective, damping)`` per iteration.

    """

    params: FloatArray
    value: float
    iterations: int
    cg_iterations: int
    before: float | None = None
    after: float | None = None
    motion: float | None = None
    ncc_before: float | None = None
    ncc_after: float | None = None
    held_out: int = 0
    history: list[tuple[int, float, float, float]] = field(default_factory=list)


class _Images:
    """Smoothed fixed and warped images (or their descriptors) and the warped gradients.

    Channels: one (the intensities) for the intensity similarity, the
    MIND-SSC descriptors for ``"mind"``; the result of one sigma is kept.
    """

    def __init__(self, fixed: FloatArray, warped: FloatArray, valid: BoolArray,
                 geom: ImageGeometry, similarity: str = "intensity",
                 patch_sigma: float | None = None) -> None:
        self.fixed = fixed
        self.warped = warped
        self.valid = valid.astype(np.float32)
        self.valid_bool = valid
        self.geom = geom
        self.similarity = similarity
        self.patch_sigma = patch_sigma
        self._sigma: tuple[float, float] | None = None
        self._images: tuple[list[FloatArray], ChannelSampler] | None = None

    def get(self, sigma: float, factor: int = 1) -> tuple[list[FloatArray], ChannelSampler]:
        """``(fixed channels, sampler of the warped channels and their gradients)`` at ``sigma``.

        ``factor``: the pass's lattice stride (sets the automatic MIND patch).
        """
        patch = self.patch_sigma if self.patch_sigma is not None \
            else max(MIN_PATCH_SIGMA, 0.5 * factor)
        key = (sigma, patch if self.similarity == "mind" else 0.0)
        if self._images is None or self._sigma != key:
            self._images = None  # the previous sigma's arrays go before the new ones come
            sig = physical_sigmas(sigma, self.geom)
            f = ndimage.gaussian_filter(self.fixed, sig) if sigma > 0 else self.fixed
            w = masked_smooth(self.warped, self.valid, sig) if sigma > 0 else self.warped
            if self.similarity == "mind":
                # the same physical patch along every axis: on thick slices
                # (1x1x3 mm) a patch isotropic in voxels reaches three times as
                # far along z, and so do the descriptors' neighbour pairs' patches
                psig = physical_sigmas(patch, self.geom)
                fc = list(mind_ssc(f, psig, noise_floor=BLOCK_NOISE_FLOOR))
                wc = list(mind_ssc(w, psig, valid=self.valid_bool,
                                   noise_floor=BLOCK_NOISE_FLOOR))
            else:
                fc, wc = [f], [w]
            # physical gradients (ITK order) straight from the sampler
            dindex = np.linalg.inv(self.geom.index_to_physical_matrix)[::-1]
            self._sigma, self._images = key, (fc, ChannelSampler(wc, gradient_matrix=dindex))
        return self._images


class _Pass:
    """One pass: the sample lattice, its per-axis B-spline weights and the images."""

    def __init__(self, images: _Images, grid: BSplineLattice, factor: int, sigma: float,
                 held_out: bool = False, split: bool = False) -> None:
        geom = images.geom
        self.nd = geom.ndim
        self.sizes = grid.sizes
        self.shape = np.asarray(images.fixed.shape)
        f_imgs, self.warped = images.get(sigma, factor)
        self.valid = images.valid
        steps = lattice_strides(factor, geom)
        starts = [(n % st) // 2 for n, st in zip(images.fixed.shape, steps)]
        # with a stride of 1 on every axis no voxel lies between the fit's
        # samples: one in HOLD_OUT_EVERY of them (a diagonal pattern) is kept
        # out of the fit and checked instead
        every_voxel = (split or held_out) and all(st == 1 for st in steps)
        if held_out and not every_voxel:  # half as dense per axis, between the fit's points
            starts = [min(s0 + max(1, st // 2), n - 1)
                      for s0, st, n in zip(starts, steps, images.fixed.shape)]
            steps = [2 * st for st in steps]
        axes_idx = [np.arange(s0, n, st) for s0, n, st in zip(starts, images.fixed.shape, steps)]
        self.lat_shape = tuple(len(a) for a in axes_idx)
        self.n = int(np.prod(self.lat_shape))
        self.keep: BoolArray | None = None
        if every_voxel:
            diag = sum(np.ix_(*[np.arange(len(a)) for a in axes_idx])) % HOLD_OUT_EVERY == 0
            diag = np.broadcast_to(diag, self.lat_shape).reshape(-1)
            self.keep = diag if held_out else ~diag
        #: ``(channels, N)`` fixed values at the samples
        self.f = np.stack([f[np.ix_(*axes_idx)].reshape(-1).astype(np.float64)
                           for f in f_imgs])
        idx = np.stack(np.meshgrid(*axes_idx, indexing="ij"), -1).reshape(-1, self.nd)
        self.points = geom.array_index_to_physical(idx.astype(np.float64))
        self.to_index = np.linalg.inv(geom.index_to_physical_matrix)
        self.origin = np.asarray(geom.origin, dtype=np.float64)
        self.bases = grid.axis_bases(geom, [a.astype(np.float64) for a in axes_idx])
        self.bases_t = [b.T.copy() for b in self.bases]
        self.bases2_t = [(b * b).T.copy() for b in self.bases]

    def displacement(self, c: FloatArray) -> FloatArray:
        """``(N, nd)`` physical displacement (ITK order) of the samples."""
        return np.stack([apply_axes(c[k], self.bases).ravel() for k in range(self.nd)], 1)

    def to_nodes(self, values: FloatArray, squared: bool = False) -> FloatArray:
        """Transpose of :meth:`displacement` for one component (``squared``: of B²)."""
        mats = self.bases2_t if squared else self.bases_t
        return apply_axes(values.reshape(self.lat_shape), mats).ravel()

    def sample(self, c: FloatArray, gradient: bool,
               with_mask: bool = False) -> tuple[FloatArray, FloatArray | None, BoolArray | None]:
        """Warped channels ``(C, N)`` (physical gradients ``(C, N, nd)``, inside-mask)."""
        q = self.points + self.displacement(c)
        cidx = ((q - self.origin) @ self.to_index.T)[:, ::-1].T
        w, g = self.warped.sample(cidx, gradient)  # physical gradients (see _Images)
        inside = None
        if with_mask:
            inside = ndimage.map_coordinates(self.valid, cidx, order=1, mode="nearest") > 0.999
            inside &= np.all((cidx >= 0) & (cidx <= (self.shape - 1)[:, None]), axis=0)
            if self.keep is not None:
                inside &= self.keep
        return w, g, inside


class _Problem:
    """The objective of one pass on its masked samples."""

    def __init__(self, lev: _Pass, q: sparse.csr_matrix, opts: GaussNewtonOptions,
                 c0: FloatArray) -> None:
        self.lev = lev
        self.q = q
        self.similarity = opts.similarity
        w, g, inside = lev.sample(c0, gradient=True, with_mask=True)
        assert inside is not None
        self.mask = inside
        self.fm = lev.f[:, inside]
        n_in = int(inside.sum())
        poly = None
        if opts.gain_degree > 0 and self.similarity == "intensity":
            poly = polynomial_terms(lev.lat_shape, opts.gain_degree)[inside]
        self.model = IntensityModel.for_samples(opts.intensity, opts.intensity_bins, poly, n_in)
        self.ok = n_in >= 64
        self.kappa = 1.0
        if self.ok and g is not None:
            _, slope = self._predict(w[:, inside])
            jg = g[:, inside].astype(np.float64)
            if slope is not None:
                jg = slope[:, :, None] * jg
            k = float(np.mean(np.sum(jg**2, axis=(0, 2)))) / lev.nd
            self.kappa = k if k > 0 and math.isfinite(k) else 1.0
        self.scale = 1.0 / (max(1, n_in) * self.kappa)

    def _predict(self, w: FloatArray) -> tuple[FloatArray, FloatArray | None]:
        """Predicted fixed channels and their slopes in the warped ones, ``(C, n)`` each.

        MIND predicts the fixed descriptors by the warped ones: slope ``None`` (one).
        """
        if self.similarity == "mind":
            return w, None
        pred, slope = self.model.fit(w[0], self.fm[0])
        return pred[None], slope[None]

    def penalty(self, c: FloatArray) -> float:
        cc = c.reshape(c.shape[0], -1)
        return float(sum(np.dot(cc[k], self.q @ cc[k]) for k in range(cc.shape[0])))

    def data(self, c: FloatArray, gradient: bool
             ) -> tuple[float, FloatArray, Terms | None, FloatArray]:
        """``(data term, residual (C, n), Gauss-Newton terms, prediction (C, n))`` on the mask.

        The terms (with ``gradient``): :func:`_gauss_newton_terms` on the whole lattice.
        """
        w, g, _ = self.lev.sample(c, gradient)
        m = self.mask
        pred, slope = self._predict(w[:, m])
        r = pred - self.fm
        terms = None
        if g is not None:
            n_all = self.lev.n
            r_all = np.zeros((r.shape[0], n_all))
            r_all[:, m] = r
            s_all = np.zeros((1 if slope is None else slope.shape[0], n_all))
            s_all[:, m] = 1.0 if slope is None else slope
            terms = _gauss_newton_terms(g, s_all, r_all)
        return float(np.sum(r * r)) * self.scale, r, terms, pred

    def value(self, c: FloatArray) -> float:
        return self.data(c, False)[0] + self.penalty(c)


def _pcg(matvec: Callable[[FloatArray], FloatArray], rhs: FloatArray, prec: FloatArray,
         steps: int) -> tuple[FloatArray, int]:
    """Jacobi-preconditioned conjugate gradients from zero, at most ``steps`` steps."""
    x = np.zeros_like(rhs)
    res = rhs.copy()
    z = prec * res
    p = z.copy()
    rz = float(np.dot(res, z))
    r0 = math.sqrt(float(np.dot(rhs, rhs)))
    done = 0
    for _ in range(steps):
        done += 1
        ap = matvec(p)
        den = float(np.dot(p, ap))
        if not den > 0:
            break
        alpha = rz / den
        x += alpha * p
        res -= alpha * ap
        if math.sqrt(float(np.dot(res, res))) < 1e-3 * r0:
            break
        z = prec * res
        rz_new = float(np.dot(res, z))
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, done


def _channel_sum(a: FloatArray, b: FloatArray) -> FloatArray:
    """``sum_c a[c] * b[c]``, added in channel order."""
    acc: FloatArray = a[0] * b[0]
    for c in range(1, a.shape[0]):
        acc += a[c] * b[c]
    return acc


def _gauss_newton_terms(g: npt.NDArray[np.floating], slope: FloatArray, r: FloatArray
                        ) -> Terms:
    """Per sample, ``J^T r`` ``(N, nd)`` and the Gauss-Newton block ``J^T J`` ``(N, nd, nd)``.

    ``g``: ``(C, N, nd)`` physical gradients of the warped channels at every
    sample of the lattice; ``slope``: ``(C, N)`` (or ``(1, N)``) slopes of the
    prediction in them, ``r``: ``(C, N)`` residuals, both zero at the samples
    left out (whose terms are then zero). The Jacobian ``J = slope * g`` and
    the sums over channels are taken in float64, :data:`TERM_CHUNK` samples
    at a time, in cache (the same values as whole-array products summed in
    channel order).
    """
    _, n_all, nd = g.shape
    rows = g.transpose(1, 0, 2)  # the channel table's (N, C, nd)
    b = np.empty((n_all, nd))
    h = np.empty((n_all, nd, nd))
    for lo in range(0, n_all, TERM_CHUNK):
        hi = min(n_all, lo + TERM_CHUNK)
        jac = np.ascontiguousarray(rows[lo:hi].transpose(1, 2, 0), dtype=np.float64)
        jac *= slope[:, None, lo:hi]  # (C, nd, k)
        for i in range(nd):
            b[lo:hi, i] = _channel_sum(jac[:, i], r[:, lo:hi])
            for j in range(i, nd):
                h[lo:hi, i, j] = h[lo:hi, j, i] = _channel_sum(jac[:, i], jac[:, j])
    return b, h


def _normal_system(prob: _Problem, coeffs: FloatArray, terms: Terms
                   ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradient, Jacobi diagonal and per-sample Gauss-Newton blocks ``(n, nd, nd)``."""
    lev, q = prob.lev, prob.q
    nd = lev.nd
    n_nodes = int(np.prod(lev.sizes))
    b, h = terms
    cc = coeffs.reshape(nd, -1)
    grad = np.empty((nd, n_nodes))
    diag = np.empty((nd, n_nodes))
    q_diag = q.diagonal()
    for k in range(nd):
        grad[k] = prob.scale * lev.to_nodes(b[:, k]) + q @ cc[k]
        diag[k] = prob.scale * lev.to_nodes(h[:, k, k], squared=True) + q_diag
    return grad, diag, h


History = list[tuple[int, float, float, float]]


def _solve_pass(prob: _Problem, coeffs: FloatArray, opts: GaussNewtonOptions,
                history: History) -> tuple[FloatArray, float, int, int]:
    """Levenberg-Marquardt iterations of one pass."""
    lev, q = prob.lev, prob.q
    nd = lev.nd
    n_nodes = int(np.prod(lev.sizes))
    data, _, terms, _ = prob.data(coeffs, True)
    val = data + prob.penalty(coeffs)
    mu = 1e-3
    its = cgs = 0
    for _ in range(int(opts.iterations)):
        its += 1
        assert terms is not None
        grad, diag, h = _normal_system(prob, coeffs, terms)

        def matvec(v: FloatArray, mu: float = mu, diag: FloatArray = diag,
                   h: FloatArray = h) -> FloatArray:
            vv = v.reshape(nd, *lev.sizes)
            t = np.stack([apply_axes(vv[k], lev.bases).ravel() for k in range(nd)], 1)
            ht = np.einsum("nij,nj->ni", h, t)
            out = np.empty((nd, n_nodes))
            vf = v.reshape(nd, -1)
            for k in range(nd):
                out[k] = prob.scale * lev.to_nodes(ht[:, k]) + q @ vf[k] + mu * diag[k] * vf[k]
            return out.ravel()

        prec = 1.0 / ((1.0 + mu) * diag.ravel() + 1e-30)
        step, used = _pcg(matvec, -grad.ravel(), prec, int(opts.cg_iterations))
        cgs += used
        cand = coeffs + step.reshape(coeffs.shape)
        new_val = prob.value(cand)
        history.append((lev.n, val, new_val, mu))
        if new_val < val:
            rel = (val - new_val) / max(abs(val), 1e-30)
            coeffs, val = cand, new_val
            mu = max(mu / 3.0, 1e-6)
            if rel < opts.tolerance:
                break
            _, _, terms, _ = prob.data(coeffs, True)
        else:
            mu *= 8.0
            if mu > 1e2:
                break
    return coeffs, val, its, cgs


def _ncc(a: FloatArray, b: FloatArray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(np.dot(a, a)) * float(np.dot(b, b)))
    return float(np.dot(a, b)) / den if den > 0 else float("nan")


def gauss_newton_fit(
    fixed: FloatArray,
    warped: FloatArray,
    valid: BoolArray,
    geom: ImageGeometry,
    fixed_parameters: npt.ArrayLike,
    options: GaussNewtonOptions,
    *,
    validate: bool = True,
) -> GaussNewtonResult:
    """Fit B-spline coefficients so that ``warped(x + u(x))`` matches ``fixed(x)``.

    Parameters
    ----------
    fixed, warped:
        The padded fixed block and the moving image resampled onto its grid
        through the initial transform (same shape, NumPy order).
    valid:
        Where ``warped`` holds moving data.
    geom:
        The block's geometry.
    fixed_parameters:
        The ``itk.BSplineTransform`` fixed parameters of the grid (size,
        origin, spacing, direction; ITK order); the grid shares the block's
        direction, as ``itk.BSplineTransformInitializer`` makes it.
    options:
        See :class:`GaussNewtonOptions`.
    validate:
        Measure the data term (and the NCC of the model's prediction) before
        and after on a held-out lattice: half as dense per axis as the last
        pass's, between its points; with a stride of 1 (no voxel between),
        one in :data:`HOLD_OUT_EVERY` voxels, which the passes of stride 1
        then leave out of the fit.

    Returns
    -------
    GaussNewtonResult
        ``params`` in ITK's parameter layout.

    """
    nd = geom.ndim
    grid = BSplineLattice.from_fixed_parameters(fixed_parameters, nd)
    coeffs = np.zeros((nd, *grid.sizes))
    q = bending_operator(grid.sizes, [1.0] * nd) * float(options.bending)
    if options.ridge > 0:
        eye = sparse.identity(grid.n_nodes, format="csr")
        q = sparse.csr_matrix(q + (options.ridge / grid.n_nodes) * eye)
    fill = float(warped[valid].mean()) if valid.any() else 0.0
    images = _Images(np.asarray(fixed, dtype=np.float64),
                     np.where(valid, warped, fill).astype(np.float64), valid, geom,
                     options.similarity, options.patch_sigma)
    history: list[tuple[int, float, float, float]] = []
    value = float("nan")
    its = cgs = 0
    last: tuple[int, float] | None = None
    for factor, sigma in zip(options.shrink_factors, options.smoothing_sigmas):
        prob = _Problem(_Pass(images, grid, int(factor), float(sigma), split=validate), q,
                        options, coeffs)
        if not prob.ok:
            break
        coeffs, value, i, c = _solve_pass(prob, coeffs, options, history)
        its, cgs = its + i, cgs + c
        last = (int(factor), float(sigma))
    out = GaussNewtonResult(coeffs.reshape(nd, -1).ravel(), value, its, cgs, history=history)
    if validate and last is not None:
        check = _Problem(_Pass(images, grid, last[0], last[1], held_out=True), q, options,
                         np.zeros_like(coeffs))
        if check.ok:
            before = check.data(np.zeros_like(coeffs), False)
            after = check.data(coeffs, False)
            out.before, out.after = before[0], after[0]
            u = check.lev.displacement(coeffs)[check.mask]
            out.motion = float(np.mean(np.sum(u * u, axis=1)))
            out.ncc_before = _ncc(check.fm.ravel(), before[3].ravel())
            out.ncc_after = _ncc(check.fm.ravel(), after[3].ravel())
            out.held_out = check.fm.shape[1]
    return out
