"""Prefect tasks of the model-compare job (``shadeflow model compare``).

Planning (slides, the existing table, the ``--store-as`` request) checks everything a user can get
wrong before anything is read in bulk or written. Reading each slide to decide whether it is usable,
and computing each pair of slides, are Dask tasks on the flow run's cluster (one per slide, one per
pair); a pair loads both slides' normalised mean images through a small per-process cache
(``shadeflow.core.compare.cached_normalised``). Pairs already in the table are reused.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from shadeflow.core import compare, storage
from shadeflow.core.cohort import SlideRef, check_compatible
from shadeflow.core.compare_plan import ComparisonPlan, check_pattern, check_store_request, make_plan, slides_regex  # noqa: F401 (re-exported)
from shadeflow.core.compare_plots import GridPage, write_grids
from shadeflow.core.models_csv import ModelError, append_version
from shadeflow.core.outputs import shadeflow_version
from shadeflow.tasks.dask_work import cluster_client
from shadeflow.tasks.progress import Progress, artifact_key

PDF_NAME = "meanimagecomparison.pdf"
SUMMARY_NAME = "meanimagecomparison.json"
PLOT_STEM = "meanimagecomparison"


@dataclass
class CheckedSlides:
    """The usable slides in plot order (Project, Cohort, Batch, SlideID) and the skipped ones."""

    slides: list[SlideRef]
    skipped: dict[str, str]

    @property
    def slide_ids(self) -> list[str]:
        return [r.slide_id for r in self.slides]


@dataclass
class PairValues:
    """Per-layer values of every pair (keyed by indices into the checked slides) and the updated table."""

    values: dict[tuple[int, int], np.ndarray]
    table: compare.ComparisonTable
    computed: int
    reused: int


@dataclass
class ComparisonOutputs:
    """What the run wrote and concluded."""

    table: str
    pngs: list[str]
    pdf: str
    summary: str
    average: np.ndarray  # (n, n), NaN on the diagonal
    groups: dict[str, np.ndarray] = field(default_factory=dict)
    suggested: list[str] = field(default_factory=list)


# --- planning (ComparisonPlan, make_plan and its checks are in shadeflow.core.compare_plan) ----------


@task(name="plan-comparison", cache_policy=NO_CACHE)
def plan_comparison(
    roots: list[str],
    pattern: str | None,
    workdir: str | None,
    band: tuple[float, float],
    min_images_stacked: int,
    store_as: str | None,
    models_csv: str | None,
) -> ComparisonPlan:
    """Find the slides to compare, read the existing table and check the ``--store-as`` request."""
    plan = make_plan(roots, pattern, workdir, band, min_images_stacked, store_as, models_csv)
    logger = get_run_logger()
    logger.info("%d candidate slide(s) (%d only from the table %s); work dir %s", len(plan.candidates), plan.from_table, plan.table_url, plan.workdir)
    for slide_id, reason in plan.skipped.items():
        logger.warning("skipping %s: %s", slide_id, reason)
    return plan


# --- checking slides ----------------------------------------------------------------------------


def select_usable(plan: ComparisonPlan, reasons: list[str | None]) -> CheckedSlides:
    """Keep the slides without a reason to skip them; they must match and be at least two."""
    skipped = dict(plan.skipped)
    usable = []
    for ref, reason in zip(plan.candidates, reasons):
        if reason is None:
            usable.append(ref)
        else:
            skipped[ref.slide_id] = reason
    usable = compare.sort_slides(usable)
    if len(usable) < 2:
        detail = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        names = ", ".join(r.slide_id for r in usable) or "none"
        raise ModelError(f"need at least 2 usable slides to compare, found {len(usable)} ({names})" + (f"; skipped {detail}" if detail else ""))
    check_compatible(usable)
    return CheckedSlides(slides=usable, skipped=skipped)


@task(name="check-slides", cache_policy=NO_CACHE)
def check_slides(plan: ComparisonPlan) -> CheckedSlides:
    """Read every candidate's mean image (a Dask task each) and keep the usable ones.

    Skipped, with the reason logged: missing or corrupt mean-image files, fewer than
    ``min_images_stacked`` images in some pixel, a constant mean image or an all-zero standard error.
    """
    with cluster_client() as client:
        futures = [client.submit(compare.check_slide, ref, plan.min_images_stacked, pure=False) for ref in plan.candidates]
        reasons = client.gather(futures)
    logger = get_run_logger()
    for ref, reason in zip(plan.candidates, reasons):
        if reason is not None:
            logger.warning("skipping %s: %s", ref.slide_id, reason)
    checked = select_usable(plan, reasons)
    logger.info("comparing %d slides: %s", len(checked.slides), ", ".join(checked.slide_ids))
    return checked


# --- pairs --------------------------------------------------------------------------------------


def _pairs_from_table(checked: CheckedSlides, table: compare.ComparisonTable) -> tuple[dict[tuple[int, int], np.ndarray], list[tuple[int, int]]]:
    keys = [compare.slide_key(r) for r in checked.slides]
    n_layers = checked.slides[0].shape[2]
    values, todo = {}, []
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            found = table.values(keys[i], keys[j], n_layers)
            if found is None:
                todo.append((i, j))
            else:
                values[(i, j)] = found
    return values, todo


@task(name="compare-pairs", cache_policy=NO_CACHE)
def compare_pairs(plan: ComparisonPlan, checked: CheckedSlides) -> PairValues:
    """δ/σ of every pair of slides and layer: pairs in the table are reused, the others are Dask tasks.

    Pairs are submitted row by row (slide 1 with 2, 3, …), so a worker's cache serves the row's
    slide to the next pair. If a pair fails, the pairs finished so far are still saved in the table
    (the rerun picks up from there) and the error names the pair.
    """
    from distributed import as_completed

    slides = checked.slides
    keys = [compare.slide_key(r) for r in slides]
    table = plan.table
    values, todo = _pairs_from_table(checked, table)
    total = len(values) + len(todo)
    progress = Progress("slide pairs", total, key=artifact_key("model-compare-pairs"))
    progress.advance(len(values))
    progress.publish(force=True)
    logger = get_run_logger()
    logger.info("%d pair(s): %d from %s, %d to compute", total, len(values), plan.table_url, len(todo))
    token = uuid.uuid4().hex
    computed = 0
    if todo:
        with cluster_client() as client:
            futures = {client.submit(compare.compare_pair, slides[i], slides[j], token, pure=False): (i, j) for i, j in todo}
            try:
                for future in as_completed(futures):
                    i, j = futures[future]
                    try:
                        result = future.result()
                    except Exception as exc:
                        raise ModelError(f"comparing {slides[i].slide_id} with {slides[j].slide_id} failed: {exc}") from exc
                    values[(i, j)] = result
                    table.set(keys[i], keys[j], result)
                    computed += 1
                    progress.advance(1)
                    progress.publish()
            except BaseException:
                for future in futures:
                    future.cancel()
                if computed:
                    storage.write_text(plan.table_url, table.text())
                    logger.warning("saved the %d pair(s) computed before the failure in %s", computed, plan.table_url)
                raise
    progress.publish(force=True)
    return PairValues(values=values, table=table, computed=computed, reused=total - computed)


# --- outputs ------------------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _json_matrix(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if not math.isfinite(v) else round(float(v), 6) for v in row] for row in matrix]


def write_outputs(plan: ComparisonPlan, checked: CheckedSlides, pairs: PairValues, parameters: dict[str, Any]) -> ComparisonOutputs:
    """Write the table (whole, atomically), the grids (PNGs and one PDF) and a JSON summary."""
    slides = checked.slides
    ids = checked.slide_ids
    matrix = compare.pair_matrix(len(slides), slides[0].shape[2], pairs.values)
    average = compare.layer_average(matrix)
    groups = {name: compare.layer_average(matrix, first, last) for name, first, last in slides[0].layer_groups}
    suggested = compare.suggest_compatible_set(ids, average, plan.band)

    storage.write_text(plan.table_url, pairs.table.text())

    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    version = shadeflow_version()
    pages = [GridPage(f"{PLOT_STEM}_average", "δ/σ std. dev., averaged over all layers", average)]
    pages += [
        GridPage(f"{PLOT_STEM}_{_safe_name(name)}", f"δ/σ std. dev., layer group {name} (layers {first}–{last})", groups[name])
        for name, first, last in slides[0].layer_groups
    ]
    subtitle = f"{len(slides)} slides, band {plan.band[0]:g}–{plan.band[1]:g}; shadeflow {version}, {created}"
    labels = [(r.project, r.cohort, r.batch) for r in slides]
    metadata = {
        "Title": "Mean-image comparison",
        "Subject": f"slides {', '.join(ids)}; parameters {json.dumps(parameters, default=str)}",
        "Creator": f"shadeflow {version}",
    }
    pngs, pdf = write_grids(plan.workdir, pages, ids, labels, plan.band, subtitle, PDF_NAME, metadata)

    summary_url = storage.join(plan.workdir, SUMMARY_NAME)
    summary = {
        "kind": "meanimagecomparison",
        "shadeflow_version": version,
        "created": created,
        "parameters": parameters,
        "slides": [{"slide_id": r.slide_id, "root": r.root, "project": r.project, "cohort": r.cohort, "batch": r.batch} for r in slides],
        "skipped": checked.skipped,
        "band": list(plan.band),
        "suggested": suggested,
        "pairs": {"computed": pairs.computed, "reused": pairs.reused},
        "average": _json_matrix(average),
        "groups": {name: _json_matrix(m) for name, m in groups.items()},
        "files": {"table": plan.table_url, "pdf": pdf, "png": pngs},
    }
    storage.write_text(summary_url, json.dumps(summary, indent=2))
    return ComparisonOutputs(table=plan.table_url, pngs=pngs, pdf=pdf, summary=summary_url, average=average, groups=groups, suggested=suggested)


@task(name="write-comparison", cache_policy=NO_CACHE)
def write_comparison(plan: ComparisonPlan, checked: CheckedSlides, pairs: PairValues, parameters: dict[str, Any]) -> ComparisonOutputs:
    """Write ``meanimagecomparison_table.csv``, the grids and the summary into the work dir."""
    outputs = write_outputs(plan, checked, pairs, parameters)
    logger = get_run_logger()
    logger.info("comparison table %s (%d pair(s) computed, %d reused); plots %s", outputs.table, pairs.computed, pairs.reused, outputs.pdf)
    logger.info("largest compatible set (band %g–%g): %s", plan.band[0], plan.band[1], ", ".join(outputs.suggested))
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
        logger.warning("version %s holds every compared slide, including %s outside the suggested compatible set", plan.store_as, ", ".join(outside))
    return n


# --- artifacts ----------------------------------------------------------------------------------


def matrix_rows(checked: CheckedSlides, average: np.ndarray) -> list[dict[str, Any]]:
    """The layer-averaged matrix as table rows: one per slide, a column per slide (blank diagonal)."""
    rows = []
    for i, ref in enumerate(checked.slides):
        row: dict[str, Any] = {"slide": ref.slide_id, "project": ref.project, "cohort": ref.cohort, "batch": ref.batch}
        for j, other in enumerate(checked.slides):
            value = average[i, j]
            row[other.slide_id] = round(float(value), 3) if math.isfinite(value) else None
        rows.append(row)
    return rows


def comparison_markdown(plan: ComparisonPlan, checked: CheckedSlides, pairs: PairValues, outputs: ComparisonOutputs, stored: int | None) -> str:
    """Slides compared and skipped, the suggested set and where the outputs are."""
    low, high = plan.band
    lines = [
        "# Mean-image comparison",
        "",
        f"Roots: {', '.join(f'`{r}`' for r in plan.roots)}; slides matching `{plan.pattern or '.*'}`; "
        f"band {low:g}–{high:g}; min images stacked {plan.min_images_stacked}.",
        "",
        f"## Compared ({len(checked.slides)} slides, {pairs.computed} pair(s) computed, {pairs.reused} reused)",
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
def publish_comparison(plan: ComparisonPlan, checked: CheckedSlides, pairs: PairValues, outputs: ComparisonOutputs, stored: int | None) -> None:
    create_table_artifact(
        matrix_rows(checked, outputs.average),
        key="model-compare-matrix",
        description=f"δ/σ std. dev. averaged over all layers, per pair of slides (band {plan.band[0]:g}–{plan.band[1]:g})",
    )
    create_markdown_artifact(
        comparison_markdown(plan, checked, pairs, outputs, stored),
        key="model-compare-summary",
        description="Slides compared and skipped, the suggested compatible set and the outputs",
    )


def _number(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def comparison_result(plan: ComparisonPlan, checked: CheckedSlides, pairs: PairValues, outputs: ComparisonOutputs, stored: int | None) -> dict[str, Any]:
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
        "stored": {"version": plan.store_as, "models_csv": plan.models_csv, "rows": stored} if stored is not None else None,
    }
