"""OME-Zarr readers and writers, built on :mod:`ngff_dreg.io.storage`.

* reading: :mod:`.multiscale` (a pyramid's metadata per level),
  :mod:`.reader` (the itk-dreg reader constructor), :mod:`.consistency`,
  :mod:`.transform_reader`, :mod:`.arrays` (dask/xarray views), :mod:`.memory`
  (an in-memory reader constructor), :mod:`.tables` (spot tables);
* writing: :mod:`.image_writer`, :mod:`.field_writer`,
  :mod:`.image_transform_writer`, :mod:`.shards`, and :mod:`.output_state`
  (completion marker, checkpoints, stage reports).
"""
