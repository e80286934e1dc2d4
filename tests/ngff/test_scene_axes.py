"""Named spatial points carried into and out of a scene's systems, whatever their axis order."""

from __future__ import annotations

import numpy as np
import pytest

from ngff_dreg.errors import InvalidMetadataError, NgffDregError
from ngff_dreg.ngff.scene_axes import (
    AxisMismatchError,
    check_point_count,
    spatial_map,
    spatial_names,
    spatial_unit,
)
from ngff_dreg.ngff.scene_graph import Edge, SceneGraph, parse_transform


def _axes(spec: str) -> list[dict]:
    kinds = {"t": "time", "c": "channel"}
    return [{"name": a, "type": kinds.get(a, "space"), "unit": "micrometer"} for a in spec]


def _graph(spec: str, transform: dict) -> SceneGraph:
    graph = SceneGraph(where="mem")
    graph.add_system(("", "a"), _axes(spec))
    graph.add_system(("", "b"), _axes(spec))
    graph.add_edge(Edge(("", "a"), ("", "b"), parse_transform(transform, ndim=len(spec)), "t"))
    return graph


M = np.array([[1.1, 0.1, 0.0], [0.0, 0.9, 0.2], [0.05, 0.0, 1.2]])
T = np.array([1.0, -2.0, 0.5])


def _reference(p_xyz: np.ndarray) -> np.ndarray:
    """The test map on x, y, z points: ``M p + T``."""
    return p_xyz @ M.T + T


@pytest.mark.parametrize("order", ["xyz", "zyx", "yzx"])
def test_points_follow_the_systems_axes_by_name(order):
    perm = ["xyz".index(a) for a in order]  # system coordinate i is x/y/z[perm[i]]
    affine = np.hstack([M[np.ix_(perm, perm)], T[perm, None]])
    graph = _graph(order, {"type": "affine", "affine": affine.tolist()})
    pts = np.random.default_rng(0).normal(size=(6, 3))  # x, y, z
    m = spatial_map(graph, ("", "a"), ("", "b"), ("x", "y", "z"))
    np.testing.assert_allclose(m(pts), _reference(pts), atol=1e-12)
    zyx = spatial_map(graph, ("", "a"), ("", "b"), ("z", "y", "x"))
    np.testing.assert_allclose(zyx(pts[:, ::-1]), _reference(pts)[:, ::-1], atol=1e-12)
    assert spatial_names(graph, ("", "a")) == tuple(order)
    assert spatial_unit(graph, ("", "a")) == "micrometer"


@pytest.mark.parametrize("lead", ["t", "c"])
def test_a_time_or_channel_axis_is_set_to_zero_and_dropped(lead):
    # (lead, x, y, z): the lead axis is scaled and shifted; it must not leak into x, y, z
    h = np.eye(5)
    h[1:4, 1:4] = M
    h[1:4, 4] = T
    h[0, 0], h[0, 4] = 3.0, 7.0
    h[1, 0] = 0.5  # x depends on the lead coordinate, which is 0 for spatial points
    graph = _graph(lead + "xyz", {"type": "affine", "affine": h[:4].tolist()})
    pts = np.random.default_rng(1).normal(size=(5, 3))
    m = spatial_map(graph, ("", "a"), ("", "b"), ("x", "y", "z"))
    np.testing.assert_allclose(m(pts), _reference(pts), atol=1e-12)
    np.testing.assert_allclose(m.homogeneous()[:3, :3], M, atol=1e-12)


def test_axes_that_do_not_match_are_refused_naming_the_system():
    graph = _graph("xyz", {"type": "identity"})
    graph.add_system(("", "ijk"), [{"name": n, "type": "space"} for n in "ijk"])
    graph.add_edge(Edge(("", "b"), ("", "ijk"), parse_transform({"type": "identity"}, ndim=3),
                        "u"))
    with pytest.raises(AxisMismatchError, match=r"'ijk'.*i\[space\], j\[space\], k\[space\]"):
        spatial_map(graph, ("", "a"), ("", "ijk"), ("x", "y", "z"))
    with pytest.raises(AxisMismatchError, match=r"'a'.*the points have x, y"):
        spatial_map(graph, ("", "a"), ("", "b"), ("x", "y"))
    graph.add_system(("img", "physical"), [])
    with pytest.raises(AxisMismatchError, match="'img/physical' declares no axes"):
        spatial_map(graph, ("img", "physical"), ("", "a"), ("x", "y", "z"))
    assert issubclass(AxisMismatchError, InvalidMetadataError)
    assert issubclass(AxisMismatchError, NgffDregError)


def test_point_counts_are_checked_against_the_system():
    graph = _graph("txyz", {"type": "identity"})
    check_point_count(graph, ("", "a"), [[0, 1, 2, 3]])
    with pytest.raises(AxisMismatchError, match=r"'a' has 4 axes \(t, x, y, z\).*have 3"):
        check_point_count(graph, ("", "a"), [[1, 2, 3]])
