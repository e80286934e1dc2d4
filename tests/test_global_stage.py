"""The global stage: robust starts, the similarity choice and the metric it reports."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.global_stage import (
    AUTO_MIN_MODEL_NCC,
    AUTO_MIN_NCC,
    AUTO_MIN_RANK,
    MIN_GLOBAL_SIMILARITY,
    _align_arrays,
    _centre_of_mass,
    _not_worse,
    _Scorer,
    choose_similarity,
    foreground,
    model_ncc,
    rank_agreement,
    similarity_arrays,
)
from ngff_dreg.transforms import AffineTransform


def _tissues(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = sum(g**2 for g in grids) < 0.5
    a = (ndimage.gaussian_filter(rng.standard_normal(shape), 3.0) > 0) & body
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), 4.0)
    b = (smooth > 0.5 * smooth.std()) & body
    return body, a, b


def test_the_foreground_centre_ignores_opposite_attenuation() -> None:
    shape = (120, 140)
    geom = ImageGeometry(shape, (1.0, 1.0), (0.0, 0.0))
    body, a, b = _tissues(shape)
    img = ndimage.gaussian_filter(0.3 * body + a + 0.5 * b, 1.0)
    x = np.linspace(0, 1, shape[1])[None, :]
    left, right = img * np.exp(-3.0 * x), img * np.exp(-3.0 * (1 - x))
    plain = np.linalg.norm(_centre_of_mass(left, geom) - _centre_of_mass(right, geom))
    robust = np.linalg.norm(_centre_of_mass(left, geom, True) - _centre_of_mass(right, geom, True))
    assert plain > 15.0  # the lighting pulls the centres of mass apart
    assert robust < 2.0, robust
    mask = foreground(left, geom)
    assert abs(mask.sum() - body.sum()) < 0.15 * body.sum()


def test_the_model_ncc_tells_a_remap_from_another_contrast() -> None:
    shape = (100, 110)
    geom = ImageGeometry(shape, (1.0, 1.0), (0.0, 0.0))
    body, a, b = _tissues(shape, 1)
    # b is invisible in t1 and as dark as the background in t2: where t2 is dark,
    # t1 is either background or tissue (no function of t2 predicts t1)
    t1 = ndimage.gaussian_filter(0.3 * body + a, 0.8)
    remap = np.sqrt(t1)
    t2 = ndimage.gaussian_filter(0.8 * (body & ~a & ~b) + 0.25 * a, 0.8)
    ident = AffineTransform.identity(2)
    same = model_ncc(t1, geom, remap, geom, ident)
    other = model_ncc(t1, geom, t2, geom, ident)
    assert same > 0.99
    assert other < AUTO_MIN_MODEL_NCC
    assert choose_similarity(same) == "intensity"
    assert choose_similarity(other) == "mind"
    assert choose_similarity(float("nan")) == "mind"
    assert choose_similarity(0.9, 0.95) == "intensity"  # same contrast, misaligned
    assert choose_similarity(0.9, 0.5) == "mind"
    # what a MIND stage reports: higher at the truth than off it
    shifted = AffineTransform.from_arrays(np.eye(2), np.array([3.0, 0.0]))
    assert similarity_arrays(t1, geom, t2, geom, ident, "mind") > \
        similarity_arrays(t1, geom, t2, geom, shifted, "mind") + 0.05


def test_the_rank_check_tells_tissues_that_swap_order_inside_a_dark_background() -> None:
    """Two tissues whose brightness order swaps (T1 against FLAIR: white matter
    brighter than grey in one, darker in the other) in an object on a dark
    background: at a coarse level the background and the outline lift both NCCs
    over their thresholds, and only the order inside the object tells the
    contrasts apart. A remap with a bias keeps the order."""
    shape = (160, 180)
    geom = ImageGeometry(shape, (1.0, 1.0), (0.0, 0.0))
    body, a, _ = _tissues(shape, 4)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    body = sum(g**2 for g in grids) < 0.3  # small enough to leave a wide dark background
    t1 = ndimage.gaussian_filter(body * (0.45 + 0.55 * a), 3.0)  # a: white matter
    flair = ndimage.gaussian_filter(body * (0.85 - 0.35 * a), 3.0)
    bias = 1.0 + 0.2 * grids[1]
    remap = np.sqrt(t1) * bias
    ident = AffineTransform.identity(2)
    explained = model_ncc(t1, geom, flair, geom, ident)
    plain = similarity_arrays(t1, geom, flair, geom, ident, "intensity")
    assert explained > AUTO_MIN_MODEL_NCC or plain > AUTO_MIN_NCC  # the NCCs are fooled
    rank = rank_agreement(t1, geom, flair, geom, ident)
    assert rank < AUTO_MIN_RANK, rank
    assert choose_similarity(explained, plain, rank) == "mind"
    same = rank_agreement(t1, geom, remap, geom, ident)
    assert same > 0.9, same
    assert choose_similarity(model_ncc(t1, geom, remap, geom, ident), 0.0, same) == "intensity"
    assert choose_similarity(0.99, 0.99, float("nan")) == "mind"


def test_the_multi_start_finds_an_object_that_fills_the_view_under_uneven_light() -> None:
    """Moments are pulled by the lighting; the geometric centres are right here."""
    shape = (128, 128)
    geom = ImageGeometry(shape, (1.0, 1.0), (0.0, 0.0))
    rng = np.random.default_rng(2)
    tex = ndimage.gaussian_filter(rng.standard_normal((160, 160)), 2.0)
    tex = tex - tex.min() + 0.2
    x = np.linspace(0, 1, shape[1])[None, :]
    fixed = tex[16:144, 16:144] * np.exp(-2.5 * x)
    moving = tex[19:147, 14:142] * np.exp(-2.5 * (1 - x))  # shifted by (3, -2) voxels
    truth = np.array([2.0, -3.0])  # fixed -> moving, ITK order (x, y)
    got = _align_arrays(fixed.astype(np.float32), geom, moving.astype(np.float32), geom, None,
                        "multi", ("rigid",), "mattes", 30, "gauss-newton", "mind")
    centre = np.array([63.5, 63.5])
    err = np.linalg.norm(got.A @ centre + got.t - (centre + truth))
    assert err < 0.5, (got.A, got.t)


def test_the_stage_never_returns_a_transform_its_metric_scores_below_its_start() -> None:
    """A fit that ends lower than a start, by the stage's own measure, gives way to it."""
    shape = (96, 96)
    geom = ImageGeometry(shape, (1.0, 1.0), (0.0, 0.0))
    body, a, b = _tissues(shape, 3)
    fixed = ndimage.gaussian_filter(0.3 * body + a + 0.5 * b, 1.0).astype(np.float32)
    moving = np.roll(fixed, (2, -3), axis=(0, 1))  # fixed -> moving: (-3, +2) in x, y
    right = AffineTransform.from_arrays(np.eye(2), np.array([-3.0, 2.0]))
    wrong = AffineTransform.from_arrays(np.eye(2), np.array([9.0, -7.0]))
    for sim in ("intensity", "mind"):
        score = _Scorer(fixed, geom, moving, geom, sim)
        assert _not_worse(score, wrong, [("start", right)]) is right
        assert _not_worse(score, right, [("start", wrong)]) is right


def test_a_pair_sharing_no_structure_is_left_as_it_lies() -> None:
    """Below MIN_GLOBAL_SIMILARITY the best MIND fit is noise: the centred start is kept."""
    shape = (96, 96)
    geom = ImageGeometry(shape, (1.0, 1.0), (0.0, 0.0))
    rng = np.random.default_rng(7)
    fixed = (1.0 + ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)).astype(np.float32)
    moving = (1.0 + ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)).astype(np.float32)
    score = _Scorer(fixed, geom, moving, geom, "mind")
    lie = AffineTransform.from_arrays(np.eye(2), np.zeros(2))
    off = AffineTransform.from_arrays(np.eye(2), np.array([-2.0, -7.0]))
    assert max(score(lie), score(off)) < MIN_GLOBAL_SIMILARITY
    assert score(off) > score(lie) + 1e-4  # without the gate the fit would be kept
    assert _not_worse(score, off, [("start", off), ("images as they lie", lie)]) is lie
    # a pair that shares structure keeps its better fit
    body, a, b = _tissues(shape, 3)
    img = ndimage.gaussian_filter(0.3 * body + a + 0.5 * b, 1.0).astype(np.float32)
    shared = _Scorer(img, geom, np.roll(img, (2, -3), axis=(0, 1)), geom, "mind")
    right = AffineTransform.from_arrays(np.eye(2), np.array([-3.0, 2.0]))
    assert shared(right) > MIN_GLOBAL_SIMILARITY
    assert _not_worse(shared, right, [("images as they lie", lie)]) is right


def test_level_arrays_divide_streaks_out_unless_told_not_to() -> None:
    """Both levels as the global stage reads them: streaks along x removed with "auto"."""
    from ngff_dreg.fitting.destripe import stripe_correlations
    from ngff_dreg.global_stage import _level_arrays

    shape = (120, 140)
    body, a, b = _tissues(shape, 4)
    img = ndimage.gaussian_filter(0.3 * body + a + 0.5 * b, 1.0) + 0.05
    rng = np.random.default_rng(2)
    streaks = np.exp(0.2 * ndimage.gaussian_filter(rng.standard_normal(shape[0]), 1.0)
                     / 0.28)[:, None]
    striped = (1000 * img * streaks).astype(np.float32)

    class Reader:
        geometry = ImageGeometry(shape, (1.0, 1.0), (0.0, 0.0))

        def __call__(self) -> Reader:
            return self

        def read_box(self, box: object) -> np.ndarray:
            return striped

    assert stripe_correlations(striped)[1] > 0.15
    fixed, moving = _level_arrays(Reader(), Reader(), "auto")
    assert stripe_correlations(fixed)[1] < 0.15 and stripe_correlations(moving)[1] < 0.15
    kept, _ = _level_arrays(Reader(), Reader(), "off")
    np.testing.assert_array_equal(kept, striped)


def test_the_intensity_refit_moves_a_start_off_the_optimum_back_to_it() -> None:
    """After ``auto`` picks the intensity model, the stage is refitted with it.

    Started from a transform off the pair's optimum (as a MIND fit can be for
    the intensity model), the refit returns one with a higher NCC, close to the
    known shift; started from the optimum, it keeps a transform as good.
    """
    from ngff_dreg.global_stage import (
        _centres_translation,
        _intensity_refit,
        auto_similarity_task,
    )
    from ngff_dreg.schedule import GlobalStage

    shape = (96, 96)
    geom = ImageGeometry(shape, (1.0, 1.0), (0.0, 0.0))
    body, a, b = _tissues(shape, 3)
    fixed = ndimage.gaussian_filter(0.3 * body + a + 0.5 * b, 1.0).astype(np.float32)
    moving = np.sqrt(np.roll(fixed, (2, -3), axis=(0, 1)))  # a remap: the same contrast

    class Reader:
        def __init__(self, arr: np.ndarray) -> None:
            self.arr, self.geometry = arr, geom

        def __call__(self) -> Reader:
            return self

        def read_box(self, box: object) -> np.ndarray:
            return self.arr

    stage = GlobalStage(similarity="auto", initializer="multi", kinds=("rigid", "affine"))
    right = np.array([-3.0, 2.0])
    off = AffineTransform.from_arrays(np.eye(2), right + np.array([1.5, -1.0]))
    score = _Scorer(fixed, geom, moving, geom, "intensity")
    lie = _centres_translation(geom, geom)
    kept, start, ncc_off, ncc_kept, name = _intensity_refit(score, stage, off, lie)
    assert ncc_kept > ncc_off + 0.01 and ncc_off > start
    assert name != "the MIND fit"
    centre = np.array([[48.0, 48.0]])
    assert np.abs(kept.transform_points(centre) - (centre + right)).max() < 0.3
    exact = AffineTransform.from_arrays(np.eye(2), right)
    again = _intensity_refit(score, stage, exact, lie)
    assert again[3] >= _Scorer(fixed, geom, moving, geom, "intensity")(exact) - 1e-6
    # the runner's task: the choice and the refit from one read of both levels
    similarity, (_, ncc, rank), refit = auto_similarity_task(Reader(fixed), Reader(moving),
                                                             stage, exact)
    assert similarity == "intensity" and refit is not None
    assert rank > 0.9  # a square root keeps the order of the intensities
    assert ncc == pytest.approx(score(exact)) and refit[3] >= ncc - 1e-6
