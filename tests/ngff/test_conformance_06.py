"""NGFF 0.6 conformance: the transform constructs of the spec's transformations chapter.

Each case is our own metadata, written from the rules of the spec text (the
``ome/ngff-spec`` cases need the internet, which CI does not have): valid
constructs must open with the geometry they define, invalid ones must raise an
ngff-dreg error naming the key at fault.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from ngff_dreg.errors import InvalidMetadataError, NgffDregError, PathEscapeError
from ngff_dreg.ngff.metadata import image_registrations, parse_multiscale

URL = "file:///data/img.ome.zarr"


def _axis(name: str, typ: str | None = "space", unit: str | None = "micrometer"
          ) -> dict[str, Any]:
    ax: dict[str, Any] = {"name": name}
    if typ is not None:
        ax["type"] = typ
    if unit is not None and typ == "space":
        ax["unit"] = unit
    return ax


def _system(name: str, names: str, **units: str) -> dict[str, Any]:
    types = {"t": "time", "c": "channel"}
    return {"name": name, "axes": [_axis(n, types.get(n, "space"), units.get(n, "micrometer"))
                                   for n in names]}


def image(names: str = "yx", scale: list[float] | None = None,
          extra: list[dict[str, Any]] | None = None,
          systems: list[dict[str, Any]] | None = None,
          intrinsic: str = "physical") -> dict[str, Any]:
    """A two-level 0.6 image whose datasets map to ``intrinsic`` (scale 0.5, then 1.0)."""
    n = len(names)
    s = scale or [0.5] * n
    datasets = []
    for lv, f in enumerate((1.0, 2.0)):
        datasets.append({"path": f"s{lv}", "coordinateTransformations": [{
            "type": "sequence", "input": {"path": f"s{lv}"}, "output": {"name": intrinsic},
            "transformations": [
                {"type": "scale", "scale": [v * f for v in s]},
                {"type": "translation", "translation": [v * (f - 1) / 2 for v in s]},
            ]}]})
    ms: dict[str, Any] = {"name": "img", "datasets": datasets,
                          "coordinateSystems": systems or [_system(intrinsic, names)]}
    if extra is not None:
        ms["coordinateTransformations"] = extra
    return {"ome": {"version": "0.6", "multiscales": [ms]}}


def _to(target: str, t: dict[str, Any], source: str = "physical") -> dict[str, Any]:
    return {**t, "input": {"name": source}, "output": {"name": target}}


# --------------------------------------------------------------------------- valid


def test_map_axis_swaps_the_physical_axes() -> None:
    systems = [_system("physical", "yx"), _system("swapped", "yx")]
    extra = [_to("swapped", {"type": "mapAxis", "mapAxis": [1, 0]})]
    ms = parse_multiscale(image("yx", [0.5, 2.0], extra, systems), url=URL)
    assert ms.coordinate_system == "swapped"
    # output y = input x: index (i, j) -> physical (x-scale * j, y-scale * i)
    point = _physical(ms, 0, [3, 5])
    np.testing.assert_allclose(point, [2.0 * 5, 0.5 * 3])


def _physical(ms: Any, level: int, index: list[float]) -> np.ndarray:
    """Physical point (NumPy order) of an index, through the ITK geometry of ``ms``."""
    sp = np.asarray(ms.spacing(level))[::-1]
    org = np.asarray(ms.origin(level))[::-1]
    d = ms.direction_matrix[::-1, ::-1]
    return d @ (sp * np.asarray(index, float)) + org


def test_map_axis_cycle_in_3d() -> None:
    systems = [_system("physical", "zyx"), _system("cycled", "zyx")]
    extra = [_to("cycled", {"type": "mapAxis", "mapAxis": [1, 2, 0]})]
    ms = parse_multiscale(image("zyx", [1.0, 2.0, 3.0], extra, systems), url=URL)
    # output axis i is input axis mapAxis[i]
    np.testing.assert_allclose(_physical(ms, 0, [1, 1, 1]), [2.0, 3.0, 1.0])


def test_by_dimension_leaving_an_axis_unset_passes_it_through(
        caplog: pytest.LogCaptureFixture) -> None:
    systems = [_system("physical", "zyx"), _system("out", "zyx")]
    extra = [_to("out", {"type": "byDimension", "transformations": [
        {"transformation": {"type": "scale", "scale": [2.0]}, "inputAxes": [0],
         "outputAxes": [0]},
        {"transformation": {"type": "translation", "translation": [-10.0]}, "inputAxes": [1],
         "outputAxes": [1]}]})]
    ms = parse_multiscale(image("zyx", [1.0, 1.0, 1.0], extra, systems), url=URL)
    np.testing.assert_allclose(_physical(ms, 0, [1, 2, 3]), [2.0, -8.0, 3.0])
    assert "pass through" in caplog.text


def test_map_axis_identity_permutation_keeps_geometry() -> None:
    systems = [_system("physical", "zyx"), _system("same", "zyx")]
    extra = [_to("same", {"type": "mapAxis", "mapAxis": [0, 1, 2]})]
    ms = parse_multiscale(image("zyx", extra=extra, systems=systems), url=URL)
    np.testing.assert_allclose(ms.direction_matrix, np.eye(3))
    assert ms.spacing(1) == (1.0, 1.0, 1.0)


def test_by_dimension_from_array_axes_to_physical() -> None:
    # intrinsic axes of type "array" (no unit); byDimension scales axis 0, shifts axis 1
    arr = {"name": "array", "axes": [{"name": "d0", "type": "array", "discrete": True},
                                     {"name": "d1", "type": "array", "discrete": True}]}
    systems = [_system("physical", "yx"), arr]
    extra = [{"type": "byDimension", "input": {"name": "array"}, "output": {"name": "physical"},
              "transformations": [
                  {"transformation": {"type": "scale", "scale": [3.0]},
                   "inputAxes": [0], "outputAxes": [0]},
                  {"transformation": {"type": "translation", "translation": [-10.0]},
                   "inputAxes": [1], "outputAxes": [1]},
              ]}]
    attrs = image("yx", [1.0, 1.0], extra, systems, intrinsic="array")
    ms = parse_multiscale(attrs, url=URL)
    assert ms.ndim == 2 and ms.coordinate_system == "physical"
    assert [a.name for a in ms.spatial_axes] == ["y", "x"] and ms.unit == "micrometer"
    np.testing.assert_allclose(_physical(ms, 0, [2, 7]), [6.0, -3.0])


def test_by_dimension_swapping_axes_inside_a_sequence() -> None:
    systems = [_system("physical", "zyx"), _system("out", "zyx")]
    by_dim = {"type": "byDimension", "transformations": [
        {"transformation": {"type": "translation", "translation": [0.5, 1.5]},
         "inputAxes": [2, 1], "outputAxes": [1, 2]},
        {"transformation": {"type": "scale", "scale": [2.0]}, "inputAxes": [0],
         "outputAxes": [0]},
    ]}
    extra = [_to("out", {"type": "sequence", "transformations": [by_dim]})]
    ms = parse_multiscale(image("zyx", [1.0, 1.0, 1.0], extra, systems), url=URL)
    # out z = 2 z, out y = x + 0.5, out x = y + 1.5
    np.testing.assert_allclose(_physical(ms, 0, [1, 2, 3]), [2.0, 3.5, 3.5])


@pytest.mark.parametrize(("names", "project", "created_names"), [
    ("yx", {"createdOutputs": [0, 1]}, "czyx"),                      # 2-D into c, z, y, x
    ("cyx", {"createdOutputs": [0], "droppedInputs": [0]}, "zyx"),   # c dropped, z created
])
def test_project_axis_leaving_two_spatial_axes(names: str, project: dict[str, Any],
                                               created_names: str) -> None:
    systems = [_system("physical", names), _system("world", created_names)]
    extra = [_to("world", {"type": "projectAxis", **project})]
    ms = parse_multiscale(image(names, extra=extra, systems=systems), url=URL)
    assert ms.coordinate_system == "world" and ms.ndim == 2
    assert ms.spacing(0) == (0.5, 0.5) and ms.spacing(1) == (1.0, 1.0)


def test_affine_2d_to_3d_with_constant_z_opens_as_2d() -> None:
    systems = [_system("physical", "yx"), _system("zyx", "zyx")]
    extra = [_to("zyx", {"type": "affine", "affine": [[0, 0, 1], [1, 0, 2], [0, 1, 5]]})]
    ms = parse_multiscale(image("yx", [1.0, 1.0], extra, systems), url=URL)
    assert ms.ndim == 2 and ms.origin(0) == (5.0, 2.0)


def test_projection_into_more_spatial_axes_than_the_image_falls_back(
        caplog: pytest.LogCaptureFixture) -> None:
    # z depends on y: the image is a tilted plane in 3-D, not a 2-D geometry there
    systems = [_system("physical", "yx"), _system("zyx", "zyx")]
    extra = [_to("zyx", {"type": "affine", "affine": [[1, 0, 0], [1, 0, 0], [0, 1, 0]]})]
    attrs = image("yx", extra=extra, systems=systems)
    ms = parse_multiscale(attrs, url=URL)
    assert ms.coordinate_system == "physical"
    assert "no 2-3-D geometry" in caplog.text
    with pytest.raises(InvalidMetadataError, match="coordinateTransformations"):
        parse_multiscale(attrs, url=URL, coordinate_system="zyx")


@pytest.mark.parametrize("kind", ["affine", "rotation"])
def test_parameters_stored_in_an_array(kind: str) -> None:
    theta = 0.3
    r = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    params = np.hstack([r, [[4.0], [-1.0]]]) if kind == "affine" else r
    systems = [_system("physical", "yx"), _system("world", "yx")]
    extra = [_to("world", {"type": kind, "path": "coordinateTransformations/params"})]
    asked: list[tuple[str, str]] = []

    def load(path: str, key: str) -> np.ndarray:
        asked.append((path, key))
        return params

    attrs = image("yx", [1.0, 1.0], extra, systems)
    ms = parse_multiscale(attrs, url=URL, load_array=load)
    assert asked == [("coordinateTransformations/params",
                      "ome.multiscales[0].coordinateTransformations[0].path")] * 2
    np.testing.assert_allclose(ms.direction_matrix, r[::-1, ::-1], atol=1e-12)
    offset = [4.0, -1.0] if kind == "affine" else [0.0, 0.0]
    np.testing.assert_allclose(ms.origin(0), offset[::-1], atol=1e-12)
    # without a loader the error says the store is needed, naming the key
    with pytest.raises(InvalidMetadataError, match=r"coordinateTransformations\[0\]\.path"):
        parse_multiscale(attrs, url=URL)


@pytest.mark.parametrize("path", ["../outside", "/abs/params", "s3://other/params", "a/../../b"])
def test_parameter_array_path_must_stay_in_the_store(path: str) -> None:
    systems = [_system("physical", "yx"), _system("world", "yx")]
    extra = [_to("world", {"type": "affine", "path": path})]

    def load(p: str, key: str) -> np.ndarray:  # pragma: no cover - must not be reached
        raise AssertionError(f"loader called with {p!r}")

    with pytest.raises(PathEscapeError, match=r"coordinateTransformations\[0\]\.path"):
        parse_multiscale(image("yx", extra=extra, systems=systems), url=URL, load_array=load)


@pytest.mark.parametrize("shape", [(3, 2), (2, 2, 2), (2,)])
def test_parameter_array_of_the_wrong_shape(shape: tuple[int, ...]) -> None:
    systems = [_system("physical", "yx"), _system("world", "yx")]
    extra = [_to("world", {"type": "affine", "path": "p"})]
    with pytest.raises(InvalidMetadataError, match="coordinateTransformations"):
        parse_multiscale(image("yx", extra=extra, systems=systems), url=URL,
                         load_array=lambda p, k: np.ones(shape))


def test_additional_transforms_after_the_multiscale_transform_compose_in_order() -> None:
    systems = [_system("physical", "zyx"), _system("out", "zyx")]
    seq = {"type": "sequence", "transformations": [
        {"type": "rotation", "rotation": np.eye(3).tolist()},
        {"type": "translation", "translation": [5.0, 10.0, 15.0]},
        {"type": "affine", "affine": np.hstack([np.eye(3), np.zeros((3, 1))]).tolist()},
        {"type": "scale", "scale": [2.0, 2.0, 2.0]},
        {"type": "mapAxis", "mapAxis": [2, 1, 0]},
    ]}
    ms = parse_multiscale(image("zyx", [1.0, 1.0, 1.0], [_to("out", seq)], systems), url=URL)
    # point p -> 2 (p + t), then reversed axes
    p = np.array([1.0, 2.0, 3.0])
    want = (2 * (p + np.array([5.0, 10.0, 15.0])))[::-1]
    np.testing.assert_allclose(_physical(ms, 0, p.tolist()), want)


def test_chain_of_two_systems_and_explicit_target() -> None:
    systems = [_system("physical", "yx"), _system("a", "yx"), _system("b", "yx")]
    extra = [_to("a", {"type": "translation", "translation": [1.0, 2.0]}),
             _to("b", {"type": "scale", "scale": [2.0, 2.0]}, source="a")]
    # the second transform does not touch the intrinsic system: logged and left out
    ms = parse_multiscale(image("yx", [1.0, 1.0], extra, systems), url=URL)
    assert ms.coordinate_system == "a" and ms.origin(0) == (2.0, 1.0)


def test_transform_into_the_intrinsic_system_is_not_followed() -> None:
    systems = [_system("physical", "yx"), _system("other", "yx")]
    extra = [_to("physical", {"type": "scale", "scale": [3.0, 3.0]}, source="other")]
    ms = parse_multiscale(image("yx", extra=extra, systems=systems), url=URL)
    assert ms.coordinate_system == "physical" and ms.spacing(0) == (0.5, 0.5)


def test_transform_into_the_intrinsic_system_is_inverted_when_asked_for() -> None:
    # the spec lets a multiscales transform end at the intrinsic system:
    # other -> physical scales by 4 (and shifts), so physical -> other divides
    systems = [_system("physical", "yx"), _system("other", "yx")]
    extra = [{"type": "sequence", "input": "other", "output": {"name": "physical"},
              "transformations": [{"type": "scale", "scale": [4.0, 2.0]},
                                  {"type": "translation", "translation": [1.0, -3.0]}]}]
    ms = parse_multiscale(image("yx", [0.5, 0.5], extra, systems), url=URL,
                          coordinate_system="other")
    assert ms.coordinate_system == "other" and ms.intrinsic_system == "physical"
    idx = np.array([2.0, 6.0])
    want = (np.array([0.5, 0.5]) * idx - [1.0, -3.0]) / [4.0, 2.0]
    np.testing.assert_allclose(_physical(ms, 0, idx.tolist()), want)


def test_bijection_into_the_intrinsic_system_uses_its_inverse() -> None:
    systems = [_system("physical", "yx"), _system("other", "yx")]
    # the stored inverse differs from the forward's (an approximation, as for fields):
    # walking backwards must take the inverse as written
    extra = [{"type": "bijection", "input": {"name": "other"}, "output": {"name": "physical"},
              "forward": {"type": "scale", "scale": [2.0, 2.0]},
              "inverse": {"type": "scale", "scale": [0.25, 0.25]}}]
    ms = parse_multiscale(image("yx", [1.0, 1.0], extra, systems), url=URL,
                          coordinate_system="other")
    assert ms.spacing(0) == (0.25, 0.25)


def test_transform_into_the_intrinsic_system_without_an_inverse_is_refused() -> None:
    # a 3-D 'volume' projected onto the 2-D intrinsic system: not invertible
    systems = [_system("physical", "yx"), _system("volume", "zyx")]
    extra = [{"type": "projectAxis", "droppedInputs": [0], "input": {"name": "volume"},
              "output": {"name": "physical"}}]
    attrs = image("yx", extra=extra, systems=systems)
    assert parse_multiscale(attrs, url=URL).coordinate_system == "physical"
    with pytest.raises(InvalidMetadataError,
                       match=r"coordinateTransformations\[0\]'.*no inverse in closed form"):
        parse_multiscale(attrs, url=URL, coordinate_system="volume")


def test_singular_affine_into_the_intrinsic_system_is_refused() -> None:
    systems = [_system("physical", "yx"), _system("other", "yx")]
    extra = [{"type": "affine", "affine": [[1, 1, 0], [1, 1, 0]], "input": "other",
              "output": "physical"}]
    with pytest.raises(InvalidMetadataError,
                       match=r"coordinateTransformations\[0\]'.*no inverse in closed form"):
        parse_multiscale(image("yx", extra=extra, systems=systems), url=URL,
                         coordinate_system="other")


def test_mismatched_axis_units_are_converted() -> None:
    systems = [_system("physical", "zyx", z="millimeter", y="micrometer", x="nanometer")]
    ms = parse_multiscale(image("zyx", [1.0, 1.0, 1.0], systems=systems), url=URL)
    assert ms.unit == "nanometer"
    np.testing.assert_allclose(ms.spacing(0), (1.0, 1e3, 1e6))
    assert {a.unit for a in ms.spatial_axes} == {"nanometer"}


def test_scale_given_for_the_spatial_axes_only_and_a_space_unit_on_time(
        caplog: pytest.LogCaptureFixture) -> None:
    systems = [{"name": "physical", "axes": [{"name": "t", "type": "time", "unit": "micrometer"},
                                             _axis("y"), _axis("x")]}]
    attrs = image("tyx", systems=systems)
    for ds in attrs["ome"]["multiscales"][0]["datasets"]:
        seq = ds["coordinateTransformations"][0]["transformations"]
        seq[0]["scale"] = seq[0]["scale"][1:]
        seq[1]["translation"] = seq[1]["translation"][1:]
    ms = parse_multiscale(attrs, url=URL)
    assert ms.spacing(1) == (1.0, 1.0) and ms.levels[1].scale[0] == 1.0
    assert "applied to the spatial axes" in caplog.text


@pytest.mark.parametrize("version", ["0.6", "0.6rc0"])
def test_identity_dataset_transform(version: str) -> None:
    attrs = image("yx")
    attrs["ome"]["version"] = version
    ms0 = attrs["ome"]["multiscales"][0]
    ms0["datasets"] = [{"path": "s0", "coordinateTransformations": [
        {"type": "identity", "input": {"path": "s0"}, "output": {"name": "physical"}}]}]
    ms = parse_multiscale(attrs, url=URL)
    assert ms.spacing(0) == (1.0, 1.0)


# ------------------------------------------------- input/output as plain strings
#
# 0.6.dev1-dev3 allowed a transform's ``input``/``output`` to be a string as
# well as an object; 0.6.dev4 and 0.6rc0 require the object. A string means
# the object's ``path`` for a dataset transform's input (the array) and its
# ``name`` everywhere else (a coordinate system).


def _as_strings(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` with every object ``input``/``output`` of one field turned into that string."""
    out = copy.deepcopy(attrs)
    ms = out["ome"]["multiscales"][0]
    for ds in ms["datasets"]:
        t = ds["coordinateTransformations"][0]
        t["input"], t["output"] = t["input"]["path"], t["output"]["name"]
    for t in ms.get("coordinateTransformations", []):
        t["input"], t["output"] = t["input"]["name"], t["output"]["name"]
    return out


def _geometry(ms: Any) -> tuple[Any, ...]:
    return (ms.coordinate_system, ms.intrinsic_system, ms.ndim,
            [ms.spacing(lv) for lv in range(len(ms.levels))],
            [ms.origin(lv) for lv in range(len(ms.levels))],
            np.asarray(ms.direction_matrix).round(12).tolist())


@pytest.mark.parametrize("version", ["0.6.dev2", "0.6.dev3", "0.6rc0", "0.6"])
def test_string_references_open_as_the_object_form(version: str) -> None:
    theta = 0.25
    c, s_ = np.cos(theta), np.sin(theta)
    systems = [_system("physical", "yx"), _system("world", "yx")]
    extra = [_to("world", {"type": "sequence", "transformations": [
        {"type": "rotation", "rotation": [[c, -s_], [s_, c]]},
        {"type": "translation", "translation": [7.0, -3.0]}]})]
    objects = image("yx", [0.5, 2.0], extra, systems)
    strings = _as_strings(objects)
    for a in (objects, strings):
        a["ome"]["version"] = version
    ds0 = strings["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]
    assert (ds0["input"], ds0["output"]) == ("s0", "physical")  # the fixture is the string form
    ms = parse_multiscale(strings, url=URL)
    assert _geometry(ms) == _geometry(parse_multiscale(objects, url=URL))
    assert ms.coordinate_system == "world" and ms.intrinsic_system == "physical"
    # index (i, j) -> scale, rotate, then shift: the geometry the spec's rules give
    idx = np.array([3.0, 5.0])
    want = np.array([[c, -s_], [s_, c]]) @ (np.array([0.5, 2.0]) * idx) + [7.0, -3.0]
    np.testing.assert_allclose(_physical(ms, 0, idx.tolist()), want, atol=1e-12)


def test_string_references_mixed_with_objects() -> None:
    systems = [_system("physical", "zyx"), _system("world", "zyx")]
    extra = [{"type": "scale", "scale": [1.0, 10.0, 10.0], "input": "physical",
              "output": {"name": "world"}}]
    attrs = image("zyx", [2.0, 1.0, 1.0], extra, systems)
    ds = attrs["ome"]["multiscales"][0]["datasets"]
    ds[0]["coordinateTransformations"][0]["input"] = "s0"            # path as a string
    ds[1]["coordinateTransformations"][0]["output"] = "physical"     # name as a string
    ms = parse_multiscale(attrs, url=URL)
    assert ms.coordinate_system == "world"
    # ITK order (x, y, z): dataset scale (z 2, y 1, x 1) then world scale (1, 10, 10)
    assert ms.spacing(0) == (10.0, 10.0, 2.0) and ms.spacing(1) == (20.0, 20.0, 4.0)


def test_string_input_names_a_nested_dataset_path_in_a_5d_image() -> None:
    systems = [_system("intrinsic", "tczyx")]
    attrs = image("tczyx", [1.0, 1.0, 0.5, 0.25, 0.25], systems=systems, intrinsic="intrinsic")
    for lv, ds in enumerate(attrs["ome"]["multiscales"][0]["datasets"]):
        ds["path"] = f"./path/to/{lv}/"
        t = ds["coordinateTransformations"][0]
        t["input"], t["output"] = f"path/to/{lv}", "intrinsic"
    ms = parse_multiscale(attrs, url=URL)
    assert ms.ndim == 3 and ms.coordinate_system == "intrinsic"
    assert [lv.path for lv in ms.levels] == ["path/to/0", "path/to/1"]
    assert ms.spacing(0) == (0.25, 0.25, 0.5) and ms.spacing(1) == (0.5, 0.5, 1.0)


def test_string_naming_an_unknown_system_is_left_out_like_the_object(
        caplog: pytest.LogCaptureFixture) -> None:
    # "intrinsic" is no system here (the datasets map to "physical"): the entry is ignored
    systems = [_system("physical", "yx"), _system("world", "yx")]
    extra = [{"type": "translation", "translation": [9.0, 9.0], "input": "intrinsic",
              "output": "world"}]
    ms = parse_multiscale(image("yx", extra=extra, systems=systems), url=URL)
    assert ms.coordinate_system == "physical" and ms.origin(0) == (0.0, 0.0)
    assert "names no coordinate system" in caplog.text and "'intrinsic'" in caplog.text


@pytest.mark.parametrize("given", ["t1", {"path": "t1"}])
def test_dataset_input_naming_another_array_reads_the_dataset_path(
        given: Any, caplog: pytest.LogCaptureFixture) -> None:
    # the input path MUST match the dataset's, and readers SHOULD treat the
    # dataset's path as the input's: logged, and the dataset's path is read
    attrs = image("yx", [1.0, 1.0])
    attrs["ome"]["multiscales"][0]["datasets"][1]["coordinateTransformations"][0]["input"] = given
    ms = parse_multiscale(attrs, url=URL)
    assert [lv.path for lv in ms.levels] == ["s0", "s1"] and ms.spacing(1) == (2.0, 2.0)
    assert "datasets[1].coordinateTransformations[0].input" in caplog.text
    assert "'t1'" in caplog.text


@pytest.mark.parametrize("output", ["nowhere", {"name": "nowhere"}])
def test_datasets_mapping_to_an_unknown_system_are_refused(output: Any) -> None:
    attrs = image("yx", systems=SYS2)
    for ds in attrs["ome"]["multiscales"][0]["datasets"]:
        ds["coordinateTransformations"][0]["output"] = output
    with pytest.raises(InvalidMetadataError, match=r"multiscales\[0\]\.coordinateSystems'.*"
                       "'nowhere'"):
        parse_multiscale(attrs, url=URL)


def test_a_registration_stored_with_a_string_output_is_found() -> None:
    systems = [_system("physical", "yx"), _system("moving", "yx")]
    field = {"type": "displacements", "path": "registration/field", "input": "physical",
             "output": "moving"}
    attrs = image("yx", extra=[field], systems=systems)
    assert image_registrations(attrs) == {"moving": field}
    # the image geometry itself is not the field's
    assert parse_multiscale(attrs, url=URL).coordinate_system == "physical"


# --------------------------------------------------------------------------- invalid

DS = ["ome", "multiscales", 0, "datasets", 0, "coordinateTransformations"]
MS = ["ome", "multiscales", 0, "coordinateTransformations"]
SYS2 = [_system("physical", "yx"), _system("world", "yx")]


def _set(attrs: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(attrs)
    node: Any = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return out


def _scale(**kw: Any) -> dict[str, Any]:
    return {"type": "scale", "scale": [1.0, 1.0], "input": {"path": "s0"},
            "output": {"name": "physical"}, **kw}


INVALID = [
    ("duplicate scale", DS, [_scale(), _scale()], "datasets[0].coordinateTransformations"),
    ("missing scale", DS, [{**_scale(), "type": "translation", "translation": [1.0, 1.0]}],
     "datasets[0].coordinateTransformations"),
    ("sequence without scale", DS, [{"type": "sequence", "input": {"path": "s0"},
                                     "output": {"name": "physical"}, "transformations": [
                                         {"type": "translation", "translation": [1, 1]}]}],
     "datasets[0].coordinateTransformations"),
    ("rotation in a dataset", DS, [{"type": "sequence", "input": {"path": "s0"},
                                    "output": {"name": "physical"}, "transformations": [
                                        {"type": "rotation", "rotation": [[1, 0], [0, 1]]},
                                        {"type": "translation", "translation": [1, 1]}]}],
     "datasets[0].coordinateTransformations"),
    ("dataset input by name", DS, [_scale(input={"name": "s0"})],
     "datasets[0].coordinateTransformations[0].input"),
    ("dataset output by path", DS, [_scale(output={"path": "physical"})],
     "datasets[0].coordinateTransformations[0].output"),
    ("empty dataset transforms", DS, [], "datasets[0].coordinateTransformations"),
    ("affine without affine", MS, [_to("world", {"type": "affine"})],
     "coordinateTransformations[0].affine"),
    ("affine without affine, between systems this image does not define", MS,
     [{"type": "affine", "input": {"name": "array"}, "output": {"name": "elsewhere"}}],
     "coordinateTransformations[0].affine"),
    ("sequence without transformations, ignored otherwise", MS,
     [{"type": "sequence", "input": {"name": "physical"}, "output": {"name": "nowhere"}}],
     "coordinateTransformations[0].transformations"),
    ("affine without input/output", MS, [{"type": "affine", "affine": [[1, 0, 0], [0, 1, 0]]}],
     "coordinateTransformations[0]"),
    ("scale with path", MS, [_to("world", {"type": "scale", "path": "p"})],
     "coordinateTransformations[0].path"),
    ("translation with path", MS, [_to("world", {"type": "translation", "path": "p"})],
     "coordinateTransformations[0].path"),
    ("mapAxis too long", MS, [_to("world", {"type": "mapAxis", "mapAxis": [0, 1, 2]})],
     "coordinateTransformations[0].mapAxis"),
    ("mapAxis negative", MS, [_to("world", {"type": "mapAxis", "mapAxis": [-1, 0]})],
     "coordinateTransformations[0].mapAxis"),
    ("mapAxis repeated", MS, [_to("world", {"type": "mapAxis", "mapAxis": [0, 0]})],
     "coordinateTransformations[0].mapAxis"),
    ("mapAxis missing", MS, [_to("world", {"type": "mapAxis"})],
     "coordinateTransformations[0].mapAxis"),
    ("projectAxis without an operation", MS, [_to("world", {"type": "projectAxis"})],
     "coordinateTransformations[0]"),
    ("projectAxis created twice", MS,
     [_to("world", {"type": "projectAxis", "createdOutputs": [1, 1]})],
     "coordinateTransformations[0]"),
    ("projectAxis dropping an axis that does not exist", MS,
     [_to("world", {"type": "projectAxis", "droppedInputs": [5]})],
     "coordinateTransformations[0].droppedInputs"),
    ("projectAxis dropping every axis", MS,
     [_to("world", {"type": "projectAxis", "droppedInputs": [0, 1]})],
     "coordinateTransformations[0]"),
    ("byDimension without axes", MS,
     [_to("world", {"type": "byDimension", "transformations": [{"type": "scale",
                                                                "scale": [2]}]})],
     "coordinateTransformations[0].transformations[0]"),
    ("byDimension with axis names", MS,
     [_to("world", {"type": "byDimension", "transformations": [
         {"transformation": {"type": "scale", "scale": [2]}, "inputAxes": ["x"],
          "outputAxes": ["x"]}]})],
     "coordinateTransformations[0].transformations[0].inputAxes"),
    ("byDimension output axis out of range", MS,
     [_to("world", {"type": "byDimension", "transformations": [
         {"transformation": {"type": "scale", "scale": [2, 2]}, "inputAxes": [0, 1],
          "outputAxes": [1, 2]}]})],
     "coordinateTransformations[0].transformations[0].outputAxes"),
    ("byDimension output axis twice", MS,
     [_to("world", {"type": "byDimension", "transformations": [
         {"transformation": {"type": "scale", "scale": [2, 2]}, "inputAxes": [0, 1],
          "outputAxes": [0, 1]},
         {"transformation": {"type": "scale", "scale": [2]}, "inputAxes": [1],
          "outputAxes": [1]}]})],
     "coordinateTransformations[0].transformations[1].outputAxes"),
    ("rotation as a vector", MS, [_to("world", {"type": "rotation", "rotation": [0, 1]})],
     "coordinateTransformations[0].rotation"),
    ("rotation not square", MS,
     [_to("world", {"type": "rotation", "rotation": [[1, 0, 0], [0, 1, 0]]})],
     "coordinateTransformations[0].rotation"),
    ("rotation missing", MS, [_to("world", {"type": "rotation"})],
     "coordinateTransformations[0].rotation"),
    ("rotation with a reflection", MS,
     [_to("world", {"type": "rotation", "rotation": [[1, 0], [0, -1]]})],
     "coordinateTransformations[0].rotation"),
    ("affine with the wrong width", MS,
     [_to("world", {"type": "affine", "affine": [[1, 0], [0, 1]]})],
     "coordinateTransformations[0].affine"),
    ("link to a labels group through an affine", MS,
     [{"type": "affine", "affine": [[1, 0, 0], [0, 1, 0]], "input": {"name": "physical"},
       "output": {"name": "physical", "path": "labels/cells"}}],
     "coordinateTransformations[0].type"),
    ("output path escaping the store", MS,
     [{"type": "identity", "input": {"name": "physical"},
       "output": {"name": "physical", "path": "../other"}}],
     "coordinateTransformations[0].output.path"),
    # the 0.6.dev1-dev3 string form, wrong
    ("dataset input as an empty string", DS, [_scale(input="")],
     "datasets[0].coordinateTransformations[0].input"),
    ("dataset input as a blank string", DS, [_scale(input="  ")],
     "datasets[0].coordinateTransformations[0].input"),
    ("dataset input as a number", DS, [_scale(input=0)],
     "datasets[0].coordinateTransformations[0].input"),
    ("dataset input as a list", DS, [_scale(input=["s0"])],
     "datasets[0].coordinateTransformations[0].input"),
    ("dataset input string escaping the store", DS, [_scale(input="../s0")],
     "datasets[0].coordinateTransformations[0].input"),
    ("dataset input string that is absolute", DS, [_scale(input="/data/s0")],
     "datasets[0].coordinateTransformations[0].input"),
    ("dataset output as an empty string", DS, [_scale(output="")],
     "datasets[0].coordinateTransformations[0].output"),
    ("dataset output as a number", DS, [_scale(output=1)],
     "datasets[0].coordinateTransformations[0].output"),
    ("dataset output string differing from the other dataset's", DS,
     [_scale(output="world")], "datasets[].coordinateTransformations[0].output"),
    ("dataset output object with an empty name", DS, [_scale(output={"name": ""})],
     "datasets[0].coordinateTransformations[0].output.name"),
    ("multiscale input as an empty string", MS,
     [{"type": "scale", "scale": [2, 2], "input": "", "output": "world"}],
     "coordinateTransformations[0].input"),
    ("multiscale output as a number", MS,
     [{"type": "scale", "scale": [2, 2], "input": "physical", "output": 2}],
     "coordinateTransformations[0].output"),
    ("multiscale input as a list", MS,
     [{"type": "scale", "scale": [2, 2], "input": ["physical"], "output": "world"}],
     "coordinateTransformations[0].input"),
    ("multiscale output as null", MS,
     [{"type": "scale", "scale": [2, 2], "input": "physical", "output": None}],
     "coordinateTransformations[0].output"),
    ("multiscale output object without a name", MS,
     [{"type": "scale", "scale": [2, 2], "input": "physical", "output": {"path": "labels/a"}}],
     "coordinateTransformations[0].output.name"),
    ("multiscale string names with a bad parameter", MS,
     [{"type": "scale", "scale": [2, 2, 2], "input": "physical", "output": "world"}],
     "coordinateTransformations[0].scale"),
]


@pytest.mark.parametrize(("what", "where", "value", "key"), INVALID,
                         ids=[c[0] for c in INVALID])
def test_invalid_constructs_are_refused_naming_the_key(what: str, where: list[Any], value: Any,
                                                       key: str) -> None:
    attrs = _set(image("yx", systems=SYS2), where, value)
    with pytest.raises(NgffDregError) as info:
        parse_multiscale(attrs, url=URL)
    assert isinstance(info.value, InvalidMetadataError)
    assert URL in str(info.value) and key in str(info.value), str(info.value)


def test_invalid_constructs_are_refused_in_any_0_4_or_0_5_dataset() -> None:
    v05 = {"ome": {"version": "0.5", "multiscales": [{
        "axes": [_axis("y"), _axis("x")],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1, 1]}, {"type": "scale", "scale": [1, 1]}]}]}]}}
    with pytest.raises(InvalidMetadataError, match=r"datasets\[0\]\.coordinateTransformations"):
        parse_multiscale(v05, url=URL)
    v05["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"] = [
        {"type": "translation", "translation": [1, 1]}, {"type": "scale", "scale": [1, 1]}]
    with pytest.raises(InvalidMetadataError, match="exactly one 'scale'"):
        parse_multiscale(v05, url=URL)
