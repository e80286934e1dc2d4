"""The embedded demo: a real MRI volume, a known warp, and its error report.

The fixed/moving pair is derived from the MNI ICBM152 2009a T1 template
(197x233x189 voxels at 1 mm) that nilearn ships inside its wheel, so it works
offline (``pip install ngff-dreg[demo]``). The moving image is the template;
the fixed image is the template resampled through a known fixed→moving
transform ``T(x) = A(x + d(x))``: a small affine plus a smooth deformation of
up to a few voxels. A registration must recover ``T``.

Template copyright (C) 1993–2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University; see ``docs/DATA.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.errors import NgffDregError
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.synthetic import random_affine, smooth_displacement, textured_phantom, warp_to_fixed
from ngff_dreg.transforms import AffineTransform, DisplacementField, TransformChain, map_points

__all__ = [
    "DemoPair",
    "load_fluorescence_volume",
    "load_template",
    "load_truth",
    "make_demo",
    "point_errors",
]

logger = logging.getLogger(__name__)

TEMPLATE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


class DemoDataUnavailableError(NgffDregError, ImportError):
    """The demo's source volume is not installed (``pip install ngff-dreg[demo]``)."""


@dataclass
class DemoPair:
    """Where the demo images are, and the transform that relates them."""

    fixed: str
    moving: str
    truth: TransformChain
    fixed_geometry: ImageGeometry
    truth_path: str


def load_template(downsample: int = 1) -> tuple[npt.NDArray[np.float32], ImageGeometry]:
    """The MNI T1 template as float32 in [0, 1], on a 1 mm (× ``downsample``) grid.

    The template's LPS flips are dropped (identity direction, origin 0), since
    NGFF 0.4/0.5 cannot store a direction.
    """
    try:
        from importlib import resources

        path = resources.files("nilearn") / "datasets" / "data" / TEMPLATE
        if not path.is_file():
            raise FileNotFoundError(str(path))
    except (ImportError, FileNotFoundError) as exc:
        raise DemoDataUnavailableError(
            "the demo volume comes from the nilearn package: pip install 'ngff-dreg[demo]'"
        ) from exc
    from ngff_dreg.itk_bridge import read_image_array

    arr = read_image_array(str(path))
    if downsample > 1:
        from scipy import ndimage

        arr = ndimage.zoom(
            ndimage.gaussian_filter(arr, 0.5 * downsample), 1.0 / downsample, order=1
        )
    arr = arr / max(float(arr.max()), 1e-6)
    spacing = (float(downsample),) * 3
    return arr.astype(np.float32), ImageGeometry(
        arr.shape, spacing, (0.0, 0.0, 0.0), unit="millimeter"
    )


FLUORESCENCE_CHANNELS = ("nuclei", "myelin")


def load_fluorescence_volume(
    spacing_zyx: tuple[float, float, float] = (6.0, 2.0, 2.0), *, seed: int = 0
) -> tuple[npt.NDArray[np.uint16], ImageGeometry]:
    """A two-channel, anisotropic uint16 volume derived from real ones.

    No wheel ships a 3-D multi-channel fluorescence volume, so this one is
    derived from the two real MNI volumes nilearn ships: channel 0
    (``"nuclei"``) is the T1 template, channel 1 (``"myelin"``) the
    white-matter probability map. Both are resampled to ``spacing_zyx`` (mm;
    z coarser than y/x, as in lightsheet stacks) and rendered like camera
    counts: a dark offset, up to ~4000 photons, Poisson noise.

    Returns
    -------
    tuple
        ``(array (2, z, y, x) uint16, spatial geometry)``.

    """
    from importlib import resources

    from scipy import ndimage

    from ngff_dreg.itk_bridge import read_image_array

    t1, _ = load_template(1)
    wm_path = resources.files("nilearn") / "datasets" / "data" / TEMPLATE.replace("_t1_", "_wm_")
    if not wm_path.is_file():
        raise DemoDataUnavailableError(f"nilearn does not ship {wm_path}")
    wm = read_image_array(str(wm_path)).astype(np.float32)
    zoom = tuple(1.0 / s for s in spacing_zyx)
    rng = np.random.default_rng(seed)
    channels = []
    for arr in (t1, wm / max(float(wm.max()), 1e-6)):
        small = ndimage.zoom(ndimage.gaussian_filter(arr, [0.5 * s for s in spacing_zyx]), zoom,
                             order=1)
        counts = rng.poisson(np.clip(small, 0, None) * 4000.0) + 100
        channels.append(np.clip(counts, 0, 65535).astype(np.uint16))
    data = np.stack(channels)
    geometry = ImageGeometry(data.shape[1:], tuple(float(s) for s in spacing_zyx[::-1]),
                             (0.0, 0.0, 0.0), unit="millimeter")
    return data, geometry


def demo_truth(
    geometry: ImageGeometry,
    *,
    max_displacement_voxels: float = 5.0,
    seed: int = 0,
    degrees: float = 4.0,
) -> TransformChain:
    """The known fixed→moving transform: affine about the centre + smooth warp."""
    centre = geometry.index_to_physical((np.asarray(geometry.size) - 1) / 2.0)
    spacing = min(geometry.spacing)
    affine = random_affine(
        geometry.ndim,
        degrees=degrees,
        scale=0.03,
        shear=0.01,
        translation=3.0 * spacing,
        center=centre,
        seed=seed,
    )
    field = smooth_displacement(
        geometry,
        max_displacement_voxels * spacing,
        grid_spacing=tuple(2 * s for s in geometry.spacing),
        control_points=5,
        seed=seed + 1,
    )
    return TransformChain(affine, field)


def make_demo(
    out_dir: str | Path,
    *,
    downsample: int = 1,
    seed: int = 0,
    max_displacement_voxels: float = 5.0,
    synthetic: bool = False,
    ndim: int = 3,
    size: int | None = None,
    overwrite: bool = True,
    version: str = "0.5",
    chunks: int = 32,
    storage_options: Mapping[str, Any] | None = None,
) -> DemoPair:
    """Write the demo pair as OME-Zarr multiscale images under ``out_dir``.

    Parameters
    ----------
    out_dir:
        Folder (or URL) receiving ``fixed.ome.zarr``, ``moving.ome.zarr`` and
        ``truth.npz`` (the truth is written locally only).
    downsample:
        Integer factor applied to the 1 mm template (2 gives ~99x117x95).
    seed:
        Seed of the random affine and deformation.
    max_displacement_voxels:
        Peak deformation magnitude per axis, in voxels.
    synthetic:
        Use a synthetic textured phantom instead of the MRI template
        (no extra dependency; for quick tests).

    """
    from ngff_dreg.io.omezarr.image_writer import write_multiscale
    from ngff_dreg.io.storage.urls import join_url

    if synthetic:
        edge = size if size is not None else (96 if ndim == 3 else 256) // downsample
        shape = (int(edge),) * ndim
        moving = textured_phantom(
            shape, seed=seed + 7, blobs=60 if ndim == 3 else 120, texture=0.3
        )
        geometry = ImageGeometry(shape, (1.0,) * ndim, (0.0,) * ndim, unit="millimeter")
    else:
        moving, geometry = load_template(downsample)
    truth = demo_truth(geometry, max_displacement_voxels=max_displacement_voxels, seed=seed)
    fixed = warp_to_fixed(moving, geometry, geometry, truth)
    out = str(out_dir)
    if "://" not in out:
        Path(out).mkdir(parents=True, exist_ok=True)
    fixed_url, moving_url = join_url(out, "fixed.ome.zarr"), join_url(out, "moving.ome.zarr")
    for url, data in ((fixed_url, fixed), (moving_url, moving)):
        write_multiscale(
            url,
            data,
            geometry,
            version=version,
            n_levels=3,
            chunks=chunks if geometry.ndim == 3 else 2 * chunks,
            storage_options=storage_options,
            overwrite=overwrite,
            name="demo",
        )
    truth_path = str(Path(out) / "truth.npz") if "://" not in out else ""
    if truth_path:
        save_truth(truth_path, truth, geometry)
    logger.info("demo pair written to %s", out)
    return DemoPair(fixed_url, moving_url, truth, geometry, truth_path)


def save_truth(path: str | Path, truth: TransformChain, geometry: ImageGeometry) -> None:
    """Store a ground-truth chain (affine + in-memory field) as ``.npz``."""
    assert truth.field is not None and truth.field.data is not None
    fg = truth.field.geometry
    np.savez_compressed(
        path,
        affine=truth.affine.homogeneous,
        field=truth.field.data,
        field_shape=np.asarray(fg.shape),
        field_spacing=np.asarray(fg.spacing),
        field_origin=np.asarray(fg.origin),
        field_direction=fg.direction_matrix,
        shape=np.asarray(geometry.shape),
        spacing=np.asarray(geometry.spacing),
        origin=np.asarray(geometry.origin),
        direction=geometry.direction_matrix,
    )


def load_truth(path: str | Path) -> tuple[TransformChain, ImageGeometry]:
    """Read :func:`save_truth` output: the chain and the fixed geometry."""
    z = np.load(path)
    fg = ImageGeometry(
        tuple(z["field_shape"]),
        tuple(z["field_spacing"]),
        tuple(z["field_origin"]),
        z["field_direction"],
    )
    geom = ImageGeometry(tuple(z["shape"]), tuple(z["spacing"]), tuple(z["origin"]), z["direction"])
    chain = TransformChain(
        AffineTransform.from_homogeneous(z["affine"]), DisplacementField(fg, data=z["field"])
    )
    return chain, geom


def point_errors(
    estimate: Any,
    truth: Any,
    geometry: ImageGeometry,
    *,
    mask: npt.NDArray[np.bool_] | None = None,
    n_points: int = 20000,
    seed: int = 0,
) -> dict[str, float]:
    """Distances between ``estimate(x)`` and ``truth(x)`` at random fixed voxels.

    Points are drawn inside ``mask`` (NumPy order, e.g. the foreground) when
    given. Returns mean/median/p95/max in physical units and in voxels of
    ``geometry`` (divided by its smallest spacing).
    """
    rng = np.random.default_rng(seed)
    if mask is not None:
        cand = np.argwhere(mask)
        pick = cand[rng.choice(len(cand), size=min(n_points, len(cand)), replace=False)]
        idx = pick.astype(np.float64)
    else:
        idx = rng.uniform(0, 1, (n_points, geometry.ndim)) * (np.asarray(geometry.shape) - 1)
    pts = geometry.array_index_to_physical(idx)
    err = np.linalg.norm(map_points(estimate, pts) - map_points(truth, pts), axis=1)
    vox = err / min(geometry.spacing)
    return {
        "mean": float(err.mean()),
        "median": float(np.median(err)),
        "p95": float(np.percentile(err, 95)),
        "max": float(err.max()),
        "mean_vox": float(vox.mean()),
        "median_vox": float(np.median(vox)),
        "p95_vox": float(np.percentile(vox, 95)),
        "max_vox": float(vox.max()),
        "n_points": float(len(err)),
    }
