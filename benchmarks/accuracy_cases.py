"""Accuracy-suite cases: real images, a known fixed→moving truth, written as OME-Zarr.

Every case is a fixed/moving pair made from a *real* image that ships inside a
PyPI wheel (nothing is downloaded at run time; see ``docs/DATA.md``):

* ``mni``: the MNI ICBM152 2009a T1 template, 1 mm (nilearn wheel);
* ``epi``: volume 0 of nibabel's ``tests/data/example4d.nii.gz``, a real
  128×96×24 echo-planar (fMRI) volume at 2×2×2.2 mm (nibabel wheel);
* ``mni2d``: axial slice 90 of the MNI T1 (1 mm);
* ``ihc``: scikit-image's immunohistochemistry micrograph (colonic glands,
  512×512), as grey levels with the tissue bright (scikit-image wheel).

The moving image is the real image (on its own grid, possibly cropped or
averaged to thicker slices); the fixed image is ``fixed(x) = moving(T(x))``
with the known fixed→moving map ``T(x) = A(x + u(x))``:

* ``u`` is a cubic B-spline displacement whose coefficients lie on a regular
  control grid (spacing in physical units, e.g. 20 mm) that covers the fixed
  domain with two nodes to spare, so ``u`` is evaluated *exactly* (it is the
  spline itself, not an interpolation of a sampled field); its coefficients
  are scaled so that ``max |u|`` over the fixed grid is the case's amplitude;
* ``A`` is a rotation about a seeded random axis (3D) through the fixed
  domain's centre, an isotropic scale and a translation.

The source is interpolated with cubic B-splines (``scipy.ndimage`` spline
coefficients), so the truth is not smeared by linear interpolation. Where the
fixed grid is coarser than the source along an axis (anisotropic or larger
voxels), each fixed voxel is the mean of ``k`` sub-samples along that axis
(``k = ceil(fixed spacing / source spacing)``): a boxcar slice profile, i.e.
proper anti-aliasing, as a thick optical or MR slice integrates the object.
Appearance changes are applied *after* warping (fixed only, except noise,
which both acquisitions get): a smooth multiplicative bias field, a
non-linear monotone intensity remap, Gaussian noise; then storage as float32
or uint16 (``rint(v × 4095)``, a 12-bit range).

Scoring data written per case (deterministic from the case's seed):
``eval_index.npy`` (20 000 random fixed foreground voxels, NumPy order, whose
truth image lies inside the moving image), ``jac_mask.npy`` (foreground of
the Jacobian lattice: every ``jac_stride``-th fixed voxel) and ``truth.npz``.
``meta.json`` is written last, with a hash of the case definition; a case is
regenerated only when it is missing or its definition changed.

Issue #20 added cases that break two assumptions of the first ones (opt-in
``CaseSpec`` fields; the earlier cases' data and digests are unchanged):

* **contrast** (``contrast``): two contrasts of one source, both made on the
  source grid; the fixed image is contrast A warped through the truth, the
  moving image contrast B unwarped (``CONTRASTS``): T1 against T2-, FLAIR- or
  DIR-like images synthesised from nilearn's grey/white-matter maps of the
  same template, hematoxylin against DAB of scikit-image's IHC slide (colour
  deconvolution), the fundus photograph's red against green channel, and a
  non-monotone remap; ``moving_bias`` puts a smooth bias on contrast B;
* **illumination** (``illum``, ``stripes``, ``z_blur``): each acquisition lit
  from its own side in its own frame (fixed ``exp(-a s)``, moving
  ``exp(-a (1 - s))``), random streaks along the illumination direction, and a
  Gaussian axial point-spread function before z sampling;
* **diffeomorphic warps** (``svf_scale``, ``svf_amp``, ``svf_spacing``): a
  random stationary velocity field exponentiated by scaling and squaring,
  stored on a fine grid and *defined* to be the cubic B-spline interpolant
  of that grid, so ``CaseTruth`` evaluates it exactly, as for the B-spline
  warps.

``make_case(name, root, reduced=True)`` writes the 2 mm (2D: 2 px)
downsampled variant of a case (the same physical deformation; sources
anti-aliased before decimation) for a fast pytest subset; ``REDUCED_CASES``
names the cases meant for it.

Needs: numpy, scipy, itk (MNI reading), nilearn, nibabel, scikit-image,
ngff-zarr (the ``mni-ngffzarr`` case), zarr, dask.

Run ``python benchmarks/accuracy_cases.py --list`` or ``--make NAME`` by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

_HERE = Path(__file__).resolve().parent
for _p in (_HERE.parent, _HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from jacobian import det_jacobian_lattice  # noqa: E402

from ngff_dreg.geometry import ImageGeometry  # noqa: E402

FloatArray = npt.NDArray[np.float64]

#: where the suite caches its cases (and the references' results)
DEFAULT_ROOT = Path("/work/suite-data")
#: evaluation points per case
N_EVAL = 20000
#: uint16 storage: v in [0, 1] becomes rint(v × U16_SCALE) (a 12-bit range)
U16_SCALE = 4095.0
#: bumped when the generator changes in a way that alters the written data
GENERATOR_VERSION = 1


# ------------------------------------------------------------------- definitions
@dataclass(frozen=True)
class CaseSpec:
    """One case: source image, known deformation, appearance and geometry.

    Lengths are physical (the source's unit: mm, or µm for ``ihc``) unless
    named ``*_vox`` (voxels of the source's finest spacing).
    """

    name: str
    split: str  # "tuning" | "validation" | "selfcheck"
    image: str  # "mni" | "epi" | "mni2d" | "ihc" | "cell" | "retina" | "moon"
    tests: str  # what the case tests, one line
    seed: int
    rotation_deg: float = 0.0
    translation_vox: float = 0.0
    #: explicit translation vector (physical, ITK order); wins over translation_vox
    translation: tuple[float, ...] | None = None
    scale: float = 0.0  # isotropic: the affine scales by (1 + scale)
    bspline_grid: float | None = None  # control-point spacing, physical
    bspline_amp_vox: float = 0.0  # max |u| in source voxels
    bspline_amp: float | None = None  # max |u| physical; wins over bspline_amp_vox
    noise: float = 0.0  # Gaussian sigma / mean foreground intensity (both images)
    bias: float = 0.0  # multiplicative bias field exp(b), |b| <= log(1 + bias)
    remap: str | None = None  # "gamma" (v^0.6) or "log" (log1p(6v)/log 7)
    dtype: str = "float32"  # storage: "float32" | "uint16"
    #: fixed grid spacing (ITK order) if it differs from the source's
    fixed_spacing: tuple[float, ...] | None = None
    fixed_origin_shift: tuple[float, ...] | None = None  # physical, ITK order
    #: moving averaged to this spacing (ITK order; integer multiples of the source's)
    moving_spacing: tuple[float, ...] | None = None
    #: keep this fraction of the moving image along ``crop_axis`` (NumPy axis)
    moving_crop: float = 1.0
    crop_axis: int = 1
    writer: str = "ngff-dreg"  # or "ngff-zarr" (c, z, y, x)
    #: write_multiscale downsample_axes (None: all)
    downsample_axes: tuple[str, ...] | None = None
    # ---- opt-in (issue #20): at their defaults these leave a case's data and digest as
    # they were before the fields existed (see ``digest``)
    #: a second contrast of the same source (see ``CONTRASTS``): the fixed image is
    #: contrast A warped, the moving image contrast B; None: one contrast for both
    contrast: str | None = None
    #: smooth multiplicative bias of contrast B on the source grid (as ``bias``)
    moving_bias: float = 0.0
    #: diffeomorphic warp instead of the B-spline: Gaussian sigma (physical) of the
    #: random stationary velocity field, exponentiated by scaling and squaring
    svf_scale: float | None = None
    svf_amp: float = 0.0  # max |u| over the fixed domain, physical
    svf_spacing: float | None = None  # grid of the stored displacement, physical
    #: opposite-side illumination: fixed × exp(-illum · s), moving × exp(-illum · (1 - s)),
    #: ``s`` the position along x across each image's own extent (0 at the low-x edge)
    illum: float = 0.0
    #: multiplicative streaks along x (the illumination direction), random per image:
    #: exp(stripes · n(y, z)), ``n`` narrow-band noise with unit standard deviation
    stripes: float = 0.0
    #: axial point-spread function: Gaussian sigma (physical) along z, convolved with
    #: the slice's boxcar, applied in each image's own frame before z sampling
    z_blur: float = 0.0

    @property
    def ndim(self) -> int:
        """Spatial dimension of the case."""
        return 2 if self.image in ("mni2d", "ihc", "cell", "retina", "moon") else 3

    def digest(self, reduced: bool) -> str:
        """Hash of the definition (and generator version): changes force regeneration.

        The opt-in fields are left out of the hash while they hold their defaults,
        so the cases defined before they existed keep their digests (and caches).
        """
        d = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.name in _OPT_IN and d[f.name] == f.default:
                del d[f.name]
        text = json.dumps([d, reduced, GENERATOR_VERSION, N_EVAL], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


#: CaseSpec fields added after the first cases were fixed (hashed only when set)
_OPT_IN = frozenset({"contrast", "moving_bias", "svf_scale", "svf_amp", "svf_spacing",
                     "illum", "stripes", "z_blur"})


CASES: tuple[CaseSpec, ...] = (
    # ---------------------------------------------------------------- tuning (12)
    CaseSpec("mni-headline", "tuning", "mni",
             "issue #11 headline: MNI T1 1 mm, 3° rotation, 4 mm translation, "
             "B-spline on a 20 mm grid, max 4.8 mm", seed=11, rotation_deg=3.0,
             translation=(2.4, -2.4, 2.2), bspline_grid=20.0, bspline_amp=4.8),
    CaseSpec("mni-fine10", "tuning", "mni",
             "fine anatomy-scale warp: 10 mm grid, 2.5 vox; 2° rotation; 3 % noise",
             seed=12, rotation_deg=2.0, translation_vox=3.0, bspline_grid=10.0,
             bspline_amp_vox=2.5, noise=0.03),
    CaseSpec("mni-bias-remap", "tuning", "mni",
             "appearance: ±25 % bias field and gamma-0.6 intensity remap; 20 mm grid, "
             "4 vox; 5° rotation, -4 % scale", seed=13, rotation_deg=5.0,
             translation_vox=5.0, scale=-0.04, bspline_grid=20.0, bspline_amp_vox=4.0,
             bias=0.25, remap="gamma"),
    CaseSpec("mni-u16", "tuning", "mni",
             "uint16 storage (12-bit range) of the pair that mni-f32 stores as float32",
             seed=14, rotation_deg=4.0, translation_vox=6.0, bspline_grid=20.0,
             bspline_amp_vox=3.0, noise=0.02, dtype="uint16"),
    CaseSpec("mni-f32", "tuning", "mni",
             "float32 storage of the mni-u16 pair (intensity invariance)",
             seed=14, rotation_deg=4.0, translation_vox=6.0, bspline_grid=20.0,
             bspline_amp_vox=3.0, noise=0.02, dtype="float32"),
    CaseSpec("mni-aniso4", "tuning", "mni",
             "lightsheet-like anisotropy: both images 1×1×4 mm (boxcar slices), pyramid "
             "halves x/y only; 20 mm grid, 4 vox; 6° rotation", seed=15, rotation_deg=6.0,
             translation_vox=5.0, bspline_grid=20.0, bspline_amp_vox=4.0, noise=0.02,
             fixed_spacing=(1.0, 1.0, 4.0), moving_spacing=(1.0, 1.0, 4.0),
             downsample_axes=("y", "x")),
    CaseSpec("mni-grids", "tuning", "mni",
             "different grids: fixed 1.25 mm with a shifted origin, moving 1 mm; "
             "20 mm grid, 4 vox; 3° rotation, 8 vox translation", seed=16,
             rotation_deg=3.0, translation_vox=8.0, bspline_grid=20.0, bspline_amp_vox=4.0,
             fixed_spacing=(1.25, 1.25, 1.25), fixed_origin_shift=(3.7, -6.2, 5.1)),
    CaseSpec("epi", "tuning", "epi",
             "second real 3D image: EPI 2×2×2.2 mm, 20 mm grid, 3 vox; 5° rotation; "
             "2 % noise", seed=17, rotation_deg=5.0, translation_vox=4.0,
             bspline_grid=20.0, bspline_amp_vox=3.0, noise=0.02),
    CaseSpec("mni2d-headline", "tuning", "mni2d",
             "issue #11 2D row: axial MNI slice 1 mm, 3° rotation, 4 mm translation, "
             "20 mm grid, max 4.8 mm", seed=18, rotation_deg=3.0, translation=(2.8, -2.9),
             bspline_grid=20.0, bspline_amp=4.8),
    CaseSpec("mni2d-fine", "tuning", "mni2d",
             "2D fine warp: 10 mm grid, 2 vox; 8° rotation, +5 % scale; bias 20 %, "
             "3 % noise", seed=19, rotation_deg=8.0, translation_vox=6.0, scale=0.05,
             bspline_grid=10.0, bspline_amp_vox=2.0, bias=0.2, noise=0.03),
    CaseSpec("cell2d", "tuning", "cell",
             "2D micrograph (quantitative phase image of a cell, 660×550 px at 0.107 µm), "
             "5.9 µm grid (10 % of the extent), 5 px; 5° rotation, 8 px translation; log "
             "remap, 2 % noise", seed=26,
             rotation_deg=5.0, translation_vox=8.0, bspline_grid=5.9, bspline_amp_vox=5.0,
             remap="log", noise=0.02),
    CaseSpec("retina2d", "tuning", "retina",
             "2D fundus photograph (green channel, 1411×1411 px at 10 µm), 1.4 mm grid "
             "(10 % of the extent), 6 px; 6° rotation, 10 px translation; gamma remap, "
             "2 % noise", seed=27, rotation_deg=6.0, translation_vox=10.0,
             bspline_grid=1411.0, bspline_amp_vox=6.0, remap="gamma", noise=0.02),
    # ------------------------------------------------------------ validation (5)
    CaseSpec("mni-coarse40", "validation", "mni",
             "large smooth warp: 40 mm grid, 8 vox; 10° rotation, 10 vox translation, "
             "+5 % scale", seed=21, rotation_deg=10.0, translation_vox=10.0, scale=0.05,
             bspline_grid=40.0, bspline_amp_vox=8.0),
    CaseSpec("mni-ngffzarr", "validation", "mni",
             "as users write it: ngff-zarr, c,z,y,x uint16, z spacing 3 mm (both images); "
             "3° rotation, 4 mm translation, 20 mm grid, max 4.8 mm", seed=22,
             rotation_deg=3.0, translation=(-2.0, 3.0, 1.8), bspline_grid=20.0,
             bspline_amp=4.8, dtype="uint16", fixed_spacing=(1.0, 1.0, 3.0),
             moving_spacing=(1.0, 1.0, 3.0), writer="ngff-zarr"),
    CaseSpec("mni-crop80", "validation", "mni",
             "partial overlap: moving cropped to 80 % along y; 20 mm grid, 5 vox; "
             "4° rotation, log remap", seed=23, rotation_deg=4.0, translation_vox=4.0,
             bspline_grid=20.0, bspline_amp_vox=5.0, remap="log", moving_crop=0.8,
             crop_axis=1),
    CaseSpec("epi-coarse40", "validation", "epi",
             "EPI with a 40 mm grid, 5 vox; 8° rotation, -5 % scale, ±20 % bias",
             seed=24, rotation_deg=8.0, translation_vox=6.0, scale=-0.05, bspline_grid=40.0,
             bspline_amp_vox=5.0, bias=0.2),
    CaseSpec("ihc2d", "validation", "ihc",
             "2D micrograph (IHC), 51 µm grid (10 % of the extent), 6 px; 7° rotation, "
             "10 px translation; gamma remap, 3 % noise", seed=25, rotation_deg=7.0,
             translation_vox=10.0, bspline_grid=51.2, bspline_amp_vox=6.0, remap="gamma",
             noise=0.03),
    # added 2026-12-02, after ihc2d had been looked at to find the smoothing bias at
    # the moving border: cases fixed before any run of theirs, kept out of all tuning
    CaseSpec("mni-fresh15", "validation", "mni",
             "fresh held-out 3D case: 15 mm grid, 3.5 vox; 6° rotation, 6 vox translation, "
             "-3 % scale; ±15 % bias, 2 % noise, uint16", seed=31, rotation_deg=6.0,
             translation_vox=6.0, scale=-0.03, bspline_grid=15.0, bspline_amp_vox=3.5,
             bias=0.15, noise=0.02, dtype="uint16"),
    CaseSpec("moon2d", "validation", "moon",
             "fresh held-out 2D case: telescope image of the Moon (512×512), 77 px grid "
             "(15 % of the extent), 5 px; 4° rotation, 6 px translation, +3 % scale; "
             "±15 % bias, 2 % noise", seed=32, rotation_deg=4.0, translation_vox=6.0,
             scale=0.03, bspline_grid=76.8, bspline_amp_vox=5.0, bias=0.15, noise=0.02),
    # ---------------------------------------------------------------- issue #20
    # Added 2026-12-06: pairs that break the two assumptions of the cases above (same
    # contrast up to a monotone remap; a cubic B-spline warp). The split below was fixed
    # on 2026-12-06 before any method had been run on any of these cases; the
    # validation cases are never looked at for tuning. Fresh seeds (41-58).
    # -- tuning (11, and 2 added on 2026-12-08 below)
    CaseSpec("mni-svf-fine", "tuning", "mni",
             "diffeomorphic warp, fine: velocity sigma 3.5 mm, max 4 mm, compressions to "
             "det J ~0.3; 4° rotation, 5 mm translation", seed=41, rotation_deg=4.0,
             translation_vox=5.0, svf_scale=3.5, svf_amp=4.0, svf_spacing=1.25),
    CaseSpec("mni-svf12-large", "tuning", "mni",
             "large diffeomorphic warp: velocity sigma 12 mm, max 9 mm; 8° rotation, 8 mm "
             "translation, +5 % scale", seed=42, rotation_deg=8.0, translation_vox=8.0,
             scale=0.05, svf_scale=12.0, svf_amp=9.0, svf_spacing=2.5),
    CaseSpec("mni2d-svf4", "tuning", "mni2d",
             "2D diffeomorphic warp: velocity sigma 4 mm, max 3.5 mm; 5° rotation, 5 mm "
             "translation", seed=43, rotation_deg=5.0, translation_vox=5.0, svf_scale=4.0,
             svf_amp=3.5, svf_spacing=1.0),
    CaseSpec("mni-t2", "tuning", "mni",
             "contrast: T1 fixed, T2-like moving (tissue maps; ±25 % moving bias); B-spline "
             "30 mm grid, max 8 mm; 4° rotation, 5 mm translation; 2 % noise", seed=44,
             rotation_deg=4.0, translation_vox=5.0, bspline_grid=30.0, bspline_amp=8.0,
             contrast="t2like", moving_bias=0.25, noise=0.02),
    CaseSpec("mni2d-t2", "tuning", "mni2d",
             "2D contrast: T1 slice fixed, T2-like slice moving (±20 % moving bias); B-spline "
             "25 mm grid, max 6 mm; 5° rotation; 2 % noise", seed=45, rotation_deg=5.0,
             translation_vox=6.0, bspline_grid=25.0, bspline_amp=6.0, contrast="t2like",
             moving_bias=0.2, noise=0.02),
    CaseSpec("mni2d-dir", "tuning", "mni2d",
             "2D contrast, not a function: T1 fixed, DIR-like moving (white matter and CSF "
             "both dark); diffeomorphic sigma 6 mm, max 4 mm; 6° rotation; ±20 % moving bias",
             seed=46, rotation_deg=6.0, translation_vox=5.0, svf_scale=6.0, svf_amp=4.0,
             svf_spacing=1.0, contrast="dirlike", moving_bias=0.2, noise=0.02),
    CaseSpec("retina2d-rg", "tuning", "retina",
             "2D contrast, second source: fundus red channel fixed, green channel moving; "
             "1.4 mm grid, 6 px; 5° rotation, 10 px translation; 2 % noise", seed=47,
             rotation_deg=5.0, translation_vox=10.0, bspline_grid=1411.0, bspline_amp_vox=6.0,
             contrast="redgreen", noise=0.02),
    CaseSpec("epi-nonmono", "tuning", "epi",
             "contrast by a non-monotone remap of the EPI (sin 0.9πv) for the moving; 20 mm "
             "grid, 3 vox; 6° rotation; 2 % noise", seed=48, rotation_deg=6.0,
             translation_vox=4.0, bspline_grid=20.0, bspline_amp_vox=3.0, contrast="nonmono",
             noise=0.02),
    CaseSpec("mni-lightsheet", "tuning", "mni",
             "lightsheet-like: uint16, z PSF sigma 1.2 mm then z every 3 mm (both), fixed lit "
             "from low x and moving from high x (exp(-2.5 s)), ±15 % stripes, 3 % noise; 20 mm "
             "grid, max 4 mm; 4° rotation, 5 mm translation", seed=49, rotation_deg=4.0,
             translation_vox=5.0, bspline_grid=20.0, bspline_amp=4.0, noise=0.03,
             dtype="uint16", fixed_spacing=(1.0, 1.0, 3.0), moving_spacing=(1.0, 1.0, 3.0),
             downsample_axes=("y", "x"), illum=2.5, stripes=0.15, z_blur=1.2),
    CaseSpec("cell2d-illum", "tuning", "cell",
             "2D micrograph, opposite-side illumination exp(-2.5 s), ±15 % stripes, uint16, 2 % "
             "noise; 5.9 µm grid, 5 px; 4° rotation, 8 px translation", seed=50,
             rotation_deg=4.0, translation_vox=8.0, bspline_grid=5.9, bspline_amp_vox=5.0,
             noise=0.02, dtype="uint16", illum=2.5, stripes=0.15),
    CaseSpec("mni2d-illum", "tuning", "mni2d",
             "2D uneven illumination: T1 slice lit from low x (fixed) and from high x (moving), "
             "exp(-2.5 s), ±15 % stripes, uint16, 3 % noise; B-spline 20 mm grid, max 4 mm; 4° "
             "rotation, 5 mm translation", seed=61, rotation_deg=4.0, translation_vox=5.0,
             bspline_grid=20.0, bspline_amp=4.0, noise=0.03, dtype="uint16", illum=2.5,
             stripes=0.15),
    CaseSpec("mni2d-large", "tuning", "mni2d",
             "2D large warp: 10° rotation, -8 % scale, 10 mm translation, B-spline 40 mm grid, "
             "max 8 mm", seed=51, rotation_deg=10.0, translation_vox=10.0, scale=-0.08,
             bspline_grid=40.0, bspline_amp=8.0),
    # added 2026-12-08 (ninth session), before any run of theirs: tuning pairs of the
    # held-out mni-flair-svf8 kind (FLAIR-like contrast with a diffeomorphic warp), so
    # that kind can be worked on without looking at the validation case
    CaseSpec("mni-flair-svf6", "tuning", "mni",
             "contrast + diffeomorphic: T1 fixed, FLAIR-like moving (±25 % moving bias); "
             "velocity sigma 6 mm, max 5 mm; 4° rotation, 5 mm translation, -3 % scale; "
             "2 % noise", seed=71, rotation_deg=4.0, translation_vox=5.0, scale=-0.03,
             svf_scale=6.0, svf_amp=5.0, svf_spacing=2.0, contrast="flairlike",
             moving_bias=0.25, noise=0.02),
    CaseSpec("mni2d-flair-svf7", "tuning", "mni2d",
             "2D contrast + diffeomorphic: T1 slice fixed, FLAIR-like slice moving (±20 % "
             "moving bias); velocity sigma 7 mm, max 5 mm; 6° rotation, 6 mm translation; "
             "2 % noise", seed=72, rotation_deg=6.0, translation_vox=6.0, svf_scale=7.0,
             svf_amp=5.0, svf_spacing=1.0, contrast="flairlike", moving_bias=0.2,
             noise=0.02),
    # -- validation (7): every new kind, 3D and 2D
    CaseSpec("mni-bspline20-fresh", "validation", "mni",
             "fresh headline kind: MNI T1 1 mm, 3° rotation, 4 mm translation, B-spline 20 mm "
             "grid, max 4.8 mm", seed=52, rotation_deg=3.0, translation_vox=4.0,
             bspline_grid=20.0, bspline_amp=4.8),
    CaseSpec("mni-flair-svf8", "validation", "mni",
             "contrast + diffeomorphic: T1 fixed, FLAIR-like moving (±20 % moving bias); "
             "velocity sigma 8 mm, max 6 mm; 5° rotation, 6 mm translation; 2 % noise",
             seed=53, rotation_deg=5.0, translation_vox=6.0, svf_scale=8.0, svf_amp=6.0,
             svf_spacing=2.0, contrast="flairlike", moving_bias=0.2, noise=0.02),
    CaseSpec("ihc2d-hdab", "validation", "ihc",
             "2D contrast, two stains of one specimen: hematoxylin fixed, DAB moving (colour "
             "deconvolution); 51 µm grid, 6 px; 6° rotation, 8 px translation; 2 % noise",
             seed=54, rotation_deg=6.0, translation_vox=8.0, bspline_grid=51.2,
             bspline_amp_vox=6.0, contrast="hdab", noise=0.02),
    CaseSpec("mni-lightsheet-fresh", "validation", "mni",
             "lightsheet-like, diffeomorphic: uint16, z PSF sigma 1.5 mm then z every 3 mm, "
             "opposite illumination exp(-3 s), ±20 % stripes, 3 % noise; velocity sigma 10 mm, "
             "max 5 mm; 6° rotation, 6 mm translation", seed=55, rotation_deg=6.0,
             translation_vox=6.0, svf_scale=10.0, svf_amp=5.0, svf_spacing=2.5, noise=0.03,
             dtype="uint16", fixed_spacing=(1.0, 1.0, 3.0), moving_spacing=(1.0, 1.0, 3.0),
             downsample_axes=("y", "x"), illum=3.0, stripes=0.2, z_blur=1.5),
    CaseSpec("ihc2d-illum", "validation", "ihc",
             "2D micrograph (IHC grey), opposite illumination exp(-3 s), ±20 % stripes, "
             "uint16, 2 % noise; diffeomorphic sigma 12 px, max 6 px; 6° rotation", seed=56,
             rotation_deg=6.0, translation_vox=8.0, svf_scale=12.0, svf_amp=6.0,
             svf_spacing=2.0, noise=0.02, dtype="uint16", illum=3.0, stripes=0.2),
    CaseSpec("mni-svf10-large", "validation", "mni",
             "large diffeomorphic warp: velocity sigma 10 mm, max 7 mm; 10° rotation, 9 mm "
             "translation, -6 % scale", seed=57, rotation_deg=10.0, translation_vox=9.0,
             scale=-0.06, svf_scale=10.0, svf_amp=7.0, svf_spacing=2.5),
    CaseSpec("mni2d-svf5-large", "validation", "mni2d",
             "2D diffeomorphic + large: velocity sigma 5 mm, max 4 mm; 9° rotation, 8 mm "
             "translation, +7 % scale", seed=58, rotation_deg=9.0, translation_vox=8.0,
             scale=0.07, svf_scale=5.0, svf_amp=4.0, svf_spacing=1.0),
)

#: convention checks of ``accuracy_suite.py --selfcheck`` (not part of the suite)
SELFCHECK_CASES: tuple[CaseSpec, ...] = (
    CaseSpec("selfcheck-translation", "selfcheck", "mni",
             "pure known translation (+6, -4, +3) mm, same grids", seed=1,
             translation=(6.0, -4.0, 3.0)),
    CaseSpec("selfcheck-grids", "selfcheck", "mni",
             "pure known translation (-5, +3, +4) mm; fixed 2.5×2.5×5 mm with a shifted "
             "origin, moving 2 mm", seed=2, translation=(-5.0, 3.0, 4.0),
             fixed_spacing=(2.5, 2.5, 5.0), fixed_origin_shift=(4.0, -3.0, 6.0)),
)

#: cases meant for the reduced pytest subset
REDUCED_CASES = ("mni-headline", "mni2d-headline", "mni-aniso4",
                 # issue #20: multimodal and uneven-illumination cases
                 "mni-t2", "mni2d-dir", "mni-lightsheet", "mni2d-illum")

_ALL = {c.name: c for c in CASES + SELFCHECK_CASES}


def case_names(split: str = "all") -> list[str]:
    """Names of the suite's cases in ``split`` (``tuning``, ``validation`` or ``all``)."""
    return [c.name for c in CASES if split == "all" or c.split == split]


def get_spec(name: str) -> CaseSpec:
    """The definition of case ``name`` (suite or selfcheck)."""
    try:
        return _ALL[name]
    except KeyError:
        raise ValueError(f"unknown case {name!r}; choose from {sorted(_ALL)}") from None


# ----------------------------------------------------------------------- sources
def _source(image: str, reduced: bool, selfcheck: bool) -> tuple[np.ndarray, ImageGeometry]:
    """The real source image as float32 in [0, 1] (NumPy order) and its geometry."""
    factor = 2 if (reduced or selfcheck) else 1
    if image in ("mni", "mni2d"):
        from ngff_dreg.demo import load_template

        arr, _ = load_template(1)
        if image == "mni2d":
            arr = arr[90]
        spacing = (1.0,) * arr.ndim
        unit = "millimeter"
    elif image == "epi":
        import nibabel as nib

        path = Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz"
        img = nib.load(str(path))
        vol = np.asarray(img.dataobj[..., 0], dtype=np.float32)  # x, y, z
        arr = np.ascontiguousarray(vol.transpose(2, 1, 0))
        spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
        unit = "millimeter"
    elif image == "ihc":
        import skimage.data
        from skimage.color import rgb2gray

        arr = 1.0 - rgb2gray(skimage.data.immunohistochemistry()).astype(np.float32)
        spacing = (1.0, 1.0)
        unit = "micrometer"
    elif image == "cell":
        import skimage.data

        arr = skimage.data.cell().astype(np.float32)
        spacing = (0.107, 0.107)  # the pixel spacing its docstring gives
        unit = "micrometer"
    elif image == "retina":
        import skimage.data

        arr = skimage.data.retina()[..., 1].astype(np.float32)  # green: the vessels
        spacing = (10.0, 10.0)  # about a fundus camera's sampling
        unit = "micrometer"
    elif image == "moon":
        import skimage.data

        arr = skimage.data.moon().astype(np.float32)
        spacing = (1.0, 1.0)
        unit = "micrometer"  # no physical scale is known; lengths are in pixels
    else:
        raise ValueError(f"unknown image {image!r}")
    arr = np.asarray(arr, dtype=np.float32)
    lo, hi = np.percentile(arr, [0.0, 99.9])
    arr = np.clip((arr - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)
    if factor > 1:
        arr = ndimage.gaussian_filter(arr, 0.5 * factor)[(slice(None, None, factor),) * arr.ndim]
        spacing = tuple(s * factor for s in spacing)
        # voxel i of the decimated image sits where voxel factor*i of the source was
    return arr.astype(np.float32), ImageGeometry(arr.shape, spacing, (0.0,) * arr.ndim,
                                                 unit=unit)


#: second contrasts (``CaseSpec.contrast``): name -> (images, contrast A, contrast B)
CONTRASTS = {
    "t2like": (("mni", "mni2d"), "the T1", "T2-like from the tissue maps: CSF bright, "
               "grey matter mid (deep grey nuclei darker), white matter dark"),
    "flairlike": (("mni", "mni2d"), "the T1", "FLAIR-like from the tissue maps: CSF "
                  "suppressed, grey matter bright, white matter mid"),
    "dirlike": (("mni", "mni2d"), "the T1", "DIR-like (double inversion recovery) from the "
                "tissue maps: grey matter bright, white matter and CSF both dark"),
    "hdab": (("ihc",), "hematoxylin", "DAB (colour deconvolution, rgb2hed)"),
    "redgreen": (("retina",), "red channel", "green channel"),
    "nonmono": (("mni", "mni2d", "epi", "cell", "ihc", "retina", "moon"), "the image",
                "a non-monotone remap of it, sin(0.9 pi v): bright and dark parts of the "
                "fixed image share moving values"),
}


def _unit(arr: np.ndarray) -> np.ndarray:
    """Scaled to [0, 1] between the 0th and 99.9th percentiles (as ``_source`` does)."""
    arr = np.asarray(arr, dtype=np.float32)
    lo, hi = np.percentile(arr, [0.0, 99.9])
    return np.clip((arr - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def _tissue_contrast(t1: np.ndarray, kind: str) -> np.ndarray:
    """A second MR weighting of the MNI head from nilearn's GM/WM maps (full 3D, 1 mm).

    The T1 file is skull-stripped (nothing but brain and the CSF around it), so the
    head mask is the T1's support; CSF is what the GM and WM maps leave of it.
    Grey matter deeper than ~25 mm below the head's hull (basal ganglia, thalamus) is
    darkened in the T2-like and FLAIR-like images, as iron-rich nuclei are.
    """
    from ngff_dreg.itk_bridge import read_image_array

    d = Path(__import__("nilearn").__file__).parent / "datasets" / "data"
    gm, wm = (read_image_array(str(d / f"mni_icbm152_{t}_tal_nlin_sym_09a_converted.nii.gz"))
              .astype(np.float64) / 255.0 for t in ("gm", "wm"))
    head = ndimage.binary_fill_holes(ndimage.binary_closing(t1 > 0.05, iterations=3))
    soft = np.clip(ndimage.gaussian_filter(head.astype(np.float64), 0.7), 0.0, 1.0)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * soft
    depth = ndimage.distance_transform_edt(head)
    deep = np.clip((depth - 20.0) / 10.0, 0.0, 1.0)  # 0 above 20 mm, 1 below 30 mm
    if kind == "t2like":
        out = 1.0 * csf + 0.55 * gm * (1.0 - 0.5 * deep) + 0.22 * wm
    elif kind == "flairlike":
        out = 0.06 * csf + 0.85 * gm * (1.0 - 0.3 * deep) + 0.5 * wm
    elif kind == "dirlike":
        out = 0.08 * csf + 1.0 * gm + 0.1 * wm
    else:
        raise ValueError(f"unknown tissue contrast {kind!r}")
    return (out * soft).astype(np.float32)


def _source_pair(spec: CaseSpec, reduced: bool,
                 selfcheck: bool) -> tuple[np.ndarray, np.ndarray, ImageGeometry]:
    """Contrasts A and B of the case's source on the source grid, both in [0, 1].

    Both are made at full resolution and decimated the same way as ``_source``
    decimates (the reduced variants); contrast B gets ``moving_bias`` here, on
    the source grid, since it belongs to the specimen's acquisition B.
    """
    image, kind = spec.image, spec.contrast
    if kind not in CONTRASTS or image not in CONTRASTS[kind][0]:
        raise ValueError(f"contrast {kind!r} is not defined for image {image!r}")
    a, geom = _source(image, False, False)
    if kind in ("t2like", "flairlike", "dirlike"):
        t1, _ = _source("mni", False, False)
        b = _unit(_tissue_contrast(t1, kind))
        if image == "mni2d":
            b = b[90]
    elif kind == "hdab":
        import skimage.data
        from skimage.color import rgb2hed

        hed = rgb2hed(skimage.data.immunohistochemistry())
        a, b = _unit(hed[..., 0]), _unit(hed[..., 2])
    elif kind == "redgreen":
        import skimage.data

        rgb = skimage.data.retina().astype(np.float32)
        a, b = _unit(rgb[..., 0]), _unit(rgb[..., 1])
    else:  # nonmono
        b = _unit(np.sin(0.9 * math.pi * a.astype(np.float64)))
    if spec.moving_bias:
        b = np.clip(b * bias_field(geom, spec.moving_bias,
                                   np.random.default_rng(spec.seed + 3000)), 0.0, None)
    factor = 2 if (reduced or selfcheck) else 1
    sp = geom.spacing
    if factor > 1:
        a, b = (ndimage.gaussian_filter(x, 0.5 * factor)[(slice(None, None, factor),) * x.ndim]
                for x in (a, b))
        sp = tuple(s * factor for s in sp)
    geom = ImageGeometry(a.shape, sp, (0.0,) * a.ndim, unit=geom.unit)
    return a.astype(np.float32), b.astype(np.float32), geom


# -------------------------------------------------------------------------- truth
@dataclass
class CaseTruth:
    """The exact fixed→moving map ``T(x) = A(x + u(x))`` of a case.

    ``A(p) = matrix @ p + offset``; ``u`` is the cubic B-spline with
    coefficients ``coef`` (``(ndim, *grid)``, components in ITK order, grid in
    NumPy order) on nodes ``coef_origin + coef_spacing * k`` (ITK order).
    """

    matrix: FloatArray
    offset: FloatArray
    coef: FloatArray | None = None
    coef_origin: FloatArray | None = None
    coef_spacing: FloatArray | None = None

    @property
    def ndim(self) -> int:
        """Dimension."""
        return int(self.matrix.shape[0])

    def displacement(self, pts: FloatArray) -> FloatArray:
        """``u(pts)``, exact spline evaluation (zero without a B-spline part)."""
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, self.ndim)
        if self.coef is None:
            return np.zeros_like(pts)
        assert self.coef_origin is not None and self.coef_spacing is not None
        idx = ((pts - self.coef_origin) / self.coef_spacing)[:, ::-1]
        return np.stack([ndimage.map_coordinates(self.coef[c], idx.T, order=3,
                                                 prefilter=False, mode="nearest")
                         for c in range(self.ndim)], axis=1)

    def transform_points(self, pts: npt.ArrayLike) -> FloatArray:
        """Map fixed physical points ``(N, ndim)`` (ITK order) to moving points."""
        p = np.asarray(pts, dtype=np.float64).reshape(-1, self.ndim)
        out = np.empty_like(p)
        for s in range(0, len(p), 1 << 19):
            q = p[s:s + (1 << 19)]
            out[s:s + len(q)] = (q + self.displacement(q)) @ self.matrix.T + self.offset
        return out

    def save(self, path: Path) -> None:
        """Write as ``.npz``."""
        arrays = {"matrix": self.matrix, "offset": self.offset}
        if self.coef is not None:
            arrays.update(coef=self.coef, coef_origin=self.coef_origin,
                          coef_spacing=self.coef_spacing)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> CaseTruth:
        """Read :meth:`save` output."""
        z = np.load(path)
        if "coef" in z:
            return cls(z["matrix"], z["offset"], z["coef"], z["coef_origin"], z["coef_spacing"])
        return cls(z["matrix"], z["offset"])


def _rotation(ndim: int, degrees: float, rng: np.random.Generator) -> FloatArray:
    """A rotation by ``degrees`` (3D: about a random unit axis; Rodrigues)."""
    th = math.radians(degrees)
    if ndim == 2:
        return np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(th) * k + (1 - math.cos(th)) * (k @ k)


def _fixed_points(geom: ImageGeometry, stride: int = 1) -> FloatArray:
    """Physical points of every ``stride``-th fixed voxel."""
    axes = [np.arange(0, n, stride, dtype=np.float64) for n in geom.shape]
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, geom.ndim)
    return geom.array_index_to_physical(idx)


def make_truth(spec: CaseSpec, fixed: ImageGeometry, source: ImageGeometry,
               full_voxel: float) -> CaseTruth:
    """The case's truth on the fixed domain (``full_voxel``: the full-size source voxel)."""
    rng = np.random.default_rng(spec.seed)
    nd = spec.ndim
    lo, hi = fixed.physical_bounds()
    centre = (np.asarray(lo) + np.asarray(hi)) / 2.0
    rot = _rotation(nd, spec.rotation_deg, rng) * (1.0 + spec.scale)
    if spec.translation is not None:
        t = np.asarray(spec.translation, dtype=np.float64)
    else:
        d = rng.standard_normal(nd)
        t = d / np.linalg.norm(d) * spec.translation_vox * full_voxel
    offset = centre - rot @ centre + t
    truth = CaseTruth(rot, offset)
    if spec.bspline_grid:
        g = float(spec.bspline_grid)
        origin = np.asarray(lo) - 2 * g
        n = np.ceil((np.asarray(hi) - np.asarray(lo)) / g).astype(int) + 5  # ITK order
        coef = rng.standard_normal((nd, *n[::-1]))
        truth.coef, truth.coef_origin = coef, origin
        truth.coef_spacing = np.full(nd, g)
        amp = spec.bspline_amp if spec.bspline_amp is not None \
            else spec.bspline_amp_vox * full_voxel
        peak = float(np.linalg.norm(truth.displacement(_fixed_points(fixed, 2)), axis=1).max())
        truth.coef = coef * (amp / peak)
    if spec.svf_scale:
        truth.coef, truth.coef_origin, truth.coef_spacing = _svf_displacement(
            spec, fixed, np.random.default_rng(spec.seed + 4000))
    return truth


def _exp_velocity(v: FloatArray, h: float) -> FloatArray:
    """exp(v) by scaling and squaring: the displacement of the flow of ``v`` at time 1.

    ``v``: ``(ndim, *grid)``, components in ITK order (physical), grid in NumPy
    order with spacing ``h``. ``u <- u + u∘(id + u)``, starting from
    ``v / 2^n`` with ``max |v| / 2^n <= h / 4``; the composition interpolates
    linearly (the truth is defined afterwards as the cubic spline of the result).
    """
    nd = v.shape[0]
    vmax = float(np.sqrt((v ** 2).sum(0)).max())
    n = max(4, math.ceil(math.log2(max(vmax / (0.25 * h), 1.0))) + 1)
    u = v / 2.0 ** n
    grid = np.stack(np.meshgrid(*[np.arange(k, dtype=np.float64) for k in v.shape[1:]],
                                indexing="ij"))
    for _ in range(n):
        coords = grid + u[::-1] / h
        u = u + np.stack([ndimage.map_coordinates(u[c], coords, order=1, mode="nearest")
                          for c in range(nd)])
    return u


def _svf_displacement(spec: CaseSpec, fixed: ImageGeometry, rng: np.random.Generator
                      ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """A diffeomorphic displacement as cubic B-spline coefficients on a fine grid.

    The velocity is white noise smoothed by a Gaussian of sigma ``svf_scale`` on a
    grid of spacing ``svf_spacing`` covering the fixed domain with a margin; it
    is scaled so that ``max |u|`` over the grid nodes inside the fixed domain is
    ``svf_amp`` (one correction after a first exponentiation). The truth ``u`` is
    *defined* as the cubic B-spline interpolant of the exponentiated displacement
    sampled on that grid (``ndimage.spline_filter``), so the image is made and
    the errors are scored with the same, exactly evaluable map.
    """
    nd = fixed.ndim
    sig = float(spec.svf_scale)
    h = float(spec.svf_spacing or sig / 4.0)
    lo, hi = (np.asarray(b, dtype=np.float64) for b in fixed.physical_bounds())
    margin = 3.0 * sig + 2.0 * spec.svf_amp + 2.0 * h
    origin = lo - margin
    n = np.ceil((hi - lo + 2 * margin) / h).astype(int) + 1  # ITK order
    shape = tuple(int(k) for k in n[::-1])
    v = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sig / h)
                  for _ in range(nd)])
    v /= float(np.sqrt((v ** 2).sum(0)).max())
    ilo = np.ceil((lo - origin) / h).astype(int)[::-1]
    ihi = np.floor((hi - origin) / h).astype(int)[::-1] + 1
    inner = tuple(slice(a, b) for a, b in zip(ilo, ihi))
    c = float(spec.svf_amp)
    u = _exp_velocity(v * c, h)
    peak = float(np.sqrt((u[(slice(None), *inner)] ** 2).sum(0)).max())
    c *= spec.svf_amp / peak
    u = _exp_velocity(v * c, h)
    coef = np.stack([ndimage.spline_filter(u[k], order=3, mode="mirror") for k in range(nd)])
    return coef, origin, np.full(nd, h)


# ------------------------------------------------------------------ resampling
def _sampler(source: np.ndarray, sgeom: ImageGeometry) -> Callable[[FloatArray], np.ndarray]:
    """Cubic B-spline interpolant of ``source`` at physical points; 0 outside."""
    coef = ndimage.spline_filter(source.astype(np.float64), order=3, mode="mirror")
    shape = np.asarray(source.shape)

    def f(pts: FloatArray) -> np.ndarray:
        idx = sgeom.physical_to_index(pts)[:, ::-1]
        inside = np.all((idx >= -0.5) & (idx <= shape - 0.5), axis=1)
        val = ndimage.map_coordinates(coef, idx.T, order=3, mode="mirror", prefilter=False)
        return np.where(inside, np.clip(val, 0.0, None), 0.0)

    return f


def resample(f: Callable[[FloatArray], np.ndarray], geom: ImageGeometry, fine: ImageGeometry,
             transform: Callable[[FloatArray], FloatArray] | None) -> np.ndarray:
    """``mean over sub-samples of f(transform(x))`` for every voxel of ``geom``.

    Along an axis where ``geom`` is coarser than ``fine`` (the source), a voxel
    averages ``k = ceil(ratio)`` evenly spaced sub-samples across its width
    (boxcar anti-aliasing); elsewhere it is one sample at the voxel centre.
    """
    k = [max(1, math.ceil(g / s - 1e-6)) for g, s in zip(geom.spacing, fine.spacing)]
    subs = [((np.arange(kk) + 0.5) / kk - 0.5) for kk in k]  # ITK order, index units
    offsets = np.stack(np.meshgrid(*subs, indexing="ij"), -1).reshape(-1, geom.ndim)
    out = np.zeros(geom.shape, dtype=np.float64)
    plane = int(np.prod(geom.shape[1:]))
    rows = max(1, (1 << 20) // plane)
    for z0 in range(0, geom.shape[0], rows):
        z1 = min(geom.shape[0], z0 + rows)
        axes = [np.arange(z0, z1, dtype=np.float64)] + [
            np.arange(n, dtype=np.float64) for n in geom.shape[1:]]
        idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, geom.ndim)[:, ::-1]
        acc = np.zeros(len(idx))
        for off in offsets:
            pts = geom.index_to_physical(idx + off)
            acc += f(transform(pts) if transform is not None else pts)
        out[z0:z1] = (acc / len(offsets)).reshape((z1 - z0, *geom.shape[1:]))
    return out


def resample_psf(f: Callable[[FloatArray], np.ndarray], geom: ImageGeometry,
                 fine: ImageGeometry, transform: Callable[[FloatArray], FloatArray] | None,
                 z_sigma: float) -> np.ndarray:
    """As :func:`resample`, with a Gaussian axial point-spread function along z.

    Along z (the slowest NumPy axis) a voxel is the weighted mean of samples every
    source z spacing over the slice's boxcar convolved with a Gaussian of sigma
    ``z_sigma``: weight ``Phi((d + w/2) / sigma) - Phi((d - w/2) / sigma)`` at
    offset ``d`` for slice width ``w``; in-plane as ``resample`` (boxcar).
    """
    w, step = geom.spacing[-1], fine.spacing[-1]
    half = w / 2.0 + 3.0 * z_sigma
    m = int(math.ceil(half / step))
    d = np.arange(-m, m + 1) * step
    cdf = np.vectorize(lambda t: 0.5 * (1.0 + math.erf(t / math.sqrt(2.0))))
    wz = cdf((d + w / 2) / z_sigma) - cdf((d - w / 2) / z_sigma)
    wz = wz / wz.sum()
    k = [max(1, math.ceil(g / s - 1e-6)) for g, s in zip(geom.spacing[:-1], fine.spacing[:-1])]
    subs = [((np.arange(kk) + 0.5) / kk - 0.5) for kk in k]  # ITK order, index units
    inplane = np.stack(np.meshgrid(*subs, indexing="ij"), -1).reshape(-1, geom.ndim - 1)
    offsets, weights = [], []
    for dz, wgt in zip(d / w, wz):
        for off in inplane:
            offsets.append([*off, dz])
            weights.append(wgt / len(inplane))
    out = np.zeros(geom.shape, dtype=np.float64)
    plane = int(np.prod(geom.shape[1:]))
    rows = max(1, (1 << 20) // plane)
    for z0 in range(0, geom.shape[0], rows):
        z1 = min(geom.shape[0], z0 + rows)
        axes = [np.arange(z0, z1, dtype=np.float64)] + [
            np.arange(n, dtype=np.float64) for n in geom.shape[1:]]
        idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, geom.ndim)[:, ::-1]
        acc = np.zeros(len(idx))
        for off, wgt in zip(offsets, weights):
            pts = geom.index_to_physical(idx + np.asarray(off))
            acc += wgt * f(transform(pts) if transform is not None else pts)
        out[z0:z1] = acc.reshape((z1 - z0, *geom.shape[1:]))
    return out


# ------------------------------------------------------------------ appearance
def bias_field(geom: ImageGeometry, amount: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field ``exp(b)``, ``|b| <= log(1 + amount)``.

    ``b`` sums four random low-frequency cosines (wavelengths 1–2 image extents).
    """
    pts = _fixed_points(geom).reshape(*geom.shape, geom.ndim)
    lo, hi = geom.physical_bounds()
    ext = np.asarray(hi) - np.asarray(lo)
    b = np.zeros(geom.shape)
    for _ in range(4):
        k = rng.standard_normal(geom.ndim)
        k = k / np.linalg.norm(k) * 2 * math.pi / (rng.uniform(1.0, 2.0) * float(ext.max()))
        b += np.cos(pts @ k + rng.uniform(0, 2 * math.pi))
    b *= math.log(1.0 + amount) / max(float(np.abs(b).max()), 1e-9)
    return np.exp(b)


def remap(v: np.ndarray, kind: str | None) -> np.ndarray:
    """A non-linear monotone intensity remap of ``v >= 0`` (``None``: unchanged)."""
    if kind is None:
        return v
    if kind == "gamma":
        return np.power(np.clip(v, 0.0, None), 0.6)
    if kind == "log":
        return np.log1p(6.0 * np.clip(v, 0.0, None)) / math.log(7.0)
    raise ValueError(f"unknown remap {kind!r}")


def illumination(geom: ImageGeometry, atten: float, stripes: float, from_low: bool,
                 rng: np.random.Generator) -> np.ndarray:
    """Multiplicative illumination of one acquisition, in its own frame.

    ``exp(-atten · s)`` with ``s`` the position along x (ITK axis 0) across the
    image's extent, 0 at the lit edge (low x when ``from_low``, else high x);
    times streaks along x: ``exp(stripes · n)``, ``n`` white noise over the
    other axes smoothed by a Gaussian of 1 voxel (in-plane) and 1.5 slices (z),
    scaled to unit standard deviation, constant along x.
    """
    nx = geom.shape[-1]
    s = (np.arange(nx, dtype=np.float64) + 0.5) / nx
    if not from_low:
        s = 1.0 - s
    out = np.broadcast_to(np.exp(-atten * s), geom.shape).copy()
    if stripes:
        across = geom.shape[:-1]
        sig = (1.5, 1.0)[-len(across):] if len(across) == 2 else (1.0,)
        n = ndimage.gaussian_filter(rng.standard_normal(across), sig, mode="wrap")
        n = (n - n.mean()) / max(float(n.std()), 1e-12)
        out *= np.exp(stripes * n)[..., None]
    return out


def _noise(v: np.ndarray, sigma_rel: float, mask: np.ndarray,
           rng: np.random.Generator) -> np.ndarray:
    ref = float(v[mask].mean()) if mask.any() else 1.0
    return np.clip(v + rng.standard_normal(v.shape) * sigma_rel * ref, 0.0, None)


# ----------------------------------------------------------------------- writing
def _write(url: Path, data: np.ndarray, geom: ImageGeometry, spec: CaseSpec) -> None:
    """Store one image as OME-Zarr with the case's dtype and writer."""
    if spec.dtype == "uint16":
        data = np.clip(np.rint(data * U16_SCALE), 0, 65535).astype(np.uint16)
    else:
        data = data.astype(np.float32)
    if spec.writer == "ngff-zarr":
        import ngff_zarr as nz

        dims = ["c", *"zyx"[3 - geom.ndim:]]
        names = dims[1:]
        sp = dict(zip(names, geom.spacing[::-1]))
        tr = dict(zip(names, geom.origin[::-1]))
        img = nz.to_ngff_image(data[None], dims=dims, scale=sp, translation=tr,
                               axes_units={n: geom.unit or "millimeter" for n in names},
                               name=url.stem)
        ms = nz.to_multiscales(img, scale_factors=[2, 4], chunks=64)
        nz.to_ngff_zarr(str(url), ms, overwrite=True)
        return
    from ngff_dreg.io.omezarr.image_writer import write_multiscale

    write_multiscale(str(url), data, geom, chunks=64 if geom.ndim == 3 else 256,
                     overwrite=True, name=url.stem, downsample_axes=spec.downsample_axes)


# ------------------------------------------------------------------------ a case
@dataclass
class Case:
    """A generated case, as the suite uses it."""

    spec: CaseSpec
    root: Path
    fixed: str
    moving: str
    geometry: ImageGeometry  # fixed, level 0
    moving_geometry: ImageGeometry
    truth: CaseTruth
    eval_index: np.ndarray  # (N, ndim) NumPy-order fixed voxel indices
    jac_stride: tuple[int, ...]  # NumPy order
    jac_mask: np.ndarray  # foreground of the Jacobian lattice
    meta: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """Case name (``…-reduced`` for the reduced variant)."""
        return str(self.meta.get("name", self.spec.name))

    @property
    def eval_points(self) -> FloatArray:
        """Physical points (ITK order) where errors are scored."""
        return self.geometry.array_index_to_physical(self.eval_index)

    def jac_points(self) -> FloatArray:
        """Physical points of the Jacobian lattice, flattened (lattice in NumPy order)."""
        return _lattice(self.geometry, self.jac_stride)

    @property
    def jac_spacing(self) -> FloatArray:
        """Physical spacing of the Jacobian lattice, ITK order."""
        return np.asarray(self.geometry.spacing) * np.asarray(self.jac_stride[::-1])


def _geom_json(g: ImageGeometry) -> dict:
    return {"shape": list(g.shape), "spacing": list(g.spacing), "origin": list(g.origin),
            "unit": g.unit}


def _geom_from(d: dict) -> ImageGeometry:
    return ImageGeometry(tuple(d["shape"]), tuple(d["spacing"]), tuple(d["origin"]),
                         unit=d.get("unit"))


def _grid(spec: CaseSpec, sgeom: ImageGeometry, spacing: tuple[float, ...] | None,
          shift: tuple[float, ...] | None) -> ImageGeometry:
    """A grid covering the source's extent at ``spacing`` (ITK order), origin shifted.

    Voxel 0's centre sits half a voxel inside the source's outer edge, so a
    boxcar voxel covers whole source voxels when the ratio is an integer.
    """
    if spacing is None and shift is None:
        return sgeom
    sp = np.asarray(spacing if spacing is not None else sgeom.spacing, dtype=np.float64)
    ssp = np.asarray(sgeom.spacing)
    edge = np.asarray(sgeom.origin) - ssp / 2.0  # outer edge of the source, ITK order
    extent = ssp * np.asarray(sgeom.size)
    size = np.floor(extent / sp + 1e-6).astype(int)
    origin = edge + sp / 2.0 + (np.asarray(shift) if shift is not None else 0.0)
    return ImageGeometry(tuple(size[::-1]), tuple(sp), tuple(origin), unit=sgeom.unit)


def _jac_stride(geom: ImageGeometry) -> tuple[int, ...]:
    """Lattice stride per NumPy axis: about 2 of the finest spacing in 3D, 1 in 2D."""
    if geom.ndim == 2:
        return (1, 1)
    fine = min(geom.spacing)
    return tuple(max(1, round(2 * fine / s)) for s in geom.spacing[::-1])


def _load_case(spec: CaseSpec, out: Path, meta: dict) -> Case:
    z = np.load(out / "jac_mask.npy")
    return Case(spec, out, str(out / "fixed.ome.zarr"), str(out / "moving.ome.zarr"),
                _geom_from(meta["fixed_geometry"]), _geom_from(meta["moving_geometry"]),
                CaseTruth.load(out / "truth.npz"), np.load(out / "eval_index.npy"),
                tuple(meta["jac_stride"]), z, meta)


def make_case(name: str, root: Path | str = DEFAULT_ROOT, *, reduced: bool = False,
              overwrite: bool = False) -> Case:
    """Write (or reuse) case ``name`` under ``root``; ``reduced``: the 2 mm variant."""
    spec = get_spec(name)
    root = Path(root)
    tag = f"{name}-reduced" if reduced else name
    out = root / tag
    digest = spec.digest(reduced)
    meta_path = out / "meta.json"
    if meta_path.exists() and not overwrite:
        meta = json.loads(meta_path.read_text())
        if meta.get("digest") == digest:
            return _load_case(spec, out, meta)
    out.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    selfcheck = spec.split == "selfcheck"
    src_b = None  # contrast B (the moving image's), when the case has two
    if spec.contrast:
        src, src_b, sgeom = _source_pair(spec, reduced, selfcheck)
    else:
        src, sgeom = _source(spec.image, reduced, selfcheck)
    full_voxel = min(sgeom.spacing) / (2 if (reduced or selfcheck) else 1)

    def scaled(sp: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if sp is None or not reduced:
            return sp
        return tuple(max(a, b) for a, b in zip(sp, sgeom.spacing))

    fgeom = _grid(spec, sgeom, scaled(spec.fixed_spacing), spec.fixed_origin_shift)
    mgeom = _grid(spec, sgeom, scaled(spec.moving_spacing), None)
    truth = make_truth(spec, fgeom, sgeom, full_voxel)
    f = _sampler(src, sgeom)
    if spec.z_blur:
        clean_fixed = resample_psf(f, fgeom, sgeom, truth.transform_points, spec.z_blur)
        fb = f if src_b is None else _sampler(src_b, sgeom)
        moving = resample_psf(fb, mgeom, sgeom, None, spec.z_blur)
    else:
        clean_fixed = resample(f, fgeom, sgeom, truth.transform_points)
        if src_b is None:
            moving = src.astype(np.float64) if mgeom == sgeom else resample(f, mgeom, sgeom,
                                                                            None)
        else:
            moving = src_b.astype(np.float64) if mgeom == sgeom else resample(
                _sampler(src_b, sgeom), mgeom, sgeom, None)
    if spec.moving_crop < 1.0:
        ax = spec.crop_axis
        n = moving.shape[ax]
        keep = int(round(n * spec.moving_crop))
        start = (n - keep) // 2
        sl = [slice(None)] * moving.ndim
        sl[ax] = slice(start, start + keep)
        moving = moving[tuple(sl)]
        origin = list(mgeom.origin)
        origin[mgeom.ndim - 1 - ax] += start * mgeom.spacing[mgeom.ndim - 1 - ax]
        mgeom = ImageGeometry(moving.shape, mgeom.spacing, tuple(origin), unit=mgeom.unit)
    # scoring: fixed foreground whose truth image lies inside the moving image
    thr = 0.1 * float(np.percentile(clean_fixed, 99))
    fg = clean_fixed > thr
    allpts = _fixed_points(fgeom)
    mapped_all = truth.transform_points(allpts)
    mi = mgeom.physical_to_index(mapped_all)[:, ::-1]
    inside = np.all((mi >= 0) & (mi <= np.asarray(mgeom.shape) - 1), axis=1)
    valid = fg & inside.reshape(fgeom.shape)
    rng = np.random.default_rng(spec.seed + 1000)
    cand = np.argwhere(valid)
    pick = np.sort(rng.choice(len(cand), size=min(N_EVAL, len(cand)), replace=False))
    eval_index = cand[pick].astype(np.float64)
    stride = _jac_stride(fgeom)
    jac_mask = valid[tuple(slice(None, None, s) for s in stride)]
    # appearance, after warping
    arng = np.random.default_rng(spec.seed + 2000)
    fixed = clean_fixed
    if spec.bias:
        fixed = fixed * bias_field(fgeom, spec.bias, arng)
    fixed = remap(fixed, spec.remap)
    if spec.illum or spec.stripes:  # each acquisition lit from its own side
        fixed = fixed * illumination(fgeom, spec.illum, spec.stripes, True,
                                     np.random.default_rng(spec.seed + 5000))
        moving = moving * illumination(mgeom, spec.illum, spec.stripes, False,
                                       np.random.default_rng(spec.seed + 6000))
    if spec.noise:
        mthr = thr if src_b is None else 0.1 * float(np.percentile(moving, 99))
        fixed = _noise(fixed, spec.noise, fg, arng)
        moving = _noise(moving, spec.noise, moving > mthr, arng)
    _write(out / "fixed.ome.zarr", fixed, fgeom, spec)
    _write(out / "moving.ome.zarr", moving, mgeom, spec)
    truth.save(out / "truth.npz")
    np.save(out / "eval_index.npy", eval_index)
    np.save(out / "jac_mask.npy", jac_mask)
    lattice = _lattice(fgeom, stride)
    jac = det_jacobian_lattice(truth.transform_points(lattice), jac_mask.shape,
                               np.asarray(fgeom.spacing) * np.asarray(stride[::-1]), jac_mask)
    u = truth.displacement(lattice)
    meta = {
        "name": tag, "split": spec.split, "digest": digest, "reduced": reduced,
        "spec": dataclasses.asdict(spec),
        "fixed_geometry": _geom_json(fgeom), "moving_geometry": _geom_json(mgeom),
        "jac_stride": list(stride), "n_eval": int(len(eval_index)),
        "foreground_voxels": int(valid.sum()),
        # on the Jacobian lattice (every ~2 mm)
        "truth_max_warp": float(np.linalg.norm(u, axis=1).max()) if len(u) else 0.0,
        "truth_max_total": float(np.linalg.norm(mapped_all - allpts, axis=1).max()),
        "truth_jacobian_min": jac["jacobian_min"],
        "truth_folded_fraction": jac["folded_fraction"],
        "generation_seconds": time.perf_counter() - t0,
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return _load_case(spec, out, meta)


def _lattice(geom: ImageGeometry, stride: tuple[int, ...]) -> FloatArray:
    axes = [np.arange(0, n, s, dtype=np.float64) for n, s in zip(geom.shape, stride)]
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, geom.ndim)
    return geom.array_index_to_physical(idx)


def correlation_ratio(f: np.ndarray, m: np.ndarray, bins: int = 64) -> float:
    """eta^2 of ``f`` given ``m``: Var(E[f | m]) / Var(f), ``m`` in ``bins`` equal bins.

    1 when ``f`` is a function of ``m`` (up to the binning), small when it is not.
    """
    f, m = np.asarray(f, dtype=np.float64), np.asarray(m, dtype=np.float64)
    q = np.clip(((m - m.min()) / max(float(m.max() - m.min()), 1e-12) * bins).astype(int),
                0, bins - 1)
    cnt = np.bincount(q, minlength=bins)
    mean = np.bincount(q, f, bins) / np.maximum(cnt, 1)
    return float((cnt * (mean - f.mean()) ** 2).sum() / max(float(f.var()) * len(f), 1e-30))


def check_case(case: Case, png: Path | None = None) -> dict:
    """Sanity figures of a written case (and a picture of it with ``png``).

    ``eta2_fixed_given_moving``: correlation ratio of the stored fixed image given
    the stored moving image pulled through the truth, at the evaluation points
    (≈ 1 for one contrast up to a monotone remap; well below 1 when the fixed
    intensities are not a function of the moving ones). The picture shows a
    fixed slice (3D: the middle z), the moving image pulled through the truth on
    that slice (should match the fixed one's geometry) and a moving slice.
    """
    from data import _read_level

    def linear(arr: np.ndarray, g: ImageGeometry, pts: FloatArray) -> np.ndarray:
        idx = g.physical_to_index(pts)[:, ::-1]
        return ndimage.map_coordinates(arr, idx.T, order=1, mode="constant", cval=0.0)

    fixed, moving = _read_level(case.fixed), _read_level(case.moving)
    pts = case.eval_points
    fv = linear(fixed, case.geometry, pts)
    mv = linear(moving, case.moving_geometry, case.truth.transform_points(pts))
    out = {"eta2_fixed_given_moving": correlation_ratio(fv, mv),
           "eta2_moving_given_fixed": correlation_ratio(mv, fv),
           "n_eval": int(len(pts)), "truth_jacobian_min": case.meta["truth_jacobian_min"],
           "truth_max_warp": case.meta["truth_max_warp"]}
    if png is not None:
        import skimage.io

        g = case.geometry
        sl = (g.shape[0] // 2,) if g.ndim == 3 else ()
        axes = [np.arange(n, dtype=np.float64) for n in g.shape[len(sl):]]
        idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
        if sl:
            idx = np.concatenate([np.full((len(idx), 1), float(sl[0])), idx], axis=1)
        shape = g.shape[len(sl):]
        pulled = linear(moving, case.moving_geometry,
                        case.truth.transform_points(g.array_index_to_physical(idx)))
        panels = [fixed[sl] if sl else fixed, pulled.reshape(shape),
                  moving[moving.shape[0] // 2] if sl else moving]
        h = max(p.shape[0] for p in panels)
        row = []
        for p in panels:
            v = np.zeros((h, p.shape[1]), np.uint8)
            v[:p.shape[0]] = np.clip(p / max(float(np.percentile(p, 99.8)), 1e-9) * 255, 0, 255)
            row.append(v)
        skimage.io.imsave(str(png), np.concatenate(row, axis=1), check_contrast=False)
    return out


def main() -> None:
    """List the cases, or write some."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--make", default=None, help="comma list of case names, or 'all'")
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--reduced", action="store_true")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--check", type=Path, default=None,
                    help="after --make: print sanity figures, write a PNG per case here")
    args = ap.parse_args()
    if args.list or not args.make:
        for c in CASES + SELFCHECK_CASES:
            print(f"{c.name:22s} {c.split:10s} {c.tests}")
    if args.make:
        names = case_names() if args.make == "all" else args.make.split(",")
        for n in names:
            case = make_case(n.strip(), args.root, reduced=args.reduced,
                             overwrite=args.overwrite)
            m = case.meta
            print(f"{case.name}: fixed {m['fixed_geometry']['shape']} "
                  f"{m['fixed_geometry']['spacing']}, moving {m['moving_geometry']['shape']}, "
                  f"warp max {m['truth_max_warp']:.2f}, total max {m['truth_max_total']:.2f}, "
                  f"truth det J min {m['truth_jacobian_min']:.3f}, "
                  f"{m['n_eval']} points, {m['generation_seconds']:.1f} s", flush=True)
            if args.check is not None:
                args.check.mkdir(parents=True, exist_ok=True)
                c = check_case(case, args.check / f"{case.name}.png")
                print(f"    eta2(fixed | moving) {c['eta2_fixed_given_moving']:.3f}, "
                      f"eta2(moving | fixed) {c['eta2_moving_given_fixed']:.3f}", flush=True)


if __name__ == "__main__":
    main()
