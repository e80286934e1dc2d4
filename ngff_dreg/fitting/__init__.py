"""Pure NumPy fitting kernels: the solvers behind ngff-dreg's own methods.

* :mod:`~ngff_dreg.fitting.lattice`: a cubic B-spline grid evaluated on a
  regular sample lattice as a tensor product of small per-axis matrices, and
  its bending energy;
* :mod:`~ngff_dreg.fitting.intensity`: the intensity model that turns image
  similarity into least squares (affine or piecewise-linear intensity map,
  optional polynomial gain);
* :mod:`~ngff_dreg.fitting.bspline_gn`: Gauss-Newton fit of a B-spline
  deformation between a fixed block and the moving image resampled onto it;
* :mod:`~ngff_dreg.fitting.linear_gn`: Gauss-Newton fit of a rigid or affine
  transform between two whole images (the global stage).

Nothing here imports ITK, zarr or dask: inputs are arrays and
:class:`~ngff_dreg.geometry.ImageGeometry` objects, outputs are arrays.
"""
