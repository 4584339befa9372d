"""The PDF summaries of a slide's mean image (``shadeflow.core.meanimage.report``)."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from shadeflow.core.io import storage
from shadeflow.core.io.output_folders import StagedOutput, shadeflow_version
from shadeflow.core.io.slide import load_slide
from shadeflow.core.meanimage import pipeline as meanimage
from shadeflow.core.meanimage.pipeline import FieldSummary, ThresholdResult
from shadeflow.core.meanimage.report import (
    LAYERS_PER_PAGE,
    colour_limits,
    example_fields,
    mask_categories,
    top_flagged,
    write_reports,
)
from shadeflow.core.stack import MeanImageStack
from shadeflow.core.synth.slides import SynthConfig, write_cohort

REPORTS = ("thresholding_summary", "masking_summary", "meanimage_summary")
PAGE = re.compile(rb"/Type\s*/Page[^s]")  # a page object, not the /Pages tree


def n_pages(pdf: bytes) -> int:
    return len(PAGE.findall(pdf))


def read_reports(out: StagedOutput, slide_id: str) -> dict[str, bytes]:
    return {name: storage.read_bytes(out.url(f"{slide_id}-{name}.pdf")) for name in REPORTS}


def make_reports(root, config: SynthConfig, parameters: dict):
    """Synthesise one slide, compute its mean image (writing mask files) and write the reports."""
    slide = load_slide(write_cohort(str(root), config)[0])
    out = StagedOutput(storage.join(slide.url, "meanimage"))
    result = meanimage.compute_mean_image(meanimage.plan_slide(slide), out.url(meanimage.MASK_DIR))
    write_reports(out, result, parameters, seed=0)
    return out, result, read_reports(out, slide.slide_id)


@pytest.fixture(scope="module")
def ten_layers(tmp_path_factory):
    """10 layers in 5 groups, with planted folds and saturated spots."""
    return make_reports(
        tmp_path_factory.mktemp("ten"), SynthConfig(slides=1, fields=48, seed=3), {"example": 1, "seed": 0}
    )


@pytest.fixture(scope="module")
def unflagged_single_group(tmp_path_factory):
    """2 layers in one group, nothing planted to flag."""
    config = SynthConfig(
        slides=1, fields=48, shape=(251, 336, 2), seed=5, fold_probability=0.0, saturation_probability=0.0
    )
    return make_reports(tmp_path_factory.mktemp("two"), config, {"example": 2})


def test_reports_are_pdfs_with_provenance(ten_layers):
    _, result, pdfs = ten_layers
    version = shadeflow_version().encode()
    for name, pdf in pdfs.items():
        assert pdf.startswith(b"%PDF"), name
        # content streams are compressed, so these can only come from the uncompressed metadata
        assert b"/Creator (shadeflow " + version + b")" in pdf, name
        assert b'"example": 1' in pdf, name
        assert result.slide_id.encode() + b" " in pdf, name


def test_page_counts_follow_layers_and_examples(ten_layers, unflagged_single_group):
    for _, result, pdfs in (ten_layers, unflagged_single_group):
        layer_pages = math.ceil(result.plan.slide.n_layers / LAYERS_PER_PAGE)
        assert n_pages(pdfs["thresholding_summary"]) == 1 + layer_pages
        assert n_pages(pdfs["meanimage_summary"]) == 1 + layer_pages
        assert n_pages(pdfs["masking_summary"]) == 1 + len(example_fields(result.summaries, seed=0)) == 21
    assert n_pages(ten_layers[2]["meanimage_summary"]) > n_pages(
        unflagged_single_group[2]["meanimage_summary"]
    )


def test_single_group_slide_without_flags_still_gets_a_masking_summary(unflagged_single_group):
    _, result, pdfs = unflagged_single_group
    assert len(result.plan.slide.layer_groups) == 1
    assert not top_flagged(result.summaries)  # the premise: masking flagged nothing
    assert pdfs["masking_summary"].startswith(b"%PDF")


def test_mask_categories_decode_the_mask_files(ten_layers):
    out, result, _ = ten_layers
    slide = result.plan.slide
    shape, n_groups = (slide.height, slide.width), len(slide.layer_groups)
    flagged = [s for s in result.summaries if s.blur_pixels or any(s.saturated_pixels)]
    assert flagged and len(flagged) < len(result.summaries)
    for s in result.summaries:
        categories = mask_categories(out, s.key, shape, n_groups)
        assert categories.shape == (n_groups, *shape)
        # saturation overrides blur, blur overrides tissue and background
        assert (categories == 3).sum(axis=(1, 2)).tolist() == list(s.saturated_pixels)
        for g, saturated in enumerate(s.saturated_pixels):
            blurred = int((categories[g] == 2).sum())
            if saturated:
                assert blurred <= s.blur_pixels
            else:
                assert blurred == s.blur_pixels
        if s not in flagged:
            assert categories[0].mean() == pytest.approx(s.tissue_fraction)


def write_elsewhere(result, root) -> dict[str, bytes]:
    """Reports of ``result`` in a fresh output folder: one without mask files, as when masking is skipped."""
    out = StagedOutput(str(root / result.slide_id / "meanimage"))
    write_reports(out, result, {}, seed=1)
    return read_reports(out, result.slide_id)


def test_zero_thresholds_and_an_empty_layer_do_not_break_the_reports(ten_layers, tmp_path):
    _, result, _ = ten_layers
    t, stack = result.thresholds, result.stack
    zeros = ThresholdResult(
        t.fields, np.zeros_like(t.field_thresholds), np.zeros_like(t.thresholds), t.histogram
    )
    empty_first = MeanImageStack(
        stack.sum.copy(), stack.sum_sq.copy(), stack.count.copy(), stack.n_images.copy(), stack.fields
    )
    for array in (empty_first.sum, empty_first.sum_sq, empty_first.count, empty_first.n_images):
        array[0] = 0
    pdfs = write_elsewhere(dataclasses.replace(result, thresholds=zeros, stack=empty_first), tmp_path)
    assert all(pdf.startswith(b"%PDF") for pdf in pdfs.values())
    assert n_pages(pdfs["meanimage_summary"]) == 1 + math.ceil(result.plan.slide.n_layers / LAYERS_PER_PAGE)


def test_a_slide_without_edge_fields_or_masks_gets_reports(ten_layers, tmp_path):
    _, result, _ = ten_layers
    all_bulk = dataclasses.replace(result.plan, bulk=(True,) * len(result.plan.bulk), skip_masking=True)
    thresholds = meanimage.compute_thresholds(all_bulk)
    assert not thresholds.fields
    pdfs = write_elsewhere(dataclasses.replace(result, plan=all_bulk, thresholds=thresholds), tmp_path)
    assert all(pdf.startswith(b"%PDF") for pdf in pdfs.values())
    assert n_pages(pdfs["masking_summary"]) == 21


def test_colour_limits_are_robust():
    assert colour_limits(np.zeros((4, 4))) == (0.0, 1.0)
    lo, hi = colour_limits(np.full((4, 4), 7.0))
    assert lo == 7.0 and hi > lo
    image = np.zeros((100, 100))
    image[:50] = np.arange(5000).reshape(50, 100)
    image[0, 0] = 1e9  # one hot pixel does not set the range
    lo, hi = colour_limits(image)
    assert 0 < lo < 100 and 4900 < hi < 5000


def summary(n: int, blur: int = 0, saturated: tuple[int, ...] = (0, 0)) -> FieldSummary:
    return FieldSummary(
        key=f"F{n}",
        n=n,
        bulk=True,
        tissue_fraction=0.9,
        blur_pixels=blur,
        saturated_pixels=saturated,
        stacked_layers=2,
    )


def test_example_fields_put_the_most_flagged_first():
    summaries = [summary(n) for n in range(1, 41)]
    summaries[4] = summary(5, blur=50)
    summaries[9] = summary(10, blur=900)
    summaries[14] = summary(15, saturated=(0, 300))
    summaries[19] = summary(20, blur=10, saturated=(700, 5))  # in both lists: shown once
    picked = example_fields(summaries, n_top=10, total=20, seed=0)
    assert picked[:4] == top_flagged(summaries, n_top=10) == ["F10", "F5", "F20", "F15"]
    assert len(picked) == len(set(picked)) == 20
    assert set(picked) <= {s.key for s in summaries}


def test_example_fields_keep_n_top_per_reason():
    summaries = [summary(n, blur=n) for n in range(1, 31)] + [
        summary(n, saturated=(n, 0)) for n in range(31, 61)
    ]
    picked = example_fields(summaries, n_top=3, total=10, seed=0)
    assert picked[:6] == ["F30", "F29", "F28", "F60", "F59", "F58"]
    assert len(picked) == 10


def test_example_fields_are_reproducible_and_depend_on_the_seed():
    summaries = [summary(n) for n in range(1, 101)]  # nothing flagged: all examples are random
    assert example_fields(summaries, seed=4) == example_fields(summaries, seed=4)
    draws = {tuple(example_fields(summaries, seed=seed)) for seed in range(5)}
    assert len(draws) > 1
    assert all(len(set(d)) == 20 for d in draws)


def test_example_fields_of_a_small_slide_are_all_its_fields():
    summaries = [summary(n) for n in range(1, 8)]
    assert sorted(example_fields(summaries, total=20)) == sorted(s.key for s in summaries)
    assert example_fields(summaries, total=0) == []


def test_example_sheets_read_the_layers_they_show_as_the_masking_reads_them(ten_layers):
    _, result, _ = ten_layers
    plan = result.plan
    # fields whose exposure differs from the slide's in some layers, so the correction changes values
    for field in plan.slide.fields[:4]:
        chosen = [9, 2, 5]
        whole = meanimage.read_corrected_field(plan, field)[chosen]
        np.testing.assert_array_equal(meanimage.read_corrected_layers(plan, field, chosen), whole)
    changed = [
        f
        for f in plan.slide.fields
        if np.any(plan.slide.exposure_per_layer(f)[chosen] != plan.exposure_ms[chosen])
    ]
    assert changed, "no field of the test slide needs exposure correction in the chosen layers"
