"""Parse OME-Zarr (NGFF 0.4, 0.5, 0.6) multiscale image metadata (no I/O).

The entry point is :func:`parse_multiscale`, which takes the attributes of a
multiscale group (``.zattrs`` for Zarr v2, ``zarr.json["attributes"]`` for
Zarr v3) and returns a :class:`Multiscale`.

Geometry model
--------------
Each level maps an array index ``i`` (NumPy order, all axes) to the
multiscale's physical coordinate system as::

    physical = M @ (s_ds * i + t_ds) + b

where ``s_ds``/``t_ds`` are the dataset's scale/translation and ``M``, ``b``
the composed multiscales-level ``coordinateTransformations`` (diagonal for
0.4/0.5; any ``scale``/``translation``/``rotation``/``affine`` chain in 0.6).
The spatial block of ``M`` is factored as ``R @ diag(s_ms)`` with unit-norm
columns, so for the spatial axes

* spacing   = ``s_ms * s_ds``,
* origin    = ``R @ (s_ms * t_ds) + b`` (``= s_ms * t_ds + t_ms`` when ``R = I``),
* direction = ``R`` (reversed to ITK order).

Anatomical orientation (RFC-4)
------------------------------
When no rotation/affine is given but every spatial axis carries an RFC-4
``orientation`` label (``{"type": "anatomical", "value": "left-to-right"}``),
the labels become an axis permutation/flip relative to **LPS**, ITK's (and
DICOM's) patient space: physical +x points to the patient's Left, +y to
Posterior, +z to Superior. An axis labelled ``left-to-right`` (index grows
toward the right) therefore gets direction ``-x``. The whole intrinsic space is
mapped through that matrix, so origins move with it. Pass
``use_orientation=False`` to ignore the labels.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import (
    InvalidMetadataError,
    LevelNotFoundError,
    NgffDregError,
    UnsupportedVersionError,
)
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.ngff._checks import as_dict, as_list, check_relative_path, err, opt_str
from ngff_dreg.ngff.affine_maps import ParamLoader
from ngff_dreg.ngff.coordinate_systems import SpatialBlock, chain, routes, spatial_block
from ngff_dreg.ngff.transforms import check_ref, compose, flatten, has_field_transform, ref_name

__all__ = [
    "SUPPORTED_VERSIONS",
    "Axis",
    "Level",
    "Multiscale",
    "parse_multiscale",
    "detect_version",
    "check_relative_path",
    "LENGTH_UNITS",
    "normalize_unit",
    "unit_factor",
    "orientation_matrix",
    "has_field_transform",
    "image_registrations",
]

logger = logging.getLogger(__name__)

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.4", "0.5", "0.6")

FloatArray = npt.NDArray[np.float64]

# ---------------------------------------------------------------------------
# Units
# ---------------------------------------------------------------------------

# Length of one unit in meters, keyed by the UDUNITS-2 names NGFF lists.
LENGTH_UNITS: dict[str, float] = {
    "yoctometer": 1e-24,
    "zeptometer": 1e-21,
    "attometer": 1e-18,
    "femtometer": 1e-15,
    "picometer": 1e-12,
    "angstrom": 1e-10,
    "nanometer": 1e-9,
    "micrometer": 1e-6,
    "millimeter": 1e-3,
    "centimeter": 1e-2,
    "decimeter": 1e-1,
    "meter": 1.0,
    "hectometer": 1e2,
    "kilometer": 1e3,
    "megameter": 1e6,
    "gigameter": 1e9,
    "terameter": 1e12,
    "petameter": 1e15,
    "exameter": 1e18,
    "zettameter": 1e21,
    "yottameter": 1e24,
    "inch": 0.0254,
    "foot": 0.3048,
    "yard": 0.9144,
    "mile": 1609.344,
    "parsec": 3.0856775814913673e16,
}

# Common spellings that are not NGFF names but that users type.
_ALIASES: dict[str, str] = {
    "um": "micrometer",
    "µm": "micrometer",
    "μm": "micrometer",
    "micron": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "km": "kilometer",
    "pm": "picometer",
    "metre": "meter",
    "micrometre": "micrometer",
    "millimetre": "millimeter",
    "nanometre": "nanometer",
    "centimetre": "centimeter",
}


def normalize_unit(unit: str) -> str | None:
    """Canonical NGFF name of a length unit, or ``None`` if it is not a known length.

    Parameters
    ----------
    unit:
        A UDUNITS-2 name (``"micrometer"``), a plural, or a common alias (``"um"``).

    Returns
    -------
    str or None
        The NGFF spelling, or ``None`` when ``unit`` is not a known length.

    """
    key = unit.strip().lower()
    if key in LENGTH_UNITS:
        return key
    if key.endswith("s") and (key[:-1] in LENGTH_UNITS or key[:-1] in _ALIASES):
        key = key[:-1]
        return key if key in LENGTH_UNITS else _ALIASES[key]
    if key.endswith("re") and key[:-2] + "er" in LENGTH_UNITS:
        return key[:-2] + "er"
    return _ALIASES.get(key)


def unit_factor(from_unit: str, to_unit: str) -> float:
    """Multiplier converting a length in ``from_unit`` to ``to_unit``.

    Raises
    ------
    ValueError
        If either unit is not a known length unit.

    """
    a = normalize_unit(from_unit)
    b = normalize_unit(to_unit)
    if a is None:
        raise ValueError(f"unknown length unit {from_unit!r}")
    if b is None:
        raise ValueError(f"unknown length unit {to_unit!r}")
    return LENGTH_UNITS[a] / LENGTH_UNITS[b]


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """One axis of a multiscale image (NGFF ``axes`` entry)."""

    name: str
    type: str | None = None
    unit: str | None = None
    orientation: str | None = None

    @property
    def is_spatial(self) -> bool:
        """True for axes of type ``space``."""
        return self.type == "space"


@dataclass(frozen=True)
class Level:
    """One resolution level with its composed (dataset + multiscales) transform.

    Attributes
    ----------
    path:
        Array path relative to the multiscale group.
    scale:
        Per-axis voxel size (NumPy order, all axes); for spatial axes it is the
        ITK spacing reversed.
    translation:
        Per-axis physical position of voxel 0 (NumPy order, all axes); for
        spatial axes it is the ITK origin reversed.

    """

    path: str
    scale: tuple[float, ...]
    translation: tuple[float, ...]


@dataclass(frozen=True)
class Multiscale:
    """A parsed multiscale image description.

    Attributes
    ----------
    version:
        NGFF version (``"0.4"``, ``"0.5"`` or ``"0.6"``).
    name:
        The multiscale's ``name`` (or ``None``).
    axes:
        All axes, NumPy order.
    levels:
        Levels from finest to coarsest.
    direction:
        Spatial direction matrix, ITK order.
    unit:
        Common unit of the spatial axes (or ``None`` when unknown).
    source:
        URL or label of the group, used in error messages.
    coordinate_system:
        0.6 only: the coordinate system physical points are expressed in.
    orientation:
        RFC-4 anatomical labels of the spatial axes, if given.
    intrinsic_system:
        0.6 only: the name of the intrinsic coordinate system (the datasets' output).
    world_from_intrinsic:
        0.6 only: the ``(n+1) x (n+1)`` homogeneous matrix (NumPy axis order,
        all axes) from intrinsic coordinates to the physical points ITK sees
        (after multiscales-level transforms, orientation labels and unit
        conversion).

    """

    version: str
    name: str | None
    axes: tuple[Axis, ...]
    levels: tuple[Level, ...]
    direction: tuple[tuple[float, ...], ...]
    unit: str | None = None
    source: str = "<memory>"
    coordinate_system: str | None = None
    orientation: tuple[str, ...] | None = field(default=None)
    intrinsic_system: str | None = None
    world_from_intrinsic: tuple[tuple[float, ...], ...] | None = field(default=None, repr=False)

    # -- axes ------------------------------------------------------------
    @property
    def spatial_indices(self) -> tuple[int, ...]:
        """Positions of the spatial axes among all axes (NumPy order)."""
        return tuple(i for i, a in enumerate(self.axes) if a.is_spatial)

    @property
    def spatial_axes(self) -> tuple[Axis, ...]:
        """The spatial axes, NumPy order."""
        return tuple(self.axes[i] for i in self.spatial_indices)

    @property
    def non_spatial_axes(self) -> tuple[Axis, ...]:
        """Time, channel and custom axes."""
        return tuple(a for a in self.axes if not a.is_spatial)

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions."""
        return len(self.spatial_indices)

    @property
    def direction_matrix(self) -> FloatArray:
        """Direction as an array (ITK order)."""
        return np.asarray(self.direction, dtype=np.float64)

    def axis_index(self, axis_type: str) -> int | None:
        """Index of the first axis of ``axis_type`` (``"time"``, ``"channel"``), or ``None``."""
        for i, a in enumerate(self.axes):
            if a.type == axis_type:
                return i
        return None

    # -- levels ----------------------------------------------------------
    def level_index(self, level: int | str) -> int:
        """Index of a level given by position (negative allowed) or by path.

        Raises
        ------
        LevelNotFoundError
            If no such level exists.

        """
        n = len(self.levels)
        if isinstance(level, (int, np.integer)) and not isinstance(level, bool):
            idx = int(level)
            if -n <= idx < n:
                return idx % n
            raise LevelNotFoundError(
                f"{self.source}: level {idx} out of range; the image has {n} level(s) "
                f"(paths {[lv.path for lv in self.levels]})"
            )
        if isinstance(level, str):
            for i, lv in enumerate(self.levels):
                if lv.path == level:
                    return i
            if level.lstrip("-").isdigit():
                return self.level_index(int(level))
            raise LevelNotFoundError(
                f"{self.source}: no level with path {level!r}; "
                f"available: {[lv.path for lv in self.levels]}"
            )
        raise LevelNotFoundError(f"{self.source}: invalid level {level!r}")

    def spacing(self, level: int | str = 0) -> tuple[float, ...]:
        """Spatial spacing of a level, ITK order."""
        lv = self.levels[self.level_index(level)]
        return tuple(lv.scale[i] for i in reversed(self.spatial_indices))

    def origin(self, level: int | str = 0) -> tuple[float, ...]:
        """Physical position of a level's voxel 0, ITK order."""
        lv = self.levels[self.level_index(level)]
        return tuple(lv.translation[i] for i in reversed(self.spatial_indices))

    def geometry(self, level: int | str, shape: Sequence[int]) -> ImageGeometry:
        """:class:`ImageGeometry` of a level.

        Parameters
        ----------
        level:
            Level index or path.
        shape:
            The level array's shape: either all axes or only the spatial ones.

        """
        shape = tuple(int(s) for s in shape)
        if len(shape) == len(self.axes):
            shape = tuple(shape[i] for i in self.spatial_indices)
        elif len(shape) != self.ndim:
            raise InvalidMetadataError(
                f"{self.source}: level {level!r} array has {len(shape)} dimensions but "
                f"'axes' lists {len(self.axes)}"
            )
        return ImageGeometry(
            shape=shape,
            spacing=self.spacing(level),
            origin=self.origin(level),
            direction=self.direction,
            unit=self.unit,
        )

    # -- units -----------------------------------------------------------
    def to_unit(self, unit: str) -> Multiscale:
        """The same description with spatial lengths expressed in ``unit``.

        When the image declares no unit, a warning is logged and its values
        are taken to be in ``unit`` already.

        Raises
        ------
        InvalidMetadataError
            If ``unit`` or the image's unit is not a known length unit.

        """
        target = normalize_unit(unit)
        if target is None:
            raise InvalidMetadataError(
                f"{self.source}: requested unit {unit!r} is not a known length unit"
            )
        if self.unit is None:
            logger.warning(
                "%s: no spatial unit in 'axes'; assuming values are in %s", self.source, target
            )
            factor = 1.0
        else:
            current = normalize_unit(self.unit)
            if current is None:
                raise InvalidMetadataError(
                    f"{self.source}: metadata key 'axes[].unit' = {self.unit!r} is not a "
                    f"known length unit; cannot convert to {target!r}"
                )
            factor = LENGTH_UNITS[current] / LENGTH_UNITS[target]
        sp = set(self.spatial_indices)
        levels = tuple(
            Level(
                lv.path,
                tuple(v * factor if i in sp else v for i, v in enumerate(lv.scale)),
                tuple(v * factor if i in sp else v for i, v in enumerate(lv.translation)),
            )
            for lv in self.levels
        )
        axes = tuple(replace(a, unit=target) if a.is_spatial else a for a in self.axes)
        return replace(self, levels=levels, axes=axes, unit=target)


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Version and container
# ---------------------------------------------------------------------------


def _normalize_version(raw: Any, url: str, key: str) -> str:
    if raw is None:
        raise UnsupportedVersionError(
            f"{url}: metadata key '{key}' is missing; ngff-dreg reads NGFF "
            f"{', '.join(SUPPORTED_VERSIONS)}"
        )
    text = str(raw).strip()
    if text in ("0.4", "0.5", "0.6"):
        return text
    if re.fullmatch(r"0\.6(\.\d+)?([.-]?(rc|dev|a|b)\d*)?", text):
        return "0.6"
    raise UnsupportedVersionError(
        f"{url}: metadata key '{key}' = {raw!r} is not a supported NGFF version "
        f"(supported: {', '.join(SUPPORTED_VERSIONS)})"
    )


def detect_version(attrs: Any, url: str = "<memory>") -> tuple[str, list[Any], str]:
    """Find the NGFF version and the ``multiscales`` list in group attributes.

    Returns
    -------
    tuple
        ``(version, multiscales, key_prefix)`` where ``key_prefix`` is
        ``"multiscales"`` (0.4) or ``"ome.multiscales"`` (0.5/0.6).

    Raises
    ------
    InvalidMetadataError
        When the attributes hold no multiscales.
    UnsupportedVersionError
        When the version is missing or not supported.

    """
    attrs = as_dict(attrs, url, "attributes")
    if "ome" in attrs:
        ome = as_dict(attrs["ome"], url, "ome")
        if "multiscales" not in ome:
            raise err(url, "ome.multiscales", "missing: the group is not a multiscale image")
        version = _normalize_version(ome.get("version"), url, "ome.version")
        if version == "0.4":
            raise UnsupportedVersionError(
                f"{url}: metadata key 'ome.version' = '0.4' inside 'ome': 0.4 metadata "
                "lives in top-level 'multiscales' (Zarr v2)"
            )
        return version, as_list(ome["multiscales"], url, "ome.multiscales"), "ome.multiscales"
    if "multiscales" in attrs:
        ms = as_list(attrs["multiscales"], url, "multiscales")
        first = as_dict(ms[0], url, "multiscales[0]")
        version = _normalize_version(first.get("version"), url, "multiscales[0].version")
        return version, ms, "multiscales"
    raise err(url, "multiscales", "missing (neither 'multiscales' nor 'ome.multiscales'): "
               "the group is not an OME-Zarr multiscale image")


# ---------------------------------------------------------------------------
# Axes
# ---------------------------------------------------------------------------

# RFC-4 orientation value -> (ITK physical axis in LPS, sign).
_LPS: dict[str, tuple[int, float]] = {
    "right-to-left": (0, 1.0),
    "left-to-right": (0, -1.0),
    "anterior-to-posterior": (1, 1.0),
    "posterior-to-anterior": (1, -1.0),
    "inferior-to-superior": (2, 1.0),
    "superior-to-inferior": (2, -1.0),
}


def orientation_matrix(labels: Sequence[str]) -> FloatArray | None:
    """ITK direction matrix (relative to LPS) for RFC-4 labels of the spatial axes.

    Parameters
    ----------
    labels:
        One RFC-4 ``orientation.value`` per spatial axis, NumPy order
        (e.g. ``["inferior-to-superior", "posterior-to-anterior", "left-to-right"]``).

    Returns
    -------
    ndarray or None
        ``ndim x ndim`` direction (ITK order), or ``None`` when the labels are
        not a permutation of distinct LPS axes that fits ``ndim``.

    """
    n = len(labels)
    direction = np.zeros((n, n))
    used = set()
    for j_np, label in enumerate(labels):
        hit = _LPS.get(str(label).lower())
        if hit is None:
            return None
        phys, sign = hit
        if phys >= n or phys in used:
            return None
        used.add(phys)
        direction[phys, n - 1 - j_np] = sign
    return direction


def _parse_axes(value: Any, url: str, key: str, *, check_space: bool = True
                ) -> tuple[Axis, ...]:
    items = as_list(value, url, key)
    if not 2 <= len(items) <= 5:
        raise err(url, key, f"must list 2 to 5 axes, got {len(items)}")
    axes = []
    for i, item in enumerate(items):
        k = f"{key}[{i}]"
        name: str | None
        typ: str | None
        unit: str | None
        orient: str | None
        if isinstance(item, str):  # pre-0.4 style; tolerated for spatial names
            name, typ, unit, orient = item, None, None, None
            typ = "space" if item in ("x", "y", "z") else "time" if item == "t" else "channel"
        else:
            d = as_dict(item, url, k)
            name = opt_str(d.get("name"), url, f"{k}.name")
            if not name:
                raise err(url, f"{k}.name", "missing or empty")
            typ = opt_str(d.get("type"), url, f"{k}.type")
            unit = opt_str(d.get("unit"), url, f"{k}.unit")
            orient = None
            o = d.get("orientation")
            if isinstance(o, Mapping):
                orient = opt_str(o.get("value"), url, f"{k}.orientation.value")
            elif o is not None:
                orient = opt_str(o, url, f"{k}.orientation")
        axes.append(Axis(name=str(name), type=typ, unit=unit, orientation=orient))
    names = [a.name for a in axes]
    if len(set(names)) != len(names):
        raise err(url, key, f"axis names must be unique, got {names}")
    n_space = sum(a.is_spatial for a in axes)
    if check_space and not 2 <= n_space <= 3:
        raise err(url, key, f"must have 2 or 3 axes of type 'space', got {n_space}")
    return tuple(axes)


def _common_unit(axes: Sequence[Axis], url: str, key: str) -> tuple[str | None, dict[int, float]]:
    """Common spatial unit and per-axis factors converting each axis to it."""
    spatial = [(i, a) for i, a in enumerate(axes) if a.is_spatial]
    units = [a.unit for _, a in spatial]
    if all(u is None for u in units):
        logger.warning("%s: no unit on the spatial axes ('%s'); lengths are unitless", url, key)
        return None, {}
    if any(u is None for u in units):
        given = next(u for u in units if u is not None)
        logger.warning(
            "%s: some spatial axes in '%s' have no unit; assuming %s", url, key, given
        )
        units = [given if u is None else u for u in units]
    norm = [normalize_unit(u) for u in units if u is not None]
    if any(n is None for n in norm):
        if len(set(units)) == 1:
            logger.warning("%s: spatial unit %r in '%s' is not a known length", url, units[0], key)
            return units[0], {}
        raise err(url, f"{key}[].unit", f"mixed units {units} include an unknown length unit")
    target = norm[-1]
    assert target is not None
    factors = {}
    for (i, _), n in zip(spatial, norm):
        assert n is not None
        if n != target:
            factors[i] = LENGTH_UNITS[n] / LENGTH_UNITS[target]
    if factors:
        logger.info("%s: spatial axes use mixed units %s; converting to %s", url, units, target)
    return target, factors


# ---------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------


def image_registrations(attrs: Any) -> dict[str, Mapping[str, Any]]:
    """Registrations stored inside a 0.6 image, by output coordinate-system name.

    These are the entries of ``ome.multiscales[0].coordinateTransformations``
    that hold a displacement field (:func:`has_field_transform`). Anything else,
    including other versions, gives ``{}``.
    """
    try:
        cts = attrs["ome"]["multiscales"][0].get("coordinateTransformations") or []
    except (KeyError, IndexError, TypeError, AttributeError):
        return {}
    if not isinstance(cts, list):
        return {}
    out = {}
    for c in cts:
        if isinstance(c, Mapping) and has_field_transform(c):
            name = ref_name(c.get("output"))[0]
            if name is not None:
                out[name] = c
    return out


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def parse_multiscale(
    attrs: Any,
    *,
    url: str = "<memory>",
    name: str | None = None,
    coordinate_system: str | None = None,
    use_orientation: bool = True,
    load_array: ParamLoader | None = None,
) -> Multiscale:
    """Parse the attributes of an OME-Zarr multiscale group.

    Parameters
    ----------
    attrs:
        The group's attributes: the ``.zattrs`` mapping (0.4) or
        ``zarr.json["attributes"]`` (0.5/0.6).
    url:
        Where the attributes came from, for messages (credentials must have
        been redacted already).
    name:
        Select the multiscale with this ``name``; the first one by default.
    coordinate_system:
        0.6 only: express physical points in this named coordinate system
        (reached, if need be, backwards through a transform into the
        intrinsic system that has a closed-form inverse). By default the
        chain of multiscales-level transforms starting at the intrinsic
        system is followed to its end.
    use_orientation:
        Turn RFC-4 anatomical ``orientation`` labels into a direction matrix
        (relative to LPS) when no rotation/affine is given.
    load_array:
        0.6 only: reads ``affine``/``rotation`` parameters stored in an array
        (``load_array(path, key)``, ``path`` relative to the group and checked
        to stay inside the store). Without it such a transform on the chain is
        an error.

    Returns
    -------
    Multiscale
        The parsed description.

    Raises
    ------
    InvalidMetadataError, UnsupportedVersionError, PathEscapeError
        For metadata that is missing, unsupported or inconsistent. Only
        :class:`~ngff_dreg.errors.NgffDregError` subclasses are raised.

    """
    try:
        return _parse(attrs, url, name, coordinate_system, use_orientation, load_array)
    except NgffDregError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError,
            np.linalg.LinAlgError) as exc:
        raise InvalidMetadataError(f"{url}: malformed multiscales metadata: {exc}") from exc


def _select(attrs: Any, url: str, name: str | None) -> tuple[str, Mapping[str, Any], str]:
    """``(version, multiscale, key)`` of the multiscale called ``name`` (the first by default)."""
    version, multiscales, prefix = detect_version(attrs, url)
    index = 0
    if name is not None:
        names = [m.get("name") if isinstance(m, Mapping) else None for m in multiscales]
        if name not in names:
            raise err(url, f"{prefix}[].name", f"no multiscale named {name!r}; found {names}")
        index = names.index(name)
    key = f"{prefix}[{index}]"
    ms = as_dict(multiscales[index], url, key)
    if version == "0.4" and ms.get("version") not in (None, "0.4"):
        _normalize_version(ms.get("version"), url, f"{key}.version")
    return version, ms, key


def _dataset_transform(
    ds: Mapping[str, Any], n: int, spatial: Sequence[int], url: str, key: str, version: str
) -> tuple[FloatArray, FloatArray]:
    """Scale and translation of one dataset.

    0.4/0.5: ``[scale]`` or ``[scale, translation]``. 0.6: one ``scale``,
    ``identity`` or ``sequence`` of a scale then a translation.
    """
    ct_key = f"{key}.coordinateTransformations"
    cts = as_list(ds.get("coordinateTransformations"), url, ct_key)
    if version == "0.6":
        if len(cts) != 1:
            raise err(url, ct_key, f"must hold exactly one transform (a scale, an identity or "
                      f"a sequence of a scale and a translation), got {len(cts)}")
        first = as_dict(cts[0], url, f"{ct_key}[0]")
        allowed: tuple[tuple[str, ...], ...] = (("identity",), ("scale",))
        if first.get("type") == "sequence":
            allowed = (("scale",), ("scale", "translation"))
            items = as_list(first.get("transformations"), url, f"{ct_key}[0].transformations")
            types = tuple(as_dict(t, url, f"{ct_key}[0].transformations").get("type")
                          for t in items)
        else:
            types = (first.get("type"),)
    else:
        allowed = (("scale",), ("scale", "translation"))
        types = tuple(as_dict(t, url, f"{ct_key}[{i}]").get("type") for i, t in enumerate(cts))
    if types not in allowed:
        raise err(url, ct_key, f"must be {' or '.join(map(list.__repr__, map(list, allowed)))}"
                  f" (exactly one 'scale', then an optional 'translation'), got {list(types)}")
    h = compose(flatten(cts, url, ct_key), n, spatial, url, linear_ok=False)
    return np.diag(h)[:n].copy(), h[:n, n].copy()


def _dataset_output(ds: Any, url: str, key: str) -> str | None:
    """The 0.6 intrinsic system a dataset maps to, its ``input``/``output`` checked.

    ``input`` names the dataset's own array by ``path`` and ``output`` the
    intrinsic system by ``name``, as objects or (0.6.dev1-dev3) as plain
    strings holding that path and that name. An input path other than the
    dataset's is logged; the dataset's ``path`` is the one read, as the spec
    asks of readers.
    """
    d = as_dict(ds, url, key)
    cts = d.get("coordinateTransformations")
    if not isinstance(cts, list) or not cts or not isinstance(cts[0], Mapping):
        return None
    t = cts[0]
    k = f"{key}.coordinateTransformations[0]"
    if "input" in t:
        _, inp = check_ref(t["input"], url, f"{k}.input", string="path")
        if inp is None:
            raise err(url, f"{k}.input", "must name the dataset's array by 'path', got "
                      f"{t['input']!r}")
        own = d.get("path")
        if isinstance(own, str) and inp != check_relative_path(own, url, f"{key}.path"):
            # the spec: readers SHOULD treat the dataset's path as the input's
            logger.warning("%s: '%s' names array %r, not the dataset's path %r; reading %r",
                           url, f"{k}.input", inp, own, own)
    if "output" not in t:
        return None
    name, path = check_ref(t["output"], url, f"{k}.output", string="name")
    if name is None:
        raise err(url, f"{k}.output", "must name the intrinsic coordinate system by 'name', "
                  f"got {t['output']!r}")
    if path is not None:
        raise err(url, f"{k}.output.path", "must be omitted: the intrinsic coordinate system "
                  "is defined in this multiscale")
    return name


def _systems_06(ms: Mapping[str, Any], datasets: list[Any], url: str, key: str
                ) -> tuple[dict[str, tuple[Axis, ...]], str]:
    """0.6 coordinate systems by name, and the intrinsic one (every dataset's output)."""
    if "axes" in ms and "coordinateSystems" not in ms:
        raise err(url, f"{key}.coordinateSystems", "missing (0.6 uses coordinateSystems, "
                  "not axes)")
    systems: dict[str, tuple[Axis, ...]] = {}
    for i, cs in enumerate(as_list(ms.get("coordinateSystems"), url,
                                   f"{key}.coordinateSystems")):
        k = f"{key}.coordinateSystems[{i}]"
        d = as_dict(cs, url, k)
        cs_name = opt_str(d.get("name"), url, f"{k}.name")
        if not cs_name:
            raise err(url, f"{k}.name", "missing or empty")
        if cs_name in systems:
            raise err(url, f"{k}.name", f"duplicate coordinate system name {cs_name!r}")
        systems[cs_name] = _parse_axes(d.get("axes"), url, f"{k}.axes", check_space=False)
    outs = {_dataset_output(ds, url, f"{key}.datasets[{i}]") for i, ds in enumerate(datasets)}
    named = sorted(o for o in outs if o is not None)
    if len(named) > 1:
        raise err(url, f"{key}.datasets[].coordinateTransformations[0].output",
                  f"datasets map to different coordinate systems {named}")
    if named:
        intrinsic = named[0]
    elif len(systems) == 1:
        intrinsic = next(iter(systems))
    else:
        raise err(url, f"{key}.datasets[0].coordinateTransformations[0].output",
                  "missing; cannot tell the intrinsic coordinate system")
    if intrinsic not in systems:
        raise err(url, f"{key}.coordinateSystems", f"no coordinate system named "
                  f"{intrinsic!r} (the datasets' output)")
    return systems, intrinsic


def _dataset_levels(
    datasets: list[Any], n: int, spatial: Sequence[int], url: str, key: str, version: str,
) -> list[tuple[str, FloatArray, FloatArray]]:
    """``(path, scale, translation)`` of every dataset, paths checked."""
    levels_raw: list[tuple[str, FloatArray, FloatArray]] = []
    seen_paths: set[str] = set()
    for i, ds in enumerate(datasets):
        dkey = f"{key}.datasets[{i}]"
        d = as_dict(ds, url, dkey)
        path = check_relative_path(d.get("path"), url, f"{dkey}.path")
        if path in seen_paths:
            raise err(url, f"{dkey}.path", f"duplicate dataset path {path!r}")
        seen_paths.add(path)
        s, t = _dataset_transform(d, n, spatial, url, dkey, version)
        levels_raw.append((path, s, t))
    return levels_raw


def _candidates(
    ms: Mapping[str, Any], version: str, axes: tuple[Axis, ...], ctx: _Ctx,
) -> list[tuple[str | None, FloatArray, tuple[Axis, ...]]]:
    """``(system, matrix from intrinsic, its axes)`` for every system the image can be seen in."""
    n = len(axes)
    spatial = [i for i, a in enumerate(axes) if a.is_spatial]
    raw = ms.get("coordinateTransformations")
    cts = [] if raw is None else as_list(raw, ctx.url, ctx.ms_key, non_empty=False)
    if version != "0.6":
        if ctx.target is not None:
            raise err(ctx.url, ctx.ms_key, f"NGFF {version} has no coordinate systems; cannot "
                      f"reach {ctx.target!r}")
        h = compose(flatten(cts, ctx.url, ctx.ms_key), n, spatial, ctx.url, linear_ok=False)
        return [(None, h, axes)]
    assert ctx.intrinsic is not None
    rs = routes(cts, ctx.intrinsic, ctx.systems, ctx.url, ctx.ms_key, ctx.load)
    ch = chain(rs, ctx.intrinsic, ctx.target, ctx.systems, ctx.url, ctx.ms_key, ctx.load)
    found: list[tuple[str | None, FloatArray, tuple[Axis, ...]]] = [
        (name, h, ctx.systems[name]) for name, h in ch]
    return found[-1:] if ctx.target is not None else found


@dataclass(frozen=True)
class _Ctx:
    url: str
    ms_key: str
    target: str | None
    intrinsic: str | None
    systems: Mapping[str, tuple[Axis, ...]]
    load: ParamLoader | None


def _choose(
    found: list[tuple[str | None, FloatArray, tuple[Axis, ...]]], axes: tuple[Axis, ...],
    ctx: _Ctx, axes_key: str,
) -> tuple[str | None, FloatArray, tuple[Axis, ...], SpatialBlock]:
    """The last system of the chain in which the image has a 2-3-D geometry."""
    own_spatial = {i for i, a in enumerate(axes) if a.is_spatial}
    reasons = []
    for name, h, out_axes in reversed(found):
        blk = spatial_block(h, [a.is_spatial for a in out_axes])
        if not isinstance(blk, str) and not own_spatial <= set(blk.inputs):
            blk = "the transform drops spatial axes of the image"
        if isinstance(blk, str):
            reasons.append(f"{name or 'axes'}: {blk}")
            continue
        if name != found[-1][0]:
            logger.warning("%s: the image has no 2-3-D geometry in coordinate system %r (%s); "
                           "using %r", ctx.url, found[-1][0], reasons[0], name)
        return name, h, out_axes, blk
    if ctx.target is not None:
        raise err(ctx.url, ctx.ms_key, f"the image has no 2-3-D geometry in coordinate system "
                  f"{ctx.target!r}: {reasons[0]}")
    n_space = sum(a.is_spatial for a in axes)
    raise err(ctx.url, axes_key, f"must have 2 or 3 axes of type 'space', got {n_space} "
              f"({'; '.join(reasons)})")


def _orient(
    h: FloatArray, labels: Sequence[str | None], blk: SpatialBlock, url: str,
    use_orientation: bool,
) -> tuple[FloatArray, tuple[str, ...] | None]:
    """Apply RFC-4 anatomical orientation labels (when no rotation/affine is given)."""
    orientation: tuple[str, ...] | None = None
    if any(lb is not None for lb in labels):
        if all(lb is not None for lb in labels):
            orientation = tuple(str(lb) for lb in labels)
        else:
            logger.warning("%s: only some spatial axes carry 'orientation'; ignored", url)
    rows, cols = np.asarray(blk.outputs), np.asarray(blk.inputs)
    block = h[np.ix_(rows, cols)]
    linear_given = not (np.array_equal(rows, cols)
                        and np.allclose(block, np.diag(np.diag(block))))
    if orientation is not None and use_orientation:
        if linear_given:
            logger.info("%s: rotation/affine given; RFC-4 orientation labels ignored", url)
        else:
            o_itk = orientation_matrix(orientation)
            if o_itk is None:
                logger.warning("%s: orientation labels %s are not a valid LPS permutation; "
                               "ignored", url, orientation)
            else:
                g = np.eye(h.shape[0])
                g[np.ix_(rows, rows)] = o_itk[::-1, ::-1]
                h = g @ h
    return h, orientation


def _per_axis(h: FloatArray, blk: SpatialBlock, n: int) -> FloatArray:
    """``(n+1) x (n+1)`` matrix over the image's own axes: spatial rows in the input's slots.

    A non-spatial axis keeps the factor and offset of the one output axis it
    maps to alone (1 and 0 when there is none).
    """
    w = np.eye(n + 1)
    rows, cols = list(blk.outputs), list(blk.inputs)
    w[cols, :n] = h[rows, :n]
    w[cols, n] = h[rows, -1]
    lin = h[:-1, :-1]
    for c in range(n):
        if c in cols:
            continue
        hits = [r for r in range(lin.shape[0]) if r not in rows and abs(lin[r, c]) > 0]
        if len(hits) == 1 and np.count_nonzero(lin[hits[0]]) == 1:
            w[c, c] = lin[hits[0], c]
            w[c, n] = h[hits[0], -1]
    return w


def _levels(levels_raw: list[tuple[str, FloatArray, FloatArray]], w: FloatArray,
            blk: SpatialBlock, url: str, key: str) -> tuple[list[Level], FloatArray]:
    """Every level's physical scale and translation, checked; and the direction (NumPy order)."""
    n = w.shape[0] - 1
    cols = np.asarray(blk.inputs)
    m_sp = w[np.ix_(cols, cols)]
    s_ms = np.linalg.norm(m_sp, axis=0)
    r = m_sp / s_ms
    if not np.allclose(r.T @ r, np.eye(len(cols)), atol=1e-6):
        logger.warning("%s: '%s.coordinateTransformations' includes shear; the ITK direction "
                       "is not orthonormal", url, key)
    levels = []
    for path, s_ds, t_ds in levels_raw:
        scale = np.diag(w)[:n] * s_ds
        trans = np.diag(w)[:n] * t_ds + w[:n, n]
        scale[cols] = s_ms * s_ds[cols]
        trans[cols] = m_sp @ t_ds[cols] + w[cols, n]
        if np.any(scale[cols] <= 0) or not np.all(np.isfinite(scale)) or not np.all(
            np.isfinite(trans)
        ):
            raise err(url, f"{key}.datasets[].coordinateTransformations",
                      f"level {path!r} has an invalid scale {scale.tolist()}")
        levels.append(Level(path, tuple(float(v) for v in scale), tuple(float(v) for v in trans)))
    return levels, r


def _image_axes(axes: tuple[Axis, ...], out_axes: tuple[Axis, ...], blk: SpatialBlock,
                unit: str | None) -> tuple[Axis, ...]:
    """The image's own axes, its spatial ones described by the system it is seen in."""
    new = list(axes)
    for r, c in zip(blk.outputs, blk.inputs):
        a = out_axes[r]
        new[c] = replace(a, unit=unit) if unit is not None else a
    for c in range(len(new)):
        if c not in blk.inputs and new[c].is_spatial:  # pragma: no cover - excluded by _choose
            raise AssertionError("spatial axis outside the spatial block")
    return tuple(new)


def _parse(
    attrs: Any, url: str, name: str | None, target_cs: str | None, use_orientation: bool,
    load: ParamLoader | None,
) -> Multiscale:
    version, ms, key = _select(attrs, url, name)
    datasets = as_list(ms.get("datasets"), url, f"{key}.datasets")
    systems: dict[str, tuple[Axis, ...]] = {}
    intrinsic: str | None = None
    if version == "0.6":
        systems, intrinsic = _systems_06(ms, datasets, url, key)
        axes = systems[intrinsic]
        idx = list(systems).index(intrinsic)
        axes_key = f"{key}.coordinateSystems[{idx}].axes"
    else:
        axes = _parse_axes(ms.get("axes"), url, f"{key}.axes")
        axes_key = f"{key}.axes"
    n = len(axes)
    spatial = [i for i, a in enumerate(axes) if a.is_spatial]
    levels_raw = _dataset_levels(datasets, n, spatial, url, key, version)
    ctx = _Ctx(url, f"{key}.coordinateTransformations", target_cs, intrinsic, systems, load)
    final_cs, h, out_axes, blk = _choose(_candidates(ms, version, axes, ctx), axes, ctx,
                                         axes_key)
    seen = [out_axes[r] for r in blk.outputs]
    unit, factors = _common_unit(seen, url, axes_key)
    u = np.ones(h.shape[0])
    for j, f in factors.items():
        u[blk.outputs[j]] = f
    h = np.diag(u) @ h
    h, orientation = _orient(h, [a.orientation for a in seen], blk, url, use_orientation)
    w = _per_axis(h, blk, n)
    levels, r = _levels(levels_raw, w, blk, url, key)
    ms_name = ms.get("name")
    return Multiscale(
        version=version,
        name=ms_name if isinstance(ms_name, str) else None,
        axes=_image_axes(axes, out_axes, blk, unit if factors else None),
        levels=tuple(levels),
        direction=tuple(tuple(float(v) for v in row) for row in r[::-1, ::-1]),
        unit=unit,
        source=url,
        coordinate_system=final_cs,
        orientation=orientation,
        intrinsic_system=intrinsic,
        world_from_intrinsic=tuple(tuple(float(v) for v in row) for row in w)
        if version == "0.6" else None,
    )
