"""Run itk-dreg 0.0.1 on a pair of uncompressed .mha files, in its own venv (numpy<2).

Configured as its example notebook ``ElastixDeformableRegistration.ipynb``:
elastix default rigid + affine + B-spline maps per block (B-spline final grid
spacing 20 physical units), ``preprocess_initial_transform=True``, blocks
registered with overlap factor 1.0, reduced by ``ReduceToDisplacementFieldMethod``
with displacement grid scale factors 5, starting from
``compute_initial_translation``. itk-dreg results hold elastix objects that do
not pickle, so blocks run on dask's threaded scheduler in this one process
(ITK modules are loaded up front: lazy loading is not thread-safe).

Usage (driven by ``bench_pipeline.py``)::

    /tmp/itkdreg-venv/bin/python benchmarks/itkdreg_runner.py \
        fixed.mha moving.mha points.npy result.npz --block 48 --threads 2

``points.npy`` holds fixed physical points (N, 3), ITK order; ``result.npz``
receives the mapped points, the Jacobian determinant figures of the output
field and the wall time of the registration.

Extrapolation mode (``--sample-blocks N``, N > 0), for images where a full run
would take hours (about a minute per block on 2 cores):

1. the plan is built exactly as for a full run (timed: ``plan_seconds``);
2. N of its M blocks are drawn at random (``--sample-seed``, without
   replacement, so the mean block time is an unbiased estimate) and registered
   with itk-dreg's own ``register_subimage`` on the same threaded scheduler
   and thread count as a full run, so the per-block times include the
   contention of ``--threads`` blocks sharing the cores (use N a multiple of
   ``--threads``);
3. the N results are reduced with the same ``ReduceToDisplacementFieldMethod``
   (timed: ``reduce_seconds_sampled``).

The extrapolated wall time is ``plan + sample_wall × M / N + reduce_sampled ×
M / N``, where ``sample_wall`` is the wall time of the N blocks run together
(``--threads`` at a time). The wall time, not the per-block times, is scaled
because itk-dreg's blocks do not always overlap on the threaded scheduler: in
one smoke run the second thread's block only started registering when the
first one finished (the wrapped elastix call appears to hold the GIL; its
"block seconds" include that wait), in another both ran side by side at half
speed. Scaling the wall time is right either way. Choose
N a multiple of ``--threads`` so the sample packs like the full run. The
reduce term is scaled linearly in blocks because itk-dreg's reduce visits
every field node once per block domain covering it (a Python loop); with all
M blocks present the nodes are covered about ``(1 + overlap)³`` times, as
they are inside the N sampled domains. The output marks the points lying
inside the sampled blocks' own (non-overlapped) regions: only those are
scored, as the reduced field elsewhere is the initial transform. Everything
extrapolated is flagged in the JSON line and the npz.
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np
from jacobian import jacobian_stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("fixed")
    ap.add_argument("moving")
    ap.add_argument("points")
    ap.add_argument("result")
    ap.add_argument("--block", type=int, default=48)
    ap.add_argument("--overlap", type=float, default=1.0)
    ap.add_argument("--scale", type=float, default=5.0)
    ap.add_argument("--grid", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sample-blocks", type=int, default=0,
                    help="register only this many random blocks and extrapolate (0: all)")
    ap.add_argument("--sample-seed", type=int, default=0)
    args = ap.parse_args()

    import dask
    import itk

    itk.auto_progress(0)
    # load every lazily loaded module before threads touch them
    for name in ("ElastixRegistrationMethod", "ParameterObject", "DisplacementFieldTransform",
                 "Euler3DTransform", "BSplineTransform", "ResampleImageFilter",
                 "CompositeTransform", "TranslationTransform", "AffineTransform"):
        getattr(itk, name)
    itk.force_load()
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)

    import itk_dreg.elastix.register
    import itk_dreg.elastix.serialize
    import itk_dreg.elastix.util
    import itk_dreg.itk
    import itk_dreg.reduce_dfield.dreg
    import itk_dreg.register

    image_type = itk.Image[itk.F, 3]
    fixed_ctor = functools.partial(itk_dreg.itk.make_reader, filepath=args.fixed,
                                   image_type=image_type)
    moving_ctor = functools.partial(itk_dreg.itk.make_reader, filepath=args.moving,
                                    image_type=image_type)
    params = itk.ParameterObject.New()
    params.AddParameterMap(itk.ParameterObject.GetDefaultParameterMap("rigid"))
    params.AddParameterMap(itk.ParameterObject.GetDefaultParameterMap("affine"))
    bspline = itk.ParameterObject.GetDefaultParameterMap("bspline")
    bspline["FinalGridSpacingInPhysicalUnits"] = (str(args.grid),)
    params.AddParameterMap(bspline)
    block_method = functools.partial(
        itk_dreg.elastix.register.ElastixDRegBlockPairRegistrationMethod(),
        elx_parameter_object_serial=itk_dreg.elastix.serialize.parameter_object_to_list(params),
        itk_transform_types=[itk.BSplineTransform[itk.D, 3, 3], itk.AffineTransform[itk.D, 3],
                             itk.Euler3DTransform[itk.D]],
        preprocess_initial_transform=True,
    )
    reduce_method = functools.partial(
        itk_dreg.reduce_dfield.dreg.ReduceToDisplacementFieldMethod(),
        displacement_grid_scale_factors=[args.scale] * 3,
    )
    initial = itk_dreg.elastix.util.compute_initial_translation(
        target_image=fixed_ctor().GetOutput(), source_image=moving_ctor().GetOutput()
    )
    t0 = time.perf_counter()
    plan = itk_dreg.register.register_images(
        fixed_chunk_size=(args.block,) * 3,
        initial_transform=initial,
        moving_reader_ctor=moving_ctor,
        fixed_reader_ctor=fixed_ctor,
        block_registration_method=block_method,
        reduce_method=reduce_method,
        overlap_factors=[args.overlap] * 3,
    )
    extra: dict = {}
    pts = np.load(args.points)
    if args.sample_blocks > 0:
        plan_seconds = time.perf_counter() - t0
        located, extra = _run_sample(plan, args, fixed_ctor, moving_ctor, block_method,
                                     initial, plan_seconds, pts)
        t1 = time.perf_counter()
        try:
            transform = reduce_method(block_results=located, fixed_reader_ctor=fixed_ctor,
                                      initial_transform=initial).transform
        except ValueError as exc:  # no sampled block succeeded
            extra["reduce_error"] = repr(exc)
            transform = initial
        reduce_seconds = time.perf_counter() - t1
        n, m = extra["sampled_blocks"], extra["total_blocks"]
        extra["reduce_seconds_sampled"] = reduce_seconds
        extra["block_stage_seconds_extrapolated"] = extra["sample_wall_seconds"] * m / n
        extra["reduce_seconds_extrapolated"] = reduce_seconds * m / n
        seconds = (plan_seconds + extra["block_stage_seconds_extrapolated"]
                   + extra["reduce_seconds_extrapolated"])
        status = np.asarray(extra.pop("status"))
    else:
        with dask.config.set(scheduler="threads", num_workers=args.threads):
            result = plan.registration_result.compute()
        seconds = time.perf_counter() - t0
        transform = result.transforms.transform
        status = np.asarray(result.status)

    mapped = np.array([transform.TransformPoint([float(v) for v in p]) for p in pts])
    stats: dict = {}
    if args.sample_blocks > 0:
        # the field is the sampled blocks' result inside their domains and the
        # initial transform elsewhere: its Jacobian jumps at the domain edges
        # (det J min -2.3 in the 512³ smoke), which says nothing about itk-dreg
        stats = {"jacobian_skipped": "extrapolated run: field covers the sampled blocks only"}
    else:
        stats = _field_stats(transform, itk)
    scored = extra.pop("scored", np.ones(len(pts), dtype=bool))
    np.savez(args.result, mapped=mapped, seconds=seconds, status=status, scored=scored,
             stats=json.dumps({**stats, **extra}))
    print(json.dumps({"seconds": seconds, "blocks": int(status.size),
                      "ok": int((status == 0).sum()), **stats, **extra}))


def _field_stats(transform, itk) -> dict:
    """Jacobian figures of itk-dreg's displacement-field output (if it is one)."""
    try:
        dft = itk.DisplacementFieldTransform[itk.D, 3].cast(transform)
        field = dft.GetDisplacementField()
        arr = itk.array_from_image(field)
        stats = jacobian_stats(arr, np.asarray(itk.spacing(field), dtype=np.float64))
        stats["field_shape"] = list(arr.shape[:3])
    except Exception as exc:  # a composite output: no single field to score
        stats = {"jacobian_error": repr(exc)}
    return stats


def _run_sample(plan, args: argparse.Namespace, fixed_ctor, moving_ctor, block_method,
                initial, plan_seconds: float, pts: np.ndarray) -> tuple[list, dict]:
    """Register ``args.sample_blocks`` random blocks of ``plan``; time each one.

    Returns the located block results (for the reduce) and the figures: block
    counts, per-block seconds, the sampled block indices, a status array, and
    the mask of ``pts`` inside the sampled blocks' own regions.
    """
    import dask
    import itk
    import itk_dreg.register
    from itk_dreg.base.image_block_interface import LocatedBlockResult

    infos = list(itk_dreg.register.iterate_block_info(plan.fixed_da))
    m = len(infos)
    n = min(args.sample_blocks, m)
    rng = np.random.default_rng(args.sample_seed)
    pick = sorted(int(i) for i in rng.choice(m, size=n, replace=False))

    def timed(info):
        t = time.perf_counter()
        res = itk_dreg.register.register_subimage(
            block_info=info, initial_transform=initial, moving_reader_ctor=moving_ctor,
            fixed_reader_ctor=fixed_ctor, block_registration_method=block_method,
            overlap_factors=[args.overlap] * 3)
        return res, time.perf_counter() - t

    tasks = [dask.delayed(timed)(infos[i]) for i in pick]
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        outs = dask.compute(*tasks)
    sample_wall = time.perf_counter() - t0
    located = [LocatedBlockResult(fixed_info=infos[i], result=res)
               for i, (res, _) in zip(pick, outs)]
    status = np.full(plan.fixed_da.numblocks, -1, dtype=int)  # -1: not run
    for i, (res, _) in zip(pick, outs):
        status[tuple(infos[i].chunk_index)] = int(res.status)
    # points inside the sampled blocks' own regions (NumPy-order voxel slices)
    reader = fixed_ctor()
    reader.UpdateOutputInformation()
    img = reader.GetOutput()
    idx = np.array([img.TransformPhysicalPointToContinuousIndex(
        itk.Point[itk.D, 3]([float(v) for v in p])) for p in pts])[:, ::-1]
    scored = np.zeros(len(pts), dtype=bool)
    for i in pick:
        lo = np.array([sl.start for sl in infos[i].array_slice])
        hi = np.array([sl.stop for sl in infos[i].array_slice])
        scored |= np.all((idx >= lo - 0.5) & (idx < hi - 0.5), axis=1)
    return located, {
        "extrapolated": True, "sampled_blocks": n, "total_blocks": m,
        "sampled_indices": [list(map(int, infos[i].chunk_index)) for i in pick],
        "block_seconds": [float(t) for _, t in outs], "sample_wall_seconds": sample_wall,
        "plan_seconds": plan_seconds, "threads": args.threads,
        "sampled_ok": int(sum(int(r.status) == 0 for r, _ in outs)),
        "scored_points": int(scored.sum()), "status": status, "scored": scored,
    }


if __name__ == "__main__":
    main()
