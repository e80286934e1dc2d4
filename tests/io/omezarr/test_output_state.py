"""Output state: the completion marker, the checkpoint manifest and stage reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from ngff_dreg.errors import IncompleteOutputError, OutputExistsError
from ngff_dreg.io.omezarr.output_state import (
    MARKER_KEY,
    Checkpoints,
    StageReport,
    claim_output,
    fingerprint,
    mark_output,
    marker,
    marker_status,
    output_status,
    put_marker,
    require_complete,
    set_status,
    stage_reports,
)


def test_marker_layout() -> None:
    assert marker("incomplete") == {"status": "incomplete", "version": 1}
    assert marker("complete", versioned=False, scene="s") == {"status": "complete", "scene": "s"}
    assert list(marker("complete", images={}, report={})) == [
        "status", "version", "images", "report"]
    assert marker_status({MARKER_KEY: {"status": "complete"}}) == "complete"
    assert marker_status({"other": 1}) is None


def test_output_status_and_marker_writes(tmp_path: Path) -> None:
    url = str(tmp_path / "out.zarr")
    assert output_status(url) == "absent"
    mark_output(url, None, wipe=False)
    assert output_status(url) == "incomplete"
    root = zarr.open_group(url, mode="r+")
    root.attrs.update({"ome": {"version": "0.6"}})
    set_status(url, None, "complete")
    attrs = zarr.open_group(url, mode="r").attrs.asdict()
    assert attrs["ome"] == {"version": "0.6"}  # the rest of the attributes is kept
    assert output_status(url) == "complete"
    require_complete(attrs, url)
    set_status(url, None, "incomplete")
    with pytest.raises(IncompleteOutputError, match="interrupted"):
        require_complete(zarr.open_group(url, mode="r").attrs.asdict(), url)
    mark_output(url, None, wipe=True)
    assert zarr.open_group(url, mode="r").attrs.asdict() == {MARKER_KEY: marker("incomplete")}
    foreign = zarr.open_group(str(tmp_path / "foreign.zarr"), mode="w")
    foreign.attrs.put({"something": 1})
    assert output_status(str(tmp_path / "foreign.zarr")) == "foreign"
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    put_marker(group, "incomplete", versioned=False)
    assert group.attrs.asdict() == {MARKER_KEY: {"status": "incomplete"}}


def test_stage_report_json_round_trip() -> None:
    rep = StageReport("stage 0", 1, 2, "bspline", status=np.array([[0, 2], [5, 0]]),
                      ncc_before=0.5, ncc_after=float("nan"), seconds=3.0,
                      report={"jacobian_min": np.float32(0.5), "v": np.arange(2),
                              "block_metric": [[0.1, 0.2], [0.3, 0.4]]})
    data = rep.to_json()
    assert data["report"]["jacobian_min"] == 0.5 and data["report"]["v"] == [0, 1]
    back = StageReport.from_json(data)
    assert back.resumed and back.name == "stage 0" and back.moving_level == 2
    np.testing.assert_array_equal(back.status, rep.status)
    assert back.status is not None and back.status.dtype == np.int16
    assert back.ncc_after is None  # NaN does not survive as a number
    assert back.block_metric is not None and back.block_metric.shape == (2, 2)
    lenient = StageReport.from_json({"status": None}, name="stage_3")
    assert (lenient.name, lenient.method, lenient.fixed_level) == ("stage_3", "?", 0)


def test_stage_reports_in_run_order() -> None:
    glob = StageReport("global", 2, 2, "rigid+affine", seconds=1.0)
    stages = {
        "stage_10": StageReport("stage 10", 0, 0, "x").to_json(),
        "stage_2": StageReport("stage 2", 0, 0, "x").to_json(),
        "global": {"affine": np.eye(4).tolist(), "report": glob.to_json()},
    }
    assert [r.name for r in stage_reports(stages)] == ["global", "stage 2", "stage 10"]
    assert StageReport.from_entry("global", stages["global"]).method == "rigid+affine"


def test_checkpoints_and_claims(tmp_path: Path) -> None:
    url = str(tmp_path / "run.zarr")
    assert Checkpoints(url, None).read() is None
    assert Checkpoints(url, None).url("stage_0") == f"{url}/checkpoints/stage_0"
    first = claim_output(url, None, "abc", overwrite=False)
    assert (first.state, first.same_run) == ("absent", False)
    assert first.manifest == {"fingerprint": "abc", "stages": {}, "resampled": False}
    first.manifest["stages"]["global"] = {"affine": np.eye(3)}
    Checkpoints(url, None).write(first.manifest)
    again = claim_output(url, None, "abc", overwrite=False)
    assert again.same_run and again.state == "incomplete"
    assert again.manifest["stages"]["global"]["affine"] == np.eye(3).tolist()
    with pytest.raises(OutputExistsError, match="from another run"):
        claim_output(url, None, "other", overwrite=False)
    fresh = claim_output(url, None, "other", overwrite=True)
    assert not fresh.same_run and fresh.manifest["stages"] == {}
    assert fingerprint({"a": np.arange(3)}) == fingerprint({"a": [0, 1, 2]})
    assert len(fingerprint({})) == 16
