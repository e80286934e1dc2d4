"""Channel and time-point selection: ``omero`` channel metadata and index/label look-up (no I/O).

NGFF keeps channel labels, colours and display windows in the transitional
``omero`` block (``attributes.omero`` in 0.4, ``attributes.ome.omero`` in 0.5
and 0.6). A selection is an index (negative counts from the end) or, for
channels, a label from that block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ngff_dreg.errors import SelectionNotFoundError

__all__ = ["Selection", "channel_labels", "omero_of", "resolve_selection", "subset_omero"]

Selection = int | str


def omero_of(attrs: Any) -> dict[str, Any] | None:
    """The ``omero`` block of a group's attributes (any NGFF version), or ``None``."""
    if not isinstance(attrs, Mapping):
        return None
    ome = attrs.get("ome")
    block = ome.get("omero") if isinstance(ome, Mapping) else None
    if block is None:
        block = attrs.get("omero")
    return dict(block) if isinstance(block, Mapping) else None


def channel_labels(omero: Mapping[str, Any] | None) -> tuple[str | None, ...]:
    """The ``label`` of each ``omero.channels`` entry (``None`` where missing)."""
    if not omero:
        return ()
    channels = omero.get("channels")
    if not isinstance(channels, list):
        return ()
    out: list[str | None] = []
    for ch in channels:
        label = ch.get("label") if isinstance(ch, Mapping) else None
        out.append(str(label) if label is not None else None)
    return tuple(out)


def _listing(size: int, labels: Sequence[str | None]) -> str:
    if labels and any(lbl is not None for lbl in labels):
        named = ", ".join(f"{i}={lbl!r}" for i, lbl in enumerate(labels) if lbl is not None)
        return f"{size} entries, labels {named}"
    return f"{size} entries, indices 0..{size - 1}" if size else "no entries"


def resolve_selection(
    selection: Selection,
    *,
    size: int,
    labels: Sequence[str | None] = (),
    what: str = "channel",
    image: str = "<image>",
) -> int:
    """The index of a channel or time point given by index or by label.

    Parameters
    ----------
    selection:
        An index (``-1`` is the last), a string holding one, or a label.
    size:
        Length of the axis.
    labels:
        Labels of the entries (``omero`` channel labels for channels).
    what:
        ``"channel"`` or ``"time point"``, for the message.
    image:
        The image's (redacted) URL, for the message.

    Raises
    ------
    SelectionNotFoundError
        No entry matches; the message names the image and lists the labels.

    """
    if isinstance(selection, bool):
        raise SelectionNotFoundError(f"{image}: invalid {what} selection {selection!r}")
    if isinstance(selection, str):
        text = selection.strip()
        matches = [i for i, lbl in enumerate(labels) if lbl == text]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise SelectionNotFoundError(
                f"{image}: {what} label {text!r} is given to entries {matches}; select by index"
            )
        if text.lstrip("-").isdigit():
            return resolve_selection(int(text), size=size, labels=labels, what=what, image=image)
        raise SelectionNotFoundError(
            f"{image}: no {what} labelled {text!r} ({_listing(size, labels)})"
        )
    idx = int(selection)
    if -size <= idx < size:
        return idx % size
    raise SelectionNotFoundError(
        f"{image}: {what} index {idx} out of range ({_listing(size, labels)})"
    )


def subset_omero(omero: Mapping[str, Any] | None, indices: Sequence[int]) -> dict[str, Any] | None:
    """The ``omero`` block keeping only the channels ``indices``, in that order."""
    if not omero:
        return None
    out = dict(omero)
    channels = omero.get("channels")
    if isinstance(channels, list):
        out["channels"] = [channels[i] for i in indices if i < len(channels)]
    return out
