"""Correcting synthetic tiles end to end (core functions on Dask's local scheduler, no Prefect):
formats, metadata read back by ome-zarr-py, accuracy against the planted shading, the exact formula
with a model, level selection, format conversion and resumability.

Expected values come from the synthetic truth, the NGFF spec and the issue's formula computed
directly in numpy (``correct_support.reference``), never from the code under test.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import zarr
from conftest import tree
from correct_support import make_model, make_tile, reference, smoothed_mean_plane_rms
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from shadeflow.core.correct.tile import CorrectRequest, TileError, plan_tile, run_tile
from shadeflow.core.synth.slides import planted_flatfield
from shadeflow.core.synth.tiles import read_truth


def correct(tile: str, **request):
    plan = plan_tile(tile, CorrectRequest(**request))
    return plan, run_tile(plan, log=lambda message: None)


def attrs(url: str) -> dict:
    return zarr.open_group(url, mode="r").attrs.asdict()


def ngff(url: str) -> tuple[dict, str]:
    """(first multiscale, NGFF version) read from the raw attributes as the spec lays them out."""
    a = attrs(url)
    if "ome" in a:
        return a["ome"]["multiscales"][0], a["ome"]["version"]
    return a["multiscales"][0], a["multiscales"][0]["version"]


def normalised(ff: np.ndarray) -> np.ndarray:
    """A flatfield file divided by its per-channel mean, as documented for --flatfield."""
    ff = ff.astype(np.float64)
    return (ff / ff.reshape(len(ff), -1).mean(axis=1)[:, None, None]).astype(np.float32)


CASES = [
    # zarr format, axes, shape, chunks, dtype, background
    (2, "zyx", (24, 64, 96), (8, 32, 64), "uint16", "estimate"),
    (3, "zyx", (24, 64, 96), (8, 32, 32), "uint16", "estimate"),
    (3, "czyx", (2, 20, 64, 64), (1, 10, 32, 32), "uint8", "estimate"),
    (2, "tczyx", (2, 2, 12, 48, 64), (1, 1, 6, 32, 32), "float32", "40"),
    (3, "yx", (80, 96), (32, 32), "uint16", "100"),
    (2, "tcyx", (3, 2, 64, 64), (1, 1, 32, 32), "uint16", "none"),
]


@pytest.mark.parametrize(
    "zarr_format,axes,shape,chunks,dtype,background", CASES, ids=[f"v{c[0]}-{c[1]}-{c[4]}" for c in CASES]
)
def test_formats_axes_dtypes(tmp_path, zarr_format, axes, shape, chunks, dtype, background):
    tile, truth = make_tile(
        tmp_path / "in",
        shape=shape,
        axes=axes,
        chunks=chunks,
        dtype=dtype,
        zarr_format=zarr_format,
        translation={"y": 7.5, "x": -3.0},
    )
    before = tree(tmp_path / "in")
    plan, report = correct(
        tile, out=str(tmp_path / "out"), flatfield=truth["flatfield"], background=background, levels=3
    )
    out = report.output
    assert report.status == "written" and out == str(tmp_path / "out" / "tile.ome.zarr")
    assert tree(tmp_path / "in") == before  # the input is never written

    # same zarr format and NGFF version, dtype, chunks and codec as promised
    multiscale, version = ngff(out)
    assert version == {2: "0.4", 3: "0.5"}[zarr_format]
    level0 = zarr.open_array(os.path.join(out, "0"), mode="r")
    assert (
        level0.metadata.zarr_format == zarr_format
        and level0.dtype == np.dtype(dtype)
        and level0.shape == shape
    )
    assert level0.chunks == tuple(min(c, s) for c, s in zip(chunks, shape))
    codec = json.dumps(level0.metadata.to_dict(), default=str)
    assert "zstd" in codec and "blosc" in codec.lower()
    if zarr_format == 2:
        assert level0.metadata.dimension_separator == "/"
    else:
        assert list(level0.metadata.dimension_names) == list(axes)

    # the ome-zarr-py Reader reads it: levels, axes, scales and translations carried over, omero kept
    nodes = list(Reader(parse_url(out))())
    image = nodes[0]
    assert len(image.data) == 3
    assert [a["name"] for a in image.metadata["axes"]] == list(axes)
    source_ms, _ = ngff(tile)
    scale0 = source_ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    transforms = image.metadata["coordinateTransformations"]
    assert transforms[0][0]["scale"] == scale0
    assert (
        transforms[0][1]["translation"]
        == source_ms["datasets"][0]["coordinateTransformations"][1]["translation"]
    )
    yx = [i for i, a in enumerate(axes) if a in "yx"]
    for k, level in enumerate(image.data):
        scale_k = transforms[k][0]["scale"]
        for i in yx:
            assert level.shape[i] == shape[i] // 2**k and scale_k[i] == pytest.approx(scale0[i] * 2**k)
    omero = (attrs(out).get("ome") or attrs(out))["omero"]
    assert omero == (attrs(tile).get("ome") or attrs(tile))["omero"]

    # level 0 is the formula (background from the output's provenance when estimated)
    x = zarr.open_array(os.path.join(tile, "0"), mode="r")[...]
    ff = normalised(np.load(truth["flatfield"]))
    roles = "".join(a for a in axes)
    c_axis = roles.index("c") if "c" in roles else None
    shape5 = [1] * len(axes)
    shape5[-2:] = ff.shape[-2:]
    if c_axis is not None:
        shape5[c_axis] = ff.shape[0]
    ff_b = ff.reshape(shape5) if c_axis is not None else ff[0]
    provenance = attrs(out)["shadeflow"]
    if background == "estimate":
        assert provenance["background"]["kind"] == "estimate"
        bg = None  # a per-pixel field; checked separately below
    else:
        bg = 0.0 if background == "none" else float(background)
        np.testing.assert_array_equal(level0[...], reference(x, bg, ff_b, dtype))
    if bg is None:
        # the estimated background is the per-pixel median of the logged background-only planes
        planes = provenance["background"]["channels"][0]["planes"]
        assert set(planes) <= set(truth["quiet_planes"]) and len(planes) >= 3
        x0 = x[0] if c_axis is not None else x
        bg_map = np.median(x0[planes].astype(np.float32), axis=0)
        np.testing.assert_array_equal(
            level0[...][0] if c_axis is not None else level0[...],
            reference(x0, bg_map, ff_b[0] if c_axis is not None else ff_b, dtype),
        )
    # level 1 is the block mean of level 0
    l0 = level0[...].astype(np.float64)
    l1 = zarr.open_array(os.path.join(out, "1"), mode="r")[...]
    z_halved = l1.ndim >= 3 and "z" in axes and l1.shape[axes.index("z")] < l0.shape[axes.index("z")]
    if not z_halved:
        sl = tuple(slice(0, 2 * (n // 2)) if a in "yx" else slice(None) for a, n in zip(axes, l0.shape))
        l0c = l0[sl]
        blocks = l0c.reshape(*l0c.shape[:-2], l0c.shape[-2] // 2, 2, l0c.shape[-1] // 2, 2).mean(
            axis=(-3, -1)
        )
        expected = np.rint(blocks).astype(dtype) if dtype != "float32" else blocks.astype(np.float32)
        np.testing.assert_allclose(
            l1.astype(np.float64),
            expected.astype(np.float64),
            rtol=1e-6,
            atol=0 if dtype != "float32" else 1e-3,
        )

    # the completion marker comes with the provenance
    with open(os.path.join(out, "shadeflow.json")) as handle:
        marker = json.load(handle)
    assert marker["kind"] == "corrected-tile" and marker["inputs"] == [tile]
    assert provenance["status"] == "complete" and provenance["source"]["url"] == tile
    assert provenance["flatfield"]["kind"] == "file" and provenance["parameters"]["levels"] == 3
    assert provenance["shadeflow_version"]


ACCURACY = dict(shape=(48, 128, 128), chunks=(16, 64, 64))


@pytest.fixture(scope="module")
def accuracy_tile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("accuracy")
    tile, truth = make_tile(folder, **ACCURACY, seed=11)
    return tile, truth


def _sample_planes(truth) -> list[int]:
    quiet = set(truth["quiet_planes"])
    return [z for z in range(ACCURACY["shape"][0]) if z not in quiet]


@pytest.mark.parametrize("source", ["file", "model", "estimate"])
def test_planted_shading_is_gone(tmp_path, accuracy_tile, source):
    tile, truth = accuracy_tile
    planes, sigma = _sample_planes(truth), 8.0
    raw = zarr.open_array(os.path.join(tile, "0"), mode="r")[...].astype(np.float64) - truth["background"]
    assert smoothed_mean_plane_rms(raw, planes, sigma) > 0.05  # the shading is there to begin with
    if source == "model":
        store = str(tmp_path / "store")
        make_model(store, "v1", np.load(truth["flatfield"]), {"all": [1, 1]})
        options = dict(model="v1", store=store)
    elif source == "file":
        options = dict(flatfield=truth["flatfield"])
    else:
        options = dict(method="estimate")
    _, report = correct(tile, out=str(tmp_path / "out"), background="estimate", levels=2, **options)
    corrected = zarr.open_array(os.path.join(report.output, "0"), mode="r")[...]
    residual = smoothed_mean_plane_rms(corrected, planes, sigma)
    assert residual <= 0.01, f"{source}: residual shading {residual:.2%}"
    assert report.background.startswith("estimate")
    bg = attrs(report.output)["shadeflow"]["background"]["channels"][0]
    assert bg["median"] == pytest.approx(truth["background"], abs=1)


def test_model_correction_matches_numpy_exactly(tmp_path):
    tile, truth = make_tile(
        tmp_path / "in", shape=(2, 16, 96, 128), axes="czyx", chunks=(1, 8, 48, 64), seed=5
    )
    store = str(tmp_path / "store")
    groups = {"dapi": [1, 2], "fitc": [3, 5]}
    model = planted_flatfield((96, 128, 5))  # the synthetic cohort's flatfield, (L, H, W)
    make_model(store, "cohort1", model, groups)
    _, report = correct(
        tile,
        out=str(tmp_path / "out"),
        model="cohort1",
        store=store,
        channel_map="0=2,1=fitc",
        background="100",
        levels=2,
    )
    x = zarr.open_array(os.path.join(tile, "0"), mode="r")[...]
    out = zarr.open_array(os.path.join(report.output, "0"), mode="r")[...]
    ff = model[[1, 3]].astype(np.float32)[:, None]  # channel 0 → layer 2, channel 1 → fitc's middle layer 4
    expected = np.clip(np.rint((x.astype(np.float32) - np.float32(100)) / ff), 0, 65535).astype(np.uint16)
    assert out.dtype == np.uint16 and out.shape == x.shape
    assert np.array_equal(out, expected), f"{np.count_nonzero(out != expected)} voxels differ"
    flat = attrs(report.output)["shadeflow"]["flatfield"]
    assert flat["kind"] == "model" and flat["version"] == "cohort1" and flat["resampled_from"] is None
    assert [entry["layer"] for entry in flat["layers"]] == [2, 4]


def test_model_of_another_size_is_resampled_and_says_so(tmp_path):
    from skimage.transform import resize

    tile, _ = make_tile(tmp_path / "in", shape=(8, 96, 128), chunks=(8, 48, 64))
    store = str(tmp_path / "store")
    model = planted_flatfield((48, 64, 1))
    make_model(store, "small", model, {"all": [1, 1]})
    _, report = correct(tile, out=str(tmp_path / "out"), model="small", store=store, background="0", levels=1)
    flat = attrs(report.output)["shadeflow"]["flatfield"]
    assert flat["resampled_from"] == [48, 64] and "resampled from 48×64" in flat["summary"]
    assert "resampled from 48×64" in report.flatfield
    # the documented recipe: cubic spline with pixel centres aligned, mean kept
    big = resize(model[0], (96, 128), order=3, mode="edge", anti_aliasing=False, preserve_range=True)
    big = (big * (model[0].mean() / big.mean())).astype(np.float32)
    x = zarr.open_array(os.path.join(tile, "0"), mode="r")[...]
    np.testing.assert_array_equal(
        zarr.open_array(os.path.join(report.output, "0"), mode="r")[...], reference(x, 0.0, big, "uint16")
    )


def test_any_level_and_format_conversion(tmp_path):
    tile, truth = make_tile(
        tmp_path / "in",
        shape=(16, 128, 128),
        chunks=(8, 64, 64),
        levels=3,
        zarr_format=2,
        translation={"z": 4.0},
    )
    _, report = correct(
        tile,
        out=str(tmp_path / "out"),
        flatfield=truth["flatfield"],
        background="0",
        level="1",
        levels=2,
        zarr_format=3,
    )
    source_ms, _ = ngff(tile)
    multiscale, version = ngff(report.output)
    assert version == "0.5" and zarr.open_group(report.output, mode="r").metadata.zarr_format == 3
    assert (
        zarr.open_array(os.path.join(report.output, "0"), mode="r").shape
        == zarr.open_array(os.path.join(tile, "1"), mode="r").shape
    )
    assert (
        multiscale["datasets"][0]["coordinateTransformations"]
        == source_ms["datasets"][1]["coordinateTransformations"]
    )
    assert attrs(report.output)["shadeflow"]["source"]["level"] == "1"
    # the flatfield (128×128 file) was resampled to level 1's 64×64
    assert "resampled" in report.flatfield


def test_resumable_skip_refuse_overwrite(tmp_path):
    tile, truth = make_tile(tmp_path / "in", shape=(16, 64, 64), chunks=(8, 32, 32))
    before = tree(tmp_path / "in")
    out = str(tmp_path / "out")
    request = dict(out=out, flatfield=truth["flatfield"], background="100", levels=2)
    _, first = correct(tile, **request)
    good = tree(first.output)

    # a crash before the marker: marker gone and a chunk missing → the rerun redoes it
    os.remove(os.path.join(first.output, "shadeflow.json"))
    chunk = next(
        os.path.join(d, f)
        for d, _, fs in os.walk(os.path.join(first.output, "0"))
        for f in fs
        if f not in ("zarr.json",)
    )
    os.remove(chunk)
    plan, again = correct(tile, **request)
    assert plan.action == "redo" and again.status == "written"
    redone = tree(first.output)
    assert {k: v for k, v in redone.items() if k != "shadeflow.json" and k != "zarr.json"} == {
        k: v for k, v in good.items() if k != "shadeflow.json" and k != "zarr.json"
    }

    # complete with the same parameters → skipped, untouched
    plan, skipped = correct(tile, **request)
    assert plan.action == "skip" and skipped.status == "skipped"
    assert tree(first.output) == redone

    # complete with other parameters → refused without --overwrite, nothing changed
    with pytest.raises(
        TileError, match=r"tile .*tile.ome.zarr: output .* exists and is complete .*--overwrite"
    ):
        plan_tile(tile, CorrectRequest(**{**request, "levels": 3}))
    assert tree(first.output) == redone

    # with --overwrite → replaced
    plan, replaced = correct(tile, **{**request, "levels": 3, "overwrite": True})
    assert plan.action == "replace" and replaced.status == "written"
    assert os.path.isdir(os.path.join(first.output, "2")) and len(ngff(first.output)[0]["datasets"]) == 3
    assert tree(tmp_path / "in") == before


def test_partial_output_written_by_hand_is_redone(tmp_path):
    """A 'kill' simulated from outside: an output group in the writing state, half its chunks, no marker."""
    from shadeflow.core.io.omezarr import create_image_group, create_level_array

    tile, truth = make_tile(tmp_path / "in", shape=(16, 64, 64), chunks=(8, 32, 32))
    target = str(tmp_path / "out" / "tile.ome.zarr")
    group = create_image_group(target, 3, {"shadeflow": {"kind": "corrected-tile", "status": "writing"}})
    arr = create_level_array(group, "0", (16, 64, 64), (8, 32, 32), np.dtype("uint16"), ("z", "y", "x"))
    arr[:8] = 7
    plan, report = correct(
        tile, out=str(tmp_path / "out"), flatfield=truth["flatfield"], background="100", levels=2
    )
    assert plan.action == "redo" and report.status == "written"
    x = zarr.open_array(os.path.join(tile, "0"), mode="r")[...]
    ff = normalised(np.load(truth["flatfield"]))[0]
    np.testing.assert_array_equal(
        zarr.open_array(os.path.join(target, "0"), mode="r")[...], reference(x, 100.0, ff, "uint16")
    )
    assert os.path.exists(os.path.join(target, "shadeflow.json"))


def test_a_chunk_write_left_by_a_lost_writer_is_removed_before_the_marker(tmp_path):
    """A Dask worker killed inside zarr's atomic chunk write leaves ``<chunk>.<uuid hex>.partial`` (seen in a
    fault test); the retried task writes the chunk, and the stray file must not stay in a complete output
    nor count in its marker."""
    tile, truth = make_tile(tmp_path / "in", shape=(16, 64, 64), chunks=(8, 32, 32))
    request = dict(flatfield=truth["flatfield"], background="100", levels=2)
    _, clean = correct(tile, out=str(tmp_path / "clean"), **request)
    target = tmp_path / "out" / "tile.ome.zarr"
    stray = target / "0" / "c" / "0" / "0" / ("0." + "4c8206985e474806ae8c3377dcebc639" + ".partial")
    user_file = target / "0" / "notes.partial"  # not zarr's pattern: not ours to remove

    def lost_writer():
        if not stray.exists():
            stray.parent.mkdir(parents=True, exist_ok=True)
            stray.write_bytes(b"half a chunk")
            user_file.write_bytes(b"kept")

    logged = []
    plan = plan_tile(tile, CorrectRequest(out=str(tmp_path / "out"), **request))
    report = run_tile(plan, on_block=lost_writer, log=logged.append)
    assert report.status == "written" and not stray.exists() and user_file.exists()
    assert any("left by a writer lost mid-chunk" in line for line in logged)
    manifest = json.loads((target / "shadeflow.json").read_text())
    on_disk = [p for p in target.rglob("*") if p.is_file() and p.name != "shadeflow.json"]
    assert manifest["n_files"] == len(on_disk)
    ours = {
        k: v
        for k, v in tree(str(target)).items()
        if not k.endswith(("shadeflow.json", "zarr.json", ".partial"))
    }
    theirs = {k: v for k, v in tree(clean.output).items() if not k.endswith(("shadeflow.json", "zarr.json"))}
    assert ours == theirs


def test_synthetic_truth_round_trip(tmp_path):
    tile, truth = make_tile(tmp_path, shape=(20, 32, 32), chunks=(10, 32, 32), quiet_fraction=0.2)
    assert read_truth(tile)["quiet_planes"] == truth["quiet_planes"] == [0, 1, 2, 3, 16, 17, 18, 19]
    data = zarr.open_array(os.path.join(tile, "0"), mode="r")[...]
    assert abs(float(data[truth["quiet_planes"]].mean()) - truth["background"]) < 1
    with pytest.raises(ValueError, match="subsequence"):
        make_tile(tmp_path, name="bad.ome.zarr", shape=(4, 4, 4), axes="yzx")


@pytest.mark.parametrize("kind", ["tiff", "zarr", "npy-per-channel"])
def test_flatfield_files_tiff_zarr_and_per_channel(tmp_path, kind):
    import tifffile

    tile, truth = make_tile(tmp_path / "in", shape=(2, 8, 48, 64), axes="czyx", chunks=(1, 8, 48, 64))
    planted = np.load(truth["flatfield"])  # (2, 48, 64)
    # arbitrary units: normalised to mean 1 per channel
    scaled = planted * np.array([300.0, 0.02])[:, None, None]
    if kind == "tiff":
        url = str(tmp_path / "ff.tif")
        tifffile.imwrite(url, scaled[0].astype(np.float32))
        expected = np.stack([scaled[0], scaled[0]])
    elif kind == "zarr":
        url = str(tmp_path / "ff.zarr")
        zarr.create_array(url, data=scaled.astype(np.float32), chunks=(1, 48, 64))
        expected = scaled
    else:
        url = str(tmp_path / "ff.npy")
        np.save(url, scaled)
        expected = scaled
    _, report = correct(tile, out=str(tmp_path / "out"), flatfield=url, background="100", levels=1)
    expected = expected.astype(np.float32) if kind != "npy-per-channel" else expected
    ff = normalised(
        np.asarray(expected, np.float64).astype(np.float32) if kind != "npy-per-channel" else expected
    )
    x = zarr.open_array(os.path.join(tile, "0"), mode="r")[...]
    out = zarr.open_array(os.path.join(report.output, "0"), mode="r")[...]
    # float32 files are normalised in float64 like the reference; compare within one count
    np.testing.assert_allclose(
        out.astype(np.int64), reference(x, 100.0, ff[:, None], "uint16").astype(np.int64), atol=1
    )
    flat = attrs(report.output)["shadeflow"]["flatfield"]
    assert flat["kind"] == "file" and len(flat["normalised_by_mean"]) == (1 if kind == "tiff" else 2)


def test_darkfield_is_subtracted_per_pixel(tmp_path):
    tile, truth = make_tile(tmp_path / "in", shape=(8, 48, 64), chunks=(8, 48, 64))
    dark = (95 + 10 * np.random.default_rng(2).random((48, 64))).astype(np.float32)
    url = str(tmp_path / "dark.npy")
    np.save(url, dark)
    _, report = correct(
        tile, out=str(tmp_path / "out"), flatfield=truth["flatfield"], darkfield=url, levels=1
    )
    x = zarr.open_array(os.path.join(tile, "0"), mode="r")[...]
    ff = normalised(np.load(truth["flatfield"]))[0]
    np.testing.assert_array_equal(
        zarr.open_array(os.path.join(report.output, "0"), mode="r")[...], reference(x, dark, ff, "uint16")
    )
    assert report.background == "darkfield dark.npy"
    assert attrs(report.output)["shadeflow"]["background"]["kind"] == "darkfield"


def test_background_fallback_is_logged_and_recorded(tmp_path):
    # sample in every plane: the rejection throws out every candidate and falls back, loudly
    tile, truth = make_tile(
        tmp_path / "in", shape=(16, 64, 64), chunks=(8, 64, 64), quiet_fraction=0.0, texture_cells=8
    )
    assert truth["quiet_planes"] == []
    messages = []
    plan = plan_tile(
        tile,
        CorrectRequest(
            out=str(tmp_path / "out"), flatfield=truth["flatfield"], background="estimate", levels=1
        ),
    )
    report = run_tile(plan, log=messages.append)
    warnings = [m for m in messages if m.startswith("WARNING ") and "fell back" in m]
    assert warnings and tile in warnings[0] and "used the candidates anyway" in warnings[0]
    channel = attrs(report.output)["shadeflow"]["background"]["channels"][0]
    assert channel["fallback"] and channel["planes"] == channel["candidates"]
    assert any("fell back" in note for note in report.notes)


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_sharded_input(tmp_path, zarr_format):
    """A sharded zarr v3 tile (as ExASPIM writes them): read and written shard by shard, the output
    sharded like the input (or plain chunks when converted to zarr v2)."""
    tile, truth = make_tile(tmp_path / "in", shape=(16, 64, 96), chunks=(4, 16, 32), shards=(8, 32, 96))
    assert zarr.open_array(os.path.join(tile, "0"), mode="r").shards == (8, 32, 96)
    plan, report = correct(
        tile,
        out=str(tmp_path / "out"),
        flatfield=truth["flatfield"],
        background="100",
        levels=3,
        zarr_format=zarr_format,
    )
    assert plan.n_blocks == 2 * 2 * 1
    out0 = zarr.open_array(os.path.join(report.output, "0"), mode="r")
    assert out0.chunks == (4, 16, 32) and out0.shards == ((8, 32, 96) if zarr_format == 3 else None)
    if zarr_format == 3:
        # 8×16×24 level: clamped
        assert zarr.open_array(os.path.join(report.output, "2"), mode="r").shards == (8, 16, 24)
    x = zarr.open_array(os.path.join(tile, "0"), mode="r")[...]
    ff = normalised(np.load(truth["flatfield"]))[0]
    np.testing.assert_array_equal(out0[...], reference(x, 100.0, ff, "uint16"))
    assert len(list(Reader(parse_url(report.output))())[0].data) == 3
