"""OME-Zarr input/output: stores, multiscale images, readers and writers."""
