"""Bad input to the correct flow (issue item 11).

Each case runs the real flow and checks that it fails with a message naming the tile and what was
expected, that nothing was written (no output folder, nothing hidden beside it) and that every input
file is byte-identical to before the run.
"""

from __future__ import annotations

import copy
import os
import re

import numpy as np
import pytest
import zarr
from conftest import tree
from correct_support import make_model, make_tile

from shadeflow.core.errors import RunFailed as TilesFailed
from shadeflow.flows.correct import CorrectParameters, correct
from shadeflow.infra.cluster import task_runner

pytestmark = pytest.mark.usefixtures("prefect_server")


def run_flow(**params):
    return correct.with_options(task_runner=task_runner(memory="4GiB", workers=1))(
        params=CorrectParameters(**params)
    )


@pytest.fixture
def case(tmp_path):
    """A pristine small tile (and its planted flatfield file) in ``<tmp>/in``; output goes to
    ``<tmp>/out``."""
    tile, truth = make_tile(tmp_path / "in", shape=(12, 48, 64), chunks=(6, 48, 64))
    return {
        "tile": tile,
        "flatfield": truth["flatfield"],
        "in": tmp_path / "in",
        "out": str(tmp_path / "out"),
        "tmp": tmp_path,
    }


def fails(case, match: str, tiles=None, snapshot=None, **params) -> str:
    """Run the flow expecting failure; check the message, that nothing was written and the input is
    unchanged."""
    tiles = tiles or [case["tile"]]
    before = snapshot or tree(case["tmp"])
    params = {"out": case["out"], "flatfield": case["flatfield"], "background": "100", **params}
    outputs = [os.path.join(params["out"], os.path.basename(t)) for t in tiles]
    existed = {o: os.path.exists(o) for o in outputs}
    with pytest.raises(TilesFailed) as info:
        run_flow(tiles=tiles, **params)
    message = str(info.value)
    assert any(t in message for t in tiles), f"the message does not name the tile: {message}"
    assert re.search(match, message), message
    assert tree(case["tmp"]) == before  # nothing written anywhere, inputs byte-identical
    assert all(os.path.exists(o) == existed[o] for o in outputs)  # not even an empty output folder
    return message


def set_attrs(url: str, attrs: dict) -> None:
    group = zarr.open_group(url, mode="r+")
    group.attrs.clear()
    group.attrs.update(attrs)


def ome(url: str) -> dict:
    return copy.deepcopy(zarr.open_group(url, mode="r").attrs.asdict())


def test_not_an_ome_zarr_image(case):
    plain = case["in"] / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not zarr")
    fails(case, r"not an OME-Zarr image \(no zarr group", tiles=[str(plain)])
    fails(case, r"not an OME-Zarr image \(it does not exist\)", tiles=[str(case["in"] / "missing.ome.zarr")])
    fails(case, r"is a zarr array, not an OME-Zarr image group", tiles=[os.path.join(case["tile"], "0")])
    zarr.create_group(str(case["in"] / "bare.zarr"), zarr_format=3)
    fails(case, r"zarr v3 group without 'ome' metadata", tiles=[str(case["in"] / "bare.zarr")])


def test_missing_or_inconsistent_multiscales(case):
    tile = case["tile"]
    good = ome(tile)
    broken = copy.deepcopy(good)
    del broken["ome"]["multiscales"][0]["axes"]
    set_attrs(tile, broken)
    fails(case, r"'multiscales' has no 'axes'")

    broken = copy.deepcopy(good)
    broken["ome"]["multiscales"][0]["datasets"].append(
        {"path": "9", "coordinateTransformations": [{"type": "scale", "scale": [4, 4, 4]}]}
    )
    set_attrs(tile, broken)
    fails(case, r"dataset '9' listed in 'multiscales' does not exist")

    broken = copy.deepcopy(good)
    broken["ome"]["multiscales"][0]["axes"] = broken["ome"]["multiscales"][0]["axes"][1:]
    set_attrs(tile, broken)
    fails(case, r"axes \['y', 'x'\] with types|has 3 dimensions but the axes")

    broken = copy.deepcopy(good)
    broken["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"] = [
        {"type": "scale", "scale": [1, 1]}
    ]
    set_attrs(tile, broken)
    fails(case, r"scale \[1, 1\] is not 3 numbers")

    set_attrs(tile, {"multiscales": good["ome"]["multiscales"]})  # NGFF 0.4 layout in a zarr v3 group
    fails(case, r"zarr v3 group without 'ome' metadata \(it has NGFF 0.4-style")

    broken = copy.deepcopy(good)
    broken["ome"]["version"] = "0.4"
    set_attrs(tile, broken)
    fails(case, r"NGFF version 0.4 on zarr v3; supported are NGFF 0.4 on zarr v2 and NGFF 0.5 on zarr v3")


def test_level_that_does_not_exist(case):
    fails(case, r"level '3' does not exist; levels present: 0 \(path '0', shape \(12, 48, 64\)\)", level="3")


def test_flatfield_that_cannot_be_mapped(case):
    three = str(case["in"] / "three.npy")
    np.save(three, np.ones((3, 48, 64)))
    fails(case, r"holds 3 fields but the tile has 1 channel", flatfield=three)
    square = str(case["in"] / "square.npy")
    np.save(square, np.ones((64, 64)))
    fails(
        case,
        r"a 64×64 field cannot be mapped onto a 48×64 \(y×x\) tile — the aspect ratios differ",
        flatfield=square,
    )
    flat_1d = str(case["in"] / "line.npy")
    np.save(flat_1d, np.ones(64))
    fails(case, r"shape \(64,\) is neither one \(Y, X\) field nor a \(C, Y, X\) stack", flatfield=flat_1d)
    store = str(case["in"] / "store")
    make_model(store, "v5", np.ones((5, 48, 64)), {"dapi": [1, 2], "fitc": [3, 5]})
    two_channel, _ = make_tile(
        case["in"], "two.ome.zarr", shape=(2, 12, 48, 64), axes="czyx", chunks=(1, 6, 48, 64)
    )
    fails(
        case,
        r"cannot map the model's 5 layers onto the tile's 2 channels; give --layer N or --channel-map",
        tiles=[two_channel],
        flatfield=None,
        model="v5",
        store=store,
    )
    fails(
        case,
        r"--channel-map does not map channel\(s\) \[1\]",
        tiles=[two_channel],
        flatfield=None,
        model="v5",
        store=store,
        channel_map="0=dapi",
    )


def test_flatfield_with_zeros_needs_repair(case):
    holes = str(case["in"] / "holes.npy")
    field = np.ones((48, 64))
    field[10, 20] = 0
    field[30, 40] = np.nan
    np.save(holes, field)
    fails(
        case,
        r"2 pixels zero, negative or not finite \(first at y=10, x=20\); rerun with --repair-flatfield",
        flatfield=holes,
    )
    reports = run_flow(
        tiles=[case["tile"]],
        out=case["out"],
        flatfield=holes,
        background="100",
        levels=1,
        repair_flatfield=True,
    )
    assert reports[0]["status"] == "written" and any("repaired 2 pixels" in n for n in reports[0]["notes"])


def test_unsupported_dtype(case):
    url = str(case["in"] / "int32.ome.zarr")
    group = zarr.create_group(url, zarr_format=3)
    group.create_array("0", shape=(4, 8, 8), dtype="int32", chunks=(4, 8, 8))
    group.attrs.update({k: v for k, v in ome(case["tile"]).items()})
    fails(case, r"unsupported dtype int32 in dataset '0'; supported: uint8, uint16, float32", tiles=[url])


def test_unknown_model_version_lists_those_present(case):
    store = str(case["in"] / "store")
    make_model(store, "v1", np.ones((1, 48, 64)), {"all": [1, 1]})
    make_model(store, "v2", np.ones((1, 48, 64)), {"all": [1, 1]})
    fails(
        case,
        r"model version 'v9' not found in .*store; versions present: v1, v2",
        flatfield=None,
        model="v9",
        store=store,
    )


def test_output_exists_and_is_complete(case):
    run_flow(tiles=[case["tile"]], out=case["out"], flatfield=case["flatfield"], background="100", levels=2)
    fails(
        case,
        r"output .*tile.ome.zarr exists and is complete \(made .* with other parameters\); rerun with "
        r"--overwrite",
        levels=3,
    )


def test_output_inside_the_input(case):
    fails(case, r"output .* is inside the input tile", out=os.path.join(case["tile"], "corrected"))
    fails(
        case,
        r"the output would be the input tile itself \(--out is the folder holding it\)",
        out=str(case["in"]),
    )
    nested = case["in"] / "tile.ome.zarr" / "inner"
    nested.mkdir()
    inner, _ = make_tile(nested, "tile.ome.zarr", shape=(12, 48, 64), chunks=(6, 48, 64))
    fails(case, r"the input lies inside the output", tiles=[inner], out=str(case["in"]))


def test_a_bad_tile_stops_the_run_before_any_tile_is_written(case):
    other, _ = make_tile(case["in"], "other.ome.zarr", shape=(12, 48, 64), chunks=(6, 48, 64))
    fails(case, r"level '2' does not exist", tiles=[other, case["tile"]], level="2")
    with pytest.raises(Exception, match="same name"):
        run_flow(
            tiles=[case["tile"], str(case["tmp"] / "elsewhere" / "tile.ome.zarr")],
            out=case["out"],
            flatfield=case["flatfield"],
            background="100",
        )
    assert not os.path.exists(case["out"])


def test_missing_flatfield_or_darkfield_file(case):
    fails(
        case,
        r"tile .*tile.ome.zarr: flatfield file .*nope.npy: does not exist",
        flatfield=str(case["in"] / "nope.npy"),
    )
    fails(
        case,
        r"tile .*tile.ome.zarr: darkfield file .*dark.tif: does not exist",
        background="estimate",
        darkfield=str(case["in"] / "dark.tif"),
    )
    garbage = case["in"] / "garbage.tif"
    garbage.write_bytes(b"not a tiff")
    fails(case, r"flatfield file .*garbage.tif cannot be read as TIFF, .npy or zarr", flatfield=str(garbage))
