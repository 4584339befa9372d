"""Artifacts of the model-build and applied-test runs: a table of numbers and a markdown page with images."""

from __future__ import annotations

import base64
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from ..core.applied.evaluation import AppliedTestResult
from ..core.model.flatfield import Flatfield
from ..core.stack import MeanImageStack


def _images_markdown(
    model: Flatfield, stack: MeanImageStack, layer_groups: dict[str, list[int]]
) -> list[str]:
    # deferred on purpose: the report imports matplotlib, needed only for this artifact
    from ..core.model.report import brightest_layer_images

    lines = ["## Flatfield of the brightest layer of each group", ""]
    for group, png in brightest_layer_images(model, stack, layer_groups).items():
        lines.append(f"![{group}](data:image/png;base64,{base64.b64encode(png).decode()})")
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@task(name="publish-model-artifacts")
def publish_model_artifacts(
    manifest: dict[str, Any], model: Flatfield, stack: MeanImageStack, pdf_url: str
) -> None:
    version = manifest["version"]
    layers = manifest["statistics"]["layers"]
    create_table_artifact(
        layers,
        key="model-layer-statistics",
        description=f"Flatfield {version}: per-layer statistics (mean-relative)",
    )
    summary = manifest["statistics"]["summary"]
    lines = [
        f"# Flatfield model `{version}`",
        "",
        f"{len(manifest['slides'])} slides, {sum(s['fields_stacked'] for s in manifest['slides'])} fields "
        "stacked; "
        f"σ = {model.sigma:.1f} px ({model.border} borders). Summary PDF: `{pdf_url}`",
        "",
        "| statistic | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in summary.items()],
        "",
        *_images_markdown(model, stack, manifest["layer_groups"]),
    ]
    create_markdown_artifact(
        "\n".join(lines), key="model-build-summary", description=f"Flatfield model {version}"
    )


@task(name="publish-applied-test-artifacts")
def publish_applied_test_artifacts(
    result: AppliedTestResult, layer_groups: dict[str, list[int]], pdf_url: str
) -> None:
    create_table_artifact(
        [{k: round(v, 6) for k, v in m.row().items()} for m in result.metrics],
        key="applied-test-metrics",
        description="Illumination variation per layer, before and after",
    )
    summary = result.summary()
    keys = list(summary["pre"])
    lines = [
        "# Applied flatfield test",
        "",
        f"Summary PDF: `{pdf_url}`",
        "",
        "| | before | after | change |",
        "|---|---|---|---|",
        *[
            f"| {k} | {summary['pre'][k]:.4f} | {summary['post'][k]:.4f} | "
            f"{_fmt(summary['change_percent'].get(k, ''))} {'%' if k in summary['change_percent'] else ''} |"
            for k in keys
        ],
        "",
        *_images_markdown(result.flatfield, result.flatfield_stack, layer_groups),
    ]
    create_markdown_artifact(
        "\n".join(lines), key="applied-test-summary", description="Applied flatfield test"
    )
