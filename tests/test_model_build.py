"""Model build (issue 3): version-selected flatfield models in the store, accuracy, immutability, bad
input."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import flow_run_artifacts, tree, write_mean_images
from typer.testing import CliRunner

from shadeflow.core.io.cohort import find_slides, load_stack
from shadeflow.core.model import store as model_store
from shadeflow.core.model.models_csv import ModelError
from shadeflow.core.smoothing import relative_rms
from shadeflow.core.stack import mean_and_std_err
from shadeflow.core.synth.slides import SynthConfig, read_truth_flatfield, write_cohort
from shadeflow.flows.model import ModelBuildParameters, model_build
from shadeflow.infra.cluster import task_runner

pytestmark = pytest.mark.usefixtures("prefect_server")
HEADER = "version,Project,Cohort,BatchID,SlideID\n"


def write_models_csv(path, version: str, slide_ids: list[str], extra: str = "") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{version},1,1,{i + 1},{sid}\n" for i, sid in enumerate(slide_ids))
    path.write_text(HEADER + rows + extra)
    return str(path)


def build(**params):
    return model_build.with_options(task_runner=task_runner(memory="4GiB", workers=1))(
        params=ModelBuildParameters(**params)
    )


def slide_ids(cohort) -> list[str]:
    return [os.path.basename(u) for u in cohort["urls"]]


@pytest.fixture(scope="module")
def built(meanimage_cohort, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    csv = write_models_csv(
        store / "AstroPathFlatfieldModels.csv", "v1", slide_ids(meanimage_cohort), extra="v0,1,1,1,OTHER\n"
    )
    state = model_build.with_options(task_runner=task_runner(memory="4GiB", workers=1))(
        params=ModelBuildParameters(version="v1", models_csv=csv, roots=[meanimage_cohort["root"]]),
        return_state=True,
    )
    return {
        "store": str(store),
        "csv": csv,
        "result": state.result(),
        "flow_run_id": state.state_details.flow_run_id,
        **meanimage_cohort,
    }


def test_model_is_written_in_astropath_layout_with_a_manifest(built):
    store, (h, w, n) = built["store"], built["config"].shape
    assert built["result"]["store"] == store  # default store: the models CSV's folder
    folder = os.path.join(store, "flatfield", "flatfield_v1")
    expected = h * w * n * 8
    assert os.path.getsize(os.path.join(store, "flatfield", "flatfield_v1.bin")) == expected
    assert os.path.getsize(os.path.join(folder, "flatfield_v1_uncertainty.bin")) == expected
    for name in (
        "fields_used.csv",
        "metadata_summary_stacked_images.csv",
        "flatfield_summary_v1.pdf",
        "shadeflow.json",
    ):
        assert os.path.exists(os.path.join(folder, name)), name
    with open(os.path.join(folder, "flatfield_summary_v1.pdf"), "rb") as handle:
        assert handle.read(4) == b"%PDF"
    manifest = json.load(open(os.path.join(folder, "shadeflow.json")))
    assert manifest["kind"] == "flatfield-model" and manifest["version"] == "v1"
    assert [s["slide_id"] for s in manifest["slides"]] == slide_ids(built)
    assert all(s["fields_stacked"] > 0 for s in manifest["slides"])
    assert manifest["parameters"]["sigma"] > 0 and manifest["shadeflow_version"]
    assert len(manifest["statistics"]["layers"]) == n
    fields_used = open(os.path.join(folder, "fields_used.csv")).read().splitlines()
    assert fields_used[0] == "slide,file,location,use,stacked_in_layers"
    assert {line.split(",")[0] for line in fields_used[1:]} == set(slide_ids(built))


def test_flatfield_matches_the_planted_shading_within_one_percent(built):
    model = model_store.read_model(built["store"], "v1")
    truth = read_truth_flatfield(built["root"], built["config"].shape)
    assert truth.min() / truth.max() <= 0.8  # the planted shading has ≥ 20 % fall-off
    errors = relative_rms(model.flatfield, truth)
    assert errors.max() <= 0.01, errors
    # normalised per layer by its inverse-variance weighted mean: that mean is 1
    weights = 1 / model.uncertainty**2
    weighted = (weights * model.flatfield).sum(axis=(1, 2)) / weights.sum(axis=(1, 2))
    assert np.allclose(weighted, 1, atol=1e-9)


def test_merged_stack_weights_each_slide_by_its_pixel_counts(meanimage_cohort):
    a, b = find_slides([meanimage_cohort["root"]], slide_ids=slide_ids(meanimage_cohort)[:2])
    sa, sb = load_stack(a), load_stack(b)
    merged = sa.merge(sb)
    mean_a, _ = mean_and_std_err(sa.sum, sa.sum_sq, sa.count)
    mean_b, _ = mean_and_std_err(sb.sum, sb.sum_sq, sb.count)
    weighted = (sa.count * mean_a + sb.count * mean_b) / np.maximum(sa.count + sb.count, 1)
    assert np.allclose(merged.mean(), weighted, rtol=1e-12, atol=1e-12)
    assert np.array_equal(merged.n_images, sa.n_images + sb.n_images)


def test_model_list_shows_versions_with_slide_counts(built):
    from shadeflow.flows.cli import app

    result = CliRunner().invoke(app, ["model", "list", "--store", built["store"]], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "v1" in line)
    assert " 3 " in line  # three slides


def test_existing_version_is_refused_and_the_store_is_untouched(built):
    before = tree(built["store"])
    with pytest.raises(ModelError, match=r"'v1' already exists.*--overwrite"):
        build(version="v1", models_csv=built["csv"], roots=[built["root"]])
    assert tree(built["store"]) == before


def test_overwrite_replaces_a_version(built, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(built["store"], store)
    csv = str(store / "AstroPathFlatfieldModels.csv")
    old = model_store.read_model(str(store), "v1").manifest
    build(version="v1", models_csv=csv, roots=[built["root"]], sigma=10.0, overwrite=True)
    new = model_store.read_model(str(store), "v1").manifest
    assert new["parameters"]["sigma"] == 10.0 != old["parameters"]["sigma"]
    assert [m["version"] for m in model_store.list_versions(str(store))] == ["v1"]


def test_a_failed_build_leaves_no_version_behind(built, tmp_path, monkeypatch):
    import shadeflow.core.model.report as report

    def explode(*args, **kwargs):
        raise RuntimeError("disk full while writing the summary")

    monkeypatch.setattr(report, "write_model_summary", explode)
    store = tmp_path / "store"
    csv = write_models_csv(store / "models.csv", "v2", slide_ids(built))
    with pytest.raises(RuntimeError, match="disk full"):
        build(version="v2", models_csv=csv, roots=[built["root"]])
    leftovers = sorted(os.listdir(store / "flatfield")) if (store / "flatfield").exists() else []
    assert leftovers == []
    assert model_store.list_versions(str(store)) == []


def test_artifacts_hold_the_statistics_and_brightest_layer_images(built):
    keys = {a.key: a for a in flow_run_artifacts(built["flow_run_id"]) if a.key}
    table = keys["model-layer-statistics"]
    assert table.type == "table"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert len(rows) == built["config"].shape[2]
    markdown = keys["model-build-summary"].data
    assert "flatfield_summary_v1.pdf" in markdown
    n_groups = len(
        json.load(open(os.path.join(built["store"], "flatfield", "flatfield_v1", "shadeflow.json")))[
            "layer_groups"
        ]
    )
    assert markdown.count("data:image/png;base64,") == n_groups


# ---------------------------------------------------------------- bad input


def meanimage_only_copy(cohort, slide_id: str, root) -> str:
    """A root holding one slide's slide.json and meanimage/ (all a model build reads)."""
    source = os.path.join(cohort["root"], slide_id)
    target = root / slide_id
    target.mkdir(parents=True)
    shutil.copy(os.path.join(source, "slide.json"), target)
    shutil.copytree(os.path.join(source, "meanimage"), target / "meanimage")
    return str(root)


def expect_refused(tmp_path, inputs: list, match: str, **params) -> None:
    store = tmp_path / "store"
    before = {str(i): tree(i) for i in inputs}
    with pytest.raises(ModelError, match=match):
        build(store=str(store), **params)
    assert not store.exists() or os.listdir(store) == [] or not (store / "flatfield").exists()
    assert {str(i): tree(i) for i in inputs} == before


def test_missing_models_csv(built, tmp_path):
    expect_refused(
        tmp_path,
        [],
        r"models CSV .*nope\.csv: does not exist",
        version="v1",
        models_csv=str(tmp_path / "nope.csv"),
        roots=[built["root"]],
    )


def test_models_csv_without_required_columns(built, tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("version,SlideID\nv1,SYN1_1\n")
    expect_refused(
        tmp_path,
        [csv],
        r"missing column\(s\) Project, Cohort, BatchID",
        version="v1",
        models_csv=str(csv),
        roots=[built["root"]],
    )


def test_version_absent_lists_the_versions_present(built, tmp_path):
    expect_refused(
        tmp_path,
        [],
        r"no rows for version 'v9'; versions present: v0, v1",
        version="v9",
        models_csv=built["csv"],
        roots=[built["root"]],
    )


def test_listed_slide_without_meanimage_output(built, tmp_path):
    root = tmp_path / "root"
    (root / "SYN7_1").mkdir(parents=True)
    shutil.copy(os.path.join(built["root"], "SYN1_1", "slide.json"), root / "SYN7_1")
    meta = json.load(open(root / "SYN7_1" / "slide.json"))
    meta["slide_id"] = "SYN7_1"
    json.dump(meta, open(root / "SYN7_1" / "slide.json", "w"))
    csv = write_models_csv(tmp_path / "m.csv", "v1", ["SYN1_1", "SYN7_1"])
    expect_refused(
        tmp_path,
        [root],
        r"slide SYN7_1: no meanimage output in .*SYN7_1/meanimage",
        version="v1",
        models_csv=csv,
        roots=[built["root"], str(root)],
    )


def test_slide_with_a_missing_meanimage_file_names_it(built, tmp_path):
    root = meanimage_only_copy(built, "SYN1_2", tmp_path / "root")
    os.remove(os.path.join(root, "SYN1_2", "meanimage", "SYN1_2-mask_stack.bin"))
    csv = write_models_csv(tmp_path / "m.csv", "v1", ["SYN1_2"])
    expect_refused(
        tmp_path,
        [root],
        r"slide SYN1_2: missing SYN1_2-mask_stack\.bin",
        version="v1",
        models_csv=csv,
        roots=[root],
    )


def test_truncated_bin_is_named(built, tmp_path):
    root = meanimage_only_copy(built, "SYN1_3", tmp_path / "root")
    path = os.path.join(root, "SYN1_3", "meanimage", "SYN1_3-mean_image.bin")
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) - 1000)
    csv = write_models_csv(tmp_path / "m.csv", "v1", ["SYN1_3"])
    expect_refused(
        tmp_path,
        [root],
        r"SYN1_3-mean_image\.bin has \d+ bytes, expected \d+ .*truncated or corrupt",
        version="v1",
        models_csv=csv,
        roots=[root],
    )


def test_slides_of_different_shape(built, tmp_path):
    other = tmp_path / "other"
    urls = write_cohort(str(other), SynthConfig(slides=1, fields=20, shape=(64, 80, 10), seed=5, project=8))
    write_mean_images(urls)
    csv = write_models_csv(tmp_path / "m.csv", "v1", ["SYN1_1", "SYN8_1"])
    expect_refused(
        tmp_path,
        [other],
        r"slides SYN1_1 and SYN8_1 have different shapes",
        version="v1",
        models_csv=csv,
        roots=[built["root"], str(other)],
    )


def test_slides_of_different_layer_groups(built, tmp_path):
    root = meanimage_only_copy(built, "SYN1_2", tmp_path / "root")
    path = os.path.join(root, "SYN1_2", "slide.json")
    meta = json.load(open(path))
    names = list(meta["layer_groups"])
    meta["layer_groups"] = {
        ("renamed" if i == 0 else n): v for i, (n, v) in enumerate(meta["layer_groups"].items())
    }
    assert list(meta["layer_groups"]) != names
    json.dump(meta, open(path, "w"))
    csv = write_models_csv(tmp_path / "m.csv", "v1", ["SYN1_1", "SYN1_2"])
    # SYN1_2 now exists in both roots too, so keep only the modified copy reachable for it
    roots_dir = tmp_path / "roots"
    meanimage_only_copy(built, "SYN1_1", roots_dir)
    expect_refused(
        tmp_path,
        [root],
        r"slides SYN1_1 and SYN1_2 have different layer groups",
        version="v1",
        models_csv=csv,
        roots=[str(roots_dir), root],
    )


def test_duplicate_slide_ids_across_roots(built, tmp_path):
    root = meanimage_only_copy(built, "SYN1_1", tmp_path / "root")
    expect_refused(
        tmp_path,
        [root],
        r"slide SYN1_1 is in more than one root",
        version="v1",
        models_csv=built["csv"],
        roots=[built["root"], root],
    )


@pytest.mark.parametrize("version", ["../escape", "a/b", "", "v 1", "..", ".hidden"])
def test_version_name_must_be_a_safe_file_name(built, tmp_path, version):
    csv = write_models_csv(tmp_path / "m.csv", version or "x", ["SYN1_1"])
    expect_refused(
        tmp_path, [], r"is not a safe file name", version=version, models_csv=csv, roots=[built["root"]]
    )
