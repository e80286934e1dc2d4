from __future__ import annotations

import pytest

from ngff_dreg.errors import InvalidInputDataError, SelectionNotFoundError
from ngff_dreg.ngff.channels import channel_labels, omero_of, resolve_selection, subset_omero

OMERO = {"channels": [{"label": "DAPI", "color": "0000FF"}, {"label": "GFP", "color": "00FF00"},
                      {"color": "FF0000"}]}


def test_omero_is_found_in_every_version() -> None:
    assert omero_of({"ome": {"version": "0.5", "omero": OMERO}}) == OMERO
    assert omero_of({"multiscales": [], "omero": OMERO}) == OMERO
    assert omero_of({"ome": {"version": "0.5"}}) is None
    assert omero_of(None) is None
    assert channel_labels(OMERO) == ("DAPI", "GFP", None)
    assert channel_labels({"channels": "bad"}) == ()


@pytest.mark.parametrize(("sel", "idx"), [(0, 0), (2, 2), (-1, 2), ("GFP", 1), (" DAPI", 0),
                                          ("1", 1), ("-3", 0)])
def test_selection_by_index_or_label(sel: int | str, idx: int) -> None:
    assert resolve_selection(sel, size=3, labels=channel_labels(OMERO)) == idx


def test_unknown_label_names_image_and_lists_labels() -> None:
    with pytest.raises(SelectionNotFoundError) as err:
        resolve_selection("mCherry", size=3, labels=channel_labels(OMERO), image="s3://b/m.zarr")
    msg = str(err.value)
    assert "s3://b/m.zarr" in msg and "'mCherry'" in msg and "0='DAPI'" in msg and "1='GFP'" in msg
    assert isinstance(err.value, InvalidInputDataError) and isinstance(err.value, LookupError)


def test_out_of_range_and_duplicate_labels() -> None:
    with pytest.raises(SelectionNotFoundError, match=r"time point index 5 out of range.*0\.\.2"):
        resolve_selection(5, size=3, what="time point")
    with pytest.raises(SelectionNotFoundError, match="given to entries"):
        resolve_selection("A", size=2, labels=("A", "A"))
    with pytest.raises(SelectionNotFoundError):
        resolve_selection(True, size=2)


def test_subset_keeps_the_chosen_channels_in_order() -> None:
    sub = subset_omero(OMERO, [1, 0])
    assert sub is not None and [c["label"] for c in sub["channels"]] == ["GFP", "DAPI"]
    assert OMERO["channels"][0]["label"] == "DAPI"  # not modified
    assert subset_omero(None, [0]) is None
