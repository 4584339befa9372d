"""AstroPath sample trees read where they are (issue 13, items 1 and 6): ``sampledef.csv``, the XML
metadata and the ``.Data.dat`` fields of a tree written by ``shadeflow synth slides --layout astropath``.

Expected values come from the same cohort written in shadeflow's own layout (``slide.json`` +
``fields.csv``) and from the serial reference path, never from the code under test.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import tree, without_meanimage_reports, write_mean_image
from test_cli import clean_env, shadeflow
from typer.testing import CliRunner

from shadeflow.core.io import astropath as astropath_io
from shadeflow.core.io.astropath_tree import AstroPathSource, load_sample, select_samples
from shadeflow.core.io.output_folders import StagedOutput
from shadeflow.core.io.slide import SlideError, load_slide, read_field
from shadeflow.core.meanimage.outputs import output_url, write_meanimage_outputs
from shadeflow.core.meanimage.pipeline import MASK_DIR, MEANIMAGE_METHOD, compute_mean_image, plan_slide
from shadeflow.core.model.compare_plan import make_plan
from shadeflow.core.synth.slides import SHARDED_DIR, SynthConfig, write_cohort
from shadeflow.flows.cli import app
from shadeflow.flows.meanimage import MeanImageParameters, meanimage
from shadeflow.flows.model import applied_test, model_build
from shadeflow.flows.parameters import AppliedTestParameters, ModelBuildParameters, ModelCompareParameters
from shadeflow.infra.cluster import task_runner

CONFIG = SynthConfig(slides=2, fields=30, shape=(64, 80, 5), seed=5)
SLIDE = "SYN1_1"
MEAN_FILES = ("mean_image", "std_err_of_mean_image", "sum_images_squared", "mask_stack")


@pytest.fixture
def server_env(prefect_server, tmp_path) -> dict[str, str]:
    """Environment for a subprocess that uses this session's Prefect test server."""
    from prefect.settings import PREFECT_API_URL

    return clean_env(PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_HOME=str(tmp_path / "prefect-home"))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """The same synthetic cohort in both layouts (read-only: copy before writing into it)."""
    base = tmp_path_factory.mktemp("astropath")
    shadeflow_urls = write_cohort(str(base / "shadeflow"), CONFIG)
    write_cohort(str(base / "astropath"), CONFIG, layout="astropath")
    return {"shadeflow": shadeflow_urls, "astropath": str(base / "astropath")}


@pytest.fixture
def tree_copy(cohorts, tmp_path):
    """A private copy of the AstroPath tree: (root, shardedim3root)."""
    root = tmp_path / "ap"
    shutil.copytree(cohorts["astropath"], root)
    return str(root), str(root / SHARDED_DIR)


def source_of(root: str, sharded: str, out: str | None = None) -> AstroPathSource:
    return AstroPathSource(root, sharded, out)


def a_field(sharded: str, slide_id: str = SLIDE) -> str:
    """The key of one field of the slide (the first by name)."""
    name = sorted(n for n in os.listdir(os.path.join(sharded, slide_id)) if n.endswith(".Data.dat"))[0]
    return name[: -len(".Data.dat")]


def xml_folder(root: str, slide_id: str = SLIDE) -> str:
    return os.path.join(root, slide_id, "im3", "xml")


# ----------------------------------------------------------------------------------------------
# the tree as a slide


def test_a_sample_reads_as_the_same_slide_as_its_slide_contract_twin(cohorts):
    root = cohorts["astropath"]
    expected = load_slide(cohorts["shadeflow"][0])
    slide = load_sample(source_of(root, os.path.join(root, SHARDED_DIR)), SLIDE)

    assert slide.url == os.path.join(root, SLIDE, "im3")
    assert slide.data_url == os.path.join(root, SHARDED_DIR, SLIDE)
    assert output_url(slide.url) == os.path.join(root, SLIDE, "im3", "meanimage")  # AstroPath's place
    assert (slide.shape, slide.layer_groups, slide.dark_current) == (
        expected.shape,
        expected.layer_groups,
        expected.dark_current,
    )
    assert (slide.project, slide.cohort, slide.batch, slide.microscope) == (
        expected.project,
        expected.cohort,
        expected.batch,
        expected.microscope,
    )
    assert slide.field_size_um == pytest.approx(expected.field_size_um, rel=1e-6)
    assert {f.key for f in slide.fields} == {f.key for f in expected.fields}
    for field in slide.fields:
        twin = expected.field_by_key(field.key)
        assert field.exposure_ms == twin.exposure_ms
        assert (field.cx, field.cy) == pytest.approx((twin.cx, twin.cy), abs=0.5)  # whole µm in file names
        assert field.file == f"{field.key}.Data.dat"
    # raster order, as the microscope scans
    assert [(f.cy, f.cx) for f in slide.fields] == sorted((f.cy, f.cx) for f in slide.fields)
    field = slide.fields[7]
    assert np.array_equal(read_field(slide, field), read_field(expected, expected.field_by_key(field.key)))


def test_sampledef_selects_the_good_samples(tree_copy):
    root, _ = tree_copy
    assert [s.slide_id for s in select_samples(root)] == ["SYN1_1", "SYN1_2"]
    path = os.path.join(root, "sampledef.csv")
    with open(path) as handle:
        text = handle.read()
    with open(path, "w") as handle:
        handle.write(text.replace("2,SYN1_2,1,1,1,2,1", "2,SYN1_2,1,1,1,2,0"))
    assert [s.slide_id for s in select_samples(root)] == ["SYN1_1"]
    with pytest.raises(SlideError, match=r"^slide SYN1_2: marked isGood 0 in .*sampledef\.csv$"):
        select_samples(root, ["SYN1_2"])
    with pytest.raises(SlideError, match=r"^slide SYN9_9: not listed in .*sampledef\.csv$"):
        select_samples(root, ["SYN9_9"])


# ----------------------------------------------------------------------------------------------
# bad trees: one line naming the slide and the field or file


def one_line_error(root: str, sharded: str) -> str:
    with pytest.raises(SlideError) as caught:
        load_sample(source_of(root, sharded), SLIDE)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"slide {SLIDE}: ")
    return message


def test_the_names_and_forms_astropaths_shredding_writes_read_the_same(cohorts, tree_copy):
    """``<SlideID>.full.xml``, ``….SpectralBasisInfo.Exposure.Protocol.DarkCurrentSettings.xml`` per field
    and a ``DarkCurrent`` entry instead of ``DarkCurrentSettings``' ``Mean``: the same slide."""
    root, sharded = tree_copy
    expected = load_sample(
        source_of(cohorts["astropath"], os.path.join(cohorts["astropath"], SHARDED_DIR)), SLIDE
    )
    folder = xml_folder(root)
    full = os.path.join(folder, SLIDE + ".Full.xml")
    with open(full) as handle:
        text = handle.read()
    assert '<D name="Mean"' in text
    os.remove(full)
    with open(os.path.join(folder, SLIDE + ".full.xml"), "w") as handle:
        handle.write(text.replace('<D name="Mean"', '<D name="DarkCurrent"'))
    for name in os.listdir(folder):
        if name.endswith(".SpectralBasisInfo.Exposure.xml"):
            new = name.replace(".Exposure.xml", ".Exposure.Protocol.DarkCurrentSettings.xml")
            os.rename(os.path.join(folder, name), os.path.join(folder, new))
    slide = load_sample(source_of(root, sharded), SLIDE)
    assert (slide.shape, slide.layer_groups, slide.dark_current) == (
        expected.shape,
        expected.layer_groups,
        expected.dark_current,
    )
    assert [f.exposure_ms for f in slide.fields] == [f.exposure_ms for f in expected.fields]


@pytest.mark.parametrize("suffix", [".Parameters.xml", ".Full.xml"])
def test_a_missing_slide_xml_is_named(tree_copy, suffix):
    root, sharded = tree_copy
    os.remove(os.path.join(xml_folder(root), SLIDE + suffix))
    message = one_line_error(root, sharded)
    assert f"{SLIDE}{suffix} not found in {xml_folder(root)} or {os.path.join(sharded, SLIDE)}" in message


def test_a_field_without_its_exposure_file_is_named(tree_copy):
    root, sharded = tree_copy
    key = a_field(sharded)
    os.remove(os.path.join(xml_folder(root), key + ".SpectralBasisInfo.Exposure.xml"))
    message = one_line_error(root, sharded)
    assert f"field {key}: no exposure file {key}.SpectralBasisInfo.Exposure.xml" in message


def test_an_exposure_file_with_the_wrong_number_of_layers_is_named(tree_copy):
    root, sharded = tree_copy
    key = a_field(sharded)
    path = os.path.join(xml_folder(root), key + ".SpectralBasisInfo.Exposure.xml")
    with open(path) as handle:
        lines = handle.read().splitlines()
    with open(path, "w") as handle:  # one filter (one layer) fewer
        handle.write("\n".join(line for i, line in enumerate(lines) if i != 3) + "\n")
    message = one_line_error(root, sharded)
    assert f"field {key}: {path}: exposure times for 4 layers in 4 filters, expected 5 layers" in message


def test_a_data_file_of_the_wrong_size_is_named(tree_copy):
    root, sharded = tree_copy
    key = a_field(sharded)
    path = os.path.join(sharded, SLIDE, key + ".Data.dat")
    with open(path, "r+b") as handle:
        handle.truncate(1000)
    message = one_line_error(root, sharded)
    h, w, n = CONFIG.shape
    assert (
        f"field {key}: {key}.Data.dat has 1000 bytes, expected {h * w * n * 2} for shape {h}x{w}x{n}"
        in message
    )


def test_the_command_line_says_a_bad_tree_in_one_line_before_anything_starts(tree_copy):
    root, sharded = tree_copy
    key = a_field(sharded)
    os.remove(os.path.join(xml_folder(root), key + ".SpectralBasisInfo.Exposure.xml"))
    result = CliRunner().invoke(app, ["meanimage", "--astropath", root, "--shardedim3root", sharded])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: slide {SLIDE}: field {key}: no exposure file")

    result = CliRunner().invoke(app, ["meanimage", "--astropath", root])
    assert result.exit_code == 2
    assert "--astropath needs --shardedim3root" in result.output


# ----------------------------------------------------------------------------------------------
# meanimage from the tree


def read_outputs(folder: str, slide_id: str, shape) -> dict[str, np.ndarray]:
    dtypes = {"mask_stack": "uint64"}
    return {
        name: astropath_io.read_bin(
            os.path.join(folder, f"{slide_id}-{name}.bin"), shape, dtypes.get(name, "float64")
        )
        for name in MEAN_FILES
    }


@pytest.fixture(scope="module")
def reference(cohorts, tmp_path_factory):
    """The mean image of the slide-contract twin, by the serial reference path."""
    folder = tmp_path_factory.mktemp("reference") / SLIDE
    shutil.copytree(cohorts["shadeflow"][0], folder)
    write_mean_image(str(folder))
    return read_outputs(output_url(str(folder)), SLIDE, CONFIG.shape)


def test_meanimage_command_writes_where_astropath_does_and_equals_the_slide_contract(
    tree_copy,
    reference,
    server_env,
    tmp_path,
):
    root, sharded = tree_copy
    fields_before = tree(sharded)
    result = shadeflow(
        "meanimage",
        "--astropath",
        root,
        "--shardedim3root",
        sharded,
        SLIDE,
        "--workers",
        "1",
        "--memory",
        "4GiB",
        env=server_env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    out = os.path.join(root, SLIDE, "im3", "meanimage")
    assert f"{SLIDE}: written → {out}" in result.stdout
    assert not os.path.exists(os.path.join(root, "SYN1_2", "im3", "meanimage"))  # only the slide named
    assert tree(sharded) == fields_before  # the raw fields read in place, untouched, nothing added
    made = read_outputs(out, SLIDE, CONFIG.shape)
    for name in MEAN_FILES:
        np.testing.assert_array_equal(made[name], reference[name], err_msg=name)


@pytest.mark.usefixtures("prefect_server")
def test_out_puts_the_outputs_under_another_root(tree_copy, tmp_path):
    root, sharded = tree_copy
    other = tmp_path / "outputs"
    flow = meanimage.with_options(task_runner=task_runner(memory="4GiB", workers=1))
    params = MeanImageParameters(astropath=root, shardedim3root=sharded, out=str(other), slides=["SYN1_2"])
    (report,) = flow(params=params)
    expected = os.path.join(str(other), "SYN1_2", "im3", "meanimage")
    assert (report["slide_id"], report["output"], report["status"]) == ("SYN1_2", expected, "written")
    assert os.path.exists(os.path.join(expected, "SYN1_2-mean_image.bin"))
    assert not os.path.exists(os.path.join(root, "SYN1_2", "im3", "meanimage"))


# ----------------------------------------------------------------------------------------------
# model build, model compare and applied test from the tree


def write_reference_mean_images(slides) -> None:
    """meanimage outputs of each slide by the serial reference path, into the slide's own output folder
    (without the PDF summaries: these mean images are the input of model build and the applied test,
    which read the data files only)."""
    for slide in slides:
        staged = StagedOutput(output_url(slide.url))
        with staged, without_meanimage_reports():
            result = compute_mean_image(plan_slide(slide), staged.url(MASK_DIR))
            write_meanimage_outputs(
                staged,
                result,
                {"mask_binning": None, "skip_masking": False, "seed": 0, "method": MEANIMAGE_METHOD},
            )


@pytest.fixture(scope="module")
def with_means(cohorts, tmp_path_factory):
    """Both layouts of the cohort, each with mean images (by the reference path), in a private copy."""
    base = tmp_path_factory.mktemp("with-means")
    shutil.copytree(os.path.dirname(cohorts["shadeflow"][0]), base / "shadeflow")
    shutil.copytree(cohorts["astropath"], base / "astropath")
    root = str(base / "astropath")
    source = source_of(root, os.path.join(root, SHARDED_DIR))
    write_reference_mean_images([load_sample(source, s) for s in ("SYN1_1", "SYN1_2")])
    write_reference_mean_images([load_slide(str(base / "shadeflow" / s)) for s in ("SYN1_1", "SYN1_2")])
    models_csv = base / "models.csv"
    models_csv.write_text("version,Project,Cohort,BatchID,SlideID\nv1,1,1,1,SYN1_1\nv1,1,1,2,SYN1_2\n")
    return {
        "root": root,
        "sharded": source.shardedim3root,
        "twin": str(base / "shadeflow"),
        "csv": str(models_csv),
    }


def on_one_worker(flow):
    return flow.with_options(task_runner=task_runner(memory="4GiB", workers=1))


@pytest.mark.usefixtures("prefect_server")
def test_model_build_takes_the_versions_slides_from_sampledef(with_means, tmp_path):
    made = on_one_worker(model_build)(
        params=ModelBuildParameters(
            version="v1",
            models_csv=with_means["csv"],
            astropath=with_means["root"],
            store=str(tmp_path / "a"),
        )
    )
    twin = on_one_worker(model_build)(
        params=ModelBuildParameters(
            version="v1", models_csv=with_means["csv"], roots=[with_means["twin"]], store=str(tmp_path / "b")
        )
    )
    assert made["slides"] == twin["slides"] == ["SYN1_1", "SYN1_2"]
    files = [os.path.join(str(tmp_path / s), "flatfield", "flatfield_v1.bin") for s in ("a", "b")]
    ours, theirs = (astropath_io.read_bin(f, CONFIG.shape, "float64") for f in files)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.usefixtures("prefect_server")
def test_applied_test_reads_the_fields_from_the_sharded_root(with_means, tmp_path):
    result = on_one_worker(applied_test)(
        params=AppliedTestParameters(
            astropath=with_means["root"],
            shardedim3root=with_means["sharded"],
            out=str(tmp_path / "a"),
            seed=3,
        )
    )
    twin = on_one_worker(applied_test)(
        params=AppliedTestParameters(roots=[with_means["twin"]], out=str(tmp_path / "b"), seed=3)
    )
    assert result["slides"] == twin["slides"] == ["SYN1_1", "SYN1_2"]
    files = [os.path.join(str(tmp_path / s), "corrected_mean_image.bin") for s in ("a", "b")]
    ours, theirs = (astropath_io.read_bin(f, CONFIG.shape, "float64") for f in files)
    np.testing.assert_array_equal(ours, theirs)


def test_model_compare_finds_the_samples_and_their_mean_images(with_means):
    plan = make_plan([], pattern="SYN1_2", source=source_of(with_means["root"], None))
    assert [(r.slide_id, r.meanimage_url) for r in plan.candidates] == [
        ("SYN1_2", os.path.join(with_means["root"], "SYN1_2", "im3", "meanimage"))
    ]
    assert plan.workdir == os.path.join(with_means["root"], "meanimagecomparison")


def test_the_cohort_is_given_one_way():
    with pytest.raises(ValueError, match="give --root folders or --astropath, not both"):
        ModelBuildParameters(version="v1", models_csv="m.csv", roots=["r"], astropath="a")
    with pytest.raises(ValueError, match="--astropath needs --shardedim3root here"):
        AppliedTestParameters(astropath="a", out="o")
    with pytest.raises(ValueError, match="give at least one --root"):
        ModelCompareParameters()
