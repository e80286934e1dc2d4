"""RFC-5 transforms as point maps, and paths through the graph of coordinate systems."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from ngff_dreg.errors import InvalidMetadataError
from ngff_dreg.ngff.scene_graph import (
    CoordinateSystemNotFoundError,
    Edge,
    NonInvertibleTransformError,
    NoPathError,
    SceneGraph,
    parse_transform,
    reference,
)

RNG = np.random.default_rng(3)
PTS = RNG.uniform(-5, 5, size=(7, 3))


class Arrays:
    """An in-memory ArraySource that records the boxes read from each array."""

    def __init__(self, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
        self.arrays = dict(arrays)
        self.attrs = dict(attrs)
        self.reads: list[tuple[str, Any]] = []

    def array(self, path: str) -> Any:
        outer = self

        class Recorder:
            shape = outer.arrays[path].shape

            def __getitem__(self, key: Any) -> np.ndarray:
                outer.reads.append((path, key))
                return outer.arrays[path][key]

        return Recorder()

    def attributes(self, path: str) -> Mapping[str, Any]:
        return self.attrs[path]


def _field_attrs(kind: str, scale: list[float], trans: list[float]) -> dict[str, Any]:
    axes = [{"name": "c", "type": kind, "discrete": True}] + [
        {"name": n, "type": "space"} for n in "zyx"]
    return {"ome": {"version": "0.6", "multiscales": [{
        "coordinateSystems": [{"name": "f", "axes": axes}],
        "datasets": [{"path": "s0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, *scale], "input": {"path": "s0"},
             "output": {"name": "f"}},
            {"type": "translation", "translation": [0.0, *trans]}]}]}]}}


@pytest.mark.parametrize("t, expect", [
    ({"type": "translation", "translation": [1, 2, 3]}, lambda p: p + np.array([1, 2, 3])),
    ({"type": "scale", "scale": [2, 3, 4]}, lambda p: p * [2, 3, 4]),
    ({"type": "mapAxis", "mapAxis": [2, 0, 1]}, lambda p: p[:, [2, 0, 1]]),
    ({"type": "affine", "affine": [[0, 1, 0, 1], [2, 0, 0, 0], [0, 0, 3, -1]]},
     lambda p: np.stack([p[:, 1] + 1, 2 * p[:, 0], 3 * p[:, 2] - 1], axis=1)),
    ({"type": "rotation", "rotation": [[0, -1, 0], [1, 0, 0], [0, 0, 1]]},
     lambda p: np.stack([-p[:, 1], p[:, 0], p[:, 2]], axis=1)),
    ({"type": "sequence", "transformations": [
        {"type": "scale", "scale": [2, 2, 2]}, {"type": "translation", "translation": [1, 0, 0]}]},
     lambda p: 2 * p + [1, 0, 0]),
])
def test_linear_types_and_their_inverses(t, expect):
    m = parse_transform(t, ndim=3)
    np.testing.assert_allclose(m(PTS), expect(PTS), atol=1e-12)
    np.testing.assert_allclose(m.inverse()(m(PTS)), PTS, atol=1e-12)


def test_parameters_stored_in_arrays():
    arrays = Arrays({"coordinateTransformations/a": np.array([[1.0, 0, 0, 5], [0, 1, 0, 6],
                                                              [0, 0, 1, 7], [0, 0, 0, 1]])}, {})
    m = parse_transform({"type": "affine", "path": "coordinateTransformations/a"}, arrays)
    np.testing.assert_allclose(m(PTS), PTS + np.array([5, 6, 7]))
    with pytest.raises(InvalidMetadataError, match="neither 'scale' nor a 'path'"):
        parse_transform({"type": "scale"}, arrays, where="x.json key")


def test_by_dimension_with_both_spellings():
    for ins, outs in (("inputAxes", "outputAxes"), ("input_axes", "output_axes")):
        t = {"type": "byDimension", "transformations": [
            {"transformation": {"type": "scale", "scale": [10]}, ins: [2], outs: [0]},
            {"type": "translation", "translation": [1, 2], ins: [0, 1], outs: [1, 2]}]}
        m = parse_transform(t)
        want = np.stack([10 * PTS[:, 2], PTS[:, 0] + 1, PTS[:, 1] + 2], axis=1)
        np.testing.assert_allclose(m(PTS), want)
        np.testing.assert_allclose(m.inverse()(want), PTS, atol=1e-12)


def _grid_field(kind: str) -> tuple[Arrays, np.ndarray]:
    data = RNG.normal(size=(3, 20, 21, 22)).astype(np.float32)
    return Arrays({"f/s0": data}, {"f": _field_attrs(kind, [2.0, 2.0, 2.0],
                                                     [-10.0, -10.0, -10.0])}), data


def test_displacements_are_read_lazily_and_interpolated():
    arrays, data = _grid_field("displacement")
    m = parse_transform({"type": "displacements", "path": "f"}, arrays)
    node = np.array([[3, 4, 5]])
    phys = node * 2.0 - 10.0
    np.testing.assert_allclose(m(phys), phys + data[:, 3, 4, 5], atol=1e-6)
    mid = phys + 1.0  # half way between nodes: the mean of the 8 corners
    corners = data[:, 3:5, 4:6, 5:7].reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(m(mid), mid + corners, atol=1e-6)
    # only the box around the points was read
    (_, box), = arrays.reads[-1:]
    assert all(s.stop - s.start <= 2 for s in box[1:])
    with pytest.raises(NonInvertibleTransformError, match="displacements f"):
        m.inverse()


def test_coordinates_field_replaces_the_point():
    arrays, data = _grid_field("coordinate")
    m = parse_transform({"type": "coordinates", "path": "f", "interpolation": "nearest"},
                        arrays)
    phys = np.array([[3, 4, 5]]) * 2.0 - 10.0 + 0.2
    np.testing.assert_allclose(m(phys)[0], data[:, 3, 4, 5], atol=1e-6)


def test_bijection_inverts_a_field():
    arrays, _ = _grid_field("displacement")
    t = {"type": "bijection", "forward": {"type": "displacements", "path": "f"},
         "inverse": {"type": "translation", "translation": [1, 1, 1]}}
    m = parse_transform(t, arrays)
    np.testing.assert_allclose(m.inverse()(PTS), PTS + 1)


def _graph() -> SceneGraph:
    g = SceneGraph(where="test.zarr")
    axes = [{"name": n, "type": "space"} for n in "zyx"]
    for name in ("a", "b", "c", "d"):
        g.add_system(("", name), axes)
    g.add_system(("img", "physical"), axes)
    g.add_edge(Edge(("", "a"), ("", "b"), parse_transform(
        {"type": "translation", "translation": [1, 0, 0]}), "t0"))
    g.add_edge(Edge(("", "c"), ("", "b"), parse_transform(
        {"type": "scale", "scale": [2, 2, 2]}), "t1"))
    arrays, _ = _grid_field("displacement")
    g.add_edge(Edge(("", "d"), ("", "c"), parse_transform(
        {"type": "displacements", "path": "f"}, arrays), "t2 (the field)"))
    return g


def test_paths_walk_forwards_and_backwards():
    g = _graph()
    m = g.path(("", "a"), ("", "c"))  # a -> b, then b -> c through the scale's inverse
    np.testing.assert_allclose(m(PTS), (PTS + np.array([1.0, 0, 0])) / 2)
    np.testing.assert_allclose(g.path(("", "c"), ("", "a"))(m(PTS)), PTS, atol=1e-12)
    np.testing.assert_allclose(g.path(("", "a"), ("", "a"))(PTS), PTS)


def test_a_path_needing_a_field_inverse_names_the_step():
    g = _graph()
    assert g.path(("", "d"), ("", "a"))(PTS).shape == PTS.shape
    with pytest.raises(NonInvertibleTransformError, match=r"t2 \(the field\)"):
        g.path(("", "a"), ("", "d"))
    with pytest.raises(NoPathError):
        g.path(("", "a"), ("img", "physical"))


def test_names_resolve_to_systems():
    g = _graph()
    assert g.resolve("a") == ("", "a")
    assert g.resolve("img/physical") == ("img", "physical")
    assert g.resolve("physical") == ("img", "physical")
    assert g.resolve("img") == ("img", "physical")
    with pytest.raises(CoordinateSystemNotFoundError, match="potato"):
        g.resolve("potato")


def test_references_accept_objects_and_draft_names():
    assert reference({"path": "view/fixed", "name": "physical"}, "k") == ("view/fixed",
                                                                           "physical")
    assert reference("input", "k") == ("", "input")
    with pytest.raises(InvalidMetadataError, match="k: expected"):
        reference(3, "k")
    with pytest.raises(InvalidMetadataError, match="unsupported transform type 'warp'"):
        parse_transform({"type": "warp"}, where="k")
