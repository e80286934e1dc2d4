"""write_multiscale: pyramids, metadata per version, offsets, interop, S3."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pytest
import zarr

from ngff_dreg.errors import (
    InvalidInputDataError,
    InvalidMetadataError,
    OutputExistsError,
    UnsupportedVersionError,
)
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.io.omezarr import image_writer
from ngff_dreg.io.omezarr.image_writer import level_geometries, write_multiscale
from ngff_dreg.io.omezarr.multiscale import open_multiscale


def _block_mean(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    pad = [(0, a.shape[i] % 2 if i in axes else 0) for i in range(a.ndim)]
    b = np.pad(a.astype(np.float64), pad, mode="edge")
    for ax in axes:
        shape = list(b.shape)
        shape[ax : ax + 1] = [b.shape[ax] // 2, 2]
        b = b.reshape(shape).mean(axis=ax + 1)
    return b


def _rotation(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # ITK order, about z


@pytest.mark.parametrize("version", ["0.4", "0.5", "0.6"])
@pytest.mark.parametrize("shape", [(21, 30, 27), (45, 38)])
def test_round_trip_geometry_and_pixels(
    tmp_path: Path, synthetic_array: Any, version: str, shape: tuple[int, ...]
) -> None:
    ndim = len(shape)
    data = synthetic_array(shape, seed=1)
    spacing = (0.5, 0.75, 2.0)[:ndim]
    origin = (10.0, -5.0, 3.0)[:ndim]
    geom = ImageGeometry(shape, spacing, origin, unit="micrometer")
    url = str(tmp_path / f"img{version}.zarr")
    write_multiscale(url, data, geom, version=version, chunks=8, n_levels=3)

    image = open_multiscale(url)
    assert image.version == version
    assert image.zarr_format == (2 if version == "0.4" else 3)
    expected = level_geometries(geom, 3)
    assert len(image.levels) == 3
    for lv, g in zip(image.levels, expected):
        assert lv.geometry.shape == g.shape
        np.testing.assert_allclose(lv.geometry.spacing, g.spacing)
        np.testing.assert_allclose(lv.geometry.origin, g.origin)
        assert lv.geometry.unit == "micrometer"
        assert lv.spatial_chunks == tuple(min(8, s) for s in g.shape)
    # pixel-centre offsets: origin_N = origin_0 + (spacing_N - spacing_0) / 2
    np.testing.assert_allclose(
        image.levels[2].geometry.origin,
        np.asarray(origin) + (4 * np.asarray(spacing) - np.asarray(spacing)) / 2,
    )
    np.testing.assert_array_equal(image.open_array(0)[...], data)
    l1 = _block_mean(data, tuple(range(ndim)))
    np.testing.assert_allclose(image.open_array(1)[...], l1, rtol=1e-5)
    np.testing.assert_allclose(
        image.open_array(2)[...], _block_mean(l1.astype(np.float32), tuple(range(ndim))),
        rtol=1e-5,
    )
    if version != "0.4":
        assert image.open_array(0).metadata.dimension_names == ("z", "y", "x")[-ndim:]


def test_metadata_layout_per_version(tmp_path: Path, synthetic_array: Any) -> None:
    data = synthetic_array((8, 10, 12))
    geom = ImageGeometry(data.shape, (1, 1, 1), (0, 0, 0), unit="micrometer")
    for version in ("0.4", "0.5", "0.6"):
        url = tmp_path / f"m{version}.zarr"
        write_multiscale(str(url), data, geom, version=version, n_levels=2)
        if version == "0.4":
            attrs = json.loads((url / ".zattrs").read_text())
            assert attrs["multiscales"][0]["version"] == "0.4"
            assert (url / ".zgroup").exists() and not (url / "zarr.json").exists()
        else:
            attrs = json.loads((url / "zarr.json").read_text())["attributes"]
            assert attrs["ome"]["version"] == version
            ms = attrs["ome"]["multiscales"][0]
            if version == "0.6":
                assert "coordinateSystems" in ms and "axes" not in ms
                ct = ms["datasets"][1]["coordinateTransformations"][0]
                assert ct["input"] == {"path": "1"} and ct["output"] == {"name": "physical"}
            else:
                assert "axes" in ms


def test_oblique_direction_survives_v06_round_trip(tmp_path: Path, synthetic_array: Any) -> None:
    data = synthetic_array((10, 12, 14))
    d = _rotation(0.35)
    geom = ImageGeometry(data.shape, (0.5, 0.6, 0.7), (1.0, 2.0, 3.0), d, "millimeter")
    url = str(tmp_path / "oblique.zarr")
    write_multiscale(url, data, geom, version="0.6", n_levels=2, chunks=8)
    image = open_multiscale(url)
    for lv, g in zip(image.levels, level_geometries(geom, 2)):
        np.testing.assert_allclose(lv.geometry.direction_matrix, d, atol=1e-12)
        np.testing.assert_allclose(lv.geometry.spacing, g.spacing)
        np.testing.assert_allclose(lv.geometry.origin, g.origin, atol=1e-12)
    # physical points agree voxel by voxel with the written geometry
    idx = np.array([[0, 0, 0], [9, 11, 13], [3, 7, 2]])
    np.testing.assert_allclose(
        image.levels[0].geometry.array_index_to_physical(idx), geom.array_index_to_physical(idx)
    )
    ms = json.loads((Path(url) / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    kinds = [t["type"] for t in ms["coordinateTransformations"][0]["transformations"]]
    assert kinds == ["rotation", "translation"]

    # a flip is not a rotation: stored as an affine, still round-trips
    flip = np.diag([1.0, -1.0, 1.0])
    geom2 = ImageGeometry(data.shape, (1, 1, 1), (0, 0, 0), flip, "millimeter")
    write_multiscale(url, data, geom2, version="0.6", n_levels=1, overwrite=True)
    np.testing.assert_allclose(open_multiscale(url).levels[0].geometry.direction_matrix, flip)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_oblique_direction_refused_before_0_6(
    tmp_path: Path, synthetic_array: Any, version: str
) -> None:
    data = synthetic_array((6, 6, 6))
    geom = ImageGeometry(data.shape, (1, 1, 1), (0, 0, 0), _rotation(0.2), "micrometer")
    url = tmp_path / "x.zarr"
    with pytest.raises(InvalidMetadataError, match=r"0\.6"):
        write_multiscale(str(url), data, geom, version=version)
    assert not url.exists()


def test_anisotropic_downsample_axes(tmp_path: Path, synthetic_array: Any) -> None:
    data = synthetic_array((6, 40, 44))
    geom = ImageGeometry(data.shape, (0.5, 0.5, 4.0), (0, 0, 0), unit="micrometer")
    url = str(tmp_path / "aniso.zarr")
    write_multiscale(url, data, geom, n_levels=3, downsample_axes=("y", "x"), chunks=16)
    image = open_multiscale(url)
    assert [lv.shape for lv in image.levels] == [(6, 40, 44), (6, 20, 22), (6, 10, 11)]
    assert image.levels[2].geometry.spacing == (2.0, 2.0, 4.0)
    assert image.levels[2].geometry.origin == (0.75, 0.75, 0.0)
    np.testing.assert_allclose(image.open_array(1)[...], _block_mean(data, (1, 2)), rtol=1e-5)


def test_dask_input_integer_dtype_and_default_levels(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 65535, size=(50, 70, 90), dtype=np.uint16)
    geom = ImageGeometry(data.shape, (1, 1, 1), (0, 0, 0), unit="micrometer")
    url = str(tmp_path / "u16.zarr")
    write_multiscale(url, da.from_array(data, chunks=(17, 23, 31)), geom, chunks=32)
    image = open_multiscale(url)
    # default: halve until the coarsest level fits one chunk along each axis
    assert [lv.shape for lv in image.levels] == [(50, 70, 90), (25, 35, 45), (13, 18, 23)]
    assert all(lv.dtype == np.uint16 for lv in image.levels)
    expected = np.clip(np.round(_block_mean(data, (0, 1, 2))), 0, 65535).astype(np.uint16)
    np.testing.assert_array_equal(image.open_array(1)[...], expected)


def test_output_exists_and_overwrite(tmp_path: Path, synthetic_array: Any) -> None:
    data = synthetic_array((8, 8, 8))
    geom = ImageGeometry(data.shape, (1, 1, 1), (0, 0, 0), unit="micrometer")
    url = str(tmp_path / "o.zarr")
    write_multiscale(url, data, geom, n_levels=2)
    with pytest.raises(OutputExistsError, match=r"o\.zarr"):
        write_multiscale(url, data, geom, n_levels=2)
    write_multiscale(url, data * 2, geom, version="0.4", n_levels=1, overwrite=True)
    image = open_multiscale(url)
    assert image.version == "0.4" and len(image.levels) == 1
    np.testing.assert_array_equal(image.open_array(0)[...], data * 2)


def test_metadata_written_last(
    tmp_path: Path, synthetic_array: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = synthetic_array((8, 8, 8))
    geom = ImageGeometry(data.shape, (1, 1, 1), (0, 0, 0), unit="micrometer")
    url = str(tmp_path / "interrupted.zarr")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("worker died")

    monkeypatch.setattr(image_writer, "_downsample", boom)
    with pytest.raises(RuntimeError, match="worker died"):
        write_multiscale(url, data, geom, n_levels=2)
    # level 0 chunks are on disk, but the group has no OME metadata
    assert zarr.open_group(url, mode="r").attrs.asdict() == {}
    assert (Path(url) / "0" / "zarr.json").exists()
    with pytest.raises(InvalidMetadataError, match="multiscales"):
        open_multiscale(url)


def test_invalid_arguments(tmp_path: Path, synthetic_array: Any) -> None:
    data = synthetic_array((8, 8, 8))
    geom = ImageGeometry(data.shape, (1, 1, 1), (0, 0, 0))
    url = str(tmp_path / "bad.zarr")
    with pytest.raises(UnsupportedVersionError):
        write_multiscale(url, data, geom, version="0.3")
    with pytest.raises(InvalidInputDataError, match="shape"):
        write_multiscale(url, data[:4], geom)
    with pytest.raises(InvalidInputDataError):
        write_multiscale(url, data, geom, downsample_axes=("w",))
    with pytest.raises(InvalidInputDataError):
        write_multiscale(url, data[None], ImageGeometry((1, 8, 8, 8), (1,) * 4, (0,) * 4))


def test_validates_with_ome_zarr_models(tmp_path: Path, synthetic_array: Any) -> None:
    from ome_zarr_models.v04 import Image as Image04
    from ome_zarr_models.v05 import Image as Image05

    data = synthetic_array((8, 12, 10))
    geom = ImageGeometry(data.shape, (0.5, 0.5, 1.0), (1, 2, 3), unit="micrometer")
    for version, model in (("0.4", Image04), ("0.5", Image05)):
        url = str(tmp_path / f"v{version}.zarr")
        write_multiscale(url, data, geom, version=version, n_levels=2)
        model.from_zarr(zarr.open_group(url, mode="r"))


def test_write_and_read_on_s3(s3_server: Any, synthetic_array: Any) -> None:
    bucket = s3_server.create_bucket()
    url = s3_server.url(bucket, "pyramid.zarr")
    opts = s3_server.storage_options()
    data = synthetic_array((12, 16, 20))
    geom = ImageGeometry(data.shape, (1, 1, 2), (0, 0, 0), unit="micrometer")
    write_multiscale(url, data, geom, version="0.5", n_levels=2, chunks=8, storage_options=opts)
    image = open_multiscale(url, opts)
    np.testing.assert_array_equal(image.open_array(0)[...], data)
    assert image.levels[1].geometry.spacing == (2.0, 2.0, 4.0)
    with pytest.raises(OutputExistsError, match=re.escape(f"s3://{bucket}/pyramid.zarr")):
        write_multiscale(url, data, geom, storage_options=opts)


def test_refuses_to_replace_non_zarr_directory(tmp_path: Path, synthetic_array: Any) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.txt").write_text("do not delete")
    data = synthetic_array((4, 4, 4))
    geom = ImageGeometry(data.shape, (1, 1, 1), (0, 0, 0), unit="micrometer")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="not a Zarr group"):
            write_multiscale(str(target), data, geom, overwrite=overwrite)
    assert (target / "thesis.txt").read_text() == "do not delete"
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    write_multiscale(str(empty), data, geom, n_levels=1)
    assert open_multiscale(str(empty)).levels[0].shape == (4, 4, 4)


def test_interop_with_ngff_zarr(tmp_path: Path, synthetic_array: Any) -> None:
    import ngff_zarr as nz

    data = synthetic_array((16, 20, 24))
    # ngff-zarr writes 0.6 -> we read it
    img = nz.to_ngff_image(
        data, dims=["z", "y", "x"], scale={"z": 2.0, "y": 0.5, "x": 0.25},
        translation={"z": 1.0, "y": 2.0, "x": 3.0},
        axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
    )
    url = str(tmp_path / "nz.zarr")
    nz.to_ngff_zarr(url, nz.to_multiscales(img, scale_factors=[2]), version="0.6")
    image = open_multiscale(url)
    assert image.version == "0.6"
    g0 = image.levels[0].geometry
    assert g0.spacing == (0.25, 0.5, 2.0) and g0.origin == (3.0, 2.0, 1.0)
    np.testing.assert_array_equal(image.open_array(0)[...], data)
    # we write 0.5 and 0.6 -> ngff-zarr reads the same scale/translation
    geom = ImageGeometry(data.shape, (0.25, 0.5, 2.0), (3.0, 2.0, 1.0), unit="micrometer")
    for version in ("0.5", "0.6"):
        ours = str(tmp_path / f"ours{version}.zarr")
        write_multiscale(ours, data, geom, version=version, n_levels=2, chunks=8)
        back = nz.from_ngff_zarr(ours)
        for level, g in zip(back.images, level_geometries(geom, 2)):
            assert level.scale == pytest.approx(dict(zip("xyz", g.spacing)))
            assert level.translation == pytest.approx(dict(zip("xyz", g.origin)))
        np.testing.assert_array_equal(np.asarray(back.images[0].data), data)


def test_dask_input_is_streamed_chunk_by_chunk(tmp_path: Path) -> None:
    from dask.callbacks import Callback

    data = da.random.default_rng(0).random((64, 64, 64), chunks=16)  # 2 MiB as float64
    geom = ImageGeometry(data.shape, (1, 1, 1), (0, 0, 0), unit="micrometer")
    biggest = [0]

    class Track(Callback):  # type: ignore[misc]
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker: Any) -> None:
            biggest[0] = max(biggest[0], int(getattr(result, "nbytes", 0)))

    with Track():
        write_multiscale(str(tmp_path / "s.zarr"), data, geom, chunks=16, n_levels=3)
    # the largest intermediate is one 32^3 float64 block feeding a 2x mean, never the volume
    assert 0 < biggest[0] <= 32**3 * 8 < data.nbytes
    np.testing.assert_allclose(
        open_multiscale(str(tmp_path / "s.zarr")).open_array(0)[...], data.compute()
    )


def test_leading_axes_factors_and_omero(tmp_path: Path) -> None:
    """t,c,z,y,x uint16: t/c never downsampled, z kept on level 1, integers rounded."""
    from ngff_dreg.io.omezarr.image_writer import LeadingAxis, pyramid_factors

    geom = ImageGeometry((6, 8, 10), (0.5, 0.5, 2.0), (1.0, 2.0, 3.0), unit="micrometer")
    data = np.zeros((2, 3, 6, 8, 10), dtype=np.float64)
    data[1, 2] = 10.6
    data[0, 1, :, :, ::2] = 70000.0  # clipped to 65535
    lead = (LeadingAxis("t", "time", "second", 5.0, 1.0), LeadingAxis("c", "channel"))
    url = str(tmp_path / "tczyx.zarr")
    write_multiscale(url, data, geom, chunks=4, dtype=np.uint16, leading_axes=lead,
                     factors=[(1, 2, 2), (2, 2, 2)], omero={"channels": [{"label": "a"}] * 3})
    image = open_multiscale(url)
    assert [a.name for a in image.multiscale.axes] == ["t", "c", "z", "y", "x"]
    assert [lv.shape for lv in image.levels] == [(2, 3, 6, 8, 10), (2, 3, 6, 4, 5),
                                                 (2, 3, 3, 2, 3)]
    assert pyramid_factors([lv.geometry for lv in image.levels]) == [(1, 2, 2), (2, 2, 2)]
    assert image.multiscale.levels[1].scale[:2] == (5.0, 1.0)
    assert image.multiscale.levels[1].translation[0] == 1.0
    np.testing.assert_allclose(image.levels[1].geometry.spacing, (1.0, 1.0, 2.0))
    np.testing.assert_allclose(image.levels[1].geometry.origin, (1.25, 2.25, 3.0))
    assert image.channel_labels == ("a", "a", "a")
    level0 = np.asarray(image.open_array(0)[...])
    assert level0.dtype == np.uint16 and level0[1, 2].max() == 11 and level0.max() == 65535
    assert np.asarray(image.open_array(1)[...])[1, 2].min() == 11
    arr = image.open_array(0)
    assert tuple(arr.chunks) == (1, 1, 4, 4, 4)


def test_leading_axes_with_shards(tmp_path: Path) -> None:
    """shards= is spatial: leading c/t axes get shards (and chunks) of 1, data round-trips."""
    from ngff_dreg.io.omezarr.image_writer import LeadingAxis

    geom = ImageGeometry((6, 8, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), unit="micrometer")
    data = np.arange(2 * 6 * 8 * 10, dtype=np.uint16).reshape(2, 6, 8, 10)
    url = str(tmp_path / "czyx.zarr")
    write_multiscale(url, data, geom, chunks=4, shards=8, n_levels=2,
                     leading_axes=(LeadingAxis("c", "channel"),))
    image = open_multiscale(url)
    arr = image.open_array(0)
    assert tuple(arr.chunks) == (1, 4, 4, 4)
    assert tuple(arr.shards) == (1, 8, 8, 8)
    np.testing.assert_array_equal(np.asarray(arr[...]), data)
    assert tuple(image.open_array(1).shards) == (1, 3, 4, 8)  # level 1 is (3, 4, 5)


def test_bad_factors_are_refused(tmp_path: Path) -> None:
    geom = ImageGeometry((6, 8, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), unit="micrometer")
    with pytest.raises(InvalidInputDataError, match="factors"):
        write_multiscale(str(tmp_path / "a.zarr"), np.zeros((6, 8, 10)), geom, factors=[(2, 2)])
    with pytest.raises(InvalidInputDataError, match="leading"):
        write_multiscale(str(tmp_path / "b.zarr"), np.zeros((2, 6, 8, 10)), geom)


def test_shards_auto_and_shards_that_are_not_whole_chunks(tmp_path: Path) -> None:
    """'auto' is 4 chunks per axis (capped); an edge that splits a chunk is refused, not rounded."""
    from ngff_dreg.errors import InvalidInputDataError

    geom = ImageGeometry((40, 24, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), unit="micrometer")
    data = np.arange(40 * 24 * 10, dtype=np.uint16).reshape(40, 24, 10)
    url = str(tmp_path / "auto.zarr")
    write_multiscale(url, data, geom, chunks=4, shards="auto", n_levels=1)
    arr = open_multiscale(url).open_array(0)
    assert tuple(arr.shards) == (16, 16, 12) and tuple(arr.chunks) == (4, 4, 4)
    np.testing.assert_array_equal(np.asarray(arr[...]), data)
    with pytest.raises(InvalidInputDataError, match=r"shards=\(8, 6, 8\): edge 6 on axis 1"):
        write_multiscale(str(tmp_path / "bad.zarr"), data, geom, chunks=4, shards=(8, 6, 8))
    assert not (tmp_path / "bad.zarr").exists()


def test_store_regions_cover_the_array_once_in_bounded_pieces() -> None:
    from ngff_dreg.io.omezarr.image_writer import store_regions

    chunks = ((2, 2, 1), (3, 3), (4, 4, 4, 1))
    for limit in (1, 2, 3, 5, 8, 12, 24, 100):
        regions = store_regions(chunks, limit)
        cover = np.zeros((5, 6, 13), int)
        for region in regions:
            cover[region] += 1
            n = math.prod(len([e for e in np.cumsum((0, *c))[:-1] if r.start <= e < r.stop])
                          for r, c in zip(region, chunks))
            assert 1 <= n <= limit
        assert cover.min() == cover.max() == 1
        if limit >= 24:
            assert len(regions) == 1


@pytest.mark.parametrize("shards", [None, 32])
def test_a_level_of_many_chunks_is_written_in_bounded_graphs(
        tmp_path: Path, ngff_config: Any, shards: int | None) -> None:
    """``output.store-chunks`` bounds each write's graph; the pyramid is the same."""
    from dask.callbacks import Callback

    data = da.random.default_rng(1).random((64, 64, 64), chunks=16)
    geom = ImageGeometry(data.shape, (1, 1, 1), (0, 0, 0), unit="micrometer")

    def write(name: str, store_chunks: int) -> list[int]:
        sizes: list[int] = []

        class Graphs(Callback):  # type: ignore[misc]
            def _start(self, dsk: Any) -> None:
                sizes.append(len(dsk))

        ngff_config({"output.store-chunks": store_chunks})
        with Graphs():
            write_multiscale(str(tmp_path / name), data, geom, chunks=16, n_levels=2,
                             shards=shards)
        return sizes

    whole = write("whole.zarr", 100_000)
    assert len(whole) == 2  # one graph per level
    # level 0: 64 chunks in 16 graphs of 4, or 8 shards one by one; level 1: 8 chunks
    # in 2 graphs, or its one shard
    slabbed = write("slabbed.zarr", 1 if shards else 4)
    n0 = 8 if shards else 16
    assert len(slabbed) == n0 + (1 if shards else 2)
    assert max(slabbed[:n0]) * 4 <= whole[0], (slabbed, whole)
    a, b = open_multiscale(str(tmp_path / "whole.zarr")), open_multiscale(
        str(tmp_path / "slabbed.zarr"))
    for level in (0, 1):
        np.testing.assert_array_equal(np.asarray(b.open_array(level)[...]),
                                      np.asarray(a.open_array(level)[...]))
