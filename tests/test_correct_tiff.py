"""TIFF and OME-TIFF tiles in the correct job: the same correction as the OME-Zarr path, written as one
OME-TIFF per input with the axes, dtype, physical sizes and provenance kept, a pyramid in SubIFDs,
nothing that looks complete while half-written, a rerun that skips, and bad files refused in one line.

Each TIFF holds the very array of an OME-Zarr twin, so the twin's corrected output is the reference."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile
import zarr
from correct_support import make_tile

from shadeflow.core.correct.tiff_output import PROVENANCE_NAMESPACE, partial_paths
from shadeflow.core.correct.tile import CorrectRequest, plan_tile, run_tile
from shadeflow.core.errors import InputError
from shadeflow.flows import preflight
from shadeflow.flows.correct import CorrectParameters, correct
from shadeflow.infra.cluster import task_runner

SHAPE = (2, 8, 64, 64)  # c, z, y, x
OME = {
    "PhysicalSizeX": 0.75,
    "PhysicalSizeY": 0.75,
    "PhysicalSizeZ": 2.0,
    "Channel": {"Name": ["dapi", "fitc"]},
}


def run_flow(**params):
    return correct.with_options(task_runner=task_runner(memory="4GiB", workers=1))(
        params=CorrectParameters(**params)
    )


def level0(url: str) -> np.ndarray:
    return zarr.open_group(url, mode="r")["0"][...]


def read_tiff(path: str) -> tuple[str, list[np.ndarray], dict, dict]:
    """Axes, every pyramid level, the OME Pixels element and the shadeflow annotation of a TIFF."""
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        levels = [lv.asarray() for lv in series.levels]
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
        axes = series.axes
    comment = ome["StructuredAnnotations"]["CommentAnnotation"]
    assert comment["Namespace"] == PROVENANCE_NAMESPACE
    return axes, levels, ome["Image"]["Pixels"], json.loads(comment["Value"])


def block_mean_yx(a: np.ndarray) -> np.ndarray:
    """Independent reference of a y/x pyramid step: the 2×2 mean, rounded half to even (exact in float32
    for counts below 2^22)."""
    y, x = a.shape[-2] // 2 * 2, a.shape[-1] // 2 * 2
    blocks = a[..., :y, :x].astype(np.float32).reshape(*a.shape[:-2], y // 2, 2, x // 2, 2)
    return np.rint(blocks.mean(axis=(-1, -3))).astype(a.dtype)


@pytest.fixture
def twins(tmp_path):
    """A 2-channel zarr tile and the same array as OME-TIFF, as an ImageJ hyperstack (stored ZCYX) and
    as a plain multi-page TIFF (its channel 0, with a 1-channel zarr twin)."""
    src = tmp_path / "in"
    multi, truth = make_tile(src, "a.ome.zarr", shape=SHAPE, axes="czyx", chunks=(1, 4, 32, 32))
    data = level0(multi)
    single, _ = make_tile(src, "d.ome.zarr", shape=SHAPE[1:], axes="zyx", chunks=(4, 32, 32))
    plain = level0(single)
    tifffile.imwrite(src / "b.ome.tif", data, metadata={"axes": "CZYX", **OME})
    tifffile.imwrite(src / "c.tif", data.transpose(1, 0, 2, 3)[None], imagej=True, metadata={"axes": "TZCYX"})
    tifffile.imwrite(src / "e.tif", plain, metadata=None)  # no axes: a plane stack
    one_field = src / "flatfield.npy"  # channel 0's field, for every channel of every tile
    np.save(one_field, np.load(truth["flatfield"])[0])
    return {
        "zarr": multi,
        "single": single,
        "data": data,
        "truth": truth,
        "flatfield": str(one_field),
        "in": src,
    }


@pytest.mark.usefixtures("prefect_server")
def test_tiff_tiles_through_the_flow_equal_the_zarr_path_and_a_rerun_skips(twins, tmp_path):
    src, out = twins["in"], str(tmp_path / "out")
    tiles = [twins["zarr"], str(src / "b.ome.tif"), str(src / "c.tif"), twins["single"], str(src / "e.tif")]
    params = dict(tiles=tiles, out=out, flatfield=twins["flatfield"], background="estimate", levels=2)
    reports = run_flow(**params)

    assert [r["status"] for r in reports] == ["written"] * 5
    assert sorted(os.listdir(out)) == ["a.ome.zarr", "b.ome.tif", "c.ome.tif", "d.ome.zarr", "e.ome.tif"]
    expected = level0(os.path.join(out, "a.ome.zarr"))
    for name, tile in (("b.ome.tif", tiles[1]), ("c.ome.tif", tiles[2])):
        axes, levels, pixels, provenance = read_tiff(os.path.join(out, name))
        assert axes == "CZYX" and levels[0].dtype == np.uint16
        np.testing.assert_array_equal(levels[0], expected)  # the zarr path's correction, voxel for voxel
        assert [lv.shape for lv in levels] == [SHAPE, (2, 8, 32, 32)]  # y/x halved, z kept
        np.testing.assert_array_equal(levels[1], block_mean_yx(levels[0]))
        assert provenance["kind"] == "corrected-tile" and provenance["parameters"]["format"] == "ome-tiff"
        assert provenance["flatfield"]["summary"].startswith("file ")
        assert provenance["background"]["summary"].startswith("estimate")
        assert provenance["shadeflow_version"] and provenance["inputs"] == [tile]
    _, _, pixels, _ = read_tiff(os.path.join(out, "b.ome.tif"))  # physical sizes and names kept
    assert (float(pixels["PhysicalSizeX"]), float(pixels["PhysicalSizeZ"])) == (0.75, 2.0)
    assert [c["Name"] for c in pixels["Channel"]] == ["dapi", "fitc"]
    axes, levels, _, _ = read_tiff(os.path.join(out, "e.ome.tif"))
    assert axes == "ZYX"
    np.testing.assert_array_equal(levels[0], level0(os.path.join(out, "d.ome.zarr")))

    stamps = {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in ("b.ome.tif", "e.ome.tif")}
    again = run_flow(**params)
    assert [r["status"] for r in again] == ["skipped"] * 5
    assert {name: os.stat(os.path.join(out, name)).st_mtime_ns for name in stamps} == stamps
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no scratch left behind


def test_estimated_flatfield_and_float32_tiff_equal_the_zarr_path(tmp_path):
    """Without Prefect: the tile's own flatfield estimate, and a float32 stack (not rounded or clipped)."""
    src = tmp_path / "in"
    for dtype in ("uint16", "float32"):
        zarr_tile, _ = make_tile(src, f"{dtype}.ome.zarr", shape=SHAPE, axes="czyx", dtype=dtype)
        tiff_tile = str(src / f"{dtype}.ome.tif")
        tifffile.imwrite(tiff_tile, level0(zarr_tile), metadata={"axes": "CZYX"})
        request = CorrectRequest(out=str(tmp_path / "out"), method="estimate", background="100", levels=1)
        zarr_report, tiff_report = (run_tile(plan_tile(t, request)) for t in (zarr_tile, tiff_tile))
        assert tiff_report.flatfield == zarr_report.flatfield and tiff_report.dtype == dtype
        _, levels, _, _ = read_tiff(tiff_report.output)
        assert levels[0].dtype == np.dtype(dtype) and len(levels) == 1
        np.testing.assert_array_equal(levels[0], level0(zarr_report.output))


def test_a_failed_write_leaves_nothing_complete_and_the_rerun_redoes_it(twins, tmp_path):
    tile, out = str(twins["in"] / "b.ome.tif"), str(tmp_path / "out")
    request = CorrectRequest(out=out, flatfield=twins["truth"]["flatfield"], background="100", levels=2)
    plan = plan_tile(tile, request)
    calls = []

    def failing_compute(*collections):  # the second window fails, after a page or more is written
        import dask

        calls.append(len(collections))
        if len(calls) == 2:
            raise OSError("worker lost")
        return dask.compute(*collections, scheduler="sync")

    import shadeflow.core.correct.tiff_output as tiff_output

    original = tiff_output.WINDOW_BYTES
    tiff_output.WINDOW_BYTES = 64 * 64 * 2 * 8  # one block of 8 pages per window
    try:
        with pytest.raises(OSError, match="worker lost"):
            run_tile(plan, compute=failing_compute)
    finally:
        tiff_output.WINDOW_BYTES = original
    assert os.listdir(out) == []  # neither the file nor its scratch

    # an interrupted run's leftovers (as a killed process leaves them) are ours: redone, not refused
    temp, scratch = partial_paths(plan.output)
    open(temp, "wb").write(b"II*\0 half a file")
    os.makedirs(scratch)
    plan = plan_tile(tile, request)
    assert plan.action == "redo"
    assert run_tile(plan).status == "written" and sorted(os.listdir(out)) == ["b.ome.tif"]
    _, levels, _, _ = read_tiff(plan.output)
    assert levels[0].shape == SHAPE

    # complete: skipped with the same parameters, refused with others unless --overwrite
    assert plan_tile(tile, request).action == "skip"
    other = CorrectRequest(out=out, flatfield=twins["truth"]["flatfield"], background="90", levels=2)
    with pytest.raises(InputError, match=r"b\.ome\.tif exists and is complete .*--overwrite"):
        plan_tile(tile, other)
    replaced = CorrectRequest(**{**other.__dict__, "overwrite": True})
    assert run_tile(plan_tile(tile, replaced)).background == "value 90"
    assert read_tiff(plan.output)[3]["parameters"]["background"] == {"kind": "90"}

    # a file at the output's name that shadeflow did not write is not touched
    os.remove(plan.output)
    tifffile.imwrite(plan.output, twins["data"])
    with pytest.raises(InputError, match="is not a shadeflow output"):
        plan_tile(tile, request)


def one_line_error(params: dict, match: str, named: str) -> str:
    with pytest.raises(ValueError) as info:
        preflight.correct(CorrectParameters(**params))
    message = str(info.value)
    assert "\n" not in message and named in message and match in message, message
    return message


def test_bad_tiff_files_are_one_line_before_anything_runs(twins, tmp_path):
    src, out = twins["in"], str(tmp_path / "out")
    base = dict(out=out, flatfield=twins["truth"]["flatfield"], background="100")
    broken = src / "broken.tif"
    broken.write_bytes(b"this is not a TIFF at all")
    one_line_error({**base, "tiles": [str(broken)]}, "not a readable TIFF", str(broken))
    rgb = src / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    one_line_error({**base, "tiles": [str(rgb)]}, "several samples each", str(rgb))
    unnamed = src / "unnamed.tif"
    tifffile.imwrite(unnamed, np.zeros((2, 4, 32, 32), np.uint16), photometric="minisblack")  # 2 unnamed axes
    one_line_error({**base, "tiles": [str(unnamed)]}, "several unnamed axes", str(unnamed))
    wide = src / "wide.npy"  # a flatfield whose plane cannot map onto the tile's 64×64
    np.save(wide, np.ones((64, 128)))
    one_line_error(
        {**base, "flatfield": str(wide), "tiles": [str(src / "b.ome.tif")]},
        "aspect ratios differ",
        "b.ome.tif",
    )
    three = src / "three.npy"  # 3 fields for 2 channels
    np.save(three, np.ones((3, 64, 64)))
    one_line_error(
        {**base, "flatfield": str(three), "tiles": [str(src / "b.ome.tif")]}, "holds 3 fields", "b.ome.tif"
    )
    one_line_error({**base, "tiles": [str(src / "missing.tif")]}, "does not exist", "missing.tif")
    one_line_error(
        {**base, "tiles": [str(src / "b.ome.tif")], "zarr_format": 3},
        "--zarr-format is for OME-Zarr",
        "b.ome.tif",
    )
    # every bad tile of a run in the same line, and nothing written
    message = one_line_error({**base, "tiles": [str(broken), str(rgb)]}, "not a readable TIFF", str(rgb))
    assert "several samples each" in message
    assert not os.path.exists(out) or os.listdir(out) == []


def test_tiff_names_map_to_distinct_ome_tiff_outputs(tmp_path):
    from shadeflow.core.correct.tile import check_distinct_outputs, output_url

    assert output_url("/o", "/in/stack.tif") == "/o/stack.ome.tif"
    assert output_url("/o", "/in/stack.OME.TIFF") == "/o/stack.ome.tif"
    with pytest.raises(InputError, match="same name"):
        check_distinct_outputs(["/in/x.tif", "/in/x.ome.tiff"], "/o")
    with pytest.raises(InputError, match="local files only"):
        from shadeflow.core.io.tiffstack import open_tiff_image

        open_tiff_image("s3://bucket/stack.tif")
    request = CorrectRequest(out="s3://bucket/out", method="estimate", background="100")
    with pytest.raises(InputError, match="needs a local --out"):
        plan_tile(str(tmp_path / "x.tif"), request)


def test_the_command_line_says_a_bad_tiff_in_one_line_before_starting_anything(tmp_path):
    from test_cli_errors import expect_error

    broken = tmp_path / "in" / "scan.tif"
    broken.parent.mkdir()
    broken.write_bytes(b"II*\0" + b"\xff" * 64)  # a TIFF header pointing nowhere
    out = tmp_path / "out"
    args = ["correct", str(broken), "--out", str(out), "--method", "estimate", "--background", "100"]
    line = expect_error(tmp_path, args, str(broken), "not a readable TIFF", absent=[out])
    assert line.startswith(f"error: tile {broken}")


def test_non_finite_voxels_of_a_float_tiff_fail_the_tile_and_leave_no_output(tmp_path):
    from shadeflow.core.io.omezarr import TileError

    stack = np.full((6, 32, 32), 500.0, np.float32)
    stack[4, 3, 5] = np.nan
    tile = tmp_path / "nan.tif"
    tifffile.imwrite(tile, stack, metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    plan = plan_tile(str(tile), CorrectRequest(out=str(out), method="estimate", background="100", levels=1))
    with pytest.raises(TileError, match=r"nan\.tif.*non-finite"):
        run_tile(plan)
    assert not out.exists() or os.listdir(out) == []
