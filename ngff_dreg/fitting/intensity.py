"""The intensity model that makes image similarity a least-squares problem.

``fixed(x) ~ gain(x) * phi(w)``, where ``w`` is the moving intensity seen at
``x`` through the current transform:

* ``phi`` is affine (``"affine"``: the fit then has the optimum of the
  normalised cross-correlation) or piecewise linear over ``bins`` segments
  between the 0.5th and 99.5th percentiles of ``w`` (``"piecewise"``: any
  monotone or non-monotone remapping of intensities, like a correlation ratio;
  a light second-difference penalty keeps sparsely populated segments tame);
* ``gain`` is 1 or a polynomial of the sample position of degree 1 or 2 (a
  smooth multiplicative bias field over a block).

Both are refitted in closed form at every evaluation (alternating between
``phi`` and ``gain``), on a fixed random subset of the samples: the model has
a few dozen parameters, so tens of thousands of samples pin it down.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["INTENSITY_MODELS", "MODEL_SAMPLES", "IntensityModel", "polynomial_terms"]

FloatArray = npt.NDArray[np.float64]
INTENSITY_MODELS = ("affine", "piecewise")
#: Samples on which the model's parameters are fitted.
MODEL_SAMPLES = 20000


def polynomial_terms(lattice_shape: Sequence[int], degree: int) -> FloatArray:
    """``(N, n_terms)`` monomials of the lattice position, each axis scaled to [-1, 1].

    The first column is the constant 1.
    """
    axes = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in lattice_shape], indexing="ij")
    cols = [np.ones(int(np.prod(lattice_shape)))] + [a.ravel() for a in axes]
    if degree > 1:
        for i in range(len(axes)):
            for k in range(i, len(axes)):
                cols.append((axes[i] * axes[k]).ravel())
    return np.stack(cols, 1)


class IntensityModel:
    """Least-squares map from moving to fixed intensities (see the module docstring).

    Parameters
    ----------
    kind:
        ``"affine"`` or ``"piecewise"``.
    bins:
        Segments of the piecewise-linear map.
    poly:
        ``(N, n_terms)`` polynomial terms of the gain at the samples, or
        ``None`` for no gain.
    subset:
        Indices of the samples the parameters are fitted on.

    """

    def __init__(
        self, kind: str, bins: int, poly: FloatArray | None, subset: npt.NDArray[np.intp]
    ) -> None:
        if kind not in INTENSITY_MODELS:
            raise ValueError(f"intensity model must be one of {INTENSITY_MODELS}, got {kind!r}")
        self.kind = kind
        self.bins = int(bins)
        self.poly = poly
        self.sub = subset

    @classmethod
    def for_samples(
        cls, kind: str, bins: int, poly: FloatArray | None, n: int, seed: int = 0
    ) -> IntensityModel:
        """A model fitted on at most :data:`MODEL_SAMPLES` random ones of ``n`` samples."""
        rng = np.random.default_rng([seed, n])
        sub = np.sort(rng.choice(n, size=min(n, MODEL_SAMPLES), replace=False))
        return cls(kind, bins, poly, sub)

    def fit(self, w: FloatArray, f: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Prediction of ``f`` from ``w``, and its derivative in ``w``, at every sample."""
        ws, fs = w[self.sub], f[self.sub]
        ps = None if self.poly is None else self.poly[self.sub]
        if self.kind == "affine":
            return self._fit_affine(w, ws, fs, ps)
        return self._fit_piecewise(w, ws, fs, ps)

    def _gain(self, beta: FloatArray | None, n: int) -> FloatArray:
        return np.ones(n) if beta is None or self.poly is None else self.poly @ beta

    def _fit_affine(
        self, w: FloatArray, ws: FloatArray, fs: FloatArray, ps: FloatArray | None
    ) -> tuple[FloatArray, FloatArray]:
        gain_s = np.ones(len(ws))
        beta = None
        coef = np.zeros(2)
        for _ in range(1 if ps is None else 3):
            coef = np.asarray(
                np.linalg.lstsq(np.stack([ws * gain_s, gain_s], 1), fs, rcond=None)[0],
                dtype=np.float64,
            )
            if ps is None:
                break
            beta = gain_coefficients(ps, coef[0] * ws + coef[1], fs)
            gain_s = ps @ beta
        gain = self._gain(beta, len(w))
        return gain * (coef[0] * w + coef[1]), gain * coef[0]

    def _fit_piecewise(
        self, w: FloatArray, ws: FloatArray, fs: FloatArray, ps: FloatArray | None
    ) -> tuple[FloatArray, FloatArray]:
        lo, hi = (float(v) for v in np.percentile(ws, [0.5, 99.5]))
        if not hi > lo:
            return np.full_like(w, float(fs.mean())), np.zeros_like(w)
        n = self.bins + 1
        step = (hi - lo) / self.bins

        def hats(v: FloatArray) -> tuple[npt.NDArray[np.intp], FloatArray]:
            tt = np.clip((v - lo) / step, 0, self.bins - 1e-9)
            j = np.floor(tt).astype(np.intp)
            return j, tt - j

        js, ts = hats(ws)
        d2 = np.diff(np.eye(n), 2, axis=0)
        smooth = d2.T @ d2
        gain_s = np.ones(len(ws))
        beta = None
        alpha = np.zeros(n)
        for _ in range(1 if ps is None else 3):
            ata, atb = _hat_normal_equations(js, ts, gain_s, fs, n)
            reg = 1e-3 * float(np.trace(ata)) / n
            alpha = np.asarray(np.linalg.solve(ata + reg * smooth + 1e-9 * np.eye(n), atb),
                               dtype=np.float64)
            if ps is None:
                break
            beta = gain_coefficients(ps, alpha[js] * (1 - ts) + alpha[js + 1] * ts, fs)
            gain_s = ps @ beta
        j, t = hats(w)
        phi = alpha[j] * (1 - t) + alpha[j + 1] * t
        slope = np.where((w >= lo) & (w <= hi), (alpha[j + 1] - alpha[j]) / step, 0.0)
        gain = self._gain(beta, len(w))
        return gain * phi, gain * slope


def gain_coefficients(p: FloatArray, phi: FloatArray, f: FloatArray) -> FloatArray:
    """Least-squares ``beta`` of ``f ~ (p @ beta) * phi``, scaled to a mean gain of 1."""
    pw = p * phi[:, None]
    beta = np.linalg.solve(pw.T @ pw + 1e-9 * np.eye(p.shape[1]), pw.T @ f)
    mean = float(np.mean(p @ beta))
    return np.asarray(beta / (mean if mean != 0 else 1.0))


def _hat_normal_equations(
    j: npt.NDArray[np.intp], t: FloatArray, gain: FloatArray, f: FloatArray, n: int
) -> tuple[FloatArray, FloatArray]:
    """``(A^T A, A^T f)`` for ``A = gain * hats(w)`` (two hats per sample)."""
    ata = np.zeros((n, n))
    atb = np.zeros(n)
    g2 = gain * gain
    for da, wa in ((0, 1 - t), (1, t)):
        atb += np.bincount(j + da, wa * gain * f, n)
        for db, wb in ((0, 1 - t), (1, t)):
            ata += np.bincount((j + da) * n + (j + db), wa * wb * g2, n * n).reshape(n, n)
    return ata, atb
