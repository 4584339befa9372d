"""The estimate job end to end: Prefect test server, a real Dask LocalCluster, TIFF / zarr / slide inputs,
the three outputs with their metadata, the table and progress artifacts, reruns and the CLI's function.

Accuracy is judged against the generators' planted truth."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile
from conftest import flow_run_artifacts

from shadeflow.core.estimate.inputs import open_images
from shadeflow.core.estimate.outputs import read_estimate
from shadeflow.core.synth.stacks import StackConfig, generate_stack


def relative_rms(estimate: np.ndarray, truth: np.ndarray) -> float:
    r = (estimate / estimate.mean()) / (truth / truth.mean())
    return float(np.sqrt(np.mean((r - 1) ** 2)))


@pytest.fixture(scope="module")
def two_channels(tmp_path_factory):
    """Four TIFF files of 10 frames × 2 channels (pages interleaved), each channel a seeded stack with
    darkfield."""
    folder = tmp_path_factory.mktemp("tiffs")
    first, truth0 = generate_stack(StackConfig(kind="sparse", size=128, n=40, seed=11))
    second, truth1 = generate_stack(StackConfig(kind="empty", size=128, n=40, seed=12))
    for f in range(4):
        pages = np.stack([first[10 * f : 10 * f + 10], second[10 * f : 10 * f + 10]], axis=1).reshape(
            20, 128, 128
        )
        tifffile.imwrite(folder / f"tile_{f:02d}.tif", pages)
    return str(folder), [truth0, truth1]


@pytest.mark.usefixtures("prefect_server")
def test_flow_writes_flatfield_darkfield_and_zarr(tmp_path, two_channels):
    from shadeflow.flows.estimate import EstimateParameters, estimate
    from shadeflow.infra.cluster import task_runner
    from shadeflow.tasks.estimate import PROFILES_KEY, TABLE_COLUMNS, TABLE_KEY

    folder, truths = two_channels
    out = str(tmp_path / "estimate")
    params = EstimateParameters(images=[folder], out=out, darkfield=True, channels=2)
    state = estimate.with_options(task_runner=task_runner(memory="4GiB", workers=1))(
        params=params, return_state=True
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result["status"] == "written"
    written = read_estimate(out)
    assert written["flatfield"].shape == (2, 128, 128) and written["flatfield"].dtype == np.float32
    assert written["flatfield_tiff"].shape == (2, 128, 128) and written["darkfield_tiff"].dtype == np.float32
    assert np.array_equal(written["flatfield_tiff"], written["flatfield"])
    for c, truth in enumerate(truths):
        assert relative_rms(written["flatfield"][c].astype(np.float64), truth["flatfield"]) < 0.015
        # 128² frames are 2×2-px blocks: the darkfield is good to a few counts here (≈0.5 at 1024², see
        # bench/estimate.py)
        assert np.sqrt(np.mean((written["darkfield"][c] - truth["darkfield"]) ** 2)) < 8.0
        assert written["flatfield"][c].mean() == pytest.approx(1.0, abs=1e-3)
    assert written["baseline"].shape == (2, 40)
    attrs = written["attrs"]
    assert attrs["method"].startswith("shadeflow floor regression")
    assert attrs["parameters"]["darkfield"] is True and attrs["parameters"]["channels"] == 2
    assert attrs["inputs"] == [folder] and attrs["shadeflow_version"]
    assert [c["channel"] for c in attrs["channels"]] == ["channel 0", "channel 1"]
    manifest = json.loads((tmp_path / "estimate" / "shadeflow.json").read_text())
    assert manifest["kind"] == "estimate" and {
        "flatfield.tiff",
        "darkfield.tiff",
        "estimate.zarr/zarr.json",
    } <= set(manifest["files"])
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p]

    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    table = next(a for a in artifacts if a.key == TABLE_KEY)
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["channel"] for r in rows] == ["channel 0", "channel 1"] and set(TABLE_COLUMNS) <= set(rows[0])
    assert all(r["frames"] == 40 for r in rows)
    progress = [a for a in artifacts if a.type == "progress"]
    assert sorted(a.description for a in progress) == ["channel 0 frames: 40/40", "channel 1 frames: 40/40"]
    page = next(a for a in artifacts if a.key == PROFILES_KEY).data  # the profiles as images
    assert page.count("](data:image/png;base64,") == 4, page[:300]  # flatfield and darkfield per channel
    assert "## channel 0" in page and "## channel 1" in page

    before = (tmp_path / "estimate" / "shadeflow.json").read_text()
    again = estimate.with_options(task_runner=task_runner(memory="4GiB", workers=1))(params=params)
    assert again["status"] == "skipped"
    assert (tmp_path / "estimate" / "shadeflow.json").read_text() == before
    with pytest.raises(FileExistsError, match="rerun with --overwrite"):
        estimate.with_options(task_runner=task_runner(memory="4GiB", workers=1))(
            params=EstimateParameters(images=[folder], out=out, darkfield=False, channels=2)
        )


@pytest.mark.usefixtures("prefect_server")
def test_command_runs_with_a_progress_bar(tmp_path, capsys):
    from shadeflow.core.synth.stacks import write_stack
    from shadeflow.flows.estimate import estimate_command

    written = write_stack(
        str(tmp_path / "stack"),
        StackConfig(kind="sparse", size=64, n=24, darkfield=False, seed=4),
        fmt="zarr",
    )
    result = estimate_command(images=[written["images"]], out=str(tmp_path / "out"), memory="4GiB", workers=1)
    assert result["status"] == "written" and "frames" in capsys.readouterr().out
    flat = read_estimate(str(tmp_path / "out"))["flatfield"][0]
    assert relative_rms(flat.astype(np.float64), np.load(written["flatfield"])) < 0.015


def test_zarr_input_equals_the_in_memory_estimate(tmp_path):
    import zarr

    from shadeflow.core.estimate.chunked import estimate_shading_dask
    from shadeflow.core.estimate.estimator import estimate_shading

    images, _ = generate_stack(StackConfig(kind="sparse", size=64, n=30, seed=5))
    group = zarr.open_group(str(tmp_path / "plate.zarr"), mode="w")
    group.create_array("raw", data=images[:, None], chunks=(4, 1, 64, 64))  # (N, C, H, W)
    stack = open_images([str(tmp_path / "plate.zarr")], component="raw")
    assert (stack.n_frames, stack.n_channels, stack.shape, stack.kind) == (30, 1, (64, 64), "zarr")
    lazy = estimate_shading_dask(stack.channel(0))
    assert np.array_equal(lazy.flatfield, estimate_shading(images).flatfield)


def test_slide_fields_are_the_frames_and_layers_the_channels(small_cohort):
    """A synthetic slide (slide contract): its fields estimate each layer's planted flatfield, with the
    slide's dark current as the known darkfield."""
    from shadeflow.core.estimate.chunked import estimate_shading_dask
    from shadeflow.core.synth.slides import read_truth_flatfield

    slide = small_cohort["urls"][0]
    stack = open_images([slide])
    h, w, n_layers = small_cohort["config"].shape
    assert (stack.n_frames, stack.n_channels, stack.shape, stack.kind) == (48, n_layers, (h, w), "slide")
    assert stack.known_darkfield == small_cohort["config"].dark_current
    truth = read_truth_flatfield(small_cohort["root"], (h, w, n_layers))
    for layer in (0, n_layers - 1):
        result = estimate_shading_dask(stack.channel(layer), known_darkfield=stack.known_darkfield)
        error = relative_rms(result.flatfield.astype(np.float64), truth[layer])
        assert error < 0.02, f"layer {layer + 1}: {error:.2%}"


def test_tiffs_from_s3_and_outputs_to_s3(s3_bucket, tmp_path):
    """Inputs read from and outputs written to an S3 server on 127.0.0.1; the output appears complete only at
    the end."""
    from shadeflow.core.estimate.chunked import estimate_shading_dask
    from shadeflow.core.estimate.outputs import write_estimate
    from shadeflow.core.io import storage

    images, truth = generate_stack(StackConfig(kind="sparse", size=64, n=24, darkfield=False, seed=8))
    for f in range(2):
        buffer = tmp_path / f"part{f}.tif"
        tifffile.imwrite(buffer, images[12 * f : 12 * f + 12])
        storage.write_bytes(f"s3://{s3_bucket}/in/part{f}.tif", buffer.read_bytes())
    stack = open_images([f"s3://{s3_bucket}/in"])
    assert (
        stack.files == [f"s3://{s3_bucket}/in/part0.tif", f"s3://{s3_bucket}/in/part1.tif"]
        and stack.n_frames == 24
    )
    result = estimate_shading_dask(stack.channel(0))
    out = f"s3://{s3_bucket}/estimate"
    manifest = write_estimate(out, [result], stack.channel_names, {"darkfield": False}, stack.inputs)
    assert manifest["kind"] == "estimate" and storage.exists(f"{out}/shadeflow.json")
    written = read_estimate(out)
    assert np.array_equal(written["flatfield"][0], result.flatfield)
    assert relative_rms(written["flatfield_tiff"].astype(np.float64), truth["flatfield"]) < 0.02
