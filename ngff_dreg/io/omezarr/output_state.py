"""The state of an output: completion marker, checkpoint manifest and stage reports.

* **Marker.** Every group ngff-dreg writes (an output scene, a field group, a
  registration copied into an image) carries ``attributes.ngff_dreg.status``:
  ``"incomplete"`` from its first write on, ``"complete"`` once its metadata
  has been written, last. :func:`output_status` tells what a location holds;
  :func:`require_complete` refuses an interrupted write.
* **Checkpoints.** ``<output>/checkpoints`` holds the run's manifest (group
  attribute ``ngff_dreg_manifest``): the run's fingerprint, one entry per
  finished stage and whether the resampled image is written. One transform
  scene per finished block stage sits beside it. :class:`Checkpoints` reads
  and writes it; :func:`claim_output` decides, before a run writes anything,
  whether it resumes, replaces or refuses what is there.
* **Stage reports.** :class:`StageReport` is what one stage did, as the
  manifest keeps it (the pipeline returns them; the report shows them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import zarr
import zarr.errors

from ngff_dreg.errors import IncompleteOutputError, OutputExistsError
from ngff_dreg.io.storage.stores import zarr_group
from ngff_dreg.io.storage.urls import join_url, redact_url

__all__ = [
    "CHECKPOINTS",
    "MANIFEST_KEY",
    "MARKER_KEY",
    "RESAMPLED",
    "Checkpoints",
    "OutputClaim",
    "StageReport",
    "claim_output",
    "fingerprint",
    "marker",
    "mark_output",
    "marker_status",
    "output_status",
    "put_marker",
    "require_complete",
    "set_status",
    "stage_reports",
]

logger = logging.getLogger(__name__)

#: Attribute holding ngff-dreg's own metadata (status, images, report...).
MARKER_KEY = "ngff_dreg"
MARKER_VERSION = 1
#: Group below an output holding the manifest and the earlier stages' scenes.
CHECKPOINTS = "checkpoints"
#: Attribute of the checkpoints group holding the manifest.
MANIFEST_KEY = "ngff_dreg_manifest"
#: Group below an output holding the resampled moving image (in the viewer scene,
#: :mod:`ngff_dreg.io.omezarr.view_writer`; outputs before it: ``moving_resampled``).
RESAMPLED = "view/moving_resampled"


# ------------------------------------------------------------------ the marker
def marker(status: str, *, versioned: bool = True, **extra: Any) -> dict[str, Any]:
    """The ``ngff_dreg`` attribute of a group: ``{"status", "version"?, **extra}``."""
    out: dict[str, Any] = {"status": status}
    if versioned:
        out["version"] = MARKER_VERSION
    out.update(extra)
    return out


def put_marker(group: Any, status: str, *, versioned: bool = True, **extra: Any) -> None:
    """Replace a group's attributes by its marker alone (a first write)."""
    group.attrs.put({MARKER_KEY: marker(status, versioned=versioned, **extra)})


def marker_status(attrs: Mapping[str, Any]) -> str | None:
    """The marker's status in a group's attributes (``None``: no marker)."""
    found = attrs.get(MARKER_KEY)
    return found.get("status") if isinstance(found, dict) else None


def mark_output(url: str, storage_options: Mapping[str, Any] | None, *, wipe: bool) -> None:
    """Mark the output root incomplete; ``wipe`` first empties the location."""
    root = zarr_group(url, storage_options, mode="w" if wipe else "a", zarr_format=3)
    put_marker(root, "incomplete")


def set_status(url: str, storage_options: Mapping[str, Any] | None, status: str) -> None:
    """Set the output's marker status, keeping the rest of its attributes."""
    root = zarr_group(url, storage_options, mode="r+")
    attrs = root.attrs.asdict()
    found: dict[str, Any] = dict(attrs.get(MARKER_KEY) or {})  # type: ignore[arg-type]
    found["status"] = status
    attrs[MARKER_KEY] = found
    root.attrs.put(attrs)


def output_status(url: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """State of an output location.

    Returns
    -------
    str
        ``"absent"`` (nothing there), ``"incomplete"`` (an interrupted
        ngff-dreg write), ``"complete"`` (a finished ngff-dreg scene) or
        ``"foreign"`` (some other Zarr content).

    """
    try:
        group = zarr_group(url, storage_options, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        return "absent"
    except Exception:  # an array, v2 data, or unreadable metadata
        return "foreign"
    attrs = group.attrs.asdict()
    status = marker_status(attrs)
    if status is None:
        return "foreign" if (attrs or list(group.keys())) else "absent"
    return "complete" if status == "complete" else "incomplete"


def require_complete(attrs: Mapping[str, Any], url: str) -> None:
    """Raise :class:`IncompleteOutputError` for a group left by an interrupted write."""
    status = marker_status(attrs)
    if status is not None and status != "complete":
        raise IncompleteOutputError(
            f"{redact_url(url)} is an incomplete ngff-dreg output (interrupted write); "
            "rerun the writer to complete it"
        )


# ------------------------------------------------------------------ stage reports
def jsonable(obj: Any) -> Any:
    """``obj`` with arrays, NumPy scalars and non-finite floats made JSON-ready."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def fingerprint(parts: Mapping[str, Any]) -> str:
    """Short stable hash of a run's arguments (a rerun with the same ones resumes)."""
    blob = json.dumps(jsonable(parts), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _float_or_none(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass
class StageReport:
    """What one stage did.

    Attributes
    ----------
    name:
        ``"global"`` or ``"stage N"``.
    fixed_level, moving_level:
        Pyramid levels used.
    method:
        Method name.
    status:
        Block status codes (block-grid shaped, ``-1`` where no block), ``None``
        for the global stage.
    ncc_before, ncc_after:
        The similarity the stage optimised, before and after it, on the
        stage's own level: ``metric`` names it.
    metric:
        ``"NCC"`` (normalised cross-correlation of the fixed image and the
        intensity model's prediction from the warped moving image) or
        ``"MIND NCC"`` (the same between the images' MIND-SSC descriptors,
        for stages fitted with ``similarity="mind"``).
    seconds:
        Wall time.
    report:
        The reduction's figures (Jacobian, inverse residual...).
    resumed:
        True when loaded from a checkpoint instead of computed.

    """

    name: str
    fixed_level: int
    moving_level: int
    method: str
    status: npt.NDArray[np.integer[Any]] | None = None
    ncc_before: float | None = None
    ncc_after: float | None = None
    metric: str = "NCC"
    seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False

    @property
    def block_metric(self) -> npt.NDArray[np.float64] | None:
        """Per-block metric map (same shape as ``status``) when the report has one."""
        metric = self.report.get("block_metric")
        return None if metric is None else np.asarray(metric, dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (for the checkpoint manifest)."""
        return {
            "name": self.name,
            "fixed_level": self.fixed_level,
            "moving_level": self.moving_level,
            "method": self.method,
            "status": None if self.status is None else np.asarray(self.status).tolist(),
            "ncc_before": self.ncc_before,
            "ncc_after": self.ncc_after,
            "metric": self.metric,
            "seconds": self.seconds,
            "report": jsonable(self.report),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any], name: str = "?") -> StageReport:
        """Inverse of :meth:`to_json`; missing or non-finite entries get defaults."""
        status = d.get("status")
        return cls(
            name=str(d.get("name", name)),
            fixed_level=int(d.get("fixed_level", 0)),
            moving_level=int(d.get("moving_level", 0)),
            method=str(d.get("method", "?")),
            status=None if status is None else np.asarray(status, dtype=np.int16),
            ncc_before=_float_or_none(d.get("ncc_before")),
            ncc_after=_float_or_none(d.get("ncc_after")),
            metric=str(d.get("metric", "NCC")),
            seconds=float(d.get("seconds", 0.0) or 0.0),
            report=dict(d.get("report", {}) or {}),
            resumed=True,
        )

    @classmethod
    def from_entry(cls, key: str, entry: Mapping[str, Any]) -> StageReport:
        """The report of one manifest entry (the global entry nests it under ``report``)."""
        return cls.from_json(entry.get("report", entry) if key == "global" else entry, key)


def stage_reports(stages: Mapping[str, Any]) -> list[StageReport]:
    """Every stage of a manifest's ``stages`` in run order (global first)."""

    def order(key: str) -> tuple[int, int]:
        if key == "global":
            return (0, 0)
        tail = key.rsplit("_", 1)[-1]
        return (1, int(tail) if tail.isdigit() else 0)

    out = []
    for key in sorted(stages, key=order):
        entry = stages[key]
        rep = entry.get("report", entry) if key == "global" else entry
        if isinstance(rep, Mapping):
            out.append(StageReport.from_json(rep, key))
    return out


# ------------------------------------------------------------------ checkpoints
class Checkpoints:
    """The manifest at ``<output>/checkpoints`` (Zarr group attributes)."""

    def __init__(self, output: str, storage_options: Mapping[str, Any] | None) -> None:
        self.output = output
        self.storage_options = storage_options

    def url(self, *parts: str) -> str:
        """URL of ``checkpoints/<parts>`` below the output."""
        return join_url(self.output, CHECKPOINTS, *parts)

    def _group(self, mode: str) -> Any:
        return zarr_group(
            self.output, self.storage_options, mode=mode, path=CHECKPOINTS, zarr_format=3
        )

    def read(self) -> dict[str, Any] | None:
        """The manifest, or ``None`` when there is none (a scene written by hand)."""
        try:
            group = self._group("r")
        except Exception as exc:
            logger.info("no checkpoint manifest in %s (%s)", redact_url(self.output), exc)
            return None
        manifest = group.attrs.asdict().get(MANIFEST_KEY)
        return dict(manifest) if isinstance(manifest, Mapping) else None

    def write(self, manifest: Mapping[str, Any]) -> None:
        """Replace the manifest."""
        group = self._group("a")
        group.attrs.put({MANIFEST_KEY: jsonable(manifest)})


@dataclass
class OutputClaim:
    """What a run found at its output, and the manifest it continues.

    Attributes
    ----------
    state:
        :func:`output_status` before the run.
    same_run:
        The output holds an earlier run with the same fingerprint: resume it.
    manifest:
        The manifest the run updates (fresh unless ``same_run``).

    """

    state: str
    same_run: bool
    manifest: dict[str, Any]


def claim_output(
    url: str,
    storage_options: Mapping[str, Any] | None,
    run_fingerprint: str,
    *,
    overwrite: bool,
) -> OutputClaim:
    """Take the output for a run: resume the same run, or start afresh.

    An output from another run (or other data) is replaced only with
    ``overwrite``; from here on the output reads as incomplete.

    Raises
    ------
    OutputExistsError
        The location holds something else and ``overwrite`` is False.

    """
    checkpoints = Checkpoints(url, storage_options)
    state = output_status(url, storage_options)
    manifest = checkpoints.read() if state in ("complete", "incomplete") else None
    same_run = (
        not overwrite and manifest is not None and manifest.get("fingerprint") == run_fingerprint
    )
    # a run that died between marking the output and writing its manifest left
    # an incomplete output with nothing in it to lose: any run may take it
    unclaimed = state == "incomplete" and not (manifest or {}).get("fingerprint")
    if state in ("complete", "incomplete", "foreign") and not same_run and not unclaimed:
        if not overwrite:
            what = "an ngff-dreg output" if state != "foreign" else "data"
            raise OutputExistsError(
                f"{url} already holds {what} from another run; pass overwrite=True to replace it"
            )
        mark_output(url, storage_options, wipe=True)
        manifest = None
    elif state == "absent":
        mark_output(url, storage_options, wipe=False)
    if manifest is None or not same_run:
        manifest = {"fingerprint": run_fingerprint, "stages": {}, "resampled": False}
        checkpoints.write(manifest)
    return OutputClaim(state, same_run, manifest)
