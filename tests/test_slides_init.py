"""``shadeflow slides init`` (issue 13, item 2): the slide contract for a folder of TIFF fields, so a lab
without AstroPath gets to ``meanimage`` in one command. The folder is made from a synthetic slide's
fields, so the mean image of the TIFF folder must equal the synthetic slide's own."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from shadeflow.core.io.slide import SlideError, load_slide, read_field
from shadeflow.core.io.slide_init import init_slide
from shadeflow.core.meanimage.pipeline import compute_mean_image, plan_slide
from shadeflow.core.synth.slides import SynthConfig, write_cohort
from shadeflow.flows.cli import app

CONFIG = SynthConfig(slides=1, fields=20, seed=31, shape=(96, 128, 4))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    (url,) = write_cohort(str(tmp_path_factory.mktemp("synth")), CONFIG)
    return load_slide(url)


def tiff_folder(slide, folder: Path) -> Path:
    """The slide's fields as multi-page TIFFs (a page per layer) and a positions table, as a lab has them."""
    folder.mkdir(parents=True)
    with open(folder.parent / "positions.csv", "w", newline="") as handle:
        groups = [g.name for g in slide.layer_groups]
        writer = csv.writer(handle)
        writer.writerow(["file", "cx", "cy", *[f"exposure_ms_{g}" for g in groups]])
        for field in slide.fields:  # acquisition order
            name = f"{field.key}.tif"
            tifffile.imwrite(folder / name, read_field(slide, field), photometric="minisblack")
            writer.writerow([name, field.cx, field.cy, *field.exposure_ms])
    return folder


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.tif")}


def groups_option(slide) -> str:
    return ",".join(f"{g.name}={g.first}-{g.last}" for g in slide.layer_groups)


def test_a_tiff_folder_makes_the_same_mean_image_as_the_slide_it_came_from(synthetic, tmp_path):
    folder = tiff_folder(synthetic, tmp_path / synthetic.slide_id)
    before = digests(folder)
    init_slide(
        str(folder),
        positions=str(tmp_path / "positions.csv"),
        pixel_size_um=synthetic.field_size_um[0] / synthetic.width,
        layer_groups=groups_option(synthetic),
        dark_current=synthetic.dark_current,
    )
    assert digests(folder) == before  # the fields are only read
    slide = load_slide(str(folder))
    assert (slide.shape, slide.dtype, len(slide.fields)) == (
        synthetic.shape,
        synthetic.dtype,
        len(synthetic.fields),
    )
    ours = compute_mean_image(plan_slide(slide), str(tmp_path / "masks-tiff")).stack
    theirs = compute_mean_image(plan_slide(synthetic), str(tmp_path / "masks-bin")).stack
    assert ours.count.sum() > 0
    np.testing.assert_array_equal(ours.count, theirs.count)
    np.testing.assert_allclose(ours.sum, theirs.sum, rtol=1e-12)


def test_a_grid_places_fields_in_file_name_order_and_the_command_line_says_next_steps(synthetic, tmp_path):
    folder = tiff_folder(synthetic, tmp_path / "my_slide")
    result = CliRunner().invoke(app, ["slides", "init", str(folder), "--grid", "5"])
    assert result.exit_code == 0, result.output
    assert "next: shadeflow meanimage" in result.output
    slide = load_slide(str(folder))
    meta = json.loads((folder / "slide.json").read_text())
    assert meta["layer_groups"] == {"all": [1, 4]} and meta["slide_id"] == "my_slide"
    by_file = {f.file: (f.cx, f.cy) for f in slide.fields}
    names = sorted(by_file)
    assert by_file[names[0]][1] == by_file[names[4]][1] < by_file[names[5]][1]  # rows of five
    assert all(f.exposure_ms == (1.0,) for f in slide.fields)
    again = CliRunner().invoke(app, ["slides", "init", str(folder), "--grid", "5"])
    assert again.exit_code == 2 and "already has slide.json and fields.csv; use --overwrite" in again.output


def test_bad_folders_are_named_and_leave_nothing_behind(synthetic, tmp_path):
    folder = tiff_folder(synthetic, tmp_path / "odd")
    positions = str(tmp_path / "positions.csv")
    first = sorted(folder.glob("*.tif"))[3]
    tifffile.imwrite(first, np.zeros((3, 96, 128), np.uint16), photometric="minisblack")
    with pytest.raises(
        SlideError,
        match=rf"field {re.escape(first.name)} holds \(3, 96, 128\) uint16, but .* every field must match",
    ):
        init_slide(str(folder), positions=positions)
    assert not (folder / "slide.json").exists() and not (folder / "fields.csv").exists()
    first.unlink()
    with pytest.raises(SlideError, match=r"--positions .*: file .* is not a TIFF field of the folder"):
        init_slide(str(folder), positions=positions)
    with pytest.raises(SlideError, match=r"--positions CSV or --grid COLUMNS"):
        init_slide(str(folder))
    with pytest.raises(SlideError, match=r"holds no .tif/.tiff fields"):
        init_slide(str(tmp_path), grid_columns=4)
    with pytest.raises(SlideError, match=r"--layer-groups 'x': 'x' is not NAME=FIRST-LAST"):
        init_slide(str(folder), grid_columns=4, layer_groups="x")
    assert not (folder / "slide.json").exists() and not (folder / "fields.csv").exists()
