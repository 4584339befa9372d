"""Writing an applied test's outputs with AstroPath's names (§5), plus the metrics table and a manifest."""

from __future__ import annotations

from typing import Any

from ..io import astropath as astropath_io
from ..io.cohort import SlideRef
from ..io.output_folders import StagedOutput
from ..model.build import METADATA_COLUMNS
from ..stack import FieldLogRow
from .evaluation import AppliedTestResult, Split

KIND = "applied-test"
METRICS_CSV = "applied_flatfield_metrics.csv"


def _metadata_rows(selected: list[tuple[SlideRef, Split]], half: str) -> list[list[str]]:
    rows = []
    for ref, split in selected:
        slide = ref.load_slide(check_files=False)
        keys = set(getattr(split, half))
        times = sorted(f.acquired for f in slide.fields if f.key in keys)
        rows.append(
            [
                slide.slide_id,
                slide.project,
                slide.cohort,
                slide.microscope,
                times[0].isoformat(),
                times[-1].isoformat(),
            ]
        )
    return rows


def write_applied_test_outputs(
    out: StagedOutput,
    result: AppliedTestResult,
    selected: list[tuple[SlideRef, Split]],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """Write every output of an applied test into ``out`` and publish it; returns the manifest."""
    astropath_io.write_bin(out.url("flatfield.bin"), result.flatfield.flatfield, "float64")
    astropath_io.write_bin(out.url("flatfield_uncertainty.bin"), result.flatfield.uncertainty, "float64")
    astropath_io.write_bin(out.url("corrected_mean_image.bin"), result.corrected, "float64")
    astropath_io.write_bin(out.url("corrected_mean_image_uncertainty.bin"), result.corrected_error, "float64")
    astropath_io.write_bin(
        out.url("corrected_mean_image_mask_stack.bin"), result.corrected_stack.count, "uint64"
    )
    for half, stack in (
        ("flatfield", result.flatfield_stack),
        ("corrected_mean_image", result.corrected_stack),
    ):
        astropath_io.write_dataclass_csv(out.url(f"fields_used_{half}.csv"), stack.fields, FieldLogRow)
    astropath_io.write_csv(
        out.url("metadata_summary_flatfield_stacked_images.csv"),
        METADATA_COLUMNS,
        _metadata_rows(selected, "flatfield"),
    )
    astropath_io.write_csv(
        out.url("metadata_summary_corrected_mean_image_stacked_images.csv"),
        METADATA_COLUMNS,
        _metadata_rows(selected, "corrected"),
    )
    rows = [m.row() for m in result.metrics]
    astropath_io.write_csv(out.url(METRICS_CSV), list(rows[0]), ([row[k] for k in rows[0]] for row in rows))

    from . import report as applied_test_report  # matplotlib: imported only when writing

    splits = [split for _, split in selected]
    layer_groups = {name: [first, last] for name, first, last in selected[0][0].layer_groups}
    applied_test_report.write_applied_test_plots(out.url(), result, layer_groups=layer_groups)
    applied_test_report.write_applied_test_summary(
        out.url("applied_flatfield_summary.pdf"), result, splits, parameters, layer_groups=layer_groups
    )
    return out.commit(
        KIND,
        parameters,
        inputs=[ref.meanimage_url for ref, _ in selected],
        splits={
            s.slide_id: {"flatfield": list(s.flatfield), "corrected_mean_image": list(s.corrected)}
            for s in splits
        },
        summary=result.summary(),
        sigma=result.flatfield.sigma,
        border=result.flatfield.border,
    )
