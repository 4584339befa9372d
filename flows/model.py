"""The model jobs: build a version-selected flatfield model, and test a flatfield on held-out fields."""

from __future__ import annotations

from prefect import flow

from ..core.io import storage
from ..core.io.output_folders import is_complete
from ..core.model.store import version_folder
from ..infra.cluster import task_runner
from ..tasks.model import (
    build_model,
    evaluate_halves,
    merge_slide_stacks,
    restack_halves,
    select_applied_slides,
    select_model_slides,
    write_applied_test,
    write_model,
)
from ..tasks.model_artifacts import publish_applied_test_artifacts, publish_model_artifacts
from .parameters import AppliedTestParameters, ModelBuildParameters


@flow(name="model-build", task_runner=task_runner(), log_prints=True)
def model_build(params: ModelBuildParameters) -> dict:
    """Flatfield model of one version.

    The models CSV selects the slides; their mean-image stacks are merged (weighted by per-pixel
    counts), smoothed with the error propagated, normalised per layer, and written to the model store
    as an immutable version with its summary PDF and manifest.
    """
    store = params.resolved_store()
    slides = select_model_slides(
        params.version, params.models_csv, params.roots, store, params.overwrite, params.source()
    )
    stack = merge_slide_stacks.submit(slides).result()
    model = build_model(stack, params.sigma, params.border)
    recorded = {
        "version": params.version,
        "models_csv": params.models_csv,
        "roots": params.roots,
        "astropath": params.astropath,
        "sigma": model.sigma,
        "border": params.border,
    }
    manifest = write_model(store, params.version, model, stack, slides, recorded)
    publish_model_artifacts(
        manifest,
        model,
        stack,
        storage.join(version_folder(store, params.version), f"flatfield_summary_{params.version}.pdf"),
    )
    return {
        "version": params.version,
        "store": store,
        "folder": version_folder(store, params.version),
        "slides": [s.slide_id for s in slides],
        "statistics": manifest["statistics"]["summary"],
    }


@flow(name="applied-test", task_runner=task_runner(), log_prints=True)
def applied_test(params: AppliedTestParameters) -> dict:
    """Does a flatfield really flatten held-out images?

    Each slide's bulk fields are split into two seeded halves; one half of every slide builds a test
    flatfield, the other half's mean image is corrected by it, and the illumination variation is
    measured before and after.
    """
    out = storage.normalize(params.out)
    if is_complete(out) and not params.overwrite:
        raise FileExistsError(f"{out} already holds a complete applied test; use --overwrite to replace it")
    selected = select_applied_slides(params.roots, params.slides, params.seed, params.source())
    flatfield_stack, corrected_stack = restack_halves.submit(selected).result()
    result = evaluate_halves(flatfield_stack, corrected_stack, params.sigma, params.border)
    recorded = {
        "roots": params.roots,
        "astropath": params.astropath,
        "shardedim3root": params.shardedim3root,
        "slides": params.slides,
        "seed": params.seed,
        "sigma": result.flatfield.sigma,
        "border": params.border,
    }
    manifest = write_applied_test(out, result, selected, recorded)
    layer_groups = {name: [a, b] for name, a, b in selected[0][0].layer_groups}
    publish_applied_test_artifacts(result, layer_groups, storage.join(out, "applied_flatfield_summary.pdf"))
    return {"out": out, "slides": [ref.slide_id for ref, _ in selected], "summary": manifest["summary"]}
