"""The report's figures, each drawn from synthetic arrays into a PNG (no registration run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.interfaces import BlockRegStatus
from ngff_dreg.io.omezarr.output_state import StageReport
from ngff_dreg.report import figures
from ngff_dreg.report.data import ImagePlanes, mid_planes


def _png(path: Path) -> np.ndarray:
    import matplotlib.image

    img = np.asarray(matplotlib.image.imread(str(path)), dtype=np.float64)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].var()) > 1e-3, f"{path.name} looks blank"
    return img


def _planes(ndim: int = 3) -> tuple[list[ImagePlanes], ImageGeometry]:
    geom = ImageGeometry((20, 24, 28)[:ndim], (1.0, 1.5, 2.0)[:ndim], (0.0,) * ndim)
    rng = np.random.default_rng(ndim)
    out = []
    for plane in mid_planes(geom):
        fixed = rng.random(plane.shape)
        out.append(ImagePlanes(plane, fixed, np.roll(fixed, 2, axis=0), fixed + 0.01))
    return out, geom


def test_checkerboard_and_overlay() -> None:
    a, b = np.zeros((8, 8)), np.ones((8, 8))
    board = figures.checkerboard(a, b, tiles=2)
    assert board[0, 0] == 0 and board[0, 7] == 1 and board[7, 0] == 1 and board[7, 7] == 0
    assert board.mean() == 0.5
    rgb = figures.colour_overlay(a, b)
    assert rgb.shape == (8, 8, 3)
    np.testing.assert_array_equal(rgb[..., 0], a)
    np.testing.assert_array_equal(rgb[..., 1], b)
    np.testing.assert_array_equal(rgb[..., 2], a)


@pytest.mark.parametrize("ndim", [2, 3])
def test_registration_and_displacement_figures(tmp_path: Path, ndim: int) -> None:
    planes, _ = _planes(ndim)
    assert len(planes) == (3 if ndim == 3 else 1)
    reg = _png(figures.registration_figure(planes, tmp_path / "registration.png"))
    disp = [np.full((*p.plane.shape, ndim), 0.5) for p in planes]
    dsp = _png(figures.displacement_figure(planes, disp, tmp_path / "d.png", unit="mm"))
    # one row of panels per plane
    assert reg.shape[0] > (2.5 * len(planes)) * 100 * 0.9
    assert dsp.shape[0] > (2.5 * len(planes)) * 100 * 0.9
    # a zero displacement still draws (the colour scale falls back to 1)
    zero = [np.zeros((*p.plane.shape, ndim)) for p in planes]
    _png(figures.displacement_figure(planes, zero, tmp_path / "zero.png"))


def test_jacobian_figure_with_and_without_histogram(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = 1.0 + 0.3 * rng.standard_normal((16, 16))
    data[3, 3] = -0.2  # a fold: contoured
    planes = [(f"plane {k}", data, (0.0, 16.0, 16.0, 0.0)) for k in range(3)]
    edges = np.linspace(-0.5, 3.0, 11)
    counts = np.histogram(np.clip(data, -0.5, 3.0), edges)[0]
    stats = {"min": float(data.min()), "max": float(data.max()), "mean": 1.0,
             "folded_fraction": 1 / 256, "n": 256.0}
    _png(figures.jacobian_figure(planes, (counts, edges, stats), tmp_path / "j.png"))
    _png(figures.jacobian_figure(planes, None, tmp_path / "j0.png"))


def _stages() -> list[StageReport]:
    status3 = np.zeros((2, 3, 4), dtype=np.int16)
    status3[0, 0, :2] = BlockRegStatus.NO_SIGNAL
    status3[1, 2, 3] = BlockRegStatus.LOW_QUALITY
    status2 = np.array([[0, 1], [4, 0]], dtype=np.int16)
    metric = np.linspace(-1, 0, status3.size).reshape(status3.shape)
    return [
        StageReport("global", 2, 2, "rigid+affine", ncc_before=0.4, ncc_after=0.8, seconds=3.5),
        StageReport("stage 0", 1, 1, "bspline", status=status3, ncc_before=0.8, ncc_after=0.9,
                    seconds=12.0, report={"block_metric": metric.tolist()}),
        StageReport("stage 1", 0, 0, "translation", status=status2, ncc_before=None,
                    ncc_after=0.95, seconds=float("nan")),
    ]


def test_block_status_and_timings_figures(tmp_path: Path) -> None:
    stages = _stages()
    assert stages[1].block_metric is not None and stages[2].block_metric is None
    _png(figures.block_status_figure(stages, tmp_path / "blocks.png"))
    _png(figures.timings_figure(stages, tmp_path / "timings.png"))
    # nothing recorded: a placeholder figure, not an error
    assert (figures.block_status_figure([], tmp_path / "none.png")).is_file()
    assert (figures.timings_figure([], tmp_path / "none_t.png")).is_file()


def test_montage_tiles_z_slices() -> None:
    grid = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    tiled, n = figures._montage(grid)
    assert n == 2 and tiled.shape == (3, 4 + 1 + 4)
    assert (tiled[:, 4] == -1).all()  # the separator column
    flat, n2 = figures._montage(grid[0])
    assert n2 == 1 and flat is not None and flat.shape == (3, 4)
