"""Drop-in for itk-dreg: its own methods and its own test scenarios through ``ngff_dreg``.

Runs the real itk-dreg 0.0.1 (the ``itk-dreg`` wheel from PyPI, in the test
extra): plug-ins declared ``__call__(self, **kwargs)`` that return itk-dreg's
own result classes, its elastix block method and its displacement-field
reducer, on threads and on a 2-process cluster. Two scenarios follow
itk-dreg's ``test_scheduler.py`` and ``test_elx_integration.py`` with
``itk_dreg.register.register_images`` swapped for ``ngff_dreg.register_images``
(on small images made here, not itk-dreg's test data).

itk-dreg 0.0.1 calls ``np.product``, which NumPy 2 removed; the fixtures
below give NumPy that alias for the duration of a test only (in this process
and on the cluster's workers).
"""

import functools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import dask
import itk
import itk_dreg.itk
import numpy as np
import pytest
from itk_dreg.base.image_block_interface import (
    BlockPairRegistrationResult,
    BlockRegStatus,
    RegistrationTransformResult,
)
from itk_dreg.base.registration_interface import (
    BlockPairRegistrationMethod,
    ReduceResultsMethod,
)
from itk_dreg.elastix.register import ElastixDRegBlockPairRegistrationMethod
from itk_dreg.elastix.serialize import parameter_object_to_list
from itk_dreg.reduce_dfield.dreg import ReduceToDisplacementFieldMethod

import ngff_dreg
from ngff_dreg.geometry import ImageGeometry
from ngff_dreg.io.omezarr.image_writer import write_multiscale
from ngff_dreg.synthetic import small_rotation, textured_phantom, warp_to_fixed
from ngff_dreg.transforms import AffineTransform

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SHIFT = np.array([1.5, -1.0, 0.75])  # truth: fixed→moving translation (x, y, z)


# --------------------------------------------------------------- np.product for itk-dreg
def _set_np_product(on: bool) -> bool:
    """Add (``on``) or remove NumPy's ``product`` alias; True when something changed."""
    import numpy

    if on and not hasattr(numpy, "product"):
        numpy.product = numpy.prod  # type: ignore[attr-defined]
        return True
    if not on and "product" in vars(numpy):
        del numpy.product
        return True
    return False


@pytest.fixture
def np_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """``np.product`` (removed in NumPy 2) in this process, for this test only."""
    if not hasattr(np, "product"):
        monkeypatch.setattr(np, "product", np.prod, raising=False)


@pytest.fixture
def cluster(dask_client: Any, np_product: None) -> Iterator[Any]:
    """The 2-process test cluster, its workers given ``np.product`` for this test only."""
    added = dask_client.run(_set_np_product, True)
    try:
        yield dask_client
    finally:
        changed = [w for w, a in added.items() if a]
        if changed:
            dask_client.run(_set_np_product, False, workers=changed)


# --------------------------------------------------------------- methods, the itk-dreg way
def _constant_domain() -> Any:
    domain = itk.Image[itk.F, 3].New()
    domain.SetRegions([10] * 3)
    return domain


class ConstantBlockMethod(BlockPairRegistrationMethod):
    """Returns one itk-dreg result (an identity translation) for every block."""

    def __init__(self) -> None:
        self.result = BlockPairRegistrationResult(
            transform=itk.TranslationTransform[itk.D, 3].New(),
            transform_domain=_constant_domain(),
            inv_transform=None,
            inv_transform_domain=None,
            status=BlockRegStatus.SUCCESS,
        )

    def __call__(self, **kwargs):
        return self.result


class CountingBlockMethod(ConstantBlockMethod):
    """Counts its calls (in the process that runs them)."""

    num_calls = 0

    def __call__(self, **kwargs):
        self.num_calls += 1
        return super().__call__(**kwargs)


class ConstantReduceMethod(ReduceResultsMethod):
    """Returns one itk-dreg transform result whatever the blocks gave."""

    def __init__(self) -> None:
        self.result = RegistrationTransformResult(
            transform=itk.TranslationTransform[itk.D, 3].New(), inv_transform=None
        )

    def __call__(self, **kwargs):
        return self.result


class CountingReduceMethod(ConstantReduceMethod):
    """Counts its calls."""

    num_calls = 0

    def __call__(self, **kwargs):
        self.num_calls += 1
        return super().__call__(**kwargs)


# --------------------------------------------------------------- images
@pytest.fixture(scope="module")
def head_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A small phantom "head" and a rigidly moved copy, as uncompressed .mha files.

    The fixed image's first 10 z-slices are blank, so the first block of a
    (10, 100, 100) block grid has no signal.
    """
    d = tmp_path_factory.mktemp("head")
    g = ImageGeometry((30, 48, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    head = textured_phantom(g.shape, seed=5, texture=0.2)
    rigid = AffineTransform.from_arrays(small_rotation(3, 4.0), np.array([1.0, -2.0, 0.5]))
    moved = warp_to_fixed(head, g, g, rigid)
    head[:10] = 0.0
    paths = []
    for name, arr in (("head", head), ("head_rigid", moved)):
        path = str(d / f"{name}.mha")
        itk.imwrite(itk.image_from_array(np.ascontiguousarray(arr)), path, compression=False)
        paths.append(path)
    return paths[0], paths[1]


def _readers(fixed: str, moving: str) -> tuple[Any, Any]:
    """itk-dreg's own reader constructors (``itk.ImageFileReader``)."""
    return (
        functools.partial(itk_dreg.itk.make_reader, filepath=fixed),
        functools.partial(itk_dreg.itk.make_reader, filepath=moving),
    )


# --------------------------------------------------------------- itk-dreg's test_scheduler.py
def test_scheduler_single_threaded_calls_every_block(head_files, np_product):
    fixed_reader_ctor, moving_reader_ctor = _readers(*head_files)
    register_method = CountingBlockMethod()
    reduce_method = CountingReduceMethod()
    with dask.config.set(scheduler="single-threaded"):
        registration_graph = ngff_dreg.register_images(
            fixed_chunk_size=(10, 100, 100),
            initial_transform=itk.TranslationTransform[itk.D, 3].New(),
            moving_reader_ctor=moving_reader_ctor,
            fixed_reader_ctor=fixed_reader_ctor,
            block_registration_method=register_method,
            reduce_method=reduce_method,
            overlap_factors=[0.1] * 3,
        )
        registration_result = registration_graph.registration_result.compute()
    assert registration_graph.fixed_da.numblocks == (3, 1, 1)  # one of them blank
    assert register_method.num_calls == np.prod(registration_graph.fixed_da.numblocks)
    assert reduce_method.num_calls == 1
    assert registration_result.status.shape == registration_graph.fixed_da.numblocks
    assert registration_result.transforms is reduce_method.result


def test_scheduler_threads_skip_only_when_asked(head_files, np_product):
    fixed_reader_ctor, moving_reader_ctor = _readers(*head_files)
    register_method = CountingBlockMethod()
    graph = ngff_dreg.register_images(
        fixed_chunk_size=(10, 100, 100),
        initial_transform=itk.TranslationTransform[itk.D, 3].New(),
        moving_reader_ctor=moving_reader_ctor,
        fixed_reader_ctor=fixed_reader_ctor,
        block_registration_method=register_method,
        reduce_method=CountingReduceMethod(),
        overlap_factors=[0.1] * 3,
        skip_blank_blocks=True,
    )
    result = graph.registration_result.compute(scheduler="threads")
    assert register_method.num_calls == 2
    assert result.status.ravel().tolist() == [
        ngff_dreg.BlockRegStatus.NO_SIGNAL, BlockRegStatus.SUCCESS, BlockRegStatus.SUCCESS
    ]


@pytest.mark.cluster
def test_scheduler_local_cluster(head_files, cluster):
    fixed_reader_ctor, moving_reader_ctor = _readers(*head_files)
    registration_graph = ngff_dreg.register_images(
        fixed_chunk_size=(10, 100, 100),
        initial_transform=itk.TranslationTransform[itk.D, 3].New(),
        moving_reader_ctor=moving_reader_ctor,
        fixed_reader_ctor=fixed_reader_ctor,
        block_registration_method=ConstantBlockMethod(),
        reduce_method=ConstantReduceMethod(),
        overlap_factors=[0.1] * 3,
    )
    with cluster.as_current():  # compute() on the cluster, as with itk-dreg's default client
        registration_result = registration_graph.registration_result.compute()
    assert registration_result.status.shape == registration_graph.fixed_da.numblocks
    assert np.all(registration_result.status == BlockRegStatus.SUCCESS)
    assert isinstance(registration_result.transforms, RegistrationTransformResult)


# --------------------------------------------------------------- itk-dreg's test_elx_integration.py
def test_elastix_integration(tmp_path: Path, np_product):
    fixed_arr = np.ones([20, 40, 40], dtype=np.float32)
    moving_arr = np.random.default_rng(0).random([10, 20, 20]).astype(np.float32)
    register_method = ElastixDRegBlockPairRegistrationMethod()
    reduce_method = CountingReduceMethod()
    fixed_path, moving_path = str(tmp_path / "fixed_image.mha"), str(tmp_path / "moving.mha")
    itk.imwrite(itk.image_view_from_array(fixed_arr), fixed_path, compression=False)
    moving_image = itk.image_view_from_array(moving_arr)
    moving_image.SetSpacing([2] * 3)
    itk.imwrite(moving_image, moving_path, compression=False)

    def fixed_cb():
        return itk_dreg.itk.make_reader(fixed_path)

    def moving_cb():
        return itk_dreg.itk.make_reader(moving_path)

    parameter_object = itk.ParameterObject.New()
    parameter_object.AddParameterMap(parameter_object.GetDefaultParameterMap("rigid"))
    with dask.config.set(scheduler="single-threaded"):
        registration_schedule = ngff_dreg.register_images(
            fixed_chunk_size=(10, 20, 100),
            initial_transform=itk.TranslationTransform[itk.D, 3].New(),
            moving_reader_ctor=moving_cb,
            fixed_reader_ctor=fixed_cb,
            reduce_method=reduce_method,
            overlap_factors=[0.1] * 3,
            block_registration_method=register_method,
            elx_parameter_object_serial=parameter_object_to_list(parameter_object),
            itk_transform_types=[itk.Euler3DTransform[itk.D]],
        )
        registration_result = registration_schedule.registration_result.compute()
    assert reduce_method.num_calls == 1
    assert registration_result.status.shape == registration_schedule.fixed_da.numblocks
    # Every block reached elastix, even though the fixed image is constant.
    assert not np.isin(
        registration_result.status,
        [ngff_dreg.BlockRegStatus.NO_SIGNAL, ngff_dreg.BlockRegStatus.OUT_OF_BOUNDS],
    ).any()


# --------------------------------------------------------------- itk-dreg's methods on OME-Zarr
@pytest.fixture(scope="module")
def shifted_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A 32³ textured pair on local OME-Zarr 0.5 whose truth is a translation by SHIFT."""
    d = tmp_path_factory.mktemp("shifted")
    g = ImageGeometry((32, 32, 32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    moving = textured_phantom(g.shape, seed=3, texture=0.3)
    fixed = warp_to_fixed(moving, g, g, AffineTransform.from_arrays(np.eye(3), SHIFT))
    urls = []
    for name, arr in (("fixed", fixed), ("moving", moving)):
        url = str(d / f"{name}.ome.zarr")
        write_multiscale(url, arr, g, chunks=16, n_levels=1)
        urls.append(url)
    return urls[0], urls[1]


def _elastix_translation_schedule(fixed_url: str, moving_url: str) -> Any:
    parameter_object = itk.ParameterObject.New()
    parameter_map = parameter_object.GetDefaultParameterMap("translation", 2)
    parameter_map["MaximumNumberOfIterations"] = ["64"]
    parameter_object.AddParameterMap(parameter_map)
    return ngff_dreg.register_images(
        fixed_reader_ctor=ngff_dreg.OMEZarrReaderConstructor(fixed_url, level=0),
        moving_reader_ctor=ngff_dreg.OMEZarrReaderConstructor(moving_url, level=0),
        block_registration_method=ElastixDRegBlockPairRegistrationMethod(),
        reduce_method=ReduceToDisplacementFieldMethod(),
        initial_transform=itk.TranslationTransform[itk.D, 3].New(),
        fixed_chunk_size=(16, 16, 16),
        overlap_factors=[0.5] * 3,
        elx_parameter_object_serial=parameter_object_to_list(parameter_object),
        itk_transform_types=[itk.TranslationTransform[itk.D, 3]],
        displacement_grid_scale_factors=[4.0] * 3,
    )


def _check_field_recovers_shift(result: Any) -> None:
    assert result.status.shape == (2, 2, 2)
    assert np.all(result.status == BlockRegStatus.SUCCESS)
    assert isinstance(result.transforms, RegistrationTransformResult)
    field = result.transforms.transform
    assert isinstance(field, itk.DisplacementFieldTransform[itk.D, 3])
    points = np.random.default_rng(1).uniform(8.0, 24.0, (20, 3))  # interior, x/y/z
    mapped = np.array([np.asarray(field.TransformPoint(p.tolist())) for p in points])
    np.testing.assert_allclose(mapped - points, np.broadcast_to(SHIFT, points.shape), atol=0.3)


def test_elastix_method_and_field_reducer_on_threads(shifted_pair, np_product):
    schedule = _elastix_translation_schedule(*shifted_pair)
    result = schedule.registration_result.compute(scheduler="threads")
    _check_field_recovers_shift(result)


@pytest.mark.cluster
def test_elastix_method_and_field_reducer_on_process_cluster(shifted_pair, cluster):
    schedule = _elastix_translation_schedule(*shifted_pair)
    result = cluster.compute(schedule.registration_result).result(timeout=240)
    _check_field_recovers_shift(result)
    pids = cluster.run(lambda: __import__("os").getpid())
    assert len(set(pids.values())) == 2
