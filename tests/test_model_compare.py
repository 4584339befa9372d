"""The model-compare job: the δ/σ statistic, the incremental table, the suggested set, ``--store-as``
and the flow through Prefect on a real (threads-only) Dask LocalCluster.

Mean images come from the real pipeline (``compute_mean_image`` + ``write_meanimage_outputs``) on a
small synthetic cohort whose slides share one planted flatfield; an "incompatible" slide is a copy
of one whose mean image is multiplied by a strong different shading. Expected values come from the
inputs (slide.json, the planted shading) or from an independent numpy computation, not from the flow.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest
from conftest import flow_run_artifacts

from shadeflow.core.io import astropath as astropath_io
from shadeflow.core.io.cohort import find_slides, load_mean_image
from shadeflow.core.model import compare as C
from shadeflow.core.model.compare_plots import separators
from shadeflow.core.model.models_csv import ModelError
from shadeflow.core.stack import mean_and_std_err

SLIDES = ["SYN1_1", "SYN1_2", "SYN1_3"]
MEANIMAGE_FILES = [
    "-mean_image.bin",
    "-std_err_of_mean_image.bin",
    "-sum_images_squared.bin",
    "-mask_stack.bin",
]


# ----------------------------------------------------------------------------------------------
# the cohort: real mean images, made once per module (without Prefect)


@pytest.fixture(scope="module")
def meanimages(tmp_path_factory):
    """Three synthetic slides (one planted flatfield) with their ``meanimage/`` folders.

    Read-only: tests copy what they need with :func:`copy_slide`. The PDF reports of each mean image
    are not drawn (they take most of the time and the comparison never reads them).
    """
    from shadeflow.core.io.output_folders import StagedOutput
    from shadeflow.core.io.slide import load_slide
    from shadeflow.core.meanimage import report as meanimage_report
    from shadeflow.core.meanimage.outputs import output_url, write_meanimage_outputs
    from shadeflow.core.meanimage.pipeline import MASK_DIR, compute_mean_image, plan_slide
    from shadeflow.core.synth.slides import SynthConfig, write_cohort

    root = tmp_path_factory.mktemp("compare-cohort")
    # half the default field size: the same statistics (≈ 1.15 between slides), a quarter of the time
    urls = write_cohort(str(root), SynthConfig(slides=3, fields=24, seed=11, shape=(126, 168, 10)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(meanimage_report, "write_reports", lambda *args, **kwargs: None)
        for url in urls:
            staged = StagedOutput(output_url(url))
            result = compute_mean_image(plan_slide(load_slide(url)), staged.url(MASK_DIR))
            write_meanimage_outputs(staged, result, {}, seed=0)
    return str(root)


def copy_slide(src_root, slide_id, dst_root, new_id=None, shading=None, **meta_changes) -> str:
    """Copy what the comparison reads of a slide (slide.json and its AstroPath mean-image files).

    ``new_id`` renames the slide (folder, slide.json and file prefixes); ``shading`` (L, H, W)
    multiplies its mean image and standard error, as a different flatfield would; ``meta_changes``
    overwrite slide.json entries.
    """
    new_id = new_id or slide_id
    src = os.path.join(src_root, slide_id)
    dst = os.path.join(dst_root, new_id)
    os.makedirs(os.path.join(dst, "meanimage"), exist_ok=True)
    with open(os.path.join(src, "slide.json")) as handle:
        meta = json.load(handle)
    meta.update(slide_id=new_id, **meta_changes)
    shape = tuple(meta["shape"])
    for suffix in MEANIMAGE_FILES:
        shutil.copyfile(
            os.path.join(src, "meanimage", slide_id + suffix), os.path.join(dst, "meanimage", new_id + suffix)
        )
    with open(os.path.join(src, "meanimage", "fields_used.csv")) as handle:
        text = handle.read()
    with open(os.path.join(dst, "meanimage", "fields_used.csv"), "w") as handle:
        handle.write(text.replace(slide_id, new_id))
    if shading is not None:
        for suffix in ("-mean_image.bin", "-std_err_of_mean_image.bin"):
            url = os.path.join(dst, "meanimage", new_id + suffix)
            astropath_io.write_bin(url, astropath_io.read_bin(url, shape, "float64") * shading, "float64")
    with open(os.path.join(dst, "slide.json"), "w") as handle:
        json.dump(meta, handle)
    return dst


def gradient(shape_hwl, low=0.3, high=1.7) -> np.ndarray:
    """A strong diagonal shading, (L, H, W): ``low`` at the top-left corner to ``high`` at the
    bottom-right."""
    h, w, l = shape_hwl
    y, x = np.mgrid[0:h, 0:w]
    ramp = low + (high - low) * (x / (w - 1) + y / (h - 1)) / 2
    return np.broadcast_to(ramp, (l, h, w))


def slide_shape(root, slide_id) -> tuple[int, int, int]:
    with open(os.path.join(root, slide_id, "slide.json")) as handle:
        return tuple(json.load(handle)["shape"])


def read_table(path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def sha256(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def normalised(root, slide_id) -> C.NormalisedMeanImage:
    (ref,) = find_slides([root], slide_ids=[slide_id])
    return C.load_normalised(ref)


# ----------------------------------------------------------------------------------------------
# the statistic (no Prefect)


def _simulated_half(rng, flat, n_images, coverage=0.9):
    """Mean and standard error (the project's estimator) of ``n_images`` masked images of a flat field."""
    total = np.zeros(flat.shape)
    total_sq = np.zeros(flat.shape)
    count = np.zeros(flat.shape, np.uint32)
    for _ in range(n_images):
        image = flat * rng.gamma(25.0, 1 / 25.0, flat.shape)  # specimen: 20 % per-pixel variation around 1
        mask = rng.random(flat.shape) < coverage
        total += image * mask
        total_sq += (image * mask) ** 2
        count += mask
    mean, std_err = mean_and_std_err(total, total_sq, count)
    return C.normalise_mean_image(mean, std_err, count)


def test_statistic_is_one_for_two_halves_of_the_same_data_and_grows_with_other_shading():
    rng = np.random.default_rng(3)
    h, w = 48, 64
    y, x = np.mgrid[0:h, 0:w]
    # two layers
    flat = np.stack([1.0 - 0.3 * ((x - 30) ** 2 + (y - 20) ** 2) / 3000.0, np.full((h, w), 1.0)])
    a = _simulated_half(rng, flat, 60)
    b = _simulated_half(rng, flat, 60)
    same = C.pair_statistics(a, b)
    assert same.shape == (2,)
    assert np.all((same > 0.9) & (same < 1.1)), same  # unit variance up to the /N bias of the estimator

    other = _simulated_half(rng, flat * (0.6 + 0.8 * x / (w - 1)), 60)
    shifted = C.pair_statistics(a, other)
    assert np.all(shifted > 3 * same), (same, shifted)


def test_real_slides_sharing_a_flatfield_compare_near_one_and_a_planted_gradient_raises_it(
    meanimages, tmp_path
):
    base = C.pair_statistics(normalised(meanimages, "SYN1_1"), normalised(meanimages, "SYN1_2"))
    assert base.shape == (slide_shape(meanimages, "SYN1_1")[2],)
    assert np.all((base > 0.7) & (base < 1.3)), base

    copy_slide(
        meanimages, "SYN1_2", str(tmp_path), "SYN1_8", shading=gradient(slide_shape(meanimages, "SYN1_2"))
    )
    shaded = C.pair_statistics(normalised(meanimages, "SYN1_1"), normalised(str(tmp_path), "SYN1_8"))
    assert np.all(shaded > 1.5 * base), (base, shaded)


def test_statistic_is_symmetric_and_matches_a_direct_computation(meanimages):
    a, b = normalised(meanimages, "SYN1_1"), normalised(meanimages, "SYN1_3")
    ab, ba = C.pair_statistics(a, b), C.pair_statistics(b, a)
    np.testing.assert_array_equal(ab, ba)

    # the formula written out for layer 3, from the raw files
    (r1,) = find_slides([meanimages], slide_ids=["SYN1_1"])
    (r3,) = find_slides([meanimages], slide_ids=["SYN1_3"])
    (m1, s1, c1), (m3, s3, c3) = load_mean_image(r1), load_mean_image(r3)
    layer = 2
    w1 = np.where(s1[layer] > 0, 1 / np.where(s1[layer] > 0, s1[layer], 1) ** 2, 0)
    w3 = np.where(s3[layer] > 0, 1 / np.where(s3[layer] > 0, s3[layer], 1) ** 2, 0)
    k1, k3 = (w1 * m1[layer]).sum() / w1.sum(), (w3 * m3[layer]).sum() / w3.sum()
    d = (m1[layer] / k1 - m3[layer] / k3) / np.sqrt((s1[layer] / k1) ** 2 + (s3[layer] / k3) ** 2)
    keep = (c1[layer] > 0) & (c3[layer] > 0) & np.isfinite(d)
    assert ab[layer] == pytest.approx(d[keep].std(), rel=1e-12)


def test_pixels_covered_by_neither_slide_do_not_make_the_statistic_nan(meanimages):
    (r1,) = find_slides([meanimages], slide_ids=["SYN1_1"])
    (r2,) = find_slides([meanimages], slide_ids=["SYN1_2"])
    (m1, s1, c1), (m2, s2, c2) = load_mean_image(r1), load_mean_image(r2)
    for m, s, c in ((m1, s1, c1), (m2, s2, c2)):  # a region nothing was stacked in, in both slides
        m[:, :40, :60] = 0
        s[:, :40, :60] = 0
        c[:, :40, :60] = 0
    a, b = C.normalise_mean_image(m1.copy(), s1.copy(), c1), C.normalise_mean_image(m2.copy(), s2.copy(), c2)
    values = C.pair_statistics(a, b)
    assert np.all(np.isfinite(values)), values

    # AstroPath's filter (d != 0) keeps the 0/0 = NaN pixels of that region and gives NaN
    d = C.delta_over_sigma(a.mean[0], a.std_err[0], b.mean[0], b.std_err[0])
    assert np.isnan(d[:40, :60]).all()
    assert np.isnan(np.std(d[d != 0]))
    # ours is the std over the pixels both cover
    rest = np.ones(d.shape, bool)
    rest[:40, :60] = False
    assert np.isfinite(d[rest]).all()
    assert values[0] == pytest.approx(np.std(d[rest]), rel=1e-12)


def test_unusable_mean_images_are_named():
    ones = np.ones((2, 4, 4))
    count = np.full((2, 4, 4), 3, np.uint64)
    varied = ones + np.arange(16).reshape(4, 4) / 16
    assert C.unusable_reason(varied, ones * 0.1, count, 1) is None
    assert "below --min-images-stacked 4" in C.unusable_reason(varied, ones * 0.1, count, 4)
    assert C.unusable_reason(ones, ones * 0.1, count, 1) == "mean image is constant"
    assert C.unusable_reason(varied, ones * 0, count, 1) == "standard error is 0 everywhere"


def test_suggested_set_is_the_largest_compatible_group_with_deterministic_ties():
    ids = ["D", "C", "B", "A"]
    avg = np.full((4, 4), 3.0)
    np.fill_diagonal(avg, np.nan)

    def link(x, y, v=1.0):
        i, j = ids.index(x), ids.index(y)
        avg[i, j] = avg[j, i] = v

    link("A", "B")
    link("C", "D")  # two maximum cliques of size 2: the smaller sorted list wins, whatever the input order
    assert C.suggest_compatible_set(ids, avg) == ["A", "B"]
    assert C.suggest_compatible_set(ids[::-1], avg[::-1, ::-1]) == ["A", "B"]
    link("B", "C")
    link("B", "D")  # now B, C, D is a triangle: the largest set
    assert C.suggest_compatible_set(ids, avg) == ["B", "C", "D"]
    link("C", "D", np.nan)  # a NaN pair is not compatible
    assert C.suggest_compatible_set(ids, avg) == ["A", "B"]


def test_layer_average_ignores_nan_and_keeps_the_diagonal_blank():
    values = {(0, 1): np.array([1.0, np.nan, 1.2]), (0, 2): np.array([np.nan, np.nan, np.nan])}
    matrix = C.pair_matrix(3, 3, values)
    average = C.layer_average(matrix)
    assert average[0, 1] == pytest.approx(1.1) and average[1, 0] == pytest.approx(1.1)
    assert np.isnan(average[0, 2]) and np.isnan(average[1, 2]) and np.isnan(np.diag(average)).all()
    assert C.layer_average(matrix, 3, 3)[0, 1] == pytest.approx(1.2)


def test_table_round_trip_keeps_existing_rows_and_refuses_a_malformed_table(tmp_path):
    path = tmp_path / C.TABLE_NAME
    root = str(tmp_path)
    header = ",".join(C.TABLE_COLUMNS)
    old_rows = [  # S2 before S1 (either order is read), S1/S3 incomplete (layer 2 missing)
        f"{root},S2,{root},S1,1,1.0",
        f"{root},S2,{root},S1,2,nan",
        f"{root},S1,{root},S3,1,0.9",
    ]
    path.write_text("\n".join([header, *old_rows]) + "\n")
    table = C.ComparisonTable.read(str(path))
    s1, s2, s3 = (root, "S1"), (root, "S2"), (root, "S3")
    assert table.slides() == [s1, s2, s3]
    values = table.values(s1, s2, 2)
    assert values[0] == 1.0 and np.isnan(values[1])
    assert table.values(s1, s3, 2) is None  # incomplete: to be computed again
    table.set(s3, s1, [1.1, 1.2])
    lines = table.text().splitlines()
    assert lines == [header, *old_rows[:2], f"{root},S1,{root},S3,1,1.1", f"{root},S1,{root},S3,2,1.2"]
    assert len(table) == 4

    path.write_text("slide,value\nS1,1\n")
    with pytest.raises(ModelError, match="missing column"):
        C.ComparisonTable.read(str(path))
    path.write_text(f"{header}\n{root},S1,{root},S2,one,1.0\n")
    with pytest.raises(ModelError, match="row 1: layer_n and delta_over_sigma_std_dev must be numbers"):
        C.ComparisonTable.read(str(path))


def test_separators_mark_project_cohort_and_batch_changes():
    assert separators([("1", "1", "1"), ("1", "1", "1"), ("1", "2", "1"), ("2", "2", "1")]) == [
        (1.5, "cohort"),
        (2.5, "project"),
    ]


def test_cache_loads_each_key_once_and_evicts_the_oldest():
    cache = C.LRUCache(2)
    loads = []

    def loader(key):
        return lambda: loads.append(key) or key

    for key in ["a", "b", "a", "c", "a", "b"]:
        assert cache.get(key, loader(key)) == key
    assert loads == ["a", "b", "c", "b"]  # "b" was evicted by "c" (least recently used), "a" stayed
    assert len(cache) == 2


# ----------------------------------------------------------------------------------------------
# the flow (Prefect test server, one-worker LocalCluster)


def run_compare(return_state=False, **params):
    from shadeflow.flows.model_compare import ModelCompareParameters, model_compare
    from shadeflow.infra.cluster import task_runner

    flow = model_compare.with_options(task_runner=task_runner(memory="4GiB", workers=1))
    return flow(params=ModelCompareParameters(**params), return_state=return_state)


def flow_artifacts(flow_run_id) -> dict:
    return {a.key: a for a in flow_run_artifacts(flow_run_id)}


@pytest.fixture
def four_slides(meanimages, tmp_path):
    """The three slides plus ``SYN1_9``: SYN1_1's mean image under a strong different shading."""
    root = tmp_path / "root"
    for sid in SLIDES:
        copy_slide(meanimages, sid, str(root))
    copy_slide(
        meanimages,
        "SYN1_1",
        str(root),
        "SYN1_9",
        shading=gradient(slide_shape(meanimages, "SYN1_1")),
        batch="9",
    )
    return str(root)


@pytest.mark.usefixtures("prefect_server")
def test_flow_compares_plots_suggests_and_publishes(four_slides, tmp_path):
    workdir = tmp_path / "work"
    state = run_compare(
        return_state=True, roots=[four_slides], workdir=str(workdir), band_low=0.7, band_high=1.3
    )
    assert state.is_completed(), state.message
    result = state.result()
    ids = ["SYN1_1", "SYN1_2", "SYN1_3", "SYN1_9"]
    assert result["slides"] == ids  # Project, Cohort, Batch order (batches 1, 2, 3, 9)
    assert result["pairs_computed"] == 6 and result["pairs_reused"] == 0
    assert result["suggested"] == ["SYN1_1", "SYN1_2", "SYN1_3"]
    # a --slides for the set
    assert [s for s in ids if re.match(result["suggested_regex"], s)] == result["suggested"]

    header, rows = read_table(workdir / C.TABLE_NAME)
    assert header == list(C.TABLE_COLUMNS)
    n_layers = slide_shape(four_slides, "SYN1_1")[2]
    assert len(rows) == 6 * n_layers
    pairs = {frozenset((r["slide_ID_1"], r["slide_ID_2"])) for r in rows}
    assert len(pairs) == 6 and all(
        r["root_dir_1"] == four_slides and r["root_dir_2"] == four_slides for r in rows
    )
    values = {
        (frozenset((r["slide_ID_1"], r["slide_ID_2"])), int(r["layer_n"])): float(
            r["delta_over_sigma_std_dev"]
        )
        for r in rows
    }
    assert sorted({layer for _, layer in values}) == list(range(1, n_layers + 1))

    # the table holds the statistic of the slides' files (checked for one pair against the core function)
    expected = C.pair_statistics(normalised(four_slides, "SYN1_2"), normalised(four_slides, "SYN1_9"))
    got = [values[(frozenset(("SYN1_2", "SYN1_9")), layer)] for layer in range(1, n_layers + 1)]
    np.testing.assert_allclose(got, expected, rtol=1e-12)

    # the shaded slide is out of the band with everyone; the three sharing a flatfield are in it
    average = result["average"]
    for a in ids:
        assert average[a][a] is None
        for b in ids:
            if a != b:
                assert average[a][b] == pytest.approx(
                    np.mean([values[(frozenset((a, b)), l)] for l in range(1, n_layers + 1)])
                )
                assert average[a][b] == average[b][a]
                assert (0.7 <= average[a][b] <= 1.3) == ("SYN1_9" not in (a, b)), (a, b, average[a][b])

    # plots: one PNG for the average and one per layer group, and the PDF with all of them
    with open(four_slides + "/SYN1_1/slide.json") as handle:
        groups = list(json.load(handle)["layer_groups"])
    names = sorted(os.path.basename(p) for p in result["plots"])
    assert names == sorted(
        ["meanimagecomparison_average.png"] + [f"meanimagecomparison_{g}.png" for g in groups]
    )
    import matplotlib.image

    for path in result["plots"]:
        with open(path, "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) > 200
    pdf = (workdir / "meanimagecomparison.pdf").read_bytes()
    assert pdf.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 1 + len(groups)
    summary = json.loads((workdir / "meanimagecomparison.json").read_text())
    assert summary["suggested"] == result["suggested"] and summary["parameters"]["band_low"] == 0.7

    # artifacts: the matrix (one row per slide) and the markdown summary
    artifacts = flow_artifacts(state.state_details.flow_run_id)
    matrix = artifacts["model-compare-matrix"]
    data = json.loads(matrix.data) if isinstance(matrix.data, str) else matrix.data
    assert [row["slide"] for row in data] == ids
    for row in data:
        assert row[row["slide"]] is None
        for b in ids:
            if b != row["slide"]:
                assert row[b] == pytest.approx(average[row["slide"]][b], abs=5e-4)
    markdown = artifacts["model-compare-summary"].data
    assert (
        "SYN1_1, SYN1_2, SYN1_3" in markdown
        and "SYN1_9" in markdown
        and str(workdir / C.TABLE_NAME) in markdown
    )
    assert "model-compare-pairs" in artifacts  # the progress artifact the CLI's bar follows


@pytest.mark.usefixtures("prefect_server")
def test_second_run_reuses_table_rows_and_includes_table_slides(meanimages, tmp_path):
    root_a, root_b, workdir = tmp_path / "a", tmp_path / "b", tmp_path / "work"
    copy_slide(meanimages, "SYN1_1", str(root_a))
    copy_slide(meanimages, "SYN1_2", str(root_a))
    copy_slide(meanimages, "SYN1_3", str(root_b))
    first = run_compare(roots=[str(root_a)], workdir=str(workdir))
    assert first["pairs_computed"] == 1 and first["slides"] == ["SYN1_1", "SYN1_2"]

    # mark the stored pair: if it were recomputed, the mark would be gone
    path = workdir / C.TABLE_NAME
    header, rows = read_table(path)
    assert len(rows) == slide_shape(meanimages, "SYN1_1")[2]
    rows[0]["delta_over_sigma_std_dev"] = "0.123456"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    before = path.read_text().splitlines()

    # only root b is given: SYN1_1 and SYN1_2 come from the table (AstroPath includes them)
    second = run_compare(roots=[str(root_b)], workdir=str(workdir))
    assert second["slides"] == ["SYN1_1", "SYN1_2", "SYN1_3"]
    assert second["pairs_computed"] == 2 and second["pairs_reused"] == 1
    after = path.read_text().splitlines()
    assert after[: len(before)] == before  # old rows kept verbatim, new ones appended
    assert len(after) == len(before) + 2 * len(rows)
    new_pairs = {frozenset((r["slide_ID_1"], r["slide_ID_2"])) for r in read_table(path)[1][len(rows) :]}
    assert new_pairs == {frozenset(("SYN1_1", "SYN1_3")), frozenset(("SYN1_2", "SYN1_3"))}
    # the marked layer-1 value went into the averages: the stored row was used, not recomputed
    first_group = next(iter(second["groups"]))
    assert second["groups"][first_group]["SYN1_1"]["SYN1_2"] != pytest.approx(
        first["groups"][first_group]["SYN1_1"]["SYN1_2"]
    )

    # a regex limits the table slides too
    third = run_compare(roots=[str(root_b)], workdir=str(workdir), slides="SYN1_[23]")
    assert (
        third["slides"] == ["SYN1_2", "SYN1_3"]
        and third["pairs_computed"] == 0
        and third["pairs_reused"] == 1
    )


@pytest.mark.usefixtures("prefect_server")
def test_store_as_appends_the_compared_slides_and_refuses_an_existing_version(meanimages, tmp_path, capsys):
    from shadeflow.flows.model_compare import compare_command

    root = tmp_path / "root"
    for sid in SLIDES:
        copy_slide(meanimages, sid, str(root))
    empty = root / "SYN1_5"  # a slide without a mean image: skipped, not stored
    empty.mkdir()
    shutil.copyfile(root / "SYN1_1" / "slide.json", empty / "slide.json")
    meta = json.loads((empty / "slide.json").read_text())
    meta["slide_id"] = "SYN1_5"
    (empty / "slide.json").write_text(json.dumps(meta))
    models = tmp_path / "AstroPathFlatfieldModels.csv"
    models.write_text("version,Project,Cohort,BatchID,SlideID\nold,1,1,1,OTHER_1\n")

    compare_command(
        roots=[str(root)],
        slides=None,
        store_as="v2",
        models_csv=str(models),
        workdir=str(tmp_path / "work"),
        band_low=0.7,
        band_high=1.3,
        min_images_stacked=1,
    )
    out = capsys.readouterr()
    assert (
        "skipped SYN1_5" in out.out
        and "stored as version v2" in out.out
        and "SYN1_1, SYN1_2, SYN1_3" in out.out
    )
    lines = models.read_text().splitlines()
    assert lines[:2] == ["version,Project,Cohort,BatchID,SlideID", "old,1,1,1,OTHER_1"]
    expected = []
    for sid in SLIDES:
        m = json.loads((root / sid / "slide.json").read_text())
        expected.append(f"v2,{m['project']},{m['cohort']},{m['batch']},{sid}")
    assert lines[2:] == expected

    digest = sha256(models)
    refused_dir = tmp_path / "work-refused"
    with pytest.raises(ModelError, match="already has version 'v2'"):
        compare_command(
            roots=[str(root)],
            slides=None,
            store_as="v2",
            models_csv=str(models),
            workdir=str(refused_dir),
            band_low=0.85,
            band_high=1.15,
            min_images_stacked=1,
        )
    assert sha256(models) == digest and not refused_dir.exists()

    with pytest.raises(ModelError, match="already has version 'old'"):
        run_compare(roots=[str(root)], workdir=str(refused_dir), store_as="old", models_csv=str(models))
    assert sha256(models) == digest and not refused_dir.exists()


def test_store_as_needs_models_csv_and_a_safe_name(tmp_path, capsys):
    from pydantic import ValidationError

    from shadeflow.flows.model_compare import ModelCompareParameters, compare_command

    with pytest.raises(ValidationError, match="--store-as needs --models-csv"):
        ModelCompareParameters(roots=[str(tmp_path)], store_as="v1")
    with pytest.raises(ValidationError, match="--models-csv needs --store-as"):
        ModelCompareParameters(roots=[str(tmp_path)], models_csv=str(tmp_path / "m.csv"))
    with pytest.raises(ValidationError, match="not a safe file name"):
        ModelCompareParameters(roots=[str(tmp_path)], store_as="../v1", models_csv=str(tmp_path / "m.csv"))
    with pytest.raises(ValidationError, match="low end must be below"):
        ModelCompareParameters(roots=[str(tmp_path)], band_low=1.2, band_high=1.1)
    with pytest.raises(ValueError, match="not a safe file name"):
        compare_command(
            roots=[str(tmp_path)],
            slides=None,
            store_as="a/b",
            models_csv=str(tmp_path / "m.csv"),
            workdir=None,
            band_low=0.85,
            band_high=1.15,
            min_images_stacked=1,
        )
    with pytest.raises(ValueError, match="--store-as needs --models-csv"):
        compare_command(
            roots=[str(tmp_path)],
            slides=None,
            store_as="v1",
            models_csv=None,
            workdir=None,
            band_low=0.85,
            band_high=1.15,
            min_images_stacked=1,
        )
    # the same checks hold without pydantic (the flow's tasks repeat them)
    from shadeflow.tasks.model_compare import make_plan

    with pytest.raises(ModelError, match="not a safe file name"):
        make_plan([str(tmp_path)], store_as="..", models_csv=str(tmp_path / "m.csv"))
    with pytest.raises(ModelError, match="--store-as needs --models-csv"):
        make_plan([str(tmp_path)], store_as="v1")
    assert list(tmp_path.iterdir()) == []


def _bad_cohort(kind, meanimages, root):
    """A root holding slides that must be refused, and the error expected."""
    if kind == "no-match":
        for sid in SLIDES:
            copy_slide(meanimages, sid, root)
        return {"slides": "XYZ"}, r"no slide under .* matches --slides 'XYZ'"
    if kind == "one-usable":
        copy_slide(meanimages, "SYN1_1", root)
        copy_slide(meanimages, "SYN1_2", root)
        os.remove(os.path.join(root, "SYN1_2", "meanimage", "SYN1_2-mask_stack.bin"))
        return (
            {},
            r"need at least 2 usable slides to compare, found 1 \(SYN1_1\); skipped SYN1_2: .*missing "
            r"SYN1_2-mask_stack.bin",
        )
    if kind == "min-images":
        copy_slide(meanimages, "SYN1_1", root)
        copy_slide(meanimages, "SYN1_2", root)
        return (
            {"min_images_stacked": 1000},
            r"found 0 \(none\); skipped SYN1_1: fewest images stacked in a pixel is \d+, below "
            r"--min-images-stacked 1000",
        )
    if kind == "layer-groups":
        copy_slide(meanimages, "SYN1_1", root)
        with open(os.path.join(meanimages, "SYN1_2", "slide.json")) as handle:
            groups = json.load(handle)["layer_groups"]
        renamed = {("other" if i == 0 else name): bounds for i, (name, bounds) in enumerate(groups.items())}
        copy_slide(meanimages, "SYN1_2", root, layer_groups=renamed)
        return {}, "slides SYN1_1 and SYN1_2 have different layer groups"
    if kind == "shape":
        copy_slide(meanimages, "SYN1_1", root)
        # a real mean image of another field size: SYN1_2's, cropped, with its files rewritten to match
        dst = copy_slide(meanimages, "SYN1_2", root)
        h, w, l = slide_shape(meanimages, "SYN1_2")
        for suffix, dtype in zip(MEANIMAGE_FILES, ("float64", "float64", "float64", "uint64")):
            url = os.path.join(dst, "meanimage", "SYN1_2" + suffix)
            astropath_io.write_bin(
                url, astropath_io.read_bin(url, (h, w, l), dtype)[:, : h // 2, : w // 2], dtype
            )
        meta = json.load(open(os.path.join(dst, "slide.json")))
        meta["shape"] = [h // 2, w // 2, l]
        json.dump(meta, open(os.path.join(dst, "slide.json"), "w"))
        return {}, r"slides SYN1_1 and SYN1_2 have different shapes"
    raise AssertionError(kind)


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("kind", ["no-match", "one-usable", "min-images", "layer-groups", "shape"])
def test_bad_input_is_refused_and_nothing_is_written(kind, meanimages, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    params, message = _bad_cohort(kind, meanimages, str(root))
    models = tmp_path / "models.csv"
    models.write_text("version,Project,Cohort,BatchID,SlideID\n")
    before = {p: sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}
    with pytest.raises(ModelError, match=message):
        run_compare(roots=[str(root)], store_as="new", models_csv=str(models), **params)
    assert not (root / C.WORKDIR_NAME).exists()
    assert models.read_text() == "version,Project,Cohort,BatchID,SlideID\n"
    assert {p: sha256(p) for p in sorted(root.rglob("*")) if p.is_file()} == before


@pytest.mark.usefixtures("prefect_server")
def test_flow_on_s3_reads_slides_and_keeps_its_table_there(meanimages, tmp_path, s3_bucket):
    from shadeflow.core.io import storage

    local = tmp_path / "root"
    for sid in SLIDES[:2]:
        copy_slide(meanimages, sid, str(local))
    root = f"s3://{s3_bucket}/cohort"
    for path in local.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{root}/{path.relative_to(local).as_posix()}", path.read_bytes())

    first = run_compare(roots=[root])
    workdir = f"{root}/{C.WORKDIR_NAME}"
    assert first["workdir"] == workdir and first["pairs_computed"] == 1
    header, *rows = storage.read_text(f"{workdir}/{C.TABLE_NAME}").splitlines()
    assert header == ",".join(C.TABLE_COLUMNS)
    assert len(rows) == slide_shape(meanimages, "SYN1_1")[2] and all(
        r.startswith(f"{root},SYN1_1,{root},SYN1_2,") for r in rows
    )
    assert storage.read_bytes(f"{workdir}/meanimagecomparison.pdf").startswith(b"%PDF")
    assert storage.read_bytes(f"{workdir}/meanimagecomparison_average.png").startswith(b"\x89PNG")

    second = run_compare(roots=[root], slides="SYN1_")
    assert (
        second["pairs_computed"] == 0
        and second["pairs_reused"] == 1
        and second["average"] == first["average"]
    )
