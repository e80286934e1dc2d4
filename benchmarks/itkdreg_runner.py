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
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import numpy as np


def _jacobian_stats(field_xyz: np.ndarray, spacing_xyz: np.ndarray) -> dict[str, float]:
    """det(I + grad u) of a displacement field shaped (z, y, x, 3) with ITK-order vectors."""
    u = np.moveaxis(field_xyz, -1, 0)[::-1]  # components z, y, x
    sp = spacing_xyz[::-1]
    grads = np.empty((3, 3, *u.shape[1:]))
    for i in range(3):
        for j in range(3):
            grads[i, j] = np.gradient(u[i], sp[j], axis=j)
    jac = grads + np.eye(3)[:, :, None, None, None]
    det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    return {"jacobian_min": float(det.min()), "folded_fraction": float((det <= 0).mean())}


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
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        result = plan.registration_result.compute()
    seconds = time.perf_counter() - t0
    transform = result.transforms.transform
    status = np.asarray(result.status)

    pts = np.load(args.points)
    mapped = np.array([transform.TransformPoint([float(v) for v in p]) for p in pts])
    stats: dict[str, float] = {}
    try:
        dft = itk.DisplacementFieldTransform[itk.D, 3].cast(transform)
        field = dft.GetDisplacementField()
        arr = itk.array_from_image(field)
        stats = _jacobian_stats(np.asarray(arr, dtype=np.float64),
                                np.asarray(itk.spacing(field), dtype=np.float64))
        stats["field_shape"] = list(arr.shape[:3])
    except Exception as exc:  # a composite output: no single field to score
        stats = {"jacobian_error": repr(exc)}
    np.savez(args.result, mapped=mapped, seconds=seconds, status=status,
             stats=json.dumps(stats))
    print(json.dumps({"seconds": seconds, "blocks": int(status.size),
                      "ok": int((status == 0).sum()), **stats}))


if __name__ == "__main__":
    main()
