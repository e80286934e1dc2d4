"""``ngff-dreg transform-coords``: the dingus of the RFC-5 transformations conformance suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ngff_dreg
from ngff_dreg.cli import app

AXES = [{"name": n, "type": "space"} for n in "yx"]


def _scene(tmp_path: Path, transforms: list[dict]) -> str:
    store = tmp_path / "s.zarr"
    store.mkdir()
    attrs = {"ome": {"version": "0.6", "scene": {
        "coordinateSystems": [{"name": n, "axes": AXES} for n in ("a", "b")],
        "coordinateTransformations": transforms}}}
    (store / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": attrs}))
    return str(store)


def test_prints_the_mapped_coordinates(tmp_path):
    url = _scene(tmp_path, [{"type": "affine", "affine": [[2, 0, 1], [0, 3, -1]],
                             "input": {"name": "a"}, "output": {"name": "b"}}])
    res = CliRunner().invoke(app, ["transform-coords", url, "a", "b", "[[1, 2], [0, 0]]"])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(json.loads(res.output)["coordinates"], [[3, 5], [1, -1]])
    res = CliRunner().invoke(app, ["transform-coords", url, "b", "a", "[[3, 5]]"])
    np.testing.assert_allclose(json.loads(res.output)["coordinates"], [[1, 2]])


def test_failures_print_a_message_and_exit_non_zero(tmp_path):
    url = _scene(tmp_path, [{"type": "identity", "input": "a", "output": "b"}])
    res = CliRunner().invoke(app, ["transform-coords", url, "a", "potato", "[[1, 2]]"])
    assert res.exit_code != 0
    assert "potato" in json.loads(res.output)["message"]


def _cases_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("transformation_conformance")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "cases"


def test_conformance_suite_passes():
    """The suite's own runner, calling this package's dingus on every built-in case."""
    pytest.importorskip("transformation_conformance")  # needs Python >= 3.12
    cases = _cases_dir()
    n_cases = sum(1 for p in cases.iterdir() if p.is_dir())
    assert n_cases > 0
    env = dict(os.environ)
    root = str(Path(ngff_dreg.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, "-m", "transformation_conformance", str(cases), "-B", "-X", "--",
         sys.executable, "-m", "ngff_dreg.cli", "transform-coords"],
        capture_output=True, text=True, env=env, timeout=600)
    rows = dict(line.split("\t")[:2] for line in res.stdout.splitlines() if "\t" in line)
    assert len(rows) == n_cases, res.stdout + res.stderr
    failing = {k: v for k, v in rows.items() if v != "pass"}
    assert not failing, failing


@pytest.mark.parametrize("kw", [{"system": "xyz"}, {"system": "zyx", "field": "xyz"},
                                {"leading": "t"}], ids=["xyz", "zyx", "time"])
def test_coordinates_are_in_the_systems_own_axis_order(tmp_path, hand_scene, kw):
    case = hand_scene(tmp_path / "scene.zarr", **kw)
    pts = case.inside(5, seed=2)  # x, y, z
    want = case.expected(pts)
    perm = ["xyz".index(a) for a in kw.get("system", "xyz")]  # the system's order
    given, expected = pts[:, perm], want[:, perm]
    if kw.get("leading"):
        given = np.hstack([np.full((5, 1), 2.5), given])
        expected = np.hstack([np.full((5, 1), 2.5), expected])
    res = CliRunner().invoke(app, ["transform-coords", case.url, "fixed", "moving",
                                   json.dumps(given.tolist())])
    assert res.exit_code == 0, res.output
    got = np.asarray(json.loads(res.output)["coordinates"])
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_coordinates_that_do_not_fit_the_source_system_are_refused(tmp_path, hand_scene):
    case = hand_scene(tmp_path / "scene.zarr", leading="t")
    res = CliRunner().invoke(app, ["transform-coords", case.url, "fixed", "moving",
                                   "[[1.0, 2.0, 3.0]]"])
    assert res.exit_code == 2
    message = json.loads(res.output)["message"]
    assert "AxisMismatchError" in message and "'fixed' has 4 axes (t, x, y, z)" in message
