"""The report's figures, drawn with matplotlib's Agg backend into PNG files.

Each function takes plain arrays (see :mod:`ngff_dreg.report.data`) and a
path, writes one PNG and returns the path. No pyplot state is used, so the
functions are safe in threads and notebooks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.interfaces import BlockRegStatus
from ngff_dreg.io.omezarr.output_state import StageReport
from ngff_dreg.report.data import ImagePlanes

__all__ = [
    "block_status_figure",
    "checkerboard",
    "colour_overlay",
    "displacement_figure",
    "jacobian_figure",
    "registration_figure",
    "timings_figure",
]

FloatArray = npt.NDArray[np.float64]

_DPI = 100
_STATUS_COLOURS = {
    int(BlockRegStatus.SUCCESS): "#2ca02c",
    int(BlockRegStatus.FAILURE): "#d62728",
    int(BlockRegStatus.NO_SIGNAL): "#c7c7c7",
    int(BlockRegStatus.OUT_OF_BOUNDS): "#9467bd",
    int(BlockRegStatus.METHOD_ERROR): "#8c564b",
    int(BlockRegStatus.LOW_QUALITY): "#ff7f0e",
}


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI, facecolor="white")
    return path


def _normalise(a: FloatArray) -> FloatArray:
    """Robust rescale to ``[0, 1]`` (1st–99.5th percentile)."""
    a = np.nan_to_num(np.asarray(a, dtype=np.float64))
    lo, hi = np.percentile(a, [1.0, 99.5]) if a.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


def checkerboard(a: FloatArray, b: FloatArray, tiles: int = 8) -> FloatArray:
    """Interleave two equally shaped 2D images in a ``tiles``×``tiles`` checkerboard."""
    rows, cols = a.shape
    r = (np.arange(rows) * tiles // max(rows, 1))[:, None]
    c = (np.arange(cols) * tiles // max(cols, 1))[None, :]
    return np.where((r + c) % 2 == 0, a, b)


def colour_overlay(a: FloatArray, b: FloatArray) -> FloatArray:
    """RGB overlay: ``a`` in magenta, ``b`` in green (grey where they agree)."""
    return np.stack([a, b, a], axis=-1)


def registration_figure(planes: Sequence[ImagePlanes], path: Path) -> Path:
    """Checkerboard and colour overlay of fixed vs moving, before and after.

    One row per plane; columns: checkerboard before, checkerboard after,
    overlay before, overlay after.
    """
    n = len(planes)
    fig = _figure(13.0, 3.3 * n + 0.4)
    axes = fig.subplots(n, 4, squeeze=False)
    titles = ("checkerboard, before", "checkerboard, after", "overlay, before", "overlay, after")
    for i, p in enumerate(planes):
        f = _normalise(p.fixed)
        # Same intensity scaling for before and after: only the geometry changes.
        m_scale = np.concatenate([p.before.ravel(), p.after.ravel()])
        lo, hi = np.percentile(np.nan_to_num(m_scale), [1.0, 99.5])
        hi = hi if hi > lo else lo + 1.0

        def norm(x: FloatArray, lo: float = lo, hi: float = hi) -> FloatArray:
            return np.clip((np.nan_to_num(x) - lo) / (hi - lo), 0.0, 1.0)

        before, after = norm(p.before), norm(p.after)
        images = (
            checkerboard(f, before),
            checkerboard(f, after),
            colour_overlay(f, before),
            colour_overlay(f, after),
        )
        for j, img in enumerate(images):
            ax = axes[i, j]
            kw: dict[str, Any] = {"cmap": "gray", "vmin": 0, "vmax": 1} if img.ndim == 2 else {}
            ax.imshow(img, extent=p.plane.extent, interpolation="nearest", **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=10)
            if j == 0:
                ax.set_ylabel(p.plane.name, fontsize=9)
    return _save(fig, path)


def displacement_figure(
    planes: Sequence[ImagePlanes],
    displacements: Sequence[FloatArray],
    path: Path,
    *,
    unit: str | None = None,
    grid_lines: int = 16,
) -> Path:
    """Deformable displacement magnitude and a deformed grid on each plane.

    ``displacements[i]`` is ``(rows, cols, ndim)`` in NumPy component order
    and physical units. The grid is drawn in the plane's physical coordinates
    moved by the in-plane components of the displacement.
    """
    n = len(planes)
    fig = _figure(9.0, 3.4 * n + 0.4)
    axes = fig.subplots(n, 2, squeeze=False)
    vmax = max((float(np.linalg.norm(d, axis=-1).max()) for d in displacements), default=0.0)
    vmax = vmax if vmax > 0 else 1.0
    label = f"|d| ({unit})" if unit else "|d|"
    for i, (p, d) in enumerate(zip(planes, displacements)):
        mag = np.linalg.norm(d, axis=-1)
        ax = axes[i, 0]
        im = ax.imshow(mag, extent=p.plane.extent, cmap="viridis", vmin=0, vmax=vmax)
        fig.colorbar(im, ax=ax, shrink=0.85, label=label)
        ax.set_ylabel(p.plane.name, fontsize=9)
        if i == 0:
            ax.set_title("deformable displacement magnitude", fontsize=10)
        ax = axes[i, 1]
        ax.imshow(_normalise(p.fixed), extent=p.plane.extent, cmap="gray", alpha=0.5)
        ra, ca = p.plane.axes
        # physical in-plane coordinates of each pixel (axis-aligned display)
        left, right, bottom, top = p.plane.extent
        rows, cols = mag.shape
        y0 = top + (bottom - top) * (np.arange(rows) + 0.5) / rows
        x0 = left + (right - left) * (np.arange(cols) + 0.5) / cols
        yy, xx = np.meshgrid(y0, x0, indexing="ij")
        yy = yy + d[..., ra]
        xx = xx + d[..., ca]
        rstep = max(1, rows // grid_lines)
        cstep = max(1, cols // grid_lines)
        for r in range(0, rows, rstep):
            ax.plot(xx[r, :], yy[r, :], color="#d62728", lw=0.7)
        for c in range(0, cols, cstep):
            ax.plot(xx[:, c], yy[:, c], color="#d62728", lw=0.7)
        ax.set_xlim(left, right)
        ax.set_ylim(bottom, top)
        ax.set_aspect("equal")
        if i == 0:
            ax.set_title("deformed grid (in-plane components)", fontsize=10)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def jacobian_figure(
    planes: Sequence[tuple[str, FloatArray, tuple[float, float, float, float]]],
    histogram: tuple[npt.NDArray[np.int64], FloatArray, Mapping[str, float]] | None,
    path: Path,
) -> Path:
    """Jacobian determinant on the mid-planes, and its histogram.

    Blue is compression (< 1), red expansion (> 1); black contours mark folds
    (determinant ≤ 0).
    """
    from matplotlib.colors import TwoSlopeNorm

    n = len(planes)
    fig = _figure(4.0 * (n + 1), 3.8)
    axes = fig.subplots(1, n + 1, squeeze=False)[0]
    finite = [p[np.isfinite(p)] for _, p, _ in planes]
    lo = min((float(v.min()) for v in finite if v.size), default=0.5)
    hi = max((float(v.max()) for v in finite if v.size), default=1.5)
    lo, hi = min(lo, 0.99), max(hi, 1.01)
    norm = TwoSlopeNorm(vmin=lo, vcenter=1.0, vmax=hi)
    im = None
    for ax, (name, data, extent) in zip(axes, planes):
        im = ax.imshow(data, extent=extent, cmap="RdBu_r", norm=norm, interpolation="nearest")
        if np.nanmin(data) <= 0 < np.nanmax(data) and min(data.shape) > 1:
            ax.contour(data, levels=[0.0], colors="k", linewidths=0.8, extent=extent,
                       origin="upper")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if im is not None:
        fig.colorbar(im, ax=list(axes[:n]), shrink=0.8, label="det J")
    ax = axes[n]
    if histogram is not None:
        counts, edges, stats = histogram
        centres = 0.5 * (edges[:-1] + edges[1:])
        colours = ["#d62728" if c <= 0 else "#1f77b4" for c in centres]
        ax.bar(centres, counts, width=np.diff(edges), color=colours, log=bool(counts.max() > 0))
        ax.axvline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xlabel("det J (end bins hold the clipped tails)")
        ax.set_ylabel("field voxels")
        ax.set_title(
            f"min {stats['min']:.3f}, folded {100 * stats['folded_fraction']:.3f} %", fontsize=10
        )
    else:
        ax.text(0.5, 0.5, "no Jacobian map", ha="center", va="center")
        ax.set_axis_off()
    return _save(fig, path)


def _montage(grid: npt.NDArray[Any], max_slices: int = 12) -> tuple[npt.NDArray[Any], int]:
    """Tile the z-slices of a 3D block grid side by side (2D grids pass through)."""
    if grid.ndim == 2:
        return grid, 1
    picks = np.unique(np.linspace(0, grid.shape[0] - 1, min(grid.shape[0], max_slices)).round())
    sl = [grid[int(k)] for k in picks]
    fill = np.nan if grid.dtype.kind == "f" else -1
    pad = np.full((grid.shape[1], 1), fill, dtype=grid.dtype)
    parts: list[npt.NDArray[Any]] = []
    for k, s in enumerate(sl):
        if k:
            parts.append(pad)
        parts.append(s)
    return np.concatenate(parts, axis=1), len(sl)


def block_status_figure(stages: Sequence[StageReport], path: Path) -> Path:
    """Per-stage map of block status codes (and per-block metric when recorded).

    3D block grids are shown as their z-slices side by side, left to right.
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    block_stages = [s for s in stages if s.status is not None and np.asarray(s.status).size]
    n = max(1, len(block_stages))
    has_metric = any(s.block_metric is not None for s in block_stages)
    cols = 2 if has_metric else 1
    fig = _figure(8.0 * cols, 2.6 * n + 0.9)
    axes = fig.subplots(n, cols, squeeze=False)
    codes = sorted(_STATUS_COLOURS)
    cmap = ListedColormap(["white"] + [_STATUS_COLOURS[c] for c in codes])
    norm = BoundaryNorm(np.arange(-1.5, len(codes) + 0.5), cmap.N)
    if not block_stages:
        axes[0, 0].text(0.5, 0.5, "no block stage recorded", ha="center", va="center")
        axes[0, 0].set_axis_off()
    for i, st in enumerate(block_stages):
        status = np.asarray(st.status)
        tiled, nz = _montage(status.astype(np.int16))
        ax = axes[i, 0]
        ax.imshow(tiled, cmap=cmap, norm=norm, interpolation="nearest")
        _block_gridlines(ax, tiled.shape)
        ok = int((status == BlockRegStatus.SUCCESS).sum())
        shape = "×".join(str(s) for s in status.shape)
        z_note = f", {nz} z-slices left to right" if status.ndim == 3 else ""
        ax.set_title(
            f"{st.name} (level {st.fixed_level}, {st.method}): {ok}/{status.size} blocks OK, "
            f"grid {shape}{z_note}",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        if has_metric:
            ax = axes[i, 1]
            if st.block_metric is not None and st.block_metric.shape == status.shape:
                tm, _ = _montage(st.block_metric.astype(np.float64))
                im = ax.imshow(tm, cmap="magma", interpolation="nearest")
                fig.colorbar(im, ax=ax, shrink=0.8, label="block metric")
            ax.set_xticks([])
            ax.set_yticks([])
    present = sorted({int(v) for s in block_stages for v in np.unique(np.asarray(s.status))})
    handles = [
        Patch(color=_STATUS_COLOURS.get(c, "black"), label=_status_name(c)) for c in present
    ]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
                   fontsize=9)
    return _save(fig, path)


def _block_gridlines(ax: Any, shape: tuple[int, ...]) -> None:
    """Thin lines between blocks."""
    if max(shape) > 80:
        return
    for r in np.arange(-0.5, shape[0], 1.0):
        ax.axhline(r, color="white", lw=0.6)
    for c in np.arange(-0.5, shape[1], 1.0):
        ax.axvline(c, color="white", lw=0.6)


def _status_name(code: int) -> str:
    try:
        return BlockRegStatus(code).name
    except ValueError:
        return f"code {code}"


def timings_figure(stages: Sequence[StageReport], path: Path) -> Path:
    """Wall time per stage (bars) and NCC before/after each stage (markers)."""
    fig = _figure(10.0, 3.6)
    ax_t, ax_n = fig.subplots(1, 2)
    names = [s.name for s in stages] or ["(none)"]
    seconds = [s.seconds if math.isfinite(s.seconds) else 0.0 for s in stages] or [0.0]
    y = np.arange(len(names))
    ax_t.barh(y, seconds, color="#1f77b4")
    ax_t.set_yticks(y, names)
    ax_t.invert_yaxis()
    ax_t.set_xlabel("seconds")
    ax_t.set_title(f"wall time per stage (sum {sum(seconds):.1f} s)", fontsize=10)
    for yi, s in zip(y, seconds):
        ax_t.text(s, yi, f" {s:.1f}", va="center", fontsize=8)
    before = [np.nan if s.ncc_before is None else s.ncc_before for s in stages]
    after = [np.nan if s.ncc_after is None else s.ncc_after for s in stages]
    x = np.arange(len(stages))
    ax_n.plot(x, before, "o", color="#7f7f7f", label="before")
    ax_n.plot(x, after, "s", color="#2ca02c", label="after")
    for xi, b, a in zip(x, before, after):
        if np.isfinite(b) and np.isfinite(a):
            ax_n.annotate("", (xi, a), (xi, b), arrowprops={"arrowstyle": "->", "color": "k"})
    ax_n.set_xticks(x, [s.name for s in stages])
    ax_n.set_ylabel("NCC (global level)")
    ax_n.set_title("similarity before / after each stage", fontsize=10)
    ax_n.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
