"""OMEZarrReader / constructor: ITK semantics, region reads, chunk-exact I/O, S3, errors."""

from __future__ import annotations

import itertools
import json
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import cloudpickle
import itk
import numpy as np
import pytest
import zarr
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.writer import write_image

from ngff_dreg.errors import (
    InvalidInputDataError,
    InvalidMetadataError,
    LevelNotFoundError,
    PathEscapeError,
    ScheduleError,
    StoreAccessError,
    UnsupportedVersionError,
)
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import ConstructReaderMethod
from ngff_dreg.io.omezarr.arrays import to_dask, to_xarray
from ngff_dreg.io.omezarr.multiscale import open_multiscale
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.itk_bridge import itk_region


def _chunk_keys(box: Box, chunks: tuple[int, ...], prefix: str) -> set[str]:
    ranges = [range(a // c, (b - 1) // c + 1) for a, b, c in zip(box.start, box.stop, chunks)]
    return {prefix + "/".join(map(str, idx)) for idx in itertools.product(*ranges)}


@pytest.fixture
def image3d(tmp_path: Path, make_test_image: Any) -> tuple[str, np.ndarray, ImageGeometry]:
    url = str(tmp_path / "img.zarr")
    data, geom = make_test_image(
        url, (30, 35, 40), spacing=(0.5, 0.8, 2.0), origin=(5.0, -3.0, 1.0), chunks=10,
        n_levels=3,
    )
    return url, data, geom


# --------------------------------------------------------------------------- ITK semantics


def test_reader_behaves_like_itk_image_file_reader(image3d: Any) -> None:
    url, data, geom = image3d
    ctor = OMEZarrReaderConstructor(url, level=0)
    assert isinstance(ctor, ConstructReaderMethod)
    reader = ctor()
    reader.UpdateOutputInformation()
    out = reader.GetOutput()
    assert isinstance(out, itk.Image[itk.F, 3])
    assert list(out.GetLargestPossibleRegion().GetSize()) == [40, 35, 30]
    assert list(out.GetBufferedRegion().GetSize()) == [0, 0, 0]  # no voxels yet
    assert tuple(out.GetSpacing()) == geom.spacing
    assert tuple(out.GetOrigin()) == geom.origin

    box = Box((3, 7, 11), (17, 29, 33))
    out.SetRequestedRegion(itk_region(box))
    reader.Update()
    assert reader.GetOutput() is out
    assert out.GetBufferedRegion() == itk_region(box)
    assert out.GetRequestedRegion() == itk_region(box)
    assert tuple(out.GetOrigin()) == geom.origin  # full-image origin, like ExtractImageFilter
    np.testing.assert_array_equal(itk.array_view_from_image(out), data[box.slices])

    full_reader = ctor()
    full_reader.UpdateLargestPossibleRegion()
    full = full_reader.GetOutput()
    np.testing.assert_array_equal(itk.array_view_from_image(full), data)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx_np = [int(rng.integers(a, b)) for a, b in zip(box.start, box.stop)]
        idx = idx_np[::-1]
        p_region = np.asarray(out.TransformIndexToPhysicalPoint(idx))
        p_full = np.asarray(full.TransformIndexToPhysicalPoint(idx))
        np.testing.assert_allclose(p_region, p_full)
        np.testing.assert_allclose(p_region, geom.array_index_to_physical(idx_np))
        assert out.GetPixel(idx) == full.GetPixel(idx) == data[tuple(idx_np)]


def test_region_reads_match_slices_on_every_level(image3d: Any) -> None:
    url, _, _ = image3d
    image = open_multiscale(url)
    rng = np.random.default_rng(1)
    for level in range(3):
        full = image.open_array(level)[...]
        reader = OMEZarrReaderConstructor(url, level=level)()
        for _ in range(6):
            a = [int(rng.integers(0, s)) for s in full.shape]
            b = [int(rng.integers(x + 1, s + 1)) for x, s in zip(a, full.shape)]
            box = Box(tuple(a), tuple(b))
            np.testing.assert_array_equal(reader.read_box(box), full[box.slices])
        assert reader.read_box(Box((0, 0, 0), (0, 5, 5))).shape == (0, 5, 5)
        with pytest.raises(ScheduleError):
            reader.read_box(Box((0, 0, 0), (full.shape[0] + 1, 1, 1)))


def test_oblique_v06_reader_direction(tmp_path: Path, make_test_image: Any) -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    d = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    url = str(tmp_path / "obl.zarr")
    _data, geom = make_test_image(url, (12, 14, 16), version="0.6", direction=d,
                                 spacing=(0.4, 0.5, 0.6), origin=(1.0, 2.0, 3.0))
    reader = OMEZarrReaderConstructor(url)()
    out = reader.GetOutput()
    np.testing.assert_allclose(itk.array_from_matrix(out.GetDirection()), d, atol=1e-12)
    idx = [5, 6, 7]
    np.testing.assert_allclose(out.TransformIndexToPhysicalPoint(idx),
                               geom.index_to_physical(idx), atol=1e-12)
    coarse = OMEZarrReaderConstructor(url, level=1).geometry
    np.testing.assert_allclose(
        coarse.origin, np.asarray(geom.origin) + d @ (np.asarray(geom.spacing) / 2), atol=1e-12
    )


def test_2d_and_native_dtype(tmp_path: Path, make_test_image: Any) -> None:
    url = str(tmp_path / "2d.zarr")
    data, _geom = make_test_image(url, (33, 47), dtype=np.uint16, version="0.4", chunks=8)
    ctor = OMEZarrReaderConstructor(url)
    reader = ctor()
    assert reader.dtype == np.uint16 and ctor.chunk_shape == (8, 8)
    box = Box((5, 9), (30, 40))
    got = reader.read_box(box)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, data[box.slices])
    out = reader.GetOutput()
    out.SetRequestedRegion(itk_region(box))
    reader.Update()
    assert isinstance(out, itk.Image[itk.F, 2])
    np.testing.assert_array_equal(itk.array_view_from_image(out), data[box.slices])


# --------------------------------------------------------------------------- ome-zarr-py data


@pytest.mark.parametrize("fmt", [FormatV04(), FormatV05()], ids=["0.4", "0.5"])
def test_ome_zarr_py_5d_anisotropic(tmp_path: Path, fmt: Any) -> None:
    rng = np.random.default_rng(2)
    data = rng.random((2, 3, 6, 32, 36)).astype(np.float32)  # t c z y x
    url = str(tmp_path / "omezarr.zarr")
    group = zarr.open_group(url, mode="w", zarr_format=2 if fmt.version == "0.4" else 3)
    write_image(
        data, group, scale_factors=[2, 4], axes="tczyx", fmt=fmt,
        scale={"t": 1.0, "c": 1.0, "z": 3.0, "y": 0.5, "x": 0.25},
        axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer", "t": "second"},
        storage_options={"chunks": (1, 1, 3, 16, 16)},
    )
    image = open_multiscale(url)
    assert image.version == fmt.version
    assert [lv.shape for lv in image.levels] == [
        (2, 3, 6, 32, 36), (2, 3, 6, 16, 18), (2, 3, 6, 8, 9)]
    # ome-zarr-py downsamples only y and x by default
    assert image.levels[2].geometry.spacing == (1.0, 2.0, 3.0)
    lv2 = image.multiscale.levels[2]
    np.testing.assert_allclose(image.levels[2].geometry.origin, lv2.translation[:1:-1])

    ctor = OMEZarrReaderConstructor(url, level=0, channel=2, time=1)
    assert ctor.chunk_shape == (3, 16, 16)
    reader = ctor()
    assert reader.geometry.shape == (6, 32, 36)
    box = Box((1, 5, 7), (5, 30, 33))
    np.testing.assert_array_equal(reader.read_box(box), data[1, 2][box.slices])
    with pytest.raises(InvalidInputDataError, match="channel index 3"):
        OMEZarrReaderConstructor(url, channel=3)()


# --------------------------------------------------------------------------- chunk accounting


def test_only_intersecting_chunks_are_fetched(
    image3d: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, data, _ = image3d
    reader = OMEZarrReaderConstructor(url, level=0)()
    reader.read_box(Box((0, 0, 0), (1, 1, 1)))  # open the array first
    fetched: list[str] = []
    original = zarr.storage.LocalStore.get

    async def counting_get(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        fetched.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "get", counting_get)
    # 30x35x40 in 10^3 chunks = 3*4*4 = 48 chunks; this box touches 2*2*3 = 12
    box = Box((5, 12, 8), (15, 28, 22))
    np.testing.assert_array_equal(reader.read_box(box), data[box.slices])
    expected = _chunk_keys(box, (10, 10, 10), "0/c/")
    assert len(expected) == 12
    assert set(fetched) == expected
    assert len(fetched) == 12  # each chunk once

    fetched.clear()
    out = reader.GetOutput()
    small = Box((0, 0, 0), (10, 10, 10))  # exactly one chunk
    out.SetRequestedRegion(itk_region(small))
    reader.Update()
    assert fetched == ["0/c/0/0/0"]


def test_only_intersecting_chunks_fetched_from_s3(
    s3_server: Any, make_test_image: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.create_bucket()
    url = s3_server.url(bucket, "count.zarr")
    opts = s3_server.storage_options()
    data, _ = make_test_image(url, (20, 20, 20), chunks=5, n_levels=1, storage_options=opts)
    reader = OMEZarrReaderConstructor(url, storage_options=opts)()
    reader.read_box(Box((0, 0, 0), (1, 1, 1)))
    fetched: list[str] = []
    original = zarr.storage.FsspecStore.get

    async def counting_get(self: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        fetched.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.FsspecStore, "get", counting_get)
    box = Box((4, 5, 9), (6, 10, 11))  # z 0-1, y 1, x 1-2 -> 2*1*2 = 4 of 64 chunks
    np.testing.assert_array_equal(reader.read_box(box), data[box.slices])
    assert set(fetched) == _chunk_keys(box, (5, 5, 5), "0/c/")
    assert len(fetched) == 4


# --------------------------------------------------------------------------- pickling


def test_constructor_pickles_and_rebuilds(image3d: Any) -> None:
    url, _data, _geom = image3d
    ctor = OMEZarrReaderConstructor(url, level=-1, storage_options={"anon": True})
    assert ctor.geometry.shape == (8, 9, 10)  # metadata cached on the constructor
    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        clone = loads(dumps(ctor))
        assert clone.url == url and clone.level == -1
        assert clone.geometry == ctor.geometry
        r = clone()
        np.testing.assert_array_equal(
            r.read_box(Box((0, 0, 0), (8, 9, 10))), open_multiscale(url).open_array(2)[...]
        )
    reader = ctor()
    reader.read_box(Box((0, 0, 0), (2, 2, 2)))
    clone_reader = cloudpickle.loads(cloudpickle.dumps(reader))
    np.testing.assert_array_equal(
        clone_reader.read_box(Box((0, 0, 0), (2, 2, 2))), reader.read_box(Box((0, 0, 0), (2, 2, 2)))
    )


def test_level_by_path_and_unit(image3d: Any) -> None:
    url, _, geom = image3d
    by_path = OMEZarrReaderConstructor(url, level="1")
    by_index = OMEZarrReaderConstructor(url, level=1)
    assert by_path.geometry == by_index.geometry
    mm = OMEZarrReaderConstructor(url, level=0, unit="millimeter")
    np.testing.assert_allclose(mm.geometry.spacing, np.asarray(geom.spacing) / 1000)
    np.testing.assert_allclose(mm.geometry.origin, np.asarray(geom.origin) / 1000)
    assert mm.geometry.unit == "millimeter"
    assert mm().GetOutput().GetSpacing()[0] == pytest.approx(geom.spacing[0] / 1000)


def test_describe_redacts_secrets(image3d: Any) -> None:
    url, _, _ = image3d
    ctor = OMEZarrReaderConstructor(url, storage_options={"key": "AKIAXX", "secret": "s3cr3t"})
    text = ctor.describe() + repr(ctor) + repr(ctor())
    assert "s3cr3t" not in text and "AKIAXX" not in text
    assert "level 0" in text and "(30, 35, 40)" in text


# --------------------------------------------------------------------------- errors


def test_level_out_of_range_names_url(image3d: Any) -> None:
    url, _, _ = image3d
    with pytest.raises(LevelNotFoundError, match=re.escape(url)):
        OMEZarrReaderConstructor(url, level=3)()
    with pytest.raises(LevelNotFoundError, match="3 level"):
        _ = OMEZarrReaderConstructor(url, level=-4).geometry


def test_missing_level_array(image3d: Any) -> None:
    url, _, _ = image3d
    shutil.rmtree(Path(url) / "1")
    with pytest.raises(LevelNotFoundError) as info:
        open_multiscale(url)
    assert url in str(info.value) and r"datasets[1].path" in str(info.value)


def _edit_attrs(url: str, edit: Any) -> None:
    path = Path(url) / "zarr.json"
    doc = json.loads(path.read_text())
    edit(doc["attributes"]["ome"])
    path.write_text(json.dumps(doc))


def test_mismatched_axis_count(image3d: Any) -> None:
    url, _, _ = image3d

    def drop_axis(ome: dict[str, Any]) -> None:
        ms = ome["multiscales"][0]
        ms["axes"] = ms["axes"][1:]
        for ds in ms["datasets"]:
            for t in ds["coordinateTransformations"]:
                key = t["type"]
                t[key] = t[key][1:]

    _edit_attrs(url, drop_axis)
    with pytest.raises(InvalidMetadataError) as info:
        OMEZarrReaderConstructor(url)()
    assert url in str(info.value) and "'axes'" in str(info.value)


def test_unsupported_version_on_disk(image3d: Any) -> None:
    url, _, _ = image3d
    _edit_attrs(url, lambda ome: ome.update(version="0.3"))
    with pytest.raises(UnsupportedVersionError, match=r"ome\.version"):
        open_multiscale(url)


def test_dataset_path_escaping_store(image3d: Any) -> None:
    url, _, _ = image3d
    _edit_attrs(url, lambda ome: ome["multiscales"][0]["datasets"][0].update(path="../../etc"))
    with pytest.raises(PathEscapeError) as info:
        OMEZarrReaderConstructor(url)()
    assert url in str(info.value) and "datasets[0].path" in str(info.value)


def test_zero_scale_on_disk(image3d: Any) -> None:
    url, _, _ = image3d
    _edit_attrs(url, lambda ome: ome["multiscales"][0]["datasets"][0][
        "coordinateTransformations"][0].update(scale=[0.0, 1.0, 1.0]))
    with pytest.raises(InvalidMetadataError, match=r"datasets\[0\]\.coordinateTransformations"):
        open_multiscale(url)


# --------------------------------------------------------------------------- S3


def test_s3_anonymous_public_bucket(s3_server: Any, make_test_image: Any) -> None:
    bucket = s3_server.create_bucket(public=True)
    url = s3_server.url(bucket, "pub.zarr")
    data, geom = make_test_image(url, (10, 12, 14), chunks=8,
                                 storage_options=s3_server.storage_options())
    ctor = OMEZarrReaderConstructor(url, storage_options=s3_server.storage_options(anon=True))
    assert ctor.geometry == geom
    box = Box((2, 3, 4), (9, 11, 13))
    np.testing.assert_array_equal(ctor().read_box(box), data[box.slices])

    private = s3_server.create_bucket()
    purl = s3_server.url(private, "priv.zarr")
    make_test_image(purl, (6, 6, 6), storage_options=s3_server.storage_options())
    with pytest.raises(StoreAccessError, match=re.escape(purl)):
        OMEZarrReaderConstructor(purl, storage_options=s3_server.storage_options(anon=True))()


def test_s3_credentials(s3_server: Any, make_test_image: Any) -> None:
    bucket = s3_server.create_bucket()
    url = s3_server.url(bucket, "cred.zarr")
    data, _ = make_test_image(url, (10, 12, 14), chunks=8,
                              storage_options=s3_server.storage_options())
    with s3_server.iam_auth() as cred:
        good = OMEZarrReaderConstructor(url, storage_options=s3_server.storage_options(**cred))
        np.testing.assert_array_equal(good().read_box(Box((0, 0, 0), (10, 12, 14))), data)
        bad_opts = s3_server.storage_options(key=cred["key"], secret="WRONG-secret-123")
        with pytest.raises(StoreAccessError) as info:
            OMEZarrReaderConstructor(url, storage_options=bad_opts)()
    msg = str(info.value)
    assert url in msg and "WRONG-secret-123" not in msg


# --------------------------------------------------------------------------- arrays


def test_to_dask_and_xarray(image3d: Any) -> None:
    url, data, _geom = image3d
    arr = to_dask(url, 0)
    assert arr.chunksize == (10, 10, 10)
    np.testing.assert_array_equal(arr[3:7, 5:9, 1:4].compute(), data[3:7, 5:9, 1:4])
    xa = to_xarray(url, 1, unit="millimeter")
    assert xa.dims == ("z", "y", "x")
    g1 = OMEZarrReaderConstructor(url, level=1, unit="millimeter").geometry
    np.testing.assert_allclose(xa.coords["x"].values[:2],
                               [g1.origin[0], g1.origin[0] + g1.spacing[0]])
    np.testing.assert_allclose(xa.coords["z"].values[-1],
                               g1.origin[2] + (g1.shape[0] - 1) * g1.spacing[2])
    assert xa.attrs["unit"] == "millimeter"
    np.testing.assert_array_equal(
        xa.isel(z=0).values, open_multiscale(url).open_array(1)[0]
    )


def test_ome_zarr_py_2d_with_multiscales_level_transforms(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    data = rng.random((40, 44)).astype(np.float32)
    url = tmp_path / "ms_level.zarr"
    group = zarr.open_group(str(url), mode="w", zarr_format=2)
    write_image(data, group, scale_factors=[2], axes="yx", fmt=FormatV04(),
                scale={"y": 0.5, "x": 0.25}, axes_units={"y": "millimeter", "x": "millimeter"})
    attrs_path = url / ".zattrs"
    attrs = json.loads(attrs_path.read_text())
    attrs["multiscales"][0]["coordinateTransformations"] = [
        {"type": "scale", "scale": [2.0, 4.0]},
        {"type": "translation", "translation": [-7.0, 11.0]},
    ]
    attrs_path.write_text(json.dumps(attrs))
    image = open_multiscale(str(url), unit="micrometer")
    assert image.version == "0.4" and image.ndim == 2
    ds = attrs["multiscales"][0]["datasets"]
    for i, lv in enumerate(image.levels):
        s_ds = np.array(ds[i]["coordinateTransformations"][0]["scale"])
        t_ds = np.array(ds[i]["coordinateTransformations"][1]["translation"]) if len(
            ds[i]["coordinateTransformations"]) > 1 else np.zeros(2)
        spacing = np.array([2.0, 4.0]) * s_ds * 1000
        origin = (np.array([2.0, 4.0]) * t_ds + np.array([-7.0, 11.0])) * 1000
        np.testing.assert_allclose(lv.geometry.spacing, spacing[::-1])
        np.testing.assert_allclose(lv.geometry.origin, origin[::-1])
    reader = OMEZarrReaderConstructor(str(url), unit="micrometer")()
    reader.UpdateLargestPossibleRegion()
    out = reader.GetOutput()
    np.testing.assert_array_equal(itk.array_view_from_image(out), data)
    # voxel (y=3, x=5): physical = s_ms * (s_ds * idx) + t_ms, in micrometres, ITK order
    p = np.asarray(out.TransformIndexToPhysicalPoint([5, 3]))
    np.testing.assert_allclose(p, [(4.0 * 0.25 * 5 + 11.0) * 1000, (2.0 * 0.5 * 3 - 7.0) * 1000])


def test_sharded_level_reports_inner_chunks_and_shards(tmp_path: Path) -> None:
    url = tmp_path / "sharded.zarr"
    rng = np.random.default_rng(7)
    data = rng.random((20, 40, 40)).astype(np.float32)
    root = zarr.open_group(str(url), mode="w")
    arr = root.create_array("s0", shape=data.shape, chunks=(10, 10, 10), shards=(20, 20, 20),
                            dtype="f4", dimension_names=["z", "y", "x"])
    arr[...] = data
    root.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0]}]}],
    }]}
    ctor = OMEZarrReaderConstructor(str(url))
    assert ctor.chunk_shape == (10, 10, 10) and ctor.shard_shape == (20, 20, 20)
    box = Box((3, 15, 22), (12, 33, 39))
    np.testing.assert_array_equal(ctor().read_box(box), data[box.slices])
