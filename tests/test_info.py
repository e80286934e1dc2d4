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


def test_describe_settings_lists_every_key_and_its_source(ngff_config: Any) -> None:
    from ngff_dreg import config
    from ngff_dreg.info import describe_settings

    ngff_config({"io.read-attempts": 2, "io.host-cache-dir": "/scratch/chunks"})
    lines = describe_settings().splitlines()
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines if ln.startswith("ngff-dreg.")}
    assert set(rows) == {s.path for s in config.SETTINGS.values()}
    assert rows["ngff-dreg.io.read-attempts"] == ["2", "dask.config.set"]
    assert rows["ngff-dreg.io.host-cache-dir"] == ["/scratch/chunks", "dask.config.set"]
    assert rows["ngff-dreg.io.chunk-cache-mb"] == ["256", "default"]
    assert rows["ngff-dreg.io.trace-dir"] == ["null", "default"]
    assert any("DASK_NGFF_DREG__IO__CHUNK_CACHE_MB" in ln for ln in lines)


def test_describe_settings_never_prints_a_secret(monkeypatch: Any) -> None:
    from ngff_dreg import config
    from ngff_dreg.info import describe_settings

    fake = [config.SettingSource("ngff-dreg.io.access-token", "hunter2", "dask.config.set"),
            config.SettingSource("ngff-dreg.io.mirror", "s3://AKIAVISIBLE:pw@host/b?token=t0k",
                                 "/home/u/.config/dask/x.yaml")]
    monkeypatch.setattr(config, "sources", lambda: fake)
    text = describe_settings()
    assert "ngff-dreg.io.access-token" in text and "***" in text
    for secret in ("hunter2", "AKIAVISIBLE", ":pw@", "t0k"):
        assert secret not in text, secret
