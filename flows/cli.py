"""The ``shadeflow`` command line. Heavy imports happen inside commands, so ``--help`` is instant."""

from __future__ import annotations

import os
import sys
from typing import Optional

import typer

app = typer.Typer(
    help="Flatfield (shading) correction for microscopy: mean images, models, applied tests and tile correction, as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
synth_app = typer.Typer(help="Synthetic data with a known flatfield, for demos, tests and benchmarks.", no_args_is_help=True)
app.add_typer(synth_app, name="synth")


def _prefect_defaults() -> None:
    """Offline-friendly defaults (the user's environment wins): no telemetry, patient ephemeral API."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _user_errors() -> tuple[type[BaseException], ...]:
    from shadeflow.core.slide import SlideError
    from shadeflow.infra.sizing import SettingsError

    return (SlideError, SettingsError, FileNotFoundError, ValueError)


@synth_app.command("slides")
def synth_slides(
    out: str = typer.Option(..., "--out", help="Folder (or s3:// URL) to write the slides into"),
    slides: int = typer.Option(3, "--slides", min=1, help="Number of slides"),
    fields: int = typer.Option(48, "--fields", min=1, help="Fields per slide"),
    shape: tuple[int, int, int] = typer.Option((251, 336, 10), "--shape", help="Field shape H W L (Vectra: 1004 1344 35)"),
    seed: int = typer.Option(0, "--seed", help="Random seed"),
) -> None:
    """Write synthetic slides (slide contract) with a known flatfield saved beside them."""
    from shadeflow.core.synth import TRUTH_DIR, SynthConfig, write_cohort

    try:
        urls = write_cohort(out, SynthConfig(slides=slides, fields=fields, shape=tuple(shape), seed=seed), workers=os.cpu_count() or 2)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {len(urls)} slides of {fields} fields ({shape[0]}×{shape[1]}×{shape[2]}):")
    for url in urls:
        typer.echo(f"  {url}")
    typer.echo(f"known flatfield and masks: {out.rstrip('/')}/{TRUTH_DIR}/")


@app.command()
def meanimage(
    slides: list[str] = typer.Argument(..., help="Slide folders (local paths or s3:// URLs)"),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Dask workers (default: one worker, a thread per CPU)"),
    memory: Optional[str] = typer.Option(None, "--memory", help="Memory for the cluster, e.g. 16GiB (default: SHADEFLOW_MEMORY, CO_MEMORY or the machine's)"),
    mask_binning: Optional[int] = typer.Option(None, "--mask-binning", help="Block size of the mask grid (1, 2, 4, 8; default: automatic)"),
    skip_masking: bool = typer.Option(False, "--skip-masking", help="Stack every pixel of every bulk field"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace complete outputs made with other parameters"),
    seed: int = typer.Option(0, "--seed", help="Seed for the example fields in the masking summary"),
) -> None:
    """Per-slide masked mean images, written to <slide>/meanimage/."""
    _prefect_defaults()
    from shadeflow.infra.cluster import check_settings, task_runner

    try:
        size = check_settings(memory=memory, workers=workers)
        from shadeflow.flows.meanimage import MeanImageParameters, SlidesFailed
        from shadeflow.flows.meanimage import meanimage as meanimage_flow
        from shadeflow.flows.run import run_with_progress

        params = MeanImageParameters(slides=slides, mask_binning=mask_binning, skip_masking=skip_masking, overwrite=overwrite, seed=seed)
    except _user_errors() as exc:
        _fail(str(exc))
    typer.echo(f"cluster: {size.describe()}")
    try:
        reports = run_with_progress(meanimage_flow, {"params": params}, task_runner(memory=memory, workers=workers), "mean images")
    except SlidesFailed as exc:
        _fail(str(exc), code=1)
    except _user_errors() as exc:
        _fail(str(exc))
    for report in reports:
        typer.echo(f"{report['slide_id']}: {report['status']} → {report['output']}")


@app.command()
def demo(out: str = typer.Option("demo-output", "--out", help="Folder for the synthetic cohort and all outputs")) -> None:
    """Synthetic cohort → mean images, with a short report on how close they are to the known shading."""
    _prefect_defaults()
    from shadeflow.flows.demo import run_demo

    try:
        run_demo(out)
    except _user_errors() as exc:
        _fail(str(exc))


def main() -> None:
    app(prog_name="shadeflow")


if __name__ == "__main__":
    sys.exit(main())
