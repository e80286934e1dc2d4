"""URL -> store mapping, error mapping and credential redaction."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from ngff_dreg.errors import (
    InvalidMetadataError,
    NgffDregError,
    StoreAccessError,
    StoreNotFoundError,
)
from ngff_dreg.io.omezarr.multiscale import open_multiscale
from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
from ngff_dreg.io.storage.counting_store import CountingStore
from ngff_dreg.io.storage.stores import open_group, open_store
from ngff_dreg.io.storage.urls import (
    is_remote,
    join_url,
    local_path,
    redact_options,
    redact_text,
    redact_url,
)


def test_redact_url() -> None:
    assert redact_url("s3://bucket/a.zarr") == "s3://bucket/a.zarr"
    assert redact_url("https://user:pa55@host/x.zarr") == "https://***@host/x.zarr"
    red = redact_url("https://h/x.zarr?X-Amz-Signature=abc&X-Amz-Credential=AKIA&part=1")
    assert "abc" not in red and "AKIA" not in red and "part=1" in red
    assert redact_url("/local/path.zarr") == "/local/path.zarr"


def test_redact_text() -> None:
    text = "Connect failed: https://me:pw@host/a?X-Amz-Signature=s1g&part=2 (s3://k:v@b/x)"
    red = redact_text(text)
    assert "pw" not in red and "s1g" not in red and "k:v" not in red
    assert "host/a" in red and "part=2" in red


def test_redact_options() -> None:
    opts = {
        "key": "AKIA123",
        "secret": "topsecret",
        "token": "tok",
        "anon": False,
        "client_kwargs": {"endpoint_url": "http://u:pw@minio:9000", "aws_session_token": "st"},
        "profile": "default",
    }
    red = redact_options(opts)
    text = repr(red)
    for secret in ("AKIA123", "topsecret", "tok'", "pw@", "'st'"):
        assert secret not in text
    assert red["anon"] is False and red["profile"] == "default"
    assert red["client_kwargs"]["endpoint_url"] == "http://***@minio:9000"
    assert opts["secret"] == "topsecret"  # input untouched
    assert redact_options(None) == {}


def test_url_helpers(tmp_path: Path) -> None:
    assert is_remote("s3://b/k") and is_remote("https://h/x") and not is_remote("/tmp/x")
    assert not is_remote(f"file://{tmp_path}")
    assert local_path(f"file://{tmp_path}") == tmp_path
    assert join_url("s3://b/img.zarr/", "0") == "s3://b/img.zarr/0"


def test_local_and_file_url(tmp_path: Path, make_test_image: Any) -> None:
    url = tmp_path / "a.zarr"
    data, _ = make_test_image(str(url), (6, 7, 8), n_levels=1)
    for u in (str(url), f"file://{url}"):
        store = open_store(u)  # a read-only store counts its reads
        assert isinstance(store, CountingStore) and store.read_only
        assert isinstance(store.wrapped, zarr.storage.LocalStore)
        np.testing.assert_array_equal(open_multiscale(u).open_array(0)[...], data)


def test_missing_local_path(tmp_path: Path) -> None:
    url = str(tmp_path / "nothing.zarr")
    with pytest.raises(StoreNotFoundError, match=re.escape(url)):
        open_multiscale(url)


def test_not_a_zarr_group(tmp_path: Path) -> None:
    plain = tmp_path / "plain_dir"
    plain.mkdir()
    (plain / "readme.txt").write_text("hello")
    with pytest.raises(StoreNotFoundError, match="no Zarr group") as info:
        open_multiscale(str(plain))
    assert str(plain) in str(info.value)
    arr_url = str(tmp_path / "array.zarr")
    zarr.create_array(arr_url, shape=(4, 4), dtype="f4")
    with pytest.raises(InvalidMetadataError, match="array, not a group"):
        open_group(arr_url)


def test_group_without_multiscales(tmp_path: Path) -> None:
    url = str(tmp_path / "g.zarr")
    zarr.open_group(url, mode="w").attrs["something"] = 1
    with pytest.raises(InvalidMetadataError, match="multiscales") as info:
        open_multiscale(url)
    assert url in str(info.value)


def test_s3_missing_key_and_bucket(s3_server: Any) -> None:
    bucket = s3_server.create_bucket()
    opts = s3_server.storage_options()
    with pytest.raises(StoreNotFoundError, match=f"s3://{bucket}/nope.zarr"):
        open_multiscale(s3_server.url(bucket, "nope.zarr"), opts)
    with pytest.raises(StoreAccessError):  # StoreNotFoundError is a StoreAccessError
        open_multiscale("s3://no-such-bucket-xyz/img.zarr", opts)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_s3_endpoint() -> None:
    port = _closed_port()
    opts = {
        "key": "k", "secret": "super-secret-value",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 1},
        "skip_instance_cache": True,
    }
    url = "s3://bucket/img.zarr"
    with pytest.raises(StoreAccessError) as info:
        OMEZarrReaderConstructor(url, storage_options=opts)()
    msg = str(info.value)
    assert url in msg and "super-secret-value" not in msg
    assert isinstance(info.value, NgffDregError) and isinstance(info.value, OSError)


def test_wrong_credentials(s3_server: Any, make_test_image: Any) -> None:
    bucket = s3_server.create_bucket()
    url = s3_server.url(bucket, "w.zarr")
    make_test_image(url, (6, 6, 6), n_levels=1, storage_options=s3_server.storage_options())
    with s3_server.iam_auth():
        bad = s3_server.storage_options(key="AKIAWRONG", secret="not-the-secret")
        with pytest.raises(StoreAccessError) as info:
            open_multiscale(url, bad)
    msg = str(info.value)
    assert url in msg and "not-the-secret" not in msg


def test_unknown_protocol() -> None:
    with pytest.raises(StoreAccessError, match="nosuchproto://x/y"):
        open_store("nosuchproto://x/y")


def test_read_over_http(http_root: tuple[Path, str], make_test_image: Any) -> None:
    root, base = http_root
    data, geom = make_test_image(str(root / "h.zarr"), (8, 10, 12), n_levels=2, chunks=4)
    url = f"{base}/h.zarr"
    image = open_multiscale(url)
    assert image.levels[0].geometry == geom
    np.testing.assert_array_equal(image.open_array(0)[...], data)
    with pytest.raises(StoreNotFoundError, match=re.escape(f"{base}/missing.zarr")):
        open_multiscale(f"{base}/missing.zarr")
