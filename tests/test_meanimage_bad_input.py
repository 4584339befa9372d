"""Bad input to the meanimage flow (issue item 10).

Each case runs the real flow on a fresh copy of a small synthetic slide and checks that it fails
with a message naming the slide (and the field or fields.csv row at fault), that nothing was
written — no ``meanimage/`` folder, no hidden ``.meanimage.partial-*`` folder, nothing beside the
slide — and that every input file is byte-identical to before the run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import tifffile
from conftest import tree

from shadeflow.core.errors import RunFailed as SlidesFailed
from shadeflow.core.synth.slides import SynthConfig, write_cohort
from shadeflow.flows.meanimage import MeanImageParameters, meanimage
from shadeflow.infra.cluster import task_runner

pytestmark = pytest.mark.usefixtures("prefect_server")

# 12 small fields (3 rows of 4, two of them bulk): most cases fail before any work, the rest run fast
CONFIG = SynthConfig(slides=1, fields=12, shape=(128, 168, 10), seed=41)


def run_flow(slides: list[str]):
    return meanimage.with_options(task_runner=task_runner(memory="4GiB", workers=1))(
        params=MeanImageParameters(slides=slides)
    )


class SlideCopy:
    """A writable copy of the pristine slide, with helpers to break it the way a user might."""

    def __init__(self, url: str):
        self.url = url
        self.slide_id = os.path.basename(url)

    @property
    def meta(self) -> dict:
        with open(os.path.join(self.url, "slide.json")) as handle:
            return json.load(handle)

    def write_meta(self, meta: dict) -> None:
        with open(os.path.join(self.url, "slide.json"), "w") as handle:
            json.dump(meta, handle, indent=2)

    def rows(self) -> tuple[list[str], list[dict[str, str]]]:
        with open(os.path.join(self.url, "fields.csv"), newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return list(reader.fieldnames or []), rows

    def write_rows(self, header: list[str], rows: list[dict[str, str]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, header, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        with open(os.path.join(self.url, "fields.csv"), "w", newline="") as handle:
            handle.write(buffer.getvalue())

    def bulk_rows(self) -> list[int]:
        """0-based indices of rows with exactly 8 overlapping neighbours (from the inputs)."""
        w, h = self.meta["field_size_um"]
        _, rows = self.rows()
        centres = [(float(r["cx"]), float(r["cy"])) for r in rows]
        return [
            i
            for i, (x, y) in enumerate(centres)
            if sum(abs(x - a) < w and abs(y - b) < h for a, b in centres) - 1 == 8
        ]

    def field_path(self, row: dict[str, str]) -> str:
        return os.path.join(self.url, *row["file"].split("/"))

    def read_raw(self, row: dict[str, str]) -> np.ndarray:
        h, w, n_layers = self.meta["shape"]
        return np.fromfile(self.field_path(row), dtype="<u2").reshape(h, w, n_layers)

    def field_to_tiff(self, index: int, layers: np.ndarray) -> dict[str, str]:
        """Replace row ``index``'s raw field by a TIFF holding ``layers`` (pages) and point fields.csv at
        it."""
        header, rows = self.rows()
        row = rows[index]
        tiff = row["file"].replace(".Data.dat", ".tif")
        tifffile.imwrite(os.path.join(self.url, *tiff.split("/")), layers)
        os.remove(self.field_path(row))
        rows[index] = {**row, "file": tiff}
        self.write_rows(header, rows)
        return rows[index]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    (url,) = write_cohort(str(root), CONFIG)
    return url


@pytest.fixture
def slide(pristine, tmp_path):
    target = tmp_path / "cohort" / os.path.basename(pristine)
    shutil.copytree(pristine, target)
    return SlideCopy(str(target))


def expect_failure(slide: SlideCopy, *patterns: str, slides: list[str] | None = None) -> str:
    """Run the flow, expect it to fail naming the slide and ``patterns``; nothing may be written or changed.

    Every problem found is reported together, so one run shows all that is wrong.
    """
    cohort = os.path.dirname(slide.url)
    before = tree(cohort)
    try:
        run_flow(slides or [slide.url])
    except SlidesFailed as exc:
        message = str(exc)
    else:
        message = None
    problems = []
    if message is None:
        problems.append("the flow did not fail")
    else:
        for pattern in (rf"\b{re.escape(slide.slide_id)}\b", *patterns):
            if not re.search(pattern, message):
                problems.append(f"the error does not name {pattern!r}: {message!r}")
    if os.path.exists(os.path.join(slide.url, "meanimage")):
        problems.append("an output folder was written")
    partials = [n for n in os.listdir(slide.url) if n.startswith(".meanimage.partial-")]
    if partials:
        problems.append(f"a staging folder was left behind: {partials}")
    after = tree(cohort)
    inside = slide.slide_id + os.sep
    outputs = (inside + "meanimage" + os.sep, inside + ".meanimage.partial-")
    added = sorted(after.keys() - before.keys())
    outside = [k for k in added if not k.startswith(inside)]
    if outside:
        problems.append(f"files were written outside the slide folder: {outside}")
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    added = [k for k in added if k.startswith(inside) and not k.startswith(outputs)]
    removed = sorted(before.keys() - after.keys())
    if changed or added or removed:
        problems.append(f"inputs changed: changed {changed[:3]}, added {added[:3]}, removed {removed[:3]}")
    assert not problems, "\n".join(problems)
    return message


def row_pattern(n: int) -> str:
    return rf"row {n}\b"


def test_missing_slide_json(slide):
    os.remove(os.path.join(slide.url, "slide.json"))
    expect_failure(slide, r"slide\.json")


def test_missing_fields_csv(slide):
    os.remove(os.path.join(slide.url, "fields.csv"))
    expect_failure(slide, r"fields\.csv")


def test_fields_csv_missing_a_column(slide):
    header, rows = slide.rows()
    header.remove("exposure_ms_dapi")
    slide.write_rows(header, rows)
    expect_failure(slide, r"fields\.csv", r"exposure_ms_dapi")


def test_field_file_of_the_wrong_size(slide):
    _, rows = slide.rows()
    index = 4
    path = slide.field_path(rows[index])
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[:-2])  # one uint16 short
    expect_failure(slide, re.escape(rows[index]["field"]), row_pattern(index + 1), str(len(data) - 2))


def test_missing_field_file(slide):
    _, rows = slide.rows()
    index = 7
    os.remove(slide.field_path(rows[index]))
    expect_failure(slide, re.escape(rows[index]["field"]), row_pattern(index + 1), "missing")


def test_tiff_field_with_the_wrong_shape(slide):
    """A bulk field (read while masking and stacking) whose TIFF lacks a layer."""
    index = slide.bulk_rows()[0]
    _, rows = slide.rows()
    layers = np.ascontiguousarray(slide.read_raw(rows[index]).transpose(2, 0, 1)[:-1])
    row = slide.field_to_tiff(index, layers)
    h, w, n_layers = slide.meta["shape"]
    expect_failure(slide, re.escape(row["field"]), rf"\({n_layers - 1}, {h}, {w}\)")


def test_tiff_field_with_the_wrong_dtype(slide):
    """An edge field (read for the background thresholds) stored as float32."""
    index = next(i for i in range(len(slide.rows()[1])) if i not in slide.bulk_rows())
    _, rows = slide.rows()
    layers = np.ascontiguousarray(slide.read_raw(rows[index]).transpose(2, 0, 1)).astype(np.float32)
    row = slide.field_to_tiff(index, layers)
    expect_failure(slide, re.escape(row["field"]), "float32")


def test_layer_groups_that_overlap(slide):
    meta = slide.meta
    names = list(meta["layer_groups"])
    first, last = meta["layer_groups"][names[1]]
    meta["layer_groups"][names[1]] = [first - 1, last]  # shares a layer with the group before
    slide.write_meta(meta)
    expect_failure(slide, re.escape(names[1]), "overlap")


def test_layer_groups_that_miss_layers(slide):
    meta = slide.meta
    names = list(meta["layer_groups"])
    n_layers = meta["shape"][2]
    del meta["layer_groups"][names[-1]]
    first = meta["layer_groups"][names[-2]][1] + 1
    slide.write_meta(meta)
    expect_failure(slide, rf"layers {first}-{n_layers}\b", "no layer group")


def test_field_path_with_dotdot(slide):
    header, rows = slide.rows()
    index = 3
    # points at a real file, from outside
    rows[index]["file"] = "../" + slide.slide_id + "/" + rows[index]["file"]
    slide.write_rows(header, rows)
    expect_failure(slide, row_pattern(index + 1), re.escape(rows[index]["field"]), "escapes the slide folder")


def test_absolute_field_path(slide):
    header, rows = slide.rows()
    index = 5
    rows[index]["file"] = slide.field_path(rows[index])  # the real file, but absolute
    slide.write_rows(header, rows)
    expect_failure(slide, row_pattern(index + 1), re.escape(rows[index]["field"]), "relative")


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_field_key_that_escapes_the_slide_folder(slide, tmp_path, kind):
    """Field keys name the mask files (``image_masking/<key>_tissue_mask.bin``), so a key must not be a path.

    ``../../../escaped`` would put mask files into the cohort folder beside the slide; an absolute key
    anywhere (here, a folder of this test outside the cohort).
    """
    elsewhere = tmp_path / "elsewhere"
    key = "../../../escaped" if kind == "dotdot" else str(elsewhere / "escaped")
    header, rows = slide.rows()
    index = 2
    rows[index]["field"] = key
    slide.write_rows(header, rows)
    try:
        expect_failure(slide, row_pattern(index + 1))
    finally:
        assert not elsewhere.exists(), (
            f"mask files were written outside the slide folder: {os.listdir(elsewhere)}"
        )


def test_slide_without_bulk_fields(slide):
    """Only the first row of the raster: no field has 8 neighbours."""
    header, rows = slide.rows()
    first_row = [r for r in rows if float(r["cy"]) == min(float(x["cy"]) for x in rows)]
    assert 1 < len(first_row) < len(rows)
    slide.write_rows(header, first_row)
    expect_failure(slide, "no bulk fields")


@pytest.mark.parametrize("value", ["zero", "dark_current"])
def test_slide_whose_fields_hold_no_tissue(slide, value):
    """Every field overwritten (same size) with a constant: all zeros, or the camera's dark current (a dark
    frame)."""
    level = 0 if value == "zero" else int(slide.meta["dark_current"])
    _, rows = slide.rows()
    for row in rows:
        path = slide.field_path(row)
        n = os.path.getsize(path) // 2
        np.full(n, level, dtype="<u2").tofile(path)
    expect_failure(slide, "no tissue")


def test_one_invalid_slide_stops_every_slide_before_any_work(pristine, tmp_path):
    """Validation runs before any work: with one slide invalid, nothing is written for the valid one."""
    cohort = tmp_path / "cohort"
    good = cohort / "SYN1_1"
    bad = cohort / "SYN1_9"
    shutil.copytree(pristine, good)
    shutil.copytree(pristine, bad)
    with open(bad / "slide.json") as handle:
        meta = json.load(handle)
    meta["slide_id"] = "SYN1_9"
    with open(bad / "slide.json", "w") as handle:
        json.dump(meta, handle)
    os.remove(bad / "fields.csv")
    message = expect_failure(SlideCopy(str(bad)), r"fields\.csv", slides=[str(good), str(bad)])
    assert "SYN1_1" not in message.replace(str(good), "")  # only the invalid slide is blamed
    assert not os.path.exists(good / "meanimage")
    assert [n for n in os.listdir(good) if n.startswith(".meanimage")] == []
