"""``ngff-dreg view``: neuroglancer on the output's viewer scene, rendered by headless Chromium."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from ngff_dreg.cli import app
from ngff_dreg.errors import InvalidInputDataError
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.io.omezarr.image_writer import write_multiscale
from ngff_dreg.io.omezarr.view_writer import VIEW_FIXED, VIEW_GROUP, VIEW_RESAMPLED, view_scene


def _blobs(shape: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    out = np.zeros(shape, np.float32)
    for cy, cx, r in ((40, 50, 14), (90, 120, 20), (130, 60, 10), (60, 140, 12)):
        out += np.exp(-((yy - cy - shift[0]) ** 2 + (xx - cx - shift[1]) ** 2) / (2 * r**2))
    return out


def _output(tmp_path: Path, shift: tuple[int, int]) -> str:
    """A viewer scene like register --resample writes: fixed, and a moving image on its grid."""
    out = tmp_path / f"out{shift[0]}.zarr"
    geom = ImageGeometry((160, 192), (0.5, 0.5), (0.0, 0.0), None, "micrometer")
    write_multiscale(str(out / VIEW_FIXED), _blobs(geom.shape, (0, 0)), geom, n_levels=2)
    write_multiscale(str(out / VIEW_RESAMPLED), _blobs(geom.shape, shift), geom, n_levels=2)
    meta = {"zarr_format": 3, "node_type": "group", "attributes": {"ome": view_scene()}}
    (out / VIEW_GROUP / "zarr.json").write_text(json.dumps(meta))
    (out / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                               "attributes": {}}))
    return str(out)


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"), dtype=float)


def test_view_refuses_an_output_without_a_viewer_scene(tmp_path):
    pytest.importorskip("neuroglancer")
    from ngff_dreg.view import open_viewer

    (tmp_path / "old.zarr" / "moving_resampled").mkdir(parents=True)
    with pytest.raises(InvalidInputDataError, match="rerun register with --resample"):
        open_viewer(str(tmp_path / "old.zarr"))


def test_screenshot_shows_both_layers_aligned(tmp_path):
    pytest.importorskip("neuroglancer")
    pytest.importorskip("PIL")
    from ngff_dreg.view import find_browser

    if find_browser() is None:
        pytest.skip("no Chromium (apt-get install chromium)")
    pics = {}
    for shift in ((0, 0), (12, 0)):
        png = tmp_path / f"view{shift[0]}.png"
        res = CliRunner().invoke(app, ["view", _output(tmp_path, shift), "--screenshot", str(png),
                                       "--size", "400x320"])
        assert res.exit_code == 0, res.output
        assert res.output.startswith("http://127.0.0.1:")
        pics[shift] = _png(png)
    aligned, shifted = pics[(0, 0)], pics[(12, 0)]
    assert aligned.shape[:2] == (320, 400)
    for pic in (aligned, shifted):  # magenta and green only: red == blue everywhere
        np.testing.assert_allclose(pic[..., 0], pic[..., 2], atol=2)
    # aligned: where the image is bright, green (fixed) and magenta (moving) are equal,
    # so both layers are drawn, on top of each other
    data = ~np.all(aligned == 128, axis=-1)  # 128 grey: outside the images
    red, green = aligned[..., 0], aligned[..., 1]
    bright = data & (green > 60)
    assert bright.mean() > 0.01, "nothing drawn"
    assert np.abs(red - green)[bright].mean() < 15
    # shifted by 12 voxels: each layer shows on its own, in its own colour
    only_fixed = (shifted[..., 1] - shifted[..., 0]) > 40
    only_moving = (shifted[..., 0] - shifted[..., 1]) > 40
    assert only_fixed.sum() > 100 and only_moving.sum() > 100
    assert np.abs(red - green)[bright].mean() < np.abs(
        shifted[..., 0] - shifted[..., 1])[bright].mean()
