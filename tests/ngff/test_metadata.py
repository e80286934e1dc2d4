"""Parsing of NGFF 0.4 / 0.5 / 0.6 multiscale metadata (pure, no I/O)."""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ngff_dreg.errors import (
    InvalidMetadataError,
    LevelNotFoundError,
    NgffDregError,
    PathEscapeError,
    UnsupportedVersionError,
)
from ngff_dreg.ngff.metadata import (
    check_relative_path,
    normalize_unit,
    orientation_matrix,
    parse_multiscale,
    unit_factor,
)

URL = "s3://bucket/some/image.zarr"


def _axes(names: str = "zyx", unit: str | None = "micrometer") -> list[dict[str, Any]]:
    out = []
    for n in names:
        typ = {"t": "time", "c": "channel"}.get(n, "space")
        ax: dict[str, Any] = {"name": n, "type": typ}
        if typ == "space" and unit:
            ax["unit"] = unit
        out.append(ax)
    return out


def v04(names: str = "zyx", **kw: Any) -> dict[str, Any]:
    n = len(names)
    ms = {
        "version": "0.4",
        "name": "img",
        "axes": _axes(names, kw.pop("unit", "micrometer")),
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * n}]},
            {
                "path": "1",
                "coordinateTransformations": [
                    {"type": "scale", "scale": [2.0] * n},
                    {"type": "translation", "translation": [0.5] * n},
                ],
            },
        ],
    }
    ms.update(kw)
    return {"multiscales": [ms]}


def v05(names: str = "zyx", **kw: Any) -> dict[str, Any]:
    ms = v04(names, **kw)["multiscales"][0]
    del ms["version"]
    return {"ome": {"version": "0.5", "multiscales": [ms]}}


def v06(names: str = "zyx", extra: list[dict[str, Any]] | None = None,
        systems: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    n = len(names)
    datasets = []
    for i, f in enumerate((1.0, 2.0)):
        datasets.append({
            "path": f"s{i}",
            "coordinateTransformations": [{
                "type": "sequence",
                "input": {"path": f"s{i}"},
                "output": {"name": "intrinsic"},
                "transformations": [
                    {"type": "scale", "scale": [f * 0.5] * n},
                    {"type": "translation", "translation": [(f - 1) * 0.25] * n},
                ],
            }],
        })
    ms: dict[str, Any] = {
        "name": "img06",
        "coordinateSystems": systems or [{"name": "intrinsic", "axes": _axes(names)}],
        "datasets": datasets,
    }
    if extra is not None:
        ms["coordinateTransformations"] = extra
    return {"ome": {"version": "0.6", "multiscales": [ms]}}


# --------------------------------------------------------------------------- basics


def test_v04_multiscales_level_transforms_compose() -> None:
    attrs = v04(coordinateTransformations=[
        {"type": "scale", "scale": [3.0, 2.0, 4.0]},
        {"type": "translation", "translation": [10.0, 20.0, 30.0]},
    ])
    ms = parse_multiscale(attrs, url=URL)
    assert ms.version == "0.4" and ms.name == "img"
    assert ms.spatial_indices == (0, 1, 2)
    # spacing = s_ms * s_ds ; origin = s_ms * t_ds + t_ms   (ITK order x, y, z)
    assert ms.spacing(0) == (4.0, 2.0, 3.0)
    assert ms.origin(0) == (30.0, 20.0, 10.0)
    assert ms.spacing(1) == (8.0, 4.0, 6.0)
    assert ms.origin(1) == (30.0 + 4 * 0.5, 20.0 + 2 * 0.5, 10.0 + 3 * 0.5)
    assert ms.unit == "micrometer"
    np.testing.assert_array_equal(ms.direction_matrix, np.eye(3))


def test_v05_with_time_and_channel() -> None:
    ms = parse_multiscale(v05("tczyx"), url=URL)
    assert ms.version == "0.5"
    assert ms.spatial_indices == (2, 3, 4)
    assert [a.name for a in ms.non_spatial_axes] == ["t", "c"]
    assert ms.axis_index("channel") == 1 and ms.axis_index("time") == 0
    g = ms.geometry(1, (3, 2, 10, 11, 12))
    assert g.shape == (10, 11, 12) and g.spacing == (2.0, 2.0, 2.0)


def test_2d_image() -> None:
    ms = parse_multiscale(v04("cyx"), url=URL)
    assert ms.ndim == 2 and ms.spatial_indices == (1, 2)
    assert ms.direction == ((1.0, 0.0), (0.0, 1.0))


def test_v06_sequence_and_named_output() -> None:
    ms = parse_multiscale(v06(), url=URL)
    assert ms.version == "0.6" and ms.coordinate_system == "intrinsic"
    assert ms.spacing(1) == (1.0, 1.0, 1.0)
    assert ms.origin(1) == (0.25, 0.25, 0.25)


@pytest.mark.parametrize("version", ["0.6", "0.6rc0", "0.6.dev2"])
def test_v06_version_spellings(version: str) -> None:
    attrs = v06()
    attrs["ome"]["version"] = version
    assert parse_multiscale(attrs).version == "0.6"


def test_v06_scale_to_physical_system() -> None:
    systems = [
        {"name": "physical", "axes": _axes("yx", "millimeter")},
        {"name": "intrinsic", "axes": _axes("yx", "millimeter")},
    ]
    extra = [{"type": "scale", "scale": [10.0, 10.0], "input": {"name": "intrinsic"},
              "output": {"name": "physical"}}]
    ms = parse_multiscale(v06("yx", extra, systems), url=URL)
    assert ms.coordinate_system == "physical"
    assert ms.spacing(0) == (5.0, 5.0)
    assert ms.unit == "millimeter"
    # a chain to a named system that does not exist is an error naming the key
    with pytest.raises(InvalidMetadataError, match="coordinateTransformations"):
        parse_multiscale(v06("yx", extra, systems), url=URL, coordinate_system="nowhere")


def _rot_z(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    # numpy order z, y, x: rotate the (y, x) plane
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def test_v06_rotation_gives_oblique_direction() -> None:
    r = _rot_z(0.4)
    systems = [{"name": "intrinsic", "axes": _axes()}, {"name": "world", "axes": _axes()}]
    extra = [{
        "type": "sequence", "input": {"name": "intrinsic"}, "output": {"name": "world"},
        "transformations": [
            {"type": "rotation", "rotation": r.tolist()},
            {"type": "translation", "translation": [1.0, 2.0, 3.0]},
        ],
    }]
    ms = parse_multiscale(v06("zyx", extra, systems), url=URL)
    d_itk = r[::-1, ::-1]
    np.testing.assert_allclose(ms.direction_matrix, d_itk, atol=1e-12)
    # level 1: origin = R @ t_ds + b (numpy order), reversed to ITK
    expected = r @ np.array([0.25, 0.25, 0.25]) + np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(ms.origin(1), expected[::-1], atol=1e-12)
    assert ms.spacing(1) == (1.0, 1.0, 1.0)


def test_v06_affine_with_flip_and_scale() -> None:
    # x flipped and scaled by 3: column norms become spacing, signs go to direction
    a = [[1, 0, 0, 5.0], [0, 1, 0, 0.0], [0, 0, -3, 7.0]]
    systems = [{"name": "intrinsic", "axes": _axes()}, {"name": "world", "axes": _axes()}]
    extra = [{"type": "affine", "affine": a, "input": {"name": "intrinsic"},
              "output": {"name": "world"}}]
    ms = parse_multiscale(v06("zyx", extra, systems), url=URL)
    assert ms.spacing(0) == pytest.approx((1.5, 0.5, 0.5))
    assert np.linalg.det(ms.direction_matrix) == pytest.approx(-1.0)
    assert ms.direction_matrix[0, 0] == pytest.approx(-1.0)
    assert ms.origin(0) == pytest.approx((7.0, 0.0, 5.0))


def test_rotation_must_be_orthonormal() -> None:
    systems = [{"name": "intrinsic", "axes": _axes()}, {"name": "world", "axes": _axes()}]
    extra = [{"type": "rotation", "rotation": [[2, 0, 0], [0, 1, 0], [0, 0, 1]],
              "input": {"name": "intrinsic"}, "output": {"name": "world"}}]
    with pytest.raises(InvalidMetadataError, match="rotation"):
        parse_multiscale(v06("zyx", extra, systems), url=URL)


def test_rfc4_orientation_labels_to_lps_direction() -> None:
    attrs = v05()
    labels = ["superior-to-inferior", "anterior-to-posterior", "left-to-right"]
    for ax, lab in zip(attrs["ome"]["multiscales"][0]["axes"], labels):
        ax["orientation"] = {"type": "anatomical", "value": lab}
    ms = parse_multiscale(attrs, url=URL)
    assert ms.orientation == tuple(labels)
    # ITK index axis 0 (x array axis) runs left->right = -x in LPS, y runs A->P = +y,
    # z runs S->I = -z
    np.testing.assert_array_equal(ms.direction_matrix, np.diag([-1.0, 1.0, -1.0]))
    off = parse_multiscale(attrs, url=URL, use_orientation=False)
    np.testing.assert_array_equal(off.direction_matrix, np.eye(3))


def test_orientation_matrix_permutation() -> None:
    # array axes z,y,x labelled as (A->P, I->S, R->L): a permutation
    m = orientation_matrix(["anterior-to-posterior", "inferior-to-superior", "right-to-left"])
    assert m is not None
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    assert orientation_matrix(["left-to-right", "right-to-left", "inferior-to-superior"]) is None
    assert orientation_matrix(["inferior-to-superior", "left-to-right"]) is None  # 2D has no z


# --------------------------------------------------------------------------- units


def test_units_and_conversion() -> None:
    assert normalize_unit("um") == "micrometer"
    assert normalize_unit("Millimeters") == "millimeter"
    assert normalize_unit("second") is None
    assert unit_factor("millimeter", "micrometer") == pytest.approx(1000.0)
    ms = parse_multiscale(v04(coordinateTransformations=[
        {"type": "translation", "translation": [1.0, 2.0, 3.0]}]), url=URL)
    mm = ms.to_unit("millimeter")
    assert mm.unit == "millimeter"
    assert mm.spacing(1) == pytest.approx((0.002, 0.002, 0.002))
    assert mm.origin(0) == pytest.approx((0.003, 0.002, 0.001))
    assert all(a.unit == "millimeter" for a in mm.spatial_axes)
    with pytest.raises(InvalidMetadataError, match="not a known length unit"):
        ms.to_unit("parsecs per hour")


def test_mixed_units_are_converted_to_x_unit() -> None:
    attrs = v04()
    attrs["multiscales"][0]["axes"][0]["unit"] = "millimeter"  # z in mm, y/x in um
    ms = parse_multiscale(attrs, url=URL)
    assert ms.unit == "micrometer"
    assert ms.spacing(0) == pytest.approx((1.0, 1.0, 1000.0))


def test_missing_unit_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ngff_dreg"):
        ms = parse_multiscale(v04(unit=None), url=URL)
    assert ms.unit is None
    assert any("no unit" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.WARNING, logger="ngff_dreg"):
        assert ms.to_unit("mm").spacing(0) == (1.0, 1.0, 1.0)
    assert any("assuming" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- errors


def _mutated(attrs: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(attrs)
    node: Any = out
    for p in path[:-1]:
        node = node[p]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DELETE = object()
MS4 = ["multiscales", 0]


@pytest.mark.parametrize(
    ("path", "value", "error", "key"),
    [
        (["multiscales"], _DELETE, InvalidMetadataError, "multiscales"),
        ([*MS4, "version"], "0.3", UnsupportedVersionError, "multiscales[0].version"),
        ([*MS4, "version"], "1.0", UnsupportedVersionError, "version"),
        ([*MS4, "datasets", 0, "coordinateTransformations", 0, "scale"], [1.0, 1.0],
         InvalidMetadataError, "datasets[0].coordinateTransformations[0].scale"),
        ([*MS4, "datasets", 1, "coordinateTransformations", 0, "scale"], [2.0, 0.0, 2.0],
         InvalidMetadataError, "datasets[1].coordinateTransformations[0].scale"),
        ([*MS4, "datasets", 1, "coordinateTransformations", 0, "scale"], [2.0, -1.0, 2.0],
         InvalidMetadataError, "> 0"),
        ([*MS4, "datasets", 0, "path"], "../other", PathEscapeError, "datasets[0].path"),
        ([*MS4, "datasets", 0, "path"], "a/../../b", PathEscapeError, "datasets[0].path"),
        ([*MS4, "datasets", 0, "path"], "/etc/passwd", PathEscapeError, "datasets[0].path"),
        ([*MS4, "datasets", 0, "path"], "s3://other/bucket", PathEscapeError, "path"),
        ([*MS4, "axes"], _axes("zyxw"), InvalidMetadataError, "multiscales[0].axes"),
        ([*MS4, "axes"], [{"name": "x", "type": "space"}, {"name": "c", "type": "channel"}],
         InvalidMetadataError, "axes"),
        ([*MS4, "axes"], [*_axes("zyx")[:2], {"name": "y", "type": "space"}],
         InvalidMetadataError, "unique"),
        ([*MS4, "datasets"], [], InvalidMetadataError, "datasets"),
        ([*MS4, "datasets", 0, "coordinateTransformations"], [{"type": "affine"}],
         InvalidMetadataError, "coordinateTransformations"),
    ],
)
def test_bad_metadata_names_url_and_key(
    path: list[Any], value: Any, error: type[Exception], key: str
) -> None:
    with pytest.raises(error) as info:
        parse_multiscale(_mutated(v04(), path, value), url=URL)
    msg = str(info.value)
    assert URL in msg
    assert key in msg


def test_v05_errors() -> None:
    with pytest.raises(UnsupportedVersionError, match=r"ome\.version"):
        parse_multiscale({"ome": {"version": "0.7", "multiscales": []}}, url=URL)
    with pytest.raises(InvalidMetadataError, match=r"ome\.multiscales"):
        parse_multiscale({"ome": {"version": "0.5"}}, url=URL)
    with pytest.raises(InvalidMetadataError, match="attributes"):
        parse_multiscale(["not", "a", "dict"], url=URL)


def test_v06_requires_coordinate_systems() -> None:
    attrs = v06()
    ms = attrs["ome"]["multiscales"][0]
    ms["axes"] = ms.pop("coordinateSystems")[0]["axes"]
    with pytest.raises(InvalidMetadataError, match="coordinateSystems"):
        parse_multiscale(attrs, url=URL)


def test_level_lookup() -> None:
    ms = parse_multiscale(v04(), url=URL)
    assert ms.level_index(-1) == 1 and ms.level_index("1") == 1 and ms.level_index(0) == 0
    with pytest.raises(LevelNotFoundError, match=URL):
        ms.level_index(2)
    with pytest.raises(LevelNotFoundError, match="nope"):
        ms.level_index("nope")


def test_check_relative_path() -> None:
    assert check_relative_path("./s0/", URL, "k") == "s0"
    assert check_relative_path("a/b", URL, "k") == "a/b"
    for bad in ("..", "C:/x", "\\\\server\\x", "~/x", "file:///etc"):
        with pytest.raises(PathEscapeError):
            check_relative_path(bad, URL, "k")


# --------------------------------------------------------------------------- property test

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=True)
    | st.text(max_size=5) | st.sampled_from(["0.4", "0.5", "0.6", "space", "scale", ".."]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(
        ["ome", "version", "multiscales", "axes", "datasets", "path", "type", "scale",
         "translation", "coordinateTransformations", "coordinateSystems", "name", "unit",
         "input", "output", "transformations", "rotation", "affine", "orientation", "value"]),
        children, max_size=5),
    max_leaves=20,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


_VALID = [v04(), v05("tczyx"), v06(), v04("yx"),
          v06("zyx", [{"type": "rotation", "rotation": _rot_z(0.3).tolist(),
                       "input": {"name": "intrinsic"}, "output": {"name": "w"}}],
              [{"name": "intrinsic", "axes": _axes()}, {"name": "w", "axes": _axes()}])]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_malformed_metadata_only_raises_ngff_errors(data: st.DataObject) -> None:
    base = data.draw(st.sampled_from(_VALID))
    attrs = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(attrs)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        attrs = _mutated(attrs, list(path), data.draw(_json))
    try:
        ms = parse_multiscale(attrs, url=URL)
    except NgffDregError as exc:
        assert URL in str(exc)
        return
    # whatever parsed must be coherent
    assert 2 <= ms.ndim <= 3
    for lv in ms.levels:
        assert all(s > 0 for s in ms.spacing(lv.path))


@settings(max_examples=200, deadline=None)
@given(attrs=_json)
def test_property_random_json_only_raises_ngff_errors(attrs: Any) -> None:
    with contextlib.suppress(NgffDregError):
        parse_multiscale(attrs, url=URL)
