"""An in-memory reader constructor: a NumPy array placed in physical space.

Useful for tests, notebooks and small images already in memory. It follows the
same reader contract as the OME-Zarr reader (``GetOutput``/``Update`` and the
plain ``geometry``/``read_box`` API) and pickles with its array.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import ConstructReaderMethod

__all__ = ["ArrayReaderConstructor", "ArrayReader"]


@dataclass
class ArrayReaderConstructor(ConstructReaderMethod):
    """Reader constructor over an in-memory array (NumPy order) and its geometry.

    ``chunk_shape`` plays the role of the storage chunk for block alignment.
    """

    array: npt.NDArray[Any]
    geometry: ImageGeometry
    chunk_shape: tuple[int, ...] | None = None
    reads: list[Box] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if tuple(self.array.shape) != tuple(self.geometry.shape):
            raise ValueError(
                f"array shape {self.array.shape} does not match geometry {self.geometry.shape}"
            )

    def __call__(self, **kwargs: Any) -> ArrayReader:
        """Return a new reader."""
        return ArrayReader(self)


class ArrayReader:
    """``itk.ImageFileReader``-like access to an :class:`ArrayReaderConstructor`."""

    def __init__(self, ctor: ArrayReaderConstructor) -> None:
        from ngff_dreg.itk_bridge import metadata_image

        self._ctor = ctor
        self.geometry = ctor.geometry
        self.chunk_shape = ctor.chunk_shape
        self.dtype = ctor.array.dtype
        self._output = metadata_image(ctor.geometry)

    def read_box(self, box: Box) -> npt.NDArray[Any]:
        """Voxels of ``box`` (NumPy order)."""
        self._ctor.reads.append(box)
        return np.array(self._ctor.array[box.clip(self.geometry.shape).slices])

    def GetOutput(self) -> Any:
        """The output image (metadata, then the requested region after ``Update``)."""
        return self._output

    def UpdateOutputInformation(self) -> None:
        """Metadata is always available."""

    def Update(self) -> None:
        """Load the output's requested region."""
        from ngff_dreg.itk_bridge import box_from_region, image_from_array, itk_region

        box = box_from_region(self._output.GetRequestedRegion()).clip(self.geometry.shape)
        image = image_from_array(self.read_box(box).astype(np.float32), self.geometry, box)
        image.SetLargestPossibleRegion(itk_region(Box.full(self.geometry.shape)))
        self._output = image

    def UpdateLargestPossibleRegion(self) -> None:
        """Load the whole image."""
        from ngff_dreg.itk_bridge import itk_region

        self._output.SetRequestedRegion(itk_region(Box.full(self.geometry.shape)))
        self.Update()
