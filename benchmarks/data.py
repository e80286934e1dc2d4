"""Benchmark image pairs with a known fixed→moving transform, from a seed.

* ``mni``: the MNI T1 template pair of :mod:`ngff_dreg.demo` (197×233×189 at 1 mm,
  ``downsample`` shrinks it).
* ``big``: a procedural textured volume of any edge (e.g. 512³ and beyond),
  written chunk by chunk with dask: the moving image is an analytic function
  ``f(x)`` (band-limited cosines under a soft ellipsoid), and the fixed image
  is evaluated exactly as ``f(T(x))`` block by block, so neither image is ever
  whole in memory and no interpolation error enters the truth.
* ``mniup``: the MNI T1 template upsampled to an ``edge``³ cube (512³ by
  default; isotropic spacing ``233 mm / edge``, the template centred, zero
  outside). Real anatomy at a large size: the moving image is the template's
  cubic B-spline interpolant ``f(x)`` and the fixed image is ``f(T(x))``, both
  evaluated chunk by chunk with dask from the in-memory 1 mm spline
  coefficients (35 MB), so neither 512³ image is ever whole in memory. The
  finest detail is the template's 1 mm, i.e. ~2.2 voxels at 512³: the
  upsampled image is smoother than a native 0.45 mm scan would be.
* ``2d``: the synthetic 2D pair of :mod:`ngff_dreg.demo`.
* ``stereo``: scikit-image's Middlebury motorcycle stereo pair with its
  ground-truth disparity (left = fixed, right = moving; disparity ``d`` maps
  left column ``x`` to right column ``x - d``; pixels without a finite positive
  disparity are excluded from the scores). The three files
  (``motorcycle_left.png``, ``motorcycle_right.png``, ``motorcycle_disp.npz``)
  ship inside the scikit-image wheel (``skimage/data/``), so the pair works
  offline; :func:`stereo_available` checks that without downloading.

``big`` and ``mniup`` record the wall time and the peak RSS of their
generation in ``<root>/<name><edge>/done-<edge>-<seed>`` (JSON).

Every pair is a :class:`BenchPair`: OME-Zarr URLs, the fixed geometry, a
``truth_points(pts)`` callable mapping fixed physical points to moving ones,
and a foreground sampler returning evaluation points.

Run ``python benchmarks/data.py --help`` to write a pair by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Benchmark the checkout these scripts live in, whatever is installed.
_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from ngff_dreg.geometry import ImageGeometry  # noqa: E402
from ngff_dreg.synthetic import random_affine, smooth_displacement  # noqa: E402
from ngff_dreg.transforms import TransformChain  # noqa: E402


@dataclass
class BenchPair:
    """One benchmark pair: OME-Zarr URLs, fixed geometry and the known truth."""

    name: str
    fixed: str
    moving: str
    geometry: ImageGeometry
    truth_points: Callable[[np.ndarray], np.ndarray]
    #: NumPy-order fixed voxel indices where errors are scored, (N, ndim)
    eval_index: np.ndarray
    description: str
    #: cost of writing the pair (chunked pairs only): seconds, peak RSS, chunks
    generation: dict | None = None


def _sample_mask(mask: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` random NumPy-order indices where ``mask`` is true."""
    rng = np.random.default_rng(seed)
    cand = np.argwhere(mask)
    pick = rng.choice(len(cand), size=min(n, len(cand)), replace=False)
    return cand[pick].astype(np.float64)


def _read_level(url: str, level: int = 0) -> np.ndarray:
    """A whole level as float32 (small images only)."""
    from ngff_dreg.geometry import Box
    from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor

    ctor = OMEZarrReaderConstructor(url, level=level)
    return np.asarray(ctor().read_box(Box.full(ctor.geometry.shape)), dtype=np.float32)


# ----------------------------------------------------------------------------- MNI
def mni_pair(out: Path, *, downsample: int = 1, seed: int = 0, n_eval: int = 20000) -> BenchPair:
    """The demo's MNI pair (written whole: it is small)."""
    from ngff_dreg.demo import make_demo

    pair = make_demo(out, downsample=downsample, seed=seed)
    fixed = _read_level(pair.fixed)
    idx = _sample_mask(fixed > 0.1 * float(fixed.max()), n_eval, seed)
    return BenchPair(
        f"mni{'' if downsample == 1 else f'/{downsample}'}",
        pair.fixed,
        pair.moving,
        pair.fixed_geometry,
        pair.truth.transform_points,
        idx,
        f"MNI152 T1 template {'×'.join(map(str, pair.fixed_geometry.shape))} "
        f"({downsample} mm), affine + smooth warp ≤5 vox",
    )


def synthetic_2d_pair(out: Path, *, size: int = 256, seed: int = 0, n_eval: int = 20000
                      ) -> BenchPair:
    """The demo's synthetic 2D phantom pair."""
    from ngff_dreg.demo import make_demo

    pair = make_demo(out, synthetic=True, ndim=2, size=size, seed=seed,
                     max_displacement_voxels=5.0)
    fixed = _read_level(pair.fixed)
    idx = _sample_mask(fixed > 0.05, n_eval, seed)
    return BenchPair("2d", pair.fixed, pair.moving, pair.fixed_geometry,
                     pair.truth.transform_points, idx,
                     f"synthetic 2D phantom {size}², affine + warp ≤5 px")


# ----------------------------------------------------------------------------- big
class ProceduralTexture:
    """``f(p)``: band-limited cosines under a soft ellipsoid, for physical points ``p``.

    The texture has the same statistics everywhere (wavelengths 6–30 voxels of
    the base spacing), so a bigger image is like a tiled phantom; the envelope
    spans the image extent.
    """

    def __init__(self, extent: np.ndarray, spacing: float, seed: int, n_waves: int = 24) -> None:
        rng = np.random.default_rng(seed)
        ndim = len(extent)
        self.extent = np.asarray(extent, dtype=np.float64)
        lengths = rng.uniform(6.0, 30.0, n_waves) * spacing
        dirs = rng.standard_normal((n_waves, ndim))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        self.k = dirs * (2 * math.pi / lengths)[:, None]
        self.phase = rng.uniform(0, 2 * math.pi, n_waves)
        self.amp = rng.uniform(0.5, 1.0, n_waves) / math.sqrt(n_waves)

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        c = self.extent / 2
        r2 = (((pts - c) / (0.45 * self.extent)) ** 2).sum(axis=1)
        env = 1.0 / (1.0 + np.exp((r2 - 1.0) * 12.0))
        val = np.zeros(pts.shape[0])
        for k, ph, a in zip(self.k, self.phase, self.amp):
            val += a * np.cos(pts @ k + ph)
        return (env * (0.5 + 0.35 * np.tanh(1.5 * val))).astype(np.float32)


def _block_values(x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray],
                  geometry: ImageGeometry, transform: Callable | None,
                  block_info: dict | None = None) -> np.ndarray:
    """``fn`` (after ``transform``) at the physical points of one dask block."""
    assert block_info is not None
    loc = block_info[None]["array-location"]
    axes = [np.arange(a, b, dtype=np.float64) for a, b in loc]
    shape = tuple(len(a) for a in axes)
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
    pts = geometry.array_index_to_physical(idx)
    if transform is not None:
        pts = transform(pts)
    return fn(pts).reshape(shape)


def big_truth(geometry: ImageGeometry, seed: int, max_disp_vox: float = 5.0) -> TransformChain:
    """Affine (±4°, 3 % scale) about the centre + a smooth field on a ~33-node grid."""
    centre = geometry.index_to_physical((np.asarray(geometry.size) - 1) / 2.0)
    sp = min(geometry.spacing)
    affine = random_affine(geometry.ndim, degrees=4.0, scale=0.03, shear=0.01,
                           translation=3.0 * sp, center=centre, seed=seed)
    grid = tuple(max(2.0, n / 32) * s for n, s in zip(geometry.size, geometry.spacing))
    field = smooth_displacement(geometry, max_disp_vox * sp, grid_spacing=grid,
                                control_points=5, seed=seed + 1)
    return TransformChain(affine, field)


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _write_chunked_pair(out: Path, stamp: Path, geometry: ImageGeometry,
                        fn: Callable[[np.ndarray], np.ndarray], truth: TransformChain,
                        chunks: int, overwrite: bool) -> dict:
    """Write ``moving = fn(x)`` and ``fixed = fn(T(x))`` chunk by chunk; record cost.

    Each dask task evaluates one ``chunks``³ block from its physical points, so
    memory is bounded by (threads × a few blocks) whatever the image size;
    ``write_multiscale`` stores level 0 chunk by chunk and builds each coarser
    level from the stored one. Returns (and writes to ``stamp`` as JSON) the
    wall time, peak RSS before and after, and the chunk count.
    """
    import dask.array as da

    from ngff_dreg.io.omezarr.image_writer import write_multiscale

    if not overwrite and stamp.exists():
        try:
            return json.loads(stamp.read_text())
        except ValueError:
            return {}
    out.mkdir(parents=True, exist_ok=True)
    rss0 = _peak_rss_mb()
    t0 = time.perf_counter()
    template = da.zeros(geometry.shape, chunks=chunks, dtype=np.float32)
    moving = template.map_blocks(_block_values, fn=fn, geometry=geometry,
                                 transform=None, dtype=np.float32)
    fixed = template.map_blocks(_block_values, fn=fn, geometry=geometry,
                                transform=truth.transform_points, dtype=np.float32)
    for url, data in ((out / "fixed.ome.zarr", fixed), (out / "moving.ome.zarr", moving)):
        write_multiscale(str(url), data, geometry, chunks=chunks, overwrite=True, name="bench")
    info = {"shape": list(geometry.shape), "chunks": chunks,
            "n_chunks": int(np.prod(template.numblocks)),
            "seconds": time.perf_counter() - t0,
            "peak_rss_mb_before": rss0, "peak_rss_mb": _peak_rss_mb(),
            "image_mb_each": float(np.prod(geometry.shape)) * 4 / 2**20}
    stamp.write_text(json.dumps(info))
    return info


def _envelope_points(fn: Callable[[np.ndarray], np.ndarray], geometry: ImageGeometry,
                     n_eval: int, seed: int, threshold: float) -> np.ndarray:
    """Up to ``n_eval`` random NumPy-order indices where ``fn`` exceeds ``threshold``."""
    rng = np.random.default_rng(seed)
    shape = np.asarray(geometry.shape)
    idx = rng.uniform(0, 1, (n_eval * 8, len(shape))) * (shape - 1)
    keep = fn(geometry.array_index_to_physical(idx)) > threshold
    return idx[keep][:n_eval]


def big_pair(out: Path, *, edge: int = 512, seed: int = 0, chunks: int = 64,
             n_eval: int = 20000, overwrite: bool = False) -> BenchPair:
    """A procedural ``edge``³ pair written chunk by chunk (never whole in memory)."""
    shape = (edge,) * 3
    geometry = ImageGeometry(shape, (1.0,) * 3, (0.0,) * 3, unit="micrometer")
    tex = ProceduralTexture(np.asarray(shape[::-1], dtype=np.float64), 1.0, seed + 7)
    truth = big_truth(geometry, seed)
    gen = _write_chunked_pair(out, out / f"done-{edge}-{seed}", geometry, tex, truth,
                              chunks, overwrite)
    idx = _envelope_points(tex, geometry, n_eval, seed, 0.2)
    pair = BenchPair(f"big{edge}", str(out / "fixed.ome.zarr"), str(out / "moving.ome.zarr"),
                     geometry, truth.transform_points, idx,
                     f"procedural texture {edge}³, affine + warp ≤5 vox (analytic truth)")
    pair.generation = gen
    return pair


class UpsampledTemplate:
    """``f(p)``: the MNI template's cubic B-spline interpolant, centred in a cube.

    ``edge`` voxels a side at spacing ``max(template extent) / edge`` mm; the
    template (1 mm voxels) sits in the middle; outside it ``f`` is 0. Only the
    spline coefficients of the 1 mm template are held in memory.
    """

    def __init__(self, edge: int) -> None:
        from scipy import ndimage

        from ngff_dreg.demo import load_template

        arr, tgeom = load_template(1)
        self.coef = ndimage.spline_filter(arr.astype(np.float64), order=3, mode="mirror")
        self.template_shape = np.asarray(arr.shape)  # z, y, x
        self.spacing = float(max(arr.shape)) / edge
        extent = edge * self.spacing
        # physical (x, y, z) of template voxel (0, 0, 0): centred in the cube
        self.offset = (extent - self.template_shape[::-1].astype(np.float64)) / 2.0
        self.geometry = ImageGeometry((edge,) * 3, (self.spacing,) * 3, (0.0,) * 3,
                                      unit=tgeom.unit)

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        idx = (pts - self.offset)[:, ::-1]  # template NumPy-order index (1 mm voxels)
        inside = np.all((idx >= -0.5) & (idx <= self.template_shape - 0.5), axis=1)
        val = ndimage.map_coordinates(self.coef, idx.T, order=3, mode="mirror",
                                      prefilter=False)
        return np.where(inside, np.clip(val, 0.0, None), 0.0).astype(np.float32)


def mniup_pair(out: Path, *, edge: int = 512, seed: int = 0, chunks: int = 64,
               n_eval: int = 20000, overwrite: bool = False) -> BenchPair:
    """The MNI template upsampled to ``edge``³, written chunk by chunk (see module doc)."""
    fn = UpsampledTemplate(edge)
    geometry = fn.geometry
    truth = big_truth(geometry, seed)
    gen = _write_chunked_pair(out, out / f"done-{edge}-{seed}", geometry, fn, truth,
                              chunks, overwrite)
    idx = _envelope_points(fn, geometry, n_eval, seed, 0.1)
    pair = BenchPair(f"mniup{edge}", str(out / "fixed.ome.zarr"), str(out / "moving.ome.zarr"),
                     geometry, truth.transform_points, idx,
                     f"MNI T1 template upsampled to {edge}³ ({fn.spacing:.3f} mm), "
                     "affine + warp ≤5 vox (analytic truth)")
    pair.generation = gen
    return pair


# -------------------------------------------------------------------------- stereo
STEREO_FILES = ("motorcycle_left.png", "motorcycle_right.png", "motorcycle_disp.npz")


def stereo_available() -> str | None:
    """``None`` if the stereo files are on disk (no download), else the reason.

    scikit-image ships them inside its wheel (``skimage/data/``); only if they
    were missing would ``skimage.data.stereo_motorcycle()`` try to fetch them
    with pooch, which needs the network.
    """
    try:
        import skimage
    except ImportError:
        return "scikit-image is not installed (pip install scikit-image)"
    data_dir = Path(skimage.__file__).parent / "data"
    missing = [f for f in STEREO_FILES if not (data_dir / f).is_file()]
    if missing:
        return f"{', '.join(missing)} not in {data_dir} (would need a download)"
    return None


def stereo_pair(out: Path, *, n_eval: int = 20000, seed: int = 0) -> BenchPair:
    """scikit-image's motorcycle stereo pair; truth = horizontal disparity.

    Middlebury convention (checked against the images: warping the right image
    by ``x - d`` reproduces the left one): left pixel ``(y, x)`` shows the same
    point as right pixel ``(y, x - d)``. Fixed = left, moving = right, so the
    fixed→moving map is ``(y, x) -> (y, x - d(y, x))`` in pixel units.
    """
    import skimage.data
    from skimage.color import rgb2gray

    from ngff_dreg.io.omezarr.image_writer import write_multiscale

    reason = stereo_available()
    if reason:
        raise FileNotFoundError(f"stereo pair unavailable offline: {reason}")
    left, right, disp = skimage.data.stereo_motorcycle()
    left = rgb2gray(left).astype(np.float32)
    right = rgb2gray(right).astype(np.float32)
    disp = np.asarray(disp, dtype=np.float64)
    geometry = ImageGeometry(left.shape, (1.0, 1.0), (0.0, 0.0), unit=None)  # pixels
    out.mkdir(parents=True, exist_ok=True)
    fixed_url, moving_url = str(out / "left.ome.zarr"), str(out / "right.ome.zarr")
    for url, data in ((fixed_url, left), (moving_url, right)):
        write_multiscale(url, data, geometry, chunks=256, overwrite=True, name="stereo")
    valid = np.isfinite(disp) & (disp > 0)

    def truth(pts: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        idx = geometry.physical_to_index(pts)[:, ::-1]
        d = ndimage.map_coordinates(np.where(valid, disp, 0.0), idx.T, order=0, mode="nearest")
        out_pts = np.array(pts, dtype=np.float64, copy=True)
        out_pts[:, 0] -= d  # ITK order: x first
        return out_pts

    idx = _sample_mask(valid, n_eval, seed)
    return BenchPair("stereo", fixed_url, moving_url, geometry, truth, idx,
                     f"Middlebury motorcycle stereo {left.shape[1]}×{left.shape[0]}, "
                     "disparity as horizontal displacement")


def check_stereo_sign() -> dict[str, float]:
    """NCC of left vs right warped by ``x - d`` and by ``x + d`` (valid pixels)."""
    import skimage.data
    from scipy import ndimage
    from skimage.color import rgb2gray

    left, right, disp = skimage.data.stereo_motorcycle()
    left, right = rgb2gray(left), rgb2gray(right)
    valid = np.isfinite(disp) & (disp > 0)
    yy, xx = np.nonzero(valid)
    out = {}
    for sign in (-1, 1):
        w = ndimage.map_coordinates(right, [yy, xx + sign * disp[valid]], order=1)
        a, b = left[valid] - left[valid].mean(), w - w.mean()
        out[f"x{'+' if sign > 0 else '-'}d"] = float((a * b).sum() / np.sqrt((a * a).sum()
                                                                           * (b * b).sum()))
    return out


PAIRS = ("mni", "big", "mniup", "2d", "stereo")


def make_pair(name: str, root: Path, *, quick: bool = False, edge: int | None = None,
              seed: int = 0) -> BenchPair:
    """Write (or reuse) pair ``name`` under ``root``; ``edge`` sizes big/mniup."""
    if name == "mni":
        return mni_pair(root / "mni", downsample=2 if quick else 1, seed=seed)
    if name == "big":
        e = edge or (64 if quick else 512)
        return big_pair(root / f"big{e}", edge=e, seed=seed)
    if name == "mniup":
        e = edge or (128 if quick else 512)
        return mniup_pair(root / f"mniup{e}", edge=e, seed=seed)
    if name == "2d":
        return synthetic_2d_pair(root / "2d", size=128 if quick else 512, seed=seed)
    if name == "stereo":
        return stereo_pair(root / "stereo", seed=seed)
    raise ValueError(f"unknown pair {name!r}; choose from {PAIRS}")


def main() -> None:
    """Write one pair; for chunked pairs print the generation time and peak RSS."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pair", choices=PAIRS)
    ap.add_argument("--root", type=Path, default=Path("/tmp/ngff-dreg-bench"))
    ap.add_argument("--edge", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overwrite", action="store_true",
                    help="rewrite a chunked pair even if its stamp exists (to re-measure)")
    args = ap.parse_args()
    if args.pair == "stereo":
        reason = stereo_available()
        if reason:
            raise SystemExit(f"stereo pair unavailable: {reason}")
        print("stereo disparity sign check (NCC):", check_stereo_sign())
    if args.overwrite and args.pair in ("big", "mniup"):
        e = args.edge or (64 if args.pair == "big" and args.quick else 128 if args.quick
                          else 512)
        fn = big_pair if args.pair == "big" else mniup_pair
        p = fn(args.root / f"{args.pair}{e}", edge=e, seed=args.seed, overwrite=True)
    else:
        p = make_pair(args.pair, args.root, quick=args.quick, edge=args.edge, seed=args.seed)
    print(p.name, p.fixed, p.moving, p.geometry.shape, p.description)
    if p.generation:
        print("generation:", json.dumps(p.generation))


if __name__ == "__main__":
    main()
