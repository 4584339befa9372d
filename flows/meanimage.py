"""The meanimage job: per-slide masked mean images of a cohort."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, get_run_logger, unmapped
from prefect.futures import wait

from ..core.errors import RunFailed, unit_failures
from ..core.io.astropath_tree import sample_ids
from ..core.io.staging_lease import StagingLease, new_run_token, remove_stale_partials, staging_url
from ..core.meanimage.outputs import output_url
from ..infra.cluster import task_runner
from ..tasks.artifacts import publish_meanimage_summary
from ..tasks.meanimage import (
    PlannedSlide,
    background_thresholds,
    mask_and_stack_fields,
    meanimage_stages,
    plan_slide,
    write_mean_image,
)
from ..tasks.progress import announce
from .parameters import MeanImageParameters


def _claim_staging(planned: list[PlannedSlide], run_token: str) -> list[StagingLease]:
    """Lease this run's staging folder of every slide it computes, and remove those of crashed runs."""
    logger = get_run_logger()
    leases = []
    for slide in planned:
        out = output_url(slide.plan.slide.url)
        left = remove_stale_partials(out, run_token)
        if left:
            logger.warning(
                "%s: left staging folders of other runs in place (in use, or not provably abandoned): %s",
                slide.plan.slide.slide_id,
                ", ".join(left),
            )
        if not slide.skip:
            leases.append(StagingLease(staging_url(out, run_token)).acquire())
    return leases


@flow(name="meanimage", task_runner=task_runner(), log_prints=True)
def meanimage(params: MeanImageParameters) -> list[dict]:
    """Masked mean image of every slide.

    Slides are folders of the slide contract, or with ``params.astropath`` the SlideIDs of an AstroPath
    cohort (all its good samples when none are named), read where they are. All slides are validated
    first; then, per slide and in parallel: background thresholds from the edge fields,
    tissue/blur/saturation masks of every field with the bulk fields stacked, and the mean image with
    its statistics, tables and summary PDFs written to ``<slide>/meanimage/`` (AstroPath samples:
    ``<root>/<SlideID>/im3/meanimage/``).
    """
    recorded = params.recorded()
    source = params.source()
    slides = sample_ids(source, params.slides) if source else params.slides
    plans = plan_slide.map(slides, unmapped(recorded), unmapped(params.overwrite), unmapped(source))
    wait(plans)
    invalid = [(url, p.state.message) for url, p in zip(slides, plans) if not p.state.is_completed()]
    if invalid:  # nothing has been written yet
        raise RunFailed(unit_failures("slide", invalid))
    planned = [p.result() for p in plans]
    # this run's staging folders: named here, once (a task Dask recomputes after losing a worker must
    # find the same folder) and held for the whole run, so no other run takes them for abandoned
    announce(meanimage_stages(planned))  # the progress bar's total, before any stage starts
    run_token = new_run_token()
    leases = _claim_staging(planned, run_token)
    stages = []
    try:
        for slide in planned:
            thresholds = background_thresholds.submit(slide)
            stacked = mask_and_stack_fields.submit(slide, thresholds, run_token)
            stages.append(
                (
                    thresholds,
                    stacked,
                    write_mean_image.submit(slide, thresholds, stacked, recorded, params.seed),
                )
            )
        wait([future for futures in stages for future in futures])
    except BaseException:
        # tasks may still be writing: their files stay, the unlocked lease marks them abandoned
        for lease in leases:
            lease.release()
        raise
    for lease in leases:  # every task has ended: what is left of this run's staging is its own debris
        lease.release(remove=True)
    # a slide's error is its first stage that failed (later stages only say "upstream failed")
    failed = [
        (s.plan.slide.slide_id, next(f.state.message for f in futures if not f.state.is_completed()))
        for s, futures in zip(planned, stages)
        if not futures[-1].state.is_completed()
    ]
    done = [futures[-1].result() for futures in stages if futures[-1].state.is_completed()]
    publish_meanimage_summary(done)
    if failed:
        raise RunFailed(unit_failures("slide", failed))
    return [asdict(r) for r in done]
