"""The one NGFF transform parser: sequences, linear forms, the field split, field paths."""

from __future__ import annotations

import numpy as np
import pytest

from ngff_dreg.errors import InvalidMetadataError
from ngff_dreg.ngff.transforms import (
    compose,
    field_paths,
    flatten,
    has_field_transform,
    homogeneous,
    reverse_axes,
    rewrite_field_paths,
    scale_translation,
    split_at_field,
)

AFFINE = [[0.9, 0.1, 0.0, 1.0], [0.0, 1.0, 0.2, 2.0], [0.1, 0.0, 1.1, 3.0]]


def test_flatten_opens_nested_sequences_with_keys() -> None:
    items = [{"type": "sequence", "transformations": [
        {"type": "scale", "scale": [1, 2]},
        {"type": "sequence", "transformations": [{"type": "translation", "translation": [3, 4]}]},
    ]}, {"type": "identity"}]
    flat = flatten(items, "u", "cts")
    assert [k for k, _ in flat] == ["cts[0].transformations[0]",
                                    "cts[0].transformations[1].transformations[0]", "cts[1]"]
    with pytest.raises(InvalidMetadataError, match=r"'cts\[0\]\.type'"):
        flatten([{"scale": [1]}], "u", "cts")
    with pytest.raises(InvalidMetadataError, match="transformations"):
        flatten([{"type": "sequence"}], "u", "cts")


def test_compose_applies_in_order() -> None:
    items = flatten([{"type": "scale", "scale": [2.0, 3.0]},
                     {"type": "translation", "translation": [1.0, -1.0]}], "u", "k")
    h = compose(items, 2, [0, 1], "u", linear_ok=False)
    np.testing.assert_allclose(h, [[2, 0, 1], [0, 3, -1], [0, 0, 1]])
    s, t = scale_translation([{"type": "translation", "translation": [1.0, 2.0]},
                              {"type": "scale", "scale": [2.0, 4.0]}], 2, "u", "k")
    np.testing.assert_allclose(s, [2, 4])
    np.testing.assert_allclose(t, [2, 8])  # the translation is scaled
    np.testing.assert_allclose(scale_translation(None, 3, "u", "k")[0], np.ones(3))


def test_affine_rows_or_full_homogeneous_matrix() -> None:
    rows = homogeneous("k", {"type": "affine", "affine": AFFINE}, 3, [0, 1, 2], "u",
                       linear_ok=True)
    full = homogeneous("k", {"type": "affine", "affine": [*AFFINE, [0, 0, 0, 1]]}, 3,
                       [0, 1, 2], "u", linear_ok=True)
    np.testing.assert_array_equal(rows, full)
    np.testing.assert_allclose(rows[:3], AFFINE)
    with pytest.raises(InvalidMetadataError, match="rows"):
        homogeneous("k", {"type": "affine", "affine": [*AFFINE, [0, 0, 1, 1]]}, 3, [0, 1, 2],
                    "u", linear_ok=True)


@pytest.mark.parametrize(
    "item, match",
    [
        ({"type": "scale", "scale": [1, 0, 1]}, "> 0"),
        ({"type": "scale", "scale": [1, 1]}, "has 2 entries"),
        ({"type": "rotation", "rotation": [[2, 0, 0], [0, 1, 0], [0, 0, 1]]}, "orthonormal"),
        ({"type": "affine", "path": "a"}, "stored in an array"),
        ({"type": "bspline"}, "not supported"),
    ],
)
def test_bad_transforms(item: dict, match: str) -> None:
    with pytest.raises(InvalidMetadataError, match=match):
        homogeneous("k", item, 3, [0, 1, 2], "u", linear_ok=True)
    with pytest.raises(InvalidMetadataError):
        homogeneous("k", {"type": "rotation", "rotation": np.eye(3).tolist()}, 3, [0, 1, 2],
                    "u", linear_ok=False)


def test_split_at_field() -> None:
    field = {"type": "displacements", "path": "coordinateTransformations/f"}
    t = {"type": "sequence", "transformations": [
        {"type": "affine", "affine": AFFINE}, field, {"type": "translation",
                                                      "translation": [5.0, 6.0, 7.0]}]}
    before, found, after = split_at_field(t, 3, "u")
    assert found == field
    np.testing.assert_allclose(before[:3], AFFINE)
    np.testing.assert_allclose(after[:3, 3], [5, 6, 7])
    alone = split_at_field(field, 3, "u")
    np.testing.assert_array_equal(alone[0], np.eye(4))
    np.testing.assert_array_equal(alone[2], np.eye(4))
    with pytest.raises(InvalidMetadataError, match="exactly one displacements"):
        split_at_field({"type": "sequence", "transformations": [field, field]}, 3, "u")
    with pytest.raises(InvalidMetadataError, match="exactly one displacements"):
        split_at_field({"type": "affine", "affine": AFFINE}, 3, "u")


def test_reverse_axes() -> None:
    h = np.eye(4)
    h[0, 3] = 5.0  # z translation in NumPy order
    assert reverse_axes(h)[2, 3] == 5.0  # z is the last ITK axis
    np.testing.assert_array_equal(reverse_axes(reverse_axes(h)), h)


def test_field_paths_and_their_rewrite() -> None:
    t = {"type": "bijection",
         "forward": {"type": "sequence", "transformations": [
             {"type": "displacements", "path": "a/fwd"}, {"type": "affine", "affine": AFFINE}]},
         "inverse": {"type": "coordinates", "path": "a/inv"},
         "input": {"name": "fixed"}, "output": {"name": "moving"}}
    assert has_field_transform(t)
    assert not has_field_transform({"type": "affine", "affine": AFFINE})
    assert sorted(field_paths(t)) == ["a/fwd", "a/inv"]
    moved = rewrite_field_paths(t, {"a/fwd": "b/fwd", "a/inv": "b/inv"})
    assert sorted(field_paths(moved)) == ["b/fwd", "b/inv"]
    assert "input" not in moved and "output" not in moved
    assert t["forward"]["transformations"][0]["path"] == "a/fwd"  # the input is untouched
