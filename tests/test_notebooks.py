"""Run the notebooks in ``notebooks/`` exactly as a user would: ``pytest --nbmake notebooks``.

The run happens in a fresh ``pytest`` process on a copy of the folder, with no
environment set by this harness (no bucket, endpoint, credentials or
``RUN_CLOUD``, and those of this session removed), so each notebook has to
find its own storage: a throw-away moto S3 server on 127.0.0.1 or a local
temporary folder. ``--overwrite`` keeps the executed copies, whose outputs are
then checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_bring_your_own_method.ipynb", "03_clusters.ipynb"]

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# What a test session or a developer's shell may have set that a new user has not.
_DROP_PREFIXES = ("NGFF_DREG_", "AWS_", "DASK_", "RUN_CLOUD", "CLUSTER_KIND", "MPLBACKEND")


def test_notebooks_are_stored_without_outputs() -> None:
    import nbformat

    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, name


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "03_clusters.ipynb"])
def test_bucket_cell_says_where_to_put_a_bucket(name: str) -> None:
    import nbformat

    cell = nbformat.read(NOTEBOOKS / name, as_version=4).cells[1].source
    assert "EDIT" in cell and "BUCKET" in cell and "STORAGE_OPTIONS" in cell
    assert "my-bucket" not in cell.split("BUCKET =")[1].splitlines()[0].split("#")[0]


def test_pytest_nbmake_runs_every_notebook_with_no_environment(tmp_path: Path) -> None:
    import nbformat

    work = tmp_path / "clone"
    shutil.copytree(NOTEBOOKS, work / "notebooks")
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROP_PREFIXES)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbmake", "notebooks", "--overwrite",
         "--nbmake-timeout=600", "-p", "no:cacheprovider", "-q"],
        cwd=work, env=env, capture_output=True, text=True, timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout, proc.stdout[-2000:]
    # Nothing but the notebooks was written next to them.
    assert sorted(p.name for p in (work / "notebooks").iterdir()) == NAMES
    for name in NAMES:
        nb = nbformat.read(work / "notebooks" / name, as_version=4)
        text = "\n".join(
            out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.get("output_type") == "stream"
        )
        assert "mean error" in text, name
        if name == "02_bring_your_own_method.ipynb":
            assert "temporary local folder" in text
        else:
            assert "No bucket configured: started a throw-away local S3 server" in text, name
            assert "Edit this cell" in text
            assert "data under s3://ngff-dreg-scratch/" in text
