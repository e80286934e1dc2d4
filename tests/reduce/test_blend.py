"""ReduceToDisplacementField: blending, renormalisation, hole filling, folding, graph shape."""

from __future__ import annotations

import pickle
from typing import Any

import dask
import itk
import numpy as np
import pytest

from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import BlockRegStatus
from ngff_dreg.reduce import ReduceToDisplacementField
from ngff_dreg.synthetic import small_rotation, smooth_displacement
from ngff_dreg.transforms import AffineTransform, TransformChain


def _geometry(ndim: int, oblique: bool = False) -> ImageGeometry:
    if ndim == 2:
        return ImageGeometry((72, 88), (0.6, 0.8), (3.0, -2.0),
                             small_rotation(2, 25) if oblique else None)
    return ImageGeometry((40, 36, 44), (0.9, 0.7, 0.5), (1.0, -2.0, 0.5),
                         small_rotation(3, 20, 1) if oblique else None)


def _truth(fixed: ImageGeometry, amp: float = 1.5, seed: int = 1) -> TransformChain:
    return TransformChain(AffineTransform.identity(fixed.ndim),
                          smooth_displacement(fixed, amp, seed=seed))


def _translation(offset: Any) -> Any:
    tx = itk.TranslationTransform[itk.D, len(offset)].New()
    tx.SetOffset([float(v) for v in offset])
    return tx


def _local_affine(fixed: ImageGeometry, truth: TransformChain, padded: Box) -> AffineTransform:
    pts = fixed.sample_points(padded, per_axis=6)
    moved = truth.transform_points(pts)
    h = np.hstack([pts, np.ones((len(pts), 1))])
    sol, *_ = np.linalg.lstsq(h, moved, rcond=None)
    return AffineTransform.from_arrays(sol[:-1].T, sol[-1])


def _eval_points(fixed: ImageGeometry, n: int = 400, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.uniform(0, np.asarray(fixed.shape) - 1, size=(n, fixed.ndim))
    return fixed.array_index_to_physical(idx)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("oblique", [False, True])
def test_exact_block_transforms_give_the_field(blocks_factory, ctor_factory, ndim, oblique):
    fixed = _geometry(ndim, oblique)
    truth = _truth(fixed)
    results, _ = blocks_factory(fixed, 16, 4, lambda c, p: truth)
    out = ReduceToDisplacementField(field_chunk=8)(results, ctor_factory(fixed), None)
    pts = _eval_points(fixed)
    err = np.linalg.norm(out.transform.transform_points(pts) - truth.transform_points(pts), axis=1)
    assert err.max() < 5e-3  # float32 storage only
    assert out.report["n_success"] == len(results)
    assert out.report["uncovered_fraction"] == 0.0


@pytest.mark.parametrize("ndim", [2, 3])
def test_local_affines_blend_to_the_smooth_field(blocks_factory, ctor_factory, ndim):
    fixed = _geometry(ndim)
    truth = _truth(fixed, amp=1.5)
    results, _ = blocks_factory(fixed, 16, 6, lambda c, p: _local_affine(fixed, truth, p))
    out = ReduceToDisplacementField(field_chunk=8)(results, ctor_factory(fixed), None)
    pts = _eval_points(fixed)
    want = truth.transform_points(pts)
    err = np.linalg.norm(out.transform.transform_points(pts) - want, axis=1)
    # baseline: each point mapped by the affine of the block it lies in (no blending)
    by_index = {r.fixed_info.chunk_index: r.result.transform for r in results}
    idx = np.clip(np.round(fixed.physical_to_index(pts)[:, ::-1]).astype(int), 0,
                  np.asarray(fixed.shape) - 1) // 16
    piecewise = np.array([by_index[tuple(i)].transform_points(p[None])[0]
                          for i, p in zip(idx, pts)])
    base = np.linalg.norm(piecewise - want, axis=1)
    assert np.percentile(err, 95) <= np.percentile(base, 95)
    assert err.max() <= base.max()
    assert np.percentile(err, 95) < 0.4 * 1.5


@pytest.mark.parametrize("ndim", [2, 3])
def test_edges_are_renormalised_not_damped(blocks_factory, ctor_factory, ndim):
    fixed = _geometry(ndim)
    t = np.arange(1, ndim + 1) * 0.7
    results, _ = blocks_factory(fixed, 16, 4, lambda c, p: _translation(t))
    out = ReduceToDisplacementField(field_chunk=8)(results, ctor_factory(fixed), None)
    data = out.transform.field.read()
    # every node, corners and edges included, carries the full translation
    flat = data[::-1].reshape(ndim, -1).T
    np.testing.assert_allclose(flat, np.broadcast_to(t, flat.shape), atol=1e-5)
    corners = fixed.sample_points(per_axis=2)
    np.testing.assert_allclose(out.transform.transform_points(corners), corners + t, atol=1e-5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_failed_block_is_filled_smoothly_from_neighbours(blocks_factory, ctor_factory, ndim):
    fixed = _geometry(ndim)
    t = np.full(ndim, 1.2)
    centre = (1,) * ndim
    results, _ = blocks_factory(fixed, 16, 4, lambda c, p: _translation(t), failed=[centre])
    out = ReduceToDisplacementField(field_chunk=8)(results, ctor_factory(fixed), None)
    assert out.status_map[centre] == BlockRegStatus.FAILURE
    data = out.transform.field.read()
    norm = np.linalg.norm(data, axis=0)
    # inside the failed block: close to the neighbours' value, never zero
    ratio = np.asarray(out.field_geometry.spacing[::-1]) / np.asarray(fixed.spacing[::-1])
    sl = tuple(slice(int(np.ceil(16 / r)), int(32 / r)) for r in ratio)
    assert norm[sl].min() > 0.9 * np.linalg.norm(t)
    # smooth: no jump between neighbouring nodes
    for ax in range(ndim):
        assert np.abs(np.diff(norm, axis=ax)).max() < 0.05 * np.linalg.norm(t)


def test_far_from_any_block_falls_smoothly_to_the_initial_transform(blocks_factory, ctor_factory):
    fixed = ImageGeometry((16, 160), (1.0, 1.0), (0.0, 0.0))
    t = np.array([2.0, 0.0])
    ok = {(0, 0)}
    failed = [(0, i) for i in range(1, 10)]
    results, _ = blocks_factory(fixed, 16, 4, lambda c, p: _translation(t), failed=failed)
    assert {r.fixed_info.chunk_index for r in results if r.result.status == 0} == ok
    out = ReduceToDisplacementField(field_spacing_factor=2, field_chunk=16, fill_distance=1.0)(
        results, ctor_factory(fixed), None)
    dx = out.transform.field.read()[1].mean(axis=0)  # x component along x
    assert dx[0] == pytest.approx(2.0, abs=1e-4)
    assert abs(dx[-1]) < 1e-6  # far away: the initial transform (identity)
    # gradual cosine decay over the fill reach (block 0 padded: 20 voxels), no sudden zero
    reach, h = 20.0, 2.0
    assert np.abs(np.diff(dx)).max() <= 1.05 * 2.0 * (np.pi / 2) * h / reach
    assert np.count_nonzero((dx > 0.05) & (dx < 1.95)) >= 6
    assert np.all(np.diff(dx) <= 1e-9)


def test_all_failed_returns_the_initial_transform(blocks_factory, ctor_factory):
    fixed = _geometry(2)
    init = _truth(fixed, amp=1.0, seed=4)
    results, _ = blocks_factory(fixed, 24, 4, lambda c, p: None,
                                failed=[(i, j) for i in range(3) for j in range(4)])
    out = ReduceToDisplacementField(field_chunk=8)(results, ctor_factory(fixed), init)
    pts = _eval_points(fixed)
    np.testing.assert_allclose(out.transform.transform_points(pts), init.transform_points(pts),
                               atol=1e-4)
    assert out.report["n_success"] == 0


def test_the_report_names_each_refused_block_with_its_reason(blocks_factory, ctor_factory):
    fixed = _geometry(2)
    failed = [(0, 1), (2, 3)]
    results, _ = blocks_factory(fixed, 24, 4, lambda c, p: _translation([0.1, 0.0]),
                                failed=failed)
    out = ReduceToDisplacementField(field_chunk=8)(results, ctor_factory(fixed), None)
    refused = out.report["refused"]
    assert [tuple(r["block"]) for r in refused] == failed
    assert all(r["status"] == "FAILURE" for r in refused)
    assert [r["reason"] for r in refused] == [f"block {ci}: refused by the test" for ci in failed]


def test_refused_blocks_leave_out_success_and_no_signal_and_are_capped() -> None:
    from ngff_dreg.reduce.graph import MAX_REFUSED_LISTED, refused_blocks

    statuses = [((9,), int(BlockRegStatus.LOW_QUALITY), {}, "folds"),
                ((1,), int(BlockRegStatus.SUCCESS), {}, ""),
                ((2,), int(BlockRegStatus.NO_SIGNAL), {}, "no signal"),
                ((3,), 77, {}, "a plug-in's own code")]
    assert refused_blocks(statuses) == [
        {"block": [3], "status": "77", "reason": "a plug-in's own code"},
        {"block": [9], "status": "LOW_QUALITY", "reason": "folds"}]
    many = [((i,), int(BlockRegStatus.OUT_OF_BOUNDS), {}, "outside")
            for i in range(MAX_REFUSED_LISTED + 5)]
    listed = refused_blocks(many)
    assert len(listed) == MAX_REFUSED_LISTED and listed[-1]["block"] == [MAX_REFUSED_LISTED - 1]


@pytest.mark.parametrize("ndim", [2, 3])
def test_initial_chain_is_folded_in(blocks_factory, ctor_factory, ndim):
    fixed = _geometry(ndim)
    rng = np.random.default_rng(3)
    a = AffineTransform.from_arrays(np.eye(ndim) + 0.02 * rng.standard_normal((ndim, ndim)),
                                    rng.uniform(-1, 1, ndim))
    init = TransformChain(a, smooth_displacement(fixed, 1.0, seed=5))
    t = np.full(ndim, 0.4)
    results, _ = blocks_factory(fixed, 16, 4, lambda c, p: _translation(t))
    out = ReduceToDisplacementField(field_chunk=8)(results, ctor_factory(fixed), init)
    assert np.allclose(out.transform.affine.homogeneous, a.homogeneous)
    pts = _eval_points(fixed)
    want = init.transform_points(pts + t)
    err = np.linalg.norm(out.transform.transform_points(pts) - want, axis=1)
    # D_prev is resampled at x + r on the field grid: interpolation error only
    assert np.percentile(err, 95) < 0.05
    assert err.max() < 0.15
    # a plain affine initial transform keeps its affine and needs no field change
    out2 = ReduceToDisplacementField(field_chunk=8)(results, ctor_factory(fixed), a)
    np.testing.assert_allclose(out2.transform.transform_points(pts), a.transform_points(pts + t),
                               atol=1e-5)


def test_quality_weights_favour_the_better_block(blocks_factory, ctor_factory):
    fixed = ImageGeometry((16, 32), (1.0, 1.0), (0.0, 0.0))
    results, _ = blocks_factory(
        fixed, 16, 8, lambda c, p: _translation([1.0 if c.start[1] else 0.0, 0.0]))
    results[0].result.metric = -0.9  # good correlation
    results[1].result.metric = -0.1  # poor
    plain = ReduceToDisplacementField(field_spacing_factor=1, field_chunk=32)(
        results, ctor_factory(fixed), None)
    weighted = ReduceToDisplacementField(field_spacing_factor=1, field_chunk=32,
                                         use_quality=True)(results, ctor_factory(fixed), None)
    x_mid = plain.transform.field.read()[1][:, 16]
    xw_mid = weighted.transform.field.read()[1][:, 16]
    assert np.all(xw_mid < x_mid - 0.1)  # pulled towards block 0 (displacement 0)


def test_jacobian_and_report(blocks_factory, ctor_factory):
    fixed = _geometry(3)
    c = np.asarray(fixed.index_to_physical(np.asarray(fixed.size) / 2))
    scale = AffineTransform.from_arrays(1.1 * np.eye(3), c - 1.1 * c)
    results, _ = blocks_factory(fixed, 16, 4, lambda cc, p: scale)
    out = ReduceToDisplacementField(field_chunk=8)(results, ctor_factory(fixed), None)
    np.testing.assert_allclose(out.jacobian, 1.1**3, rtol=1e-4)
    assert out.report["folded_fraction"] == 0.0
    assert out.report["jacobian_min"] == pytest.approx(1.1**3, rel=1e-4)


def test_graph_is_chunk_local_and_never_assembles_the_field(blocks_factory, tmp_path):
    fixed = ImageGeometry((64, 128), (1.0, 1.0), (0.0, 0.0))
    results, boxes = blocks_factory(fixed, 16, 4, lambda c, p: _translation([0.5, 0.25]))
    reducer = ReduceToDisplacementField(field_spacing_factor=2, field_chunk=8,
                                        output=str(tmp_path / "f.zarr"), fill_distance=0.5)
    delayed_results = [dask.delayed(r) for r in results]
    graph = reducer.build_graph(delayed_results, boxes, fixed, None)
    hlg = dict(graph.__dask_graph__())
    keys = [k for k in hlg if isinstance(k, str)]
    blends = [k for k in keys if k.startswith("blend-")]
    samples = {k for k in keys if k.startswith("sample-")}
    fshape = reducer.field_geometry(fixed).shape
    assert fshape == (33, 65)
    assert len(blends) == 5 * 9  # 8x8-node chunks
    assert len(samples) == len(results) == 32
    assert not [k for k in keys if k.startswith("assemble")]
    from dask.core import get_dependencies

    n_deps = [len(samples & set(get_dependencies(hlg, k))) for k in blends]
    # a chunk sees only the blocks that can reach it (block + pad + fill reach)
    assert max(n_deps) <= 20 < len(samples)
    assert n_deps[0] <= 9  # corner chunk: a 3x3 neighbourhood
    assert min(n_deps) >= 1
    res = graph.compute(scheduler="sync")
    pts = _eval_points(fixed)
    shift = np.array([0.5, 0.25])
    np.testing.assert_allclose(res.transform.transform_points(pts), pts + shift, atol=1e-5)
    # the result pickles (lazy loaders, no open handles)
    import zarr

    status = zarr.open_array(str(tmp_path / "f.zarr"), path="quality/block_status")[...]
    np.testing.assert_array_equal(status, res.status_map)
    assert status.shape == (4, 8)
    jac = zarr.open_array(str(tmp_path / "f.zarr"), path="quality/jacobian")[...]
    np.testing.assert_allclose(jac, 1.0, atol=1e-5)
    again = pickle.loads(pickle.dumps(res.transform))
    np.testing.assert_allclose(again.transform_points(pts), pts + shift, atol=1e-5)


def test_reductions_of_other_block_results_never_share_a_key(blocks_factory, tmp_path):
    """Same output and geometry, other blocks (a rerun with other inputs): other keys.

    Shared keys let a scheduler that still knows the first reduction's tasks
    (a failed run's, in the same session) hand them to the second.
    """
    fixed = ImageGeometry((32, 32), (1.0, 1.0), (0.0, 0.0))
    results, boxes = blocks_factory(fixed, 16, 4, lambda c, p: _translation([0.5, 0.25]))
    reducer = ReduceToDisplacementField(field_spacing_factor=2, field_chunk=8,
                                        output=str(tmp_path / "f.zarr"))

    def keys(run: str) -> set[str]:
        delayed_results = [dask.delayed(r, name=f"{run}-block-{i}")
                           for i, r in enumerate(results)]
        graph = reducer.build_graph(delayed_results, boxes, fixed, None)
        return {k for k in dict(graph.__dask_graph__()) if isinstance(k, str)
                and not k.startswith(run)}

    first, again, other = keys("run1"), keys("run1"), keys("run2")
    assert first == again                        # deterministic for the same blocks
    assert any(k.startswith("blend-") for k in first)
    assert not first & other, sorted(first & other)[:3]


class _ItkStyleReaderCtor:
    """An itk.ImageFileReader-like constructor: geometry only via GetOutput()."""

    def __init__(self, geometry: ImageGeometry) -> None:
        self._geometry = geometry

    def __call__(self) -> Any:
        from ngff_dreg.itk_bridge import metadata_image

        image = metadata_image(self._geometry)

        class Reader:
            def GetOutput(self) -> Any:
                return image

        return Reader()


def test_plain_itk_dreg_call_with_itk_initial_transforms(blocks_factory):
    fixed = _geometry(3, oblique=True)
    t = np.array([0.3, -0.2, 0.1])
    results, _ = blocks_factory(fixed, 16, 4, lambda c, p: _translation(t))
    reducer = ReduceToDisplacementField(field_chunk=8, scheduler="sync")
    pts = _eval_points(fixed, 100)
    # a linear ITK initial transform: its matrix becomes the chain's affine
    euler = itk.Euler3DTransform[itk.D].New()
    euler.SetRotation(0.05, -0.02, 0.03)
    euler.SetTranslation([1.0, 2.0, -1.0])
    out = reducer(block_results=results, fixed_reader_ctor=_ItkStyleReaderCtor(fixed),
                  initial_transform=euler)
    from ngff_dreg.itk_bridge import transform_points as itk_points

    np.testing.assert_allclose(out.transform.transform_points(pts), itk_points(euler, pts + t),
                               atol=1e-5)
    assert not out.transform.affine.is_identity
    # a non-linear ITK initial transform: folded into the field, affine identity
    prev = smooth_displacement(fixed, 1.0, seed=8)
    dft = prev.to_itk()
    out2 = reducer(block_results=results, fixed_reader_ctor=_ItkStyleReaderCtor(fixed),
                   initial_transform=dft)
    assert out2.transform.affine.is_identity
    err = np.linalg.norm(out2.transform.transform_points(pts) - itk_points(dft, pts + t), axis=1)
    assert np.percentile(err, 95) < 0.03


@pytest.mark.parametrize("oblique", [False, True])
def test_bspline_blocks_are_evaluated_exactly_like_itk(blocks_factory, ctor_factory, oblique):
    """B-spline block results are evaluated with NumPy (BSplineGrid) and match ITK."""
    from ngff_dreg.itk_bridge import image_from_array
    from ngff_dreg.reduce.graph import sample_block
    from ngff_dreg.transforms import BSplineGrid

    fixed = _geometry(3, oblique)
    img = image_from_array(np.zeros(fixed.shape, np.float32), fixed)
    tx = itk.BSplineTransform[itk.D, 3, 3].New()
    init = itk.BSplineTransformInitializer[type(tx), itk.Image[itk.F, 3]].New()
    init.SetTransform(tx)
    init.SetImage(img)
    init.SetTransformDomainMeshSize([4, 3, 5])
    init.InitializeTransform()
    rng = np.random.default_rng(3)
    params = 0.3 * rng.standard_normal(tx.GetNumberOfParameters())
    tx.SetParameters(itk.OptimizerParameters[itk.D](params.tolist()))

    results, boxes = blocks_factory(fixed, 16, 4, lambda c, p: tx)
    sample = sample_block(results[0], boxes[0], fixed, fixed)
    assert isinstance(sample.transform, BSplineGrid)
    out = ReduceToDisplacementField(field_spacing_factor=1, field_chunk=16)(
        results, ctor_factory(fixed), None
    )
    # at voxel centres (= field nodes) the stored field is the transform itself
    idx = np.stack([rng.integers(0, n, 300) for n in fixed.shape], axis=1).astype(float)
    pts = fixed.array_index_to_physical(idx)
    want = np.array([tx.TransformPoint(p.tolist()) for p in pts])
    got = out.transform.transform_points(pts)
    assert np.abs(got - want).max() < 1e-5  # float32 storage only


def test_sharded_output_is_written_one_task_per_shard_and_equals_unsharded(
        blocks_factory, tmp_path, store_writes):
    """One blend/invert/check task per shard, each shard object written once, same values."""
    import zarr

    fixed = ImageGeometry((28, 24, 30), (0.9, 0.7, 0.5), (1.0, -2.0, 0.5),
                          small_rotation(3, 20, 1))
    truth = _truth(fixed)
    results, boxes = blocks_factory(fixed, 16, 4,
                                    lambda c, p: _local_affine(fixed, truth, p))
    out, graphs = {}, {}
    for shards in (None, 8):
        reducer = ReduceToDisplacementField(field_spacing_factor=2, field_chunk=4,
                                            output=str(tmp_path / f"{shards}.zarr"),
                                            shards=shards)
        graphs[shards] = reducer.build_graph([dask.delayed(r) for r in results], boxes,
                                             fixed, None)
        if shards == 8:
            store_writes.clear()
        out[shards] = graphs[shards].compute(scheduler="threads")
    fshape = ReduceToDisplacementField(field_spacing_factor=2).field_geometry(fixed).shape
    assert fshape == (15, 13, 16)
    n_chunks, n_shards = 4 * 4 * 4, 2 * 2 * 2
    for shards, n in ((None, n_chunks), (8, n_shards)):
        keys = [k for k in dict(graphs[shards].__dask_graph__()) if isinstance(k, str)]
        for kind in ("blend-", "invert-", "check-"):
            assert sum(k.startswith(kind) for k in keys) == n, (shards, kind)
    root = str(tmp_path / "8.zarr")
    for path in ("coordinateTransformations/fixed_to_moving/s0",
                 "coordinateTransformations/moving_to_fixed/s0", "quality/jacobian"):
        a = zarr.open_array(str(tmp_path / "None.zarr"), path=path, mode="r")
        b = zarr.open_array(root, path=path, mode="r")
        assert b.shards is not None and tuple(b.shards[-3:]) == (8, 8, 8), path
        assert a.shards is None
        np.testing.assert_array_equal(b[...], a[...], err_msg=path)
        written = {k: v for k, v in store_writes.items() if k.startswith(f"{root}/{path}/c/")}
        assert len(written) == n_shards and set(written.values()) == {1}, (path, written)
    assert out[8].report == out[None].report
    pts = _eval_points(fixed, 200)
    np.testing.assert_array_equal(out[8].transform.transform_points(pts),
                                  out[None].transform.transform_points(pts))
    np.testing.assert_array_equal(out[8].inv_transform.transform_points(pts),
                                  out[None].inv_transform.transform_points(pts))
