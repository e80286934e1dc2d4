"""URLs and paths of stores, and how they are printed without secrets.

No zarr or fsspec here: anything may import these helpers (the CLI, the
report) without loading the I/O stack. Nothing in ngff-dreg logs or formats a
URL or ``storage_options`` without passing it through :func:`redact_url`,
:func:`redact_text` or :func:`redact_options` first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "REMOTE_SCHEMES",
    "redact_url",
    "redact_options",
    "redact_text",
    "is_remote",
    "local_path",
    "location_key",
    "join_url",
]

REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "http", "https", "az", "abfs", "memory")

_SECRET_KEY = re.compile(
    r"(secret|token|passw|key|credential|auth|signature|session|cookie|bearer)", re.IGNORECASE
)
_SAFE_KEYS = {"anon", "endpoint_url", "region_name", "use_ssl", "requester_pays", "asynchronous"}
_SECRET_QUERY = re.compile(
    r"(x-amz-[a-z-]*|signature|sig|token|key|secret|password|credential|policy|expires)",
    re.IGNORECASE,
)


def redact_url(url: Any) -> str:
    """A URL safe to print: user info and credential-bearing query values hidden.

    Parameters
    ----------
    url:
        Any URL or path (non-strings are converted with ``str``).

    Returns
    -------
    str
        ``url`` with ``user:password@`` replaced by ``***@`` and the values of
        query parameters such as ``X-Amz-Signature`` or ``token`` replaced by
        ``***``.

    """
    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:
        return "<unparseable url>"
    if not parts.scheme or "://" not in text:
        return text
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = []
        for pair in query.split("&"):
            k, sep, _value = pair.partition("=")
            pairs.append(f"{k}{sep}***" if sep and _SECRET_QUERY.search(k) else pair)
        query = "&".join(pairs)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_USERINFO_IN_TEXT = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@]+@")
_QUERY_IN_TEXT = re.compile(
    r"([?&](?:x-amz-[a-z-]*|signature|sig|token|key|secret|password|credential|policy)=)"
    r"[^&\s'\"]+",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """Hide URL user info and credential query values anywhere inside ``text``."""
    text = _USERINFO_IN_TEXT.sub(r"\1***@", str(text))
    return _QUERY_IN_TEXT.sub(r"\1***", text)


def redact_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of fsspec ``storage_options`` with every secret value hidden.

    Keys that look like credentials (``key``, ``secret``, ``token``,
    ``password``, ``aws_session_token``...) get ``"***"``; nested mappings
    (``client_kwargs``, ``config_kwargs``) are redacted recursively.
    """
    if not options:
        return {}
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, Mapping):
            out[k] = redact_options(v)
        elif str(k) in _SAFE_KEYS:
            out[k] = redact_url(v) if isinstance(v, str) else v
        elif _SECRET_KEY.search(str(k)):
            out[k] = "***"
        elif isinstance(v, str):
            out[k] = redact_url(v)
        else:
            out[k] = v
    return out


def _scheme(url: str) -> str:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*)://", url)
    return m.group(1).lower() if m else ""


def is_remote(url: str | os.PathLike[str]) -> bool:
    """True for URLs handled by fsspec (``s3://``, ``http(s)://``...), not local files."""
    scheme = _scheme(str(url))
    return bool(scheme) and scheme != "file"


def local_path(url: str | os.PathLike[str]) -> Path:
    """Local filesystem path of a plain path or ``file://`` URL."""
    text = os.fspath(url)
    if _scheme(text) == "file":
        text = text[len("file://") :]
    return Path(text).expanduser()


def location_key(url: str | os.PathLike[str]) -> str:
    """A comparable form of a location: local paths resolved, no trailing ``/``.

    Two URLs naming the same group give the same key (``./a.zarr``,
    ``file:///abs/a.zarr/`` and ``/abs/a.zarr``); remote URLs are kept as given.
    """
    text = os.fspath(url)
    if not is_remote(text):
        return os.path.realpath(local_path(text)).rstrip("/")
    return text.rstrip("/")


def join_url(url: str, *parts: str) -> str:
    """Join path components onto a URL or path with ``/``."""
    base = str(url).rstrip("/")
    tail = "/".join(p.strip("/") for p in parts if p)
    return f"{base}/{tail}" if tail else base
