"""The dask graph of :class:`~ngff_dreg.reduce.blend.ReduceToDisplacementField`.

Task layout (B blocks, C field chunks)::

    sample-<b>      B tasks   BlockSample of one block (small arrays)
    status-<b>      B tasks   (chunk_index, status) — for the status map
    blend-<c>       C tasks   blend + fold + write forward chunk c; deps: blocks reaching c
    fwd-ready       1 task    barrier + stats (max |D|), no field data
    invert-<c>      C tasks   inverse chunk c (reads D with a halo), written once
    check-<c>       C tasks   Jacobian chunk c and inverse residuals at random points
    finalize        1 task    pyramids + metadata (zarr) / assembly (memory), result

Only in the in-memory mode (``output=None``) is a whole field ever held by one
task (``assemble-*``), which is the point of that mode.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from dask import delayed
from dask.base import tokenize

from ngff_dreg.geometry import Box, ImageGeometry
from ngff_dreg.interfaces import BlockRegStatus
from ngff_dreg.reduce.blend import (
    BlendedTransformResult,
    BlockSample,
    _box_bounds,
    _fill_nodes,
    _fill_reach,
    _node_range,
    _ratio,
    blend_chunk,
    fold_chunk,
    linear_part,
    sample_block,
)
from ngff_dreg.reduce.inverse import inverse_residuals, invert_chunk
from ngff_dreg.reduce.quality import jacobian_chunk, status_map
from ngff_dreg.transforms import AffineTransform, DisplacementField, TransformChain

if TYPE_CHECKING:
    from ngff_dreg.reduce.blend import ReduceToDisplacementField

logger = logging.getLogger(__name__)


def _chunk_boxes(shape: tuple[int, ...], chunk: Any) -> list[Box]:
    from ngff_dreg.io.field_writer import iter_chunk_boxes

    if isinstance(chunk, (int, np.integer)):
        return iter_chunk_boxes(shape, (int(chunk),) * len(shape))
    ch = tuple(int(c) for c in chunk)
    return iter_chunk_boxes(shape, ch)


# ------------------------------------------------------------------ tasks
def _t_sample(located: Any, box: Box, fixed: ImageGeometry, fgeom: ImageGeometry,
              use_quality: bool, fill_distance: float) -> BlockSample:
    return sample_block(located, box, fixed, fgeom, use_quality=use_quality,
                        fill_distance=fill_distance)


def _t_status(sample: BlockSample) -> tuple[tuple[int, ...], int]:
    return sample.chunk_index, sample.status


def _t_blend(chunk: Box, samples: list[BlockSample], fgeom: ImageGeometry, fixed: ImageGeometry,
             initial: Any, affine: AffineTransform, writer: Any, prep: Any
             ) -> dict[str, Any]:
    residual, coverage = blend_chunk(chunk, samples, fgeom, fixed)
    total = fold_chunk(chunk, residual, fgeom, initial, affine)
    norm = np.linalg.norm(total, axis=0)
    stats: dict[str, Any] = {
        "box": chunk,
        "max_disp": float(norm.max()) if norm.size else 0.0,
        "max_resid": float(np.linalg.norm(residual, axis=0).max()) if residual.size else 0.0,
        "uncovered": int((coverage <= 0).sum()),
        "n": int(coverage.size),
    }
    if writer is not None:
        from ngff_dreg.io.field_writer import FORWARD_NAME

        writer.write_chunk(FORWARD_NAME, fgeom, chunk, total)
    else:
        stats["data"] = total.astype(np.float32)
    return stats


def _t_ready(stats: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "max_disp": max((s["max_disp"] for s in stats), default=0.0),
        "max_resid": max((s["max_resid"] for s in stats), default=0.0),
        "uncovered": sum(s["uncovered"] for s in stats),
        "n": sum(s["n"] for s in stats),
    }


def _t_assemble(parts: list[dict[str, Any]], fgeom: ImageGeometry, key: str = "data"
                ) -> DisplacementField:
    data = np.zeros((fgeom.ndim, *fgeom.shape), dtype=np.float32)
    for p in parts:
        data[(slice(None), *p["box"].slices)] = p[key]
    return DisplacementField(fgeom, data=data)


def _t_invert(chunk: Box, forward: DisplacementField, ready: dict[str, Any], iterations: int,
              writer: Any) -> dict[str, Any]:
    u, change = invert_chunk(chunk, forward, ready["max_disp"], iterations=iterations)
    out: dict[str, Any] = {"box": chunk, "change": change}
    if writer is not None:
        from ngff_dreg.io.field_writer import INVERSE_NAME

        writer.write_chunk(INVERSE_NAME, forward.geometry, chunk, u)
    else:
        out["data"] = u.astype(np.float32)
    return out


def _t_check(chunk: Box, forward: DisplacementField, inverse: DisplacementField | None,
             affine: AffineTransform, within: tuple[Any, Any], writer: Any,
             inv_ready: Any) -> dict[str, Any]:
    jac = jacobian_chunk(chunk, forward)
    out: dict[str, Any] = {
        "box": chunk,
        "jac_min": float(jac.min()) if jac.size else 1.0,
        "folded": int((jac <= 0).sum()),
        "n": int(jac.size),
    }
    if inverse is not None:
        fwd = TransformChain(affine, forward)
        inv = TransformChain(affine.inverse(), inverse, affine_first=True)
        # a small float32 sample per chunk keeps the final task's input light
        out["residuals"] = inverse_residuals(chunk, fwd, inv, n_points=128,
                                             within=within).astype(np.float32)
    if writer is not None:
        writer.write_quality_chunk("jacobian", chunk, jac)
    else:
        out["jac"] = jac.astype(np.float32)
    return out


def _t_prepare(writer: Any, geoms: dict[str, ImageGeometry], chunks: tuple[int, ...]) -> bool:
    writer.begin(geoms, chunks=chunks)
    fgeom = next(iter(geoms.values()))
    writer.create_quality_array("jacobian", fgeom.shape, chunks)
    return True


def _t_finalize(reducer: ReduceToDisplacementField, fgeom: ImageGeometry,
                affine: AffineTransform, fixed: ImageGeometry, ready: dict[str, Any],
                inv_parts: list[dict[str, Any]] | None, checks: list[dict[str, Any]],
                statuses: list[tuple[tuple[int, ...], int]], writer: Any,
                forward_mem: DisplacementField | None) -> BlendedTransformResult:
    from ngff_dreg.io.field_writer import FORWARD_NAME, INVERSE_NAME

    smap = status_map(statuses)
    n_success = sum(1 for _, s in statuses if s == BlockRegStatus.SUCCESS)
    report: dict[str, Any] = {
        "n_blocks": len(statuses),
        "n_success": n_success,
        "field_shape": list(fgeom.shape),
        "field_spacing": list(fgeom.spacing),
        "max_displacement": ready["max_disp"],
        "max_residual_displacement": ready["max_resid"],
        "uncovered_fraction": ready["uncovered"] / max(ready["n"], 1),
        "jacobian_min": min((c["jac_min"] for c in checks), default=1.0),
        "folded_fraction": sum(c["folded"] for c in checks) / max(sum(c["n"] for c in checks), 1),
    }
    if inv_parts is not None:
        vox = float(min(fixed.spacing))
        res = np.concatenate([c["residuals"] for c in checks]) if checks else np.zeros(0)
        report["inverse_residual_max"] = float(res.max()) if res.size else 0.0
        report["inverse_residual_p95"] = float(np.percentile(res, 95)) if res.size else 0.0
        report["inverse_residual_max_vox"] = report["inverse_residual_max"] / vox
        report["inverse_residual_p95_vox"] = report["inverse_residual_p95"] / vox
        report["inverse_last_change"] = max((p["change"] for p in inv_parts), default=0.0)
    jac_map = None
    geoms = {FORWARD_NAME: fgeom}
    if inv_parts is not None:
        geoms[INVERSE_NAME] = fgeom
    if writer is not None:
        if smap.size:
            writer.create_quality_array("block_status", smap.shape, smap.shape, dtype="int16")
            writer.write_quality_chunk("block_status", Box.full(smap.shape), smap)
        writer.finish(affine, geoms, n_levels=reducer.n_levels,
                      extra={"report": report, "status_map": smap.tolist()})
        forward = DisplacementField(fgeom, loader=writer.loader(FORWARD_NAME, fgeom))
        inverse = (DisplacementField(fgeom, loader=writer.loader(INVERSE_NAME, fgeom))
                   if inv_parts is not None else None)
    else:
        assert forward_mem is not None
        forward = forward_mem
        inverse = _t_assemble(inv_parts, fgeom) if inv_parts is not None else None
        jac_map = np.zeros(fgeom.shape, dtype=np.float32)
        for c in checks:
            jac_map[c["box"].slices] = c["jac"]
    logger.info(
        "reduction: %d/%d blocks succeeded, field %s, max |D| %.4g, Jacobian min %.4g "
        "(folded %.3g%%), inverse residual p95 %s",
        n_success, len(statuses), fgeom.shape, ready["max_disp"], report["jacobian_min"],
        100 * report["folded_fraction"], report.get("inverse_residual_p95"),
    )
    chain = TransformChain(affine, forward)
    inv_chain = (TransformChain(affine.inverse(), inverse, affine_first=True)
                 if inverse is not None else None)
    return BlendedTransformResult(chain, inv_chain, report=report, status_map=smap,
                                  jacobian=jac_map, field_geometry=fgeom)


# ------------------------------------------------------------------ builder
def build_reduction_graph(reducer: ReduceToDisplacementField, block_results: list[Any],
                          block_boxes: list[Box], fixed: ImageGeometry,
                          initial: Any) -> Any:
    """See :meth:`ReduceToDisplacementField.build_graph`."""
    from ngff_dreg.io.field_writer import FORWARD_NAME, INVERSE_NAME, FieldSceneWriter

    fgeom = reducer.field_geometry(fixed)
    ndim = fixed.ndim
    affine = linear_part(initial, ndim)
    ch = reducer.field_chunk
    chunks = (int(ch),) * ndim if isinstance(ch, (int, np.integer)) else tuple(int(c) for c in ch)
    boxes = _chunk_boxes(fgeom.shape, chunks)
    token = tokenize(reducer.output, fixed, fgeom, chunks, len(block_boxes),
                     [tuple(b.start) + tuple(b.stop) for b in block_boxes])

    writer = None
    prep: Any = None
    if reducer.output is not None:
        writer = FieldSceneWriter(reducer.output, reducer.storage_options, reducer.overwrite,
                                  fixed_url=reducer.fixed_url, moving_url=reducer.moving_url)
        geoms = {FORWARD_NAME: fgeom}
        if reducer.compute_inverse:
            geoms[INVERSE_NAME] = fgeom
        prep = delayed(_t_prepare, pure=True)(writer, geoms, chunks,
                                              dask_key_name=f"prepare-{token}")

    if initial is not None:  # one key, shared by every chunk task
        initial = delayed(initial, pure=False)

    # block tasks
    samples = []
    statuses = []
    reach_boxes = []
    ratio = _ratio(fixed, fgeom)
    sp = np.asarray(fgeom.spacing)[::-1]
    for i, (res, box) in enumerate(zip(block_results, block_boxes)):
        s = delayed(_t_sample, pure=True)(res, box, fixed, fgeom, reducer.use_quality,
                                          reducer.fill_distance,
                                          dask_key_name=f"sample-{token}-{i}")
        samples.append(s)
        statuses.append(delayed(_t_status, pure=True)(s, dask_key_name=f"status-{token}-{i}"))
        lo, hi = _box_bounds(box)
        nodes = _node_range(lo, hi, ratio, fgeom.shape)
        reach = _fill_reach(lo, hi, fixed, reducer.fill_distance)
        reach_boxes.append(nodes.pad(tuple(_fill_nodes(reach, sp))))

    # blend tasks: each depends only on the blocks that can reach its chunk
    blends = []
    for c, cbox in enumerate(boxes):
        deps = [samples[i] for i, rb in enumerate(reach_boxes) if not rb.intersect(cbox).is_empty]
        blends.append(delayed(_t_blend, pure=True)(
            cbox, deps, fgeom, fixed, initial, affine, writer, prep,
            dask_key_name=f"blend-{token}-{c}"))
    ready = delayed(_t_ready, pure=True)(blends, dask_key_name=f"fwd-ready-{token}")

    if writer is not None:
        forward: Any = delayed(_loader_field, pure=True)(
            fgeom, writer.loader(FORWARD_NAME, fgeom), ready,
            dask_key_name=f"fwd-field-{token}")
        forward_mem = None
    else:
        forward = delayed(_t_assemble, pure=True)(blends, fgeom,
                                                  dask_key_name=f"assemble-fwd-{token}")
        forward_mem = forward

    inv_parts = None
    inverse: Any = None
    if reducer.compute_inverse:
        inv_parts = [
            delayed(_t_invert, pure=True)(cbox, forward, ready, reducer.inverse_iterations,
                                          writer, dask_key_name=f"invert-{token}-{c}")
            for c, cbox in enumerate(boxes)
        ]
        if writer is not None:
            inverse = delayed(_loader_field, pure=True)(
                fgeom, writer.loader(INVERSE_NAME, fgeom), inv_parts,
                dask_key_name=f"inv-field-{token}")
        else:
            inverse = delayed(_t_assemble, pure=True)(inv_parts, fgeom,
                                                      dask_key_name=f"assemble-inv-{token}")
    within = (np.zeros(ndim), (np.asarray(fixed.shape) - 1) / ratio)
    checks = [
        delayed(_t_check, pure=True)(cbox, forward, inverse, affine, within, writer, inverse,
                                     dask_key_name=f"check-{token}-{c}")
        for c, cbox in enumerate(boxes)
    ]
    return delayed(_t_finalize, pure=True)(
        reducer, fgeom, affine, fixed, ready, inv_parts, checks, statuses, writer,
        forward_mem, dask_key_name=f"finalize-{token}")


def _loader_field(fgeom: ImageGeometry, loader: Any, barrier: Any) -> DisplacementField:
    """A lazily loaded field, available once ``barrier`` (its writes) is done."""
    return DisplacementField(fgeom, loader=loader)
