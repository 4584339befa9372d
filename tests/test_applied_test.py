"""Applied flatfield test (issue 3 item 4): seeded halves, AstroPath outputs, metrics, bad input."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from conftest import flow_run_artifacts, tree

from shadeflow.core.applied.evaluation import correct_mean_image, split_fields
from shadeflow.core.io import astropath as astropath_io
from shadeflow.core.model.models_csv import ModelError
from shadeflow.flows.model import AppliedTestParameters, applied_test
from shadeflow.infra.cluster import task_runner

pytestmark = pytest.mark.usefixtures("prefect_server")

OUTPUT_FILES = [
    "flatfield.bin",
    "flatfield_uncertainty.bin",
    "corrected_mean_image.bin",
    "corrected_mean_image_uncertainty.bin",
    "corrected_mean_image_mask_stack.bin",
    "fields_used_flatfield.csv",
    "fields_used_corrected_mean_image.csv",
    "metadata_summary_flatfield_stacked_images.csv",
    "metadata_summary_corrected_mean_image_stacked_images.csv",
    "applied_flatfield_metrics.csv",
    "applied_flatfield_summary.pdf",
    "smoothed_mean_image_pixel_intensities.png",
    "smoothed_mean_image_pixel_intensities_central_region.png",
    "illumination_variation_reduction.png",
    "illumination_variation_reduction_central_region.png",
    "shadeflow.json",
]


def run(**params):
    return applied_test.with_options(task_runner=task_runner(memory="4GiB", workers=1))(
        params=AppliedTestParameters(**params)
    )


@pytest.fixture(scope="module")
def tested(meanimage_cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("applied") / "test"
    state = applied_test.with_options(task_runner=task_runner(memory="4GiB", workers=1))(
        params=AppliedTestParameters(roots=[meanimage_cohort["root"]], out=str(out), seed=3),
        return_state=True,
    )
    return {
        "out": str(out),
        "result": state.result(),
        "flow_run_id": state.state_details.flow_run_id,
        **meanimage_cohort,
    }


def test_outputs_have_astropath_names_and_layouts(tested):
    h, w, n = tested["config"].shape
    for name in OUTPUT_FILES:
        assert os.path.exists(os.path.join(tested["out"], name)), name
    for name in (
        "flatfield.bin",
        "flatfield_uncertainty.bin",
        "corrected_mean_image.bin",
        "corrected_mean_image_uncertainty.bin",
        "corrected_mean_image_mask_stack.bin",
    ):
        assert os.path.getsize(os.path.join(tested["out"], name)) == h * w * n * 8, name
    rows = list(csv.DictReader(open(os.path.join(tested["out"], "applied_flatfield_metrics.csv"))))
    assert [int(float(r["layer_n"])) for r in rows] == list(range(1, n + 1))
    assert {
        "pre_spread",
        "post_spread",
        "pre_std",
        "post_std",
        "pre_central_std",
        "std_change_percent",
    } <= set(rows[0])


def test_halves_are_disjoint_bulk_fields_of_every_slide(tested):
    manifest = json.load(open(os.path.join(tested["out"], "shadeflow.json")))
    assert sorted(manifest["splits"]) == sorted(os.path.basename(u) for u in tested["urls"])
    for halves in manifest["splits"].values():
        a, b = set(halves["flatfield"]), set(halves["corrected_mean_image"])
        assert a and b and not a & b
        assert len(a) - len(b) in (0, 1)
    used_a = {
        r["file"] for r in csv.DictReader(open(os.path.join(tested["out"], "fields_used_flatfield.csv")))
    }
    used_b = {
        r["file"]
        for r in csv.DictReader(open(os.path.join(tested["out"], "fields_used_corrected_mean_image.csv")))
    }
    assert used_a and used_b and not used_a & used_b


def test_flatfield_removes_at_least_80_percent_of_the_illumination_variation(tested):
    change = tested["result"]["summary"]["change_percent"]
    assert change["mean_std"] <= -80, change
    rows = list(csv.DictReader(open(os.path.join(tested["out"], "applied_flatfield_metrics.csv"))))
    assert all(float(r["post_std"]) < 0.3 * float(r["pre_std"]) for r in rows)


def test_same_seed_gives_the_same_split_and_numbers(tested, tmp_path):
    again = tmp_path / "again"
    run(roots=[tested["root"]], out=str(again), seed=3)
    for name in ("applied_flatfield_metrics.csv", "flatfield.bin", "corrected_mean_image.bin"):
        with open(os.path.join(tested["out"], name), "rb") as a, open(again / name, "rb") as b:
            assert a.read() == b.read(), name
    first = json.load(open(os.path.join(tested["out"], "shadeflow.json")))["splits"]
    assert json.load(open(again / "shadeflow.json"))["splits"] == first


def test_split_is_seeded_and_independent_of_other_slides():
    keys = [f"F{i}" for i in range(21)]
    a = split_fields("S1", keys, seed=5)
    assert a == split_fields("S1", keys, seed=5)
    assert set(a.flatfield) | set(a.corrected) == set(keys) and not set(a.flatfield) & set(a.corrected)
    assert len(a.flatfield) == 11 and len(a.corrected) == 10
    assert any(split_fields("S1", keys, seed=s).flatfield != a.flatfield for s in range(6, 10))
    assert split_fields("S2", keys, seed=5).flatfield != a.flatfield  # seeded per slide too
    with pytest.raises(ModelError, match="slide S3: 1 bulk field"):
        split_fields("S3", ["only"], seed=0)


def test_corrected_uncertainty_adds_relative_errors_in_quadrature():
    mean = np.array([[[10.0, 0.0]]])
    std = np.array([[[0.3, 0.2]]])
    flat = np.array([[[0.8, 0.5]]])
    unc = np.array([[[0.032, 0.01]]])
    corrected, error = correct_mean_image(mean, std, flat, unc)
    assert corrected[0, 0, 0] == pytest.approx(12.5)
    assert error[0, 0, 0] == pytest.approx(12.5 * np.hypot(0.03, 0.04))  # not 12.5 · 0.03 · 0.04
    assert error[0, 0, 1] == pytest.approx(0.2 / 0.5)


def test_corrected_mean_image_is_the_mean_divided_by_the_flatfield(tested):
    shape = tested["config"].shape
    flat = astropath_io.read_bin(os.path.join(tested["out"], "flatfield.bin"), shape, "float64")
    corrected = astropath_io.read_bin(
        os.path.join(tested["out"], "corrected_mean_image.bin"), shape, "float64"
    )
    count = astropath_io.read_bin(
        os.path.join(tested["out"], "corrected_mean_image_mask_stack.bin"), shape, "uint64"
    )
    assert (count > 0).mean() > 0.99
    assert np.all(flat > 0)
    # corrected tissue is flat: its smoothed layers vary far less than the flatfield does
    assert np.std(corrected[0][count[0] > 0]) / corrected[0][count[0] > 0].mean() < np.std(flat[0])


def test_existing_complete_output_is_refused(tested):
    before = tree(tested["out"])
    with pytest.raises(FileExistsError, match="already holds a complete applied test"):
        run(roots=[tested["root"]], out=tested["out"], seed=3)
    assert tree(tested["out"]) == before


def test_no_matching_slides_writes_nothing(tested, tmp_path):
    out = tmp_path / "none"
    with pytest.raises(ModelError, match="match 'NOPE'"):
        run(roots=[tested["root"]], out=str(out), slides="NOPE")
    assert not out.exists()


def test_slide_without_meanimage_output_is_named(tested, tmp_path):
    from shadeflow.core.synth.slides import SynthConfig, write_cohort

    root = tmp_path / "raw"
    write_cohort(str(root), SynthConfig(slides=1, fields=12, shape=(64, 80, 5), seed=2, project=4))
    before = tree(root)
    out = tmp_path / "out"
    with pytest.raises(ModelError, match=r"slide SYN4_1: no meanimage output"):
        run(roots=[str(root)], out=str(out))
    assert not out.exists() and tree(root) == before


def test_artifacts_hold_metrics_and_images(tested):
    keys = {a.key: a for a in flow_run_artifacts(tested["flow_run_id"]) if a.key}
    table = keys["applied-test-metrics"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert len(rows) == tested["config"].shape[2]
    markdown = keys["applied-test-summary"].data
    assert "applied_flatfield_summary.pdf" in markdown and "data:image/png;base64," in markdown
