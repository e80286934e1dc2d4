"""The global stage: whole-level linear registration (one task) and its NCC scoring.

:func:`global_alignment` registers a coarse fixed level against the matching
moving level, rigid then affine, started from the images' centres of mass;
:func:`ncc_at_level` scores any transform there (every stage's NCC before and
after is measured on this level). :class:`GlobalStageRunner` runs the stage
for the pipeline, or resumes it from the checkpoint manifest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage, stats

from ngff_dreg.fitting.descriptors import AUTO, GLOBAL_LOCAL_FLOOR_SIGMA, mind_ssc
from ngff_dreg.fitting.destripe import axis_names, destripe
from ngff_dreg.fitting.intensity import IntensityModel
from ngff_dreg.fitting.lattice import physical_sigmas
from ngff_dreg.fitting.linear_gn import linear_fit
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import BlockInfo, BlockRegStatus
from ngff_dreg.io.omezarr.output_state import StageReport
from ngff_dreg.itk_bridge import image_from_array
from ngff_dreg.methods import ItkLinearRegistration
from ngff_dreg.schedule import GlobalStage
from ngff_dreg.transforms import AffineTransform, map_points
from ngff_dreg.worker import prepare_worker

if TYPE_CHECKING:
    from ngff_dreg.run import Run

__all__ = ["GlobalStageRunner", "global_alignment", "global_stage_task", "ncc_at_level"]

logger = logging.getLogger(__name__)

#: A MIND global fit that ends below this MIND NCC has found no structure the
#: two images share (a featureless specimen whose streaks were divided out,
#: say); the stage then keeps the images as they lie (centres aligned), where
#: a best-of-noise affine could be anywhere. The same level as the block
#: stages' :data:`~ngff_dreg.methods.bspline_gn.MIN_BLOCK_SIMILARITY`; a
#: registrable pair scores 0.5 or more here (T1 against T2-like 0.6–0.7,
#: opposite-lit lightsheet-like 0.96).
MIN_GLOBAL_SIMILARITY = 0.2


def _level_arrays(fixed_ctor: Any, moving_ctor: Any, destripe_mode: str = "auto",
                  notes: list[tuple[int, str]] | None = None) -> tuple[Any, Any]:
    """Both whole levels as float32 arrays, streaks divided out (``destripe_mode="auto"``).

    ``notes``: gets one ``(log level, line)`` per level that was destriped.
    """
    out = []
    for what, ctor in (("fixed", fixed_ctor), ("moving", moving_ctor)):
        arr = np.nan_to_num(ctor().read_box(Box.full(ctor.geometry.shape)).astype(np.float32))
        if destripe_mode == "auto":
            clean, axes = destripe(arr)
            if axes:
                note = (f"streaks along {axis_names(axes, arr.ndim)} of the {what} image "
                        "divided out (destripe = \"off\" in [global] keeps them)")
                logger.debug("global stage: %s", note)
                if notes is not None:
                    notes.append((logging.INFO, note))
                arr = clean.astype(np.float32)
        out.append(arr)
    return out[0], out[1]


def foreground(arr: npt.ArrayLike, geom: ImageGeometry) -> npt.NDArray[np.float64]:
    """Where the object is, whatever its illumination: a 0/1 mask.

    The image (minus its 5th percentile, the background level) is divided by
    its smoothing at a sixth of its extent, which flattens an attenuation or
    bias that varies across the image by orders of magnitude; the voxels
    above a fifth of that local level, and above 1 % of the image's 99th
    percentile, are the object.
    """
    a = np.nan_to_num(np.asarray(arr, dtype=np.float64))
    a = a - np.percentile(a, 5)
    a[a < 0] = 0
    top = float(np.percentile(a, 99))
    if top <= 0:
        return np.zeros_like(a)
    sigma = [max(1.0, n / 6.0) for n in a.shape]
    local = ndimage.gaussian_filter(a, sigma) + 1e-3 * top
    return np.asarray((a > 0.2 * local) & (a > 0.01 * top), dtype=np.float64)


def _centre_of_mass(arr: npt.NDArray[np.float32], geom: ImageGeometry,
                    mask: bool = False) -> npt.NDArray[np.float64]:
    """Physical centre of mass of the voxels above the 5th percentile.

    ``mask``: of the :func:`foreground` mask instead (each object voxel
    weighs the same, however brightly it is lit).
    """
    if mask:
        a = foreground(arr, geom)
    else:
        a = np.nan_to_num(arr.astype(np.float64))
        a = a - np.percentile(a, 5)
        a[a < 0] = 0
    total = a.sum()
    if total <= 0:
        return geom.index_to_physical((np.asarray(geom.size) - 1) / 2.0)
    idx = [np.arange(n) for n in a.shape]
    com_zyx = [
        float((a.sum(axis=tuple(j for j in range(a.ndim) if j != i)) * idx[i]).sum() / total)
        for i in range(a.ndim)
    ]
    return geom.array_index_to_physical(np.asarray(com_zyx))


def _start(fixed: npt.NDArray[np.float32], fg: ImageGeometry, moving: npt.NDArray[np.float32],
           mg: ImageGeometry, initial: AffineTransform | None, initializer: str
           ) -> AffineTransform:
    """Where the global stage starts: ``initial``, or the initializer's transform."""
    if initial is not None:
        return initial
    if initializer == "none":
        return AffineTransform.identity(fg.ndim)
    if initializer in ("moments", "foreground", "multi"):
        robust = initializer == "foreground"
        cf, cm = _centre_of_mass(fixed, fg, robust), _centre_of_mass(moving, mg, robust)
        return AffineTransform.from_arrays(np.eye(fg.ndim), cm - cf)
    return _centres_translation(fg, mg)


def _best_start(score: _Scorer, sigma: float, stride: int, iterations: int) -> AffineTransform:
    """The best of several starts, each refined by a coarse rigid fit.

    The starts are the geometric centres (objects that fill the field of view),
    the centres of mass (objects in an empty background) and the centres of
    the illumination-flattened foreground masks (unevenly lit objects). Each
    is refined by a rigid fit at the coarsest smoothing, and the one with the
    highest similarity (``score``, the stage's :class:`_Scorer`) is kept.
    """
    fixed, fg, moving, mg = score.fixed, score.fg, score.moving, score.mg
    best: tuple[float, AffineTransform] | None = None
    f64, m64 = np.asarray(fixed, np.float64), np.asarray(moving, np.float64)
    for name in ("centers", "moments", "foreground"):
        start = _start(fixed, fg, moving, mg, None, name)
        fit = linear_fit(f64, fg, m64, mg, start.A, start.t, kinds=("rigid",), sigmas=(sigma,),
                         strides=(stride,), iterations=iterations, similarity=score.similarity)
        cand = AffineTransform.from_arrays(fit.matrix, fit.translation)
        value = score(cand)
        logger.debug("global start %s: %s %.4f", name, metric_name(score.similarity), value)
        if np.isfinite(value) and (best is None or value > best[0]):
            best = (value, cand)
    return best[1] if best is not None else _start(fixed, fg, moving, mg, None, "centers")


def global_alignment(
    fixed_ctor: Any,
    moving_ctor: Any,
    initial: AffineTransform | None,
    initializer: str,
    kinds: Sequence[str],
    metric: str,
    iterations: int,
    method: str = "gauss-newton",
    similarity: str = "intensity",
    destripe_mode: str = "auto",
) -> AffineTransform:
    """Whole-level linear registration (runs in one task).

    Starts from ``initial`` or the ``initializer`` (``"moments"``, ``"centers"``
    or ``"none"``), then runs each of ``kinds`` on the two whole levels: with
    ``method="gauss-newton"``, :func:`~ngff_dreg.fitting.linear_gn.linear_fit`
    (NumPy; ``metric`` is not used), with ``"itk"`` ITK v4 and ``metric``. Returns
    the fixed→moving affine. ``destripe_mode="auto"`` divides illumination
    streaks out of both levels first (:func:`~ngff_dreg.fitting.destripe.destripe`);
    ``"off"`` does not.
    """
    fixed, moving = _level_arrays(fixed_ctor, moving_ctor, destripe_mode)
    return _align_arrays(fixed, fixed_ctor.geometry, moving, moving_ctor.geometry, initial,
                         initializer, kinds, metric, iterations, method, similarity)


def _align_arrays(fixed: npt.NDArray[np.float32], fg: ImageGeometry,
                  moving: npt.NDArray[np.float32], mg: ImageGeometry,
                  initial: AffineTransform | None, initializer: str, kinds: Sequence[str],
                  metric: str, iterations: int, method: str,
                  similarity: str = "intensity", score: _Scorer | None = None
                  ) -> AffineTransform:
    """:func:`global_alignment` on arrays already read.

    ``score``: the stage's :class:`_Scorer` of these arrays (made here when
    absent or of another similarity), so that its fixed descriptors and the
    scores of the transforms tried are computed once for the whole stage.
    """
    if score is None or score.similarity != similarity:
        score = _Scorer(fixed, fg, moving, mg, similarity)
    smallest = min(fg.shape)
    sigmas = tuple(s for s, f in ((2.0, 4), (1.0, 2), (0.0, 1)) if smallest // f >= 8) \
        or (0.0,)
    strides = tuple(2 if s >= 2 else 1 for s in sigmas)
    if initial is None and initializer == "multi" and method == "gauss-newton":
        current = _best_start(score, sigmas[0], strides[0], iterations)
    else:
        current = _start(fixed, fg, moving, mg, initial, initializer)
    if method == "gauss-newton":
        fit = linear_fit(np.asarray(fixed, np.float64), fg, np.asarray(moving, np.float64), mg,
                         current.A, current.t, kinds=kinds, sigmas=sigmas, strides=strides,
                         iterations=iterations, similarity=similarity)
        fitted = AffineTransform.from_arrays(fit.matrix, fit.translation)
        starts = [("start", current)]
        if initial is None and initializer in ("centers", "multi"):
            starts.append(("images as they lie", _centres_translation(fg, mg)))
        return _not_worse(score, fitted, starts)
    return _itk_alignment(fixed, fg, moving, mg, current, kinds, metric, iterations)


def _not_worse(score: _Scorer, fitted: AffineTransform,
               starts: Sequence[tuple[str, AffineTransform]]) -> AffineTransform:
    """``fitted``, unless one of ``starts`` scores higher by the stage's own similarity.

    A Gauss-Newton fit minimises a smoothed, subsampled objective; on images
    whose similarity has several optima (a featureless object under stripes,
    say) it can end lower than where it started on the full-resolution
    measure the stage reports. The stage then keeps the better start: it never
    hands the block stages a transform that its own metric scores below the
    images as they lie. And when even the best of them scores below
    :data:`MIN_GLOBAL_SIMILARITY` by MIND, the images share no structure to
    align: the images as they lie (centres aligned) are kept, if that start
    was tried (the ``"centers"`` and ``"multi"`` initializers without an
    initial transform).
    """
    best_name, best = "fit", fitted
    best_score = score(fitted)
    for name, start in starts:
        value = score(start)
        if np.isfinite(value) and (not np.isfinite(best_score) or value > best_score + 1e-4):
            best_name, best, best_score = name, start, value
    if best is not fitted:
        logger.warning("global stage: the fit scored lower (%s) than its %s; keeping the %s",
                       metric_name(score.similarity), best_name, best_name)
    lie = dict(starts).get("images as they lie")
    if score.similarity == "mind" and lie is not None \
            and not np.allclose(best.homogeneous, lie.homogeneous) \
            and np.isfinite(best_score) and best_score < MIN_GLOBAL_SIMILARITY:
        # the client reports it (global_stage_task's notes)
        logger.debug("global stage: best %s %.3f below %.2f: keeping the images as they lie",
                     metric_name(score.similarity), best_score, MIN_GLOBAL_SIMILARITY)
        return lie
    return best


def _itk_alignment(fixed: npt.NDArray[np.float32], fg: ImageGeometry,
                   moving: npt.NDArray[np.float32], mg: ImageGeometry,
                   current: AffineTransform, kinds: Sequence[str], metric: str,
                   iterations: int) -> AffineTransform:
    """ITK v4 linear stages, each kept only when it does not lower the NCC."""
    prepare_worker()
    ndim = fg.ndim
    fimg = image_from_array(fixed, fg, Box.full(fg.shape))
    mimg = image_from_array(moving, mg, Box.full(mg.shape))
    info = BlockInfo((0,) * ndim, Box.full(fg.shape).slices)
    smallest = min(fg.shape)
    shrink = tuple(f for f in (4, 2, 1) if smallest // f >= 16) or (1,)
    sigmas = tuple(float(max(0, f - 1)) for f in shrink)
    best = _ncc_arrays(fixed, fg, moving, mg, current)
    for kind in kinds:
        method = ItkLinearRegistration(
            kind=kind,
            metric=metric,
            shrink_factors=shrink,
            smoothing_sigmas=sigmas,
            iterations=iterations,
            sampling_percentage=0.25,
            max_displacement_fraction=0.5,
        )
        result = method(
            fixed_subimage=fimg, moving_subimage=mimg, initial_transform=current.to_itk(),
            block_info=info,
        )
        if result.status != BlockRegStatus.SUCCESS or result.transform is None:
            logger.warning(
                "global %s stage failed (%s); keeping the previous transform",
                kind,
                result.message or result.status.name,
            )
            continue
        step = AffineTransform.from_itk(result.transform)
        candidate = step.then(current)  # block transform acts first
        score = _ncc_arrays(fixed, fg, moving, mg, candidate)
        if not np.isfinite(score) or (np.isfinite(best) and score < best - 1e-4):
            logger.warning(
                "global %s stage lowered the NCC (%.4f -> %.4f); keeping the previous transform",
                kind,
                best,
                score,
            )
            continue
        current, best = candidate, score
    return current


#: ``similarity="auto"`` picks the intensity model when it explains at least
#: this much of the fixed image (the correlation of the fixed global level with
#: the model's prediction from the aligned moving level), or when the plain NCC
#: reaches :data:`AUTO_MIN_NCC` (the same contrast, still misaligned locally
#: after the global stage); MIND otherwise. Set on the suite's tuning cases:
#: same-contrast pairs measured 0.980–0.997 (model) or 0.940–0.991 (NCC),
#: other contrasts and opposite lighting 0.79–0.96 and -0.47–0.89.
AUTO_MIN_MODEL_NCC = 0.97
AUTO_MIN_NCC = 0.92
#: ... and only when the two images' intensities rise together inside the
#: object: the absolute rank correlation (Spearman) of the fixed voxels in the
#: fixed image's :func:`foreground` with the warped moving ones reaches this. A
#: remap, a bias field or an inverted contrast keeps it high (the suite's tuning
#: pairs of one contrast: 0.84–0.98, the lowest on a large warp that the global
#: affine leaves misaligned). On a coarse level the background and the object's
#: outline carry both NCCs above their thresholds for a FLAIR-like moving image
#: against a T1 (0.98 and 0.96), while the tissues inside rank in another order
#: (0.23). Other contrasts and opposite lighting: 0.08–0.44, and 0.87 on an
#: opposite-lit micrograph, which the NCCs already send to MIND.
AUTO_MIN_RANK = 0.55


def model_ncc(fixed: npt.NDArray[np.float32], fg: ImageGeometry,
              moving: npt.NDArray[np.float32], mg: ImageGeometry, transform: Any) -> float:
    """How well a function of the moving intensity predicts the fixed one (0–1).

    The correlation of the fixed level with the piecewise-linear intensity map
    of the block stages (no gain) fitted to the moving level warped by
    ``transform``, where the warp lands inside: about 1 for the same contrast
    up to a remap, lower when the contrasts are not a function of one another
    or the illumination differs across the image.
    """
    warped, inside = _warp_into(fixed, fg, moving, mg, transform)
    f = fixed.reshape(-1)[inside].astype(np.float64)
    if f.size < 64:
        return float("nan")
    model = IntensityModel.for_samples("piecewise", 12, None, f.size)
    pred, _ = model.fit(warped[inside], f)
    return _ncc_flat(f, pred)


def rank_agreement(fixed: npt.NDArray[np.float32], fg: ImageGeometry,
                   moving: npt.NDArray[np.float32], mg: ImageGeometry, transform: Any) -> float:
    """Whether the intensities rise together inside the object (0–1).

    The absolute Spearman rank correlation of the fixed voxels in the fixed
    image's :func:`foreground` with the moving level warped by ``transform``
    onto them (where it lands inside). Near 1 when one intensity is a monotone
    function of the other (a remap, a bias, an inverted contrast), lower when
    the tissues inside rank in another order (a T1 against a FLAIR: grey matter
    darker than white in one, brighter in the other), whatever the background
    and the object's outline do.
    """
    warped, inside = _warp_into(fixed, fg, moving, mg, transform)
    mask = inside & (foreground(fixed, fg).reshape(-1) > 0)
    if int(mask.sum()) < 64:
        return float("nan")
    f = stats.rankdata(fixed.reshape(-1)[mask])
    w = stats.rankdata(warped[mask])
    return abs(_ncc_flat(f, w))


def choose_similarity(explained: float, ncc: float = float("nan"),
                      rank: float = 1.0) -> str:
    """The block stages' similarity for ``similarity="auto"``.

    ``explained``: :func:`model_ncc`; ``ncc``: the plain NCC; ``rank``:
    :func:`rank_agreement`, all on the global level after the global stage.
    The intensity model when either NCC reaches its threshold
    (:data:`AUTO_MIN_MODEL_NCC`, :data:`AUTO_MIN_NCC`) and the ranks agree
    (:data:`AUTO_MIN_RANK`); MIND otherwise.
    """
    if not (np.isfinite(rank) and rank >= AUTO_MIN_RANK):
        return "mind"
    if (np.isfinite(explained) and explained >= AUTO_MIN_MODEL_NCC) or \
            (np.isfinite(ncc) and ncc >= AUTO_MIN_NCC):
        return "intensity"
    return "mind"


def global_stage_task(fixed_ctor: Any, moving_ctor: Any, stage: GlobalStage
                      ) -> tuple[AffineTransform, float, float, list[tuple[int, str]]]:
    """The global stage in one task: its affine, and its similarity before and after it.

    Both levels are read once; the similarity (:func:`similarity_arrays`: the
    NCC, or the MIND NCC for ``similarity="mind"``) before is that of the
    initializer's starting transform without the moments (the images as they
    lie). The last item: ``(log level, line)`` pairs for the user (levels
    destriped; a pair that shares too little structure to align).
    """
    notes: list[tuple[int, str]] = []
    fixed, moving = _level_arrays(fixed_ctor, moving_ctor, stage.destripe, notes)
    fg, mg = fixed_ctor.geometry, moving_ctor.geometry
    # what the stage reports is what a Gauss-Newton stage fitted: one scorer
    # serves both (the start and the result were scored while fitting)
    score = _Scorer(fixed, fg, moving, mg, _scored(stage))
    affine = _align_arrays(fixed, fg, moving, mg, None, stage.initializer, stage.kinds,
                           stage.metric, stage.iterations, stage.method,
                           _fitted(stage.similarity), score)
    start = _initial_only(fixed_ctor, moving_ctor, stage.initializer)
    before, after = score(start), score(affine)
    if score.similarity == "mind" and np.isfinite(after) and after < MIN_GLOBAL_SIMILARITY:
        kept = "as they lie" if np.allclose(affine.homogeneous, start.homogeneous) \
            else "at the stage's fit"
        notes.append((logging.WARNING,
                      f"the images share little structure (MIND NCC below "
                      f"{MIN_GLOBAL_SIMILARITY} for every transform tried; {after:.3f} where "
                      f"they are kept, {kept}); check the pair, or pass an initial transform"))
    return affine, before, after, notes


def _scored(stage: GlobalStage) -> str:
    """The similarity the global stage reports (what it fitted; ITK stages: the NCC)."""
    return _fitted(stage.similarity) if stage.method == "gauss-newton" else "intensity"


def _fitted(similarity: str) -> str:
    """What the global stage fits for a stage similarity (``"auto"`` aligns with MIND)."""
    return "mind" if similarity == AUTO else similarity


def auto_similarity_task(fixed_ctor: Any, moving_ctor: Any, stage: GlobalStage,
                         transform: AffineTransform
                         ) -> tuple[str, tuple[float, float, float],
                                    tuple[AffineTransform, float, float, float, str] | None]:
    """``(similarity, (model NCC, NCC, rank agreement), refit)`` for the block stages.

    All measured on the global level (:func:`choose_similarity`); both levels
    are read once. When the intensity model is chosen (and the stage is a
    Gauss-Newton one), ``refit`` is :func:`_intensity_refit` on the same
    arrays; otherwise ``None``.
    """
    fixed, moving = _level_arrays(fixed_ctor, moving_ctor, stage.destripe)
    fg, mg = fixed_ctor.geometry, moving_ctor.geometry
    score = _Scorer(fixed, fg, moving, mg, "intensity")
    explained = model_ncc(fixed, fg, moving, mg, transform)
    ncc = score(transform)
    rank = rank_agreement(fixed, fg, moving, mg, transform)
    similarity = choose_similarity(explained, ncc, rank)
    refit = None
    if similarity == "intensity" and stage.method == "gauss-newton":
        start = _initial_only(fixed_ctor, moving_ctor, stage.initializer)
        refit = _intensity_refit(score, stage, transform, start)
    return similarity, (explained, ncc, rank), refit


def _intensity_refit(score: _Scorer, stage: GlobalStage, transform: AffineTransform,
                     start: AffineTransform) -> tuple[AffineTransform, float, float, float, str]:
    """The global affine for block stages that fit the intensity model, after ``auto``.

    ``auto`` aligns with MIND, whose optimum need not be the intensity model's:
    on a same-contrast pair, block stages started from it were left where
    they folded or fitted a local optimum (a 2D micrograph: p95 5.1 px,
    against 0.54 from the intensity stage). So the stage is fitted again
    with the intensity model from ``transform`` and from the intensity
    stage's own start (centres of mass), and the one of the three with the
    highest NCC on the global level is kept. ``score``: the intensity
    :class:`_Scorer` of the level's arrays. ``(affine, NCC of start (the images
    as they lie), NCC of transform, NCC of the affine, which one)``.
    """
    candidates = [("the MIND fit", transform)]
    for name, initial, initializer in (("refitted from the MIND fit", transform, "none"),
                                       ("fitted from the centres of mass", None, "moments")):
        fitted = _align_arrays(score.fixed, score.fg, score.moving, score.mg, initial,
                               initializer, stage.kinds, stage.metric, stage.iterations,
                               "gauss-newton", "intensity", score)
        candidates.append((name, fitted))
    scores = [score(t) for _, t in candidates]
    best = int(np.argmax(np.where(np.isfinite(scores), scores, -np.inf)))
    return candidates[best][1], score(start), scores[0], scores[best], candidates[best][0]


def metric_name(similarity: str) -> str:
    """What :func:`similarity_arrays` and the block methods report for ``similarity``."""
    return "MIND NCC" if similarity == "mind" else "NCC"


def similarity_arrays(fixed: npt.NDArray[np.float32], fg: ImageGeometry,
                      moving: npt.NDArray[np.float32], mg: ImageGeometry, transform: Any,
                      similarity: str = "intensity") -> float:
    """The similarity a stage optimised, of ``fixed`` and ``moving`` warped into it.

    ``"intensity"``: the NCC of the intensities; ``"mind"``: the NCC of the
    MIND-SSC descriptors of the fixed image and of the warped moving image,
    where the warp lands inside the moving image.
    """
    return _Scorer(fixed, fg, moving, mg, similarity)(transform)


class _Scorer:
    """:func:`similarity_arrays` of one pair of levels, for many transforms.

    The fixed level's MIND descriptors are computed once, and each affine's
    score once (the global stage scores its starts, its fit and what it
    reports, often the same transforms).
    """

    def __init__(self, fixed: npt.NDArray[np.float32], fg: ImageGeometry,
                 moving: npt.NDArray[np.float32], mg: ImageGeometry, similarity: str) -> None:
        self.fixed, self.fg, self.moving, self.mg = fixed, fg, moving, mg
        self.similarity = similarity
        self._fixed_mind: npt.NDArray[np.float32] | None = None
        self._scores: dict[bytes, float] = {}

    def __call__(self, transform: Any) -> float:
        """The similarity of ``fixed`` and ``moving`` warped into it by ``transform``."""
        key = transform.homogeneous.tobytes() if isinstance(transform, AffineTransform) else None
        if key is not None and key in self._scores:
            return self._scores[key]
        value = self._score(transform)
        if key is not None:
            self._scores[key] = value
        return value

    def _score(self, transform: Any) -> float:
        fixed, fg, moving, mg = self.fixed, self.fg, self.moving, self.mg
        if self.similarity != "mind":
            return _ncc_arrays(fixed, fg, moving, mg, transform)
        warped, inside = _warp_into(fixed, fg, moving, mg, transform)
        if inside.sum() < 10:
            return float("nan")
        lf = GLOBAL_LOCAL_FLOOR_SIGMA
        if self._fixed_mind is None:
            self._fixed_mind = mind_ssc(fixed, physical_sigmas(2.0, fg), local_floor_sigma=lf
                                        ).reshape(-1, inside.size)
        df = self._fixed_mind[:, inside].ravel()
        dw = mind_ssc(warped.reshape(fixed.shape), physical_sigmas(2.0, fg), local_floor_sigma=lf
                      ).reshape(-1, inside.size)[:, inside].ravel()
        return _ncc_flat(df.astype(np.float64), dw.astype(np.float64))


def _warp_into(fixed: npt.NDArray[np.float32], fg: ImageGeometry,
               moving: npt.NDArray[np.float32], mg: ImageGeometry, transform: Any
               ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """``moving`` resampled on ``fixed``'s grid (flat), and where it lands inside."""
    grids = np.meshgrid(*[np.arange(n) for n in fg.shape], indexing="ij")
    idx = np.stack(grids, -1).reshape(-1, fg.ndim)
    pts = fg.array_index_to_physical(idx.astype(np.float64))
    midx = mg.physical_to_index(map_points(transform, pts))[:, ::-1]
    inside = np.all((midx >= 0) & (midx <= np.asarray(mg.shape) - 1), axis=1)
    warped = ndimage.map_coordinates(moving, midx.T, order=1, mode="nearest")
    return np.asarray(warped, dtype=np.float64), inside


def _ncc_flat(f: npt.NDArray[np.float64], w: npt.NDArray[np.float64]) -> float:
    f = f - f.mean()
    w = w - w.mean()
    den = float(np.sqrt((f * f).sum() * (w * w).sum()))
    return float((f * w).sum() / den) if den > 0 else float("nan")


def _ncc_arrays(
    fixed: npt.NDArray[np.float32],
    fg: ImageGeometry,
    moving: npt.NDArray[np.float32],
    mg: ImageGeometry,
    transform: Any,
) -> float:
    """NCC of ``fixed`` vs ``moving`` warped into it, where the warp lands inside."""
    warped, inside = _warp_into(fixed, fg, moving, mg, transform)
    f = fixed.reshape(-1)[inside].astype(np.float64)
    if f.size < 10:
        return float("nan")
    return _ncc_flat(f, warped[inside])


def ncc_at_level(fixed_ctor: Any, moving_ctor: Any, transform: Any,
                 destripe_mode: str = "auto") -> float:
    """NCC of the fixed level vs the moving level warped by ``transform``.

    Computed over fixed voxels whose mapped point falls inside the moving image,
    on the levels as the global stage sees them (``destripe_mode``: its
    ``destripe`` setting).
    """
    fixed, moving = _level_arrays(fixed_ctor, moving_ctor, destripe_mode)
    return _ncc_arrays(fixed, fixed_ctor.geometry, moving, moving_ctor.geometry, transform)


def _centres_translation(fg: ImageGeometry, mg: ImageGeometry) -> AffineTransform:
    """Translation taking the fixed image's geometric centre to the moving image's."""
    cf = fg.index_to_physical((np.asarray(fg.size) - 1) / 2.0)
    cm = mg.index_to_physical((np.asarray(mg.size) - 1) / 2.0)
    return AffineTransform.from_arrays(np.eye(fg.ndim), cm - cf)


def _initial_only(fixed_ctor: Any, moving_ctor: Any, initializer: str) -> AffineTransform:
    """The transform the global stage starts from, without the moments (scored before it)."""
    fg, mg = fixed_ctor.geometry, moving_ctor.geometry
    if initializer in ("centers", "multi"):
        return _centres_translation(fg, mg)
    return AffineTransform.identity(fg.ndim)


@dataclass
class GlobalStageRunner:
    """Runs (or resumes) the global stage of a :class:`~ngff_dreg.run.Run`.

    An initial transform given by the user replaces the stage.
    """

    stage: GlobalStage
    key: str = "global"

    def __call__(self, run: Run) -> None:
        """Set ``run.current`` to the global affine and record the stage's report."""
        if run.current is not None:
            return
        entry = run.done.get(self.key)
        if entry is not None:
            run.current = AffineTransform.from_homogeneous(entry["affine"])
            run.similarity = entry.get("similarity")
            run.reports.append(StageReport.from_entry(self.key, entry))
            run.timings["global"] = run.reports[-1].seconds
            return
        t0 = time.perf_counter()
        gs, inputs = self.stage, run.inputs
        g_fixed, g_moving = inputs.global_readers()
        fut = run.client.submit(global_stage_task, g_fixed, g_moving, gs, pure=False)
        run.current, ncc_before, ncc_after, notes = fut.result()
        for level, note in notes:
            logger.log(level, "global stage: %s", note)
        figures: tuple[float, float, float] | None = None
        refit: str | None = None
        if gs.similarity == AUTO:
            run.similarity, figures, refitted = run.client.submit(
                auto_similarity_task, g_fixed, g_moving, gs, run.current, pure=False).result()
            logger.info("similarity auto: on the global level the intensity model's NCC is "
                        "%.3f and the NCC %.3f (intensity from %.2f or %.2f), the rank "
                        "correlation inside the object %.3f (from %.2f): the block stages "
                        "fit %s", *figures[:2], AUTO_MIN_MODEL_NCC, AUTO_MIN_NCC, figures[2],
                        AUTO_MIN_RANK, run.similarity)
            if refitted is not None:
                # the stage now reports the NCC, which it optimised last
                run.current, ncc_before, ncc_mind, ncc_after, refit = refitted
                logger.info("global stage: for the intensity model, kept %s (NCC %.3f; the "
                            "MIND fit %.3f)", refit, ncc_after, ncc_mind)
        sim = "intensity" if refit is not None else _scored(gs)
        rep = StageReport("global", inputs.g_level, inputs.gm_level, "+".join(gs.kinds),
                          ncc_before=ncc_before, ncc_after=ncc_after, metric=metric_name(sim),
                          seconds=time.perf_counter() - t0)
        if figures is not None:
            rep.report.update(model_ncc=figures[0], ncc=figures[1], rank=figures[2],
                              similarity=run.similarity)
        if refit is not None:
            rep.report.update(intensity_refit=refit)
        run.record(self.key, {"affine": run.current.homogeneous.tolist(),
                              "similarity": run.similarity, "report": rep.to_json()}, rep)
        run.timings["global"] = rep.seconds
        logger.info("global stage: %s %.3f -> %.3f in %.1fs", rep.metric, rep.ncc_before or 0,
                    rep.ncc_after or 0, rep.seconds)
        run.stage_done(rep)
