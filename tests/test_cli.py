"""The ``ngff-dreg`` command line, run as a user runs it: in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import itk
import numpy as np
import pytest

from ngff_dreg.demo import make_demo
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.io.omezarr.field_writer import write_field_scene
from ngff_dreg.io.omezarr.output_state import output_status
from ngff_dreg.io.omezarr.transform_reader import read_transform, to_itk_transform
from ngff_dreg.itk_bridge import transform_points as itk_points
from ngff_dreg.reduce import invert_field
from ngff_dreg.synthetic import smooth_displacement
from ngff_dreg.transforms import AffineTransform, TransformChain


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
    # The transform for ITK tools: the exported file maps points like the output.
    h5 = tmp_path / "fixed_to_moving.h5"
    proc = _cli("export", out, str(h5))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"transform written to {h5}" in proc.stdout
    back = itk.transformread(str(h5))[0]
    expected = to_itk_transform(out)
    err = np.abs(itk_points(back, pts) - itk_points(expected, pts)).max()
    assert err < 1e-3 * min(small_pair.fixed_geometry.spacing), err
    warped = str(tmp_path / "warped.zarr")
    proc = _cli("apply", out, small_pair.moving, small_pair.fixed, "-o", warped)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert output_status(warped) in ("foreign", "complete")  # an image group, not a scene


def test_export_inverse_field_image_and_a_bad_extension(tmp_path):
    geom = ImageGeometry((12, 14, 16), (0.8, 0.9, 1.0), (1.0, -2.0, 0.5))
    field = smooth_displacement(geom, 1.2, seed=2)
    affine = AffineTransform.from_arrays(np.diag([1.02, 0.98, 1.01]), np.array([0.5, 0.2, -0.3]))
    out = str(tmp_path / "out.zarr")
    write_field_scene(out, TransformChain(affine, field),
                      TransformChain(affine.inverse(), invert_field(field), affine_first=True),
                      chunks=8)
    nii = tmp_path / "exports" / "moving_to_fixed.nii.gz"
    proc = _cli("export", out, str(nii), "--inverse")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"inverse written to {nii}" in proc.stdout
    image = itk.imread(str(nii))
    vectors = np.asarray(itk.array_from_image(image), dtype=np.float64)
    disp = itk.image_from_array(np.ascontiguousarray(vectors), is_vector=True)
    disp.CopyInformation(image)
    back = itk.DisplacementFieldTransform[itk.D, 3].New()
    back.SetDisplacementField(disp)
    # the field image's own nodes (where the affine-first inverse is sampled exactly)
    idx = np.random.default_rng(0).integers(1, np.asarray(itk.size(image)) - 1, (40, 3))
    nodes = np.asarray(image.GetOrigin()) + (idx * np.asarray(image.GetSpacing())) @ \
        itk.array_from_matrix(image.GetDirection()).T
    expected = to_itk_transform(out, inverse=True)
    err = np.abs(itk_points(back, nodes) - itk_points(expected, nodes)).max()
    assert err < 1e-3 * min(geom.spacing), err
    # a format ITK cannot take: one line naming the file, exit 2, nothing written
    proc = _cli("export", out, str(tmp_path / "warp.png"))
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("ngff-dreg: error:"), proc.stderr
    assert "warp.png" in lines[0] and ".h5" in lines[0]
    assert not (tmp_path / "warp.png").exists()


@pytest.mark.parametrize(("value", "match"), [
    ("40", "output_shards=40: edge 40 on axis 0 is not a whole number of chunks"),
    ("64,64", "output_shards=(64, 64) must be one positive integer edge or 3 of them"),
    ("big", "output_shards='big'"),
])
def test_bad_output_shards_are_a_one_line_error_before_anything_is_written(
        small_pair, tmp_path, value, match):
    out = tmp_path / "out.zarr"
    proc = _cli("register", small_pair.fixed, small_pair.moving, "-o", str(out),
                "--output-shards", value, "--no-progress")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and match in lines[0], proc.stderr
    assert not out.exists()


def test_output_shards_option_is_documented_and_apply_writes_shards(small_pair, tmp_path):
    import zarr

    for command in ("register", "apply"):
        text = _cli(command, "--help").stdout
        assert "--output-shards" in text and "auto" in text
    geom = small_pair.fixed_geometry
    field = smooth_displacement(geom, 1.0, seed=4)
    scene = str(tmp_path / "scene.zarr")
    write_field_scene(scene, TransformChain(AffineTransform.identity(3), field), chunks=8)
    plain, sharded = str(tmp_path / "plain.zarr"), str(tmp_path / "sharded.zarr")
    for out, extra in ((plain, []), (sharded, ["--output-shards", "auto"])):
        proc = _cli("apply", scene, small_pair.moving, small_pair.fixed, "-o", out, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = zarr.open_array(plain, path="0", mode="r"), zarr.open_array(sharded, path="0",
                                                                        mode="r")
    assert a.shards is None and tuple(b.shards) == tuple(b.chunks) == (48, 48, 48)
    np.testing.assert_array_equal(b[...], a[...])


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


def test_verbose_summary_names_each_refused_block_with_its_reason(capsys) -> None:
    from types import SimpleNamespace

    from ngff_dreg.cli import _print_summary
    from ngff_dreg.io.omezarr.output_state import StageReport

    refused = [{"block": [0, 1], "status": "LOW_QUALITY",
                "reason": "block (0, 1): the fit folds (det J min -0.2)"}]
    stage = StageReport("stage 0", 1, 1, "bspline", status=np.array([[0, 1]]),
                        report={"refused": refused})
    result = SimpleNamespace(levels=[stage], timings={}, io=None)
    _print_summary(result, verbose=0)
    assert "refused" not in capsys.readouterr().out
    _print_summary(result, verbose=1)
    out = capsys.readouterr().out
    assert "1/2 blocks" in out
    assert "refused block (0, 1) LOW_QUALITY: block (0, 1): the fit folds" in out


def test_info_config_prints_the_settings_and_their_sources(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NGFF_DREG_", "DASK_NGFF"))}
    env.update(DASK_NGFF_DREG__IO__CHUNK_CACHE_MB="512", NGFF_DREG_READ_ATTEMPTS="6")
    proc = subprocess.run([sys.executable, "-m", "ngff_dreg.cli", "info", "--config"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {ln.split()[0]: ln.split()[1:] for ln in proc.stdout.splitlines()
            if ln.startswith("ngff-dreg.")}
    assert rows["ngff-dreg.io.chunk-cache-mb"] == [
        "512", "DASK_NGFF_DREG__IO__CHUNK_CACHE_MB", "variable"]
    assert rows["ngff-dreg.io.read-attempts"] == ["6", "NGFF_DREG_READ_ATTEMPTS", "(deprecated)"]
    assert rows["ngff-dreg.io.read-backoff"] == ["0.5", "default"]
    assert "NGFF_DREG_READ_ATTEMPTS is deprecated" in proc.stderr


def test_info_needs_a_url_or_config():
    proc = _cli("info")
    assert proc.returncode == 2 and "--config" in proc.stderr


def test_levels_or_a_method_replace_the_default_stages_without_its_refinement(
        small_pair, monkeypatch):
    from ngff_dreg import schedule
    from ngff_dreg.cli import _build_schedule

    # this pair is too small for the refinement's cells to span 3 voxels
    monkeypatch.setattr(schedule, "MIN_REFINE_CELL_VOXELS", 0.0)
    default = _build_schedule(small_pair.fixed, None, None, None, None, None, None, False)
    assert default.stages[-1].when_similarity == "intensity"
    by_levels = _build_schedule(small_pair.fixed, None, None, "1,0", None, None, None, False)
    assert [st.level for st in by_levels.stages] == [1, 0]
    for st in by_levels.stages:
        assert st.when_similarity is None and "min_gain" not in st.method_options
    by_method = _build_schedule(small_pair.fixed, None, None, None, None, None, "affine", False)
    assert [st.method for st in by_method.stages] == ["affine"] * (len(default.stages) - 1)
