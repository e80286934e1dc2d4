"""Human-readable summaries for ``ngff-dreg info``: an OME-Zarr multiscale image, the settings."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ngff_dreg.io.omezarr.multiscale import MultiscaleImage, open_multiscale
from ngff_dreg.io.storage.urls import redact_options, redact_text, redact_url
from ngff_dreg.ngff.metadata import image_registrations

__all__ = ["describe", "describe_image", "describe_scene", "describe_settings"]


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _registrations(image: MultiscaleImage) -> list[str]:
    """Names of the coordinate systems a 0.6 image maps to through a displacement field."""
    if image.version != "0.6":
        return []
    return list(image_registrations(image.group.attrs.asdict()))


def describe_image(image: MultiscaleImage) -> str:
    """Table of an opened image's levels (see :func:`describe`)."""
    ms = image.multiscale
    g0 = image.levels[0].geometry
    axes = ", ".join(
        f"{a.name}[{a.type or '?'}{', ' + a.unit if a.unit else ''}]" for a in ms.axes
    )
    direction = np.asarray(g0.direction)
    head = [
        f"URL:        {redact_url(image.url)}",
        f"NGFF:       {ms.version} (Zarr v{image.zarr_format})"
        + (f", coordinate system {ms.coordinate_system!r}" if ms.coordinate_system else ""),
        f"Name:       {ms.name or '-'}",
        f"Axes:       {axes}",
        f"Unit:       {g0.unit or 'none given'}",
        "Direction:  "
        + ("identity" if g0.is_axis_aligned else "; ".join(_fmt(r) for r in direction))
        + " (ITK order)",
    ]
    if ms.orientation:
        head.append(f"Orientation: {', '.join(ms.orientation)} (RFC-4, relative to LPS)")
    regs = _registrations(image)
    if regs:
        head.append(f"Registrations: {', '.join(regs)} (read with read_transform(url, "
                    "coordinate_system=...))")
    rows = [["level", "path", "shape", "chunks", "dtype", "spacing (x,y,z)", "origin (x,y,z)"]]
    for lv in image.levels:
        rows.append([
            str(lv.index),
            lv.path,
            "x".join(str(s) for s in lv.shape),
            "x".join(str(c) for c in lv.chunks)
            + (f" (shards {'x'.join(str(s) for s in lv.shards)})" if lv.shards else ""),
            str(lv.dtype),
            _fmt(lv.geometry.spacing),
            _fmt(lv.geometry.origin),
        ])
    return "\n".join(head) + "\n\n" + _table(rows)


def describe(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    unit: str | None = None,
) -> str:
    """Describe the OME-Zarr multiscale image at ``url`` as a text table.

    Parameters
    ----------
    url:
        Multiscale group URL (local, ``file://``, ``s3://``, ``http(s)://``).
    storage_options:
        fsspec options for remote URLs (never shown).
    unit:
        Show lengths in this unit.

    Returns
    -------
    str
        Header (URL redacted, version, axes, unit, direction) and one row per
        level: path, shape, chunks, dtype, spacing, origin.

    A group holding an RFC-5 scene (``ome.scene``) is described by
    :func:`describe_scene` instead.

    """
    from ngff_dreg.io.storage.stores import open_group

    try:
        attrs = dict(open_group(os.fspath(url), storage_options).attrs.asdict())
    except Exception:  # let the image reader give its own error
        attrs = {}
    ome = attrs.get("ome")
    if isinstance(ome, Mapping) and isinstance(ome.get("scene"), Mapping):
        return describe_scene(os.fspath(url), storage_options)
    return describe_image(open_multiscale(url, storage_options, unit=unit))


def describe_scene(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """The coordinate systems of an RFC-5 scene and the transforms between them.

    One line per coordinate system (``name`` for the scene's own,
    ``image/name`` for a referenced image's, with its axes), then one per
    stored transform: ``source -> target``, its type, and whether it can be
    walked backwards (inverted in closed form or through a ``bijection``).
    """
    from ngff_dreg.io.omezarr.scene_reader import open_scene_graph
    from ngff_dreg.ngff.scene_graph import NonInvertibleTransformError

    graph = open_scene_graph(url, storage_options)
    lines = [f"URL:        {redact_url(url)}", "NGFF:       scene (RFC-5)", "",
             "Coordinate systems:"]
    for (path, name), axes in graph.systems.items():
        label = f"{path}/{name}" if path else name
        names = ", ".join(f"{a.get('name')}[{a.get('type', '?')}"
                          f"{', ' + a['unit'] if a.get('unit') else ''}]" for a in axes)
        lines.append(f"  {label}: {names or 'axes not given'}")
    lines += ["", "Transforms:"]
    for e in graph.edges:
        def show(key: tuple[str, str]) -> str:
            return f"{key[0]}/{key[1]}" if key[0] else key[1]

        try:
            e.transform.inverse()
            back = "invertible"
        except NonInvertibleTransformError:
            back = "one way"
        kind = e.transform.label.split(" (", 1)[0]
        lines.append(f"  {show(e.source)} -> {show(e.target)}: {kind} ({back})")
    return "\n".join(lines)


def _setting_text(key: str, value: Any) -> str:
    """A setting's value as printed: YAML spelling, never a secret.

    The value goes through the same redaction as storage options (a key
    that names a credential shows ``***``, a URL loses its user info and
    signed query values), so printing stays safe whatever settings are added.
    """
    name = key.rsplit(".", 1)[-1].replace("-", "_")
    safe = redact_options({name: value})[name]
    if safe is None:
        return "null"
    if isinstance(safe, bool):
        return "true" if safe else "false"
    if isinstance(safe, float):
        return f"{safe:g}"
    return str(safe)


def describe_settings() -> str:
    """ngff-dreg's settings in force, each with where it came from (``ngff-dreg info --config``).

    Sources: ``default`` (the YAML file shipped in the package), a dask
    configuration file, a ``DASK_NGFF_DREG__...`` variable, ``dask.config.set``
    or a deprecated ``NGFF_DREG_*`` variable.
    """
    import dask.config

    from ngff_dreg import config

    rows = [["key", "value", "source"]]
    rows += [[s.key, _setting_text(s.key, s.value), redact_text(s.source)]
             for s in config.sources()]
    example = config.SETTINGS["io.chunk-cache-mb"]
    return "\n".join([
        _table(rows),
        "",
        f"Set them in a YAML file in one of {', '.join(dask.config.paths)}",
        f"(under '{config.NAMESPACE}:'), with variables such as {example.env_name}=512,",
        f"or with dask.config.set({{'{example.path}': 512}}) in Python.",
        f"Their defaults and meaning: {config.DEFAULTS_FILE}",
    ])
