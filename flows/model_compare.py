"""The model-compare job: which slides' mean images are compatible enough to make one flatfield model.

AstroPath's ``meanimagecomparison`` (reference spec §3) with its NaN bug fixed and the choice of
slides suggested instead of left to the eye.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..core.errors import checked_parameters
from ..core.model.compare_plan import make_plan
from ..infra.cluster import check_settings, task_runner
from ..tasks.model_compare import (
    check_slides,
    compare_pairs,
    comparison_result,
    plan_comparison,
    publish_comparison,
    store_version,
    write_comparison,
)
from .parameters import ModelCompareParameters
from .run import run_with_progress


@flow(name="model-compare", task_runner=task_runner(), log_prints=True)
def model_compare(params: ModelCompareParameters) -> dict[str, Any]:
    """Compare slides' mean images pairwise and suggest the largest compatible set.

    Find the slides (and those already in the comparison table), check every request first; read
    each slide's mean image and skip unusable ones; compute δ/σ for every new pair of slides and
    layer (pairs in the table are reused); write the table, the slide × slide grids and a summary;
    with ``store_as``, append the compared slides to the models CSV as a new version.
    """
    plan = plan_comparison(
        params.roots,
        params.slides,
        params.workdir,
        params.band,
        params.min_images_stacked,
        params.store_as,
        params.models_csv,
        params.source(),
    )
    checked = check_slides.submit(plan).result()
    pairs = compare_pairs.submit(plan, checked).result()
    outputs = write_comparison.submit(plan, checked, pairs, params.model_dump()).result()
    stored = store_version(plan, checked, outputs.suggested) if plan.store_as else None
    publish_comparison(plan, checked, pairs, outputs, stored)
    return comparison_result(plan, checked, pairs, outputs, stored)


# --- command line -------------------------------------------------------------------------------


def print_result(result: dict[str, Any], console=None) -> None:
    """The run's conclusions on the terminal: skipped slides, the matrix (if it fits), the suggested set,
    outputs."""

    console = console or Console()
    ids = result["slides"]
    low, high = result["band"]
    for slide_id, reason in result["skipped"].items():
        console.print(Text(f"skipped {slide_id}: {reason}", style="yellow"))
    if len(ids) <= 12:
        table = Table(title=f"δ/σ std. dev., averaged over layers (band {low:g}–{high:g})")
        table.add_column("slide", style="bold")
        for b in ids:
            table.add_column(b, justify="right")
        for a in ids:
            cells = []
            for b in ids:
                value = result["average"][a][b]
                if value is None:
                    cells.append(Text("–" if a == b else "nan", style="dim"))
                else:
                    cells.append(Text(f"{value:.3f}", style="green" if low <= value <= high else "red"))
            table.add_row(a, *cells)
        console.print(table)
    console.print(
        Text(
            f"{len(ids)} slides compared: {result['pairs_computed']} pair(s) computed, "
            f"{result['pairs_reused']} reused from the table"
        )
    )
    suggested = result["suggested"]
    console.print(
        Text(
            f"largest compatible set ({len(suggested)} of {len(ids)} slides, band {low:g}–{high:g}): ",
            style="bold",
        )
        + Text(", ".join(suggested))
    )
    console.print(Text(f"table: {result['table']}"))
    console.print(Text(f"plots: {result['pdf']} (+ {len(result['plots'])} PNG)"))
    if len(suggested) < len(ids):
        console.print(
            Text(f"to compare (or store) only the suggested set: --slides '{result['suggested_regex']}'")
        )
    if result.get("stored"):
        stored = result["stored"]
        console.print(
            Text(
                f"stored as version {stored['version']} in {stored['models_csv']} ({stored['rows']} slides)",
                style="green",
            )
        )
        if len(suggested) < len(ids):
            console.print(
                Text(
                    "note: every compared slide was stored, including those outside the suggested set",
                    style="yellow",
                )
            )


def compare_command(memory: str | None = None, workers: int | None = None, **values: Any) -> dict[str, Any]:
    """``shadeflow model compare`` with ``values`` (:class:`ModelCompareParameters` by name): validate,
    run the flow with a progress bar, print its results and return them. Bad input raises
    ``ValueError`` (``ModelError``, ``SlideError``…) or ``FileNotFoundError`` with a one-line message,
    before a Prefect server or cluster starts."""
    params = checked_parameters(ModelCompareParameters, **values)
    # the plan the flow's first task makes (roots, slides, table, --store-as), made here first: a bad input
    # fails now
    make_plan(
        params.roots,
        params.slides,
        params.workdir,
        params.band,
        params.min_images_stacked,
        params.store_as,
        params.models_csv,
        params.source(),
    )
    size = check_settings(memory=memory, workers=workers)
    Console().print(Text(f"cluster: {size.describe()}"))
    result = run_with_progress(
        model_compare, {"params": params}, task_runner(memory=memory, workers=workers), "pairs"
    )
    print_result(result)
    return result
