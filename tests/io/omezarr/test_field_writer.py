"""NGFF 0.6 transform scenes: schema validity, layout, overwrite and interrupted writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from ngff_zarr.validate import validate

from ngff_dreg.errors import IncompleteOutputError, OutputExistsError
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.io.omezarr.field_writer import write_field_scene
from ngff_dreg.io.omezarr.output_state import output_status
from ngff_dreg.io.omezarr.transform_reader import read_transform
from ngff_dreg.reduce import invert_field
from ngff_dreg.synthetic import small_rotation, smooth_displacement
from ngff_dreg.transforms import AffineTransform, TransformChain


def _chains(ndim: int, oblique: bool, with_affine: bool, shape: tuple[int, ...] | None = None
            ) -> tuple[TransformChain, TransformChain]:
    shape = shape or ((30, 34) if ndim == 2 else (20, 22, 24))
    direction = small_rotation(ndim, 20) if oblique else None
    fixed = ImageGeometry(shape, tuple(0.5 + 0.2 * i for i in range(ndim)),
                          tuple(1.0 - i for i in range(ndim)), direction, unit="micrometer")
    fwd = smooth_displacement(fixed, 1.0, seed=ndim)
    a = (AffineTransform.from_arrays(small_rotation(ndim, 6) * 1.02, np.arange(ndim) * 0.3)
         if with_affine else AffineTransform.identity(ndim))
    inv = invert_field(fwd)
    return TransformChain(a, fwd), TransformChain(a.inverse(), inv, affine_first=True)


def _attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]


CASES = [(2, False, False), (2, True, True), (3, False, True), (3, True, False)]


@pytest.mark.parametrize(("ndim", "oblique", "with_affine"), CASES)
def test_scene_and_fields_validate_against_ngff_06_schemas(tmp_path, ndim, oblique, with_affine):
    fwd, inv = _chains(ndim, oblique, with_affine)
    url = tmp_path / "reg.zarr"
    write_field_scene(str(url), fwd, inv, chunks=8)
    root = _attrs(url)
    validate(root, version="0.6", model="scene")
    assert root["ome"]["version"] == "0.6"
    groups = sorted(p.parent for p in (url / "coordinateTransformations").glob("*/zarr.json"))
    assert [g.name for g in groups] == ["fixed_to_moving", "moving_to_fixed"]
    for g in groups:
        attrs = _attrs(g)
        validate(attrs, version="0.6", model="image")
        validate(attrs, version="0.6", model="image", strict=True)


@pytest.mark.parametrize(("ndim", "oblique", "with_affine"), CASES)
def test_field_layout_the_schemas_do_not_check(tmp_path, ndim, oblique, with_affine):
    fwd, inv = _chains(ndim, oblique, with_affine)
    url = tmp_path / "reg.zarr"
    write_field_scene(str(url), fwd, inv, chunks=8)
    spatial = ["z", "y", "x"][-ndim:]
    for name in ("fixed_to_moving", "moving_to_fixed"):
        g = url / "coordinateTransformations" / name
        ms = _attrs(g)["ome"]["multiscales"][0]
        axes = ms["coordinateSystems"][0]["axes"]
        assert axes[0] == {"name": "c", "type": "displacement", "discrete": True}
        assert [a["name"] for a in axes[1:]] == spatial
        assert all(a["type"] == "space" and a["unit"] == "micrometer" for a in axes[1:])
        assert len(ms["datasets"]) >= 2  # a pyramid
        s0 = None
        for k, ds in enumerate(ms["datasets"]):
            meta = json.loads((g / ds["path"] / "zarr.json").read_text())
            assert meta["shape"][0] == ndim  # one component per spatial axis
            assert meta["dimension_names"] == ["c", *spatial]
            seq = ds["coordinateTransformations"][0]["transformations"]
            scale, trans = np.asarray(seq[0]["scale"]), np.asarray(seq[1]["translation"])
            assert scale[0] == 1.0 and trans[0] == 0.0
            if k == 0:
                s0 = (scale, trans)
                s0_data = zarr.open_array(str(g / ds["path"]))[...]
            elif k == 1:  # level 1 is the 2x mean of level 0
                s1 = zarr.open_array(str(g / ds["path"]))[...]
                crop = s0_data[(slice(None), *[slice(0, 2 * n) for n in s1.shape[1:]])]
                shp = [ndim] + [v for n in s1.shape[1:] for v in (n, 2)]
                want = crop.reshape(shp).mean(axis=tuple(range(2, 2 + 2 * ndim, 2)))
                np.testing.assert_allclose(s1, want, rtol=1e-5, atol=1e-6)
            if k > 0:  # pixel-centre offsets of coarser levels
                np.testing.assert_allclose(scale[1:], s0[0][1:] * 2**k)
                np.testing.assert_allclose(trans[1:], s0[1][1:] + (scale[1:] - s0[0][1:]) / 2)
    t = _attrs(url)["ome"]["scene"]["coordinateTransformations"][0]
    assert t["type"] == "bijection"
    # the images live elsewhere: the scene declares their spaces and names them,
    # with no path to a group that is not in the hierarchy
    assert t["input"] == {"name": "fixed"} and t["output"] == {"name": "moving"}
    scene = _attrs(url)["ome"]["scene"]
    systems = {s["name"]: s["axes"] for s in scene["coordinateSystems"]}
    assert [a["name"] for a in systems["fixed"]] == spatial
    assert all(a["type"] == "space" and a["unit"] == "micrometer" for a in systems["moving"])
    fwd_items = t["forward"]["transformations"] if t["forward"]["type"] == "sequence" else [
        t["forward"]]
    kinds = [i["type"] for i in fwd_items]
    assert kinds.count("displacements") == 1
    if not oblique and not with_affine:
        assert kinds == ["displacements"]
    if not oblique and with_affine:
        assert kinds == ["displacements", "affine"]
        assert [i["type"] for i in t["inverse"]["transformations"]] == ["affine", "displacements"]


def test_stored_components_are_zyx_physical(tmp_path):
    fixed = ImageGeometry((10, 12, 14), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    data = np.zeros((3, *fixed.with_spacing((4.0, 8.0, 12.0)).shape))
    data[0], data[1], data[2] = 3.0, 2.0, 1.0  # z, y, x displacement
    from ngff_dreg.transforms import DisplacementField

    field = DisplacementField(fixed.with_spacing((4.0, 8.0, 12.0)), data=data)
    write_field_scene(str(tmp_path / "r.zarr"), TransformChain(AffineTransform.identity(3), field))
    arr = zarr.open_array(str(tmp_path / "r.zarr/coordinateTransformations/fixed_to_moving/s0"))
    np.testing.assert_allclose(arr[:, 0, 0, 0], [3.0, 2.0, 1.0])
    chain = read_transform(str(tmp_path / "r.zarr"))
    np.testing.assert_allclose(chain.transform_points([[5.0, 5.0, 5.0]]), [[6.0, 7.0, 8.0]])


def test_overwrite_rules(tmp_path):
    fwd, inv = _chains(2, False, False)
    url = str(tmp_path / "reg.zarr")
    write_field_scene(url, fwd, inv)
    assert output_status(url) == "complete"
    with pytest.raises(OutputExistsError):
        write_field_scene(url, fwd, inv)
    fwd2, inv2 = _chains(2, False, True)
    write_field_scene(url, fwd2, inv2, overwrite=True)
    pts = np.array([[3.0, 2.0], [5.0, 1.0]])
    np.testing.assert_allclose(read_transform(url).transform_points(pts),
                               fwd2.transform_points(pts), atol=1e-5)
    # foreign Zarr content is not replaced silently either
    other = str(tmp_path / "other.zarr")
    zarr.open_group(other, mode="w").attrs["something"] = 1
    assert output_status(other) == "foreign"
    with pytest.raises(OutputExistsError):
        write_field_scene(other, fwd, inv)


_CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.io.omezarr import field_writer as fw
    from ngff_dreg.synthetic import smooth_displacement
    from ngff_dreg.transforms import AffineTransform, TransformChain

    orig = fw.FieldSceneWriter.write_chunks  # write_chunk goes through it too

    def slow(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        print("chunk", flush=True)
        time.sleep(0.3)

    fw.FieldSceneWriter.write_chunks = slow
    fixed = ImageGeometry((128, 128), (1.0, 1.0), (0.0, 0.0))
    chain = TransformChain(AffineTransform.identity(2), smooth_displacement(fixed, 2.0, seed=9))
    shards = int(sys.argv[2]) if len(sys.argv) > 2 else None
    fw.write_field_scene(sys.argv[1], chain, chunks=8, shards=shards)
    print("done", flush=True)
""")


@pytest.mark.parametrize("shards", [None, 16])
def test_interrupted_write_is_incomplete_and_a_rerun_completes_it(tmp_path, shards):
    """Killed after 3 chunk (or whole-shard) writes: incomplete; a rerun completes it."""
    url = str(tmp_path / "reg.zarr")
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    args = [] if shards is None else [str(shards)]
    proc = subprocess.Popen([sys.executable, str(script), url, *args], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "chunk":
            seen += 1
        if seen >= 3:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert seen >= 3 and proc.returncode != 0
    # chunks are on disk, but the output is not taken as complete
    assert list((tmp_path / "reg.zarr/coordinateTransformations/fixed_to_moving/s0").rglob("*"))
    assert output_status(url) == "incomplete"
    assert "ome" not in _attrs(Path(url))
    with pytest.raises(IncompleteOutputError):
        read_transform(url)
    # a rerun (no overwrite needed) completes it
    fixed = ImageGeometry((128, 128), (1.0, 1.0), (0.0, 0.0))
    chain = TransformChain(AffineTransform.identity(2), smooth_displacement(fixed, 2.0, seed=9))
    write_field_scene(url, chain, chunks=8, shards=shards)
    assert output_status(url) == "complete"
    validate(_attrs(Path(url)), version="0.6", model="scene")
    pts = fixed.sample_points(per_axis=7)
    np.testing.assert_allclose(read_transform(url).transform_points(pts),
                               chain.transform_points(pts), atol=1e-5)
    s0 = zarr.open_array(url, path="coordinateTransformations/fixed_to_moving/s0", mode="r")
    assert s0.shards == (None if shards is None else (2, 16, 16))


def test_recorded_image_urls_carry_no_credentials(tmp_path):
    fwd, inv = _chains(2, False, False)
    url = tmp_path / "reg.zarr"
    secret_fixed = "https://alice:hunter2@data.example.org/fixed.zarr?token=s3cr3t&v=1"
    write_field_scene(str(url), fwd, inv, chunks=8, fixed_url=secret_fixed,
                      moving_url="s3://bucket/moving.zarr")
    text = (url / "zarr.json").read_text()
    assert "hunter2" not in text and "s3cr3t" not in text and "alice" not in text
    images = _attrs(url)["ngff_dreg"]["images"]
    assert images["fixed"].startswith("https://***@data.example.org/fixed.zarr")
    assert images["moving"] == "s3://bucket/moving.zarr"


def test_loaders_of_one_writer_share_a_cache_token_until_begin(tmp_path: Path) -> None:
    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.io.omezarr.field_writer import FieldSceneWriter

    geom = ImageGeometry((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    writer = FieldSceneWriter(str(tmp_path / "out.zarr"))
    a = writer.loader(writer.forward_name, geom)
    b = writer.loader(writer.forward_name, geom)
    assert a.cache == b.cache == writer.cache_token  # one fetch per process for both
    writer.begin({writer.forward_name: geom}, chunks=4)
    assert writer.loader(writer.forward_name, geom).cache != a.cache  # new arrays, new token


# ---------------------------------------------------------------- sharded fields
def _field_arrays(url: str) -> dict[str, zarr.Array]:
    root = zarr.open_group(url, mode="r")
    out = {}
    for name in ("fixed_to_moving", "moving_to_fixed"):
        for key, arr in root[f"coordinateTransformations/{name}"].arrays():
            out[f"{name}/{key}"] = arr
    return out


def _shard_codec(arr: zarr.Array) -> dict | None:
    codecs = arr.metadata.to_dict()["codecs"]
    return next((c for c in codecs if c["name"] == "sharding_indexed"), None)


@pytest.mark.parametrize(("ndim", "oblique", "with_affine"), [(3, True, True), (2, False, True)])
def test_sharded_scene_reads_back_identical_to_an_unsharded_one(tmp_path, store_writes, ndim,
                                                                oblique, with_affine):
    from ngff_dreg.io.omezarr.transform_reader import to_itk_transform
    from ngff_dreg.itk_bridge import transform_points as itk_points

    shape = (40, 44) if ndim == 2 else (60, 66, 72)  # fields of 11x12 / 16x18x19 nodes
    fwd, inv = _chains(ndim, oblique, with_affine, shape)
    plain, sharded = str(tmp_path / "plain.zarr"), str(tmp_path / "sharded.zarr")
    write_field_scene(plain, fwd, inv, chunks=4, n_levels=3)
    store_writes.clear()
    write_field_scene(sharded, fwd, inv, chunks=4, n_levels=3, shards=8)
    a, b = _field_arrays(plain), _field_arrays(sharded)
    assert sorted(a) == sorted(b) and len(a) == 6  # 3 levels of each field
    for key, arr in b.items():
        codec = _shard_codec(arr)
        assert codec is not None, key
        chunks = tuple(arr.chunks[1:])  # inner chunks (capped by coarse levels' shapes)
        assert tuple(codec["configuration"]["chunk_shape"]) == (ndim, *chunks), key
        assert chunks == tuple(a[key].chunks[1:])
        # 8 nodes (2 chunks) per axis, or the whole chunks a small level needs
        shards = tuple(min(8, -(-n // c) * c) if c == 4 else c
                       for n, c in zip(arr.shape[1:], chunks))
        assert tuple(arr.shards) == (ndim, *shards), key
        if key.endswith("/s0"):
            assert shards == (8,) * ndim
        assert _shard_codec(a[key]) is None
        np.testing.assert_array_equal(arr[...], a[key][...], err_msg=key)
        # every shard object was written exactly once (one write per shard, no partial ones)
        prefix = f"{tmp_path / 'sharded.zarr'}/coordinateTransformations/{key}/c/"
        written = {k: n for k, n in store_writes.items() if k.startswith(prefix)}
        n_shards = int(np.prod([-(-n // s) for n, s in zip(arr.shape[1:], shards)]))
        assert len(written) == n_shards and set(written.values()) == {1}, (key, written)
    validate(_attrs(Path(sharded)), version="0.6", model="scene")
    pts = np.random.default_rng(1).uniform(2, 12, size=(50, ndim))
    for inverse in (False, True):
        np.testing.assert_array_equal(
            read_transform(sharded, inverse=inverse).transform_points(pts),
            read_transform(plain, inverse=inverse).transform_points(pts))
    np.testing.assert_array_equal(itk_points(to_itk_transform(sharded), pts),
                                  itk_points(to_itk_transform(plain), pts))


def test_sharded_scene_on_s3_equals_the_local_one(tmp_path, s3_server, store_writes):
    fwd, inv = _chains(3, True, False, (60, 66, 72))  # 16x18x19 nodes
    local = str(tmp_path / "local.zarr")
    write_field_scene(local, fwd, inv, chunks=4, shards=(8, 8, 12))
    bucket = s3_server.create_bucket()
    url, opts = s3_server.url(bucket, "reg.zarr"), s3_server.storage_options()
    store_writes.clear()
    write_field_scene(url, fwd, inv, chunks=4, shards=(8, 8, 12), storage_options=opts)
    assert output_status(url, opts) == "complete"
    arr = zarr.open_array(store=url, path="coordinateTransformations/fixed_to_moving/s0",
                          mode="r", storage_options=opts)
    assert tuple(arr.shards) == (3, 8, 8, 12) and tuple(arr.chunks) == (3, 4, 4, 4)
    np.testing.assert_array_equal(arr[...], zarr.open_array(
        local, path="coordinateTransformations/fixed_to_moving/s0", mode="r")[...])
    s0 = [k for k in store_writes if "/fixed_to_moving/s0/c/" in k]
    assert len(s0) == 2 * 3 * 2 and all(store_writes[k] == 1 for k in s0)  # one PUT per shard
    pts = np.random.default_rng(2).uniform(2, 10, size=(40, 3))
    for inverse in (False, True):
        np.testing.assert_array_equal(
            read_transform(url, opts, inverse=inverse).transform_points(pts),
            read_transform(local, inverse=inverse).transform_points(pts))


@pytest.mark.parametrize(("shards", "match"), [
    (6, r"shards=6: edge 6 on axis \d is not a whole number of chunks \(chunk edge 4\)"),
    ((8, 8), "shards=.* must be one positive integer edge or 3 of them"),
    ("half", "shards='half'"),
])
def test_bad_shards_are_refused_before_anything_is_written(tmp_path, shards, match):
    from ngff_dreg.errors import InvalidInputDataError

    fwd, inv = _chains(3, False, False, (20, 22, 24))
    url = tmp_path / "reg.zarr"
    with pytest.raises(InvalidInputDataError, match=match):
        write_field_scene(str(url), fwd, inv, chunks=4, shards=shards)
    assert not url.exists()
