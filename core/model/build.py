"""Building a flatfield model version from slides' mean images (AstroPath §4), as plain functions.

``shadeflow.tasks.model`` runs these with the slide stacks merged as a tree on the cluster.
"""

from __future__ import annotations

from typing import Any

from ..io import astropath as astropath_io
from ..io.cohort import SlideRef, read_field_log, read_stacked_metadata
from ..io.output_folders import StagedOutput
from ..stack import FieldLogRow, MeanImageStack
from .flatfield import Flatfield
from .flatfield_statistics import layer_statistics, summary_statistics
from .store import publish_version, write_version_files

METADATA_COLUMNS = ["slideID", "project", "cohort", "microscope_name", "mindate", "maxdate"]


def write_model_version(
    staged: StagedOutput,
    store: str,
    version: str,
    model: Flatfield,
    stack: MeanImageStack,
    slides: list[SlideRef],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """Write every file of a model version into ``staged`` and publish it; returns the manifest."""
    first = slides[0]
    layer_groups = {name: [a, b] for name, a, b in first.layer_groups}
    statistics = layer_statistics(model, stack.n_images, layer_groups)
    slide_rows = [
        {
            "slide_id": ref.slide_id,
            "root": ref.root,
            "project": ref.project,
            "cohort": ref.cohort,
            "batch": ref.batch,
            "fields_stacked": sum(
                1 for row in stack.fields if row.slide == ref.slide_id and row.stacked_in_layers
            ),
        }
        for ref in slides
    ]
    attributes = {
        "version": version,
        "shape": list(first.shape),
        "layer_groups": layer_groups,
        "microscope": first.microscope,
        "sigma": model.sigma,
        "border": model.border,
        "empty_layers": list(model.empty_layers),
        "slides": [r["slide_id"] for r in slide_rows],
    }
    write_version_files(staged, version, model.flatfield, model.uncertainty, stack.count, attributes)
    field_log = [row for ref in slides for row in read_field_log(ref)]
    astropath_io.write_dataclass_csv(staged.url("fields_used.csv"), field_log, FieldLogRow)
    metadata = [
        [row.get(c, "") for c in METADATA_COLUMNS] for ref in slides for row in read_stacked_metadata(ref)
    ]
    astropath_io.write_csv(staged.url("metadata_summary_stacked_images.csv"), METADATA_COLUMNS, metadata)

    # deferred on purpose: the report imports matplotlib, needed only when a model is written
    from . import report as model_report

    model_report.write_model_summary(
        staged.url(f"flatfield_summary_{version}.pdf"),
        version,
        model,
        stack,
        statistics,
        slide_rows,
        parameters,
    )
    return publish_version(
        staged,
        store,
        version,
        parameters,
        inputs=[ref.meanimage_url for ref in slides],
        expected=["fields_used.csv", "metadata_summary_stacked_images.csv"],
        shape=list(first.shape),
        layer_groups=layer_groups,
        microscope=first.microscope,
        slides=slide_rows,
        statistics={"summary": summary_statistics(statistics), "layers": [s.__dict__ for s in statistics]},
        empty_layers=list(model.empty_layers),
    )


def merge_stacks(a: MeanImageStack, b: MeanImageStack) -> MeanImageStack:
    """Pixel-count weighted merge of two slides' stacks (a tree-reduction step)."""
    return a.merge(b)


def model_summary_line(manifest: dict[str, Any]) -> dict[str, Any]:
    """One row of ``model list``."""
    summary = manifest.get("statistics", {}).get("summary", {})
    slides = manifest.get("slides", [])
    return {
        "version": manifest.get("version"),
        "slides": len(slides),
        "fields": sum(s.get("fields_stacked", 0) for s in slides),
        "shape": "×".join(str(v) for v in manifest.get("shape", [])),
        "min": summary.get("min"),
        "max": summary.get("max"),
        "mean_std": summary.get("mean_std"),
        "created": manifest.get("created"),
    }
