"""Execute the notebooks in ``notebooks/`` against a local moto S3 server.

Each notebook runs in a fresh Jupyter kernel (nbclient) whose environment
points it at the session's moto server (``NGFF_DREG_S3_ENDPOINT``,
``NGFF_DREG_S3_BUCKET`` and dummy AWS credentials); its cloud cells stay off
(``RUN_CLOUD`` unset). A cell error fails the test with the cell's traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_bring_your_own_method.ipynb", "03_clusters.ipynb"]

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.cluster]


def test_notebooks_are_stored_without_outputs() -> None:
    import nbformat

    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == NAMES
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, name


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(
    name: str, s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    bucket = s3_server.create_bucket()
    env = {
        "NGFF_DREG_S3_ENDPOINT": s3_server.endpoint_url,
        "NGFF_DREG_S3_BUCKET": bucket,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MPLBACKEND": "Agg",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RUN_CLOUD", raising=False)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=dict(os.environ))
    # The run wrote its output to the bucket (not to the working directory).
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    if name != "02_bring_your_own_method.ipynb":
        assert any(k.endswith("zarr.json") and "registration" in k for k in keys), keys[:20]
    assert not list(tmp_path.glob("*.zarr"))
    text = "\n".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
        for out in cell.get("outputs", []) if out.get("output_type") == "stream"
    )
    assert "mean error" in text
    print(name, [line for line in text.splitlines() if "error" in line])
