"""Stores and the read stack every read goes through (see :mod:`.stack` for the order).

* :mod:`.urls`: URLs, local paths, and redaction of secrets (no zarr);
* :mod:`.stores`: opening stores and groups (local, ``s3://``, ``http(s)://``);
* :mod:`.stack`: the one function that wraps a store for reading;
* the layers: :mod:`.counting_store` (with :mod:`.store_stats`),
  :mod:`.chunk_cache`, :mod:`.missing_chunk_guard` (with
  :mod:`.chunk_inventory`), :mod:`.read_errors`, and :mod:`.retry` around
  whole reads; :mod:`.read_through` is their common base, which routes every
  zarr read path through the wrapper;
* :mod:`.store_errors`: store failures as ngff-dreg errors.
"""
