"""The visual registration report: written for a real run, rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ngff_dreg.demo import make_demo
from ngff_dreg.pipeline import register
from ngff_dreg.report import ReportLocationError, write_report
from ngff_dreg.schedule import BlockStage, GlobalStage, Schedule

FIGURES = {"registration.png", "displacement.png", "jacobian.png", "blocks.png", "timings.png"}

_CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Appended to a copy of the page: after load, list every <img> with its natural size.
_PROBE = (
    '<script>window.addEventListener("load",function(){var r=[];'
    "for(var i=0;i<document.images.length;i++){var m=document.images[i];"
    'r.push([m.getAttribute("src"),m.naturalWidth,m.naturalHeight]);}'
    'var p=document.createElement("pre");p.id="imgcheck";p.textContent=JSON.stringify(r);'
    "document.body.appendChild(p);});</script>"
)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run_chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [exe, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _read_png(path: Path) -> np.ndarray:
    import matplotlib.image

    return np.asarray(matplotlib.image.imread(str(path)), dtype=np.float64)


@pytest.fixture(scope="module")
def registered(tmp_path_factory, dask_client):
    d = tmp_path_factory.mktemp("report")
    pair = make_demo(d, synthetic=True, size=48, chunks=16, max_displacement_voxels=3.0)
    schedule = Schedule(
        GlobalStage(level=1, iterations=50),
        [
            BlockStage(
                level=1,
                block_size=12,
                overlap=0.5,
                method="bspline",
                method_options={"mesh_size": 2, "iterations": 20},
                field_spacing_factor=2,
            )
        ],
    )
    out = d / "out.zarr"
    register(pair.fixed, pair.moving, str(out), schedule=schedule, client=dask_client,
             progress=False)
    return out


@pytest.fixture(scope="module")
def page(registered) -> Path:
    return write_report(registered)


def test_report_files_and_figures(page, registered):
    assert page == registered / "report" / "index.html"
    text = page.read_text(encoding="utf-8")
    srcs = set(re.findall(r'<img src="([^"]+)"', text))
    assert srcs == FIGURES
    for name in srcs:
        img = _read_png(page.parent / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert float(img[..., :3].var()) > 1e-3, f"{name} looks blank"
    for needle in ("stage 0", "global", "numpy", "itk", "zarr", "dask", "python", "jacobian_min"):
        assert needle in text


def test_report_renders_in_headless_chromium(page, tmp_path):
    exe = _chromium()
    # .ci/run installs Chromium; a missing browser is a set-up failure, not a skip.
    assert exe is not None, "chromium is not installed (apt-get install -y chromium)"
    probe = page.parent / "_probe.html"
    probe.write_text(
        page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8"
    )
    try:
        res = _run_chromium(exe, tmp_path / "profile", "--virtual-time-budget=5000",
                            "--dump-dom", probe.as_uri())
    finally:
        probe.unlink()
    m = re.search(r'<pre id="imgcheck">(.*?)</pre>', res.stdout, re.S)
    assert m, f"no probe output; stderr: {res.stderr[-2000:]}"
    images = json.loads(m.group(1))
    assert {src for src, _, _ in images} == FIGURES
    for src, width, height in images:
        assert width > 0 and height > 0, f"{src} did not load in the browser"

    shot = tmp_path / "shot.png"
    res = _run_chromium(exe, tmp_path / "profile2", "--window-size=1280,2400",
                        f"--screenshot={shot}", page.as_uri())
    assert shot.exists(), res.stderr[-2000:]
    pixels = _read_png(shot)[..., :3]
    assert float(pixels.var()) > 1e-3, "the rendered page is blank"
    # the figures, not just text, are on screen: a good share of non-white pixels
    assert float((pixels.mean(axis=-1) < 0.9).mean()) > 0.05


def test_report_to_folder_and_cli(registered, tmp_path):
    from click.testing import CliRunner

    from ngff_dreg.cli import app

    res = CliRunner().invoke(app, ["report", str(registered), "--to", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "index.html").is_file()
    assert {p.name for p in (tmp_path / "r").glob("*.png")} == FIGURES


def test_remote_output_needs_a_folder():
    with pytest.raises(ReportLocationError, match="--to"):
        write_report("s3://bucket/out.zarr")


def test_refused_blocks_are_listed_per_stage():
    from types import SimpleNamespace

    from ngff_dreg.io.omezarr.output_state import StageReport
    from ngff_dreg.report.html import _refused_rows

    stages = [StageReport("global", 2, 2, "rigid+affine"),
              StageReport("stage 0", 1, 1, "bspline", report={"refused": [
                  {"block": [1, 0], "status": "OUT_OF_BOUNDS", "reason": "moving covers 10%"}]})]
    rows = _refused_rows(SimpleNamespace(stages=stages))
    assert rows == [["stage 0", (1, 0), "OUT_OF_BOUNDS", "moving covers 10%"]]
