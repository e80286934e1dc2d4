import pickle

import numpy as np
import pytest

from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.itk_bridge import transform_points
from ngff_dreg.transforms import AffineTransform, DisplacementField, TransformChain


def _chain(affine_first: bool) -> tuple[TransformChain, ImageGeometry]:
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    g = ImageGeometry((12, 14, 16), (1.0, 2.0, 3.0), (5.0, 6.0, 7.0), direction)
    rng = np.random.default_rng(0)
    field = DisplacementField(g, data=rng.standard_normal((3, *g.shape)))
    affine = AffineTransform.from_arrays(np.eye(3) * 1.01, [0.5, -0.2, 0.1])
    return TransformChain(affine, field, affine_first), g


def test_chain_matches_itk_composite_both_orders():
    for affine_first in (False, True):
        chain, g = _chain(affine_first)
        rng = np.random.default_rng(1)
        pts = g.index_to_physical(rng.uniform(2, 10, (40, 3)))
        ours = chain.transform_points(pts)
        theirs = transform_points(chain.to_itk(), pts)
        np.testing.assert_allclose(ours, theirs, atol=1e-9)
        cropped = transform_points(chain.to_itk(near_points=pts), pts)
        np.testing.assert_allclose(ours, cropped, atol=1e-9)


def test_chain_pickles_and_affine_algebra():
    chain, g = _chain(False)
    back = pickle.loads(pickle.dumps(chain))
    pts = g.index_to_physical(np.full((1, 3), 3.0))
    np.testing.assert_allclose(back.transform_points(pts), chain.transform_points(pts))
    a = chain.affine
    np.testing.assert_allclose(a.then(a.inverse()).homogeneous, np.eye(4), atol=1e-12)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("same_direction", [True, False])
def test_bspline_grid_on_a_lattice_equals_pointwise(ndim: int, same_direction: bool) -> None:
    """The tensor-product evaluation (or its fallback) matches point-wise evaluation."""
    from ngff_dreg.synthetic import small_rotation
    from ngff_dreg.transforms import BSplineGrid

    d = small_rotation(ndim, 10.0)
    geom = ImageGeometry((20, 17, 23)[:ndim], (0.9, 1.1, 1.3)[:ndim], (3.0, -2.0, 1.0)[:ndim], d)
    sp = (np.asarray(geom.size) - 1) * np.asarray(geom.spacing) / 4
    fp = np.concatenate([np.full(ndim, 7), np.asarray(geom.origin) - d @ sp, sp, d.ravel()])
    grid = BSplineGrid(fp, np.random.default_rng(0).standard_normal((7**ndim, ndim)))
    fdir = d if same_direction else np.eye(ndim)
    nodes = ImageGeometry((13, 11, 9)[:ndim], (2.0, 2.1, 2.2)[:ndim], (1.0, -4.0, 0.0)[:ndim],
                          fdir)
    got = grid.displacement_on_grid(nodes)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in nodes.shape], indexing="ij"), -1)
    pts = nodes.array_index_to_physical(idx.reshape(-1, ndim).astype(float))
    want = grid.displacement(pts)[:, ::-1].T.reshape((ndim, *nodes.shape))
    assert np.abs(want).max() > 0.5 and (np.abs(want) < 1e-12).any()  # inside and outside
    np.testing.assert_allclose(got, want, atol=1e-12)
