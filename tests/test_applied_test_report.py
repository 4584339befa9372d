"""Plots and PDF summary of the applied flatfield test (``shadeflow.core.applied.report``)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from shadeflow.core.applied import report
from shadeflow.core.applied.evaluation import evaluate, restack, split_fields
from shadeflow.core.illumination import central
from shadeflow.core.io import storage
from shadeflow.core.io.cohort import find_slides
from shadeflow.core.io.output_folders import StagedOutput, shadeflow_version
from shadeflow.core.io.slide import load_slide
from shadeflow.core.meanimage import report as meanimage_report
from shadeflow.core.meanimage.outputs import output_url, write_meanimage_outputs
from shadeflow.core.meanimage.pipeline import MASK_DIR, compute_mean_image, plan_slide
from shadeflow.core.stack import MeanImageStack
from shadeflow.core.synth.slides import SynthConfig, write_cohort

PAGE = re.compile(rb"/Type\s*/Page[^s]")  # a page object, not the /Pages tree
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_NAMES = [
    "smoothed_mean_image_pixel_intensities.png",
    "smoothed_mean_image_pixel_intensities_central_region.png",
    "illumination_variation_reduction.png",
    "illumination_variation_reduction_central_region.png",
]
SEED = 11


def n_pages(pdf: bytes) -> int:
    return len(PAGE.findall(pdf))


def expected_pages(n_layers: int) -> int:
    """Header and tables, per-layer table pages, the four plots, one image page per LAYERS_PER_PAGE layers."""
    return (
        1
        + math.ceil(n_layers / report.LAYER_TABLE_ROWS)
        + 4
        + math.ceil(n_layers / meanimage_report.LAYERS_PER_PAGE)
    )


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    """The applied test of a two-slide synthetic cohort, as the flow runs it, with its plots and PDF."""
    root = str(tmp_path_factory.mktemp("cohort"))
    urls = write_cohort(root, SynthConfig(slides=2, fields=24, seed=4))
    plans = []
    with pytest.MonkeyPatch.context() as patch:
        # meanimage's PDFs: not under test
        patch.setattr(meanimage_report, "write_reports", lambda *args, **kwargs: None)
        for url in urls:
            out = StagedOutput(output_url(url))
            plan = plan_slide(load_slide(url))
            write_meanimage_outputs(out, compute_mean_image(plan, out.url(MASK_DIR)), {}, seed=0)
            plans.append(plan)
    splits, halves = [], {"flatfield": None, "corrected": None}
    for plan in plans:
        split = split_fields(plan.slide.slide_id, [f.key for f in plan.bulk_fields], SEED)
        splits.append(split)
        for half, keys, use in (
            ("flatfield", split.flatfield, "flatfield"),
            ("corrected", split.corrected, "corrected_mean_image"),
        ):
            stack = restack(plan, [plan.slide.field_by_key(k) for k in keys], use)
            halves[half] = stack if halves[half] is None else halves[half].merge(stack)
    result = evaluate(halves["flatfield"], halves["corrected"])
    groups = {name: [first, last] for name, first, last in find_slides([root])[0].layer_groups}
    folder = str(tmp_path_factory.mktemp("applied"))
    names = report.write_applied_test_plots(folder, result, groups)
    parameters = {"seed": SEED, "roots": [root]}
    report.write_applied_test_summary(
        storage.join(folder, "applied_flatfield_summary.pdf"), result, splits, parameters, groups
    )
    return {
        "result": result,
        "splits": splits,
        "halves": halves,
        "groups": groups,
        "folder": folder,
        "names": names,
        "parameters": parameters,
    }


def without_layer(stack: MeanImageStack, layer: int) -> MeanImageStack:
    """A copy of ``stack`` in which nothing was stacked in the 0-based ``layer``."""
    copy = MeanImageStack(
        stack.sum.copy(), stack.sum_sq.copy(), stack.count.copy(), stack.n_images.copy(), list(stack.fields)
    )
    for array in (copy.sum, copy.sum_sq, copy.count):
        array[layer] = 0
    copy.n_images[layer] = 0
    return copy


def test_plots_have_astropaths_names_and_are_pngs(applied):
    assert applied["names"] == PLOT_NAMES
    files = storage.file_sizes(applied["folder"])
    for name in PLOT_NAMES:
        assert files[name] > 0
        assert storage.read_bytes(storage.join(applied["folder"], name)).startswith(PNG_SIGNATURE)


def test_summary_pdf_pages_and_provenance(applied):
    pdf = storage.read_bytes(storage.join(applied["folder"], "applied_flatfield_summary.pdf"))
    assert pdf.startswith(b"%PDF")
    assert b"/Creator (shadeflow " + shadeflow_version().encode() + b")" in pdf
    assert f'"seed": {SEED}'.encode() in pdf  # parameters, in the Keywords metadata
    assert b"applied flatfield test applied_flatfield_summary" in pdf  # Title
    assert n_pages(pdf) == expected_pages(applied["result"].mean.shape[0])


def test_reduction_series_average_to_the_summary(applied):
    result = applied["result"]
    summary = result.summary()
    for central_region, prefix in ((False, "mean_"), (True, "mean_central_")):
        s = report.reduction_series(result, central_region)
        for when in ("pre", "post"):
            assert s[f"{when}_spread"].mean() == pytest.approx(summary[when][f"{prefix}spread"], rel=1e-12)
            assert s[f"{when}_std"].mean() == pytest.approx(summary[when][f"{prefix}std"], rel=1e-12)
        change = 100 * (s["post_std"] - s["pre_std"]) / s["pre_std"]
        np.testing.assert_allclose(s["std_change_percent"], change)
    # the correction flattens every layer of this cohort (planted ~30 % fall-off)
    whole = report.reduction_series(result)
    assert np.all(whole["post_spread"] < whole["pre_spread"]) and np.all(whole["post_std"] < whole["pre_std"])


def test_intensity_series_are_the_metrics_and_smoothed_means(applied):
    result = applied["result"]
    whole = report.intensity_series(result)
    np.testing.assert_array_equal(whole["pre_p5"], [m.pre.p5 for m in result.metrics])
    np.testing.assert_array_equal(whole["post_p95"], [m.post.p95 for m in result.metrics])
    np.testing.assert_allclose(whole["pre_mean"], 1.0)  # mean-relative: each layer averages 1
    np.testing.assert_allclose(whole["post_mean"], 1.0)
    middle = report.intensity_series(result, central_region=True)
    np.testing.assert_array_equal(middle["post_p5"], [m.post_central.p5 for m in result.metrics])
    np.testing.assert_allclose(middle["pre_mean"], [central(layer).mean() for layer in result.smoothed_pre])
    assert np.all(middle["pre_mean"] > 1.0)  # before correction the centre is brighter than average
    assert np.all(whole["pre_p5"] <= whole["pre_mean"]) and np.all(whole["pre_mean"] <= whole["pre_p95"])


def test_tables_are_the_summary(applied):
    result = applied["result"]
    summary = result.summary()
    header, rows = report.summary_table(result)
    assert len(header) == 5 and len(rows) == 4
    table = {row[0]: row[1:] for row in rows}
    keys = {
        "max relative intensity": "max_relative_intensity",
        "min relative intensity": "min_relative_intensity",
        "mean spread (p5-p95)": "mean_spread",
        "mean std": "mean_std",
    }
    for name, key in keys.items():
        assert table[name][:2] == [summary["pre"][key], summary["post"][key]], name
    assert table["mean spread (p5-p95)"][2:] == [
        summary["pre"]["mean_central_spread"],
        summary["post"]["mean_central_spread"],
    ]
    assert table["mean std"][2:] == [summary["pre"]["mean_central_std"], summary["post"]["mean_central_std"]]
    assert table["max relative intensity"][2] == max(central(layer).max() for layer in result.smoothed_pre)
    _, change = report.change_table(result)
    assert {row[0]: row[1:] for row in change} == {
        "mean spread (p5-p95)": [
            summary["change_percent"]["mean_spread"],
            summary["change_percent"]["mean_central_spread"],
        ],
        "mean std": [summary["change_percent"]["mean_std"], summary["change_percent"]["mean_central_std"]],
    }
    assert all(value < 0 for row in change for value in row[1:])  # flatter after correction


def test_split_rows_count_each_half(applied):
    rows = report.split_rows(applied["splits"], applied["result"])
    for row, split in zip(rows, applied["splits"]):
        slide, drawn_a, stacked_a, drawn_b, stacked_b = row
        assert slide == split.slide_id
        assert (drawn_a, drawn_b) == (len(split.flatfield), len(split.corrected))
        assert 0 < stacked_a <= drawn_a and 0 < stacked_b <= drawn_b
    # every stacked field of each half is counted once
    for half, column in (("flatfield", 2), ("corrected", 4)):
        assert sum(r[column] for r in rows) == sum(
            1 for f in applied["halves"][half].fields if f.stacked_in_layers
        )


def test_empty_layer_and_single_group_still_give_valid_outputs(applied, tmp_path):
    halves = applied["halves"]
    result = evaluate(without_layer(halves["flatfield"], 0), without_layer(halves["corrected"], 0))
    assert result.flatfield.empty_layers == (1,)
    s = report.reduction_series(result)
    assert np.isnan(s["spread_change_percent"][0]) and np.isfinite(s["spread_change_percent"][1:]).all()
    assert report.layer_rows(result)[0][3] == "-"  # no % change for a layer with nothing to change
    n_layers = result.mean.shape[0]
    folder = str(tmp_path)
    single = {"all": [1, n_layers]}
    assert report.write_applied_test_plots(folder, result, single) == PLOT_NAMES
    report.write_applied_test_summary(
        storage.join(folder, "applied_flatfield_summary.pdf"), result, applied["splits"], {}, single
    )
    pdf = storage.read_bytes(storage.join(folder, "applied_flatfield_summary.pdf"))
    assert pdf.startswith(b"%PDF") and n_pages(pdf) == expected_pages(n_layers)
    # without layer groups at all
    assert report.write_applied_test_plots(str(tmp_path / "plain"), result) == PLOT_NAMES


def test_outputs_written_to_s3(applied, s3_bucket):
    folder = f"s3://{s3_bucket}/applied"
    names = report.write_applied_test_plots(folder, applied["result"])
    report.write_applied_test_summary(
        f"{folder}/applied_flatfield_summary.pdf", applied["result"], applied["splits"], applied["parameters"]
    )
    assert storage.read_bytes(f"{folder}/applied_flatfield_summary.pdf").startswith(b"%PDF")
    assert all(storage.read_bytes(f"{folder}/{name}").startswith(PNG_SIGNATURE) for name in names)
