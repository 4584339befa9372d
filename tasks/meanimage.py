"""Prefect tasks of the meanimage job.

One Prefect task per slide and stage (plan, thresholds, masking and stacking, writing): units a
person wants to see and retry. The per-field work inside a stage is a Dask graph on the flow run's
cluster, never a Prefect task per field.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ..core.io.astropath_tree import AstroPathSource, open_slide
from ..core.io.output_folders import StagedOutput, is_complete, read_manifest, refuse_foreign
from ..core.io.slide import SlideError
from ..core.meanimage import pipeline as core
from ..core.meanimage.masks.parameters import MaskParameters
from ..core.meanimage.outputs import KIND, output_url, write_meanimage_outputs
from .dask_work import cluster_client
from .meanimage_graph import stack_on_cluster, thresholds_on_cluster
from .progress import Progress, Stage, artifact_key
from .retry import TRANSIENT_RETRY
from .run_names import folder_name, run_name


@dataclass
class SlideReport:
    """What happened to one slide (for the run's artifact and the CLI)."""

    slide_id: str
    output: str
    status: str  # "written" or "skipped"
    fields: int
    edge_fields: int
    bulk_fields: int
    stacked_fields: int = 0
    n_images: list[int] = field(default_factory=list)
    thresholds: list[int] = field(default_factory=list)
    flagged_fields: int = 0
    seconds: float = 0.0


@dataclass
class PlannedSlide:
    """A validated slide with the decision whether to compute it."""

    plan: core.SlidePlan
    skip: bool
    started: float


def _manifest_matches(url: str, parameters: dict[str, Any], inputs: list[str]) -> bool:
    manifest = read_manifest(url)
    return (
        manifest.get("kind") == KIND
        and manifest.get("parameters") == parameters
        and manifest.get("inputs") == inputs
    )


def _slide_id(parameters: dict[str, Any]) -> str:
    return parameters["planned"].plan.slide.slide_id


@task(
    name="plan-slide",
    task_run_name=run_name("plan-slide", lambda p: folder_name(p["slide_url"])),
    cache_policy=NO_CACHE,
)
def plan_slide(
    slide_url: str, parameters: dict[str, Any], overwrite: bool = False, source: AstroPathSource | None = None
) -> PlannedSlide:
    """Validate a slide, split its fields into edge and bulk, and decide whether it needs computing.

    ``slide_url`` is a slide folder, or with an AstroPath ``source`` a SlideID.

    A complete output made with the same parameters from the same fields is kept (the run skips the
    slide); one made differently is refused unless ``overwrite``, and so is an incomplete ``meanimage/``
    holding files shadeflow did not write. Reads only: a worker that dies makes Dask run this again,
    while this run's other steps may be writing.
    """
    slide = open_slide(slide_url, source)
    plan = core.plan_slide(
        slide,
        MaskParameters(microscope=slide.microscope),
        binning=parameters.get("mask_binning"),
        skip_masking=parameters.get("skip_masking", False),
    )
    out = output_url(slide.url)
    skip = False
    refuse_foreign(out, f"slide {slide.slide_id}", overwrite)
    if is_complete(out):
        inputs = [slide.field_url(f) for f in slide.fields]
        if _manifest_matches(out, parameters, inputs) and not overwrite:
            get_run_logger().info(
                "%s: complete meanimage output with the same parameters and fields exists, skipping",
                slide.slide_id,
            )
            skip = True
        elif not overwrite:
            made = read_manifest(out).get("created", "?")
            raise SlideError(
                f"slide {slide.slide_id}: {out} already holds a complete mean image made {made} with other "
                "parameters or fields; rerun with --overwrite to replace it"
            )
    return PlannedSlide(plan=plan, skip=skip, started=time.monotonic())


def threshold_stage(planned: PlannedSlide) -> Stage:
    """The progress of a slide's thresholds: one unit per edge field."""
    sid = planned.plan.slide.slide_id
    return f"{sid} thresholds", len(planned.plan.edge_fields), artifact_key("thresholds", sid)


def stack_stage(planned: PlannedSlide) -> Stage:
    """The progress of a slide's masks and stack: one unit per field."""
    sid = planned.plan.slide.slide_id
    return f"{sid} masks and stack", len(planned.plan.slide.fields), artifact_key("mask-and-stack", sid)


def meanimage_stages(planned: list[PlannedSlide]) -> list[Stage]:
    """Every progress stage of a run: two per slide it computes (skipped slides have none)."""
    return [stage(p) for p in planned if not p.skip for stage in (threshold_stage, stack_stage)]


@task(
    name="background-thresholds",
    task_run_name=run_name("background-thresholds", _slide_id),
    cache_policy=NO_CACHE,
    **TRANSIENT_RETRY,  # it writes nothing: rerunning it after a cluster hiccup is safe
)
def background_thresholds(planned: PlannedSlide) -> core.ThresholdResult | None:
    """Per-layer background thresholds from the slide's edge fields (one Dask task per field)."""
    if planned.skip:
        return None
    plan = planned.plan
    slide_id = plan.slide.slide_id
    progress = Progress(*threshold_stage(planned))
    with cluster_client() as client:
        result = thresholds_on_cluster(client, plan, progress)
    thresholds = result.thresholds
    logger = get_run_logger()
    logger.info(
        "%s: background thresholds (counts) per layer: %s",
        slide_id,
        " ".join(str(int(t)) for t in thresholds),
    )
    if not plan.skip_masking and not thresholds.any():
        logger.warning(
            "%s: every threshold is 0 — no background found in the edge fields; layers are effectively "
            "unmasked",
            slide_id,
        )
    return result


@task(
    name="mask-and-stack",
    task_run_name=run_name("mask-and-stack", _slide_id),
    cache_policy=NO_CACHE,
)
def mask_and_stack_fields(
    planned: PlannedSlide, thresholds: core.ThresholdResult | None, run_token: str
) -> tuple[StagedOutput, core.BatchResult] | None:
    """Mask every field (mask files go to the staged output of run ``run_token``) and stack the bulk ones.

    Fields run in batches on the cluster and their stacks merge as a tree (``stack_on_cluster``).
    The staging folder is the run's (the flow chose the token), so running this again writes there too.
    """
    if planned.skip:
        return None
    plan = planned.plan
    slide = plan.slide
    staged = StagedOutput(output_url(slide.url), run_token)
    progress = Progress(*stack_stage(planned))
    try:
        with cluster_client() as client:
            merged = stack_on_cluster(
                client, plan, thresholds.thresholds, staged.url(core.MASK_DIR), progress
            )
        core.check_tissue_found(plan, merged)
    except BaseException:
        staged.abort()
        raise
    return staged, merged


@task(
    name="write-mean-image",
    task_run_name=run_name("write-mean-image", _slide_id),
    cache_policy=NO_CACHE,
)
def write_mean_image(
    planned: PlannedSlide,
    thresholds: core.ThresholdResult | None,
    stacked: tuple[StagedOutput, core.BatchResult] | None,
    parameters: dict[str, Any],
    seed: int = 0,
) -> SlideReport:
    """Write the mean image, its statistics, tables and summary PDFs, and publish the folder."""
    plan = planned.plan
    slide = plan.slide
    report = SlideReport(
        slide_id=slide.slide_id,
        output=output_url(slide.url),
        status="skipped",
        fields=len(slide.fields),
        edge_fields=len(plan.edge_fields),
        bulk_fields=len(plan.bulk_fields),
    )
    if planned.skip:
        manifest = read_manifest(report.output)
        report.n_images = manifest.get("n_images", [])
        report.thresholds = manifest.get("thresholds", [])
        return report
    staged, batches = stacked
    try:
        result = core.finish_mean_image(plan, thresholds, batches)
        write_meanimage_outputs(staged, result, parameters, seed=seed)
    except BaseException:
        staged.abort()
        raise
    report.status = "written"
    report.stacked_fields = sum(1 for s in result.summaries if s.stacked_layers)
    report.flagged_fields = sum(1 for s in result.summaries if s.blur_pixels or any(s.saturated_pixels))
    report.n_images = [int(v) for v in result.stack.n_images]
    report.thresholds = [int(v) for v in thresholds.thresholds]
    report.seconds = round(time.monotonic() - planned.started, 1)
    get_run_logger().info(
        "%s: mean image written to %s (%d of %d bulk fields stacked)",
        slide.slide_id,
        report.output,
        report.stacked_fields,
        report.bulk_fields,
    )
    return report
