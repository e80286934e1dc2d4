"""apply_transform: chunk-wise resampling equals a direct resample; S3; point mapping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ngff_dreg.apply import apply_transform, transform_points, warp_chunk
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.io.omezarr.field_writer import write_field_scene
from ngff_dreg.io.omezarr.image_writer import write_multiscale
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.reduce import invert_field
from ngff_dreg.synthetic import small_rotation, smooth_displacement, textured_phantom, warp_to_fixed
from ngff_dreg.transforms import AffineTransform, TransformChain


def _case(ndim: int) -> tuple[np.ndarray, ImageGeometry, ImageGeometry, TransformChain]:
    if ndim == 3:
        mg = ImageGeometry((36, 40, 38), (0.8, 0.7, 0.9), (1.0, 2.0, -1.0))
        fg = ImageGeometry((30, 34, 36), (0.85, 0.75, 0.95), (1.5, 2.5, -0.5))
    else:
        mg = ImageGeometry((80, 90), (0.8, 0.7), (1.0, 2.0))
        fg = ImageGeometry((70, 84), (0.85, 0.75), (1.5, 2.5), small_rotation(2, 10))
    moving = textured_phantom(mg.shape, seed=2)
    field = smooth_displacement(fg, 1.5 if ndim == 3 else 3.0, seed=3)
    a = AffineTransform.from_arrays(small_rotation(ndim, 4), np.full(ndim, 0.3))
    return moving, mg, fg, TransformChain(a, field)


def _inside_mask(fg: ImageGeometry, mg: ImageGeometry, chain: TransformChain) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in fg.shape], indexing="ij"), -1)
    pts = fg.array_index_to_physical(idx.reshape(-1, fg.ndim).astype(float))
    m = mg.physical_to_index(chain.transform_points(pts))[:, ::-1]
    ok = np.all((m >= 1) & (m <= np.asarray(mg.shape) - 2), axis=1)
    return ok.reshape(fg.shape)


@pytest.mark.parametrize("ndim", [2, 3])
def test_apply_equals_direct_resample(tmp_path, ndim):
    moving, mg, fg, chain = _case(ndim)
    write_multiscale(str(tmp_path / "mov.zarr"), moving, mg, chunks=16)
    out = str(tmp_path / "warped.zarr")
    version = "0.5" if fg.is_axis_aligned else "0.6"  # 0.5 cannot store a direction
    apply_transform(str(tmp_path / "mov.zarr"), fg, chain, out, chunks=16, version=version)
    got = OMEZarrReaderConstructor(out, 0)().read_box(Box.full(fg.shape))
    want = warp_to_fixed(moving, mg, fg, chain)
    inside = _inside_mask(fg, mg, chain)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(got[inside], want[inside], atol=1e-5)
    # a multiscale 0.5 image with correct pixel-centre level offsets
    meta = json.loads((Path(out) / "zarr.json").read_text())["attributes"]["ome"]
    assert meta["version"] == version
    g1 = OMEZarrReaderConstructor(out, 1).geometry
    assert len(meta["multiscales"][0]["datasets"]) >= 2
    np.testing.assert_allclose(
        np.asarray(g1.origin),
        np.asarray(fg.origin) + fg.direction_matrix @ ((np.asarray(g1.spacing) - fg.spacing) / 2),
        atol=1e-9,
    )


def test_interior_displacement_is_not_missed():
    """A bump inside a chunk moves points beyond the box of its mapped corners."""
    mg = ImageGeometry((64, 64), (1.0, 1.0), (0.0, 0.0))
    fg = mg
    g = fg.with_spacing((4.0, 4.0))
    data = np.zeros((2, *g.shape))
    data[1, 6:9, 6:9] = 12.0  # +12 along x in the middle of the 0..32 chunk
    from ngff_dreg.transforms import DisplacementField

    chain = TransformChain(AffineTransform.identity(2), DisplacementField(g, data=data))
    moving = textured_phantom(mg.shape, seed=5)

    class Ctor:
        def __call__(self):
            return self

        geometry = mg

        def read_box(self, box: Box) -> np.ndarray:
            return moving[box.slices]

    got = warp_chunk(Box((0, 0), (32, 32)), fg, chain, Ctor())
    want = warp_to_fixed(moving, mg, fg, chain)[:32, :32]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_apply_from_ngff_url_and_points_both_ways(tmp_path):
    moving, mg, fg, chain = _case(3)
    inv = TransformChain(chain.affine.inverse(), invert_field(chain.field), affine_first=True)
    reg = str(tmp_path / "reg.zarr")
    write_field_scene(reg, chain, inv)
    write_multiscale(str(tmp_path / "mov.zarr"), moving, mg, chunks=16)
    write_multiscale(str(tmp_path / "fix.zarr"), np.zeros(fg.shape, np.float32), fg, chunks=16)
    out = str(tmp_path / "warped.zarr")
    apply_transform(str(tmp_path / "mov.zarr"), str(tmp_path / "fix.zarr"), reg, out, chunks=16)
    got = OMEZarrReaderConstructor(out, 0)().read_box(Box.full(fg.shape))
    inside = _inside_mask(fg, mg, chain)
    np.testing.assert_allclose(got[inside], warp_to_fixed(moving, mg, fg, chain)[inside],
                               atol=1e-4)
    inner = Box(tuple(n // 4 for n in fg.shape), tuple(3 * n // 4 for n in fg.shape))
    pts = fg.sample_points(inner, per_axis=4)
    fwd = transform_points(pts, reg)
    np.testing.assert_allclose(fwd, chain.transform_points(pts), atol=1e-5)
    back = transform_points(fwd, reg, inverse=True)
    err = np.linalg.norm(back - pts, axis=1)  # stored inverse field: grid-limited accuracy
    assert np.percentile(err, 95) < 0.1
    assert err.max() < 0.25
    # without a stored inverse: point-wise fixed-point inversion is exact
    np.testing.assert_allclose(transform_points(fwd, chain, inverse=True), pts, atol=1e-6)


@pytest.mark.s3
def test_apply_s3_round_trip(s3_server):
    moving, mg, fg, chain = _case(3)
    bucket = s3_server.create_bucket()
    opts = s3_server.storage_options()
    mov = s3_server.url(bucket, "mov.zarr")
    reg = s3_server.url(bucket, "reg.zarr")
    out = s3_server.url(bucket, "warped.zarr")
    write_multiscale(mov, moving, mg, chunks=16, storage_options=opts)
    write_field_scene(reg, chain, storage_options=opts, chunks=8)
    apply_transform(mov, fg, reg, out, chunks=16, storage_options=opts, scheduler="threads")
    got = OMEZarrReaderConstructor(out, 0, storage_options=opts)().read_box(Box.full(fg.shape))
    inside = _inside_mask(fg, mg, chain)
    np.testing.assert_allclose(got[inside], warp_to_fixed(moving, mg, fg, chain)[inside],
                               atol=1e-4)


def test_apply_accepts_a_registration_result(tmp_path):
    from ngff_dreg.interfaces import RegistrationTransformResult

    moving, mg, fg, chain = _case(3)
    write_multiscale(str(tmp_path / "mov.zarr"), moving, mg, chunks=16)
    result = RegistrationTransformResult(chain, None)
    out = str(tmp_path / "w.zarr")
    apply_transform(str(tmp_path / "mov.zarr"), fg, result, out, chunks=32, n_levels=1)
    got = OMEZarrReaderConstructor(out, 0)().read_box(Box.full(fg.shape))
    inside = _inside_mask(fg, mg, chain)
    np.testing.assert_allclose(got[inside], warp_to_fixed(moving, mg, fg, chain)[inside],
                               atol=1e-5)
    pts = fg.sample_points(per_axis=3)
    np.testing.assert_allclose(transform_points(pts, result), chain.transform_points(pts))


def test_apply_reads_the_moving_image_once_and_equals_an_uncached_apply(tmp_path):
    import dask

    from ngff_dreg.io.storage.store_stats import take_counts

    moving, mg, fg, chain = _case(3)
    mov = str(tmp_path / "mov.zarr")
    write_multiscale(mov, moving, mg, chunks=16)
    runs = {}
    for mb in ("0", "64"):
        take_counts()
        out = str(tmp_path / f"warped-{mb}.zarr")
        with dask.config.set({"ngff-dreg.io.chunk-cache-mb": int(mb)}):
            apply_transform(mov, fg, chain, out, chunks=8)
        c = take_counts()[1][mov]
        runs[mb] = (OMEZarrReaderConstructor(out, 0)().read_box(Box.full(fg.shape)), c)
    np.testing.assert_array_equal(runs["64"][0], runs["0"][0])  # same voxels
    plain, cached = runs["0"][1], runs["64"][1]
    assert plain.chunk_bytes > plain.distinct_bytes  # output chunks share moving chunks
    assert cached.pieces == plain.pieces
    # Each chunk once (a task missing a chunk another task is fetching waits for it).
    assert cached.chunk_bytes == cached.distinct_bytes < plain.chunk_bytes


def test_sharded_resample_equals_unsharded_and_writes_each_shard_once(tmp_path, store_writes):
    import zarr

    moving, mg, fg, chain = _case(3)
    write_multiscale(str(tmp_path / "mov.zarr"), moving, mg, chunks=16)
    plain, sharded = str(tmp_path / "plain.zarr"), str(tmp_path / "sharded.zarr")
    apply_transform(str(tmp_path / "mov.zarr"), fg, chain, plain, chunks=8, n_levels=2,
                    scheduler="threads")
    store_writes.clear()
    apply_transform(str(tmp_path / "mov.zarr"), fg, chain, sharded, chunks=8, n_levels=2,
                    shards=16, scheduler="threads")
    for level, shape, shards in (("0", (30, 34, 36), (16, 16, 16)), ("1", (15, 17, 18),
                                                                     (16, 16, 16))):
        a = zarr.open_array(plain, path=level, mode="r")
        b = zarr.open_array(sharded, path=level, mode="r")
        assert b.shape == shape and tuple(b.chunks) == (8, 8, 8)
        assert tuple(b.shards) == shards and a.shards is None
        codecs = [c["name"] for c in b.metadata.to_dict()["codecs"]]
        assert codecs[0] == "sharding_indexed"
        np.testing.assert_array_equal(b[...], a[...])
        written = {k: n for k, n in store_writes.items()
                   if k.startswith(f"{sharded}/{level}/c/")}
        n_shards = int(np.prod([-(-n // s) for n, s in zip(shape, shards)]))
        assert len(written) == n_shards and set(written.values()) == {1}, written


@pytest.mark.parametrize(("version", "shards", "match"), [
    ("0.4", 16, "shards need Zarr v3"),
    ("0.5", 12, r"shards=12: edge 12 on axis 0 is not a whole number of chunks"),
])
def test_bad_resample_shards_are_refused_before_writing(tmp_path, version, shards, match):
    from ngff_dreg.errors import InvalidInputDataError

    moving, mg, fg, chain = _case(3)
    write_multiscale(str(tmp_path / "mov.zarr"), moving, mg, chunks=16)
    out = tmp_path / "warped.zarr"
    with pytest.raises(InvalidInputDataError, match=match):
        apply_transform(str(tmp_path / "mov.zarr"), fg, chain, str(out), chunks=8,
                        version=version, shards=shards)
    assert not out.exists()


@pytest.mark.parametrize("kw", [{"system": "xyz", "field": "zyx"}, {"leading": "t"}],
                         ids=["xyz", "time"])
def test_apply_through_a_scene_in_another_axis_order_equals_itk(tmp_path, hand_scene, kw):
    """Scene systems x, y, z (or t, x, y, z): resampled as through ITK's same transform."""
    case = hand_scene(tmp_path / "scene.zarr", **kw)
    g = ImageGeometry(case.size[::-1], case.spacing, case.origin)  # the field's grid
    mg = ImageGeometry((16, 18, 20), (0.8, 0.75, 0.7), (-4.0, 0.0, 1.5))
    img = str(tmp_path / "img.zarr")
    write_multiscale(img, textured_phantom(mg.shape, seed=5), mg, n_levels=1, chunks=8)
    fixed = str(tmp_path / "fixed.zarr")
    write_multiscale(fixed, np.zeros(g.shape, np.float32), g, n_levels=1)
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    apply_transform(img, fixed, f"{case.url}:fixed:moving", a, n_levels=1, chunks=8)
    apply_transform(img, fixed, case.reference, b, n_levels=1, chunks=8)
    box = Box.full(g.shape)
    got, want = (OMEZarrReaderConstructor(u)().read_box(box) for u in (a, b))
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-4)
