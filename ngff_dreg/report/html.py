"""The visual registration report: :func:`write_report` writes ``index.html`` and its PNGs."""

from __future__ import annotations

import datetime as _dt
import html
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ngff_dreg.errors import NgffDregError
from ngff_dreg.report import figures
from ngff_dreg.report.data import (
    SceneInfo,
    displacement_planes,
    image_planes,
    jacobian_histogram,
    jacobian_planes,
    read_scene_info,
    versions,
)
from ngff_dreg.transforms import TransformChain

__all__ = ["REPORT_DIR", "ReportLocationError", "write_report"]

logger = logging.getLogger(__name__)

#: Folder of the report inside a local output scene.
REPORT_DIR = "report"


class ReportLocationError(NgffDregError, ValueError):
    """A remote output needs a local folder for its report (``to=``)."""


def write_report(
    output_url: str | os.PathLike[str],
    *,
    to: str | os.PathLike[str] | None = None,
    fixed: str | None = None,
    moving: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Path:
    """Write a self-contained HTML registration report with its PNG figures.

    The page shows, on the three orthogonal mid-planes of a coarse pyramid
    level (or the whole plane of a 2D image): checkerboards and colour
    overlays of fixed vs moving before and after registration; the
    deformable displacement magnitude and a deformed grid; the Jacobian
    determinant map and histogram (``quality/jacobian``); per-stage block
    status maps; per-stage timings and NCC; the final report figures and the
    library versions. Only coarse levels, single planes and a streamed
    histogram are read, so memory stays small for any image size.

    Parameters
    ----------
    output_url:
        An output scene written by :func:`ngff_dreg.pipeline.register`.
    to:
        Folder receiving ``index.html`` and the PNGs. Defaults to
        ``<output>/report`` for a local output; required for a remote one.
    fixed, moving:
        Override the image URLs recorded in the scene (``ngff_dreg.images``),
        e.g. when the images moved since the run.
    storage_options:
        fsspec options for remote outputs and images.

    Returns
    -------
    pathlib.Path
        The written ``index.html``.

    Raises
    ------
    ReportLocationError
        ``output_url`` is remote and ``to`` is not given.
    InvalidMetadataError, IncompleteOutputError
        ``output_url`` is not a complete ngff-dreg scene.

    Examples
    --------
    >>> page = write_report("registration.ome.zarr")  # doctest: +SKIP
    >>> page.name
    'index.html'

    """
    import matplotlib

    from ngff_dreg.io.omezarr.transform_reader import read_transform
    from ngff_dreg.io.storage.urls import is_remote, local_path

    url = os.fspath(output_url)
    if to is None:
        if is_remote(url):
            raise ReportLocationError(
                f"{url} is remote: pass a local folder for the report (to=... / --to DIR)"
            )
        folder = local_path(url) / REPORT_DIR
    else:
        folder = Path(os.fspath(to))
    folder.mkdir(parents=True, exist_ok=True)
    matplotlib.use("Agg", force=False)

    info = read_scene_info(url, storage_options)
    fixed_url = fixed or info.fixed_url
    moving_url = moving or info.moving_url
    transform = read_transform(url, storage_options)
    sections: list[str] = []
    notes: list[str] = []
    _image_sections(fixed_url, moving_url, transform, storage_options, folder, sections, notes)
    _quality_sections(url, transform, info, storage_options, folder, sections, notes)
    page = _page(info, fixed_url, moving_url, sections, notes, versions())
    index = folder / "index.html"
    index.write_text(page, encoding="utf-8")
    logger.info("report written to %s", index)
    return index


def _image_sections(
    fixed_url: str | None,
    moving_url: str | None,
    transform: TransformChain,
    storage_options: Mapping[str, Any] | None,
    folder: Path,
    sections: list[str],
    notes: list[str],
) -> None:
    """The before/after and displacement figures (needs both image URLs)."""
    if fixed_url and moving_url:
        planes, fgeom, level = image_planes(fixed_url, moving_url, transform, storage_options)
        unit = fgeom.unit
        figures.registration_figure(planes, folder / "registration.png")
        sections.append(
            _section(
                "Fixed vs moving, before and after",
                "registration.png",
                f"Fixed level {level} ({'×'.join(map(str, fgeom.shape))} voxels, spacing "
                f"{_fmt_seq(fgeom.spacing)} {unit or ''}). Checkerboards alternate fixed and "
                "moving tiles: edges should run on across tile borders after registration. "
                "Overlays show fixed in magenta and moving in green: aligned structures turn "
                "grey. 'Before' samples the moving image at the same physical points; 'after' "
                "through the fixed→moving transform.",
            )
        )
        disp = displacement_planes(transform, fgeom, [p.plane for p in planes])
        figures.displacement_figure(planes, disp, folder / "displacement.png", unit=unit)
        sections.append(
            _section(
                "Displacement field",
                "displacement.png",
                "Magnitude of the deformable part d of the transform A(x + d(x)) (the affine "
                "removed), and a regular grid moved by the in-plane components of d.",
            )
        )
    else:
        notes.append(
            "The scene does not record the fixed/moving image URLs: pass fixed= and moving= "
            "to show the images and the displacement field."
        )


def _quality_sections(
    url: str,
    transform: TransformChain,
    info: SceneInfo,
    storage_options: Mapping[str, Any] | None,
    folder: Path,
    sections: list[str],
    notes: list[str],
) -> None:
    """The Jacobian, block-status and timing figures."""
    field_geom = transform.field.geometry if transform.field is not None else None
    jplanes = jacobian_planes(url, storage_options, field_geom)
    if jplanes is not None:
        hist = jacobian_histogram(url, storage_options)
        figures.jacobian_figure(jplanes, hist, folder / "jacobian.png")
        sections.append(
            _section(
                "Jacobian determinant",
                "jacobian.png",
                "Determinant of the Jacobian of the fixed→moving map on the field grid "
                "(quality/jacobian): 1 keeps volume, below 1 compresses, above 1 expands; "
                "≤ 0 (black contour, red bars) is a fold.",
            )
        )
    else:
        notes.append("No quality/jacobian array in the scene.")

    figures.block_status_figure(info.stages, folder / "blocks.png")
    sections.append(
        _section(
            "Blocks per stage",
            "blocks.png",
            "Status of every block of every block stage, as recorded in the checkpoint "
            "manifest. White separates z-slices of the block grid.",
        )
    )
    figures.timings_figure(info.stages, folder / "timings.png")
    sections.append(
        _section(
            "Timings and similarity",
            "timings.png",
            "Wall time of each stage and normalised cross-correlation (global level) before and "
            "after it.",
        )
    )


def _fmt_seq(values: Sequence[float]) -> str:
    return "×".join(f"{v:g}" for v in values)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if v is None:
        return "–"
    return str(v)


def _section(title: str, image: str, caption: str) -> str:
    t = html.escape(title)
    return (
        f'<section><h2>{t}</h2><figure><img src="{html.escape(image)}" alt="{t}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure></section>"
    )


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _stage_rows(info: SceneInfo) -> list[list[Any]]:
    rows = []
    for st in info.stages:
        if st.status is not None:
            status = np.asarray(st.status)
            blocks = f"{int((status == 0).sum())}/{status.size}"
        else:
            blocks = "–"
        io = (st.report.get("io") or {}).get("total", {})
        fetched = io.get("chunk_bytes")
        rows.append(
            [st.name, st.fixed_level, st.method, blocks, st.ncc_before, st.ncc_after,
             st.report.get("jacobian_min"), st.report.get("folded_fraction"), st.seconds,
             io.get("requests"), None if fetched is None else fetched / 1e6, io.get("reread")]
        )
    return rows


def _refused_rows(info: SceneInfo) -> list[list[Any]]:
    rows = []
    for st in info.stages:
        for r in st.report.get("refused") or []:
            rows.append([st.name, tuple(r.get("block", ())), r.get("status"), r.get("reason")])
    return rows


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1300px;padding:0 1em;color:#222;background:#fff}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;
padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}th{background:#f3f3f3}
figure{margin:0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:.9em;margin-top:.3em;max-width:70em}
.meta{color:#555;font-size:.9em}.note{background:#fff6dd;padding:.5em .8em;border-radius:4px}
"""


def _page(
    info: SceneInfo,
    fixed_url: str | None,
    moving_url: str | None,
    sections: Sequence[str],
    notes: Sequence[str],
    vers: Mapping[str, str],
) -> str:
    from ngff_dreg.io.storage.urls import redact_url

    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = _table(
        [
            ["output", redact_url(info.url)],
            ["fixed", redact_url(fixed_url) if fixed_url else "–"],
            ["moving", redact_url(moving_url) if moving_url else "–"],
        ]
    )
    stages = _table(
        _stage_rows(info),
        ["stage", "fixed level", "method", "blocks OK", "NCC before", "NCC after",
         "det J min", "folded fraction", "seconds", "store requests", "MB fetched",
         "re-read (fetched / distinct)"],
    )
    keys = sorted(k for k in info.report if k != "refused")
    final = _table([[k, info.report[k]] for k in keys], ["final figure", "value"]) if keys else ""
    refused = _refused_rows(info)
    if refused:
        final += ("<h2>Refused blocks</h2><p>Blocks whose method refused its fit, with the "
                  "method's reason; the reduction filled them from their neighbours.</p>"
                  + _table(refused, ["stage", "block", "status", "reason"]))
    vtable = _table([[k, v] for k, v in vers.items()], ["package", "version"])
    note_html = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>ngff-dreg registration report</title><style>{_CSS}</style></head><body>"
        "<h1>ngff-dreg registration report</h1>"
        f'<p class="meta">Generated {html.escape(now)}</p>{head}{note_html}'
        f"<h2>Stages</h2>{stages}{final}{''.join(sections)}"
        f"<h2>Versions</h2>{vtable}</body></html>\n"
    )

