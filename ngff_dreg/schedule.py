"""Plan the run: the schedule of levels, blocks, overlap and methods, coarse to fine.

A :class:`Schedule` is a small dataclass that round-trips through TOML or
YAML. Levels are named by NGFF level index (``0`` = finest) or by physical
spacing (a float, or a string such as ``"4um"`` / ``"4.0"``), and are resolved
separately on the fixed and the moving pyramid, so the two need not match.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ngff_dreg.errors import ScheduleError
from ngff_dreg.fitting.descriptors import AUTO, SIMILARITIES
from ngff_dreg.fitting.destripe import DESTRIPE_MODES
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.interfaces import BlockPairRegistrationMethod
from ngff_dreg.methods import make_method, method_names

__all__ = [
    "GlobalStage",
    "BlockStage",
    "Schedule",
    "LevelSpec",
    "resolve_level",
    "matching_level",
    "default_global_level",
    "check_schedule_levels",
    "CONTROL_FRACTIONS",
    "DEFAULT_SIMILARITY",
    "GLOBAL_METHODS",
    "METHODS",
]

logger = logging.getLogger(__name__)

LevelSpec = int | float | str
#: Block method names a stage may use (the registry in :mod:`ngff_dreg.methods`).
METHODS = method_names()
_UNIT_SUFFIX = re.compile(r"^\s*([0-9.eE+-]+)\s*([a-zA-Zµ]*)\s*$")
_SUFFIX_FACTORS = {"": 1.0, "nm": 1e-3, "um": 1.0, "µm": 1.0, "mm": 1e3, "m": 1e6}


GLOBAL_METHODS = ("gauss-newton", "itk")
#: Where the global stage starts: centres of mass of the intensities, of the
#: foreground (illumination-flattened), the geometric centres, or identity.
INITIALIZERS = ("moments", "foreground", "centers", "multi", "none")


@dataclass
class GlobalStage:
    """Whole-image linear alignment on one coarse level (one task).

    Attributes
    ----------
    level:
        Fixed level; ``None`` picks the coarsest level with at least
        ``min_size`` voxels along every axis.
    initializer:
        ``"moments"`` (centres of mass), ``"foreground"`` (centres of mass of
        the objects' masks, found after flattening the illumination: uneven
        lighting does not pull it), ``"centers"`` (geometric centres),
        ``"multi"`` (each of those three refined by a coarse rigid fit, the
        one the stage's similarity prefers kept) or ``"none"``.
    kinds:
        Linear stages run in order (``"translation"``, ``"rigid"``, ``"affine"``).
    method:
        ``"gauss-newton"`` (NumPy, :func:`~ngff_dreg.fitting.linear_gn.linear_fit`:
        the intensity model of the block stages, no ITK needed) or ``"itk"``
        (ITK v4 with ``metric``).
    metric:
        For ``method="itk"``: ``"mattes"`` (multimodal), ``"correlation"`` or
        ``"meansquares"``.
    iterations:
        Maximum iterations per kind and resolution.
    min_size:
        See ``level``.
    similarity:
        For ``method="gauss-newton"``: ``"intensity"`` (the intensity model),
        ``"mind"`` (MIND-SSC descriptors, :mod:`~ngff_dreg.fitting.descriptors`)
        or ``"auto"`` (aligns with MIND, then chooses what the block stages
        whose similarity is ``"auto"`` fit:
        :func:`~ngff_dreg.global_stage.choose_similarity`).
    destripe:
        ``"auto"``: divide illumination streaks out of either level where
        :func:`~ngff_dreg.fitting.destripe.destripe` finds them; ``"off"``.

    """

    level: LevelSpec | None = None
    initializer: str = "moments"
    kinds: tuple[str, ...] = ("rigid", "affine")
    method: str = "gauss-newton"
    metric: str = "mattes"
    iterations: int = 200
    min_size: int = 48
    similarity: str = "intensity"
    destripe: str = "auto"

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        if self.destripe not in DESTRIPE_MODES:
            raise ScheduleError(f"global destripe {self.destripe!r} is not one of "
                                f"{', '.join(DESTRIPE_MODES)}")
        if self.similarity not in (*SIMILARITIES, AUTO):
            raise ScheduleError(f"global similarity {self.similarity!r} is not one of "
                                f"{', '.join((*SIMILARITIES, AUTO))}")
        if self.initializer not in INITIALIZERS:
            raise ScheduleError(f"global initializer {self.initializer!r} is not one of "
                                f"{', '.join(INITIALIZERS)}")
        for k in self.kinds:
            if k not in ("translation", "rigid", "affine"):
                raise ScheduleError(f"global stage kind {k!r} is not translation, rigid or affine")
        if self.method not in GLOBAL_METHODS:
            raise ScheduleError(
                f"global method {self.method!r} is not one of {', '.join(GLOBAL_METHODS)}"
            )


@dataclass
class BlockStage:
    """Block-wise registration on one level.

    Attributes
    ----------
    level:
        Fixed level (index or physical spacing).
    block_size:
        Block shape in voxels (one value or one per axis, NumPy order); rounded
        up to whole storage chunks.
    overlap:
        Total overlap as a fraction of the block length.
    method:
        One of :data:`METHODS`.
    method_options:
        Keyword arguments for the method class.
    field_spacing_factor:
        Displacement-field grid spacing in voxels of this level.
    when_similarity:
        Run the stage only when the run's block stages fit this similarity
        (``"intensity"`` or ``"mind"``; with ``similarity = "auto"``, what the
        global stage chose). ``None``: always.

    """

    level: LevelSpec = 0
    block_size: int | tuple[int, ...] = 64
    overlap: float = 0.5
    method: str = "bspline"
    method_options: dict[str, Any] = field(default_factory=dict)
    field_spacing_factor: float = 4.0
    when_similarity: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ScheduleError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if not 0 <= float(self.overlap) < 2:
            raise ScheduleError(f"overlap must be in [0, 2), got {self.overlap}")
        if isinstance(self.block_size, Sequence):
            self.block_size = tuple(int(b) for b in self.block_size)
        if self.field_spacing_factor <= 0:
            raise ScheduleError("field_spacing_factor must be positive")
        if self.when_similarity is not None and self.when_similarity not in SIMILARITIES:
            raise ScheduleError(f"when_similarity {self.when_similarity!r} is not one of "
                                f"{', '.join(SIMILARITIES)}")

    def fits(self, chosen: str | None) -> str:
        """The similarity this stage fits; ``chosen``: the global stage's ``auto`` choice."""
        similarity = str(self.method_options.get("similarity", "intensity"))
        return (chosen or "mind") if similarity == AUTO else similarity

    def runs_with(self, chosen: str | None) -> bool:
        """Whether the stage runs, given the global stage's ``auto`` choice."""
        return self.when_similarity is None or self.fits(chosen) == self.when_similarity

    def make_method(self) -> BlockPairRegistrationMethod:
        """The block method this stage runs (from the registry in :mod:`ngff_dreg.methods`)."""
        try:
            return make_method(self.method, self.method_options)
        except (TypeError, ValueError) as exc:
            raise ScheduleError(f"bad options for method {self.method!r}: {exc}") from exc


@dataclass
class Schedule:
    """A global stage (optional) then block stages, coarse to fine."""

    global_stage: GlobalStage | None = field(default_factory=GlobalStage)
    stages: list[BlockStage] = field(default_factory=list)

    def running_stages(self, chosen: str | None) -> list[int]:
        """Indices of the block stages that run, given the global stage's ``auto`` choice.

        A stage with a ``when_similarity`` runs only when it would fit that
        similarity (:meth:`BlockStage.runs_with`); the last index writes the output.
        """
        return [i for i, st in enumerate(self.stages) if st.runs_with(chosen)]

    # -- serialisation ----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/TOML/YAML-ready)."""
        out: dict[str, Any] = {}
        if self.global_stage is not None:
            g = asdict(self.global_stage)
            g["kinds"] = list(g["kinds"])
            out["global"] = {k: v for k, v in g.items() if v is not None}
        out["stages"] = []
        for s in self.stages:
            d = {k: v for k, v in asdict(s).items() if v is not None}
            if isinstance(d["block_size"], tuple):
                d["block_size"] = list(d["block_size"])
            out["stages"].append(d)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schedule:
        """Build from :meth:`to_dict` output; unknown keys are errors."""
        try:
            g = data.get("global")
            global_stage = None if g in (None, False) else GlobalStage(**_known(GlobalStage, g))
            stages = [BlockStage(**_known(BlockStage, s)) for s in data.get("stages", [])]
        except (TypeError, AttributeError) as exc:
            raise ScheduleError(f"invalid schedule: {exc}") from exc
        return cls(global_stage=global_stage, stages=stages)

    def save(self, path: str | Path) -> None:
        """Write as TOML (``.toml``), YAML (``.yaml``/``.yml``) or JSON."""
        path = Path(path)
        data = self.to_dict()
        if path.suffix == ".toml":
            import tomli_w

            path.write_text(tomli_w.dumps(data))
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(data, sort_keys=False))
        else:
            path.write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Schedule:
        """Read a schedule file written by :meth:`save` (or by hand)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ScheduleError(f"cannot read schedule {path}: {exc}") from exc
        try:
            if path.suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            elif path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:
            raise ScheduleError(f"cannot parse schedule {path}: {exc}") from exc
        if not isinstance(data, Mapping):
            raise ScheduleError(f"schedule {path} must hold a table/mapping")
        return cls.from_dict(data)

    # -- defaults -----------------------------------------------------------
    @classmethod
    def default(cls, fixed_levels: Sequence[ImageGeometry], *, fast: bool = False,
                similarity: str | None = None) -> Schedule:
        """A schedule adapted to the fixed image's physical extent and pyramid.

        1. Global rigid then affine (Gauss-Newton) on the coarsest level with
           at least 48 voxels per axis.
        2. Two B-spline block stages (:class:`~ngff_dreg.methods.BSplineGaussNewton`)
           whose control points are spaced by a fixed fraction of the image's
           largest physical extent (:data:`CONTROL_FRACTIONS`: about 16 then
           10 mm over a human head). Deformations have an anatomical scale, so
           the same object sampled twice as finely gets the same physical
           schedule. The first stage runs on the coarsest level that still
           gives a control cell 8 voxels along the finest axis, the last on
           level 0, each with a sample lattice of about 90 samples per
           control cell (:data:`SAMPLES_PER_CELL_AXIS`: 4.5 per axis in 3D,
           9 in 2D), so the samples, not the voxels, set a block's fitting
           cost, and a 2D cell is not fitted from a fifth of a 3D cell's
           samples. On an image so large that the last stage's lattice would
           skip more than :data:`MAX_FINEST_STRIDE` voxels on level 0, that
           stage runs on the coarsest level where it still skips that many.
        3. With ``similarity="auto"`` (:data:`DEFAULT_SIMILARITY`) the global
           stage aligns MIND-SSC descriptors from the best of several starts
           and then measures how well a function of the moving intensity
           predicts the fixed one, and whether the two intensities rank alike
           inside the object (:func:`~ngff_dreg.global_stage.choose_similarity`);
           where both hold, the global affine is refitted with the intensity
           model and every block maps moving to fixed intensities piecewise
           linearly with a quadratic gain (remaps and bias fields do not bias
           the fit), and otherwise (other contrasts, uneven lighting) the
           blocks fit MIND-SSC descriptors.
           A block is refused when it does not improve held-out samples.
        4. With the intensity model only (``when_similarity="intensity"``), a
           gated refinement stage on the last stage's level at
           :data:`REFINE_SPACING` of its control spacing, whose block fits are
           kept only where they lower the held-out data term by
           :data:`REFINE_MIN_GAIN` (fine, compressive warps); left out on
           thick slices (:data:`MIN_REFINE_CELL_VOXELS`) and with ``fast``.

        The fields are stored at a fifth (last stage) or an eighth
        (intermediate) of the control spacing, so their linear interpolation
        loses little of the B-spline; the refinement keeps the last stage's.
        ``fast``: one pass per stage on a 1.5x
        sparser lattice and fewer iterations. ``similarity``: what every stage
        fits (``"intensity"`` or ``"mind"``, see
        :mod:`~ngff_dreg.fitting.descriptors`); with ``"mind"`` the global
        stage tries several starts (``initializer="multi"``). ``None``:
        :data:`DEFAULT_SIMILARITY`.
        """
        similarity = DEFAULT_SIMILARITY if similarity is None else similarity
        if similarity not in (*SIMILARITIES, AUTO):
            raise ScheduleError(f"similarity {similarity!r} is not one of "
                                f"{', '.join((*SIMILARITIES, AUTO))}")
        g_level = default_global_level(fixed_levels, 48)
        base = fixed_levels[0]
        extent = float(np.max((np.asarray(base.size) - 1) * np.asarray(base.spacing)))
        stages = [_default_bspline_stage(fixed_levels, i, extent, fast, similarity)
                  for i in range(len(CONTROL_FRACTIONS))]
        refine = _refinement(stages[-1], fixed_levels)
        if not fast and similarity != "mind" and refine is not None:
            stages.append(refine)
        initializer = "moments" if similarity == "intensity" else "multi"
        return cls(global_stage=GlobalStage(level=g_level, iterations=30, initializer=initializer,
                                            similarity=similarity), stages=stages)


#: Control-point spacings of the default block stages, as fractions of the
#: fixed image's largest physical extent.
CONTROL_FRACTIONS = (0.07, 0.045)
#: Samples per control cell and axis of the default block stages, by dimension
#: (about 90 samples per cell either way; 4.5 per axis in 2D left a texture-rich
#: micrograph's level-0 blocks 20 samples per cell, and half of them were
#: refused for not improving their held-out samples).
SAMPLES_PER_CELL_AXIS = {2: 9.0, 3: 4.5}
#: The last default block stage runs on level 0 unless its sample stride there
#: would exceed this many voxels; then on the coarsest level where it is still
#: this many or more (only images of several thousand voxels a side).
MAX_FINEST_STRIDE = 16
#: What the default schedule's stages fit: ``"auto"``, the global stage aligns
#: with MIND-SSC descriptors (which hold across contrasts and uneven
#: illumination) and the block stages then fit the intensity model where it
#: explains the fixed image (same contrast up to a remap: the most precise) and
#: MIND where it does not (T1 against T2, stains, channels, opposite lighting).
DEFAULT_SIMILARITY = "auto"
#: Bending weight of the default block stages (measured in control cells).
DEFAULT_BENDING = 0.003
#: Bending weight of the default block stages when they fit MIND-SSC
#: descriptors, one per :data:`CONTROL_FRACTIONS` stage. The MIND data term
#: keeps a large residual at the alignment, so its minimum is shallow and noisy:
#: on the suite's tuning contrasts (T1 against T2-like in 2D and 3D, a
#: non-monotone EPI remap, a DIR-like slice, opposite-side lighting in 2D and
#: 3D) p95 fell with the weight up to 30x the intensity model's, except on the
#: fine diffeomorphic DIR-like warp, which wants the finer stage lighter.
MIND_BENDING = (0.1, 0.024)


#: The default refinement stage: its control spacing as a fraction of the last
#: stage's, and the least relative drop of a block's held-out data term that
#: keeps its fit (``min_gain`` of the block method).
REFINE_SPACING = 0.7
REFINE_MIN_GAIN = 0.05
#: The refinement's control cell spans at least this many voxels along every
#: axis of its level, or the stage is left out: on thick slices (the suite's
#: 1×1×4 mm pair, 1.8 voxels per cell along z) it fitted the slices'
#: interpolation and made p95 worse (1.04 → 1.35 voxels).
MIN_REFINE_CELL_VOXELS = 3.0


def _default_bspline_stage(fixed_levels: Sequence[ImageGeometry], i: int, extent: float,
                           fast: bool, similarity: str) -> BlockStage:
    """The default schedule's B-spline stage ``i`` (of :data:`CONTROL_FRACTIONS`)."""
    base = fixed_levels[0]
    finest = i == len(CONTROL_FRACTIONS) - 1
    cps = CONTROL_FRACTIONS[i] * extent
    per_axis = SAMPLES_PER_CELL_AXIS.get(base.ndim, 4.5)
    if finest:
        # the last stage runs on level 0, where the accuracy is
        # measured: on a coarser level its precision is a fraction of
        # that level's voxel (a 2D fundus photograph: p95 2.2 px from
        # level 2, 1.0 px from level 0). Unless its sample lattice would
        # skip more than MAX_FINEST_STRIDE voxels there (an image of
        # thousands of voxels a side): reading every voxel of a level to
        # sample one in thousands costs I/O and, beyond MAX_BLOCKS
        # blocks, worker memory (the engine coarsens the blocks)
        level = _level_for(fixed_levels, cps / per_axis / MAX_FINEST_STRIDE)
    else:
        level = _level_for(fixed_levels, cps / 8.0)
    geom = fixed_levels[level]
    cps_vox = cps / float(min(geom.spacing))
    stride = max(1, round(cps_vox / per_axis * (1.5 if fast else 1.0)))
    block = _default_block(geom.shape, cps_vox)
    opts: dict[str, Any] = {
        "control_point_spacing": round(cps, 6),
        "shrink_factors": [stride] if finest or fast else [2 * stride, stride],
        "smoothing_sigmas": [0.5] if finest or fast else [1.0, 0.5],
        "iterations": 6 if fast else (8 if finest else 10),
        "bending": DEFAULT_BENDING,
        "mind_bending": MIND_BENDING[i],
        "similarity": similarity,
    }
    return BlockStage(level=level, block_size=block,
                      overlap=_default_overlap(geom.ndim, cps_vox, block), method="bspline",
                      method_options=opts,
                      field_spacing_factor=float(max(1, round(cps_vox / (5.0 if finest else 8.0)))))


def _refinement(last: BlockStage, levels: Sequence[ImageGeometry]) -> BlockStage | None:
    """The default's gated refinement stage after ``last`` (intensity model only).

    On ``last``'s level, at :data:`REFINE_SPACING` times its control spacing
    and the same samples per control cell; a block's fit is kept only where it
    lowers the held-out data term by :data:`REFINE_MIN_GAIN`, so the finer grid
    adds detail where the data carry it (fine, compressive warps) and leaves
    the rest as the stages before found it. ``None`` (no such stage) when its
    control cell would span fewer than :data:`MIN_REFINE_CELL_VOXELS` voxels
    along an axis (thick slices). Its field keeps ``last``'s spacing
    (a fifth of a control cell would make the inverse on level 0 take longer
    than the stage's fits, for the same accuracy). MIND fits are left out: their
    held-out gain does not tell real detail from a fit of structure the two
    images do not share.
    """
    geom = levels[int(last.level)]
    cps = float(last.method_options["control_point_spacing"]) * REFINE_SPACING
    if cps / float(max(geom.spacing)) < MIN_REFINE_CELL_VOXELS:
        return None
    cps_vox = cps / float(min(geom.spacing))
    stride = max(1, round(cps_vox / SAMPLES_PER_CELL_AXIS.get(geom.ndim, 4.5)))
    opts = {**last.method_options, "control_point_spacing": round(cps, 6),
            "shrink_factors": [stride], "smoothing_sigmas": [0.5], "min_gain": REFINE_MIN_GAIN}
    block = _default_block(geom.shape, cps_vox)
    return BlockStage(level=last.level, block_size=block,
                      overlap=_default_overlap(geom.ndim, cps_vox, block), method="bspline",
                      method_options=opts,
                      field_spacing_factor=last.field_spacing_factor,
                      when_similarity="intensity")


def _level_for(levels: Sequence[ImageGeometry], spacing: float) -> int:
    """Coarsest level whose finest spacing is at most ``spacing`` (else level 0)."""
    best = 0
    for i, g in enumerate(levels):
        if float(min(g.spacing)) <= spacing * 1.05:
            best = i
    return best


def _known(klass: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(klass)}
    unknown = set(data) - names
    if unknown:
        raise ScheduleError(f"unknown key(s) {sorted(unknown)} for {klass.__name__}")
    return dict(data)


def _default_block(shape: Sequence[int], cps_vox: float = 0.0) -> int:
    """About 2-3 blocks per axis on small levels, 48–128 voxels a side (3D).

    Big blocks keep the per-block overhead (reads, resampling, reduction) low
    and leave few thin edge blocks; the B-spline grid inside a block, not the
    block size, sets how fine the deformation can be. A block spans at least
    four control cells of ``cps_vox`` voxels where the cap allows: 128 voxels a
    side in 3D, 512 in 2D (a worker's memory is set by the block).
    """
    edge = float(np.prod(shape)) ** (1.0 / len(shape))
    cap = 128 if len(shape) >= 3 else 512
    wanted = max(16 * round(edge / 2 / 16), 16 * math.ceil(4.0 * cps_vox / 16))
    return int(min(cap, max(48, wanted)))


def _default_overlap(ndim: int, cps_vox: float, block: int) -> float:
    """Three control cells of overlap in 3D (within 25-50 %); half a block in 2D.

    A padded block holds ``(1 + 2 overlap)^ndim`` block volumes, so overlap is
    dear in 3D and cheap in 2D, where the wider margin measurably helps (a 2D
    fundus photograph: p95 1.41 px at 37 %, 1.02 px at 50 %).
    """
    if ndim < 3:
        return 0.5
    return round(float(min(0.5, max(0.25, 3.0 * cps_vox / block))), 2)


def default_global_level(levels: Sequence[ImageGeometry], min_size: int = 48) -> int:
    """Coarsest level whose every axis has at least ``min_size`` voxels (else 0)."""
    best = 0
    for i, g in enumerate(levels):
        if min(g.shape) >= min_size:
            best = i
    return best


def _spacing_value(spec: str | float) -> float:
    if isinstance(spec, (int, float)):
        return float(spec)
    m = _UNIT_SUFFIX.match(spec)
    if not m:
        raise ScheduleError(f"level {spec!r} is neither an index nor a spacing like '4um'")
    value, suffix = float(m.group(1)), m.group(2)
    if suffix not in _SUFFIX_FACTORS:
        raise ScheduleError(f"unknown unit suffix {suffix!r} in level {spec!r}")
    return value * _SUFFIX_FACTORS[suffix]


def resolve_level(levels: Sequence[ImageGeometry], spec: LevelSpec, *, what: str = "image") -> int:
    """Index of the level named by ``spec``.

    An ``int`` is an NGFF level index; a float or a string is a physical
    spacing (in the image's unit; a suffix ``um``/``mm``/``nm`` is read as
    micrometres-based) and selects the level whose largest spacing is closest
    to it (in log scale).
    """
    if isinstance(spec, bool):
        raise ScheduleError(f"level {spec!r} is not valid")
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        idx = int(spec)
        if not 0 <= idx < len(levels):
            from ngff_dreg.errors import LevelNotFoundError

            raise LevelNotFoundError(f"{what} has no level {idx} (it has {len(levels)})")
        return idx
    target = _spacing_value(spec)
    if not target > 0:
        raise ScheduleError(f"level spacing must be positive, got {spec!r}")
    scores = [abs(math.log(max(g.spacing) / target)) for g in levels]
    return int(np.argmin(scores))


def matching_level(levels: Sequence[ImageGeometry], spacing: Sequence[float]) -> int:
    """Level of another pyramid closest to ``spacing`` (no coarser than needed)."""
    target = float(np.max(spacing))
    scores = []
    for g in levels:
        s = float(np.max(g.spacing))
        # Prefer the finest level that is not much coarser than the target.
        penalty = 0.0 if s <= target * 1.05 else 1.0
        scores.append((penalty, abs(math.log(s / target))))
    return min(range(len(levels)), key=lambda i: scores[i])


def check_schedule_levels(
    schedule: Schedule, fixed_levels: Sequence[ImageGeometry], fixed_url: str
) -> list[int]:
    """Resolve every block stage's level up front (before any output is written).

    Parameters
    ----------
    schedule:
        The schedule.
    fixed_levels:
        Geometries of the fixed pyramid, finest first.
    fixed_url:
        For the error message.

    Returns
    -------
    list of int
        The fixed level index of each block stage.

    Raises
    ------
    LevelNotFoundError, ScheduleError
        A stage names a level the fixed image does not have.

    """
    return [
        resolve_level(fixed_levels, stage.level, what=f"fixed image {fixed_url}")
        for stage in schedule.stages
    ]
