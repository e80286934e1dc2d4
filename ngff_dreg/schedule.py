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
    "METHODS",
]

logger = logging.getLogger(__name__)

LevelSpec = int | float | str
#: Block method names a stage may use (the registry in :mod:`ngff_dreg.methods`).
METHODS = method_names()
_UNIT_SUFFIX = re.compile(r"^\s*([0-9.eE+-]+)\s*([a-zA-Zµ]*)\s*$")
_SUFFIX_FACTORS = {"": 1.0, "nm": 1e-3, "um": 1.0, "µm": 1.0, "mm": 1e3, "m": 1e6}


@dataclass
class GlobalStage:
    """Whole-image linear alignment on one coarse level (one task).

    Attributes
    ----------
    level:
        Fixed level; ``None`` picks the coarsest level with at least
        ``min_size`` voxels along every axis.
    initializer:
        ``"moments"`` (centres of mass), ``"centers"`` (geometric centres) or
        ``"none"``.
    kinds:
        Linear stages run in order (``"translation"``, ``"rigid"``, ``"affine"``).
    metric:
        ``"mattes"`` (multimodal), ``"correlation"`` or ``"meansquares"``.
    iterations:
        Maximum iterations per stage and resolution.
    min_size:
        See ``level``.

    """

    level: LevelSpec | None = None
    initializer: str = "moments"
    kinds: tuple[str, ...] = ("rigid", "affine")
    metric: str = "mattes"
    iterations: int = 200
    min_size: int = 48

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        if self.initializer not in ("moments", "centers", "none"):
            raise ScheduleError(
                f"global initializer {self.initializer!r} is not one of moments, centers, none"
            )
        for k in self.kinds:
            if k not in ("translation", "rigid", "affine"):
                raise ScheduleError(f"global stage kind {k!r} is not translation, rigid or affine")


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

    """

    level: LevelSpec = 0
    block_size: int | tuple[int, ...] = 64
    overlap: float = 0.5
    method: str = "bspline"
    method_options: dict[str, Any] = field(default_factory=dict)
    field_spacing_factor: float = 4.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ScheduleError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        if not 0 <= float(self.overlap) < 2:
            raise ScheduleError(f"overlap must be in [0, 2), got {self.overlap}")
        if isinstance(self.block_size, Sequence):
            self.block_size = tuple(int(b) for b in self.block_size)
        if self.field_spacing_factor <= 0:
            raise ScheduleError("field_spacing_factor must be positive")

    def make_method(self) -> BlockPairRegistrationMethod:
        """The block method this stage runs (from the registry in :mod:`ngff_dreg.methods`)."""
        try:
            return make_method(self.method, self.method_options)
        except TypeError as exc:
            raise ScheduleError(f"bad options for method {self.method!r}: {exc}") from exc


@dataclass
class Schedule:
    """A global stage (optional) then block stages, coarse to fine."""

    global_stage: GlobalStage | None = field(default_factory=GlobalStage)
    stages: list[BlockStage] = field(default_factory=list)

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
            d = asdict(s)
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
    def default(cls, fixed_levels: Sequence[ImageGeometry], *, fast: bool = False) -> Schedule:
        """A schedule adapted to the fixed pyramid's depth and size.

        Global rigid+affine on the coarsest level with ≥ 48 voxels per axis,
        then B-spline blocks on up to two finer levels ending at level 0
        (``fast``: the finest block level only, coarser grid, fewer iterations).

        The coarser block level carries most of the deformation: control
        points every 12 of its voxels, two in-block resolutions and a light
        bending penalty. The finest level refines it: control points every 16
        voxels (elastix's default final grid), one resolution, a stronger
        bending penalty. Every block checks its metric on fresh samples and is
        refused (filled from its neighbours) when the fit did not improve it.
        """
        g_level = default_global_level(fixed_levels, 48)
        finer = list(range(g_level - 1, -1, -1))
        block_levels = finer[-2:] if finer else [0]
        if fast:
            block_levels = block_levels[-1:]
        stages = []
        for i, lvl in enumerate(block_levels):
            finest = i == len(block_levels) - 1
            geom = fixed_levels[lvl]
            spacing = float(max(geom.spacing))
            opts: dict[str, Any] = {"ridge": 0.01, "validation_samples": 10000, "iterations": 20}
            if finest and len(block_levels) > 1:
                opts.update(
                    control_point_spacing=16.0 * spacing,
                    shrink_factors=[1],
                    smoothing_sigmas=[0.0],
                    bending=0.1,
                )
            else:
                cps = (16.0 if fast else 12.0) * spacing
                opts.update(control_point_spacing=cps, bending=0.01)
            stages.append(
                BlockStage(
                    level=lvl,
                    block_size=_default_block(geom.shape),
                    overlap=0.5,
                    method="bspline",
                    method_options=opts,
                    field_spacing_factor=4.0 if finest else 2.0,
                )
            )
        if fast:
            stages[0].method_options.update(iterations=15)
        return cls(global_stage=GlobalStage(level=g_level), stages=stages)


def _known(klass: type, data: Mapping[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(klass)}
    unknown = set(data) - names
    if unknown:
        raise ScheduleError(f"unknown key(s) {sorted(unknown)} for {klass.__name__}")
    return dict(data)


def _default_block(shape: Sequence[int]) -> int:
    """About 2-3 blocks per axis on small levels, 48–128 voxels a side.

    Big blocks keep the per-block overhead (reads, resampling, reduction) low
    and leave few thin edge blocks; the B-spline grid inside a block, not the
    block size, sets how fine the deformation can be.
    """
    edge = float(np.prod(shape)) ** (1.0 / len(shape))
    return int(min(128, max(48, 16 * round(edge / 2 / 16))))


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
