"""Writing a slide's mean image and everything that documents it into ``<slide>/meanimage/``.

File names and layouts are AstroPath's (§2.8 of the reference spec), so AstroPath's own tools can read
them; ``<SID>-meanimage.zarr`` is the self-describing copy shadeflow reads back; ``shadeflow.json``
(written last) records parameters, inputs and version, and marks the folder complete.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..io import astropath as astropath_io
from ..io import storage
from ..io.output_folders import StagedOutput, read_manifest
from ..io.slide import Field
from ..stack import FieldLogRow, MeanImageStack, mean_and_std_err
from ..stack_store import read_stack, write_stack
from .masks.combined import MaskRegion
from .pipeline import MASK_DIR, MeanImageResult, SlidePlan, edge_log_rows

OUTPUT_DIR = "meanimage"
KIND = "meanimage"


def output_url(slide_url: str) -> str:
    """Where a slide's mean-image outputs live."""
    return storage.join(slide_url, OUTPUT_DIR)


def stack_url(slide_url: str, slide_id: str) -> str:
    return storage.join(output_url(slide_url), f"{slide_id}-meanimage.zarr")


def write_meanimage_outputs(
    out: StagedOutput, result: MeanImageResult, parameters: dict[str, Any], seed: int = 0
) -> dict[str, Any]:
    """Write all outputs of one slide into the staged folder ``out`` and publish it.

    The per-field mask files are already in ``out`` (written while masking). Returns the manifest.
    """
    plan, sid = result.plan, result.slide_id
    slide = plan.slide
    exposure = plan.exposure_ms
    stack = result.stack
    mean, std_err = mean_and_std_err(stack.sum, stack.sum_sq, stack.count)

    astropath_io.write_bin(out.url(f"{sid}-mean_image.bin"), mean, "float64")
    astropath_io.write_bin(out.url(f"{sid}-std_err_of_mean_image.bin"), std_err, "float64")
    astropath_io.write_bin(out.url(f"{sid}-sum_images_squared.bin"), stack.sum_sq, "float64")
    astropath_io.write_bin(out.url(f"{sid}-mask_stack.bin"), stack.count, "uint64")

    t = result.thresholds
    astropath_io.write_csv(
        out.url(f"{sid}-background_thresholds.csv"),
        ["layer_n", "counts_threshold", "counts_per_ms_threshold"],
        [
            [layer + 1, int(t.thresholds[layer]), t.thresholds[layer] / exposure[layer]]
            for layer in range(slide.n_layers)
        ],
    )
    # per-field counts/ms use the exposure every field was normalised to (AstroPath used a stale loop variable
    # here)
    astropath_io.write_csv(
        out.url(f"{sid}-thresholding_data_table.csv"),
        ["rect_n", "layer_n", "counts_threshold", "counts_per_ms_threshold"],
        [
            [f.n, layer + 1, int(row[layer]), row[layer] / exposure[layer]]
            for f, row in zip(t.fields, t.field_thresholds)
            for layer in range(slide.n_layers)
        ],
    )
    stacked_keys = {s.key for s in result.summaries if s.stacked_layers}
    _write_metadata_summary(out.url(f"{sid}-metadata_summary_thresholding_images.csv"), plan, t.fields)
    _write_metadata_summary(
        out.url(f"{sid}-metadata_summary_stacked_images.csv"),
        plan,
        [f for f in plan.bulk_fields if f.key in stacked_keys],
    )
    field_log = edge_log_rows(plan) + stack.fields
    astropath_io.write_dataclass_csv(out.url("fields_used.csv"), field_log, FieldLogRow)
    if not plan.skip_masking:
        astropath_io.write_dataclass_csv(
            out.url(MASK_DIR, "labelled_mask_regions.csv"), result.regions, MaskRegion
        )

    inputs = [slide.field_url(f) for f in slide.fields]
    attributes = {
        "slide": {
            "slide_id": sid,
            "project": slide.project,
            "cohort": slide.cohort,
            "batch": slide.batch,
            "microscope": slide.microscope,
        },
        "shape": list(slide.shape),
        "layer_groups": {g.name: [g.first, g.last] for g in slide.layer_groups},
        "exposure_ms": [float(v) for v in exposure],
        "parameters": parameters,
        "inputs": inputs,
    }
    # the mean and its error once, for the .bin files, the zarr copy and the reports
    write_stack(out.url(f"{sid}-meanimage.zarr"), stack, attributes, (mean, std_err))

    from . import report as meanimage_report  # matplotlib: imported only when writing

    meanimage_report.write_reports(out, result, parameters, seed=seed, mean_and_error=(mean, std_err))
    return out.commit(
        KIND,
        parameters,
        inputs,
        expected=expected_files(result),
        slide_id=sid,
        shape=list(slide.shape),
        layer_groups={g.name: [g.first, g.last] for g in slide.layer_groups},
        fields={"total": len(slide.fields), "edge": len(plan.edge_fields), "bulk": len(plan.bulk_fields)},
        n_images=[int(v) for v in stack.n_images],
        thresholds=[int(v) for v in t.thresholds],
        resolved={
            "mask_parameters": dataclasses.asdict(plan.params),
            "mask_grid": dataclasses.asdict(plan.grid),
            "exposure_ms": [float(v) for v in exposure],
        },
    )


def expected_files(result: MeanImageResult) -> list[str]:
    """The data files (or folders) the output of ``result`` must hold, from the result alone: the
    per-field masks were written by workers, so nothing else vouches that they are all still there.
    (The PDF summaries are for people; no tool reads them.)"""
    sid = result.slide_id
    names = [
        f"{sid}-{stem}"
        for stem in (
            "mean_image.bin", "std_err_of_mean_image.bin", "sum_images_squared.bin", "mask_stack.bin",
            "background_thresholds.csv", "thresholding_data_table.csv",
            "metadata_summary_thresholding_images.csv", "metadata_summary_stacked_images.csv",
            "meanimage.zarr",
        )
    ]  # fmt: skip
    names.append("fields_used.csv")
    if not result.plan.skip_masking:
        names.append(f"{MASK_DIR}/labelled_mask_regions.csv")
        for s in result.summaries:
            names.append(f"{MASK_DIR}/{s.key}_tissue_mask.bin")
            if s.blur_pixels or any(s.saturated_pixels):  # flagged fields also get the labelled mask
                names.append(f"{MASK_DIR}/{s.key}_full_mask.bin")
    return names


def _write_metadata_summary(url: str, plan: SlidePlan, fields: list[Field]) -> None:
    slide = plan.slide
    times = sorted(f.acquired for f in fields)
    row = [
        slide.slide_id,
        slide.project,
        slide.cohort,
        slide.microscope,
        times[0].isoformat() if times else "",
        times[-1].isoformat() if times else "",
    ]
    astropath_io.write_csv(
        url, ["slideID", "project", "cohort", "microscope_name", "mindate", "maxdate"], [row]
    )


def read_mean_image_stack(slide_url: str) -> tuple[MeanImageStack, dict[str, Any]]:
    """A slide's mean-image stack from its complete ``meanimage/`` output (the self-describing copy)."""
    manifest = read_manifest(output_url(slide_url))
    stack, attrs = read_stack(stack_url(slide_url, manifest["slide_id"]))
    return stack, attrs
