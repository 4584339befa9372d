"""What a mean-image comparison keeps and writes: the usable slides, the pair values, and the outputs
(the whole table, the grids as PNGs and one PDF, a JSON summary) in the work dir.

Public: :class:`CheckedSlides`, :class:`PairValues`, :class:`ComparisonOutputs`,
:func:`select_usable`, :func:`pairs_from_table`, :func:`save_table`, :func:`write_outputs`.
``shadeflow.tasks.model_compare`` runs these around the Dask work of reading slides and pairs.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io import storage
from ..io.cohort import SlideRef, check_compatible
from ..io.output_folders import shadeflow_version
from . import compare
from .compare_plan import ComparisonPlan
from .compare_plots import GridPage, write_grids
from .models_csv import ModelError

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
        raise ModelError(
            f"need at least 2 usable slides to compare, found {len(usable)} ({names})"
            + (f"; skipped {detail}" if detail else "")
        )
    check_compatible(usable)
    return CheckedSlides(slides=usable, skipped=skipped)


def pairs_from_table(
    checked: CheckedSlides, table: compare.ComparisonTable
) -> tuple[dict[tuple[int, int], np.ndarray], list[tuple[int, int]]]:
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


def save_table(plan: ComparisonPlan, table: compare.ComparisonTable) -> None:
    """Write the comparison table whole (pairs computed so far included: a rerun reuses them)."""
    storage.write_text(plan.table_url, table.text())


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _json_matrix(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if not math.isfinite(v) else round(float(v), 6) for v in row] for row in matrix]


def write_outputs(
    plan: ComparisonPlan, checked: CheckedSlides, pairs: PairValues, parameters: dict[str, Any]
) -> ComparisonOutputs:
    """Write the table (whole, atomically), the grids (PNGs and one PDF) and a JSON summary."""
    slides = checked.slides
    ids = checked.slide_ids
    matrix = compare.pair_matrix(len(slides), slides[0].shape[2], pairs.values)
    average = compare.layer_average(matrix)
    groups = {
        name: compare.layer_average(matrix, first, last) for name, first, last in slides[0].layer_groups
    }
    suggested = compare.suggest_compatible_set(ids, average, plan.band)

    save_table(plan, pairs.table)

    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    version = shadeflow_version()
    pages = [GridPage(f"{PLOT_STEM}_average", "δ/σ std. dev., averaged over all layers", average)]
    pages += [
        GridPage(
            f"{PLOT_STEM}_{_safe_name(name)}",
            f"δ/σ std. dev., layer group {name} (layers {first}–{last})",
            groups[name],
        )
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
        "slides": [
            {
                "slide_id": r.slide_id,
                "root": r.root,
                "project": r.project,
                "cohort": r.cohort,
                "batch": r.batch,
            }
            for r in slides
        ],
        "skipped": checked.skipped,
        "band": list(plan.band),
        "suggested": suggested,
        "pairs": {"computed": pairs.computed, "reused": pairs.reused},
        "average": _json_matrix(average),
        "groups": {name: _json_matrix(m) for name, m in groups.items()},
        "files": {"table": plan.table_url, "pdf": pdf, "png": pngs},
    }
    storage.write_text(summary_url, json.dumps(summary, indent=2))
    return ComparisonOutputs(
        table=plan.table_url,
        pngs=pngs,
        pdf=pdf,
        summary=summary_url,
        average=average,
        groups=groups,
        suggested=suggested,
    )
