"""The ``ngff-dreg`` command line: register, apply, export, transform-points, info, demo, report.

Built on click, which dask already depends on: the command line adds no
dependency of its own.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from ngff_dreg.errors import NgffDregError
from ngff_dreg.methods import method_names

_METHOD_HELP = f"{', '.join(method_names()[:-1])} or {method_names()[-1]}."

F = TypeVar("F", bound=Callable[..., Any])


@click.group(
    name="ngff-dreg",
    help="Distributed coarse-to-fine registration of OME-Zarr (NGFF) images.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
def app() -> None:
    """The ``ngff-dreg`` command group."""


def _verbose(f: F) -> F:
    return click.option("--verbose", "-v", count=True, help="-v: info, -vv: debug.")(f)


def _storage(f: F) -> F:
    """``--anon``, ``--endpoint-url``, ``--profile``: S3 access."""
    f = click.option("--profile", default=None, help="AWS profile for S3 credentials.")(f)
    f = click.option("--endpoint-url", default=None,
                     help="S3-compatible endpoint URL (MinIO, moto...).")(f)
    return click.option("--anon", is_flag=True, help="Anonymous S3 access (public buckets).")(f)


def _scheduler(f: F) -> F:
    return click.option(
        "--scheduler", default=None,
        help="Dask scheduler: tcp://host:8786, or local:N for N local worker processes "
        "(default: a local cluster sized to the machine).")(f)


def _resampled(f: F) -> F:
    """``--channels``, ``--times``, ``--output-shards``: what is resampled, and how stored."""
    f = click.option(
        "--output-shards", metavar="EDGE", default=None,
        help="Write the outputs (fields, inverse, resampled image) as sharded Zarr v3: "
        "a shard edge in voxels/nodes ('256'), one per axis in z,y,x order "
        "('64,256,256'), or 'auto' (4 chunks per axis). Each edge must be a whole "
        "number of chunks (64; 256 for a 2D resampled image). Each shard is written "
        "whole by one task (memory: one shard). Default: unsharded.")(f)
    f = click.option("--times", default=None,
                     help="Time points of MOVING to resample: '0,3' (default: all).")(f)
    return click.option("--channels", default=None,
                        help="Channels of MOVING to resample, by index or label: '0,2' or "
                        "'DAPI,GFP' (default: all).")(f)


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


def _fail(exc: BaseException, verbose: int) -> NoReturn:
    from ngff_dreg.io.storage.urls import redact_text

    msg = redact_text(str(exc)) or type(exc).__name__
    click.echo(f"ngff-dreg: error: {msg}", err=True)
    if verbose >= 2:
        import traceback

        click.echo(redact_text("".join(traceback.format_exception(exc))), err=True)
    raise SystemExit(2 if isinstance(exc, NgffDregError) else 1)


def _guarded(f: F) -> F:
    """Set up logging from ``verbose``, and turn any error into one ``ngff-dreg: error:`` line."""

    @functools.wraps(f)
    def run(*args: Any, **kwargs: Any) -> Any:
        verbose = int(kwargs.get("verbose", 0) or 0)
        _setup_logging(verbose)
        try:
            return f(*args, **kwargs)
        except (SystemExit, click.exceptions.Exit, click.ClickException):
            raise
        except Exception as exc:
            _fail(exc, verbose)

    return run  # type: ignore[return-value]


@app.command()
@click.argument("url", required=False)
@click.option("--config", "show_config", is_flag=True,
              help="Print ngff-dreg's settings in force (dask config keys under ngff-dreg) "
              "and where each came from.")
@_storage
@_verbose
def info(url: str | None, show_config: bool, anon: bool, endpoint_url: str | None,
         profile: str | None, verbose: int) -> None:
    """Print levels, shapes, chunks, dtype, spacing, origin, direction and units of URL.

    URL is an OME-Zarr multiscale image (path, s3://, https://). With --config,
    print ngff-dreg's settings in force instead (or before the image).
    """
    if url is None and not show_config:
        raise click.BadParameter("give an image URL, or --config", param_hint="URL")
    _info(url, show_config, _storage_options(anon, endpoint_url, profile), verbose=verbose)


@_guarded
def _info(url: str | None, show_config: bool, opts: dict[str, Any] | None, *,
          verbose: int) -> None:
    from ngff_dreg.info import describe, describe_settings

    if show_config:
        click.echo(describe_settings() + ("\n" if url is not None else ""))
    if url is not None:
        click.echo(describe(url, opts))


def _build_schedule(
    fixed: str,
    opts: dict[str, Any] | None,
    schedule: Path | None,
    levels: str | None,
    block_size: int | None,
    overlap: float | None,
    method: str | None,
    fast: bool,
    similarity: str | None = None,
) -> Any:
    from ngff_dreg.io.omezarr.multiscale import open_multiscale
    from ngff_dreg.schedule import BlockStage, Schedule

    if schedule is None:
        ms = open_multiscale(fixed, opts)
        sched = Schedule.default([lvl.geometry for lvl in ms.levels], fast=fast,
                                 similarity=similarity)
        if levels or method:
            # the default's refinement stage belongs to its own B-spline stages
            sched.stages = [st for st in sched.stages if st.when_similarity is None]
    else:
        sched = Schedule.load(schedule)
    if schedule is not None and similarity is not None:
        if sched.global_stage is not None:
            sched.global_stage.similarity = similarity
        for st in sched.stages:
            if st.method == "bspline":
                st.method_options["similarity"] = similarity
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
@click.argument("fixed")
@click.argument("moving")
@click.option("--output", "-o", required=True, help="Output NGFF 0.6 scene URL.")
@click.option("--schedule", type=click.Path(path_type=Path), default=None,
              help="Schedule file (TOML or YAML).")
@click.option("--levels", default=None,
              help="Block-stage levels, coarse to fine: '1,0' or '4um,1um'.")
@click.option("--block-size", type=int, default=None, help="Block edge in voxels.")
@click.option("--overlap", type=float, default=None, help="Total block overlap fraction.")
@click.option("--method", default=None, help=_METHOD_HELP)
@click.option("--fast", is_flag=True, help="A lighter default schedule.")
@click.option("--similarity", type=click.Choice(["auto", "mind", "intensity"]), default=None,
              help="What the stages fit: 'auto' (default: the global stage decides), "
              "'mind' (MIND-SSC descriptors: any contrasts and illumination) or 'intensity' "
              "(an intensity map with a smooth gain: the same contrast up to a remap).")
@_scheduler
@_storage
@click.option("--resample", is_flag=True, help="Also write the resampled moving image.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--initial", default=None,
              help="Initial transform: NGFF scene URL or .npy matrix.")
@click.option("--threshold", type=float, default=None,
              help="Skip blocks whose voxels are below this.")
@click.option("--fixed-mask", default=None, help="OME-Zarr label image masking FIXED.")
@click.option("--moving-mask", default=None, help="OME-Zarr label image masking MOVING.")
@click.option("--into-fixed", is_flag=True,
              help="Also write the transform into FIXED's own group (NGFF 0.6).")
@click.option("--into-fixed-name", default=None,
              help="Coordinate-system name for it (default: from MOVING's URL).")
@click.option("--upgrade-fixed", is_flag=True,
              help="With --into-fixed: allow rewriting a 0.5 FIXED's metadata as 0.6 "
              "(arrays unchanged).")
@click.option("--fixed-channel", default=None,
              help="Channel of FIXED to register: index or omero label (default 0).")
@click.option("--moving-channel", default=None,
              help="Channel of MOVING to register: index or omero label (default 0).")
@click.option("--fixed-time", default=None,
              help="Time point of FIXED to register (default 0).")
@click.option("--moving-time", default=None,
              help="Time point of MOVING to register (default 0).")
@_resampled
@click.option("--progress/--no-progress", default=True)
@_verbose
@_guarded
def register(fixed: str, moving: str, output: str, **o: Any) -> None:
    """Register MOVING onto FIXED and write the fixed→moving transform to OUTPUT."""
    import numpy as np

    from ngff_dreg.io.omezarr.image_transform_writer import default_system_name
    from ngff_dreg.pipeline import register as run

    opts = _storage_options(o["anon"], o["endpoint_url"], o["profile"])
    sched = _build_schedule(fixed, opts, o["schedule"], o["levels"], o["block_size"],
                            o["overlap"], o["method"], o["fast"], o["similarity"])
    init: Any = None
    if o["initial"]:
        init = np.load(o["initial"]) if o["initial"].endswith(".npy") else o["initial"]
    into = o["into_fixed"] or o["into_fixed_name"]
    result = run(
        fixed, moving, output, schedule=sched, client=o["scheduler"], storage_options=opts,
        initial_transform=init, resample=o["resample"], overwrite=o["overwrite"],
        progress=o["progress"], signal_threshold=o["threshold"], fixed_mask=o["fixed_mask"],
        moving_mask=o["moving_mask"],
        into_fixed=(o["into_fixed_name"] or True) if into else False,
        upgrade_fixed=o["upgrade_fixed"], output_shards=_shards(o["output_shards"]),
        **_selection_options(o["fixed_channel"], o["moving_channel"], o["fixed_time"],
                             o["moving_time"], o["channels"], o["times"]),
    )
    _print_summary(result, o["verbose"])
    click.echo(f"transform written to {output}")
    if into:
        click.echo(f"and into {fixed} (coordinate system "
                   f"{o['into_fixed_name'] or default_system_name(moving)!r})")


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
            ncc = f"{rep.metric} {rep.ncc_before:.3f} -> {rep.ncc_after:.3f}"
        blocks = ""
        if rep.status is not None:
            import numpy as np

            blocks = (
                f"{int((np.asarray(rep.status) == 0).sum())}/{np.asarray(rep.status).size} blocks"
            )
        extra = " (resumed)" if rep.resumed else ""
        click.echo(
            f"{rep.name:>8}  level {rep.fixed_level}  {rep.method:<12} {blocks:>12}  {ncc}  "
            f"{rep.seconds:6.1f}s{extra}"
        )
        if verbose >= 1:
            for r in (getattr(rep, "report", None) or {}).get("refused") or []:
                click.echo(f"          refused block {tuple(r['block'])} {r['status']}: "
                           f"{r['reason']}")
    total = result.timings.get("total")
    if total is not None:
        click.echo(f"total {total:.1f}s")
    if verbose >= 1 and getattr(result, "io", None):
        from ngff_dreg.io.storage.store_stats import format_summary

        for line in format_summary(result.io):  # store I/O per stage and per image
            click.echo(line)


@app.command()
@click.argument("transform")
@click.argument("moving")
@click.argument("fixed")
@click.option("--output", "-o", required=True, help="Output OME-Zarr image URL.")
@click.option("--level", type=int, default=0, show_default=True,
              help="Fixed/moving level to resample.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@_resampled
@_scheduler
@_storage
@_verbose
@_guarded
def apply(transform: str, moving: str, fixed: str, output: str, level: int, overwrite: bool,
          **o: Any) -> None:
    """Resample MOVING into FIXED space through TRANSFORM, as a multiscale OME-Zarr 0.5 image.

    Every channel and time point is resampled (or those of --channels/--times);
    the output keeps MOVING's axes, dtype and channel metadata, on FIXED's pyramid.
    TRANSFORM is the scene register wrote, or SCENE:SOURCE:TARGET: the map from
    FIXED's physical space (system SOURCE) to MOVING's (TARGET) in any RFC-5 scene.
    """
    from ngff_dreg.apply import apply_transform

    opts = _storage_options(o["anon"], o["endpoint_url"], o["profile"])
    client = None
    scheduler = o["scheduler"]
    if scheduler:
        from distributed import Client

        client = Client(scheduler) if not scheduler.startswith("local:") else None
    apply_transform(
        moving, fixed, transform, output, level=level, storage_options=opts,
        overwrite=overwrite, scheduler=client, channels=_picks(o["channels"]),
        times=_picks(o["times"]), shards=_shards(o["output_shards"]),
    )
    click.echo(f"resampled image written to {output}")


@app.command()
@click.argument("output")
@click.argument("transform_file", type=click.Path(path_type=Path))
@click.option("--inverse", is_flag=True, help="Export the moving->fixed (TARGET->SOURCE) map.")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@click.option("--format", "fmt", type=click.Choice(["auto", "bigwarp"]), default="auto",
              show_default=True,
              help="auto: ITK, by the extension; bigwarp: a .zarr container BigWarp loads.")
@click.option("--grid", default=None,
              help="OME-Zarr image whose grid a field is sampled on (default: the field's).")
@click.option("--grid-level", type=int, default=0, show_default=True,
              help="Level of the --grid image.")
@_storage
@_verbose
@_guarded
def export(output: str, transform_file: Path, inverse: bool, overwrite: bool, fmt: str,
           grid: str | None, grid_level: int, **o: Any) -> None:
    """Export OUTPUT's transform as an ITK transform file, a field image, or for BigWarp.

    OUTPUT is the NGFF 0.6 scene register wrote, or SCENE:SOURCE:TARGET for the
    map between two coordinate systems of any RFC-5 scene (points x, y, z
    matched to the systems' spatial axes by name; a non-linear map is sampled on
    the grid of its first field, or on --grid). TRANSFORM_FILE is local:
    .h5/.hdf5/.tfm/.txt (ITK composite transform: affine + displacement field),
    .nii.gz/.nii/.nrrd/.nhdr/.mha/.mhd (displacement field image), or with
    --format bigwarp a .zarr container (BigWarp: give it as the moving image's
    transform).
    """
    from ngff_dreg.export import export_transform

    written = export_transform(
        output, transform_file, inverse=inverse,
        storage_options=_storage_options(o["anon"], o["endpoint_url"], o["profile"]),
        overwrite=overwrite, format=fmt, grid=grid, grid_level=grid_level,
    )
    click.echo(f"{'inverse' if inverse else 'transform'} written to {written}")


@app.command()
@click.option("--dir", "directory", type=click.Path(path_type=Path),
              default=Path("ngff-dreg-demo"), show_default=True,
              help="Where to write the demo data and output.")
@click.option("--downsample", type=int, default=1, show_default=True,
              help="Template downsampling (1 = 1 mm).")
@click.option("--fast", is_flag=True, help="A lighter schedule.")
@click.option("--synthetic", is_flag=True,
              help="Synthetic phantom instead of the MRI template.")
@_scheduler
@click.option("--resample/--no-resample", default=True)
@click.option("--progress/--no-progress", default=True)
@_verbose
@_guarded
def demo(directory: Path, downsample: int, fast: bool, synthetic: bool, scheduler: str | None,
         resample: bool, progress: bool, verbose: int) -> None:
    """Make the embedded demo pair, register it, and print the error against the known truth."""
    from ngff_dreg.demo import make_demo, point_errors
    from ngff_dreg.geometry import Box
    from ngff_dreg.interfaces import HasReport
    from ngff_dreg.io.omezarr.multiscale import open_multiscale
    from ngff_dreg.io.omezarr.reader import OMEZarrReaderConstructor
    from ngff_dreg.pipeline import register as run
    from ngff_dreg.schedule import Schedule

    click.echo(f"writing the demo pair to {directory} ...")
    pair = make_demo(directory, downsample=downsample, synthetic=synthetic)
    out = str(directory / "registration.ome.zarr")
    ms = open_multiscale(pair.fixed)
    sched = Schedule.default([lvl.geometry for lvl in ms.levels], fast=fast)
    result = run(pair.fixed, pair.moving, out, schedule=sched, client=scheduler,
                 overwrite=True, progress=progress, resample=resample)
    _print_summary(result)
    fixed = OMEZarrReaderConstructor(pair.fixed)().read_box(Box.full(pair.fixed_geometry.shape))
    mask = fixed > 0.1 * float(fixed.max())
    err = point_errors(result.transforms.transform, pair.truth, pair.fixed_geometry, mask=mask)
    click.echo(
        "point error vs truth (voxels, foreground): "
        f"mean {err['mean_vox']:.3f}  median {err['median_vox']:.3f}  "
        f"p95 {err['p95_vox']:.3f}  max {err['max_vox']:.3f}"
    )
    transforms = result.transforms
    report = (transforms.report or {}) if isinstance(transforms, HasReport) else {}
    if "jacobian_min" in report:
        click.echo(
            f"Jacobian determinant min {report['jacobian_min']:.3f}, "
            f"folded fraction {report.get('folded_fraction', 0.0):.4%}"
        )
    click.echo(f"transform: {out}")


@app.command()
@click.argument("output")
@click.option("--to", type=click.Path(path_type=Path), default=None,
              help="Folder for index.html and its PNGs (default: OUTPUT/report; required "
              "for a remote OUTPUT).")
@click.option("--fixed", default=None, help="Fixed image URL (default: as recorded).")
@click.option("--moving", default=None, help="Moving image URL (default: as recorded).")
@_storage
@_verbose
@_guarded
def report(output: str, to: Path | None, fixed: str | None, moving: str | None,
           **o: Any) -> None:
    """Write a visual registration report (HTML page with PNG figures) for OUTPUT.

    OUTPUT is the NGFF scene register wrote.
    """
    from ngff_dreg.report import write_report

    page = write_report(output, to=to, fixed=fixed, moving=moving,
                        storage_options=_storage_options(o["anon"], o["endpoint_url"],
                                                         o["profile"]))
    click.echo(f"report written to {page}")


@app.command("transform-points")
@click.argument("transform")
@click.argument("points")
@click.option("--output", "-o", required=True,
              help="Output table (.csv or .parquet); other columns are kept, in order.")
@click.option("--inverse", is_flag=True, help="Map moving -> fixed.")
@click.option("--columns", default=None, help="Point columns, x first: 'X,Y,Z'.")
@click.option("--blocksize", type=int, default=64_000_000, show_default=True,
              help="CSV bytes per partition (one task each).")
@_scheduler
@_storage
@_verbose
@_guarded
def transform_points(transform: str, points: str, output: str, inverse: bool,
                     columns: str | None, blocksize: int, **o: Any) -> None:
    """Map a table of POINTS fixed -> moving (or moving -> fixed) through TRANSFORM.

    TRANSFORM is the NGFF scene register wrote, or SCENE:SOURCE:TARGET for the map
    between two coordinate systems of any RFC-5 scene (names as ``ngff-dreg info
    SCENE`` lists them; the columns x, y, z go to the systems' spatial axes of
    those names, in whatever order the systems have them); POINTS a CSV or
    Parquet table with columns x,y,z (or x,y) in physical units of the fixed
    image (--columns names them in x, y, z order). Rows are
    processed in partitions on the dask cluster, so the table never sits in
    one process.
    """
    from contextlib import ExitStack

    from ngff_dreg.cluster import client_context
    from ngff_dreg.points import transform_table_file

    opts = _storage_options(o["anon"], o["endpoint_url"], o["profile"])
    cols = [c.strip() for c in columns.split(",")] if columns else None
    with ExitStack() as stack:
        client = client_context(o["scheduler"], stack)
        n = transform_table_file(transform, points, output, inverse=inverse, columns=cols,
                                 storage_options=opts, blocksize=blocksize, client=client)
    click.echo(f"{n} partition(s) of points mapped to {output}")


@app.command()
@click.argument("output")
@click.option("--screenshot", "png", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Render in headless Chromium, write this PNG and exit.")
@click.option("--size", default="800x600", show_default=True,
              help="Screenshot size, WIDTHxHEIGHT pixels.")
@_verbose
@_guarded
def view(output: str, png: Path | None, size: str, verbose: int) -> None:
    """Show OUTPUT's fixed and resampled moving images overlaid in neuroglancer.

    OUTPUT is a local registration output written with --resample. The fixed
    image is green, the resampled moving image magenta (grey where they
    agree). Serves on 127.0.0.1 and prints the viewer's URL; runs until
    Ctrl-C, or, with --screenshot, writes the PNG and exits.
    """
    import time

    from ngff_dreg.view import open_viewer, screenshot

    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter("WIDTHxHEIGHT, e.g. 800x600", param_hint="--size") from None
    session = open_viewer(output)
    click.echo(session.url)
    try:
        if png is not None:
            screenshot(session, png, size=(w, h))
            click.echo(f"wrote {png}")
            return
        click.echo("serving; Ctrl-C to stop")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()


@app.command("transform-coords")
@click.argument("path")
@click.argument("source")
@click.argument("target")
@click.argument("coordinates")
@_storage
def transform_coords(path: str, source: str, target: str, coordinates: str, anon: bool,
                     endpoint_url: str | None, profile: str | None) -> None:
    """Map COORDINATES from system SOURCE to system TARGET of the RFC-5 scene at PATH.

    COORDINATES is a JSON list of points, each with one coordinate per axis of
    SOURCE, in SOURCE's axis order (whatever it is: ``[[x, y, z], ...]``,
    ``[[t, z, y, x], ...]``...); the mapped points are in TARGET's. Prints
    ``{"coordinates": [...]}``; on failure (also points that do not have
    SOURCE's axis count) prints ``{"message": ...}`` and exits non-zero (the
    protocol of the ome-zarr-transformations-conformance suite). A system is
    named by its name, or ``IMAGE_PATH/NAME`` for one of a referenced image.
    """
    import json

    from ngff_dreg.io.omezarr.scene_reader import open_scene_graph
    from ngff_dreg.io.storage.urls import redact_text
    from ngff_dreg.ngff.scene_axes import check_point_count

    try:
        points = json.loads(coordinates)
        graph = open_scene_graph(path, _storage_options(anon, endpoint_url, profile))
        src, tgt = graph.resolve(source), graph.resolve(target)
        check_point_count(graph, src, points)
        mapped = graph.path(src, tgt)(points)
        check_point_count(graph, tgt, mapped)
    except Exception as exc:
        click.echo(json.dumps({"message": redact_text(f"{type(exc).__name__}: {exc}")}))
        raise SystemExit(2 if isinstance(exc, NgffDregError) else 1) from None
    click.echo(json.dumps({"coordinates": mapped.tolist()}))


def main() -> None:
    """Entry point of the ``ngff-dreg`` script."""
    app(prog_name="ngff-dreg")


if __name__ == "__main__":  # pragma: no cover
    main()
