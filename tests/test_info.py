"""ngff_dreg.info.describe: human-readable table of a multiscale image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ngff_dreg.info import describe


def test_describe_local(tmp_path: Path, make_test_image: Any) -> None:
    url = str(tmp_path / "d.zarr")
    make_test_image(url, (20, 24, 28), spacing=(0.5, 0.5, 2.0), origin=(1.0, 2.0, 3.0),
                    chunks=8, n_levels=3, dtype=np.uint16)
    text = describe(url)
    lines = text.splitlines()
    assert lines[0] == f"URL:        {url}"
    assert "NGFF:       0.5 (Zarr v3)" in text
    assert "z[space, micrometer], y[space, micrometer], x[space, micrometer]" in text
    assert "Direction:  identity" in text
    rows = [ln.split() for ln in lines if ln[:1].isdigit()]
    assert [r[:5] for r in rows] == [
        ["0", "0", "20x24x28", "8x8x8", "uint16"],
        ["1", "1", "10x12x14", "8x8x8", "uint16"],
        ["2", "2", "5x6x7", "5x6x7", "uint16"],
    ]
    assert "(0.5, 0.5, 2)" in lines[lines.index(next(ln for ln in lines if ln.startswith("0 ")))]
    # level 2 origin = origin_0 + (4*s - s)/2
    assert "(1.75, 2.75, 6)" in text


def test_describe_units_and_oblique(tmp_path: Path, make_test_image: Any) -> None:
    url = str(tmp_path / "o.zarr")
    c, s = np.cos(0.5), np.sin(0.5)
    make_test_image(url, (6, 8, 10), version="0.6", n_levels=1,
                    direction=[[c, -s, 0], [s, c, 0], [0, 0, 1]])
    text = describe(url, unit="millimeter")
    assert "Unit:       millimeter" in text
    assert "identity" not in text and "0.877583" in text
    assert "(0.001, 0.001, 0.001)" in text
    assert "NGFF:       0.6" in text


def test_describe_s3_hides_credentials(s3_server: Any, make_test_image: Any) -> None:
    bucket = s3_server.create_bucket()
    url = s3_server.url(bucket, "i.zarr")
    opts = s3_server.storage_options(key="AKIAVISIBLE", secret="hidden-secret")
    make_test_image(url, (6, 6, 6), n_levels=1, storage_options=opts)
    text = describe(url, opts)
    assert f"s3://{bucket}/i.zarr" in text
    assert "hidden-secret" not in text and "AKIAVISIBLE" not in text
