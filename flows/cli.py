"""The ``shadeflow`` command line. Heavy imports happen inside commands, so ``--help`` is instant.

Every command first checks its input with light imports (:mod:`shadeflow.flows.preflight`), then
imports the flow (and with it Prefect, about 2 s) and runs it: a typo fails in about a second, and
never after a Prefect server or a cluster has started.

One convention for errors (:mod:`shadeflow.core.errors`): an expected error — the input is wrong — is
one line on stderr, ``error: <which input>: <what was wrong>[; <what to do>]``, without a traceback,
and exit code 2; a run that started and failed for some of its slides, tiles or channels is one such
line too, with exit code 1. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from ..core.errors import (
    EXIT_BAD_INPUT,
    EXIT_RUN_FAILED,
    RunFailed,
    checked_parameters,
    expected_errors,
    one_line,
)
from . import preflight
from .cli_options import job_command
from .parameters import (
    AppliedTestParameters,
    CorrectParameters,
    EstimateParameters,
    MeanImageParameters,
    ModelBuildParameters,
    ModelCompareParameters,
)

app = typer.Typer(
    help="Flatfield (shading) correction for microscopy: mean images, models, applied tests and tile "
    "correction, as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
synth_app = typer.Typer(
    help="Synthetic data with a known flatfield, for demos, tests and benchmarks.", no_args_is_help=True
)
app.add_typer(synth_app, name="synth")
slides_app = typer.Typer(
    help="Slides from your own data: the slide contract for a folder of TIFF fields.", no_args_is_help=True
)
app.add_typer(slides_app, name="slides")
model_app = typer.Typer(
    help="Flatfield models: build a version, compare mean images, list a store.", no_args_is_help=True
)
app.add_typer(model_app, name="model")


def _prefect_defaults() -> None:
    """Offline-friendly defaults (the user's environment wins): no telemetry, patient ephemeral API."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # the progress bar and summary go to the console; run logs still reach the Prefect API and UI
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")


def _prelaunch_prefect() -> None:
    """Once the parameters parse, before the input checks: Prefect's temporary API server launched, to
    come up while the command checks its input, imports the flow and plans the run; nothing of Prefect
    is imported yet (:func:`shadeflow.flows.api_server.prelaunch_api_server`)."""
    _prefect_defaults()
    from .api_server import prelaunch_api_server

    prelaunch_api_server()


def _start_prefect() -> None:
    """Once the input checks out: Prefect's settings, and its temporary API server confirmed or launched
    now (:mod:`shadeflow.flows.api_server`)."""
    _prefect_defaults()
    from .api_server import start_api_server

    start_api_server()


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    from .api_server import stop_api_server

    stop_api_server()  # a refused input: the server launched before the checks is not needed
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@contextmanager
def _reported(up_front: bool = False) -> Iterator[None]:
    """The one place a command turns an error into its one line and exit code (module description).

    Storage that cannot be reached (a refused connection, a timeout — :func:`is_transient`, after
    the retries) is one line too, naming the endpoint and object: exit 2 when the command's first
    checks hit it (``up_front``: nothing started), 1 during a run."""
    try:
        yield
    except RunFailed as exc:
        _fail(one_line(exc), EXIT_RUN_FAILED)
    except expected_errors() as exc:
        _fail(one_line(exc))
    except Exception as exc:
        from ..core.errors import is_transient

        if not is_transient(exc):
            raise
        from ..core.io.storage import redact

        text = redact(one_line(exc))
        _fail(
            f"storage unreachable: {text}; check the endpoint (AWS_ENDPOINT_URL) and the network, then run "
            "again",
            EXIT_BAD_INPUT if up_front else EXIT_RUN_FAILED,
        )


def _quiet_prefect_console() -> None:
    """Before a flow runs: Prefect's ephemeral API server, if it needs one, dies with this process
    (:mod:`shadeflow.flows.api_server`). On the console, a failure is the one line this CLI prints,
    not Prefect's tracebacks and "Finished in state Failed" lines about it, nor Dask's "Compute
    Failed" log of an expected error (the run's logs in the Prefect API keep everything). A bug's
    traceback still shows."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    from .api_server import tie_ephemeral_server

    tie_ephemeral_server()  # a killed command leaves no API server behind (issue 11, defect 8)
    expected = (*expected_errors(), RunFailed)

    class HideExpectedFailures(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info:
                return not isinstance(record.exc_info[1], expected)
            return not str(record.msg).startswith("Finished in state Failed")

    for logger in [logging.getLogger(), *[logging.getLogger(n) for n in logging.root.manager.loggerDict]]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, PrefectConsoleHandler):
                handler.addFilter(HideExpectedFailures())
    logging.getLogger("distributed.worker").addFilter(_HideExpectedComputeFailures())


#: exceptions that are the input's fault, by name, as Dask's "Compute Failed" log shows them
_EXPECTED_NAMES = frozenset(
    {
        "ValueError",
        "InputError",
        "SlideError",
        "ModelError",
        "TileError",
        "FlatfieldError",
        "BackgroundError",
        "EstimateError",
        "SettingsError",
    }
    | {cls.__name__ for cls in expected_errors()}
)


class _HideExpectedComputeFailures:
    """Dask's worker logs every failed task as "Compute Failed" with the exception and its traceback;
    for an expected error (the input's fault) the command's one ``error:`` line says it all. A bug's
    "Compute Failed" still shows. (Workers in processes of their own log in those processes.)"""

    def filter(self, record) -> bool:
        import re

        message = str(record.msg)
        if not message.startswith("Compute Failed"):
            return True
        text = record.getMessage()
        match = re.search(r"Exception:\s*['\"]?(\w+)\(", text)
        return not (match and match.group(1) in _EXPECTED_NAMES)


def _run(flow, params, label: str, memory: str | None = None, workers: int | None = None):
    """Run a flow with a progress bar (errors as in :func:`_reported`)."""
    from ..infra.cluster import check_settings, task_runner
    from .run import run_with_progress

    _quiet_prefect_console()
    with _reported():
        size = check_settings(memory=memory, workers=workers)
        typer.echo(f"cluster: {size.describe()}")
        return run_with_progress(flow, {"params": params}, task_runner(memory=memory, workers=workers), label)


@synth_app.command("slides")
def synth_slides(
    out: str = typer.Option(..., "--out", help="Folder (or s3:// URL) to write the slides into"),
    slides: int = typer.Option(3, "--slides", min=1, help="Number of slides"),
    fields: int = typer.Option(48, "--fields", min=1, help="Fields per slide"),
    shape: tuple[int, int, int] = typer.Option(
        (251, 336, 10), "--shape", help="Field shape H W L (Vectra: 1004 1344 35)"
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed"),
    grid: str | None = typer.Option(
        None, "--grid", help="COLUMNSxROWS of fields, e.g. 12x10 (replaces --fields)"
    ),
    tissue_coverage: float | None = typer.Option(
        None, "--tissue-coverage", help="Fraction of the scan that is tissue, e.g. 0.2–0.95 (default ≈ 0.93)"
    ),
    dark_current: float = typer.Option(8.0, "--dark-current", min=0, help="Dark current, counts"),
    background_ratio: float | None = typer.Option(
        None,
        "--background-ratio",
        min=0,
        help="Background counts above dark at the median exposure ÷ dark current (default: 0.1 counts/ms)",
    ),
    low_count_layers: int = typer.Option(
        0, "--low-count-layers", min=0, help="Non-DAPI layers whose tissue has only --low-count-signal counts"
    ),
    low_count_signal: float = typer.Option(
        15.0, "--low-count-signal", help="Counts above dark of low-count tissue at the median exposure"
    ),
    exposure_range: tuple[float, float] | None = typer.Option(
        None, "--exposure-range", help="MIN MAX exposure time (ms), drawn per field and layer group"
    ),
    tissue_rate: tuple[float, float] | None = typer.Option(
        None, "--tissue-rate", help="MIN MAX tissue brightness (counts/ms), drawn per layer group"
    ),
    fold_density: float = typer.Option(0.3, "--fold-density", help="Probability that a field has a fold"),
    saturation_density: float = typer.Option(
        0.3, "--saturation-density", help="Probability that a field has saturated spots"
    ),
    layout: str = typer.Option(
        "shadeflow",
        "--layout",
        help="shadeflow: slide folders (slide.json, fields.csv); astropath: an AstroPath tree with root "
        "--out (sampledef.csv, <SlideID>/im3/xml/) and the fields in <out>/shardedim3root/",
    ),
) -> None:
    """Write synthetic slides (slide contract, or an AstroPath tree) with a known flatfield saved beside
    them."""
    from ..core.io import storage
    from ..core.synth.slides import LAYOUTS, SHARDED_DIR, TRUTH_DIR, SynthConfig, parse_grid, write_cohort

    if layout not in LAYOUTS:
        _fail(f"--layout {layout}: not one of {', '.join(LAYOUTS)}")

    with _reported():
        config = SynthConfig(
            slides=slides,
            fields=fields,
            shape=tuple(shape),
            seed=seed,
            grid=parse_grid(grid) if grid else None,
            tissue_coverage=tissue_coverage,
            dark_current=dark_current,
            background_ratio=background_ratio,
            low_count_layers=low_count_layers,
            low_count_signal=low_count_signal,
            exposure_range=exposure_range,
            tissue_rate=tissue_rate,
            fold_probability=fold_density,
            saturation_probability=saturation_density,
        )
        fields = config.fields
        storage.check_output_folder(out, "--out")
        urls = write_cohort(out, config, workers=os.cpu_count() or 2, layout=layout)
    typer.echo(f"wrote {len(urls)} slides of {fields} fields ({shape[0]}×{shape[1]}×{shape[2]}):")
    for url in urls:
        typer.echo(f"  {url}")
    if layout == "astropath":
        root = storage.normalize(out)
        typer.echo(f"AstroPath root: {root} (sampledef.csv); fields: {storage.join(root, SHARDED_DIR)}")
        typer.echo(
            f"  shadeflow meanimage --astropath {root} --shardedim3root {storage.join(root, SHARDED_DIR)}"
        )
    typer.echo(f"known flatfield and masks: {out.rstrip('/')}/{TRUTH_DIR}/")


@job_command(app, "meanimage", MeanImageParameters)
def meanimage(values: dict, memory: str | None = None, workers: int | None = None) -> None:
    with _reported(up_front=True):
        params = checked_parameters(MeanImageParameters, **values)
        _prelaunch_prefect()
        preflight.meanimage(
            params.slides,
            memory=memory,
            workers=workers,
            overwrite=params.overwrite,
            source=params.source(),
            skip_masking=params.skip_masking,
        )
    _start_prefect()
    # deferred until the input checks out: the flow module imports Prefect (~2 s)
    from .meanimage import meanimage as flow

    reports = _run(flow, params, "fields", memory=memory, workers=workers)
    for report in reports:
        typer.echo(f"{report['slide_id']}: {report['status']} → {report['output']}")


@job_command(model_app, "build", ModelBuildParameters)
def model_build(values: dict, memory: str | None = None, workers: int | None = None) -> None:
    with _reported(up_front=True):
        params = checked_parameters(ModelBuildParameters, **values)
        _prelaunch_prefect()
        preflight.model_build(
            params.version,
            params.models_csv,
            params.roots,
            params.store,
            params.overwrite,
            memory=memory,
            source=params.source(),
        )
    _start_prefect()
    # deferred until the input checks out: the flow module imports Prefect (~2 s)
    from .model import model_build as flow

    result = _run(flow, params, "slides", memory=memory, workers=workers)
    summary = result["statistics"]
    typer.echo(f"model {result['version']}: {len(result['slides'])} slides → {result['folder']}")
    typer.echo(
        f"flatfield range {summary['min']:.3f}–{summary['max']:.3f}, mean std {summary['mean_std']:.4f}"
    )


@model_app.command("list")
def model_list(store: str = typer.Option(..., "--store", help="Model store")) -> None:
    """List the versions in a model store with their slide counts and statistics."""
    with _reported(up_front=True):
        preflight.model_list(store)
    from rich.console import Console
    from rich.table import Table

    from ..core.model.build import model_summary_line
    from ..core.model.store import list_versions

    with _reported():
        rows = [model_summary_line(m) for m in list_versions(store)]
    if not rows:
        typer.echo(f"no model versions in {store}")
        return
    table = Table(title=f"Flatfield models in {store}")
    for column in ("version", "slides", "fields", "shape", "min", "max", "mean std", "created"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["version"],
            str(row["slides"]),
            str(row["fields"]),
            row["shape"],
            f"{row['min']:.3f}",
            f"{row['max']:.3f}",
            f"{row['mean_std']:.4f}",
            row["created"],
        )
    Console(width=140).print(table)


@job_command(model_app, "compare", ModelCompareParameters)
def model_compare(values: dict, memory: str | None = None, workers: int | None = None) -> None:
    with _reported(up_front=True):
        params = checked_parameters(ModelCompareParameters, **values)
        _prelaunch_prefect()
        preflight.model_compare(
            params.roots,
            params.slides,
            params.store_as,
            params.models_csv,
            params.workdir,
            params.band,
            params.min_images_stacked,
            source=params.source(),
        )
    _start_prefect()
    # deferred until the input checks out: the flow module imports Prefect (~2 s)
    from .model_compare import compare_command

    _quiet_prefect_console()
    with _reported():
        compare_command(memory=memory, workers=workers, **values)


@job_command(app, "applied-test", AppliedTestParameters)
def applied_test(values: dict, memory: str | None = None, workers: int | None = None) -> None:
    with _reported(up_front=True):
        params = checked_parameters(AppliedTestParameters, **values)
        _prelaunch_prefect()
        preflight.applied_test(
            params.roots, params.out, params.slides, params.overwrite, memory=memory, source=params.source()
        )
    _start_prefect()
    # deferred until the input checks out: the flow module imports Prefect (~2 s)
    from .model import applied_test as flow

    result = _run(flow, params, "fields", memory=memory, workers=workers)
    change = result["summary"]["change_percent"]
    typer.echo(f"applied test on {len(result['slides'])} slides → {result['out']}")
    typer.echo(
        f"illumination variation (std of smoothed mean-relative intensity): {change['mean_std']:+.1f} % "
        f"whole image, {change['mean_central_std']:+.1f} % central"
    )


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("×", ",").replace("x", ",").split(",") if v.strip())
    except ValueError:
        _fail(f"{option} {text!r} is not comma-separated whole numbers (e.g. 64,256,256)")


@synth_app.command("tile")
def synth_tile(
    out: str = typer.Option(..., "--out", help="Folder (or s3:// URL) to write the tile into"),
    name: str = typer.Option("tile.ome.zarr", "--name", help="The tile's folder name"),
    shape: str = typer.Option("64,256,256", "--shape", help="Shape along --axes, e.g. 128,1024,1024"),
    axes: str = typer.Option("zyx", "--axes", help="Axes: a subsequence of tczyx ending in yx"),
    dtype: str = typer.Option("uint16", "--dtype", help="uint8, uint16 or float32"),
    chunks: str | None = typer.Option(
        None, "--chunks", help="Chunk shape along --axes (default 64 planes × 256 × 256)"
    ),
    zarr_format: int = typer.Option(3, "--zarr-format", help="2 (NGFF 0.4) or 3 (NGFF 0.5)"),
    levels: int = typer.Option(1, "--levels", min=1, help="Resolution levels of the synthetic tile itself"),
    background: float = typer.Option(100.0, "--background", help="Background offset in counts"),
    seed: int = typer.Option(0, "--seed", help="Random seed"),
) -> None:
    """Write a synthetic OME-Zarr tile with a planted flatfield and background (saved beside it)."""
    from ..core.io import storage
    from ..core.io.omezarr import SUPPORTED_DTYPES
    from ..core.synth.tiles import synth_tile_command

    supported = [str(d) for d in SUPPORTED_DTYPES]
    if dtype not in supported:
        _fail(f"--dtype {dtype}: not one of {', '.join(supported)}")
    with _reported():
        storage.check_output_folder(out, "--out")
        truth = synth_tile_command(
            out,
            name,
            _ints(shape, "--shape"),
            axes,
            dtype,
            _ints(chunks, "--chunks") if chunks else None,
            zarr_format,
            levels,
            background,
            seed,
        )
    typer.echo(
        f"wrote {truth['tile']} ({'×'.join(map(str, truth['config']['shape']))} {axes} {dtype}, zarr "
        f"v{zarr_format})"
    )
    typer.echo(
        f"planted flatfield: {truth['flatfield']}; background {truth['background']:g} counts; "
        f"background-only planes: {truth['quiet_planes']}"
    )


@synth_app.command("stack")
def synth_stack(
    out: str = typer.Option(..., "--out", help="Folder (or s3:// URL) for the stack and its truth"),
    kind: str = typer.Option("tissue", "--kind", help="tissue, sparse (cells) or empty (mostly background)"),
    size: int = typer.Option(512, "--size", min=16, help="Frames are SIZE×SIZE pixels"),
    frames: int = typer.Option(200, "--frames", min=1, help="Number of frames"),
    darkfield: bool = typer.Option(
        True, "--darkfield/--no-darkfield", help="Plant a darkfield (≈100 counts)"
    ),
    outliers: float = typer.Option(0.0, "--outliers", help="Fraction of outlier frames (e.g. 0.02)"),
    saturated: float = typer.Option(0.0, "--saturated", help="Fraction of frames with saturated spots"),
    fmt: str = typer.Option("zarr", "--format", help="zarr (one array) or tiff (one file per frame)"),
    seed: int = typer.Option(0, "--seed", help="Random seed"),
) -> None:
    """Write a stack of 2D frames with a planted flatfield and darkfield (saved beside it), for \
`shadeflow estimate`."""
    from ..core.io import storage
    from ..core.synth.stacks import StackConfig, write_stack

    with _reported():
        config = StackConfig(
            kind=kind,
            size=size,
            n=frames,
            darkfield=darkfield,
            outlier_fraction=outliers,
            saturated_fraction=saturated,
            seed=seed,
        )
        if fmt not in ("zarr", "tiff"):
            raise ValueError(f"--format {fmt}: not zarr or tiff")
        storage.check_output_folder(out, "--out")
        written = write_stack(out, config, fmt=fmt, workers=os.cpu_count() or 2)
    typer.echo(f"wrote {config.label}: {written['images']}")
    typer.echo(f"planted flatfield and darkfield: {written['truth']}")


@job_command(app, "estimate", EstimateParameters)
def estimate(values: dict, memory: str | None = None, workers: int | None = None) -> None:
    with _reported(up_front=True):
        params = checked_parameters(EstimateParameters, **values)
        _prelaunch_prefect()
        preflight.estimate(
            params.images,
            params.out,
            channels=params.channels,
            component=params.component,
            darkfield=params.darkfield,
            dataset=params.dataset,
            memory=memory,
            workers=workers,
            recorded=params.recorded(),
            overwrite=params.overwrite,
            grid_blocks=params.settings().grid_blocks,
        )
    _start_prefect()
    # deferred until the input checks out: the flow module imports Prefect (~2 s)
    from .estimate import estimate_command

    _quiet_prefect_console()
    with _reported():
        result = estimate_command(memory=memory, workers=workers, **values)
    if result["status"] == "skipped":
        typer.echo(f"{result['out']}: complete with the same parameters and inputs; nothing to do")
        return
    for name, row in zip(result["channels"], result["summary"]):
        dark = f", darkfield mean {row['darkfield_mean']:g} counts" if params.darkfield else ""
        sky = (
            ""
            if row.get("sky_share") is None
            else f"; stars left out, {row['sky_share']:.0%} of pixels as sky"
        )
        typer.echo(
            f"  {name}: {row['used']} of {row['frames']} frames used ({row['rejected']} rejected as "
            "outliers); "
            f"flatfield {row['flatfield_min']:g}–{row['flatfield_max']:g}{dark}{sky}"
        )
    for note in result.get("notes", []):
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW)
    written = [
        name
        for name in ("flatfield.tiff", "darkfield.tiff", "estimate.zarr")
        if any(f.split("/")[0] == name for f in result["files"])
    ]
    typer.echo(f"wrote {', '.join(written)} → {result['out']}")


@job_command(app, "correct", CorrectParameters)
def correct(values: dict, memory: str | None = None, workers: int | None = None) -> None:
    # every tile, its flatfield and the output checked before Prefect starts
    with _reported(up_front=True):
        params = checked_parameters(CorrectParameters, **values)
        _prelaunch_prefect()
        preflight.correct(params, memory=memory, workers=workers)
    _start_prefect()
    # deferred until the input checks out: the flow module imports Prefect (~2 s)
    from .correct import correct_command

    _quiet_prefect_console()
    with _reported():
        reports = correct_command(memory=memory, workers=workers, **values)
    for r in reports:
        timing = f", {r['seconds']:g} s, {r['mb_per_s']:g} MB/s" if r["status"] == "written" else ""
        typer.echo(
            f"{r['tile']}: {r['status']} → {r['output']} (flatfield {r['flatfield']}; background "
            f"{r['background']}{timing})"
        )


@slides_app.command("init")
def slides_init(
    folder: str = typer.Argument(
        ..., help="Slide folder holding one multi-page TIFF per field (a page per layer)"
    ),
    positions: str | None = typer.Option(
        None,
        "--positions",
        help="CSV of field centres: file,cx,cy in µm (optional exposure_ms_<group> columns)",
    ),
    grid: int | None = typer.Option(
        None,
        "--grid",
        help="Instead of --positions: fields in file-name order fill rows of this many columns",
    ),
    overlap: float = typer.Option(0.1, "--overlap", help="--grid: overlap of neighbouring fields (fraction)"),
    pixel_size_um: float = typer.Option(0.4976, "--pixel-size-um", help="Pixel size in µm (Vectra: 0.4976)"),
    layer_groups: str | None = typer.Option(
        None, "--layer-groups", help="Layer groups, e.g. dapi=1-1,fitc=2-4 (default: one group of all layers)"
    ),
    exposure_ms: float = typer.Option(
        1.0,
        "--exposure-ms",
        help="Exposure time of fields without one in --positions (1: mean image in counts)",
    ),
    dark_current: float = typer.Option(0.0, "--dark-current", help="Camera offset in counts"),
    microscope: str = typer.Option("vectra", "--microscope", help="vectra or polaris (masking parameters)"),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing slide.json and fields.csv"
    ),
) -> None:
    """Write slide.json and fields.csv for a folder of TIFF fields, so that `shadeflow meanimage` reads it."""
    from ..core.io.slide_init import init_slide

    with _reported(up_front=True):
        meta = init_slide(
            folder,
            positions=positions,
            grid_columns=grid,
            overlap=overlap,
            pixel_size_um=pixel_size_um,
            layer_groups=layer_groups,
            exposure_ms=exposure_ms,
            dark_current=dark_current,
            microscope=microscope,
            overwrite=overwrite,
        )
    h, w, layers = meta["shape"]
    typer.echo(
        f"slide {meta['slide_id']}: {h}×{w} px, {layers} layers {meta['dtype']} → slide.json and fields.csv "
        f"in {folder}; next: shadeflow meanimage {folder}"
    )


@app.command("cluster")
def cluster_command(
    memory: str | None = typer.Option(
        None,
        "--memory",
        help="Memory for the cluster, e.g. 64GiB (default: SHADEFLOW_MEMORY, CO_MEMORY or the machine's)",
    ),
    kind: str | None = typer.Option(
        None,
        "--cluster",
        help="local, kubernetes or tcp://host:port (default: SHADEFLOW_CLUSTER, else local)",
    ),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Fix the number of Dask workers"),
) -> None:
    """Show the cluster a run would get (for kubernetes the DaskCluster spec as YAML); creates nothing."""
    from ..infra.preview import cluster_preview

    with _reported():
        text, warnings = cluster_preview(memory=memory, cluster=kind, workers=workers)
    typer.echo(text)
    for warning in warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW, err=True)


@app.command("serve")
def serve_command(
    prefect_file: str | None = typer.Option(
        None, "--prefect-file", help="prefect.yaml whose deployments to serve (default: shadeflow's own)"
    ),
    limit: int = typer.Option(
        1,
        "--limit",
        min=0,
        help="Most flow runs at once (0: no limit); each local run sizes its cluster from the whole machine",
    ),
    only: list[str] | None = typer.Option(
        None, "--only", help="Serve only this flow/deployment, e.g. meanimage/meanimage (repeatable)"
    ),
) -> None:
    """Serve every flow as a deployment with its schedules, for runs from the UI (needs a Prefect \
server: PREFECT_API_URL)."""
    _prefect_defaults()
    from ..deployments.serve import serve_all

    with _reported():
        serve_all(prefect_file, limit=limit or None, only=only or None)


@app.command()
def demo(
    out: str = typer.Option("demo-output", "--out", help="Folder for the synthetic cohort and all outputs"),
) -> None:
    """Synthetic cohort → mean images, with a short report on how close they are to the known shading."""
    _start_prefect()
    from .api_server import tie_ephemeral_server
    from .demo import run_demo

    tie_ephemeral_server()
    with _reported():
        run_demo(out)


def main() -> None:
    try:
        app(prog_name="shadeflow")
    finally:
        _light_exit()


def _light_exit() -> None:
    """After a run: the interpreter's last garbage collections at exit walk every object that Prefect,
    Dask and SciPy made (2–6 s on a busy 2-core machine, ``bench/startup.py``); frozen, those objects
    are left to the operating system, which frees the whole process anyway. Exit handlers still run."""
    if "prefect" in sys.modules:
        import gc

        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
