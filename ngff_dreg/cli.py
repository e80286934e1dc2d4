"""The ``ngff-dreg`` command line: register, apply, export, transform-points, info, demo, report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from ngff_dreg.errors import NgffDregError
from ngff_dreg.methods import method_names

_METHOD_HELP = f"{', '.join(method_names()[:-1])} or {method_names()[-1]}."

app = typer.Typer(
    name="ngff-dreg",
    help="Distributed coarse-to-fine registration of OME-Zarr (NGFF) images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="-v: info, -vv: debug.")]
Anon = Annotated[bool, typer.Option("--anon", help="Anonymous S3 access (public buckets).")]
Endpoint = Annotated[
    str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint URL (MinIO, moto...).")
]
Profile = Annotated[str | None, typer.Option("--profile", help="AWS profile for S3 credentials.")]
Scheduler = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Dask scheduler: tcp://host:8786, or local:N for N local worker processes "
        "(default: a local cluster sized to the machine).",
    ),
]
FixedChannel = Annotated[
    str | None, typer.Option("--fixed-channel", help="Channel of FIXED to register: index or "
                             "omero label (default 0).")
]
MovingChannel = Annotated[
    str | None, typer.Option("--moving-channel", help="Channel of MOVING to register: index or "
                             "omero label (default 0).")
]
FixedTime = Annotated[
    str | None, typer.Option("--fixed-time", help="Time point of FIXED to register (default 0).")
]
MovingTime = Annotated[
    str | None, typer.Option("--moving-time", help="Time point of MOVING to register (default 0).")
]
Channels = Annotated[
    str | None, typer.Option("--channels", help="Channels of MOVING to resample, by index or "
                             "label: '0,2' or 'DAPI,GFP' (default: all).")
]
Times = Annotated[
    str | None, typer.Option("--times", help="Time points of MOVING to resample: '0,3' "
                             "(default: all).")
]
OutputShards = Annotated[
    str | None, typer.Option(
        "--output-shards", metavar="EDGE",
        help="Write the outputs (fields, inverse, resampled image) as sharded Zarr v3: "
             "a shard edge in voxels/nodes ('256'), one per axis in z,y,x order "
             "('64,256,256'), or 'auto' (4 chunks per axis). Each edge must be a whole "
             "number of chunks (64; 256 for a 2D resampled image). Each shard is written "
             "whole by one task (memory: one shard). Default: unsharded.")
]


def _pick(text: str | None) -> int | str | None:
    """One channel/time selection from the command line: an index or a label."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else text


def _picks(text: str | None) -> list[int | str] | None:
    """A comma-separated list of selections (``None``: all)."""
    if text is None or not text.strip():
        return None
    return [p for p in (_pick(v) for v in text.split(",")) if p is not None and p != ""]


def _shards(text: str | None) -> int | tuple[int, ...] | str | None:
    """``--output-shards``: ``'auto'``, one edge, or comma-separated edges (z, y, x)."""
    if text is None or not text.strip():
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1 and not parts[0].isdigit():
        return parts[0]  # 'auto', or refused by the writer with a message naming the option
    if not all(p.isdigit() for p in parts):
        from ngff_dreg.errors import InvalidInputDataError

        raise InvalidInputDataError(
            f"--output-shards {text!r}: give an edge, edges 'Z,Y,X' or 'auto'")
    return int(parts[0]) if len(parts) == 1 else tuple(int(p) for p in parts)


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    # The dashboard link is always shown, even when logging is quiet.
    logging.getLogger("ngff_dreg.dashboard").setLevel(logging.INFO)
    if verbose == 0:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        dash = logging.getLogger("ngff_dreg.dashboard")
        dash.addHandler(handler)
        dash.propagate = False
    if verbose < 2:
        import os

        # dask.distributed configures its own loggers when imported, in this
        # process and in every worker process it starts: quiet it in both.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
        import distributed  # noqa: F401 - applies the logging config now

        for noisy in (
            "distributed",
            "tornado",
            "asyncio",
            "fsspec",
            "s3fs",
            "aiobotocore",
            "botocore",
            "urllib3",
        ):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def _storage_options(
    anon: bool, endpoint_url: str | None, profile: str | None
) -> dict[str, Any] | None:
    opts: dict[str, Any] = {}
    if anon:
        opts["anon"] = True
    if endpoint_url:
        opts["endpoint_url"] = endpoint_url
    if profile:
        opts["profile"] = profile
    return opts or None


def _fail(exc: BaseException, verbose: int) -> None:
    from ngff_dreg.io.storage.urls import redact_text

    msg = redact_text(str(exc)) or type(exc).__name__
    typer.echo(f"ngff-dreg: error: {msg}", err=True)
    if verbose >= 2:
        import traceback

        typer.echo(redact_text("".join(traceback.format_exception(exc))), err=True)
    raise typer.Exit(code=2 if isinstance(exc, NgffDregError) else 1)


@app.command()
def info(
    url: Annotated[str | None, typer.Argument(
        help="OME-Zarr multiscale image (path, s3://, https://).")] = None,
    show_config: Annotated[bool, typer.Option(
        "--config", help="Print ngff-dreg's settings in force (dask config keys under "
        "ngff-dreg) and where each came from.")] = False,
    anon: Anon = False,
    endpoint_url: Endpoint = None,
    profile: Profile = None,
    verbose: Verbose = 0,
) -> None:
    """Print levels, shapes, chunks, dtype, spacing, origin, direction and units.

    With --config, print ngff-dreg's settings in force instead (or before the image).
    """
    if url is None and not show_config:
        raise typer.BadParameter("give an image URL, or --config", param_hint="URL")
    _setup_logging(verbose)
    try:
        from ngff_dreg.info import describe, describe_settings

        if show_config:
            typer.echo(describe_settings() + ("\n" if url is not None else ""))
        if url is not None:
            typer.echo(describe(url, _storage_options(anon, endpoint_url, profile)))
    except Exception as exc:
        _fail(exc, verbose)


def _build_schedule(
    fixed: str,
    opts: dict[str, Any] | None,
    schedule: Path | None,
    levels: str | None,
    block_size: int | None,
    overlap: float | None,
    method: str | None,
    fast: bool,
) -> Any:
    from ngff_dreg.io.omezarr.multiscale import open_multiscale
    from ngff_dreg.schedule import BlockStage, Schedule

    if schedule is not None:
        sched = Schedule.load(schedule)
    else:
        ms = open_multiscale(fixed, opts)
        sched = Schedule.default([lvl.geometry for lvl in ms.levels], fast=fast)
    if levels:
        specs: list[Any] = [int(v) if v.strip().isdigit() else v.strip() for v in levels.split(",")]
        template = sched.stages[-1] if sched.stages else BlockStage()
        sched.stages = [
            BlockStage(
                level=spec,
                block_size=template.block_size,
                overlap=template.overlap,
                method=template.method,
                method_options=dict(template.method_options),
                field_spacing_factor=template.field_spacing_factor,
            )
            for spec in specs
        ]
    for st in sched.stages:
        if block_size is not None:
            st.block_size = int(block_size)
        if overlap is not None:
            st.overlap = float(overlap)
        if method is not None:
            st.method = method
            st.method_options = {}
            st.__post_init__()
    return sched


@app.command()
def register(
    fixed: Annotated[str, typer.Argument(help="Fixed (reference) OME-Zarr image.")],
    moving: Annotated[str, typer.Argument(help="Moving OME-Zarr image.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output NGFF 0.6 scene URL.")],
    schedule: Annotated[
        Path | None, typer.Option("--schedule", help="Schedule file (TOML or YAML).")
    ] = None,
    levels: Annotated[
        str | None,
        typer.Option("--levels", help="Block-stage levels, coarse to fine: '1,0' or '4um,1um'."),
    ] = None,
    block_size: Annotated[
        int | None, typer.Option("--block-size", help="Block edge in voxels.")
    ] = None,
    overlap: Annotated[
        float | None, typer.Option("--overlap", help="Total block overlap fraction.")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option("--method", help=_METHOD_HELP),
    ] = None,
    fast: Annotated[bool, typer.Option("--fast", help="A lighter default schedule.")] = False,
    scheduler: Scheduler = None,
    anon: Anon = False,
    endpoint_url: Endpoint = None,
    profile: Profile = None,
    resample: Annotated[
        bool, typer.Option("--resample", help="Also write the resampled moving image.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output.")
    ] = False,
    initial: Annotated[
        str | None,
        typer.Option("--initial", help="Initial transform: NGFF scene URL or .npy matrix."),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Skip blocks whose voxels are below this.")
    ] = None,
    fixed_mask: Annotated[
        str | None, typer.Option("--fixed-mask", help="OME-Zarr label image masking FIXED.")
    ] = None,
    moving_mask: Annotated[
        str | None, typer.Option("--moving-mask", help="OME-Zarr label image masking MOVING.")
    ] = None,
    into_fixed: Annotated[
        bool, typer.Option("--into-fixed", help="Also write the transform into FIXED's own "
                           "group (NGFF 0.6).")
    ] = False,
    into_fixed_name: Annotated[
        str | None, typer.Option("--into-fixed-name", help="Coordinate-system name for it "
                                 "(default: from MOVING's URL).")
    ] = None,
    upgrade_fixed: Annotated[
        bool, typer.Option("--upgrade-fixed", help="With --into-fixed: allow rewriting a 0.5 "
                           "FIXED's metadata as 0.6 (arrays unchanged).")
    ] = False,
    fixed_channel: FixedChannel = None,
    moving_channel: MovingChannel = None,
    fixed_time: FixedTime = None,
    moving_time: MovingTime = None,
    channels: Channels = None,
    times: Times = None,
    output_shards: OutputShards = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    verbose: Verbose = 0,
) -> None:
    """Register MOVING onto FIXED and write the fixed→moving transform to OUTPUT."""
    _setup_logging(verbose)
    try:
        import numpy as np

        from ngff_dreg.io.omezarr.image_transform_writer import default_system_name
        from ngff_dreg.pipeline import register as run

        opts = _storage_options(anon, endpoint_url, profile)
        sched = _build_schedule(fixed, opts, schedule, levels, block_size, overlap, method, fast)
        init: Any = None
        if initial:
            init = np.load(initial) if initial.endswith(".npy") else initial
        result = run(
            fixed, moving, output, schedule=sched, client=scheduler, storage_options=opts,
            initial_transform=init, resample=resample, overwrite=overwrite, progress=progress,
            signal_threshold=threshold, fixed_mask=fixed_mask, moving_mask=moving_mask,
            into_fixed=(into_fixed_name or True) if (into_fixed or into_fixed_name) else False,
            upgrade_fixed=upgrade_fixed, output_shards=_shards(output_shards),
            **_selection_options(fixed_channel, moving_channel, fixed_time, moving_time,
                                 channels, times),
        )
        _print_summary(result, verbose)
        typer.echo(f"transform written to {output}")
        if into_fixed or into_fixed_name:
            typer.echo(f"and into {fixed} (coordinate system "
                       f"{into_fixed_name or default_system_name(moving)!r})")
    except Exception as exc:
        _fail(exc, verbose)


def _selection_options(fixed_channel: str | None, moving_channel: str | None,
                       fixed_time: str | None, moving_time: str | None,
                       channels: str | None, times: str | None) -> dict[str, Any]:
    """``register`` keywords of the channel/time options."""
    return {
        "fixed_channel": _pick(fixed_channel),
        "moving_channel": _pick(moving_channel),
        "fixed_time": _pick(fixed_time),
        "moving_time": _pick(moving_time),
        "resample_channels": _picks(channels),
        "resample_times": _picks(times),
    }


def _print_summary(result: Any, verbose: int = 0) -> None:
    for rep in result.levels:
        ncc = ""
        if rep.ncc_before is not None and rep.ncc_after is not None:
            ncc = f"NCC {rep.ncc_before:.3f} -> {rep.ncc_after:.3f}"
        blocks = ""
        if rep.status is not None:
            import numpy as np

            blocks = (
                f"{int((np.asarray(rep.status) == 0).sum())}/{np.asarray(rep.status).size} blocks"
            )
        extra = " (resumed)" if rep.resumed else ""
        typer.echo(
            f"{rep.name:>8}  level {rep.fixed_level}  {rep.method:<12} {blocks:>12}  {ncc}  "
            f"{rep.seconds:6.1f}s{extra}"
        )
        if verbose >= 1:
            for r in (getattr(rep, "report", None) or {}).get("refused") or []:
                typer.echo(f"          refused block {tuple(r['block'])} {r['status']}: "
                           f"{r['reason']}")
    total = result.timings.get("total")
    if total is not None:
        typer.echo(f"total {total:.1f}s")
    if verbose >= 1 and getattr(result, "io", None):
        from ngff_dreg.io.storage.store_stats import format_summary

        for line in format_summary(result.io):  # store I/O per stage and per image
            typer.echo(line)


@app.command()
def apply(
    transform: Annotated[str, typer.Argument(help="NGFF transform scene written by register.")],
    moving: Annotated[str, typer.Argument(help="Moving OME-Zarr image.")],
    fixed: Annotated[str, typer.Argument(help="Fixed OME-Zarr image (output grid).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output OME-Zarr image URL.")],
    level: Annotated[int, typer.Option("--level", help="Fixed/moving level to resample.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    channels: Channels = None,
    times: Times = None,
    output_shards: OutputShards = None,
    scheduler: Scheduler = None,
    anon: Anon = False,
    endpoint_url: Endpoint = None,
    profile: Profile = None,
    verbose: Verbose = 0,
) -> None:
    """Resample MOVING into FIXED space through TRANSFORM, as a multiscale OME-Zarr 0.5 image.

    Every channel and time point is resampled (or those of --channels/--times);
    the output keeps MOVING's axes, dtype and channel metadata, on FIXED's pyramid.
    """
    _setup_logging(verbose)
    try:
        from ngff_dreg.apply import apply_transform

        opts = _storage_options(anon, endpoint_url, profile)
        client = None
        if scheduler:
            from distributed import Client

            client = Client(scheduler) if not scheduler.startswith("local:") else None
        apply_transform(
            moving,
            fixed,
            transform,
            output,
            level=level,
            storage_options=opts,
            overwrite=overwrite,
            scheduler=client,
            channels=_picks(channels),
            times=_picks(times),
            shards=_shards(output_shards),
        )
        typer.echo(f"resampled image written to {output}")
    except Exception as exc:
        _fail(exc, verbose)


@app.command()
def export(
    output: Annotated[
        str, typer.Argument(help="Registration output (the NGFF 0.6 scene register wrote).")
    ],
    transform_file: Annotated[
        Path,
        typer.Argument(
            help="Local file to write: .h5/.hdf5/.tfm/.txt (ITK composite transform: affine + "
            "displacement field) or .nii.gz/.nii/.nrrd/.nhdr/.mha/.mhd (displacement field image).",
        ),
    ],
    inverse: Annotated[
        bool, typer.Option("--inverse", help="Export the moving->fixed inverse.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing file.")
    ] = False,
    anon: Anon = False,
    endpoint_url: Endpoint = None,
    profile: Profile = None,
    verbose: Verbose = 0,
) -> None:
    """Export the transform as an ITK transform file or a displacement field image."""
    _setup_logging(verbose)
    try:
        from ngff_dreg.export import export_transform

        written = export_transform(
            output,
            transform_file,
            inverse=inverse,
            storage_options=_storage_options(anon, endpoint_url, profile),
            overwrite=overwrite,
        )
        typer.echo(f"{'inverse' if inverse else 'transform'} written to {written}")
    except Exception as exc:
        _fail(exc, verbose)


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to write the demo data and output.")
    ] = Path("ngff-dreg-demo"),
    downsample: Annotated[
        int, typer.Option("--downsample", help="Template downsampling (1 = 1 mm).")
    ] = 1,
    fast: Annotated[bool, typer.Option("--fast", help="A lighter schedule.")] = False,
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Synthetic phantom instead of the MRI template.")
    ] = False,
    scheduler: Scheduler = None,
    resample: Annotated[bool, typer.Option("--resample/--no-resample")] = True,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    verbose: Verbose = 0,
) -> None:
    """Make the embedded demo pair, register it, and print the error against the known truth."""
    _setup_logging(verbose)
    try:
        from ngff_dreg.demo import make_demo, point_errors
        from ngff_dreg.geometry import Box
        from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
        from ngff_dreg.pipeline import register as run
        from ngff_dreg.schedule import Schedule

        typer.echo(f"writing the demo pair to {directory} ...")
        pair = make_demo(directory, downsample=downsample, synthetic=synthetic)
        out = str(directory / "registration.ome.zarr")
        from ngff_dreg.io.omezarr.multiscale import open_multiscale

        ms = open_multiscale(pair.fixed)
        sched = Schedule.default([lvl.geometry for lvl in ms.levels], fast=fast)
        result = run(
            pair.fixed,
            pair.moving,
            out,
            schedule=sched,
            client=scheduler,
            overwrite=True,
            progress=progress,
            resample=resample,
        )
        _print_summary(result)
        fixed = OMEZarrReaderConstructor(pair.fixed)().read_box(Box.full(pair.fixed_geometry.shape))
        mask = fixed > 0.1 * float(fixed.max())
        err = point_errors(result.transforms.transform, pair.truth, pair.fixed_geometry, mask=mask)
        typer.echo(
            "point error vs truth (voxels, foreground): "
            f"mean {err['mean_vox']:.3f}  median {err['median_vox']:.3f}  "
            f"p95 {err['p95_vox']:.3f}  max {err['max_vox']:.3f}"
        )
        from ngff_dreg.interfaces import HasReport

        transforms = result.transforms
        report = (transforms.report or {}) if isinstance(transforms, HasReport) else {}
        if "jacobian_min" in report:
            typer.echo(
                f"Jacobian determinant min {report['jacobian_min']:.3f}, "
                f"folded fraction {report.get('folded_fraction', 0.0):.4%}"
            )
        typer.echo(f"transform: {out}")
    except Exception as exc:
        _fail(exc, verbose)


@app.command()
def report(
    output: Annotated[str, typer.Argument(help="Output NGFF scene written by register.")],
    to: Annotated[
        Path | None,
        typer.Option("--to", help="Folder for index.html and its PNGs (default: OUTPUT/report; "
                     "required for a remote OUTPUT)."),
    ] = None,
    fixed: Annotated[
        str | None, typer.Option("--fixed", help="Fixed image URL (default: as recorded).")
    ] = None,
    moving: Annotated[
        str | None, typer.Option("--moving", help="Moving image URL (default: as recorded).")
    ] = None,
    anon: Anon = False,
    endpoint_url: Endpoint = None,
    profile: Profile = None,
    verbose: Verbose = 0,
) -> None:
    """Write a visual registration report (HTML page with PNG figures) for OUTPUT."""
    _setup_logging(verbose)
    try:
        from ngff_dreg.report import write_report

        page = write_report(
            output,
            to=to,
            fixed=fixed,
            moving=moving,
            storage_options=_storage_options(anon, endpoint_url, profile),
        )
        typer.echo(f"report written to {page}")
    except Exception as exc:
        _fail(exc, verbose)


@app.command("transform-points")
def transform_points(
    transform: Annotated[str, typer.Argument(help="NGFF transform scene written by register.")],
    points: Annotated[str, typer.Argument(help="CSV or Parquet table with columns x,y,z (or "
                                          "x,y) in physical units of the fixed image.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output table (.csv or "
                                        ".parquet); other columns are kept, in order.")],
    inverse: Annotated[bool, typer.Option("--inverse", help="Map moving -> fixed.")] = False,
    columns: Annotated[
        str | None, typer.Option("--columns", help="Point columns, x first: 'X,Y,Z'.")
    ] = None,
    blocksize: Annotated[
        int, typer.Option("--blocksize", help="CSV bytes per partition (one task each).")
    ] = 64_000_000,
    scheduler: Scheduler = None,
    anon: Anon = False,
    endpoint_url: Endpoint = None,
    profile: Profile = None,
    verbose: Verbose = 0,
) -> None:
    """Map a table of points fixed -> moving (or moving -> fixed) through TRANSFORM.

    Rows are processed in partitions on the dask cluster, so the table never
    sits in one process.
    """
    _setup_logging(verbose)
    try:
        from contextlib import ExitStack

        from ngff_dreg.cluster import client_context
        from ngff_dreg.points import transform_table_file

        opts = _storage_options(anon, endpoint_url, profile)
        cols = [c.strip() for c in columns.split(",")] if columns else None
        with ExitStack() as stack:
            client = client_context(scheduler, stack)
            n = transform_table_file(transform, points, output, inverse=inverse, columns=cols,
                                     storage_options=opts, blocksize=blocksize, client=client)
        typer.echo(f"{n} partition(s) of points mapped to {output}")
    except Exception as exc:
        _fail(exc, verbose)


def main() -> None:
    """Entry point of the ``ngff-dreg`` script."""
    app(prog_name="ngff-dreg")


if __name__ == "__main__":  # pragma: no cover
    main()
