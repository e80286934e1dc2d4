"""Mapping point tables through a registration: time and peak memory per worker vs rows.

A 3-D transform scene (affine + a 96³ displacement field and its inverse, written with
``write_field_scene``) maps Parquet tables of 10⁵, 10⁶ and 10⁷ spots (columns
``id, x, y, z, intensity``, written in files of ``--rows-per-file`` rows) with
:func:`ngff_dreg.points.transform_table_file` on a 2-process LocalCluster (1 thread
each). For each size it prints the wall time, the throughput, and the peak resident
memory of each worker process (polled every 0.2 s above its idle baseline), and the
ratios against the smallest run: the time should grow with the rows, the per-worker
memory should stay flat. A baseline in the same script maps the 10⁶ table in one
process with NumPy (``ngff_dreg.apply.transform_points`` on the whole array).

Usage: ``nice -n 10 python benchmarks/bench_points.py [--sizes 1e5,1e6,1e7] [--dir DIR]``
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _scene(root: Path) -> str:
    from ngff_dreg.geometry import ImageGeometry
    from ngff_dreg.io.omezarr.field_writer import write_field_scene
    from ngff_dreg.synthetic import smooth_displacement
    from ngff_dreg.transforms import AffineTransform, TransformChain

    geom = ImageGeometry((96, 96, 96), (2.0, 2.0, 6.0), (0.0, 0.0, 0.0), unit="micrometer")
    field = smooth_displacement(geom, 4.0, grid_spacing=(8.0, 8.0, 24.0), control_points=5,
                                seed=1)
    affine = AffineTransform.from_arrays(np.eye(3) * 1.01, np.array([3.0, -2.0, 1.0]))
    inverse_field = type(field)(field.geometry, data=-np.asarray(field.data))
    url = str(root / "scene.ome.zarr")
    write_field_scene(url, TransformChain(affine, field),
                      TransformChain(affine.inverse(), inverse_field, affine_first=True),
                      overwrite=True)
    return url


def _table(root: Path, n: int, rows_per_file: int) -> str:
    import pandas as pd

    out = root / f"spots_{n}.parquet"
    out.mkdir(exist_ok=True)
    rng = np.random.default_rng(n)
    for k, start in enumerate(range(0, n, rows_per_file)):
        m = min(rows_per_file, n - start)
        pd.DataFrame({
            "id": np.arange(start, start + m, dtype=np.int64),
            "x": rng.uniform(0, 190, m), "y": rng.uniform(0, 190, m),
            "z": rng.uniform(0, 570, m), "intensity": rng.uniform(0, 1, m).astype(np.float32),
        }).to_parquet(out / f"part.{k:04d}.parquet", index=False)
    return str(out)


class _PeakRss:
    """Polls every worker's RSS and keeps the peak above its baseline, per worker."""

    def __init__(self, client) -> None:
        self.client = client
        self.base = self._rss()
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _rss(self) -> dict[str, int]:
        import psutil

        return self.client.run(lambda: psutil.Process().memory_info().rss)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for w, v in self._rss().items():
                self.peak[w] = max(self.peak.get(w, 0), v)
            time.sleep(0.2)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def above_base_mb(self) -> list[float]:
        return [(self.peak[w] - self.base[w]) / 2**20 for w in sorted(self.base)]

    def peak_mb(self) -> list[float]:
        return [self.peak[w] / 2**20 for w in sorted(self.base)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1e5,1e6,1e7")
    parser.add_argument("--rows-per-file", type=int, default=500_000)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]

    import pandas as pd
    import psutil
    from distributed import Client, LocalCluster

    from ngff_dreg.apply import transform_points as map_array
    from ngff_dreg.io.omezarr.transform_reader import read_transform
    from ngff_dreg.points import transform_table_file

    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-points-"))
    scene = _scene(root)
    tables = {n: _table(root, n, args.rows_per_file) for n in sizes}
    print(f"scene {scene}; tables {', '.join(f'{n:.0e}' for n in sizes)} rows")

    # Baseline: the whole 10^6 table in one process, as an array.
    n_base = min(sizes[-1], 1_000_000)
    frame = pd.read_parquet(tables[n_base] if n_base in tables else tables[sizes[0]])
    pts = frame[["x", "y", "z"]].to_numpy()
    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    t0 = time.perf_counter()
    map_array(pts, read_transform(scene))
    base_s = time.perf_counter() - t0
    base_rate = len(pts) / base_s
    grown = (proc.memory_info().rss - rss0) / 2**20
    print(f"baseline (one process, whole array): {len(pts):.0e} points in {base_s:.2f} s "
          f"= {base_rate / 1e6:.2f} M points/s; process RSS +{grown:.0f} MB")
    del frame, pts

    rows = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        # Warm-up (imports, the scene's metadata) on the smallest table, not measured.
        transform_table_file(scene, tables[sizes[0]], str(root / "warmup.parquet"), client=client)
        for n in sizes:
            out = str(root / f"mapped_{n}.parquet")
            with _PeakRss(client) as mem:
                t0 = time.perf_counter()
                parts = transform_table_file(scene, tables[n], out, client=client)
                seconds = time.perf_counter() - t0
            rows.append((n, parts, seconds, mem.above_base_mb(), mem.peak_mb()))
    n0, _, s0, m0, _ = rows[0]
    print()
    print("| points | partitions | time s | M points/s | vs baseline rate | time ratio | "
          "peak MB per worker (above idle) | peak RSS MB per worker | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, parts, seconds, above, peak in rows:
        rate = n / seconds
        print(f"| {n:.0e} | {parts} | {seconds:.1f} | {rate / 1e6:.2f} | {rate / base_rate:.2f} | "
              f"{seconds / s0:.1f} (rows x{n / n0:.0f}) | {', '.join(f'{v:.0f}' for v in above)} | "
              f"{', '.join(f'{v:.0f}' for v in peak)} | {max(above) / max(max(m0), 1):.2f} |")


if __name__ == "__main__":
    main()
