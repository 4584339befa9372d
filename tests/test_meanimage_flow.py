"""The meanimage flow end to end: Prefect test server, a real Dask LocalCluster, synthetic slides.

Expected values come from the inputs (slide.json, fields.csv, the planted truth of the synthetic
data) or from the serial reference path in ``shadeflow.core.meanimage.pipeline``, never from the flow itself.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import os
import shutil
import statistics

import numpy as np
import pytest
from conftest import flow_run_artifacts, tree
from scipy import ndimage as ndi

import shadeflow
from shadeflow.core.errors import RunFailed as SlidesFailed
from shadeflow.core.io import astropath as astropath_io
from shadeflow.core.io.output_folders import is_complete
from shadeflow.core.io.slide import load_slide
from shadeflow.core.meanimage import outputs as meanimage_outputs
from shadeflow.core.meanimage.masks.combined import unpack_tissue_mask
from shadeflow.core.meanimage.outputs import read_mean_image_stack
from shadeflow.core.meanimage.pipeline import compute_mean_image, plan_slide, read_mask_file
from shadeflow.core.smoothing import flatfield_sigma, masked_smooth, relative_rms
from shadeflow.core.synth.slides import SynthConfig, read_truth_flatfield, read_truth_masks, write_cohort
from shadeflow.flows.meanimage import MeanImageParameters, meanimage
from shadeflow.infra.cluster import task_runner

pytestmark = pytest.mark.usefixtures("prefect_server")


# ----------------------------------------------------------------------------------------------
# helpers (independent of the code under test: they read the inputs directly)


def run_flow(slides: list[str], return_state: bool = False, **options):
    """The meanimage flow on a one-worker (threads-only, in-process) LocalCluster."""
    flow = meanimage.with_options(task_runner=task_runner(memory="4GiB", workers=1))
    return flow(params=MeanImageParameters(slides=slides, **options), return_state=return_state)


def leftovers(slide_dir) -> list[str]:
    """Staging or backup folders of an output beside it (``.meanimage.partial-*``, ``meanimage.old-*``)."""
    return [
        n
        for n in os.listdir(slide_dir)
        if n.startswith(".meanimage.partial-") or n.startswith("meanimage.old-")
    ]


def slide_meta(slide_dir) -> dict:
    with open(os.path.join(slide_dir, "slide.json")) as handle:
        return json.load(handle)


def field_rows(slide_dir) -> list[dict[str, str]]:
    with open(os.path.join(slide_dir, "fields.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def read_csv(path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def bulk_keys(slide_dir) -> set[str]:
    """Fields with exactly 8 overlapping neighbours (|Δcx| < w and |Δcy| < h), from the inputs."""
    w, h = slide_meta(slide_dir)["field_size_um"]
    rows = field_rows(slide_dir)
    centres = [(float(r["cx"]), float(r["cy"])) for r in rows]
    bulk = set()
    for r, (x, y) in zip(rows, centres):
        neighbours = sum(1 for (x2, y2) in centres if abs(x - x2) < w and abs(y - y2) < h) - 1
        if neighbours == 8:
            bulk.add(r["field"])
    return bulk


def acquisition_numbers(slide_dir) -> dict[str, int]:
    """AstroPath's rect_n: 1-based rank of each field by acquisition time."""
    rows = field_rows(slide_dir)
    ordered = sorted(enumerate(rows), key=lambda ir: (dt.datetime.fromisoformat(ir[1]["acquired"]), ir[0]))
    return {r["field"]: n for n, (_, r) in enumerate(ordered, start=1)}


def median_exposure_per_layer(slide_dir) -> list[float]:
    meta = slide_meta(slide_dir)
    rows = field_rows(slide_dir)
    per_layer = []
    for name, (first, last) in meta["layer_groups"].items():
        median = statistics.median(float(r[f"exposure_ms_{name}"]) for r in rows)
        per_layer += [median] * (last - first + 1)
    return per_layer


def field_file_urls(slide_dir) -> list[str]:
    return [os.path.join(slide_dir, *r["file"].split("/")) for r in field_rows(slide_dir)]


# ----------------------------------------------------------------------------------------------
# one run of the flow on two slides of the shared cohort, shared by the tests of the layout


@pytest.fixture(scope="module")
def two_slides(small_cohort, tmp_path_factory, prefect_server):
    root = tmp_path_factory.mktemp("flow") / "cohort"
    shutil.copytree(small_cohort["root"], root)
    urls = [str(root / os.path.basename(u)) for u in small_cohort["urls"][:2]]
    inputs = {u: tree(u) for u in urls}
    state = run_flow(urls, return_state=True)
    assert state.is_completed(), state.message
    return {
        "root": str(root),
        "urls": urls,
        "reports": state.result(),
        "flow_run_id": state.state_details.flow_run_id,
        "inputs": inputs,
    }


def test_two_slides_complete_and_inputs_are_unchanged(two_slides):
    reports = {r["slide_id"]: r for r in two_slides["reports"]}
    assert sorted(reports) == sorted(os.path.basename(u) for u in two_slides["urls"])
    for url in two_slides["urls"]:
        report = reports[os.path.basename(url)]
        assert report["status"] == "written"
        assert report["output"] == os.path.join(url, "meanimage")
        assert report["fields"] == len(field_rows(url))
        assert report["bulk_fields"] == len(bulk_keys(url))
        assert report["edge_fields"] == report["fields"] - report["bulk_fields"]
        assert is_complete(os.path.join(url, "meanimage"))
        assert leftovers(url) == []
        after = {k: v for k, v in tree(url).items() if not k.startswith("meanimage" + os.sep)}
        assert after == two_slides["inputs"][url]


def test_output_folder_holds_every_astropath_file(two_slides):
    for url in two_slides["urls"]:
        sid = os.path.basename(url)
        meta = slide_meta(url)
        h, w, n_layers = meta["shape"]
        out = os.path.join(url, "meanimage")
        rows = field_rows(url)
        bulk = bulk_keys(url)
        edge = [r for r in rows if r["field"] not in bulk]
        assert bulk and edge  # the premise: both kinds exist

        # images: float64 / uint64, (H, W, L) interleaved
        for name in ("mean_image", "std_err_of_mean_image", "sum_images_squared", "mask_stack"):
            assert os.path.getsize(os.path.join(out, f"{sid}-{name}.bin")) == h * w * n_layers * 8, name

        # background thresholds: one row per layer, counts/ms at the slide's median exposure
        header, table = read_csv(os.path.join(out, f"{sid}-background_thresholds.csv"))
        assert header == ["layer_n", "counts_threshold", "counts_per_ms_threshold"]
        assert [int(r["layer_n"]) for r in table] == list(range(1, n_layers + 1))
        exposure = median_exposure_per_layer(url)
        for r, et in zip(table, exposure):
            assert float(r["counts_per_ms_threshold"]) == pytest.approx(int(r["counts_threshold"]) / et)
        assert any(int(r["counts_threshold"]) > 0 for r in table)

        # per-field thresholds: one row per edge field and layer
        header, table = read_csv(os.path.join(out, f"{sid}-thresholding_data_table.csv"))
        assert header == ["rect_n", "layer_n", "counts_threshold", "counts_per_ms_threshold"]
        numbers = acquisition_numbers(url)
        expected = sorted((numbers[r["field"]], layer) for r in edge for layer in range(1, n_layers + 1))
        assert sorted((int(r["rect_n"]), int(r["layer_n"])) for r in table) == expected

        # metadata summaries: one row each, dates from the fields that were used
        for name, keys in (("thresholding", {r["field"] for r in edge}), ("stacked", bulk)):
            header, table = read_csv(os.path.join(out, f"{sid}-metadata_summary_{name}_images.csv"))
            assert header == ["slideID", "project", "cohort", "microscope_name", "mindate", "maxdate"]
            assert len(table) == 1
            row = table[0]
            assert (row["slideID"], row["project"], row["cohort"], row["microscope_name"]) == (
                sid,
                meta["project"],
                meta["cohort"],
                meta["microscope"],
            )
            times = sorted(dt.datetime.fromisoformat(r["acquired"]) for r in rows if r["field"] in keys)
            assert dt.datetime.fromisoformat(row["mindate"]) == times[0]
            assert dt.datetime.fromisoformat(row["maxdate"]) == times[-1]

        # fields used: every field once, edge fields thresholded, bulk fields stacked
        header, table = read_csv(os.path.join(out, "fields_used.csv"))
        assert header == ["slide", "file", "location", "use", "stacked_in_layers"]
        by_file = {os.path.basename(r["file"]): r for r in rows}
        assert sorted(r["file"] for r in table) == sorted(by_file)
        for r in table:
            assert r["slide"] == sid
            if by_file[r["file"]]["field"] in bulk:
                assert (r["location"], r["use"]) == ("bulk", "stacking")
            else:
                assert (r["location"], r["use"], r["stacked_in_layers"]) == ("edge", "thresholding", "[]")

        # masks: a bit-packed tissue mask for every field; a label image for every field with regions
        masks = os.path.join(out, "image_masking")
        for r in rows:
            assert os.path.getsize(os.path.join(masks, f"{r['field']}_tissue_mask.bin")) == math.ceil(
                h * w / 8
            ), r["field"]
        header, regions = read_csv(os.path.join(masks, "labelled_mask_regions.csv"))
        assert header == ["image_key", "region_index", "layers", "n_pixels", "reason_flagged"]
        assert regions, "the synthetic cohort plants folds and saturated spots"
        for key in {r["image_key"] for r in regions}:
            assert os.path.isfile(os.path.join(masks, f"{key}_full_mask.bin")), key

        for name in ("thresholding_summary", "masking_summary", "meanimage_summary"):
            with open(os.path.join(out, f"{sid}-{name}.pdf"), "rb") as handle:
                assert handle.read(5) == b"%PDF-", name
        assert os.path.isfile(os.path.join(out, f"{sid}-meanimage.zarr", "zarr.json"))


def test_manifest_records_what_made_the_output(two_slides):
    for url in two_slides["urls"]:
        out = os.path.join(url, "meanimage")
        with open(os.path.join(out, "shadeflow.json")) as handle:
            manifest = json.load(handle)
        assert manifest["kind"] == "meanimage"
        assert manifest["shadeflow_version"] == shadeflow.__version__
        assert manifest["parameters"] == MeanImageParameters(slides=[url]).recorded()
        assert sorted(manifest["inputs"]) == sorted(field_file_urls(url))
        on_disk = {}
        for d, _, files in os.walk(out):
            for f in files:
                rel = os.path.relpath(os.path.join(d, f), out).replace(os.sep, "/")
                if rel != "shadeflow.json":
                    on_disk[rel] = os.path.getsize(os.path.join(d, f))
        assert manifest["files"] == on_disk


def test_bin_files_hold_the_arrays_of_the_zarr_copy(two_slides):
    for url in two_slides["urls"]:
        sid = os.path.basename(url)
        shape = tuple(slide_meta(url)["shape"])
        out = os.path.join(url, "meanimage")
        stack, attrs = read_mean_image_stack(url)
        assert stack.shape == (shape[2], shape[0], shape[1])
        assert stack.count.any()
        expected = {
            "mean_image": (stack.mean(), "float64"),
            "std_err_of_mean_image": (stack.std_err(), "float64"),
            "sum_images_squared": (stack.sum_sq, "float64"),
            "mask_stack": (stack.count, "uint64"),
        }
        for name, (array, dtype) in expected.items():
            decoded = astropath_io.read_bin(os.path.join(out, f"{sid}-{name}.bin"), shape, dtype)
            assert np.array_equal(decoded, array), name
        assert attrs["slide"]["slide_id"] == sid


def test_dask_path_equals_the_serial_reference(two_slides, tmp_path):
    url = two_slides["urls"][0]
    sid = os.path.basename(url)
    out = os.path.join(url, "meanimage")
    reference = compute_mean_image(plan_slide(load_slide(url)), str(tmp_path / "masks"))
    stack, _ = read_mean_image_stack(url)
    assert np.array_equal(stack.sum, reference.stack.sum)
    assert np.array_equal(stack.sum_sq, reference.stack.sum_sq)
    assert np.array_equal(stack.count, reference.stack.count)
    assert np.array_equal(stack.n_images, reference.stack.n_images)

    _, table = read_csv(os.path.join(out, f"{sid}-background_thresholds.csv"))
    assert [int(r["counts_threshold"]) for r in table] == [int(t) for t in reference.thresholds.thresholds]
    _, table = read_csv(os.path.join(out, f"{sid}-thresholding_data_table.csv"))
    written = {(int(r["rect_n"]), int(r["layer_n"])): int(r["counts_threshold"]) for r in table}
    serial = {
        (f.n, layer + 1): int(row[layer])
        for f, row in zip(reference.thresholds.fields, reference.thresholds.field_thresholds)
        for layer in range(len(row))
    }
    assert written == serial

    reference_masks = tree(tmp_path / "masks")
    assert reference_masks, "the reference wrote no mask files"
    flow_masks = {
        k: v for k, v in tree(os.path.join(out, "image_masking")).items() if k != "labelled_mask_regions.csv"
    }
    assert flow_masks == reference_masks


STAGE_TASKS = ("background-thresholds-", "mask-and-stack-")


def task_runs(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def test_summary_and_progress_artifacts(two_slides):
    artifacts = flow_run_artifacts(two_slides["flow_run_id"])
    summaries = [a for a in artifacts if a.key == "meanimage-summary"]
    assert len(summaries) == 1
    markdown = summaries[0].data
    header = next(line for line in markdown.splitlines() if line.startswith("| slide |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    progress = [a for a in artifacts if a.type == "progress"]
    for url in two_slides["urls"]:
        sid = os.path.basename(url)
        bulk = bulk_keys(url)
        _, used = read_csv(os.path.join(url, "meanimage", "fields_used.csv"))
        stacked = sum(1 for r in used if r["use"] == "stacking" and r["stacked_in_layers"] != "[]")
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {sid} |"))
        cells = dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
        assert int(cells["bulk"]) == len(bulk)
        assert int(cells["stacked"]) == stacked
        assert int(cells["fields"]) == len(field_rows(url))

        # one progress artifact per slide and stage, finished: "<sid> <stage>: N/N"
        n_fields = len(field_rows(url))
        expected = {"thresholds": n_fields - len(bulk), "masks and stack": n_fields}
        for stage, total in expected.items():
            mine = [a.description for a in progress if (a.description or "").startswith(f"{sid} {stage}:")]
            assert mine == [f"{sid} {stage}: {total}/{total}"], (stage, mine)
    # every stage was announced (so the bar's total was known) before the first stage started
    starts = [r.start_time for r in task_runs(two_slides["flow_run_id"]) if r.name.startswith(STAGE_TASKS)]
    assert len(starts) == 2 * len(two_slides["urls"])
    assert max(a.created for a in progress) < min(starts)


# ----------------------------------------------------------------------------------------------
# accuracy against the planted truth (issue item 9)

ACCURACY_CONFIG = SynthConfig(slides=1, fields=80, seed=2024)


@pytest.fixture(scope="module")
def accuracy_slide(tmp_path_factory, prefect_server):
    root = str(tmp_path_factory.mktemp("accuracy"))
    (url,) = write_cohort(root, ACCURACY_CONFIG)
    run_flow([url])
    return root, url


def test_mean_image_matches_the_planted_flatfield(accuracy_slide):
    root, url = accuracy_slide
    h, w, n_layers = ACCURACY_CONFIG.shape
    stack, _ = read_mean_image_stack(url)
    truth = read_truth_flatfield(root, ACCURACY_CONFIG.shape)
    covered = stack.count > 0
    assert covered.mean() > 0.9
    smoothed = masked_smooth(stack.mean(), stack.count, flatfield_sigma(h, w))
    errors = relative_rms(smoothed, truth, where=covered)
    assert errors.shape == (n_layers,)
    assert np.all(errors <= 0.02), errors  # measured 0.72–0.99 % per layer
    # the bound has power: an image without shading is 7.2–7.6 % off the planted ~30 % fall-off
    assert np.all(relative_rms(np.ones_like(truth), truth, where=covered) > 0.05)


def _flagged_planes(path: str, shape: tuple[int, int], n_groups: int):
    """Blur flags (plane 0 labels ≥ 2) and each group's saturation flags (labels above plane 0's blur
    labels)."""
    if not os.path.exists(path):  # no flagged region in this field
        return np.zeros(shape, bool), np.zeros((n_groups, *shape), bool)
    labels = read_mask_file(path, shape, n_groups)
    plane0 = labels[..., 0]
    last_blur = max(1, int(plane0.max()))
    saturation = np.stack([labels[..., g] > last_blur for g in range(1, n_groups + 1)])
    return plane0 >= 2, saturation


def _regions_found(truth: np.ndarray, flagged: np.ndarray) -> tuple[int, int]:
    """(planted regions ≥ 50 % covered by flags, planted regions) for one truth mask."""
    labels, n = ndi.label(truth)
    found = sum(1 for i in range(1, n + 1) if flagged[labels == i].mean() >= 0.5)
    return found, n


def test_masks_find_planted_blur_and_saturation(accuracy_slide):
    root, url = accuracy_slide
    h, w, _ = ACCURACY_CONFIG.shape
    meta = slide_meta(url)
    n_groups = len(meta["layer_groups"])
    masks = os.path.join(url, "meanimage", "image_masking")
    blur = [0, 0]
    saturation = [0, 0]
    flagged_pixels = flagged_near_truth = 0
    for r in field_rows(url):
        truth = read_truth_masks(root, meta["slide_id"], r["field"], (h, w))
        blur_flags, saturation_flags = _flagged_planes(
            os.path.join(masks, f"{r['field']}_full_mask.bin"), (h, w), n_groups
        )
        found, n = _regions_found(truth["blur"], blur_flags)
        blur = [blur[0] + found, blur[1] + n]
        for g in range(n_groups):
            found, n = _regions_found(truth["saturation"][g], saturation_flags[g])
            saturation = [saturation[0] + found, saturation[1] + n]
        # precision: flags lie on (or within 5 px of) planted regions, so "flag everything" fails
        near = ndi.binary_dilation(truth["blur"], iterations=5)
        flagged_pixels += int(blur_flags.sum())
        flagged_near_truth += int((blur_flags & near).sum())
        for g in range(n_groups):
            near = ndi.binary_dilation(truth["saturation"][g], iterations=5)
            flagged_pixels += int(saturation_flags[g].sum())
            flagged_near_truth += int((saturation_flags[g] & near).sum())
    assert blur[1] >= 10 and saturation[1] >= 20, (blur, saturation)  # the premise: regions were planted
    assert blur[0] >= 0.9 * blur[1], blur  # measured: 24 of 24
    assert saturation[0] >= 0.9 * saturation[1], saturation  # measured: 75 of 75
    assert flagged_near_truth >= 0.9 * flagged_pixels  # measured: > 99.99 %


def test_background_is_kept_out_of_the_stack(accuracy_slide):
    """Background ("empty" truth pixels) of bulk fields is neither in the tissue masks nor in the stack.

    The tissue mask is AstroPath's: the field is smoothed (σ = 5 native px) and each layer closed with
    a 9-px element, then small holes are filled and the mask closed with an 18-px element. Its edge
    therefore sits a few pixels outside the tissue edge, and with the synthetic tissue's many small
    holes about a fifth of all "empty" pixels lie in that rim (measured: 20 %, almost all of them
    within 5 px of planted tissue). So "≤ 5 % of empty pixels in the mask" cannot hold as such; the
    robust statement is about background *away from tissue*: empty pixels more than 5 px (10 µm, the
    reach of the smoothing plus the layer close at this pixel size) from any planted tissue. Of those,
    ≤ 5 % may be inside the tissue masks (measured: 2.5 %; a mask of all ones gives 100 %). All empty
    pixels are bounded loosely (≤ 35 %), and planted tissue must be kept (≥ 95 %; measured 100 %).

    The mask stack is checked the same way without trusting the mask files: a pixel whose background
    lay in k of the N fields stacked in a layer may be counted at most N − k times; any count above
    that is background that entered the stack. That excess must stay ≤ 5 % of all such background
    pixels (measured: 2.1 %; stacking every pixel gives 100 %).
    """
    root, url = accuracy_slide
    h, w, n_layers = ACCURACY_CONFIG.shape
    meta = slide_meta(url)
    masks = os.path.join(url, "meanimage", "image_masking")
    bulk = bulk_keys(url)
    _, used = read_csv(os.path.join(url, "meanimage", "fields_used.csv"))
    stacked_layers = {r["file"]: json.loads(r["stacked_in_layers"]) for r in used}
    far_empty_total = far_empty_in_mask = 0
    all_empty = all_empty_in_mask = tissue_total = tissue_in_mask = 0
    far_empty_per_layer = np.zeros((n_layers, h, w), np.int64)
    for r in field_rows(url):
        if r["field"] not in bulk:
            continue
        truth = read_truth_masks(root, meta["slide_id"], r["field"], (h, w))
        with open(os.path.join(masks, f"{r['field']}_tissue_mask.bin"), "rb") as handle:
            mask = unpack_tissue_mask(handle.read(), (h, w))
        far_empty = truth["empty"] & (ndi.distance_transform_edt(~truth["tissue"]) > 5)
        far_empty_total += int(far_empty.sum())
        far_empty_in_mask += int((far_empty & mask).sum())
        all_empty += int(truth["empty"].sum())
        all_empty_in_mask += int((truth["empty"] & mask).sum())
        tissue_total += int(truth["tissue"].sum())
        tissue_in_mask += int((truth["tissue"] & mask).sum())
        for layer in stacked_layers[os.path.basename(r["file"])]:
            far_empty_per_layer[layer - 1] += far_empty
    assert far_empty_total > 10_000  # the premise: there is background in the bulk fields
    assert far_empty_in_mask <= 0.05 * far_empty_total, far_empty_in_mask / far_empty_total
    # measured 20 % (the rim above)
    assert all_empty_in_mask <= 0.35 * all_empty, all_empty_in_mask / all_empty
    assert tissue_in_mask >= 0.95 * tissue_total  # and tissue is kept (measured 100 %)

    stack, _ = read_mean_image_stack(url)
    allowed = stack.n_images[:, None, None] - far_empty_per_layer
    excess = np.clip(stack.count.astype(np.int64) - allowed, 0, None)
    assert excess.sum() <= 0.05 * far_empty_per_layer.sum(), excess.sum() / far_empty_per_layer.sum()


# ----------------------------------------------------------------------------------------------
# reruns and crashes, each on its own small slide


@pytest.fixture(scope="module")
def pristine_small_slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    (url,) = write_cohort(str(root), SynthConfig(slides=1, fields=12, shape=(128, 168, 10), seed=31))
    return url


@pytest.fixture
def small_slide(pristine_small_slide, tmp_path):
    target = tmp_path / "cohort" / os.path.basename(pristine_small_slide)
    shutil.copytree(pristine_small_slide, target)
    return str(target)


def test_rerun_skips_refuses_or_overwrites(small_slide):
    url = small_slide
    sid = os.path.basename(url)
    manifest_path = os.path.join(url, "meanimage", "shadeflow.json")
    (first,) = run_flow([url])
    assert first["status"] == "written"
    with open(manifest_path, "rb") as handle:
        manifest_bytes = handle.read()
    before = tree(url)

    # same parameters: skipped, nothing touched
    (again,) = run_flow([url])
    assert again["status"] == "skipped"
    assert again["n_images"] == json.loads(manifest_bytes)["n_images"]
    assert tree(url) == before

    # other parameters: refused, naming the slide and how to replace it
    with pytest.raises(SlidesFailed, match=rf"{sid}.*--overwrite"):
        run_flow([url], seed=1)
    assert tree(url) == before

    # overwrite: rewritten with the new parameters
    (third,) = run_flow([url], seed=1, overwrite=True)
    assert third["status"] == "written"
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    old = json.loads(manifest_bytes)
    assert manifest["parameters"]["seed"] == 1 and old["parameters"]["seed"] == 0
    assert dt.datetime.fromisoformat(manifest["created"]) >= dt.datetime.fromisoformat(old["created"])
    assert leftovers(url) == []
    inputs_after = {k: v for k, v in tree(url).items() if not k.startswith("meanimage" + os.sep)}
    assert inputs_after == {k: v for k, v in before.items() if not k.startswith("meanimage" + os.sep)}


def test_crash_while_writing_leaves_nothing_that_looks_complete(small_slide, monkeypatch):
    url = small_slide
    sid = os.path.basename(url)
    before = tree(url)

    def broken_write_stack(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(meanimage_outputs, "write_stack", broken_write_stack)
    with pytest.raises(SlidesFailed, match=rf"{sid}.*disk full \(simulated\)"):
        run_flow([url])
    assert not is_complete(os.path.join(url, "meanimage"))
    assert not os.path.exists(os.path.join(url, "meanimage"))
    assert leftovers(url) == []
    assert tree(url) == before

    monkeypatch.undo()
    (report,) = run_flow([url])
    assert report["status"] == "written"
    assert is_complete(os.path.join(url, "meanimage"))
    assert leftovers(url) == []
