"""Prefect tasks of the estimate job: plan the inputs, estimate one channel, write the outputs, publish a
table.

One Prefect task per channel (a unit a person wants to see and retry); reading and reducing its
frames is a Dask graph on the flow run's cluster, chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ..core.estimate.chunked import estimate_shading_dask
from ..core.estimate.estimator import EstimateSettings, ShadingEstimate, check_mesh_box
from ..core.estimate.grid import EstimateError, frames_needed, grid_layout
from ..core.estimate.inputs import ImageStack, open_images
from ..core.estimate.outputs import output_state, write_estimate
from ..core.io import storage
from .dask_work import cluster_client, progress_compute
from .progress import Progress, Stage, artifact_key
from .retry import TRANSIENT_RETRY
from .run_names import run_name

PROFILES_KEY = "estimate-profiles"
TABLE_KEY = "estimate-summary"


@dataclass
class EstimatePlan:
    """What a run will do: the validated stack, the settings, and what happens to the output."""

    stack: ImageStack
    settings: EstimateSettings
    out: str
    action: str  # "write", "replace", "skip"
    recorded: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def make_plan(
    images: list[str],
    out: str,
    channels: int,
    component: str | None,
    settings: EstimateSettings,
    recorded: dict[str, Any],
    overwrite: bool,
    dataset: str | None = None,
    camera_offset: float | None = None,
) -> EstimatePlan:
    """Open and check the inputs (headers only) and the output location; nothing is written or read in
    bulk. The command line calls this before the run starts; the flow's first task calls it again.
    ``camera_offset``: a known flat darkfield, in place of what the inputs record (a slide's dark current)."""

    stack = open_images(images, channels, component, dataset)
    if camera_offset is not None:
        if stack.known_darkfield is not None and stack.known_darkfield != camera_offset:
            stack.notes.append(
                f"camera offset {camera_offset:g} counts (--camera-offset) subtracted in place of the dark "
                f"current the slides record ({stack.known_darkfield:g})"
            )
        stack.known_darkfield = float(camera_offset)
    need = frames_needed(settings.darkfield)
    if stack.n_frames < need:
        raise EstimateError(
            f"{', '.join(stack.inputs)}: {stack.n_frames} image{'s' if stack.n_frames != 1 else ''}; the "
            f"estimator needs at least {need}{' to estimate a darkfield' if settings.darkfield else ''}"
        )
    grid_layout(stack.shape, settings.grid_blocks)  # too small an image fails here
    check_mesh_box(settings, stack.shape, ", ".join(stack.inputs))
    action = output_state(out, recorded, stack.inputs, overwrite)
    return EstimatePlan(stack, settings, storage.normalize(out), action, recorded, list(stack.notes))


@task(name="plan-estimate", cache_policy=NO_CACHE)
def plan_estimate(
    images: list[str],
    out: str,
    channels: int,
    component: str | None,
    settings: EstimateSettings,
    recorded: dict[str, Any],
    overwrite: bool,
    dataset: str | None = None,
    camera_offset: float | None = None,
) -> EstimatePlan:
    """:func:`make_plan`, logged."""
    plan = make_plan(images, out, channels, component, settings, recorded, overwrite, dataset, camera_offset)
    logger = get_run_logger()
    logger.info("estimate: %s → %s (%s)", plan.stack.describe(), plan.out, plan.action)
    for note in plan.notes:
        logger.info("%s", note)
    return plan


def _frames_done(topic: str, n: int) -> None:
    from distributed import get_worker

    get_worker().log_event(topic, int(n))


def channel_stage(plan: EstimatePlan, channel: int) -> Stage:
    """The progress of a channel: frames read, once for the robust fit (a sample of at most
    ``max_frames``) and, when there are more, once more for the final pass."""
    n, most = plan.stack.n_frames, plan.settings.max_frames
    name = plan.stack.channel_names[channel]
    return f"{name} frames", min(n, most) + (n if n > most else 0), artifact_key("estimate", name)


@task(
    name="estimate-channel",
    task_run_name=run_name("estimate-channel", lambda p: p["plan"].stack.channel_names[p["channel"]]),
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRY,
)
def estimate_channel(plan: EstimatePlan, channel: int) -> ShadingEstimate:
    """Flatfield (and darkfield) of one channel: its frames reduced chunk by chunk on the cluster, then the
    robust fit."""

    stack, settings = plan.stack, plan.settings
    n = stack.n_frames
    name = stack.channel_names[channel]
    progress = Progress(*channel_stage(plan, channel))
    known = None if settings.darkfield else stack.known_darkfield
    with cluster_client() as client:
        client.subscribe_topic(progress.topic, lambda event: progress.advance(int(event[1])))
        try:
            result = estimate_shading_dask(
                stack.channel(channel),
                settings.darkfield,
                known_darkfield=known,
                settings=settings,
                compute=progress_compute(client, progress),
                report=partial(_frames_done, progress.topic),
                where=f"{', '.join(stack.inputs)} {name}",
            )
        finally:
            client.unsubscribe_topic(progress.topic)
    progress.done = progress.total
    progress.publish(force=True)
    _log_result(name, result, n)
    return result


def _log_result(name: str, result: ShadingEstimate, frames: int) -> None:
    logger = get_run_logger()
    summary = result.summary()
    logger.info(
        "%s: flatfield %.3f–%.3f, darkfield mean %.2f, %d/%d frames used, fit %.2f s",
        name,
        summary["flatfield_min"],
        summary["flatfield_max"],
        summary["darkfield_mean"],
        result.frames_used,
        frames,
        summary["seconds"],
    )
    if result.diagnostics.get("background") == "mesh":
        logger.info(
            "%s: stars left out against a mesh background (%d px boxes); %.0f %% of the pixels fitted as sky",
            name,
            result.diagnostics["mesh_box_px"],
            100 * result.diagnostics["sky_share"],
        )
    for note in result.notes:
        logger.warning("%s: %s", name, note)


@task(name="write-estimate", cache_policy=NO_CACHE)
def write_estimate_task(plan: EstimatePlan, results: list[ShadingEstimate]) -> dict[str, Any]:
    """flatfield.tiff, darkfield.tiff and estimate.zarr, published together with the manifest last."""

    extra = {
        "known_darkfield": plan.stack.known_darkfield if not plan.settings.darkfield else None,
        "stack": plan.stack.describe(),
        "files_read": len(plan.stack.files),
    }
    manifest = write_estimate(
        plan.out, results, plan.stack.channel_names, plan.recorded, plan.stack.inputs, extra
    )
    get_run_logger().info("estimate written to %s", plan.out)
    return manifest


TABLE_COLUMNS = (
    "channel",
    "frames",
    "used",
    "rejected",
    "flatfield min",
    "flatfield max",
    "darkfield mean",
    "baseline median",
    "noise τ",
    "converged",
    "seconds",
    "warnings",
)


def table_rows(names: list[str], results: list[ShadingEstimate]) -> list[dict[str, Any]]:
    """One row per channel with the columns of :data:`TABLE_COLUMNS`."""
    rows = []
    for name, result in zip(names, results):
        s = result.summary()
        rows.append(
            dict(
                zip(
                    TABLE_COLUMNS,
                    (
                        name,
                        s["frames"],
                        s["used"],
                        s["rejected"],
                        s["flatfield_min"],
                        s["flatfield_max"],
                        s["darkfield_mean"],
                        s["baseline_median"],
                        s["noise_tau"],
                        "yes" if s["converged"] else "NO",
                        s["seconds"],
                        "; ".join(result.notes) or "—",
                    ),
                )
            )
        )
    return rows


@task(name="publish-estimate-summary")
def publish_estimate_table(names: list[str], results: list[ShadingEstimate], out: str) -> None:
    """The table of numbers per channel, and a page with each channel's flatfield (and darkfield) as
    images."""
    # deferred on purpose: the report pages import matplotlib, needed only for this artifact
    from ..core.report_pages import markdown_image, preview_png

    create_table_artifact(
        table_rows(names, results), key=TABLE_KEY, description=f"Estimated shading per channel → {out}"
    )
    lines = [f"# Estimated shading → `{out}`", ""]
    for name, result in zip(names, results):
        lines += [
            f"## {name}",
            "",
            markdown_image(f"{name} flatfield", preview_png(result.flatfield, f"{name} flatfield")),
        ]
        if result.darkfield.any():
            lines.append(
                markdown_image(
                    f"{name} darkfield", preview_png(result.darkfield, f"{name} darkfield (counts)")
                )
            )
        lines += [f"- {note}" for note in result.notes] + [""]
    create_markdown_artifact("\n".join(lines), key=PROFILES_KEY, description=f"Estimated profiles → {out}")
