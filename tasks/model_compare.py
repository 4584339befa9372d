"""Prefect tasks of the model-compare job (``shadeflow model compare``).

Planning (slides, the existing table, the ``--store-as`` request) checks everything a user can get
wrong before anything is read in bulk or written. Reading each slide to decide whether it is usable,
and computing each pair of slides, are Dask tasks on the flow run's cluster (one per slide, one per
pair); a pair loads both slides' normalised mean images through a small per-process cache
(``shadeflow.core.model.compare.cached_normalised``). Pairs already in the table are reused.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from ..core.io import storage
from ..core.io.astropath_tree import AstroPathSource
from ..core.model import compare
from ..core.model.compare_outputs import (
    CheckedSlides,
    ComparisonOutputs,
    PairValues,
    pairs_from_table,
    save_table,
    select_usable,
    write_outputs,
)
from ..core.model.compare_plan import ComparisonPlan, make_plan, slides_regex
from ..core.model.models_csv import ModelError, append_version
from .dask_work import cluster_client
from .progress import Progress, artifact_key

# --- planning (ComparisonPlan, make_plan and its checks are in shadeflow.core.model.compare_plan) ----------


@task(name="plan-comparison", cache_policy=NO_CACHE)
def plan_comparison(
    roots: list[str],
    pattern: str | None,
    workdir: str | None,
    band: tuple[float, float],
    min_images_stacked: int,
    store_as: str | None,
    models_csv: str | None,
    source: AstroPathSource | None = None,
) -> ComparisonPlan:
    """Find the slides to compare, read the existing table and check the ``--store-as`` request."""
    plan = make_plan(roots, pattern, workdir, band, min_images_stacked, store_as, models_csv, source)
    logger = get_run_logger()
    logger.info(
        "%d candidate slide(s) (%d only from the table %s); work dir %s",
        len(plan.candidates),
        plan.from_table,
        plan.table_url,
        plan.workdir,
    )
    for slide_id, reason in plan.skipped.items():
        logger.warning("skipping %s: %s", slide_id, reason)
    return plan


# --- checking slides ----------------------------------------------------------------------------


@task(name="check-slides", cache_policy=NO_CACHE)
def check_slides(plan: ComparisonPlan) -> CheckedSlides:
    """Read every candidate's mean image (a Dask task each) and keep the usable ones.

    Skipped, with the reason logged: missing or corrupt mean-image files, fewer than
    ``min_images_stacked`` images in some pixel, a constant mean image or an all-zero standard error.
    """
    with cluster_client() as client:
        futures = [
            client.submit(compare.check_slide, ref, plan.min_images_stacked, pure=False)
            for ref in plan.candidates
        ]
        reasons = client.gather(futures)
    logger = get_run_logger()
    for ref, reason in zip(plan.candidates, reasons):
        if reason is not None:
            logger.warning("skipping %s: %s", ref.slide_id, reason)
    checked = select_usable(plan, reasons)
    logger.info("comparing %d slides: %s", len(checked.slides), ", ".join(checked.slide_ids))
    return checked


# --- pairs --------------------------------------------------------------------------------------


@task(name="compare-pairs", cache_policy=NO_CACHE)
def compare_pairs(plan: ComparisonPlan, checked: CheckedSlides) -> PairValues:
    """δ/σ of every pair of slides and layer: pairs in the table are reused, the others are Dask tasks.

    Pairs are submitted row by row (slide 1 with 2, 3, …), so a worker's cache serves the row's
    slide to the next pair. If a pair fails, the pairs finished so far are still saved in the table
    (the rerun picks up from there) and the error names the pair.
    """
    values, todo = pairs_from_table(checked, plan.table)
    total = len(values) + len(todo)
    progress = Progress("slide pairs", total, key=artifact_key("model-compare-pairs"))
    progress.advance(len(values))
    progress.publish(force=True)
    get_run_logger().info(
        "%d pair(s): %d from %s, %d to compute", total, len(values), plan.table_url, len(todo)
    )
    computed = _compute_pairs(plan, checked.slides, todo, values, progress) if todo else 0
    progress.publish(force=True)
    return PairValues(values=values, table=plan.table, computed=computed, reused=total - computed)


def _compute_pairs(
    plan: ComparisonPlan,
    slides: list,
    todo: list[tuple[int, int]],
    values: dict[tuple[int, int], np.ndarray],
    progress: Progress,
) -> int:
    """Run the pairs ``todo`` on the cluster into ``values`` and the plan's table; on a failure, save
    the table with the pairs finished so far, then raise naming the pair."""
    from distributed import as_completed

    keys = [compare.slide_key(r) for r in slides]
    token = uuid.uuid4().hex
    computed = 0
    with cluster_client() as client:
        futures = {
            client.submit(compare.compare_pair, slides[i], slides[j], token, pure=False): (i, j)
            for i, j in todo
        }
        try:
            for future in as_completed(futures):
                i, j = futures[future]
                try:
                    result = future.result()
                except Exception as exc:
                    raise ModelError(
                        f"comparing {slides[i].slide_id} with {slides[j].slide_id} failed: {exc}"
                    ) from exc
                values[(i, j)] = result
                plan.table.set(keys[i], keys[j], result)
                computed += 1
                progress.advance(1)
                progress.publish()
        except BaseException:
            for future in futures:
                future.cancel()
            if computed:
                save_table(plan, plan.table)
                get_run_logger().warning(
                    "saved the %d pair(s) computed before the failure in %s", computed, plan.table_url
                )
            raise
    return computed


@task(name="write-comparison", cache_policy=NO_CACHE)
def write_comparison(
    plan: ComparisonPlan, checked: CheckedSlides, pairs: PairValues, parameters: dict[str, Any]
) -> ComparisonOutputs:
    """Write ``meanimagecomparison_table.csv``, the grids and the summary into the work dir."""
    outputs = write_outputs(plan, checked, pairs, parameters)
    logger = get_run_logger()
    logger.info(
        "comparison table %s (%d pair(s) computed, %d reused); plots %s",
        outputs.table,
        pairs.computed,
        pairs.reused,
        outputs.pdf,
    )
    logger.info(
        "largest compatible set (band %g–%g): %s", plan.band[0], plan.band[1], ", ".join(outputs.suggested)
    )
    return outputs


@task(name="store-version", cache_policy=NO_CACHE)
def store_version(plan: ComparisonPlan, checked: CheckedSlides, suggested: list[str]) -> int:
    """Append every compared slide to the models CSV as version ``plan.store_as`` (refused if it exists).

    As AstroPath's ``--store-as``: all compared slides, whatever the suggestion; a warning names
    those outside the suggested compatible set.
    """
    rows = [(r.project, r.cohort, r.batch, r.slide_id) for r in checked.slides]
    n = append_version(plan.models_csv, plan.store_as, rows)
    logger = get_run_logger()
    logger.info("appended %d slide(s) to %s as version %s", n, plan.models_csv, plan.store_as)
    outside = [s for s in checked.slide_ids if s not in suggested]
    if outside:
        logger.warning(
            "version %s holds every compared slide, including %s outside the suggested compatible set",
            plan.store_as,
            ", ".join(outside),
        )
    return n


# --- artifacts ----------------------------------------------------------------------------------


def matrix_rows(checked: CheckedSlides, average: np.ndarray) -> list[dict[str, Any]]:
    """The layer-averaged matrix as table rows: one per slide, a column per slide (blank diagonal)."""
    rows = []
    for i, ref in enumerate(checked.slides):
        row: dict[str, Any] = {
            "slide": ref.slide_id,
            "project": ref.project,
            "cohort": ref.cohort,
            "batch": ref.batch,
        }
        for j, other in enumerate(checked.slides):
            value = average[i, j]
            row[other.slide_id] = round(float(value), 3) if math.isfinite(value) else None
        rows.append(row)
    return rows


def comparison_markdown(
    plan: ComparisonPlan,
    checked: CheckedSlides,
    pairs: PairValues,
    outputs: ComparisonOutputs,
    stored: int | None,
) -> str:
    """Slides compared and skipped, the suggested set and where the outputs are."""
    low, high = plan.band
    lines = [
        "# Mean-image comparison",
        "",
        f"Roots: {', '.join(f'`{r}`' for r in plan.roots)}; slides matching `{plan.pattern or '.*'}`; "
        f"band {low:g}–{high:g}; min images stacked {plan.min_images_stacked}.",
        "",
        f"## Compared ({len(checked.slides)} slides, {pairs.computed} pair(s) computed, {pairs.reused} "
        "reused)",
        "",
        "| slide | project | cohort | batch | root |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.slide_id} | {r.project} | {r.cohort} | {r.batch} | `{r.root}` |" for r in checked.slides]
    lines += ["", f"## Skipped ({len(checked.skipped)})", ""]
    lines += [f"- **{sid}**: {reason}" for sid, reason in checked.skipped.items()] or ["none"]
    lines += ["", "## Suggested compatible set", ""]
    note = " (no two slides are compatible)" if len(outputs.suggested) < 2 else ""
    lines += [
        f"The largest group whose pairwise layer-averaged values all lie within {low:g}–{high:g}: "
        f"**{len(outputs.suggested)}** slide(s){note}.",
        "",
        ", ".join(outputs.suggested),
        "",
        f"To compare or store only these: `--slides '{slides_regex(outputs.suggested)}'`",
        "",
        "## Outputs",
        "",
        f"- table: `{outputs.table}`",
        f"- plots: `{outputs.pdf}`" + "".join(f", `{storage.basename(p)}`" for p in outputs.pngs),
        f"- summary: `{outputs.summary}`",
    ]
    if stored is not None:
        lines += ["", f"Stored as version **{plan.store_as}** in `{plan.models_csv}` ({stored} slides)."]
    return "\n".join(lines)


@task(name="publish-comparison", cache_policy=NO_CACHE)
def publish_comparison(
    plan: ComparisonPlan,
    checked: CheckedSlides,
    pairs: PairValues,
    outputs: ComparisonOutputs,
    stored: int | None,
) -> None:
    create_table_artifact(
        matrix_rows(checked, outputs.average),
        key="model-compare-matrix",
        description="δ/σ std. dev. averaged over all layers, per pair of slides (band "
        f"{plan.band[0]:g}–{plan.band[1]:g})",
    )
    create_markdown_artifact(
        comparison_markdown(plan, checked, pairs, outputs, stored),
        key="model-compare-summary",
        description="Slides compared and skipped, the suggested compatible set and the outputs",
    )


def _number(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def comparison_result(
    plan: ComparisonPlan,
    checked: CheckedSlides,
    pairs: PairValues,
    outputs: ComparisonOutputs,
    stored: int | None,
) -> dict[str, Any]:
    """The flow's return value (plain JSON types; NaN and the diagonal are None)."""
    ids = checked.slide_ids

    def nested(matrix: np.ndarray) -> dict[str, dict[str, float | None]]:
        return {a: {b: _number(matrix[i, j]) for j, b in enumerate(ids)} for i, a in enumerate(ids)}

    return {
        "workdir": plan.workdir,
        "table": outputs.table,
        "pdf": outputs.pdf,
        "plots": outputs.pngs,
        "summary": outputs.summary,
        "slides": ids,
        "skipped": checked.skipped,
        "band": list(plan.band),
        "suggested": outputs.suggested,
        "suggested_regex": slides_regex(outputs.suggested),
        "pairs_computed": pairs.computed,
        "pairs_reused": pairs.reused,
        "average": nested(outputs.average),
        "groups": {name: nested(m) for name, m in outputs.groups.items()},
        "stored": {"version": plan.store_as, "models_csv": plan.models_csv, "rows": stored}
        if stored is not None
        else None,
    }
