"""A run's options and inputs: storage options, the initial transform converted once."""

from __future__ import annotations

from dataclasses import fields

import itk
import numpy as np
import pytest

from ngff_dreg.errors import ScheduleError
from ngff_dreg.run import RunOptions, as_initial_transform
from ngff_dreg.transforms import AffineTransform, TransformChain


def test_options_mirror_register_keywords() -> None:
    import inspect

    from ngff_dreg.pipeline import register

    keywords = [p.name for p in inspect.signature(register).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert keywords == [f.name for f in fields(RunOptions)]
    for f in fields(RunOptions):
        assert inspect.signature(register).parameters[f.name].default == f.default


def test_storage_options_per_url() -> None:
    opts = RunOptions(storage_options={"anon": True, "a": 1}, fixed_storage_options={"a": 2})
    assert opts.storage(opts.fixed_storage_options) == {"anon": True, "a": 2}
    assert opts.storage(None) == {"anon": True, "a": 1}
    assert RunOptions().storage(None) is None


def test_initial_transform_forms() -> None:
    h = np.eye(4)
    h[:3, 3] = [1.0, 2.0, 3.0]
    a = as_initial_transform(h, 3, None)
    assert isinstance(a, AffineTransform) and a.t.tolist() == [1.0, 2.0, 3.0]
    assert as_initial_transform(h[:3], 3, None) == a
    tx = itk.TranslationTransform[itk.D, 3].New()
    tx.SetOffset([1.0, 2.0, 3.0])
    assert as_initial_transform(tx, 3, None) == a
    chain = TransformChain.identity(3)
    assert as_initial_transform(chain, 3, None) is chain
    assert as_initial_transform(None, 3, None) is None
    with pytest.raises(ScheduleError, match="4x4"):
        as_initial_transform(np.eye(2), 3, None)


def test_initial_transform_from_any_scene(tmp_path):
    """``SCENE:SOURCE:TARGET``: exact when linear, sampled on the grid when a field."""
    import json

    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.io.omezarr.field_writer import write_field_scene
    from ngff_dreg.io.omezarr.transform_reader import read_transform
    from ngff_dreg.synthetic import smooth_displacement

    axes = [{"name": n, "type": "space"} for n in "zyx"]
    scene = tmp_path / "affine.zarr"
    scene.mkdir()
    rows = [[1.0, 0, 0, 3], [0, 2.0, 0, 0], [0, 0, 1.0, -1]]  # z, y, x order
    (scene / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
        "attributes": {"ome": {"version": "0.6", "scene": {
            "coordinateSystems": [{"name": "a", "axes": axes}, {"name": "b", "axes": axes}],
            "coordinateTransformations": [{"type": "affine", "affine": rows,
                                           "input": "a", "output": "b"}]}}}}))
    init = as_initial_transform(f"{scene}:a:b", 3, None)
    assert isinstance(init, AffineTransform)
    np.testing.assert_allclose(init.transform_points(np.array([[1.0, 1.0, 1.0]])),
                               [[0.0, 2.0, 4.0]])  # x, y, z
    grid = ImageGeometry((10, 11, 12), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    url = str(tmp_path / "field.zarr")
    warp = TransformChain(AffineTransform.identity(3), smooth_displacement(grid, 1.5))
    write_field_scene(url, warp, chunks=8)
    with pytest.raises(ScheduleError, match="not linear"):
        as_initial_transform(f"{url}:fixed:moving", 3, None)
    sampled = as_initial_transform(f"{url}:fixed:moving", 3, None, grid)
    assert isinstance(sampled, TransformChain) and sampled.field is not None
    pts = grid.array_index_to_physical(np.array([[2.0, 3.0, 4.0], [5.0, 6.0, 7.0]]))
    np.testing.assert_allclose(sampled.transform_points(pts),
                               read_transform(url).transform_points(pts), atol=1e-5)
