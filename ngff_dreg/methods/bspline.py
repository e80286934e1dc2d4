"""Per-block deformable registration with a cubic ``itk.BSplineTransform``.

Two engines fit the same transform. ``"numpy"`` (default, for the
correlation and mean-squares metrics) resamples the moving block once
through the initial transform and fits the control points on random samples
with SciPy's L-BFGS-B; the gradient is a sparse product with the samples'
B-spline weights, which keeps a 64³ block well under a second.
``"itk"`` runs ``ImageRegistrationMethodv4`` (all metrics, Mattes MI
included); ITK's v4 metrics build a dense Jacobian per sample, so it is
several times slower per block.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.interfaces import (
    BlockInfo,
    BlockPairRegistrationMethod,
    BlockPairRegistrationResult,
    BlockRegStatus,
)
from ngff_dreg.itk_bridge import geometry_of
from ngff_dreg.methods._common import (
    METRICS,
    as_itk_transform,
    buffered_pair,
    check_levels,
    checked_result,
    failure,
    identity_bspline,
    make_metric,
    mesh_cells,
    nan_rimmed,
    resample_into,
)
from ngff_dreg.methods.itk_linear import run_v4_registration
from ngff_dreg.transforms import bspline_weight_matrix
from ngff_dreg.validate import has_variation

__all__ = ["ItkBSplineRegistration", "warp_moving"]

logger = logging.getLogger(__name__)

OPTIMIZERS = ("lbfgsb", "gradient")

#: What the NumPy engine uses of ITK (images, the B-spline transform and its
#: initializer, linear/affine transforms, resampling and warping): the ITK
#: modules Common, Transform, ImageFunction and ImageGrid and their
#: dependencies, not the registration framework.
NUMPY_ENGINE_ITK = (
    "Image",
    "ImageRegion",
    "Vector",
    "BSplineTransform",
    "BSplineTransformInitializer",
    "AffineTransform",
    "TranslationTransform",
    "CompositeTransform",
    "IdentityTransform",
    "ResampleImageFilter",
    "WarpImageFilter",
    "LinearInterpolateImageFunction",
    "array_from_image",
    "image_from_array",
)
ENGINES = ("numpy", "itk")


@dataclass
class ItkBSplineRegistration(BlockPairRegistrationMethod):
    """Deformable per-block registration with a cubic ``itk.BSplineTransform``.

    The B-spline grid spans the padded fixed block, so the returned transform
    is valid (and smooth) over the whole padded block; outside it the
    transform is the identity. The initial transform is the registration's
    moving initial transform, so the B-spline acts on fixed points first.

    Parameters
    ----------
    control_point_spacing:
        Physical distance between B-spline control points (scalar or one per
        ITK axis). Takes precedence over ``mesh_size``.
    mesh_size:
        Number of B-spline mesh cells per axis (scalar or ITK-order
        sequence), used when ``control_point_spacing`` is ``None``.
    metric:
        ``"mattes"``, ``"correlation"`` or ``"meansquares"``.
    shrink_factors, smoothing_sigmas:
        Per-level shrink factors and Gaussian sigmas (voxels), coarse to fine.
        The control grid stays the same on every level.
    iterations:
        Maximum optimiser iterations per level.
    number_of_samples:
        Random metric samples per level (the cost of one iteration grows with
        samples x control points, so this, not a percentage, sets the speed).
    sampling_percentage:
        When given, a fraction of the (shrunk) voxels to sample instead of
        ``number_of_samples``.
    optimizer:
        ``"lbfgsb"`` (quasi-Newton, default) or ``"gradient"`` (regular-step
        gradient descent with physical-shift scales).
    learning_rate:
        First step of the gradient optimiser, in multiples of the smallest
        voxel spacing.
    histogram_bins:
        Bins of the Mattes metric.
    max_displacement_fraction:
        Results moving some block point more than this fraction of the padded
        block diagonal are reported LOW_QUALITY.
    seed:
        Seed of the random metric sampling.
    engine:
        ``"numpy"`` (default; correlation and mean squares) or ``"itk"``.
    bending:
        Weight of the bending penalty (mean squared second difference of the
        control-point coefficients), relative to the metric's curvature for a
        one-unit shift of the block (``"numpy"`` engine). Keeps the grid
        smooth where the samples carry little gradient.
    ridge:
        Weight of a penalty on the coefficients themselves (same scaling),
        pulling control points with little support toward the initial
        transform.
    validation_samples:
        Fresh full-resolution samples on which the unregularised metric is
        compared before and after the fit (``"numpy"`` engine; 0: no check).
        A fit that does not improve it is reported LOW_QUALITY, so the
        reduction fills the block from its neighbours.

    """

    control_point_spacing: float | tuple[float, ...] | None = None
    mesh_size: int | tuple[int, ...] = 4
    metric: str = "correlation"
    shrink_factors: tuple[int, ...] = (2, 1)
    smoothing_sigmas: tuple[float, ...] = (1.0, 0.0)
    iterations: int = 30
    number_of_samples: int = 10000
    sampling_percentage: float | None = None
    optimizer: str = "lbfgsb"
    learning_rate: float = 1.0
    histogram_bins: int = 32
    max_displacement_fraction: float = 0.25
    seed: int = 20240601
    engine: str = "numpy"
    bending: float = 0.0
    ridge: float = 0.0
    validation_samples: int = 0

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        self.shrink_factors = tuple(int(f) for f in self.shrink_factors)
        self.smoothing_sigmas = tuple(float(s) for s in self.smoothing_sigmas)
        check_levels(self.shrink_factors, self.smoothing_sigmas)
        if self.sampling_percentage is not None and not 0 < self.sampling_percentage <= 1:
            raise ValueError(
                f"sampling_percentage must be in (0, 1], got {self.sampling_percentage}"
            )
        if isinstance(self.mesh_size, Sequence):
            self.mesh_size = tuple(int(m) for m in self.mesh_size)
        if isinstance(self.control_point_spacing, Sequence):
            self.control_point_spacing = tuple(float(c) for c in self.control_point_spacing)

    @property
    def accepts_ngff_transforms(self) -> bool:
        """True when the initial transform may be an ngff-dreg transform.

        The NumPy engine warps the moving block through an
        :class:`~ngff_dreg.transforms.TransformChain` itself
        (:func:`warp_moving`), so the engine hands it over unconverted and no
        ITK displacement-field transform is built per block.
        """
        return self.engine == "numpy" and self.metric != "mattes"

    @property
    def itk_modules(self) -> tuple[str, ...] | None:
        """ITK names this method touches (``None``: it may need all of them).

        With the NumPy engine that is a small part of ITK, which a worker loads
        in a third of the time of the full set.
        """
        return NUMPY_ENGINE_ITK if self.accepts_ngff_transforms else None

    def mesh_for(self, size: Sequence[int], spacing: Sequence[float]) -> list[int]:
        """Mesh cells per ITK axis for a padded block of ``size`` voxels."""
        return mesh_cells(size, spacing, self.control_point_spacing, self.mesh_size)

    def _optimizer(self, metric: Any, transform: Any, min_spacing: float) -> Any:
        import itk

        if self.optimizer == "lbfgsb":
            opt = itk.LBFGSBOptimizerv4.New()
            n = int(transform.GetNumberOfParameters())
            opt.SetBoundSelection(_zeros_array(n, "SL"))
            opt.SetLowerBound(_zeros_array(n, "D"))
            opt.SetUpperBound(_zeros_array(n, "D"))
            opt.SetCostFunctionConvergenceFactor(1e7)
            opt.SetGradientConvergenceTolerance(1e-5)
            opt.SetNumberOfIterations(int(self.iterations))
            opt.SetMaximumNumberOfFunctionEvaluations(int(2 * self.iterations))
            opt.SetMaximumNumberOfCorrections(7)
            return opt
        opt = itk.RegularStepGradientDescentOptimizerv4[itk.D].New()
        est = itk.RegistrationParameterScalesFromPhysicalShift[type(metric)].New()
        est.SetMetric(metric)
        opt.SetScalesEstimator(est)
        step = float(self.learning_rate) * min_spacing
        opt.SetLearningRate(step)
        opt.SetMinimumStepLength(step * 0.01)
        opt.SetRelaxationFactor(0.6)
        opt.SetNumberOfIterations(int(self.iterations))
        opt.SetDoEstimateLearningRateOnce(False)
        opt.SetDoEstimateLearningRateAtEachIteration(False)
        return opt

    def _sampling_percentages(self, geom: ImageGeometry) -> list[float]:
        if self.sampling_percentage is not None:
            return [float(self.sampling_percentage)] * len(self.shrink_factors)
        out = []
        for f in self.shrink_factors:
            voxels = float(np.prod([max(1, n // f) for n in geom.size]))
            out.append(min(1.0, max(1, self.number_of_samples) / voxels))
        return out

    def _fit_itk(
        self, fixed: Any, moving: Any, initial: Any, transform: Any, geom: ImageGeometry
    ) -> tuple[float, str]:
        """Optimise ``transform`` with ``ImageRegistrationMethodv4``."""
        ndim = geom.ndim
        metric = make_metric(self.metric, ndim, self.histogram_bins)
        optimizer = self._optimizer(metric, transform, float(min(geom.spacing)))
        value = run_v4_registration(
            fixed,
            moving,
            initial,
            transform,
            metric,
            optimizer,
            shrink_factors=self.shrink_factors,
            smoothing_sigmas=self.smoothing_sigmas,
            sampling_percentage=self._sampling_percentages(geom),
            seed=self.seed,
        )
        return value, f"itk: {optimizer.GetStopConditionDescription()}"

    def _fit_numpy(
        self, fixed: Any, moving: Any, initial: Any, transform: Any, geom: ImageGeometry
    ) -> tuple[float | None, str]:
        """Optimise ``transform`` on sampled points against the pre-warped moving block.

        The moving block is resampled once onto the padded fixed grid through
        the initial transform, ``W(x) = moving(initial(x))``; fitting
        ``W(x + u(x)) ≈ fixed(x)`` then gives a B-spline acting before the
        initial transform. The metric derivative with respect to the control
        points is a sparse product with the B-spline weights of the samples,
        so an evaluation costs O(samples), not O(samples x control points).
        """
        import itk

        warped_img = warp_moving(moving, fixed, initial)
        warped = np.asarray(itk.array_view_from_image(warped_img), dtype=np.float64)
        valid = np.isfinite(warped)
        if valid.mean() < 0.25 or not has_variation(warped[valid]):
            return None, f"moving region covers {100 * valid.mean():.0f}% of the block"
        fixed_arr = np.asarray(itk.array_view_from_image(fixed), dtype=np.float64)
        bound = 0.5 * float(np.linalg.norm((np.asarray(geom.size) - 1) * np.asarray(geom.spacing)))
        n_samples = self.number_of_samples
        if self.sampling_percentage is not None:
            n_samples = int(self.sampling_percentage * fixed_arr.size)
        fit = _fast_bspline_fit(
            transform,
            fixed_arr,
            warped,
            valid,
            geom,
            metric=self.metric,
            shrink_factors=self.shrink_factors,
            smoothing_sigmas=self.smoothing_sigmas,
            samples=max(64, int(n_samples)),
            iterations=self.iterations,
            bound=bound,
            seed=self.seed,
            bending=float(self.bending),
            ridge=float(self.ridge),
            validation_samples=int(self.validation_samples),
        )
        transform.SetParameters(itk.OptimizerParameters[itk.D](fit.params.tolist()))
        note = f"numpy: {fit.evaluations} evaluations"
        if fit.before is not None and fit.after is not None:
            note += f", validation metric {fit.before:.6g} -> {fit.after:.6g}"
            if not fit.after < fit.before:
                return None, "no improvement: " + note
        return fit.value, note

    def __call__(
        self,
        fixed_subimage: Any,
        moving_subimage: Any,
        initial_transform: Any,
        block_info: BlockInfo,
        **kwargs: Any,
    ) -> BlockPairRegistrationResult:
        """Register one block pair with a B-spline over the padded block.

        See :class:`~ngff_dreg.interfaces.BlockPairRegistrationMethod`.
        """
        ndim = fixed_subimage.GetImageDimension()
        fixed, moving, skipped = buffered_pair(fixed_subimage, moving_subimage, block_info)
        if skipped is not None:
            return skipped
        geom = geometry_of(fixed)
        mesh = self.mesh_for(geom.size, geom.spacing)
        transform = identity_bspline(fixed, mesh)
        if self.accepts_ngff_transforms:
            value, note = self._fit_numpy(fixed, moving, initial_transform, transform, geom)
            if value is None:
                status = (
                    BlockRegStatus.LOW_QUALITY
                    if note.startswith("no improvement")
                    else BlockRegStatus.OUT_OF_BOUNDS
                )
                return failure(status, f"block {block_info.chunk_index}: {note}")
        else:
            initial = as_itk_transform(initial_transform, ndim)
            value, note = self._fit_itk(fixed, moving, initial, transform, geom)
        params = np.asarray(transform.GetParameters(), dtype=np.float64)
        if not (math.isfinite(value) and np.all(np.isfinite(params))):
            return failure(
                BlockRegStatus.LOW_QUALITY,
                f"block {block_info.chunk_index}: optimiser diverged (metric {value})",
            )
        logger.debug(
            "block %s: B-spline mesh %s, metric %.4g, max coefficient %.3g, %s",
            block_info.chunk_index,
            mesh,
            value,
            float(np.abs(params).max()) if params.size else 0.0,
            note,
        )
        return checked_result(
            transform, fixed_subimage, value, max_fraction=self.max_displacement_fraction
        )


def warp_moving(moving: Any, fixed: Any, initial: Any) -> Any:
    """``moving(initial(x))`` on ``fixed``'s grid (linear; NaN where it leaves ``moving``).

    "Leaves" means past the outermost voxel centres (:func:`nan_rimmed`), not
    the half voxel beyond them where ITK would repeat the edge voxel.

    ``initial`` is an ITK transform, an
    :class:`~ngff_dreg.transforms.AffineTransform` or a
    :class:`~ngff_dreg.transforms.TransformChain`. A forward chain
    ``A(x + D(x))`` is applied with ``itk.WarpImageFilter`` and the
    displacement ``A(x + D(x)) - x`` evaluated on the field's own nodes around
    the block: ``D`` is linear between its nodes, so that displacement is too,
    and interpolating it there is exact. (An ``itk.DisplacementFieldTransform``
    would do the same, but loading its ITK module costs a worker seconds.)
    """
    from ngff_dreg.transforms import AffineTransform, TransformChain

    nan = float("nan")
    moving = nan_rimmed(moving)
    if isinstance(initial, TransformChain) and not initial.affine_first:
        if initial.field is None:
            return resample_into(moving, fixed, initial.affine.to_itk(), default_value=nan)
        return _warp_through_chain(moving, fixed, initial)
    if isinstance(initial, AffineTransform):
        return resample_into(moving, fixed, initial.to_itk(), default_value=nan)
    ndim = fixed.GetImageDimension()
    return resample_into(moving, fixed, as_itk_transform(initial, ndim), default_value=nan)


def _warp_through_chain(moving: Any, fixed: Any, chain: Any) -> Any:
    import itk

    from ngff_dreg.itk_bridge import _apply_geometry

    ndim = fixed.GetImageDimension()
    block = geometry_of(fixed, "buffered")
    field = chain.field.geometry
    # the block's corners in the field's index space (ITK order), one node of margin
    corners = block.sample_points(per_axis=2)
    fidx = field.physical_to_index(corners)
    lo = np.floor(fidx.min(axis=0) - 1e-6).astype(int) - 1
    hi = np.floor(fidx.max(axis=0) + 1e-6).astype(int) + 2
    size = hi - lo + 1
    nodes = np.stack(
        np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo[::-1], hi[::-1])], indexing="ij"),
        axis=-1,
    ).reshape(-1, ndim)[:, ::-1]  # ITK order, x fastest in memory
    pts = field.index_to_physical(nodes.astype(np.float64))
    disp = (chain.transform_points(pts) - pts).astype(np.float32)
    vector_type = itk.Image[itk.Vector[itk.F, ndim], ndim]
    disp_img = itk.image_from_array(
        np.ascontiguousarray(disp.reshape(*size[::-1], ndim)), ttype=vector_type
    )
    grid = ImageGeometry(
        tuple(int(n) for n in size[::-1]),
        field.spacing,
        field.index_to_physical(lo.astype(np.float64)),
        field.direction,
    )
    _apply_geometry(disp_img, grid)
    image_type = itk.Image[itk.F, ndim]
    warp = itk.WarpImageFilter[image_type, image_type, vector_type].New()
    warp.SetInput(moving)
    warp.SetDisplacementField(disp_img)
    warp.SetOutputParametersFromImage(fixed)
    warp.SetEdgePaddingValue(float("nan"))
    warp.SetInterpolator(itk.LinearInterpolateImageFunction[image_type, itk.D].New())
    warp.Update()
    return warp.GetOutput()


def _zeros_array(n: int, ctype: str) -> Any:
    import itk

    arr = itk.Array[getattr(itk, ctype)](n)
    arr.Fill(0)
    return arr


def _level_images(
    fixed: np.ndarray, warped: np.ndarray, valid: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    from ngff_dreg.fitting.smoothing import masked_smooth

    fill = float(warped[valid].mean())
    w = np.where(valid, warped, fill)
    f = fixed
    if sigma > 0:
        f = ndimage.gaussian_filter(f, sigma)
        w = masked_smooth(w, valid, sigma)
    return f, w


def _sample_lattice(
    shape: tuple[int, ...], factor: int, count: int, rng: np.random.Generator
) -> np.ndarray:
    """Random NumPy-order voxel indices on a lattice subsampled by ``factor``."""
    axes = [np.arange((n % factor) // 2, n, max(1, factor)) for n in shape]
    total = int(np.prod([len(a) for a in axes]))
    pick = rng.choice(total, size=min(count, total), replace=False)
    sub = np.unravel_index(pick, tuple(len(a) for a in axes))
    return np.stack([a[i] for a, i in zip(axes, sub)], axis=1)


def _metric_and_gradient(
    kind: str, f: np.ndarray, w: np.ndarray, grad_w: np.ndarray
) -> tuple[float, np.ndarray]:
    """Metric (lower is better) and its derivative w.r.t. the sample displacements."""
    n = f.size
    if kind == "meansquares":
        diff = w - f
        value = float(np.mean(diff * diff))
        dw = 2.0 * diff / n
    else:  # correlation: minus the normalised cross-correlation
        a = f - f.mean()
        b = w - w.mean()
        na = float(np.sqrt(np.dot(a, a))) or 1e-30
        nb = float(np.sqrt(np.dot(b, b))) or 1e-30
        ncc = float(np.dot(a, b)) / (na * nb)
        value = -ncc
        dw = -(a / (na * nb) - ncc * b / (nb * nb))
    return value, dw[:, None] * grad_w


class _LinearSampler:
    """Linear interpolation of several same-shaped arrays at once.

    Equal to ``ndimage.map_coordinates(a, coords, order=1, mode="nearest")``
    for each array ``a`` (coordinates outside the grid read the edge), but the
    arrays are stored interleaved, so every sample costs one gather of ``k``
    neighbouring values per cell corner instead of one pass per array.
    """

    def __init__(self, stacked: np.ndarray) -> None:
        """``stacked``: the arrays interleaved, shape ``(*grid_shape, k)``."""
        shape = np.asarray(stacked.shape[:-1], dtype=np.intp)
        self.ndim = len(shape)
        self.shape = shape
        self.k = int(stacked.shape[-1])
        self.flat = np.ascontiguousarray(stacked, dtype=np.float64).reshape(-1, self.k)
        self.strides = np.cumprod(np.concatenate([shape[1:], [1]])[::-1])[::-1].astype(np.intp)
        # flat offsets of the 2^ndim cell corners (first axis slowest); along an
        # axis of length 1 the far corner is the near one (its weight is zero)
        bits = np.array(list(np.ndindex(*([2] * self.ndim))), dtype=np.intp)
        self.offsets = (bits * (self.strides * (shape > 1))).sum(axis=1)

    def __call__(self, coords: np.ndarray) -> np.ndarray:
        """Values at ``(N, ndim)`` NumPy-order voxel coordinates, shape ``(N, k)``."""
        c = np.clip(coords, 0, self.shape - 1)
        i0 = np.minimum(c.astype(np.intp), np.maximum(self.shape - 2, 0))
        t = c - i0
        n = len(c)
        w = np.ones((n, 1))
        for a in range(self.ndim):
            wa = np.stack([1.0 - t[:, a], t[:, a]], axis=1)
            w = (w[:, :, None] * wa[:, None, :]).reshape(n, -1)
        values = self.flat[(i0 @ self.strides)[:, None] + self.offsets[None, :]]
        return np.einsum("nc,nck->nk", w, values)


def _image_and_gradients(image: np.ndarray) -> _LinearSampler:
    """Sampler of an image and its central-difference gradient (NumPy order, per voxel)."""
    stacked = np.empty((*image.shape, image.ndim + 1), dtype=np.float64)
    stacked[..., 0] = image
    for k in range(image.ndim):  # one gradient image at a time: low peak memory
        stacked[..., k + 1] = np.gradient(image, axis=k) if image.shape[k] > 1 else 0.0
    return _LinearSampler(stacked)


class _Objective:
    """Metric and gradient w.r.t. the B-spline parameters on fixed sample points."""

    def __init__(
        self,
        metric: str,
        points: np.ndarray,
        weights: Any,
        sampler: _LinearSampler,
        fixed_values: np.ndarray,
        to_index: np.ndarray,
        origin: np.ndarray,
        shape: np.ndarray,
    ) -> None:
        self.metric = metric
        self.points = points
        self.weights = weights
        self.weights_t = weights.T.tocsr()
        self.sampler = sampler  # warped moving image and its gradient
        self.fixed_values = fixed_values
        self.to_index = to_index
        # d(index, NumPy order)/d(physical, ITK order)
        self.dindex = to_index[::-1]
        self.origin = origin
        self.shape = shape
        self.evaluations = 0
        self.penalty: Any = None
        # the optimiser sees (metric + penalty) / scale: in units of squared
        # displacement, its tolerances do not depend on the image contrast
        self.scale = 1.0

    def data_term(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Metric and gradient, without the regulariser."""
        ndim = self.points.shape[1]
        c = x.reshape(ndim, -1).T
        q = self.points + self.weights @ c
        cidx = ((q - self.origin) @ self.to_index.T)[:, ::-1]
        # Points leaving the block read the edge value (zero gradient) rather
        # than being dropped, which keeps the objective continuous.
        vals = self.sampler(cidx)
        w_vals = vals[:, 0]
        g_idx = vals[:, 1:]
        outside = np.any((cidx < 0) | (cidx > self.shape - 1), axis=1)
        g_idx[outside] = 0.0
        g_phys = g_idx @ self.dindex
        val, du = _metric_and_gradient(self.metric, self.fixed_values, w_vals, g_phys)
        return val, (self.weights_t @ du).T.ravel()

    def curvature(self) -> float:
        """Metric curvature for a uniform 1-unit shift of every sample (per axis).

        Scales the regulariser so that its weight means the same whatever the
        image contrast, metric or sample count: ``penalty = 1`` costs as much
        as shifting the whole block by about one physical unit.
        """
        ndim = self.points.shape[1]
        cidx = ((self.points - self.origin) @ self.to_index.T)[:, ::-1]
        g = self.sampler(cidx)[:, 1:] @ self.dindex
        g2 = float(np.mean(np.sum(g * g, axis=1))) / ndim
        if self.metric == "meansquares":
            return 2.0 * g2
        var = float(np.var(self.fixed_values)) or 1e-30
        return g2 / var

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        self.evaluations += 1
        val, grad = self.data_term(x)
        if self.penalty is not None:
            pval, pgrad = self.penalty(x)
            val, grad = val + pval, grad + pgrad
        return val / self.scale, grad / self.scale


def _smoothness_operator(grid_size: Sequence[int], bending: float, ridge: float) -> Any:
    """Sparse ``Q`` of the quadratic smoothness penalty ``c.T Q c``.

    ``bending`` x the mean squared second difference of the control-point
    coefficients along each grid axis, plus ``ridge`` x their mean square
    (``grid_size`` in ITK order, ``x`` fastest).
    """
    from scipy import sparse

    sizes = [int(n) for n in grid_size]
    n = int(np.prod(sizes))
    q = sparse.csr_matrix((n, n))
    if bending > 0:
        ops = []
        for a, m in enumerate(sizes):
            if m < 3:
                continue
            d2 = sparse.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(m - 2, m))
            op = sparse.identity(1, format="csr")
            for b in range(len(sizes) - 1, -1, -1):  # slowest axis first
                op = sparse.kron(op, d2 if b == a else sparse.identity(sizes[b]), format="csr")
            ops.append(op)
        if ops:
            big = sparse.vstack(ops, format="csr")
            q = q + (bending / big.shape[0]) * (big.T @ big)
    if ridge > 0:
        q = q + (ridge / n) * sparse.identity(n, format="csr")
    return q.tocsr()


class _Penalty:
    """``scale * sum_d c_d.T Q c_d`` and its gradient (ITK parameter layout)."""

    def __init__(self, q: Any, scale: float, ndim: int) -> None:
        self.q = q
        self.scale = float(scale)
        self.ndim = ndim

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        c = x.reshape(self.ndim, -1).T
        qc = self.q @ c
        return self.scale * float(np.sum(c * qc)), (2.0 * self.scale * qc).T.ravel()


@dataclass
class _FitResult:
    params: np.ndarray
    value: float
    evaluations: int
    before: float | None = None
    after: float | None = None


def _fast_bspline_fit(
    transform: Any,
    fixed: np.ndarray,
    warped: np.ndarray,
    valid: np.ndarray,
    geom: ImageGeometry,
    *,
    metric: str,
    shrink_factors: Sequence[int],
    smoothing_sigmas: Sequence[float],
    samples: int,
    iterations: int,
    bound: float,
    seed: int,
    bending: float = 0.0,
    ridge: float = 0.0,
    validation_samples: int = 0,
) -> _FitResult:
    """Fit the B-spline coefficients so that ``warped(x + u(x)) ≈ fixed(x)``.

    ``fixed`` and ``warped`` are arrays on the same grid (``geom``), the moving
    image already resampled through the initial transform. The metric is
    regularised by ``bending`` (mean squared second difference of the control
    points) and ``ridge`` (mean squared coefficient), both scaled by the
    metric's curvature so that they weigh the same on any contrast: where the
    samples carry little gradient the control points stay smooth and near the
    initial transform. With ``validation_samples``, the unregularised metric
    is also measured on fresh full-resolution samples before and after.
    """
    from scipy import ndimage, optimize

    rng = np.random.default_rng(seed)
    ndim = geom.ndim
    n_params = int(transform.GetNumberOfParameters())
    coeffs = np.zeros(n_params)
    to_index = np.linalg.inv(geom.index_to_physical_matrix)  # physical -> ITK index
    origin = np.asarray(geom.origin)
    shape = np.asarray(fixed.shape)
    grid_size = np.asarray(transform.GetFixedParameters(), dtype=np.float64)[:ndim].astype(int)
    q = _smoothness_operator(grid_size, bending, ridge) if bending > 0 or ridge > 0 else None
    value = float("nan")
    evaluations = 0

    images: dict[float, tuple[np.ndarray, _LinearSampler]] = {}

    def objective(factor: int, sigma: float, count: int) -> _Objective | None:
        if sigma not in images:  # the validation reuses the last level's images
            images.clear()
            f_img, w_img = _level_images(fixed, warped, valid, float(sigma))
            images[sigma] = (f_img, _image_and_gradients(w_img))
            del w_img
        f_img, sampler = images[sigma]
        idx = _sample_lattice(fixed.shape, int(factor), count, rng)
        idx = idx[valid[tuple(idx.T)]]
        if idx.shape[0] < 16:
            return None
        # Off-grid samples: at voxel centres every sample would sit on a kink of
        # the linear interpolant at once and stall the line search.
        cidx = np.clip(idx + rng.uniform(-0.5, 0.5, idx.shape), 0, shape - 1)
        f_vals = ndimage.map_coordinates(f_img, cidx.T, order=1, mode="nearest")
        pts = geom.array_index_to_physical(cidx)
        weights = bspline_weight_matrix(transform, pts)
        return _Objective(metric, pts, weights, sampler, f_vals, to_index, origin, shape)

    for factor, sigma in zip(shrink_factors, smoothing_sigmas):
        fun = objective(int(factor), float(sigma), samples)
        if fun is None:
            break
        curvature = fun.curvature()
        if curvature > 0 and math.isfinite(curvature):
            fun.scale = curvature
            if q is not None:
                fun.penalty = _Penalty(q, curvature, ndim)
        res = optimize.minimize(
            fun,
            coeffs,
            jac=True,
            method="L-BFGS-B",
            bounds=[(-bound, bound)] * n_params,
            options={"maxiter": int(iterations), "maxcor": 7, "ftol": 1e-7, "gtol": 1e-7},
        )
        evaluations += fun.evaluations
        coeffs = np.asarray(res.x, dtype=np.float64)
        value = float(res.fun) * fun.scale
    out = _FitResult(coeffs, value, evaluations)
    if validation_samples > 0:
        check = objective(1, 0.0, validation_samples)
        if check is not None:
            out.before = check.data_term(np.zeros(n_params))[0]
            out.after = check.data_term(coeffs)[0]
    return out
