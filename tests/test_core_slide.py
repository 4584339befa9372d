"""The slide contract: loading a valid slide, reading fields (.dat and TIFF), and rejecting bad input.

Every bad input must raise :class:`SlideError` naming the slide (and the field or ``fields.csv`` row
at fault) and leave the slide folder byte-for-byte as it was.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from shadeflow.core.io.slide import SlideError, load_slide, read_field
from shadeflow.core.synth.slides import SynthConfig, write_cohort

SLIDE_ID = "SYN1_1"


@pytest.fixture(scope="module")
def source_slide(tmp_path_factory) -> Path:
    """A synthetic slide of 12 fields, shared read-only by this module's tests."""
    root = tmp_path_factory.mktemp("slide_source")
    (url,) = write_cohort(str(root), SynthConfig(slides=1, fields=12, seed=1))
    return Path(url)


@pytest.fixture
def slide_dir(source_slide, tmp_path) -> Path:
    """A private, writable copy of the slide (the folder keeps the slide's name)."""
    target = tmp_path / SLIDE_ID
    shutil.copytree(source_slide, target)
    return target


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _read_csv(folder: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(folder / "fields.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def _write_csv(folder: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    with open(folder / "fields.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _edit_csv_cell(folder: Path, row_index: int, column: str, value: str) -> str:
    """Set one cell (``row_index`` 0-based among data rows); returns that row's field key."""
    header, rows = _read_csv(folder)
    rows[row_index][column] = value
    _write_csv(folder, header, rows)
    return rows[row_index]["field"]


def _edit_json(folder: Path, **changes) -> None:
    meta = json.loads((folder / "slide.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value
    (folder / "slide.json").write_text(json.dumps(meta))


def _assert_rejected(folder: Path, *expected: str, action=None) -> SlideError:
    """``action`` (default: load the slide) raises SlideError naming the slide and ``expected``; no file
    changes."""
    before = _snapshot(folder)
    with pytest.raises(SlideError) as info:
        (action or (lambda: load_slide(str(folder))))()
    message = str(info.value)
    for text in (SLIDE_ID, *expected):
        assert text in message, f"{text!r} not in {message!r}"
    assert _snapshot(folder) == before
    return info.value


# --- valid slides -------------------------------------------------------------------------------


def test_valid_slide_loads(source_slide):
    slide = load_slide(str(source_slide))
    assert slide.slide_id == SLIDE_ID
    assert slide.shape == (251, 336, 10)
    assert slide.dtype == "uint16"
    assert len(slide.fields) == 12
    assert [g.name for g in slide.layer_groups] == ["dapi", "fitc", "cy3", "texasred", "cy5"]
    assert slide.layer_groups[0].first == 1 and slide.layer_groups[-1].last == 10
    assert sorted(f.n for f in slide.fields) == list(range(1, 13))
    assert slide.field_size_um is not None
    assert slide.exposure_per_layer(slide.fields[0]).shape == (10,)


def test_fields_are_numbered_by_acquisition_time(slide_dir):
    header, rows = _read_csv(slide_dir)
    random.Random(4).shuffle(rows)
    _write_csv(slide_dir, header, rows)
    slide = load_slide(str(slide_dir))
    by_time = sorted(rows, key=lambda r: r["acquired"])  # same offsets: ISO strings sort by time
    assert [f.key for f in sorted(slide.fields, key=lambda f: f.n)] == [r["field"] for r in by_time]
    assert [f.n for f in slide.fields] == list(range(1, 13))
    acquired = [f.acquired for f in slide.fields]
    assert acquired == sorted(acquired)
    # each field remembers its data row in the (shuffled) fields.csv
    for field in slide.fields:
        assert rows[field.row - 1]["field"] == field.key


def _raw_layers(slide, field) -> np.ndarray:
    h, w, l = slide.shape
    raw = np.fromfile(os.path.join(slide.url, field.file), dtype="<u2").reshape(h, w, l)
    return raw.transpose(2, 0, 1)


def test_read_field_is_the_interleaved_file_transposed(source_slide):
    slide = load_slide(str(source_slide))
    for field in slide.fields[:3]:
        image = read_field(slide, field)
        assert image.shape == (10, 251, 336) and image.dtype == np.uint16
        np.testing.assert_array_equal(image, _raw_layers(slide, field))


def test_read_field_with_reused_buffers_gives_the_same_values(source_slide):
    slide = load_slide(str(source_slide))
    first = read_field(slide, slide.fields[0], reuse_buffers=True).copy()
    second = read_field(slide, slide.fields[1], reuse_buffers=True).copy()
    np.testing.assert_array_equal(first, read_field(slide, slide.fields[0]))
    np.testing.assert_array_equal(second, read_field(slide, slide.fields[1]))
    assert not np.array_equal(first, second)


def test_tiff_fields_read_identically(slide_dir):
    slide = load_slide(str(slide_dir))
    expected = {f.key: read_field(slide, f) for f in slide.fields[:2]}
    header, rows = _read_csv(slide_dir)
    for row in rows[:2]:
        tiff = row["file"].replace(".Data.dat", ".tif")
        tifffile.imwrite(slide_dir / tiff, expected[row["field"]])
        row["file"] = tiff
    _write_csv(slide_dir, header, rows)
    tiff_slide = load_slide(str(slide_dir))
    for key, image in expected.items():
        field = tiff_slide.field_by_key(key)
        assert field.file.endswith(".tif")
        np.testing.assert_array_equal(read_field(tiff_slide, field), image)


# --- bad input ----------------------------------------------------------------------------------


def test_missing_slide_json(slide_dir):
    (slide_dir / "slide.json").unlink()
    _assert_rejected(slide_dir, "slide.json")


def test_missing_fields_csv(slide_dir):
    (slide_dir / "fields.csv").unlink()
    _assert_rejected(slide_dir, "fields.csv")


@pytest.mark.parametrize("key", ["dark_current", "layer_groups", "shape"])
def test_slide_json_missing_key(slide_dir, key):
    _edit_json(slide_dir, **{key: None})
    _assert_rejected(slide_dir, key)


@pytest.mark.parametrize("column", ["exposure_ms_cy3", "cx", "acquired"])
def test_fields_csv_missing_column(slide_dir, column):
    header, rows = _read_csv(slide_dir)
    header.remove(column)
    for row in rows:
        del row[column]
    _write_csv(slide_dir, header, rows)
    _assert_rejected(slide_dir, column)


def test_dat_field_of_wrong_size(slide_dir):
    header, rows = _read_csv(slide_dir)
    path = slide_dir / rows[2]["file"]
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-2])
    _assert_rejected(slide_dir, rows[2]["field"], "row 3", str(size - 2), str(size))


def test_dat_field_of_wrong_size_when_read_without_listing(slide_dir):
    header, rows = _read_csv(slide_dir)
    path = slide_dir / rows[4]["file"]
    size = path.stat().st_size
    path.write_bytes(path.read_bytes() + b"\0\0")
    slide = load_slide(str(slide_dir), check_files=False)
    field = slide.field_by_key(rows[4]["field"])
    _assert_rejected(
        slide_dir, rows[4]["field"], str(size + 2), str(size), action=lambda: read_field(slide, field)
    )


def test_missing_field_file(slide_dir):
    header, rows = _read_csv(slide_dir)
    (slide_dir / rows[4]["file"]).unlink()
    _assert_rejected(slide_dir, rows[4]["field"], "row 5", rows[4]["file"])


def _tiff_slide(slide_dir: Path, image: np.ndarray, row: int = 0):
    """The slide with the field of fields.csv's ``row`` replaced by a TIFF of ``image``."""
    header, rows = _read_csv(slide_dir)
    tiff = rows[row]["file"].replace(".Data.dat", ".tif")
    tifffile.imwrite(slide_dir / tiff, image)
    rows[row]["file"] = tiff
    _write_csv(slide_dir, header, rows)
    slide = load_slide(str(slide_dir))
    return slide, slide.field_by_key(rows[row]["field"])


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 251, 335), np.uint16),
        np.zeros((9, 251, 336), np.uint16),
        np.zeros((10, 251, 336), np.float32),
        np.zeros((10, 251, 336), np.uint8),
    ],
    ids=["width", "layers", "float32", "uint8"],
)
def test_tiff_field_of_wrong_shape_or_dtype(slide_dir, image):
    slide, field = _tiff_slide(slide_dir, image)
    _assert_rejected(slide_dir, field.key, "(10, 251, 336)", action=lambda: read_field(slide, field))


def test_unreadable_tiff(slide_dir):
    slide, field = _tiff_slide(slide_dir, np.zeros((10, 251, 336), np.uint16))
    (slide_dir / field.file).write_bytes(b"not a tiff at all")
    _assert_rejected(slide_dir, field.key, action=lambda: read_field(slide, field))


def test_overlapping_layer_groups(slide_dir):
    _edit_json(
        slide_dir,
        layer_groups={"dapi": [1, 3], "fitc": [3, 5], "cy3": [6, 7], "texasred": [8, 9], "cy5": [10, 10]},
    )
    _assert_rejected(slide_dir, "fitc", "overlap")


@pytest.mark.parametrize(
    "groups, missing",
    [
        ({"dapi": [1, 3], "fitc": [4, 5], "cy3": [6, 7], "texasred": [8, 9]}, "10"),
        ({"dapi": [1, 3], "fitc": [5, 5], "cy3": [6, 7], "texasred": [8, 9], "cy5": [10, 10]}, "4"),
        ({"dapi": [2, 3], "fitc": [4, 5], "cy3": [6, 7], "texasred": [8, 9], "cy5": [10, 10]}, "1"),
    ],
    ids=["end", "middle", "start"],
)
def test_layer_groups_that_miss_layers(slide_dir, groups, missing):
    _edit_json(slide_dir, layer_groups=groups)
    error = _assert_rejected(slide_dir, "no layer group")
    assert f"layers {missing}-" in str(error)


def test_layer_group_outside_the_layers(slide_dir):
    _edit_json(
        slide_dir,
        layer_groups={"dapi": [1, 3], "fitc": [4, 5], "cy3": [6, 7], "texasred": [8, 9], "cy5": [10, 11]},
    )
    _assert_rejected(slide_dir, "cy5", "1..10")


@pytest.mark.parametrize(
    "path",
    [
        "../x.dat",
        "fields/../../x.dat",
        "/etc/passwd",
        "/abs/x.Data.dat",
        "C:\\x.dat",
        "c:/data/x.dat",
        "s3://bucket/x.dat",
    ],
)
def test_field_paths_must_stay_in_the_slide_folder(slide_dir, path):
    key = _edit_csv_cell(slide_dir, 1, "file", path)
    _assert_rejected(slide_dir, key, "row 2", "file path", path.replace("\\", "/").rsplit("/", 1)[-1])


def test_slide_id_must_match_folder_name(slide_dir):
    _edit_json(slide_dir, slide_id="OTHER_SLIDE")
    _assert_rejected(slide_dir, "OTHER_SLIDE", "folder")


@pytest.mark.parametrize("column, value", [("cx", "abc"), ("cy", ""), ("cx", "nan")])
def test_non_numeric_coordinates(slide_dir, column, value):
    key = _edit_csv_cell(slide_dir, 3, column, value)
    _assert_rejected(slide_dir, key, "row 4", column)


@pytest.mark.parametrize("value", ["0", "-5", "inf", "fast"])
def test_non_positive_exposure_time(slide_dir, value):
    key = _edit_csv_cell(slide_dir, 5, "exposure_ms_fitc", value)
    _assert_rejected(slide_dir, key, "row 6", "exposure_ms_fitc")


def test_bad_acquisition_time(slide_dir):
    key = _edit_csv_cell(slide_dir, 6, "acquired", "yesterday")
    _assert_rejected(slide_dir, key, "row 7", "yesterday")


def test_duplicate_field_keys(slide_dir):
    header, rows = _read_csv(slide_dir)
    duplicate = dict(rows[7], file="fields/other.Data.dat")
    _write_csv(slide_dir, header, rows + [duplicate])
    _assert_rejected(slide_dir, rows[7]["field"], f"row {len(rows) + 1}")


def test_duplicate_field_files(slide_dir):
    header, rows = _read_csv(slide_dir)
    rows[3]["file"] = rows[2]["file"]
    _write_csv(slide_dir, header, rows)
    _assert_rejected(slide_dir, rows[2]["file"])


@pytest.mark.parametrize("dtype", ["float32", "uint8", "int16"])
def test_unsupported_dtype(slide_dir, dtype):
    _edit_json(slide_dir, dtype=dtype)
    _assert_rejected(slide_dir, dtype, "uint16")


@pytest.mark.parametrize("shape", [[251, 336], [251, 336, 0], [251.0, 336, 10], "251x336x10"])
def test_bad_shape(slide_dir, shape):
    _edit_json(slide_dir, shape=shape)
    _assert_rejected(slide_dir, "shape")


def test_invalid_json(slide_dir):
    (slide_dir / "slide.json").write_text("{not json")
    _assert_rejected(slide_dir, "slide.json")


def test_no_fields(slide_dir):
    header, _ = _read_csv(slide_dir)
    _write_csv(slide_dir, header, [])
    _assert_rejected(slide_dir, "no fields")


def test_read_field_of_some_layers_is_those_layers_of_the_whole(slide_dir):
    slide = load_slide(str(slide_dir))
    field = slide.fields[2]
    whole = read_field(slide, field)
    chosen = [7, 0, 9, 3]
    some = read_field(slide, field, layers=chosen)
    assert some.shape == (4, *whole.shape[1:]) and some.flags.c_contiguous
    np.testing.assert_array_equal(some, whole[chosen])
    # the scratch buffers of a reused read are not handed out
    reused = read_field(slide, field, reuse_buffers=True, layers=chosen)
    read_field(slide, slide.fields[3], reuse_buffers=True)
    np.testing.assert_array_equal(reused, whole[chosen])
    tiff_slide, tiff_field = _tiff_slide(slide_dir, whole, row=2)
    assert tiff_field.key == field.key
    np.testing.assert_array_equal(read_field(tiff_slide, tiff_field, layers=chosen), some)
