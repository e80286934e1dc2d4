"""The affine map ``y = A x + t`` in physical ITK-order coordinates (NumPy only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["AffineTransform"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class AffineTransform:
    """``y = matrix @ x + translation`` in physical ITK-order coordinates."""

    matrix: tuple[tuple[float, ...], ...]
    translation: tuple[float, ...]

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        t = np.asarray(self.translation, dtype=np.float64).ravel()
        if m.ndim != 2 or m.shape[0] != m.shape[1] or t.shape[0] != m.shape[0]:
            raise ValueError(f"bad affine: matrix {m.shape}, translation {t.shape}")
        object.__setattr__(self, "matrix", tuple(tuple(float(v) for v in r) for r in m))
        object.__setattr__(self, "translation", tuple(float(v) for v in t))

    @classmethod
    def identity(cls, ndim: int) -> AffineTransform:
        """The identity map."""
        return cls(tuple(map(tuple, np.eye(ndim))), (0.0,) * ndim)

    @classmethod
    def from_arrays(cls, matrix: npt.ArrayLike, translation: npt.ArrayLike) -> AffineTransform:
        """Build from array-likes."""
        m = np.asarray(matrix, dtype=np.float64)
        return cls(tuple(map(tuple, m)), tuple(np.asarray(translation, dtype=np.float64)))

    @classmethod
    def from_homogeneous(cls, h: npt.ArrayLike) -> AffineTransform:
        """Build from an ``(ndim+1) x (ndim+1)`` homogeneous matrix."""
        a = np.asarray(h, dtype=np.float64)
        n = a.shape[0] - 1
        return cls.from_arrays(a[:n, :n], a[:n, n])

    @classmethod
    def from_itk(cls, transform: Any) -> AffineTransform:
        """From any linear ``itk.Transform``."""
        from ngff_dreg.itk_bridge import itk_to_affine

        return cls.from_arrays(*itk_to_affine(transform))

    @property
    def ndim(self) -> int:
        """Dimension."""
        return len(self.translation)

    @property
    def A(self) -> FloatArray:
        """Matrix as an array."""
        return np.asarray(self.matrix, dtype=np.float64)

    @property
    def t(self) -> FloatArray:
        """Translation as an array."""
        return np.asarray(self.translation, dtype=np.float64)

    @property
    def homogeneous(self) -> FloatArray:
        """``(ndim+1) x (ndim+1)`` homogeneous matrix."""
        h = np.eye(self.ndim + 1)
        h[: self.ndim, : self.ndim] = self.A
        h[: self.ndim, self.ndim] = self.t
        return h

    @property
    def is_identity(self) -> bool:
        """True for the identity map (to 1e-12)."""
        return bool(np.allclose(self.homogeneous, np.eye(self.ndim + 1), atol=1e-12))

    def transform_points(self, points: npt.ArrayLike) -> FloatArray:
        """Map ``(N, ndim)`` physical points."""
        p = np.asarray(points, dtype=np.float64)
        return p @ self.A.T + self.t

    def inverse(self) -> AffineTransform:
        """The inverse map."""
        return AffineTransform.from_homogeneous(np.linalg.inv(self.homogeneous))

    def then(self, other: AffineTransform) -> AffineTransform:
        """``other ∘ self``: apply ``self`` first, then ``other``."""
        return AffineTransform.from_homogeneous(other.homogeneous @ self.homogeneous)

    def to_itk(self) -> Any:
        """An ``itk.AffineTransform``."""
        from ngff_dreg.itk_bridge import affine_to_itk

        return affine_to_itk(self.A, self.t)
