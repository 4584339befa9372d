"""Prefect tasks of the model-build and applied-test jobs.

Slide stacks are loaded and merged as a tree on the flow run's cluster, so memory stays at a few
stacks however many slides a model has.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from ..core.applied import evaluation as applied
from ..core.applied.outputs import write_applied_test_outputs
from ..core.io import cohort
from ..core.io.astropath_tree import AstroPathSource
from ..core.io.output_folders import StagedOutput
from ..core.meanimage.pipeline import plan_slide
from ..core.model import store as model_store
from ..core.model.build import merge_stacks, write_model_version
from ..core.model.flatfield import Flatfield, build_flatfield
from ..core.stack import MeanImageStack
from .dask_work import cluster_client, reduce_tree
from .progress import Progress, artifact_key


@task(name="select-model-slides", cache_policy=NO_CACHE)
def select_model_slides(
    version: str,
    models_csv: str,
    roots: list[str],
    store: str,
    overwrite: bool,
    source: AstroPathSource | None = None,
) -> list[cohort.SlideRef]:
    """The slides of a version, each found once under the roots (or in an AstroPath cohort's
    ``sampledef.csv``) with a usable mean image; nothing is written."""
    refs = cohort.model_slides(version, models_csv, roots, source)
    model_store.check_version_free(store, version, overwrite)
    get_run_logger().info("model %s: %d slides from %s", version, len(refs), models_csv)
    return refs


@task(name="merge-slide-stacks", cache_policy=NO_CACHE)
def merge_slide_stacks(refs: list[cohort.SlideRef]) -> MeanImageStack:
    """All slides' mean-image stacks merged (pixel-count weighted), loaded and reduced as a tree."""
    progress = Progress("slides merged", len(refs), key=artifact_key("merge-slide-stacks"))
    with cluster_client() as client:
        futures = [client.submit(cohort.load_stack, ref, pure=False) for ref in refs]
        for future in futures:
            future.add_done_callback(lambda _: progress.advance(1))
        return reduce_tree(client, futures, merge_stacks, progress)


@task(name="build-flatfield", cache_policy=NO_CACHE)
def build_model(stack: MeanImageStack, sigma: float | None, border: str) -> Flatfield:
    """Smooth the merged mean image and normalise each layer (inverse-variance weighted mean)."""
    model = build_flatfield(stack, sigma, border)
    logger = get_run_logger()
    logger.info(
        "flatfield: σ = %.1f px, range %.3f–%.3f", model.sigma, model.flatfield.min(), model.flatfield.max()
    )
    if model.empty_layers:
        logger.warning("layers with nothing stacked were set to 1: %s", model.empty_layers)
    return model


@task(name="write-model", cache_policy=NO_CACHE)
def write_model(
    store: str,
    version: str,
    model: Flatfield,
    stack: MeanImageStack,
    refs: list[cohort.SlideRef],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """Write the version to the store; it appears only when complete.

    Staging folders of earlier builds of the version that crashed are removed when provably abandoned
    (``core.io.staging_lease``); this build's own is removed if it fails."""
    logger = get_run_logger()
    with model_store.staged_version(store, version) as staged:
        if staged.others:
            logger.warning(
                "model %s: left staging folders of other builds in place (in use, or not provably "
                "abandoned): %s",
                version,
                ", ".join(staged.others),
            )
        manifest = write_model_version(staged, store, version, model, stack, refs, parameters)
    logger.info("model %s written to %s", version, model_store.version_folder(store, version))
    return manifest


@task(name="select-applied-test-slides", cache_policy=NO_CACHE)
def select_applied_slides(
    roots: list[str], pattern: str | None, seed: int, source: AstroPathSource | None = None
) -> list[tuple[cohort.SlideRef, applied.Split]]:
    """Slides with mean images, matched by ``pattern``, each with its seeded split of bulk fields."""
    refs = cohort.slides_with_meanimages(roots, pattern=pattern, source=source)
    selected = []
    for ref in refs:
        plan = plan_slide(ref.load_slide(check_files=True))
        selected.append((ref, applied.split_fields(ref.slide_id, [f.key for f in plan.bulk_fields], seed)))
    return selected


def _restack(ref: cohort.SlideRef, keys: tuple[str, ...], half: str) -> MeanImageStack:
    plan = plan_slide(ref.load_slide(check_files=False))
    return applied.restack(plan, [plan.slide.field_by_key(k) for k in keys], half)


@task(name="restack-halves", cache_policy=NO_CACHE)
def restack_halves(
    selected: list[tuple[cohort.SlideRef, applied.Split]],
) -> tuple[MeanImageStack, MeanImageStack]:
    """Every slide's two halves re-stacked with its meanimage masks; each half merged across slides."""
    total = sum(len(split.flatfield) + len(split.corrected) for _, split in selected)
    progress = Progress("fields restacked", total, key=artifact_key("restack-halves"))
    with cluster_client() as client:
        submitted = []
        for attribute, use in (("flatfield", "flatfield"), ("corrected", "corrected_mean_image")):
            futures = []
            for ref, split in selected:
                keys = getattr(split, attribute)
                future = client.submit(_restack, ref, keys, use, pure=False)
                n = len(keys)
                future.add_done_callback(lambda _, n=n: progress.advance(n))  # n: this batch's, bound now
                futures.append(future)
            submitted.append(futures)
        halves = [reduce_tree(client, futures, merge_stacks, progress) for futures in submitted]
    return halves[0], halves[1]


@task(name="evaluate-flatfield", cache_policy=NO_CACHE)
def evaluate_halves(
    flatfield_stack: MeanImageStack, corrected_stack: MeanImageStack, sigma: float | None, border: str
) -> applied.AppliedTestResult:
    """Test flatfield from one half, applied to the other half's mean image; variation before and after."""
    result = applied.evaluate(flatfield_stack, corrected_stack, sigma, border)
    change = result.summary()["change_percent"]
    get_run_logger().info("illumination variation (std, whole image) changed by %.1f %%", change["mean_std"])
    return result


@task(name="write-applied-test", cache_policy=NO_CACHE)
def write_applied_test(
    out: str,
    result: applied.AppliedTestResult,
    selected: list[tuple[cohort.SlideRef, applied.Split]],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """Write the test's outputs; they appear only when complete."""
    staged = StagedOutput(out)
    with staged:
        manifest = write_applied_test_outputs(staged, result, selected, parameters)
    get_run_logger().info("applied test written to %s", out)
    return manifest
