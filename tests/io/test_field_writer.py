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
from ngff_dreg.io.field_writer import write_field_scene
from ngff_dreg.io.output_state import output_status
from ngff_dreg.io.transform_reader import read_transform
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
    from ngff_dreg.io import field_writer as fw
    from ngff_dreg.synthetic import smooth_displacement
    from ngff_dreg.transforms import AffineTransform, TransformChain

    orig = fw.FieldSceneWriter.write_chunk

    def slow(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        print("chunk", flush=True)
        time.sleep(0.3)

    fw.FieldSceneWriter.write_chunk = slow
    fixed = ImageGeometry((128, 128), (1.0, 1.0), (0.0, 0.0))
    chain = TransformChain(AffineTransform.identity(2), smooth_displacement(fixed, 2.0, seed=9))
    fw.write_field_scene(sys.argv[1], chain, chunks=8)
    print("done", flush=True)
""")


def test_interrupted_write_is_incomplete_and_a_rerun_completes_it(tmp_path):
    url = str(tmp_path / "reg.zarr")
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    proc = subprocess.Popen([sys.executable, str(script), url], stdout=subprocess.PIPE,
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
    write_field_scene(url, chain, chunks=8)
    assert output_status(url) == "complete"
    validate(_attrs(Path(url)), version="0.6", model="scene")
    pts = fixed.sample_points(per_axis=7)
    np.testing.assert_allclose(read_transform(url).transform_points(pts),
                               chain.transform_points(pts), atol=1e-5)


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
    from ngff_dreg.io.field_writer import FieldSceneWriter

    geom = ImageGeometry((4, 5, 6), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    writer = FieldSceneWriter(str(tmp_path / "out.zarr"))
    a = writer.loader(writer.forward_name, geom)
    b = writer.loader(writer.forward_name, geom)
    assert a.cache == b.cache == writer.cache_token  # one fetch per process for both
    writer.begin({writer.forward_name: geom}, chunks=4)
    assert writer.loader(writer.forward_name, geom).cache != a.cache  # new arrays, new token
