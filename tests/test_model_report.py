"""The PDF summary of a flatfield model and the artifact previews (``shadeflow.core.model.report``)."""

from __future__ import annotations

import dataclasses
import math
import re
import struct

import numpy as np
import pytest

from shadeflow.core import report_pages
from shadeflow.core.illumination import central
from shadeflow.core.io import storage
from shadeflow.core.io.cohort import find_slides, load_stack
from shadeflow.core.io.output_folders import StagedOutput, shadeflow_version
from shadeflow.core.io.slide import load_slide
from shadeflow.core.meanimage import report as meanimage_report
from shadeflow.core.meanimage.outputs import output_url, write_meanimage_outputs
from shadeflow.core.meanimage.pipeline import MASK_DIR, compute_mean_image, plan_slide
from shadeflow.core.model import report as model_report
from shadeflow.core.model.flatfield import build_flatfield
from shadeflow.core.model.flatfield_statistics import layer_statistics, summary_statistics
from shadeflow.core.stack import MeanImageStack
from shadeflow.core.synth.slides import SynthConfig, write_cohort

PAGE = re.compile(rb"/Type\s*/Page[^s]")  # a page object, not the /Pages tree
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VERSION = "test-2024"


def n_pages(pdf: bytes) -> int:
    return len(PAGE.findall(pdf))


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert png.startswith(PNG_SIGNATURE)
    return struct.unpack(">II", png[16:24])


def expected_pages(n_layers: int, n_slides: int) -> int:
    """Slide table pages, the variation page, per-layer table pages, and one image page per LAYERS_PER_PAGE
    layers."""
    slide_pages = 1 + math.ceil(max(0, n_slides - report_pages.FIRST_PAGE_ROWS) / report_pages.PAGE_ROWS)
    return (
        slide_pages
        + 1
        + math.ceil(n_layers / model_report.LAYER_TABLE_ROWS)
        + math.ceil(n_layers / report_pages.LAYERS_PER_PAGE)
    )


def make_mean_images(root) -> str:
    """A two-slide synthetic cohort with its mean images written (meanimage's own PDFs skipped: not under
    test)."""
    urls = write_cohort(str(root), SynthConfig(slides=2, fields=24, seed=4))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(meanimage_report, "write_reports", lambda *args, **kwargs: None)
        for url in urls:
            out = StagedOutput(output_url(url))
            result = compute_mean_image(plan_slide(load_slide(url)), out.url(MASK_DIR))
            write_meanimage_outputs(out, result, {}, seed=0)
    return str(root)


def slide_rows(refs, stack: MeanImageStack) -> list[dict]:
    return [
        {
            "slide_id": r.slide_id,
            "root": r.root,
            "project": r.project,
            "cohort": r.cohort,
            "batch": r.batch,
            "fields_stacked": sum(
                1 for row in stack.fields if row.slide == r.slide_id and row.stacked_in_layers
            ),
        }
        for r in refs
    ]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A model built from the cohort as ``model build`` does, and its summary PDF."""
    root = make_mean_images(tmp_path_factory.mktemp("cohort"))
    refs = find_slides([root])
    stack = load_stack(refs[0]).merge(load_stack(refs[1]))
    flatfield = build_flatfield(stack)
    groups = {name: [first, last] for name, first, last in refs[0].layer_groups}
    statistics = layer_statistics(flatfield, stack.n_images, groups)
    slides = slide_rows(refs, stack)
    url = storage.join(str(tmp_path_factory.mktemp("model")), f"flatfield_summary_{VERSION}.pdf")
    model_report.write_model_summary(
        url, VERSION, flatfield, stack, statistics, slides, {"version": VERSION, "sigma": None}
    )
    return {
        "flatfield": flatfield,
        "stack": stack,
        "statistics": statistics,
        "slides": slides,
        "groups": groups,
        "pdf": storage.read_bytes(url),
        "url": url,
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


def test_summary_is_a_pdf_named_for_its_version_with_provenance(model):
    pdf = model["pdf"]
    assert model["url"].endswith(f"flatfield_summary_{VERSION}.pdf")
    assert pdf.startswith(b"%PDF")
    # content streams are compressed, so these can only come from the uncompressed metadata
    assert b"/Creator (shadeflow " + shadeflow_version().encode() + b")" in pdf
    assert f"flatfield model {VERSION} flatfield_summary_{VERSION}".encode() in pdf  # Title
    assert b'"version": "test-2024"' in pdf  # parameters, in Keywords


def test_page_count_follows_layers_and_slides(model, tmp_path):
    n_layers = model["flatfield"].flatfield.shape[0]
    assert n_pages(model["pdf"]) == expected_pages(n_layers, 2) == 1 + 1 + 1 + math.ceil(n_layers / 5)
    # a cohort whose slide table overflows the first page gets continuation pages
    many = [dict(model["slides"][0], slide_id=f"S{i}") for i in range(report_pages.FIRST_PAGE_ROWS + 5)]
    url = str(tmp_path / "many.pdf")
    model_report.write_model_summary(
        url, VERSION, model["flatfield"], model["stack"], model["statistics"], many, {}
    )
    assert (
        n_pages(storage.read_bytes(url)) == expected_pages(n_layers, len(many)) == n_pages(model["pdf"]) + 1
    )


def test_statistics_table_is_astropaths_table(model):
    flatfield, statistics = model["flatfield"], model["statistics"]
    header, rows = model_report.statistics_table(flatfield, statistics)
    assert header[1:] == ["whole image", "central 64%"]
    values = {row[0]: (float(row[1]), float(row[2])) for row in rows}
    summary = summary_statistics(statistics)
    centres = [central(layer) for layer in flatfield.flatfield]
    expected = {
        "max F": (summary["max"], max(c.max() for c in centres)),
        "min F": (summary["min"], min(c.min() for c in centres)),
        "mean spread (p5-p95)": (summary["mean_spread"], summary["mean_central_spread"]),
        "mean std": (summary["mean_std"], summary["mean_central_std"]),
    }
    assert values.keys() == expected.keys()
    for name, pair in expected.items():
        assert values[name] == pytest.approx(pair, abs=5e-5), name  # printed to 4 decimals
    # the flatfield is mean-relative: it straddles 1, and the centre varies less than the whole image
    assert values["min F"][0] < 1 < values["max F"][0]
    assert values["mean spread (p5-p95)"][1] < values["mean spread (p5-p95)"][0]


def test_layer_table_has_a_row_per_layer(model):
    rows = model_report.layer_table_rows(model["statistics"])
    assert [r[0] for r in rows] == list(range(1, model["flatfield"].flatfield.shape[0] + 1))
    assert all(len(r) == len(model_report.LAYER_TABLE_HEADER) for r in rows)
    assert [r[1] for r in rows] == [s.group for s in model["statistics"]]


def test_brightest_layer_images_one_small_png_per_group(model):
    stack, groups = model["stack"], model["groups"]
    images = model_report.brightest_layer_images(model["flatfield"], stack, groups)
    assert list(images) == list(groups)
    for png in images.values():
        width, height = png_size(png)
        assert 0 < width <= 256 and height > 0
    # the brightest layer: highest mean of sum / max(count, 1), computed independently here
    means = (stack.sum / np.maximum(stack.count, 1)).mean(axis=(1, 2))
    chosen = model_report.brightest_layers(stack, groups)
    for name, (first, last) in groups.items():
        assert chosen[name] == first + int(np.argmax(means[first - 1 : last]))


def test_empty_layer_and_single_group_still_give_valid_outputs(model, tmp_path):
    stack = without_layer(model["stack"], 1)
    flatfield = build_flatfield(stack)
    assert flatfield.empty_layers == (2,)
    assert np.all(flatfield.flatfield[1] == 1.0)
    n_layers = stack.shape[0]
    single = {"all": [1, n_layers]}
    statistics = layer_statistics(flatfield, stack.n_images, single)
    url = str(tmp_path / "flatfield_summary_empty.pdf")
    model_report.write_model_summary(url, "empty", flatfield, stack, statistics, model["slides"][:1], {})
    pdf = storage.read_bytes(url)
    assert pdf.startswith(b"%PDF") and n_pages(pdf) == expected_pages(n_layers, 1)
    # the empty layer (F = 1) is left out of the extremes, as in summary_statistics
    _, rows = model_report.statistics_table(flatfield, statistics)
    used = [layer for layer in range(n_layers) if layer != 1]
    assert float(rows[0][1]) == pytest.approx(flatfield.flatfield[used].max(), abs=5e-5)
    assert float(rows[0][2]) == pytest.approx(
        max(central(flatfield.flatfield[layer]).max() for layer in used), abs=5e-5
    )
    images = model_report.brightest_layer_images(flatfield, stack, single)
    assert list(images) == ["all"] and png_size(images["all"])[0] <= 256
    # a group whose every layer is empty still gets a preview (its F = 1)
    only_empty = model_report.brightest_layer_images(flatfield, stack, {"empty": [2, 2]})
    assert png_size(only_empty["empty"])[0] <= 256


def test_nothing_stacked_at_all(model, tmp_path):
    """A model of an empty stack (every layer F = 1) is degenerate but must not crash its report."""
    stack = model["stack"]
    for layer in range(stack.shape[0]):
        stack = without_layer(stack, layer)
    with pytest.warns(RuntimeWarning, match="empty mean-image stack"):
        flatfield = build_flatfield(stack)
    assert np.all(flatfield.flatfield == 1.0)
    statistics = layer_statistics(flatfield, stack.n_images, model["groups"])
    url = str(tmp_path / "flatfield_summary_none.pdf")
    model_report.write_model_summary(url, "none", flatfield, stack, statistics, [], {})
    assert storage.read_bytes(url).startswith(b"%PDF")
    assert len(model_report.brightest_layer_images(flatfield, stack, model["groups"])) == len(model["groups"])


def test_summary_written_to_s3(model, s3_bucket):
    url = f"s3://{s3_bucket}/models/flatfield/flatfield_{VERSION}/flatfield_summary_{VERSION}.pdf"
    m = model
    model_report.write_model_summary(
        url, VERSION, m["flatfield"], m["stack"], m["statistics"], m["slides"], {"version": VERSION}
    )
    assert storage.read_bytes(url).startswith(b"%PDF")


def test_statistics_rows_are_plain_dataclasses(model):
    """The report reads LayerStatistics fields by name; guard against a silent rename."""
    names = {f.name for f in dataclasses.fields(model["statistics"][0])}
    assert {"layer", "group", "n_images", "minimum", "maximum", "p5", "p95", "spread", "std"} <= names
    assert {"central_p5", "central_p95", "central_spread", "central_std"} <= names


def test_the_first_page_shows_the_parameters_as_a_table_that_fits():
    """Name and value per row (the whole set stays in the PDF's Keywords): long paths keep their end,
    lists show the items that fit and a count, nothing runs past the page (about 125 characters)."""
    from matplotlib.figure import Figure

    from shadeflow.core.report_pages import ReportHeader, parameter_rows

    roots = [
        f"s3://bucket/a/very/long/cohort/path/number/{i}/with/many/levels/of/folders/below/it"
        for i in range(7)
    ]
    parameters = {
        "version": "2024-01",
        "models_csv": "/data/" + "x" * 200 + "/AstroPathFlatfieldModels.csv",
        "roots": roots,
        "sigma": None,
        "border": "linear",
        "settings": {"degree": 6, "max_frames": 1000},
    }
    rows = dict(parameter_rows(parameters))
    assert rows["version"] == "2024-01" and rows["sigma"] == "—" and rows["settings.degree"] == "6"
    assert rows["roots"] == f"{roots[0]} (+6 more)"
    assert rows["models_csv"].startswith("…") and rows["models_csv"].endswith("AstroPathFlatfieldModels.csv")
    header = ReportHeader.of("flatfield model 2024-01", parameters, "3 slides")
    fig = Figure(figsize=(8.27, 11.69))
    header.draw(fig, "flatfield summary")
    drawn = "\n".join(t.get_text() for t in fig.texts)
    assert "{" not in drawn and max(len(line) for line in drawn.splitlines()) <= 125
