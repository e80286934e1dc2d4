"""itk_bridge: arrays + geometry <-> itk.Image, transforms, readers and files, round trips."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import itk
import numpy as np
import pytest

from ngff_dreg import itk_bridge as ib
from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.io.omezarr.memory import ArrayReaderConstructor
from ngff_dreg.synthetic import small_rotation


def _oblique(ndim: int = 3) -> ImageGeometry:
    shape = (12, 14, 10)[:ndim]
    return ImageGeometry(shape, (0.7, 1.1, 1.3)[:ndim], (3.0, -2.0, 5.0)[:ndim],
                         small_rotation(ndim, 20))


@pytest.mark.parametrize("ndim", [2, 3])
def test_image_round_trip_keeps_geometry_and_regions(ndim: int) -> None:
    geom = _oblique(ndim)
    rng = np.random.default_rng(ndim)
    full = rng.random(geom.shape).astype(np.float32)
    box = Box((2,) * ndim, tuple(s - 1 for s in geom.shape))
    inner = Box((3,) * ndim, tuple(s - 2 for s in geom.shape))
    image = ib.image_from_array(full[box.slices], geom, box, requested=inner)
    assert ib.box_from_region(image.GetBufferedRegion()) == box
    assert ib.box_from_region(image.GetRequestedRegion()) == inner
    np.testing.assert_array_equal(itk.array_view_from_image(image), full[box.slices])
    whole = ib.geometry_of(ib.image_from_array(full, geom))
    assert whole.shape == geom.shape
    np.testing.assert_allclose(whole.spacing, geom.spacing)
    np.testing.assert_allclose(whole.origin, geom.origin)
    np.testing.assert_allclose(whole.direction_matrix, geom.direction_matrix, atol=1e-12)
    sub = ib.geometry_of(image, "buffered")
    np.testing.assert_allclose(sub.origin, geom.sub(box.slices).origin)
    assert sub.shape == box.shape
    with pytest.raises(ValueError, match="does not match box"):
        ib.image_from_array(full, geom, box)


def test_metadata_image_has_no_voxels_and_regions_round_trip() -> None:
    geom = _oblique()
    image = ib.metadata_image(geom)
    assert ib.geometry_of(image).shape == geom.shape
    assert int(image.GetBufferedRegion().GetNumberOfPixels()) == 0
    box = Box((1, 2, 3), (4, 6, 9))
    assert ib.box_from_region(ib.itk_region(box)) == box
    assert list(ib.itk_region(box).GetSize()) == [6, 4, 3]  # ITK order


def test_affine_round_trip_and_linear_transforms() -> None:
    rng = np.random.default_rng(0)
    m = np.eye(3) + 0.05 * rng.standard_normal((3, 3))
    t = rng.standard_normal(3)
    tx = ib.affine_to_itk(m, t)
    m2, o2 = ib.itk_to_affine(tx)
    np.testing.assert_allclose(m2, m)
    np.testing.assert_allclose(o2, t)
    shift = itk.TranslationTransform[itk.D, 3].New()
    shift.SetOffset([1.0, 2.0, 3.0])
    composite = ib.composite_transform([tx, shift], 3)  # the shift acts first
    pts = rng.standard_normal((5, 3))
    np.testing.assert_allclose(ib.transform_points(composite, pts),
                               (pts + np.array([1.0, 2.0, 3.0])) @ m.T + t)
    np.testing.assert_allclose(ib.itk_to_affine(shift)[1], [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="not a linear transform"):
        ib.itk_to_affine(itk.BSplineTransform[itk.D, 3, 3].New())
    assert ib.class_name(shift) == "TranslationTransform"
    assert ib.class_name(object()) == ""


def test_displacement_field_round_trip() -> None:
    geom = _oblique()
    rng = np.random.default_rng(3)
    field = rng.standard_normal((3, *geom.shape))
    tx = ib.displacement_field_to_itk(field, geom)
    back, g = ib.field_from_itk(tx)
    np.testing.assert_allclose(back, field)
    np.testing.assert_allclose(g.origin, geom.origin)
    # at a node the transform adds the (ITK-order) vector
    node = geom.array_index_to_physical(np.array([[2.0, 3.0, 4.0]]))
    moved = ib.transform_points(tx, node)
    np.testing.assert_allclose(moved - node, field[:, 2, 3, 4][::-1][None], atol=1e-9)
    with pytest.raises(ValueError, match="does not match"):
        ib.displacement_field_to_itk(field[:2], geom)


def _bspline() -> Any:
    geom = ImageGeometry((10, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    tx = itk.BSplineTransform[itk.D, 3, 3].New()
    init = itk.BSplineTransformInitializer[type(tx), itk.Image[itk.F, 3]].New()
    init.SetTransform(tx)
    init.SetImage(ib.image_from_array(np.zeros(geom.shape, np.float32), geom))
    init.SetTransformDomainMeshSize([2, 2, 2])
    init.InitializeTransform()
    params = np.random.default_rng(4).standard_normal(tx.GetNumberOfParameters())
    tx.SetParameters(itk.OptimizerParameters[itk.D](params.tolist()))
    return tx, params


def test_bspline_parameters_and_kind() -> None:
    tx, params = _bspline()
    assert ib.is_cubic_bspline(tx)
    assert not ib.is_cubic_bspline(ib.affine_to_itk(np.eye(3), np.zeros(3)))
    assert not ib.is_cubic_bspline(object())
    fixed, got, ndim = ib.bspline_parameters(tx)
    assert ndim == 3
    np.testing.assert_allclose(got, params)
    np.testing.assert_allclose(fixed, np.asarray(tx.GetFixedParameters()))


def test_point_map_evaluates_and_pickles_itk_transforms() -> None:
    tx, _ = _bspline()
    pts = np.random.default_rng(5).uniform(2, 7, (20, 3))
    pm = ib.ItkPointMap(tx)
    np.testing.assert_allclose(pm.transform_points(pts), ib.transform_points(tx, pts))
    again = pickle.loads(pickle.dumps(pm))
    np.testing.assert_allclose(again.transform_points(pts), pm.transform_points(pts))
    assert "BSplineTransform" in repr(pm)


class _ItkStyleCtor:
    """An itk-dreg constructor: an ITK reader only (no geometry, no read_box)."""

    def __init__(self, array: np.ndarray, geometry: ImageGeometry) -> None:
        self.array, self.geometry_ = array, geometry

    def __call__(self) -> Any:
        array, geom = self.array, self.geometry_

        class Reader:
            def __init__(self) -> None:
                self.image = ib.metadata_image(geom)

            def GetOutput(self) -> Any:
                return self.image

            def UpdateOutputInformation(self) -> None:
                pass

            def Update(self) -> None:
                box = ib.box_from_region(self.image.GetRequestedRegion())
                full = ib.image_from_array(array.astype(np.float32), geom)
                self.image = full
                self.image.SetRequestedRegion(ib.itk_region(box))

        return Reader()


def test_readers_of_both_kinds() -> None:
    geom = _oblique()
    array = np.random.default_rng(6).random(geom.shape).astype(np.float32)
    ours = ArrayReaderConstructor(array, geom)
    theirs = _ItkStyleCtor(array, geom)
    for ctor in (ours, theirs):
        g = ib.reader_geometry(ctor)
        assert g.shape == geom.shape
        np.testing.assert_allclose(g.origin, geom.origin)
    box = Box((1, 2, 3), (5, 9, 8))
    np.testing.assert_array_equal(ib.read_region(ours(), box), array[box.slices])
    np.testing.assert_array_equal(ib.read_region(theirs(), box), array[box.slices])


def test_load_region_and_portable_domain() -> None:
    geom = _oblique()
    image = ib.metadata_image(geom)
    box = Box((2, 3, 1), (6, 8, 5))
    data = np.arange(np.prod(box.shape), dtype=np.float32).reshape(box.shape)
    ib.load_region(image, box, data)
    np.testing.assert_array_equal(itk.array_view_from_image(image), data)
    domain = ib.metadata_image(geom.sub(box.slices))
    shifted = ib.image_from_array(data, geom, box)  # region index (1, 3, 2): not portable
    portable = ib.portable_domain(shifted)
    assert list(portable.GetLargestPossibleRegion().GetIndex()) == [0, 0, 0]
    g1, g2 = ib.geometry_of(portable), ib.geometry_of(shifted)
    np.testing.assert_allclose(g1.origin, g2.origin)
    assert g1.shape == g2.shape
    assert ib.portable_domain(domain) is domain  # already index 0
    assert ib.portable_domain(None) is None


def test_files(tmp_path: Path) -> None:
    geom = _oblique()
    vectors = np.random.default_rng(7).random((*geom.shape, 3)).astype(np.float32)
    path = str(tmp_path / "field.nrrd")
    ib.write_vector_image(vectors, geom, path)
    back = itk.imread(path)
    np.testing.assert_allclose(itk.array_from_image(back), vectors)
    np.testing.assert_allclose(np.asarray(back.GetOrigin()), geom.origin)
    scalar = str(tmp_path / "img.nrrd")
    itk.imwrite(ib.image_from_array(vectors[..., 0], geom), scalar)
    np.testing.assert_array_equal(ib.read_image_array(scalar), vectors[..., 0])
    tfm = str(tmp_path / "t.tfm")
    ib.write_transform_file([ib.affine_to_itk(2 * np.eye(3), np.ones(3))], tfm)
    m, o = ib.itk_to_affine(itk.transformread(tfm)[0])
    np.testing.assert_allclose(m, 2 * np.eye(3))
    np.testing.assert_allclose(o, np.ones(3))


def test_preload_and_plain_sequences() -> None:
    ib.preload_itk()
    ib.preload_itk()  # idempotent
    assert ib.seq(np.array([1, 2])) == [1.0, 2.0]
    assert all(type(v) is float for v in ib.seq(np.array([1, 2])))
