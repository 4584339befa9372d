"""The correct flow end to end: Prefect test server, a real Dask LocalCluster, an S3 server on
127.0.0.1 with ``s3://`` input and output, the table and progress artifacts, and the CLI's function."""

from __future__ import annotations

import os

import boto3
import numpy as np
import pytest
import zarr
from conftest import flow_run_artifacts
from correct_support import make_tile, reference
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader

from shadeflow.core.io import storage
from shadeflow.flows.correct import CorrectParameters, correct, correct_command
from shadeflow.infra.cluster import task_runner
from shadeflow.tasks.correct import PROFILES_KEY, TABLE_COLUMNS, TABLE_KEY

pytestmark = pytest.mark.usefixtures("prefect_server")


def run_flow(**params):
    return correct.with_options(task_runner=task_runner(memory="4GiB", workers=1))(
        params=CorrectParameters(**params)
    )


def objects(endpoint: str, bucket: str) -> dict[str, str]:
    client = boto3.client("s3", endpoint_url=endpoint)
    listing = client.list_objects_v2(Bucket=bucket)
    return {o["Key"]: o["ETag"] for o in listing.get("Contents", [])}


def read_s3(url: str) -> np.ndarray:
    return zarr.open_array(url, mode="r", storage_options=storage.storage_options(url))[...]


def test_two_tiles_s3_in_and_out(s3_server, s3_bucket):
    root = f"s3://{s3_bucket}"
    tile_a, truth = make_tile(
        f"{root}/in", "a.ome.zarr", shape=(16, 64, 96), chunks=(8, 32, 32), zarr_format=2
    )
    tile_b, _ = make_tile(
        f"{root}/in", "b.ome.zarr", shape=(2, 16, 64, 96), axes="czyx", chunks=(1, 8, 32, 32), seed=3
    )
    before = objects(s3_server, s3_bucket)
    reports = run_flow(
        tiles=[tile_a, tile_b], out=f"{root}/out", flatfield=truth["flatfield"], background="100", levels=3
    )

    assert [r["status"] for r in reports] == ["written", "written"]
    after = objects(s3_server, s3_bucket)
    assert {k: v for k, v in after.items() if k.startswith("in/")} == before  # inputs untouched
    assert "out/a.ome.zarr/shadeflow.json" in after and "out/b.ome.zarr/shadeflow.json" in after
    assert "out/a.ome.zarr/.zattrs" in after and "out/b.ome.zarr/zarr.json" in after  # formats kept

    ff = np.load(__import__("io").BytesIO(storage.read_bytes(truth["flatfield"]))).astype(np.float64)
    ff = (ff / ff.mean()).astype(np.float32)[0]
    np.testing.assert_array_equal(
        read_s3(f"{root}/out/a.ome.zarr/0"), reference(read_s3(f"{tile_a}/0"), 100.0, ff, "uint16")
    )
    nodes = list(Reader(parse_url(f"{root}/out/b.ome.zarr"))())
    assert [d.shape for d in nodes[0].data] == [(2, 16, 64, 96), (2, 16, 32, 48), (2, 8, 16, 24)]
    assert nodes[0].metadata["channel_names"] == ["ch0", "ch1"]

    # a rerun skips both complete tiles
    again = run_flow(
        tiles=[tile_a, tile_b], out=f"{root}/out", flatfield=truth["flatfield"], background="100", levels=3
    )
    assert [r["status"] for r in again] == ["skipped", "skipped"]
    assert objects(s3_server, s3_bucket) == after


def test_table_and_progress_artifacts(tmp_path):
    tile, truth = make_tile(tmp_path / "in", shape=(16, 64, 64), chunks=(8, 32, 32))
    state = correct.with_options(task_runner=task_runner(memory="4GiB", workers=1))(
        params=CorrectParameters(
            tiles=[tile], out=str(tmp_path / "out"), method="estimate", background="estimate", levels=2
        ),
        return_state=True,
    )
    assert state.is_completed()
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    table = next(a for a in artifacts if a.key == TABLE_KEY)
    import json

    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert len(rows) == 1 and set(TABLE_COLUMNS) <= set(rows[0])
    row = rows[0]
    assert row["tile"] == tile and row["shape"] == "16×64×64 uint16" and row["status"] == "written"
    assert row["flatfield source"].startswith("estimate") and row["background"].startswith("estimate")
    assert row["seconds"] > 0 and row["MB/s"] > 0
    progress = [a for a in artifacts if a.type == "progress"]
    assert progress and progress[0].description.endswith("8/8")  # 2 × 2 × 2 chunks of level 0
    page = next(a for a in artifacts if a.key == PROFILES_KEY).data
    assert "estimated from the tile itself" in page


def test_correct_command_runs_with_progress_bar(tmp_path, capsys):
    tile, truth = make_tile(tmp_path / "in", shape=(8, 64, 64), chunks=(8, 32, 32))
    reports = correct_command(
        tiles=[tile],
        out=str(tmp_path / "out"),
        flatfield=truth["flatfield"],
        background="none",
        levels=2,
        memory="4GiB",
        workers=1,
    )
    assert reports[0]["status"] == "written" and os.path.exists(
        os.path.join(reports[0]["output"], "shadeflow.json")
    )
    assert "chunks" in capsys.readouterr().out  # the bar's label


def test_a_tile_that_fails_while_running_leaves_no_output(tmp_path):
    """Errors found in the data (here: no sample to estimate a flatfield from) fail that tile only,
    before its output is touched; the other tile is written."""
    from shadeflow.core.errors import RunFailed as TilesFailed

    empty, _ = make_tile(
        tmp_path / "in", "empty.ome.zarr", shape=(12, 64, 64), chunks=(6, 64, 64), signal=0.0
    )
    good, _ = make_tile(tmp_path / "in", "good.ome.zarr", shape=(12, 64, 64), chunks=(6, 64, 64))
    with pytest.raises(
        TilesFailed, match=r"empty.ome.zarr channel 0: no plane is brighter than the background"
    ) as info:
        run_flow(
            tiles=[empty, good], out=str(tmp_path / "out"), method="estimate", background="100", levels=1
        )
    assert "good.ome.zarr" not in str(info.value)
    assert sorted(os.listdir(tmp_path / "out")) == ["good.ome.zarr"]
    assert os.path.exists(tmp_path / "out" / "good.ome.zarr" / "shadeflow.json")


def test_parameters_validate_before_anything_runs():
    with pytest.raises(ValueError, match="exactly one flatfield source"):
        CorrectParameters(tiles=["a"], out="o", flatfield="f.npy", method="estimate")
    with pytest.raises(ValueError, match="--model needs --store"):
        CorrectParameters(tiles=["a"], out="o", model="v1")
    with pytest.raises(ValueError, match="need --model"):
        CorrectParameters(tiles=["a"], out="o", flatfield="f.npy", layer=2)
    with pytest.raises(ValueError, match="CHANNEL=LAYER"):
        CorrectParameters(tiles=["a"], out="o", model="v1", store="s", channel_map="dapi")
    with pytest.raises(ValueError, match="not 'estimate', 'none', a number"):
        CorrectParameters(tiles=["a"], out="o", method="estimate", background="dark")
    with pytest.raises(ValueError, match="--darkfield or --background"):
        CorrectParameters(tiles=["a"], out="o", method="estimate", background="100", darkfield="d.tif")
