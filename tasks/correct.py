"""Prefect tasks of the correct job: plan a tile, correct a tile, publish the run's table.

One Prefect task per tile and stage (a unit a person wants to see and retry); the per-chunk work of
a tile is one Dask graph on the flow run's cluster.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ..core.correct.tile import CorrectRequest, TilePlan, TileReport, plan_tile, run_tile
from .dask_work import cluster_client, field_events, field_reporter, progress_compute
from .progress import Progress, Stage, artifact_key
from .retry import TRANSIENT_RETRY
from .run_names import folder_name, run_name

TABLE_KEY = "correct-summary"
PROFILES_KEY = "correct-flatfields"
MAX_CHANNELS_SHOWN = 8  # a page of previews, not hundreds


@task(
    name="plan-tile",
    task_run_name=run_name("plan-tile", lambda p: folder_name(p["tile_url"])),
    cache_policy=NO_CACHE,
)
def plan_tile_task(tile_url: str, request: CorrectRequest) -> TilePlan:
    """Validate a tile, its flatfield and background and its output location; nothing is written."""
    plan = plan_tile(tile_url, request)
    logger = get_run_logger()
    logger.info(
        "%s: %s, level %s → %s (%s)",
        plan.name,
        plan.image.describe(plan.level),
        plan.level.path,
        plan.output,
        plan.action,
    )
    for note in plan.notes:
        logger.info("%s", note)
    return plan


@task(
    name="correct-tile",
    task_run_name=run_name("correct-tile", lambda p: p["plan"].name),
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRY,
)
def correct_tile_task(plan: TilePlan) -> TileReport:
    """Background, flatfield, correction and pyramid of one tile, written chunk by chunk; the
    completion marker comes last. A retry redoes the partial output."""
    from functools import partial

    logger = get_run_logger()
    progress = Progress(*tile_stage(plan))
    if plan.action == "skip":
        progress.done = progress.total
        progress.publish(force=True)
        return run_tile(plan, log=logger.info)
    with cluster_client() as client, field_events(client, progress):
        on_block = partial(field_reporter(progress), plan.name)  # one Dask event per corrected chunk
        report = run_tile(
            plan, compute=progress_compute(client, progress), on_block=on_block, log=_logger(logger)
        )
    progress.done = progress.total
    progress.publish(force=True)
    logger.info(
        "%s: written in %.1f s (%.3g MB/s) → %s; flatfield %s; background %s",
        plan.name,
        report.seconds,
        report.mb_per_s,
        report.output,
        report.flatfield,
        report.background,
    )
    return report


def _logger(logger):
    def log(message: str) -> None:
        if message.startswith("WARNING "):
            logger.warning("%s", message[len("WARNING ") :])
        else:
            logger.info("%s", message)

    return log


TABLE_COLUMNS = ("tile", "status", "shape", "flatfield source", "background", "seconds", "MB/s", "output")


def table_rows(reports: list[TileReport]) -> list[dict]:
    """One row per tile with the columns of :data:`TABLE_COLUMNS`."""
    return [
        {
            "tile": r.tile,
            "status": r.status,
            "shape": "×".join(str(s) for s in r.shape) + f" {r.dtype}",
            "flatfield source": r.flatfield,
            "background": r.background,
            "seconds": r.seconds,
            "MB/s": r.mb_per_s,
            "output": r.output,
        }
        for r in reports
    ]


def tile_stage(plan: TilePlan) -> Stage:
    """The progress of a tile: one unit per corrected chunk of level 0 (none for a skipped tile)."""
    return (
        f"{plan.name} chunks",
        plan.n_blocks if plan.action != "skip" else 0,
        artifact_key("correct", plan.name),
    )


@task(name="publish-correct-summary")
def publish_correct_table(reports: list[TileReport], plans: list[TilePlan]) -> None:
    """The table of tiles, and a page with the flatfield each tile was divided by, as images (a
    flatfield shared by tiles — a model version, a file — is shown once)."""
    # deferred on purpose: the report pages import matplotlib, needed only for this artifact
    from ..core.report_pages import markdown_image, preview_png

    create_table_artifact(
        table_rows(reports),
        key=TABLE_KEY,
        description="Corrected tiles: shape, flatfield source, background, time and throughput",
    )
    lines, shown = ["# Flatfields applied", ""], set()
    for plan in plans:
        if plan.flatfield is None:
            lines += [
                f"## {plan.name}",
                "",
                "flatfield estimated from the tile itself (see its shadeflow.json)",
                "",
            ]
            continue
        if plan.flatfield.summary in shown:
            continue
        shown.add(plan.flatfield.summary)
        lines += [f"## {plan.flatfield.summary}", ""]
        for c, field in enumerate(plan.flatfield.fields[:MAX_CHANNELS_SHOWN]):
            lines.append(markdown_image(f"channel {c}", preview_png(field, f"channel {c}")))
        lines.append("")
    create_markdown_artifact("\n".join(lines), key=PROFILES_KEY, description="Flatfields applied")


def report_dicts(reports: list[TileReport]) -> list[dict]:
    return [asdict(r) for r in reports]
