"""Run summaries published to the Prefect UI as artifacts."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from .meanimage import SlideReport


def _layers(values: list[int]) -> str:
    return " ".join(str(v) for v in values) if values else "–"


def meanimage_markdown(reports: list[SlideReport]) -> str:
    """A table per slide (fields used, stacked counts) and the thresholds per layer."""
    lines = [
        "# Mean images",
        "",
        "| slide | status | fields | edge | bulk | stacked | flagged | seconds | output |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r.slide_id} | {r.status} | {r.fields} | {r.edge_fields} | {r.bulk_fields} | "
            f"{r.stacked_fields} | "
            f"{r.flagged_fields} | {r.seconds:g} | `{r.output}` |"
        )
    lines += ["", "## Per layer", "", "Background threshold (counts) and fields stacked, layer 1 first.", ""]
    for r in reports:
        lines += [
            f"**{r.slide_id}**",
            "",
            f"- thresholds: {_layers(r.thresholds)}",
            f"- stacked fields: {_layers(r.n_images)}",
            "",
        ]
    return "\n".join(lines)


@task(name="publish-meanimage-summary")
def publish_meanimage_summary(reports: list[SlideReport]) -> None:
    create_markdown_artifact(
        meanimage_markdown(reports),
        key="meanimage-summary",
        description="Per-slide fields used, thresholds and stacked counts",
    )
