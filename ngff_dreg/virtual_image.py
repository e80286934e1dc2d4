"""A procedural image pair of any size, every voxel computed from its coordinates.

For scale tests: :class:`VirtualPair` describes a fixed and a moving image of
any shape (up to petabytes) whose voxels are a pure function of their physical
position, so any region can be produced on its own, in any order, on any
machine, with memory set by the region alone. The moving image is the fixed
one warped by a known transform, so a registration's accuracy can be scored
anywhere (:meth:`VirtualPair.fixed_to_moving`).

* **Intensity** ``f(p)``: a soft ellipsoid (the "specimen") filled with
  hashed-lattice value noise at three scales, one coarse (a sixth of the
  image: the smooth structure) and two fine (48 and 8 voxels: the texture).
  The lattice values come from a counter-based hash of the node's integer
  coordinates and the seed, so nothing is stored.
* **Pyramid levels** are the same function sampled on a coarser grid, with
  the octaves finer than about two voxels of the level replaced by their mean
  (band-limited: no aliasing, and no averaging of ``2**level`` voxels).
* **Warp.** ``moving(q) = f(S(q))`` with ``S(q) = R (q - c) + c + t + d(q)``:
  a small rotation ``R`` about the centre ``c``, a translation ``t`` and a
  smooth sinusoidal displacement ``d``. The fixed→moving transform a
  registration must find is ``S⁻¹``, evaluated by fixed-point iteration.

Points and shapes are in NumPy axis order here (``z, y, x``);
:meth:`VirtualPair.fixed_to_moving` takes and returns ITK order (``x, y, z``),
like :class:`~ngff_dreg.geometry.ImageGeometry`'s physical points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import InvalidInputDataError

__all__ = ["ROLES", "SCHEME", "VirtualPair", "value_noise"]

#: URL scheme of a virtual image (``virtual://fixed?shape=...``).
SCHEME = "virtual"
#: The images of a pair: the fixed one, the moving one, and a region mask.
ROLES = ("fixed", "moving", "mask")

_BATCH = 1 << 18  # points evaluated at once (about 60 MB of temporaries in 3-D)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_PRIMES = (np.uint64(0x8CB92BA72F3D8DD7), np.uint64(0xC2B2AE3D27D4EB4F),
           np.uint64(0x165667B19E3779F9), np.uint64(0xD6E8FEB86659FD93))


def _mix(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser (a bijective avalanche of 64 bits)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    out: npt.NDArray[np.uint64] = z ^ (z >> np.uint64(31))
    return out


def _lattice_value(nodes: npt.NDArray[np.int64], seed: int) -> npt.NDArray[np.float64]:
    """A uniform value in [0, 1) for each integer lattice node (rows of ``nodes``)."""
    with np.errstate(over="ignore"):
        h = np.full(nodes.shape[0], np.uint64(seed) * _GOLDEN + _GOLDEN, dtype=np.uint64)
        for a in range(nodes.shape[1]):
            h = _mix(h ^ (nodes[:, a].astype(np.uint64) * _PRIMES[a % len(_PRIMES)]))
    out: npt.NDArray[np.float64] = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return out


def value_noise(
    points: npt.NDArray[np.float64], spacing: float, seed: int
) -> npt.NDArray[np.float64]:
    """Smooth value noise in [0, 1] at ``points`` (``(n, ndim)``), lattice step ``spacing``.

    The lattice values are hashed from the node coordinates and ``seed``;
    between nodes they are interpolated with smoothstep weights, so the noise
    is continuous with features about ``spacing`` wide. The nodes around the
    points are hashed once each (a small table), then gathered per point.
    """
    u = points / spacing
    base = np.floor(u)
    frac = u - base
    w = frac * frac * (3.0 - 2.0 * frac)
    base_i = base.astype(np.int64)
    ndim = points.shape[1]
    lo = base_i.min(axis=0)
    box = base_i.max(axis=0) - lo + 2
    if math.prod(box.tolist()) > 4 * points.shape[0] + 4096:  # scattered points: hash each
        def value(offs: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
            return _lattice_value(base_i + offs, seed)
    else:
        grids = np.meshgrid(*[np.arange(n, dtype=np.int64) for n in box], indexing="ij")
        nodes = np.stack([g.reshape(-1) for g in grids], axis=1) + lo
        table = _lattice_value(nodes, seed)
        strides = np.array([math.prod(box[a + 1:].tolist()) for a in range(ndim)], np.int64)
        flat = (base_i - lo) @ strides

        def value(offs: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
            out: npt.NDArray[np.float64] = table[flat + int(offs @ strides)]
            return out
    out = np.zeros(points.shape[0])
    for corner in range(1 << ndim):
        offs = np.array([(corner >> a) & 1 for a in range(ndim)], dtype=np.int64)
        weight = np.ones(points.shape[0])
        for a in range(ndim):
            weight *= w[:, a] if offs[a] else 1.0 - w[:, a]
        out += weight * value(offs)
    return out


def _tuple(value: Any, ndim: int, name: str, kind: type = int) -> tuple[Any, ...]:
    if isinstance(value, str):
        value = [v for v in value.replace("x", ",").split(",") if v]
    if isinstance(value, (int, float)):
        value = [value] * ndim
    out = tuple(kind(v) for v in value)
    if len(out) != ndim:
        raise InvalidInputDataError(f"virtual image: {name} has {len(out)} entries, not {ndim}")
    return out


@dataclass(frozen=True)
class VirtualPair:
    """A procedural fixed/moving image pair (see the module docstring).

    Attributes
    ----------
    shape:
        Level-0 shape, NumPy order (2-D or 3-D).
    chunks:
        Chunk shape of every level (one edge or one per axis).
    levels:
        Pyramid levels (each halves every axis); ``0``: down to about one chunk.
    spacing:
        Level-0 voxel spacing (micrometres), NumPy order.
    seed:
        Seeds the texture.
    rotation_deg, translation_vox, deformation_vox:
        The warp of the moving image: rotation (degrees, about the last
        axis), translation and the amplitude of the smooth displacement, in
        level-0 voxels.
    dtype:
        ``"uint16"`` or ``"float32"``.
    mask_box:
        The box of the ``"mask"`` role (a uint8 label image, 1 inside): its
        low then high corner as fractions of the extent, NumPy order (a
        registration limited to a region passes it as ``fixed_mask``).

    """

    shape: tuple[int, ...]
    chunks: tuple[int, ...] = (128,)
    levels: int = 0
    spacing: tuple[float, ...] = (1.0,)
    seed: int = 0
    rotation_deg: float = 1.5
    translation_vox: float = 3.0
    deformation_vox: float = 2.0
    dtype: str = "uint16"
    mask_box: tuple[float, ...] = ()
    _R: npt.NDArray[np.float64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ndim = len(self.shape)
        if ndim not in (2, 3) or any(int(s) < 1 for s in self.shape):
            raise InvalidInputDataError(
                f"virtual image: shape {self.shape} must be 2-D or 3-D and positive")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "chunks", _tuple(
            self.chunks[0] if len(self.chunks) == 1 else self.chunks, ndim, "chunks"))
        object.__setattr__(self, "spacing", _tuple(
            self.spacing[0] if len(self.spacing) == 1 else self.spacing, ndim, "spacing", float))
        if any(c < 1 for c in self.chunks) or any(s <= 0 for s in self.spacing):
            raise InvalidInputDataError("virtual image: chunks and spacing must be positive")
        if self.dtype not in ("uint16", "float32"):
            raise InvalidInputDataError(f"virtual image: dtype {self.dtype!r} is not "
                                        "uint16 or float32")
        if self.levels <= 0:
            n = 1
            while max(math.ceil(s / 2**n) for s in self.shape) > max(self.chunks) and n < 30:
                n += 1
            object.__setattr__(self, "levels", n + 1)  # levels 0..n, the last within a chunk
        box = tuple(float(v) for v in self.mask_box)
        if box and (len(box) != 2 * ndim or any(not 0 <= v <= 1 for v in box)):
            raise InvalidInputDataError(
                f"virtual image: mask_box {self.mask_box} needs {2 * ndim} fractions in [0, 1]")
        object.__setattr__(self, "mask_box", box)
        th = math.radians(self.rotation_deg)
        r = np.eye(ndim)
        r[-2:, -2:] = [[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]]
        object.__setattr__(self, "_R", r)

    # ---------------------------------------------------------------- URLs
    def url(self, role: str) -> str:
        """``virtual://<role>?...``: the URL ngff-dreg opens this image by (picklable)."""
        if role not in ROLES:
            raise InvalidInputDataError(f"virtual image role {role!r} is not one of {ROLES}")
        query = {
            "shape": "x".join(map(str, self.shape)), "chunks": "x".join(map(str, self.chunks)),
            "levels": self.levels, "spacing": "x".join(repr(s) for s in self.spacing),
            "seed": self.seed, "rotation_deg": self.rotation_deg,
            "translation_vox": self.translation_vox, "deformation_vox": self.deformation_vox,
            "dtype": self.dtype,
            **({"mask_box": "x".join(repr(v) for v in self.mask_box)} if self.mask_box else {}),
        }
        return f"{SCHEME}://{role}?{urlencode(query)}"

    @classmethod
    def from_url(cls, url: str) -> tuple[VirtualPair, str]:
        """The pair and the role (``"fixed"``/``"moving"``) a ``virtual://`` URL names."""
        parts = urlsplit(str(url))
        if parts.scheme != SCHEME or parts.netloc not in ROLES:
            raise InvalidInputDataError(
                f"{url}: not a virtual image URL (virtual://<fixed|moving|mask>?...)")
        q = dict(parse_qsl(parts.query))
        try:
            shape = tuple(int(v) for v in q.pop("shape").split("x"))
            ndim = len(shape)
            pair = cls(
                shape=shape,
                chunks=_tuple(q.pop("chunks", "128"), ndim, "chunks"),
                levels=int(q.pop("levels", 0)),
                spacing=_tuple(q.pop("spacing", "1"), ndim, "spacing", float),
                seed=int(q.pop("seed", 0)),
                rotation_deg=float(q.pop("rotation_deg", 1.5)),
                translation_vox=float(q.pop("translation_vox", 3.0)),
                deformation_vox=float(q.pop("deformation_vox", 2.0)),
                dtype=q.pop("dtype", "uint16"),
                mask_box=tuple(float(v) for v in q.pop("mask_box", "").split("x") if v),
            )
        except (KeyError, ValueError) as exc:
            raise InvalidInputDataError(f"{url}: bad virtual image parameters: {exc}") from exc
        if q:
            raise InvalidInputDataError(f"{url}: unknown virtual image parameters {sorted(q)}")
        return pair, parts.netloc

    # ---------------------------------------------------------------- geometry
    @property
    def ndim(self) -> int:
        """Spatial dimensions."""
        return len(self.shape)

    def level_shape(self, level: int) -> tuple[int, ...]:
        """Shape of pyramid level ``level``."""
        return tuple(math.ceil(s / 2**level) for s in self.shape)

    def level_spacing(self, level: int) -> tuple[float, ...]:
        """Voxel spacing of level ``level``."""
        return tuple(s * 2**level for s in self.spacing)

    def level_origin(self, level: int) -> tuple[float, ...]:
        """Physical position of voxel 0 of level ``level`` (voxel centres aligned)."""
        return tuple((2**level - 1) / 2 * s for s in self.spacing)

    @property
    def extent(self) -> npt.NDArray[np.float64]:
        """Physical extent of level 0, NumPy order."""
        out: npt.NDArray[np.float64] = (
            np.asarray(self.shape, dtype=np.float64) * np.asarray(self.spacing))
        return out

    @property
    def centre(self) -> npt.NDArray[np.float64]:
        """Physical centre, NumPy order."""
        return self.extent / 2

    def nbytes(self, level: int = 0) -> int:
        """Bytes of one image's level ``level``."""
        return math.prod(self.level_shape(level)) * np.dtype(self.dtype).itemsize

    def dtype_of(self, role: str) -> str:
        """The data type of ``role``'s arrays (the mask is ``uint8``)."""
        return "uint8" if role == "mask" else self.dtype

    # ---------------------------------------------------------------- voxels
    def intensity(self, points: npt.NDArray[np.float64], level: int = 0) -> npt.NDArray[np.float64]:
        """The fixed image's intensity in [0, 1] at physical points (``(n, ndim)``, NumPy order).

        Octaves finer than 2.5 voxels of ``level`` are replaced by their mean.
        """
        voxel = min(self.level_spacing(level))
        fine = min(self.spacing)
        rel = (points - self.centre) / (0.45 * self.extent)
        r = np.sqrt((rel * rel).sum(axis=1))
        envelope = 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / 0.03, -50, 50)))
        value = np.full(points.shape[0], 0.15)
        octaves = ((float(self.extent.min()) / 6, 0.45), (48 * fine, 0.25), (8 * fine, 0.15))
        for k, (step, amp) in enumerate(octaves):
            if step < 2.5 * voxel:
                value += 0.5 * amp
            else:
                value += amp * value_noise(points, step, self.seed * 7 + k)
        out: npt.NDArray[np.float64] = envelope * value
        return out

    def displacement(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The smooth part ``d(q)`` of the moving→fixed map (physical, NumPy order)."""
        amp = self.deformation_vox * min(self.spacing)
        wavelength = float(self.extent.min()) / 2
        out = np.empty_like(points)
        for a in range(self.ndim):
            other = (a + 1) % self.ndim
            phase = 2 * math.pi * (points[:, other] / wavelength + 0.37 * (a + 1) + 0.1 * self.seed)
            out[:, a] = amp * np.sin(phase)
        return out

    def moving_to_fixed(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """``S(q)``: where moving-image point ``q`` shows fixed-image content (NumPy order)."""
        t = self.translation_vox * np.asarray(self.spacing)
        c = self.centre
        out: npt.NDArray[np.float64] = (points - c) @ self._R.T + c + t + self.displacement(points)
        return out

    def _fixed_to_moving_np(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        t = self.translation_vox * np.asarray(self.spacing)
        c = self.centre
        q = (points - c - t) @ self._R + c
        for _ in range(30):  # S⁻¹ by fixed-point iteration (|∇d| << 1)
            q = (points - c - t - self.displacement(q)) @ self._R + c
        return q

    def fixed_to_moving(self, points_xyz: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The true fixed→moving transform at physical points in ITK order (``(n, ndim)``)."""
        p = np.atleast_2d(np.asarray(points_xyz, dtype=np.float64))[:, ::-1]
        return np.ascontiguousarray(self._fixed_to_moving_np(p)[:, ::-1])

    def region(
        self, role: str, level: int, start: Sequence[int], shape: Sequence[int]
    ) -> npt.NDArray[Any]:
        """Voxels ``start : start + shape`` of one level of the fixed or moving image.

        Voxels outside the level are 0. Memory is a few arrays of the region's size.
        """
        spacing = np.asarray(self.level_spacing(level))
        origin = np.asarray(self.level_origin(level))
        lshape = self.level_shape(level)
        shape = tuple(int(n) for n in shape)
        if role == "mask":
            return self._mask_region(level, start, shape)
        out = np.zeros(math.prod(shape), dtype=self.dtype)
        total = out.size
        for lo in range(0, total, _BATCH):  # bounded temporaries, whatever the chunk
            lin = np.arange(lo, min(total, lo + _BATCH))
            idx = np.stack(np.unravel_index(lin, shape), axis=1) + np.asarray(start)
            inside = np.all(idx < np.asarray(lshape), axis=1)
            pts = idx * spacing + origin
            if role == "moving":
                pts = self.moving_to_fixed(pts)
            values = np.where(inside, self.intensity(pts, level), 0.0)
            out[lo : lo + lin.size] = (
                np.round(values * 50000) if self.dtype == "uint16" else values)
        return out.reshape(shape)

    def _mask_region(
        self, level: int, start: Sequence[int], shape: tuple[int, ...]
    ) -> npt.NDArray[np.uint8]:
        """The mask role: 1 at voxels whose centre lies in ``mask_box`` (all 1 without one)."""
        lshape = self.level_shape(level)
        spacing = np.asarray(self.level_spacing(level))
        origin = np.asarray(self.level_origin(level))
        box = self.mask_box or (0.0,) * self.ndim + (1.0,) * self.ndim
        lo = np.asarray(box[: self.ndim]) * self.extent
        hi = np.asarray(box[self.ndim :]) * self.extent
        inside = [
            ((np.arange(s0, s0 + n) * spacing[a] + origin[a] >= lo[a])
             & (np.arange(s0, s0 + n) * spacing[a] + origin[a] < hi[a])
             & (np.arange(s0, s0 + n) < lshape[a]))
            for a, (s0, n) in enumerate(zip(start, shape))
        ]
        out = np.ones(shape, dtype=np.uint8)
        for a, keep in enumerate(inside):
            out *= keep.reshape([-1 if b == a else 1 for b in range(self.ndim)]).astype(np.uint8)
        return out
