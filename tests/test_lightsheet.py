"""Lightsheet data end to end: a c,z,y,x uint16 anisotropic pair written by ngff-zarr.

The pair is derived from real volumes (:func:`ngff_dreg.demo.load_fluorescence_volume`,
z spacing 3x x/y), the fixed image a known warp of the moving one. The command line
registers one channel, resamples both on the fixed image's own pyramid, and maps a
spot table; a t,c,z,y,x image is registered at one time point and resampled at all.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ngff_dreg.demo import FLUORESCENCE_CHANNELS, demo_truth, load_fluorescence_volume
from ngff_dreg.errors import SelectionNotFoundError
from ngff_dreg.io.omezarr.multiscale import open_multiscale
from ngff_dreg.synthetic import warp_to_fixed

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

COLOURS = ("0000FF", "00FF00")


def _write_with_ngff_zarr(url: str, data: np.ndarray, spacing_zyx: tuple[float, ...]) -> None:
    """c,z,y,x uint16 with omero labels; level 1 keeps z, level 2 halves it (ngff-zarr)."""
    import ngff_zarr as nz
    from ngff_zarr.v04.zarr_metadata import Omero, OmeroChannel, OmeroWindow

    dims = ["c", "z", "y", "x"]
    img = nz.to_ngff_image(
        data, dims=dims, scale=dict(zip(dims[1:], spacing_zyx)),
        translation={d: 0.0 for d in dims[1:]}, axes_units={d: "millimeter" for d in dims[1:]},
    )
    ms = nz.to_multiscales(img, scale_factors=[{"z": 1, "y": 2, "x": 2}, {"z": 2, "y": 4, "x": 4}],
                           chunks={"c": 1, "z": 16, "y": 32, "x": 32})
    ms.metadata.omero = Omero(channels=[
        OmeroChannel(color=c, label=lbl, window=OmeroWindow(min=0.0, max=65535.0, start=100.0,
                                                             end=3000.0 + 500 * i))
        for i, (c, lbl) in enumerate(zip(COLOURS, FLUORESCENCE_CHANNELS))
    ])
    nz.to_ngff_zarr(url, ms, version="0.5", overwrite=True)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    spacing = (12.0, 4.0, 4.0)
    moving, geom = load_fluorescence_volume(spacing)
    truth = demo_truth(geom, max_displacement_voxels=0.5, degrees=2.0)
    fixed = np.stack([
        np.clip(np.rint(warp_to_fixed(ch.astype(np.float32), geom, geom, truth)), 0, 65535)
        for ch in moving
    ]).astype(np.uint16)
    root = tmp_path_factory.mktemp("lightsheet")
    urls = {"fixed": str(root / "fixed.ome.zarr"), "moving": str(root / "moving.ome.zarr")}
    _write_with_ngff_zarr(urls["fixed"], fixed, spacing)
    _write_with_ngff_zarr(urls["moving"], moving, spacing)
    return {**urls, "root": root, "truth": truth, "geometry": geom, "moving_data": moving}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ngff_dreg.cli", *args], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ))


@pytest.fixture(scope="module")
def registered(pair: dict[str, Any], dask_client: Any) -> str:
    out = str(pair["root"] / "registration.ome.zarr")
    proc = _cli("register", pair["fixed"], pair["moving"], "-o", out,
                "--fixed-channel", "0", "--moving-channel", "0", "--resample",
                "--levels", "0", "--block-size", "16", "--method", "translation",
                "--scheduler", dask_client.scheduler.address, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_resample_writes_every_channel_as_uint16_on_the_fixed_pyramid(
        pair: dict[str, Any], registered: str) -> None:
    from ngff_dreg.io.omezarr.transform_reader import read_transform

    fixed = open_multiscale(pair["fixed"])
    out = open_multiscale(f"{registered}/view/moving_resampled")
    assert [a.name for a in out.multiscale.axes] == ["c", "z", "y", "x"]
    assert out.multiscale.axes[0].type == "channel"
    assert len(out.levels) == len(fixed.levels) == 3
    for lo, lf in zip(out.levels, fixed.levels):
        assert lo.dtype == np.uint16
        assert lo.shape[0] == 2
        # z spacing (and x/y) of every level is the fixed image's: z kept on level 1
        np.testing.assert_allclose(lo.geometry.spacing, lf.geometry.spacing)
    assert [lv.geometry.spacing[2] for lv in out.levels] == [12.0, 12.0, 24.0]
    assert out.channel_labels == FLUORESCENCE_CHANNELS
    assert [c["color"] for c in out.omero["channels"]] == list(COLOURS)
    assert out.omero["channels"][1]["window"]["end"] == 3500.0
    # Each channel is the moving channel through the written transform, rounded to uint16.
    tx = read_transform(registered)
    geom = pair["geometry"]
    level0 = np.asarray(out.open_array(0)[...])
    idx = np.argwhere(np.ones(geom.shape, dtype=bool)).astype(np.float64)
    mapped = geom.physical_to_index(tx.transform_points(geom.array_index_to_physical(idx)))
    inside = np.all((mapped[:, ::-1] > 1) & (mapped[:, ::-1] < np.asarray(geom.shape) - 2),
                    axis=1).reshape(geom.shape)  # away from the edge, where fill rules differ
    assert inside.mean() > 0.5
    for c in (0, 1):
        expect = warp_to_fixed(pair["moving_data"][c].astype(np.float32), geom, geom, tx)
        diff = np.abs(level0[c].astype(np.float64) - np.clip(np.rint(expect), 0, 65535))
        assert np.mean(diff[inside] <= 1.0) > 0.99, (c, float(diff[inside].max()))
    assert level0[1].mean() > 50 and not np.array_equal(level0[0], level0[1])


def test_registration_recovers_the_known_warp(pair: dict[str, Any], registered: str) -> None:
    from ngff_dreg.demo import point_errors
    from ngff_dreg.io.omezarr.transform_reader import read_transform
    from ngff_dreg.transforms import AffineTransform

    geom = pair["geometry"]
    mask = pair["moving_data"][0] > 800
    ours = point_errors(read_transform(registered), pair["truth"], geom, mask=mask)
    none = point_errors(AffineTransform.identity(3), pair["truth"], geom, mask=mask)
    assert ours["mean"] < 0.35 * none["mean"], (ours, none)


def test_transform_points_cli_maps_a_csv_like_the_itk_transform(
        pair: dict[str, Any], registered: str, dask_client: Any, tmp_path: Path) -> None:
    from ngff_dreg.io.omezarr.transform_reader import read_transform, to_itk_transform

    geom = pair["geometry"]
    rng = np.random.default_rng(3)
    idx = rng.uniform(0, 1, (1000, 3)) * (np.asarray(geom.shape) - 1)
    pts = geom.array_index_to_physical(idx)
    table = pd.DataFrame({"id": np.arange(1000) * 7 + 11, "x": pts[:, 0], "y": pts[:, 1],
                          "z": pts[:, 2], "gene": rng.choice(["Gad1", "Slc17a7"], 1000)})
    src = tmp_path / "spots.csv"
    table.to_csv(src, index=False)
    voxel = min(geom.spacing)
    for inverse in (False, True):
        dst = tmp_path / f"mapped_{inverse}.csv"
        args = ["transform-points", registered, str(src), "-o", str(dst), "--blocksize", "20000",
                "--scheduler", dask_client.scheduler.address]
        proc = _cli(*args, *(["--inverse"] if inverse else []))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "partition" in proc.stdout and not proc.stdout.startswith("1 partition")
        mapped = pd.read_csv(dst)
        assert list(mapped.columns) == ["id", "x", "y", "z", "gene"]
        pd.testing.assert_series_equal(mapped["id"], table["id"])
        pd.testing.assert_series_equal(mapped["gene"], table["gene"])
        got = mapped[["x", "y", "z"]].to_numpy()
        ours = read_transform(registered, inverse=inverse)
        np.testing.assert_allclose(got, ours.transform_points(pts), rtol=0, atol=1e-9)
        itk_tx = to_itk_transform(registered, inverse=inverse)
        expect = np.array([itk_tx.TransformPoint([float(v) for v in p]) for p in pts])
        # ITK drops the displacement to zero beyond the field's grid, where ours keeps the
        # edge value: compare where the field is sampled inside its grid (every point of
        # the forward map, which starts in the fixed image).
        at = ours.affine.transform_points(pts) if inverse else pts  # where the field is read
        fidx = ours.field.geometry.physical_to_index(at)
        within = np.all((fidx >= 0) & (fidx <= np.asarray(ours.field.geometry.size) - 1), axis=1)
        assert within.mean() > (0.5 if inverse else 0.999)
        assert np.abs(got - expect)[within].max() < 1e-3 * voxel
        assert np.abs(got - pts).max() > voxel  # it did move them


def test_unknown_channel_label_names_the_image_and_lists_labels(
        pair: dict[str, Any], tmp_path: Path) -> None:
    import ngff_dreg

    out = tmp_path / "never.zarr"
    with pytest.raises(SelectionNotFoundError) as err:
        ngff_dreg.register(pair["fixed"], pair["moving"], str(out), moving_channel="GFP",
                           client="local:1", progress=False)
    msg = str(err.value)
    assert "moving.ome.zarr" in msg and "'GFP'" in msg and "'nuclei'" in msg and "'myelin'" in msg
    assert not out.exists()
    proc = _cli("register", pair["fixed"], pair["moving"], "-o", str(out),
                "--fixed-channel", "7", "--no-progress")
    assert proc.returncode == 2 and "fixed.ome.zarr" in proc.stderr
    assert "channel index 7 out of range" in proc.stderr and "'myelin'" in proc.stderr
    assert not out.exists()


def test_tczyx_registers_one_time_point_and_resamples_all(
        tmp_path: Path, dask_client: Any) -> None:
    """Time point 0 is blank (registering it would fail); t=1 holds the data."""
    import ngff_dreg
    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.io.omezarr.image_writer import LeadingAxis, write_multiscale
    from ngff_dreg.schedule import BlockStage, GlobalStage, Schedule
    from ngff_dreg.synthetic import textured_phantom
    from ngff_dreg.transforms import AffineTransform

    geom = ImageGeometry((16, 32, 32), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), unit="micrometer")
    base = textured_phantom(geom.shape, seed=5, blobs=40, texture=0.3) * 1000.0
    shift = AffineTransform.from_arrays(np.eye(3), np.array([1.5, -1.0, 0.0]))
    warped = warp_to_fixed(base.astype(np.float32), geom, geom, shift)

    def series(first: np.ndarray, second: np.ndarray) -> np.ndarray:
        out = np.zeros((3, 2, *geom.shape), dtype=np.uint16)
        out[1, 0], out[1, 1] = first, 0.5 * first
        out[2, 0], out[2, 1] = second, 0.25 * second
        return out

    lead = (LeadingAxis("t", "time", "second", 30.0), LeadingAxis("c", "channel"))
    fixed, moving = str(tmp_path / "fixed.zarr"), str(tmp_path / "moving.zarr")
    omero = {"channels": [{"label": "DAPI", "color": "0000FF"}, {"label": "GFP",
                                                                  "color": "00FF00"}]}
    write_multiscale(fixed, series(warped, warped), geom, leading_axes=lead, chunks=16,
                     n_levels=2, factors=[(1, 2, 2)], omero=omero)
    write_multiscale(moving, series(base, base), geom, leading_axes=lead, chunks=16, n_levels=2,
                     factors=[(1, 2, 2)], omero={"channels": omero["channels"][::-1]})
    schedule = Schedule(GlobalStage(level=0, kinds=("rigid",)),
                        [BlockStage(level=0, block_size=16, overlap=0.5, method="translation")])
    out = str(tmp_path / "out.zarr")
    ngff_dreg.register(fixed, moving, out, schedule=schedule, client=dask_client,
                       fixed_time=1, moving_time=-2, fixed_channel="DAPI", moving_channel="DAPI",
                       resample=True, resample_channels=["GFP"], progress=False)
    res = open_multiscale(f"{out}/view/moving_resampled")
    assert [a.name for a in res.multiscale.axes] == ["t", "c", "z", "y", "x"]
    assert res.levels[0].shape == (3, 1, *geom.shape)
    assert res.channel_labels == ("GFP",)
    assert res.multiscale.levels[0].scale[0] == 30.0
    assert [lv.geometry.spacing[2] for lv in res.levels] == [3.0, 3.0]
    data = np.asarray(res.open_array(0)[...]).astype(np.float64)
    assert data[0].max() == 0  # blank time point stays blank
    inner = (slice(None), slice(3, -3), slice(3, -3), slice(3, -3))
    # moving GFP is its channel 0 (labels reversed): base, registered onto the fixed warp
    err1 = np.abs(data[1, 0][inner[1:]] - warped.astype(np.uint16)[inner[1:]]).mean()
    err0 = np.abs(data[1, 0][inner[1:]] - base.astype(np.uint16)[inner[1:]]).mean()
    assert err1 < 0.3 * err0, (err1, err0)
    np.testing.assert_array_equal(data[1], data[2])  # same planes at t=1 and t=2
