"""Conversions between NumPy arrays + :class:`ImageGeometry` and ITK objects.

This is the only core module that imports ``itk`` (block methods, the worker
set-up and the pickling fix excepted): images and regions, linear, B-spline,
displacement-field and composite transforms, reading through any
``itk.ImageFileReader``-like reader, and ITK file I/O. Nothing here holds open
handles, so everything it builds can be rebuilt on a dask worker from plain
arrays and parameters. It imports no ngff-dreg transform class: those call it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import (
    HasGeometry,
    ItkImageLike,
    ItkReaderLike,
    SupportsReadBox,
    UpdatesOutputInformation,
)

__all__ = [
    "preload_itk",
    "set_itk_threads",
    "itk_region",
    "box_from_region",
    "image_from_array",
    "metadata_image",
    "geometry_of",
    "affine_to_itk",
    "itk_to_affine",
    "transform_points",
    "displacement_field_to_itk",
    "class_name",
    "is_cubic_bspline",
    "bspline_parameters",
    "composite_transform",
    "reader_geometry",
    "read_region",
    "load_region",
    "portable_domain",
    "ItkPointMap",
    "read_image_array",
    "write_transform_file",
    "write_vector_image",
]

logger = logging.getLogger(__name__)
_PRELOAD_LOCK = threading.Lock()
_PRELOADED = False


def preload_itk() -> None:
    """Load the ITK submodules ngff-dreg uses, once per process.

    ITK's lazy loading is not thread-safe on first touch: two dask threads
    that first use ``itk`` together can fail with an ``IndexError``. Calling
    this before any task runs (worker plugin, block task prologue) avoids it.
    """
    global _PRELOADED
    if _PRELOADED:
        return
    with _PRELOAD_LOCK:
        if _PRELOADED:
            return
        import itk

        for name in (
            "Image",
            "ImageRegion",
            "VectorImage",
            "Vector",
            "ImageRegistrationMethodv4",
            "MattesMutualInformationImageToImageMetricv4",
            "CorrelationImageToImageMetricv4",
            "MeanSquaresImageToImageMetricv4",
            "RegularStepGradientDescentOptimizerv4",
            "LBFGSBOptimizerv4",
            "ConjugateGradientLineSearchOptimizerv4Template",
            "RegistrationParameterScalesFromPhysicalShift",
            "AffineTransform",
            "Euler2DTransform",
            "Euler3DTransform",
            "TranslationTransform",
            "BSplineTransform",
            "BSplineTransformInitializer",
            "CompositeTransform",
            "DisplacementFieldTransform",
            "TransformToDisplacementFieldFilter",
            "ResampleImageFilter",
            "LinearInterpolateImageFunction",
            "ImageMomentsCalculator",
            "CenteredTransformInitializer",
            "array_from_image",
            "image_from_array",
        ):
            getattr(itk, name)
        # Instantiate the common template products so their wrappers load too.
        for dim in (2, 3):
            itk.Image[itk.F, dim].New()
            itk.AffineTransform[itk.D, dim].New()
        _PRELOADED = True


def set_itk_threads(n: int) -> None:
    """Limit ITK's global thread pool to ``n`` threads (at least one)."""
    import itk

    n = max(1, int(n))
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(n)
    itk.MultiThreaderBase.SetGlobalMaximumNumberOfThreads(n)


def itk_region(box: Box) -> Any:
    """``itk.ImageRegion`` (ITK order) of a NumPy-order :class:`Box`."""
    import itk

    region = itk.ImageRegion[box.ndim]()
    region.SetIndex([int(v) for v in box.start[::-1]])
    region.SetSize([int(v) for v in box.shape[::-1]])
    return region


def box_from_region(region: Any) -> Box:
    """NumPy-order :class:`Box` of an ``itk.ImageRegion``."""
    index = [int(v) for v in region.GetIndex()][::-1]
    size = [int(v) for v in region.GetSize()][::-1]
    return Box(tuple(index), tuple(i + s for i, s in zip(index, size)))


def _apply_geometry(image: Any, geometry: ImageGeometry) -> None:
    import itk

    image.SetSpacing([float(s) for s in geometry.spacing])
    image.SetOrigin([float(o) for o in geometry.origin])
    image.SetDirection(itk.matrix_from_array(geometry.direction_matrix.copy()))


def image_from_array(
    array: npt.NDArray[Any],
    geometry: ImageGeometry,
    box: Box | None = None,
    requested: Box | None = None,
) -> Any:
    """Wrap ``array`` as an ``itk.Image`` placed in ``geometry``'s physical space.

    Parameters
    ----------
    array:
        Voxels, NumPy order. Copied into ITK memory (contiguous float32 unless
        the dtype is one ITK wraps).
    geometry:
        Geometry of the *whole* image the array belongs to.
    box:
        Where ``array`` sits in the whole image (NumPy order). The image keeps
        the whole image's origin, and its largest possible and buffered
        regions start at ``box.start`` (like ``itk.ExtractImageFilter``
        output). Defaults to the whole image.
    requested:
        Requested region (defaults to ``box``).

    """
    import itk

    box = box or Box.full(array.shape)
    if tuple(array.shape) != box.shape:
        raise ValueError(f"array shape {array.shape} does not match box {box}")
    arr = np.ascontiguousarray(array)
    if arr.dtype not in (np.float32, np.float64, np.uint8, np.int16, np.uint16, np.int32):
        arr = arr.astype(np.float32)
    image = itk.image_from_array(arr)
    _apply_geometry(image, geometry)
    region = itk_region(box)
    image.SetLargestPossibleRegion(region)
    image.SetBufferedRegion(region)
    image.SetRequestedRegion(itk_region(requested or box))
    return image


def metadata_image(geometry: ImageGeometry, pixel_type: Any = None) -> Any:
    """An unbuffered ``itk.Image`` carrying only ``geometry`` (no voxels)."""
    import itk

    ptype = itk.F if pixel_type is None else pixel_type
    image = itk.Image[ptype, geometry.ndim].New()
    region = itk_region(Box.full(geometry.shape))
    image.SetLargestPossibleRegion(region)
    image.SetRequestedRegion(region)
    _apply_geometry(image, geometry)
    return image


def geometry_of(image: Any, region: str = "largest", unit: str | None = None) -> ImageGeometry:
    """:class:`ImageGeometry` of an ``itk.Image`` restricted to one of its regions.

    ``region`` is ``"largest"``, ``"buffered"`` or ``"requested"``. The
    geometry's origin is the physical point of that region's first voxel.
    """
    import itk

    reg = {
        "largest": image.GetLargestPossibleRegion,
        "buffered": image.GetBufferedRegion,
        "requested": image.GetRequestedRegion,
    }[region]()
    box = box_from_region(reg)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    direction = np.asarray(itk.array_from_matrix(image.GetDirection()), dtype=np.float64)
    start = np.asarray(box.start[::-1], dtype=np.float64)
    origin = origin + direction @ (spacing * start)
    return ImageGeometry(
        box.shape, tuple(spacing), tuple(origin), tuple(map(tuple, direction)), unit
    )


def affine_to_itk(matrix: npt.ArrayLike, translation: npt.ArrayLike) -> Any:
    """``itk.AffineTransform`` for ``y = matrix @ x + translation`` (ITK order)."""
    import itk

    m = np.asarray(matrix, dtype=np.float64)
    t = np.asarray(translation, dtype=np.float64)
    ndim = m.shape[0]
    tx = itk.AffineTransform[itk.D, ndim].New()
    tx.SetMatrix(itk.matrix_from_array(m.copy()))
    tx.SetTranslation([float(v) for v in t])
    return tx


def itk_to_affine(transform: Any) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``(matrix, offset)`` of a linear ITK transform: ``y = matrix @ x + offset``.

    Works for any ``MatrixOffsetTransformBase`` subclass (Euler, Similarity,
    Affine...), translation transforms, and composites of them.
    """
    import itk

    ndim = int(transform.GetInputSpaceDimension())
    name = transform.GetNameOfClass()
    if name == "CompositeTransform":
        matrix = np.eye(ndim)
        offset = np.zeros(ndim)
        # Composite applies the last-added transform first.
        for i in range(transform.GetNumberOfTransforms()):
            m, o = itk_to_affine(transform.GetNthTransform(i))
            matrix, offset = matrix @ m, matrix @ o + offset
        return matrix, offset
    if name == "TranslationTransform":
        return np.eye(ndim), np.asarray(transform.GetOffset(), dtype=np.float64)
    if name == "IdentityTransform":
        return np.eye(ndim), np.zeros(ndim)
    if hasattr(transform, "GetMatrix") and hasattr(transform, "GetOffset"):
        matrix = np.asarray(itk.array_from_matrix(transform.GetMatrix()), dtype=np.float64)
        return matrix, np.asarray(transform.GetOffset(), dtype=np.float64)
    raise TypeError(f"{name} is not a linear transform")


def class_name(transform: Any) -> str:
    """ITK class name of an ITK object (``""`` for anything else)."""
    name = getattr(transform, "GetNameOfClass", None)
    return str(name()) if callable(name) else ""


def is_cubic_bspline(transform: Any) -> bool:
    """True for a cubic ``itk.BSplineTransform`` (the one :class:`BSplineGrid` copies)."""
    try:
        if class_name(transform) != "BSplineTransform":
            return False
        import itk

        return int(itk.template(transform)[1][2]) == 3
    except Exception:
        return False


def bspline_parameters(
    transform: Any,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int]:
    """``(fixed parameters, parameters, ndim)`` of an ``itk.BSplineTransform`` as arrays."""
    import itk

    fixed = np.array(transform.GetFixedParameters(), dtype=np.float64)
    ndim = int(transform.GetInputSpaceDimension())
    params = np.array(itk.array_from_vnl_vector(transform.GetParameters()), dtype=np.float64)
    return fixed, params, ndim


def composite_transform(transforms: Sequence[Any], ndim: int) -> Any:
    """``itk.CompositeTransform`` holding ``transforms`` in the order given.

    ITK applies the last-added transform first.
    """
    import itk

    composite = itk.CompositeTransform[itk.D, ndim].New()
    for transform in transforms:
        composite.AddTransform(transform)
    return composite


def transform_points(transform: Any, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Map physical points ``(N, ndim)`` through any ITK transform (point by point)."""
    pts = np.asarray(points, dtype=np.float64)
    out = np.empty_like(pts)
    for i, p in enumerate(pts):
        out[i] = transform.TransformPoint([float(v) for v in p])
    return out


def displacement_field_to_itk(field: npt.NDArray[Any], geometry: ImageGeometry) -> Any:
    """``itk.DisplacementFieldTransform`` from an NGFF-layout field.

    Parameters
    ----------
    field:
        Shape ``(ndim, *geometry.shape)``: component axis first, components in
        NumPy axis order (``z, y, x``), physical units.
    geometry:
        The field grid.

    """
    import itk

    ndim = geometry.ndim
    if field.shape != (ndim, *geometry.shape):
        raise ValueError(f"field shape {field.shape} does not match {(ndim, *geometry.shape)}")
    vectors = np.ascontiguousarray(np.moveaxis(field[::-1], 0, -1), dtype=np.float64)
    image = itk.Image[itk.Vector[itk.D, ndim], ndim].New()
    image.SetRegions(itk_region(Box.full(geometry.shape)))
    image.Allocate()
    itk.array_view_from_image(image)[...] = vectors
    _apply_geometry(image, geometry)
    tx = itk.DisplacementFieldTransform[itk.D, ndim].New()
    tx.SetDisplacementField(image)
    return tx


def field_from_itk(transform_or_image: Any) -> tuple[npt.NDArray[np.float64], ImageGeometry]:
    """NGFF-layout field array and grid geometry of an ITK displacement field."""
    import itk

    image = transform_or_image
    if hasattr(image, "GetDisplacementField"):
        image = image.GetDisplacementField()
    arr = np.asarray(itk.array_from_image(image), dtype=np.float64)
    field = np.moveaxis(arr, -1, 0)[::-1].copy()
    return field, geometry_of(image)


def as_float_image(image: Any) -> Any:
    """Cast an ``itk.Image`` to float32 pixels, keeping regions and geometry."""
    import itk

    if itk.template(image)[1][0] == itk.F:
        return image
    return itk.cast_image_filter(
        image, ttype=(type(image), itk.Image[itk.F, image.GetImageDimension()])
    )


def seq(values: Sequence[float]) -> list[float]:
    """Plain float list (ITK setters reject NumPy scalars on some builds)."""
    return [float(v) for v in values]


# ------------------------------------------------------------------ readers
def reader_geometry(ctor: Any) -> ImageGeometry:
    """Geometry of the image a reader constructor reads (no voxels loaded).

    A constructor or reader with a ``geometry`` (:class:`HasGeometry`) answers
    directly; an ``itk.ImageFileReader``-like reader is asked for its output's
    metadata.
    """
    if isinstance(ctor, HasGeometry) and isinstance(ctor.geometry, ImageGeometry):
        return ctor.geometry
    reader = ctor()
    if isinstance(reader, HasGeometry) and isinstance(reader.geometry, ImageGeometry):
        return reader.geometry
    image = reader.GetOutput() if isinstance(reader, ItkReaderLike) else reader
    if isinstance(reader, UpdatesOutputInformation):
        reader.UpdateOutputInformation()
    return geometry_of(image)


def read_region(reader: Any, box: Box) -> npt.NDArray[Any]:
    """Voxels of ``box`` (NumPy order) from an ngff-dreg or ITK-style reader."""
    if isinstance(reader, SupportsReadBox):
        return np.asarray(reader.read_box(box))
    import itk

    region = itk_region(box)
    reader.GetOutput().SetRequestedRegion(region)
    reader.Update()
    extracted = itk.extract_image_filter(reader.GetOutput(), extraction_region=region)
    return np.asarray(itk.array_from_image(extracted))


def load_region(image: Any, box: Box, data: npt.NDArray[Any]) -> None:
    """Make ``box`` the buffered and requested region of ``image`` and copy ``data`` in."""
    import itk

    region = itk_region(box)
    image.SetBufferedRegion(region)
    image.SetRequestedRegion(region)
    image.Allocate()
    if not box.is_empty:
        itk.array_view_from_image(image)[...] = data


def portable_domain(domain: Any) -> Any:
    """The same oriented box as an index-0 metadata image.

    ITK 5.4 loses a non-zero region index when an ``itk.Image`` is pickled,
    which would move the domain of a result sent between processes.
    """
    if not isinstance(domain, ItkImageLike):
        return domain
    if all(int(i) == 0 for i in domain.GetLargestPossibleRegion().GetIndex()):
        return domain
    return metadata_image(geometry_of(domain, "largest"))


class ItkPointMap:
    """An ``itk.Transform`` seen through ``transform_points`` (one point at a time).

    Lets NumPy code evaluate any ITK transform without importing ITK; it
    pickles with its transform.
    """

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def transform_points(self, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map ``(N, ndim)`` physical points through the ITK transform."""
        return transform_points(self.transform, points)

    def __repr__(self) -> str:
        return f"ItkPointMap({class_name(self.transform) or type(self.transform).__name__})"


# ------------------------------------------------------------------ files
def read_image_array(path: str) -> npt.NDArray[np.float32]:
    """Voxels of an image file ITK can read (NIfTI, NRRD...), float32, NumPy order."""
    import itk

    image = itk.imread(str(path), itk.F)
    return np.asarray(itk.array_from_image(image), dtype=np.float32)


def write_transform_file(transforms: Sequence[Any], path: str) -> None:
    """Write ITK transforms to an ITK transform file (``.h5``, ``.tfm``...)."""
    import itk

    itk.transformwrite(list(transforms), path)


def write_vector_image(
    vectors: npt.NDArray[np.float32], geometry: ImageGeometry, path: str
) -> None:
    """Write a vector image (``(*shape, ndim)`` components last) placed by ``geometry``."""
    import itk

    image = itk.image_from_array(vectors, is_vector=True)
    _apply_geometry(image, geometry)
    itk.imwrite(image, path)
