"""ngff-dreg's default block method: a cubic B-spline fitted by Gauss-Newton.

The moving block is resampled once onto the padded fixed block through the
initial transform; :func:`~ngff_dreg.fitting.bspline_gn.gauss_newton_fit`
then fits the B-spline's control points on a regular sample lattice with an
intensity model that absorbs intensity remaps and smooth bias fields. The
result is an ``itk.BSplineTransform`` over the padded block (the itk-dreg
contract), valid where the block's samples supported it; a fit that does not
improve the data term on held-out samples, or that moves its points much
farther than that data term says they are misaligned, is refused
(LOW_QUALITY), so the reduction fills the block from its neighbours.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ngff_dreg.fitting.bspline_gn import GaussNewtonOptions, GaussNewtonResult, gauss_newton_fit
from ngff_dreg.fitting.descriptors import AUTO
from ngff_dreg.fitting.destripe import DESTRIPE_MODES, axis_names, destripe
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.interfaces import (
    BlockInfo,
    BlockPairRegistrationMethod,
    BlockPairRegistrationResult,
    BlockRegStatus,
)
from ngff_dreg.itk_bridge import geometry_of
from ngff_dreg.methods._common import (
    buffered_pair,
    checked_result,
    failure,
    identity_bspline,
    mesh_cells,
)
from ngff_dreg.methods.bspline import NUMPY_ENGINE_ITK, warp_moving
from ngff_dreg.transforms.bspline import BSplineGrid
from ngff_dreg.transforms.jacobian import jacobian_determinant
from ngff_dreg.validate import has_variation

__all__ = ["MAX_MOTION", "MIN_BLOCK_JACOBIAN", "MIN_BLOCK_SIMILARITY", "BSplineGaussNewton"]

logger = logging.getLogger(__name__)

#: A block fit whose det J falls to this or below anywhere in its block
#: (without the overlap) where the fixed image has signal (with MIND: anywhere,
#: and in the overlap where the fixed image has signal) is refused.
MIN_BLOCK_JACOBIAN = 0.05
#: A MIND fit whose held-out MIND NCC (of the fixed block's descriptors with
#: the warped moving block's) stays below this is refused: the two blocks share
#: no structure a deformation could be fitted to (a featureless region under
#: stripes or noise), and what the fit finds there is noise. The held-out data
#: term does not catch this with MIND: descriptors are patch sums, so held-out
#: samples are not independent of the fitted ones (pure noise against texture
#: lowers it by 4 %). The reduction fills such a block from its neighbours.
#: Intensity fits are not gated: their NCC includes what the smooth gain
#: explains, about 0.2 against pure noise, and their held-out check holds.
MIN_BLOCK_SIMILARITY = 0.2
#: A fit whose mean squared displacement at the held-out samples exceeds this
#: many times the held-out data term before it (the data term is in squared
#: physical units: a uniform misalignment d has d²) is refused: it moves points
#: about three times farther than the images' misalignment accounts for. Such
#: a fit follows a structure one image has and the other lacks: between a
#: fundus photograph's red and green channels, the fovea is a dark disc in one
#: and hardly visible in the other, and a one-block coarse fit moved the
#: surrounding retina by 200 µm (rms) where the channels were 46 µm apart. Fits
#: that align measured 0.03–3.5 times their data term on the suite's cases.
MAX_MOTION = 10.0


def _core_geometry(fixed_subimage: Any, geom: ImageGeometry, block_info: BlockInfo
                   ) -> ImageGeometry:
    """The block without its overlap, as a sub-grid of the padded block ``geom``."""
    start = [int(i) for i in fixed_subimage.GetLargestPossibleRegion().GetIndex()][::-1]
    slices = []
    for s, n, p0 in zip(block_info.array_slice, geom.shape, start):
        lo = min(max(int(s.start or 0) - p0, 0), n - 1)
        hi = max(min(int(s.stop if s.stop is not None else p0 + n) - p0, n), lo + 1)
        slices.append(slice(lo, hi))
    return geom.sub(slices)


def _signal_mask(fixed: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Where the fixed block holds signal.

    Its smoothed magnitude above 10 % of its 99th percentile: the empty
    background around an object is left out.
    """
    mag = ndimage.uniform_filter(np.abs(fixed), size=3)
    top = float(np.percentile(mag, 99.0))
    return np.asarray(mag > 0.1 * top) if top > 0 else np.zeros(fixed.shape, dtype=bool)


def _min_jacobian(transform: Any, core: ImageGeometry, padded: ImageGeometry,
                  signal: npt.NDArray[np.bool_]) -> float:
    """Smallest det J of a block's B-spline where the block has signal.

    Evaluated on a lattice of a quarter control cell over the block's ``core``;
    ``signal`` is the mask of the ``padded`` block.
    """
    grid = BSplineGrid.from_itk(transform)
    nd = core.ndim
    node_spacing = np.asarray(grid.fixed_parameters[2 * nd:3 * nd], dtype=np.float64)
    step = np.maximum(node_spacing / 4.0, core.spacing)
    lattice = core.with_spacing(tuple(float(v) for v in step))
    det = jacobian_determinant(grid.displacement_on_grid(lattice), lattice)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in lattice.shape], indexing="ij"), -1)
    pts = lattice.array_index_to_physical(idx.reshape(-1, nd).astype(np.float64))
    at = np.rint(padded.physical_to_index(pts)[:, ::-1]).astype(np.int64)
    at = np.clip(at, 0, np.asarray(padded.shape) - 1)
    det = det.reshape(-1)[signal[tuple(at.T)]]
    return float(det.min()) if det.size else 1.0


def _destriped(fixed: Any, moving: Any) -> str:
    """Divide streaks out of both buffered blocks, in place; a note of the axes treated."""
    import itk

    done = []
    for name, image in (("fixed", fixed), ("moving", moving)):
        view = itk.array_view_from_image(image)
        valid = np.isfinite(view)
        out, axes = destripe(np.where(valid, view, 0.0), valid)
        if axes:
            view[valid] = out[valid]
            image.Modified()
            done.append(f"{name} along {axis_names(axes, view.ndim)}")
    return f"destriped {'; '.join(done)}; " if done else ""


@dataclass
class BSplineGaussNewton(BlockPairRegistrationMethod):
    """Deformable block registration: a cubic B-spline fitted by Gauss-Newton.

    Parameters
    ----------
    control_point_spacing:
        Physical distance between control points (one value or one per ITK
        axis). ``None``: ``mesh_size`` cells per axis.
    mesh_size:
        Mesh cells per axis when ``control_point_spacing`` is ``None``.
    shrink_factors, smoothing_sigmas:
        Passes, coarse to fine: lattice stride and Gaussian sigma in voxels of
        the block's finest axis (the control grid is the same in every pass).
    iterations:
        Maximum Gauss-Newton iterations per pass.
    cg_iterations:
        Conjugate-gradient steps per iteration.
    bending:
        Bending-energy weight, measured in control cells (see
        :class:`~ngff_dreg.fitting.bspline_gn.GaussNewtonOptions`).
    mind_bending:
        The bending weight when the method fits MIND-SSC descriptors;
        ``None``: ``bending``. The MIND data term keeps a large residual at
        the alignment (the descriptors of two contrasts differ even where
        the structures coincide), so its minimum is shallower and noisier
        than the intensity model's and needs a stronger prior.
    ridge:
        Weight of the mean squared coefficient.
    intensity:
        ``"piecewise"`` (default: any remapping of intensities) or
        ``"affine"`` (the optimum of the normalised cross-correlation).
    intensity_bins:
        Segments of the piecewise-linear intensity map.
    gain_degree:
        Degree (0–2) of the smooth multiplicative gain over the block.
    similarity:
        ``"intensity"`` (the intensity model above) or ``"mind"`` (MIND-SSC
        descriptors: contrasts that are not a function of each other, strong
        illumination differences; the intensity settings are then unused).
        ``"auto"``: what the run's global stage chose (``"mind"`` without one).
    patch_sigma:
        MIND-SSC patch size (Gaussian sigma, voxels of the block's finest
        axis); ``None``: half of each pass's lattice stride, at least 0.8.
    validate:
        Refuse (LOW_QUALITY) a fit that does not lower the data term on a
        held-out lattice, or (MIND) whose held-out MIND NCC stays below
        ``min_similarity``.
    min_similarity:
        :data:`MIN_BLOCK_SIMILARITY`: the lowest held-out MIND NCC a kept MIND
        fit has.
    min_gain:
        With ``validate``: the fraction by which a kept fit lowers the
        held-out data term at least (0: any improvement). A refinement stage
        whose finer grid mostly fits noise gains little and is refused.
    max_motion:
        With ``validate``: refuse a fit whose mean squared displacement at the
        held-out samples exceeds this many times the held-out data term before
        the fit (both in squared physical units; the data term of a uniform
        misalignment ``d`` is ``d²``). Such a fit moves points about
        ``sqrt(max_motion)`` times farther than the images' misalignment
        accounts for: it follows what the similarity cannot explain (a
        structure one image has and the other lacks) rather than the
        alignment. ``0`` turns the test off.
    destripe:
        ``"auto"``: divide illumination streaks out of each block (fixed, and
        moving in its own frame, before it is warped) along the axes where
        :func:`~ngff_dreg.fitting.destripe.destripe` finds them; ``"off"``.
    max_displacement_fraction:
        Results that move a block point by more than this fraction of the
        padded block's diagonal are refused.

    """

    control_point_spacing: float | tuple[float, ...] | None = None
    mesh_size: int | tuple[int, ...] = 4
    shrink_factors: tuple[int, ...] = (2,)
    smoothing_sigmas: tuple[float, ...] = (0.5,)
    iterations: int = 10
    cg_iterations: int = 5
    bending: float = 0.003
    mind_bending: float | None = None
    ridge: float = 0.0
    intensity: str = "piecewise"
    intensity_bins: int = 12
    gain_degree: int = 2
    similarity: str = "intensity"
    patch_sigma: float | None = None
    validate: bool = True
    min_similarity: float = MIN_BLOCK_SIMILARITY
    destripe: str = "auto"
    min_gain: float = 0.0
    max_motion: float = MAX_MOTION
    max_displacement_fraction: float = 0.25
    _options: GaussNewtonOptions = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.destripe not in DESTRIPE_MODES:
            raise ValueError(f"destripe {self.destripe!r} is not one of "
                             f"{', '.join(DESTRIPE_MODES)}")
        self.shrink_factors = tuple(int(f) for f in self.shrink_factors)
        self.smoothing_sigmas = tuple(float(s) for s in self.smoothing_sigmas)
        if isinstance(self.mesh_size, Sequence):
            self.mesh_size = tuple(int(m) for m in self.mesh_size)
        if isinstance(self.control_point_spacing, Sequence):
            self.control_point_spacing = tuple(float(c) for c in self.control_point_spacing)
        if self.mind_bending is not None and not float(self.mind_bending) >= 0:
            raise ValueError(f"mind_bending must be >= 0, got {self.mind_bending}")
        # "auto" is resolved by the pipeline from the global stage's choice;
        # a method used on its own (or without a global stage) fits MIND
        similarity = "mind" if self.similarity == AUTO else self.similarity
        bending = self.bending if similarity != "mind" or self.mind_bending is None \
            else self.mind_bending
        self._options = GaussNewtonOptions(
            shrink_factors=self.shrink_factors,
            smoothing_sigmas=self.smoothing_sigmas,
            iterations=int(self.iterations),
            cg_iterations=int(self.cg_iterations),
            bending=float(bending),
            ridge=float(self.ridge),
            intensity=self.intensity,
            intensity_bins=int(self.intensity_bins),
            gain_degree=int(self.gain_degree),
            similarity=similarity,
            patch_sigma=None if self.patch_sigma is None else float(self.patch_sigma),
        )

    @property
    def accepts_ngff_transforms(self) -> bool:
        """The moving block is warped here (:func:`warp_moving`): take transforms as they are."""
        return True

    @property
    def itk_modules(self) -> tuple[str, ...]:
        """The small part of ITK this method touches (images, B-spline transform, warping)."""
        return NUMPY_ENGINE_ITK

    def mesh_for(self, size: Sequence[int], spacing: Sequence[float]) -> list[int]:
        """Mesh cells per ITK axis for a padded block of ``size`` voxels."""
        return mesh_cells(size, spacing, self.control_point_spacing, self.mesh_size)

    def _fit(self, fixed: Any, fixed_arr: npt.NDArray[np.float64], moving: Any, initial: Any,
             transform: Any, geom: ImageGeometry) -> tuple[GaussNewtonResult | None, str]:
        import itk

        warped_img = warp_moving(moving, fixed, initial)
        warped = np.asarray(itk.array_view_from_image(warped_img), dtype=np.float64)
        valid = np.isfinite(warped)
        if valid.mean() < 0.25 or not has_variation(warped[valid]):
            return None, f"moving region covers {100 * valid.mean():.0f}% of the block"
        fp = np.asarray(transform.GetFixedParameters(), dtype=np.float64)
        fit = gauss_newton_fit(fixed_arr, warped, valid, geom, fp, self._options,
                               validate=self.validate)
        transform.SetParameters(itk.OptimizerParameters[itk.D](fit.params.tolist()))
        note = f"gauss-newton: {fit.iterations} iterations, {fit.cg_iterations} CG steps"
        if fit.before is not None and fit.after is not None:
            note += f", held-out data term {fit.before:.4g} -> {fit.after:.4g}"
        return fit, note

    def __call__(
        self,
        fixed_subimage: Any,
        moving_subimage: Any,
        initial_transform: Any,
        block_info: BlockInfo,
        **kwargs: Any,
    ) -> BlockPairRegistrationResult:
        """Register one block pair (the itk-dreg ``BlockPairRegistrationMethod`` call)."""
        import itk

        fixed, moving, skipped = buffered_pair(fixed_subimage, moving_subimage, block_info)
        if skipped is not None:
            return skipped
        striped = _destriped(fixed, moving) if self.destripe == "auto" else ""
        geom = geometry_of(fixed)
        mesh = self.mesh_for(geom.size, geom.spacing)
        transform = identity_bspline(fixed, mesh)
        fixed_arr = np.asarray(itk.array_view_from_image(fixed), dtype=np.float64)
        fit, note = self._fit(fixed, fixed_arr, moving, initial_transform, transform, geom)
        note = striped + note
        where = f"block {block_info.chunk_index}"
        if fit is None:
            return failure(BlockRegStatus.OUT_OF_BOUNDS, f"{where}: {note}")
        if not (math.isfinite(fit.value) and np.all(np.isfinite(fit.params))):
            return failure(BlockRegStatus.LOW_QUALITY, f"{where}: diverged ({note})")
        if self.validate and fit.before is not None and fit.after is not None \
                and not fit.after < (1.0 - self.min_gain) * fit.before:
            return failure(BlockRegStatus.LOW_QUALITY, f"{where}: no improvement: {note}")
        if self.validate and self.max_motion > 0 and fit.before is not None \
                and fit.motion is not None and fit.motion > self.max_motion * fit.before:
            return failure(BlockRegStatus.LOW_QUALITY,
                           f"{where}: moves points {math.sqrt(fit.motion):.3g} (rms) where its "
                           f"data term puts the images {math.sqrt(fit.before):.3g} apart "
                           f"(physical units): {note}")
        if self.validate and self._options.similarity == "mind" \
                and fit.ncc_after is not None and not fit.ncc_after >= self.min_similarity:
            return failure(BlockRegStatus.LOW_QUALITY,
                           f"{where}: no shared structure (held-out similarity "
                           f"{fit.ncc_after:.3f} < {self.min_similarity}): {note}")
        # MIND descriptors have structure wherever either image has, and a fit
        # of them can fold in a background the fixed image leaves empty: their
        # fits are checked over the whole core
        signal = _signal_mask(fixed_arr)
        mind = self._options.similarity == "mind"
        checked = np.ones(fixed_arr.shape, dtype=bool) if mind else signal
        det_min = _min_jacobian(transform, _core_geometry(fixed_subimage, geom, block_info),
                                geom, checked)
        if mind:
            # and over the overlap where the fixed block has signal: next to a
            # refused neighbour the reduction keeps this block's field there
            # (opposite-lit lightsheet-like pairs folded in such overlaps)
            det_min = min(det_min, _min_jacobian(transform, geom, geom, signal))
        if not det_min > MIN_BLOCK_JACOBIAN:
            # where the block's samples do not reach (outside the moving data,
            # flat regions) the bending energy alone steers the control points;
            # a fit that folds inside its block (with the intensity model:
            # where the block has signal, as the model maps an empty background
            # to a constant) is refused and filled from its neighbours (folds
            # in the overlap are outweighed by the neighbours' fits when the
            # blocks are blended)
            return failure(BlockRegStatus.LOW_QUALITY,
                           f"{where}: the fit folds (det J min {det_min:.3f}): {note}")
        logger.debug("%s: B-spline mesh %s, objective %.4g, %s", where, mesh, fit.value, note)
        result = checked_result(transform, fixed_subimage, fit.value,
                                max_fraction=self.max_displacement_fraction, message=note)
        if fit.ncc_before is not None and fit.ncc_after is not None:
            result.figures = {"ncc_before": fit.ncc_before, "ncc_after": fit.ncc_after,
                              "samples": float(fit.held_out)}
        return result
