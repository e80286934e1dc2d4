"""Accuracy regression: the default schedule on reduced accuracy-suite cases.

The cases come from ``benchmarks/accuracy_cases.py`` (real images from the
nilearn wheel with a known fixed→moving truth), in their reduced 2 mm
variants; the full suite, with whole-image elastix and ANTs run beside it, is
``benchmarks/accuracy_suite.py``. Each case is registered with
``Schedule.default`` on a 2-process cluster and scored on the case's own
foreground points against the truth; the tolerances sit about 1.5x above
the errors measured when they were set, so a real regression fails.

Two cases break the intensity model's assumptions (issue #20), and the
default's ``auto`` similarity fits them with MIND-SSC descriptors:
``mni2d-dir`` (the moving contrast is not a function of the fixed one:
white matter and CSF both dark) and ``mni2d-illum`` (fixed and moving lit
from opposite sides, exp(-2.5) across, with stripes, which both stages
divide out: p95 1.68 voxels, mean 0.86, from 5.7 at the start; 1.7-3.3 before
the destriping). A third, ``mni-flair-svf6`` (FLAIR-like moving, diffeomorphic
warp), passes both NCC thresholds on the coarse level; only the rank check
inside the head sends it to MIND (p95 1.03 voxels, mean 0.56; the intensity
model: 2.99 and 1.36).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("nilearn")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"

#: case -> (p95, mean) tolerances in voxels of the fixed image's finest spacing
TOLERANCES = {
    "mni-headline": (0.40, 0.20),
    "mni2d-headline": (0.45, 0.22),
    "mni-aniso4": (0.75, 0.35),
    "mni2d-dir": (2.0, 0.9),
    "mni2d-illum": (2.6, 1.3),
    "mni-flair-svf6": (1.55, 0.85),
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        import accuracy_cases
    finally:
        sys.path.remove(str(BENCH))
    return accuracy_cases, tmp_path_factory.mktemp("accuracy")


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize("name", sorted(TOLERANCES))
def test_default_schedule_accuracy(cases: Any, dask_client: Any, tmp_path: Path,
                                   name: str) -> None:
    import ngff_dreg

    module, root = cases
    case = module.make_case(name, root, reduced=True)
    result = ngff_dreg.register(case.fixed, case.moving, str(tmp_path / "out.zarr"),
                                client=dask_client, progress=False)
    pts = case.eval_points
    err = np.linalg.norm(result.transforms.transform.transform_points(pts)
                         - case.truth.transform_points(pts), axis=1)
    start = np.linalg.norm(pts - case.truth.transform_points(pts), axis=1)
    vox = float(min(case.geometry.spacing))
    p95_tol, mean_tol = TOLERANCES[name]
    p95, mean = float(np.percentile(err, 95)) / vox, float(err.mean()) / vox
    assert float(start.mean()) / vox > 1.5  # the pair is far from aligned to begin with
    assert p95 < p95_tol and mean < mean_tol, (name, p95, mean)
    jac = result.levels[-1].report["jacobian_min"]
    assert jac > 0, f"{name}: the field folds (det J min {jac})"
