"""The ``ngff-dreg`` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ngff_dreg.demo import make_demo
from ngff_dreg.io.output_state import output_status
from ngff_dreg.io.transform_reader import read_transform


def _cli(*args: str, timeout: float = 600, cwd=None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("NGFF_DREG_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "ngff_dreg.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    return make_demo(
        tmp_path_factory.mktemp("clipair"),
        synthetic=True,
        ndim=3,
        size=48,
        max_displacement_voxels=2.0,
        chunks=16,
    )


def test_info_prints_levels(small_pair):
    proc = _cli("info", small_pair.fixed)
    assert proc.returncode == 0, proc.stderr
    assert "48x48x48" in proc.stdout and "millimeter" in proc.stdout
    assert "level" in proc.stdout


def test_user_error_is_one_line_and_exit_2(tmp_path):
    proc = _cli("info", str(tmp_path / "missing.zarr"))
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ngff-dreg: error:"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("file", "key", "value"), [
    ("0/zarr.json", "shape", [48, "x", 48]),        # a level array's metadata
    ("zarr.json", "zarr_format", 9),                # the group's own metadata
])
def test_corrupt_metadata_is_one_line_naming_the_file(small_pair, tmp_path, file, key, value):
    import json

    bad = tmp_path / "bad.zarr"
    shutil.copytree(small_pair.fixed, bad)
    doc = json.loads((bad / file).read_text())
    doc[key] = value
    (bad / file).write_text(json.dumps(doc))
    proc = _cli("info", str(bad))
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ngff-dreg: error:"), proc.stderr
    assert f"{bad}/{file}" in lines[0], lines[0]


def test_into_fixed_05_without_upgrade_is_a_one_line_error(small_pair, tmp_path):
    out = tmp_path / "out.zarr"
    proc = _cli("register", small_pair.fixed, small_pair.moving, "-o", str(out),
                "--into-fixed", "--no-progress")
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--upgrade-fixed" in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_register_then_apply_via_cli(small_pair, tmp_path):
    out = str(tmp_path / "out.zarr")
    fixed = str(tmp_path / "fixed.zarr")  # a copy: the run writes into it
    shutil.copytree(small_pair.fixed, fixed)
    proc = _cli(
        "register",
        fixed,
        small_pair.moving,
        "-o",
        out,
        "--levels",
        "0",
        "--block-size",
        "32",
        "--scheduler",
        "local:2",
        "--no-progress",
        "--into-fixed",
        "--upgrade-fixed",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "transform written to" in proc.stdout
    assert "stage 0" in proc.stdout
    assert "and into" in proc.stdout
    assert output_status(out) == "complete"
    pts = np.random.default_rng(0).uniform(8, 40, size=(30, 3))
    np.testing.assert_allclose(read_transform(fixed).transform_points(pts),
                               read_transform(out).transform_points(pts), atol=1e-6)
    # Same output again without --overwrite and other arguments: refused, one line.
    again = _cli(
        "register",
        fixed,
        small_pair.moving,
        "-o",
        out,
        "--levels",
        "0",
        "--block-size",
        "16",
        "--scheduler",
        "local:1",
        "--no-progress",
    )
    assert again.returncode == 2 and "overwrite" in again.stderr
    warped = str(tmp_path / "warped.zarr")
    proc = _cli("apply", out, small_pair.moving, small_pair.fixed, "-o", warped)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert output_status(warped) in ("foreign", "complete")  # an image group, not a scene


@pytest.mark.slow
def test_demo_command_reports_error_against_truth(tmp_path):
    """The README's main job, on the real MRI template at 2 mm (half size) to stay quick."""
    proc = _cli(
        "demo",
        "--dir",
        str(tmp_path / "demo"),
        "--downsample",
        "2",
        "--scheduler",
        "local:2",
        "--no-progress",
        "--no-resample",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("point error vs truth"))
    values = dict(
        zip(line.split(":")[1].split()[::2], map(float, line.split(":")[1].split()[1::2]))
    )
    # Acceptance bar of the product (voxels of the registered grid), with the default schedule.
    assert values["p95"] <= 0.5 and values["mean"] <= 0.25, line
    assert "folded fraction 0.0000%" in proc.stdout
    assert "stage 0" in proc.stdout and "global" in proc.stdout
