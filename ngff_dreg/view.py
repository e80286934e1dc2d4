"""``ngff-dreg view``: the fixed and the resampled moving image, overlaid in neuroglancer.

The output's viewer scene (``out.zarr/view``, see
:mod:`ngff_dreg.io.omezarr.view_writer`) is served over HTTP on 127.0.0.1, and
the neuroglancer client shipped by its PyPI package shows its two images as a
two-colour blend: the fixed image green, the resampled moving image magenta
(where they agree the overlay is grey/white; a misregistration shows green and
magenta fringes). With ``screenshot``, a headless Chromium opens the page and
neuroglancer renders it to a PNG once every chunk in view is loaded.

``neuroglancer`` is imported only here (``pip install ngff-dreg[view]``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ngff_dreg import config
from ngff_dreg.errors import InvalidInputDataError, NgffDregError
from ngff_dreg.io.omezarr.view_writer import LEGACY_RESAMPLED, VIEW_FIXED, VIEW_RESAMPLED
from ngff_dreg.io.storage.urls import is_remote, local_path

__all__ = ["ViewerSession", "find_browser", "open_viewer", "screenshot"]

logger = logging.getLogger(__name__)

GREEN = "emitRGB(vec3(0.0, normalized(), 0.0));"
MAGENTA = "emitRGB(vec3(normalized(), 0.0, normalized()));"


def _shader(colour: str, lo: float, hi: float) -> str:
    return (f"#uicontrol invlerp normalized(range=[{lo:.6g}, {hi:.6g}])\n"
            f"void main() {{ {colour} }}\n")


def find_browser() -> str | None:
    """A Chromium or Chrome executable (the ``view.chromium`` setting first), or ``None``."""
    for name in (config.chromium(), "chromium", "chromium-browser",
                 "google-chrome", "chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


def _range(url: str) -> tuple[float, float]:
    """Display range from the coarsest level of an image (1st and 99.5th percentiles)."""
    from ngff_dreg.io.omezarr.multiscale import open_multiscale

    image = open_multiscale(url)
    level = image.levels[-1]
    arr: Any = image.group[level.path]
    data = np.asarray(arr[...], dtype=np.float64)
    lo, hi = np.percentile(data, [1.0, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


_UNITS = {"nanometer": "nm", "micrometer": "um", "millimeter": "mm", "meter": "m",
          "centimeter": "cm"}


def _space(url: Path) -> tuple[list[str], list[str], list[float]]:
    """Spatial axis names (NumPy order), neuroglancer units and level-0 spacing."""
    from ngff_dreg.io.omezarr.multiscale import open_multiscale

    image = open_multiscale(str(url))
    g = image.levels[0].geometry
    names = [a.name for a in image.multiscale.axes if a.type == "space"]
    unit = _UNITS.get(g.unit or "", "")
    return names, [unit] * len(names), [float(v) for v in g.spacing[::-1]]


@dataclass
class ViewerSession:
    """A running viewer: ``url`` to open; :meth:`close` stops the servers."""

    url: str
    viewer: Any
    file_server: Any

    def close(self) -> None:
        """Stop the file server (the neuroglancer server stops with the process)."""
        self.file_server.stop()


def _images(out: Path) -> tuple[Path, Path]:
    fixed, moving = out / VIEW_FIXED, out / VIEW_RESAMPLED
    if not (fixed / "zarr.json").is_file() or not (moving / "zarr.json").is_file():
        legacy = out / LEGACY_RESAMPLED
        hint = (" (an output written before the viewer scene: rerun register with "
                "--resample)" if legacy.exists() else " (register with --resample)")
        raise InvalidInputDataError(f"{out}: no {VIEW_FIXED} and {VIEW_RESAMPLED}{hint}")
    return fixed, moving


def open_viewer(out: str, *, bind_address: str = "127.0.0.1") -> ViewerSession:
    """Serve ``out``'s viewer scene and open a neuroglancer viewer on it.

    Parameters
    ----------
    out:
        A local registration output written with ``--resample``.
    bind_address:
        Address of both servers (loopback by default: nothing is exposed).

    Raises
    ------
    InvalidInputDataError
        ``out`` is remote, or holds no viewer scene.

    """
    import neuroglancer
    import neuroglancer.static_file_server

    if is_remote(out):
        raise InvalidInputDataError(f"{out}: view serves a local output; copy it first")
    root = Path(local_path(out)).resolve()
    fixed, moving = _images(root)
    neuroglancer.set_server_bind_address(bind_address)
    files = neuroglancer.static_file_server.StaticFileServer(str(root), bind_address,
                                                              daemon=True)
    base = files.url
    lo, hi = _range(str(fixed))
    viewer = neuroglancer.Viewer()
    with viewer.txn() as s:
        for name, path, colour in (("fixed", fixed, GREEN), ("moving_resampled", moving,
                                                              MAGENTA)):
            rel = path.relative_to(root).as_posix()
            s.layers[name] = neuroglancer.ImageLayer(
                source=f"zarr3://{base}/{rel}/", shader=_shader(colour, lo, hi),
                blend="additive")
        s.layout = "xy"
        # x across, y down (z through the screen), without the axis lines and
        # bounding boxes, so only the two images are coloured
        names, units, scales = _space(fixed)
        s.dimensions = neuroglancer.CoordinateSpace(names=names, units=units, scales=scales)
        s.display_dimensions = [n for n in ("x", "y", "z") if n in names]
        s.show_axis_lines = False
        s.show_default_annotations = False
    logger.info("serving %s at %s", root, base)
    return ViewerSession(str(viewer), viewer, files)


@contextmanager
def _browser(url: str, size: tuple[int, int]) -> Iterator[subprocess.Popen[bytes]]:
    exe = find_browser()
    if exe is None:
        raise NgffDregError("no Chromium found for --screenshot: install it (Debian: "
                            "apt-get install chromium) or name it in the view.chromium "
                            "setting (see `ngff-dreg info --config`)")
    # Chromium's child processes can still write to the profile after the
    # browser exits (seen under load: "Directory not empty: 'Default'")
    with tempfile.TemporaryDirectory(prefix="ngff-dreg-chromium-",
                                     ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
             "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
             f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def screenshot(session: ViewerSession, path: str | os.PathLike[str], *,
               size: tuple[int, int] = (800, 600), timeout: float = 120.0) -> None:
    """Render the viewer in headless Chromium and write the PNG at ``path``.

    Neuroglancer takes the screenshot once every visible chunk is loaded.

    Raises
    ------
    NgffDregError
        No Chromium, or no screenshot within ``timeout`` seconds.

    """
    import threading

    result: list[Any] = []

    def take() -> None:
        result.append(session.viewer.screenshot(size=list(size)))

    with _browser(session.url, size):
        worker = threading.Thread(target=take, daemon=True)
        worker.start()
        worker.join(timeout)
    if not result:
        raise NgffDregError(f"no screenshot from headless Chromium within {timeout:.0f} s")
    Path(path).write_bytes(result[0].screenshot.image)
