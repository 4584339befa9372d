"""Hostile and damaged input to ``correct``: names that escape ``--out``, missing chunks, non-finite
voxels, odd flatfield TIFFs, empty axes, credentials in URLs, and storage that is down or absent.

Each case is a real tile on local disk or on the loopback S3 server; the command-line cases run the
real command in a subprocess (``test_cli_errors.expect_error``: one ``error:`` line, exit 2, no
traceback, nothing started or written).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tifffile
import zarr
from conftest import _free_port, tree
from correct_support import make_tile
from test_cli import clean_env
from test_cli_errors import expect_error, run

from shadeflow.core.correct.flatfield_sources import FlatfieldError, read_field_file
from shadeflow.core.correct.tile import (
    CorrectRequest,
    check_distinct_outputs,
    output_url,
    plan_tile,
    run_tile,
    tile_name,
)
from shadeflow.core.errors import InputError
from shadeflow.core.io import storage
from shadeflow.core.io.omezarr import TileError

SHAPE, CHUNKS = (12, 48, 64), (6, 48, 64)
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYzSECRET"


@pytest.fixture
def case(tmp_path):
    """A small uint16 tile and its planted flatfield in ``<tmp>/in``; output to ``<tmp>/out``."""
    tile, truth = make_tile(tmp_path / "in", shape=SHAPE, chunks=CHUNKS)
    return {
        "tile": tile,
        "flatfield": truth["flatfield"],
        "in": tmp_path / "in",
        "out": str(tmp_path / "out"),
        "tmp": tmp_path,
    }


def request(case, **changes) -> CorrectRequest:
    return CorrectRequest(
        **{"out": case["out"], "flatfield": case["flatfield"], "background": "100", "levels": 2, **changes}
    ).check()


def s3_env(endpoint: str) -> dict[str, str]:
    return clean_env(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )


# ----------------------------------------------------------------------------------------------
# 1. a tile's name decides what may be removed


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/evil/..",
        "s3://bucket/evil/../",
        "s3://bucket/evil/.",
        "s3://bucket/a\\b",
        "s3://bucket/a\0b",
        "/",
    ],
)
def test_tile_names_that_cannot_name_an_output_are_refused(url):
    with pytest.raises(TileError, match=r"cannot name an output folder under --out") as info:
        output_url("/data/out", url)
    assert str(info.value).startswith("tile ")
    with pytest.raises(TileError):
        check_distinct_outputs([url], "/data/out")


def test_plain_tile_names_are_direct_children_of_out():
    assert tile_name("s3://bucket/tiles/t1.ome.zarr/") == "t1.ome.zarr"
    assert output_url("/data/out", "s3://bucket/tiles/t1.ome.zarr") == "/data/out/t1.ome.zarr"
    assert output_url("s3://bucket/out/", "/data/in/t.zarr") == "s3://bucket/out/t.zarr"


def test_dotdot_tile_on_s3_is_refused_before_anything_is_removed(tmp_path, s3_server, s3_bucket):
    # a real tile stored under the literal key prefix "evil/..": it opens, so only its name can stop it
    make_tile(f"s3://{s3_bucket}/evil", "..", shape=SHAPE, chunks=CHUNKS)
    tile = f"s3://{s3_bucket}/evil/.."
    sandbox = tmp_path / "sandbox"
    (sandbox / "out").mkdir(parents=True)
    (sandbox / "precious.txt").write_text("the parent of --out")
    (sandbox / "out" / "other-result.txt").write_text("an earlier result")
    flat = tmp_path / "flat.npy"
    np.save(flat, np.ones(SHAPE[1:]))
    args = [
        "correct",
        tile,
        "--out",
        str(sandbox / "out"),
        "--flatfield",
        str(flat),
        "--background",
        "100",
        "--levels",
        "1",
        "--overwrite",
    ]
    line = expect_error(
        tmp_path, args, tile, "cannot name an output folder", untouched=[sandbox], env=s3_env(s3_server)
    )
    assert line.startswith(f"error: tile {tile}: ")


def test_run_tile_writes_and_removes_only_a_direct_child_of_out(case):
    plan = plan_tile(case["tile"], request(case))
    sandbox = case["tmp"] / "sandbox"
    (sandbox / "out").mkdir(parents=True)
    (sandbox / "precious.txt").write_text("keep")
    before = tree(sandbox)
    for output in (str(sandbox / "out" / ".."), str(sandbox), str(sandbox / "out")):
        hostile = dataclasses.replace(plan, out=str(sandbox / "out"), output=output, action="replace")
        with pytest.raises(TileError, match="is not a folder directly inside --out"):
            run_tile(hostile)
    assert tree(sandbox) == before


# ----------------------------------------------------------------------------------------------
# 2. missing chunks


def drop_chunk(tile: str, key: str) -> None:
    os.remove(os.path.join(tile, "0", *key.split("/")))


@pytest.mark.parametrize("zarr_format, key", [(3, "c/1/0/0"), (2, "1/0/0")])
def test_a_missing_chunk_is_refused_naming_the_tile_and_the_chunk(case, zarr_format, key):
    tile, _ = make_tile(
        case["in"], f"v{zarr_format}.ome.zarr", shape=SHAPE, chunks=CHUNKS, zarr_format=zarr_format
    )
    drop_chunk(tile, key)
    for background in ("100", "estimate"):
        with pytest.raises(TileError) as info:
            plan_tile(tile, request(case, background=background))
        message = str(info.value)
        assert message.startswith(f"tile {tile}: level 0 lacks 1 of its 2 chunks ({key})"), message
        assert "fill value 0" in message and "--allow-missing-chunks" in message


def test_a_missing_chunk_on_s3_is_refused(case, s3_server, s3_bucket):
    import boto3

    tile, _ = make_tile(f"s3://{s3_bucket}/in", "t.ome.zarr", shape=SHAPE, chunks=CHUNKS)
    boto3.client("s3", endpoint_url=s3_server).delete_object(Bucket=s3_bucket, Key="in/t.ome.zarr/0/c/0/0/0")
    with pytest.raises(TileError, match=r"t\.ome\.zarr: level 0 lacks 1 of its 2 chunks \(c/0/0/0\)"):
        plan_tile(tile, request(case))


def test_allow_missing_chunks_reads_the_fill_value_and_records_it(case):
    drop_chunk(case["tile"], "c/1/0/0")
    with pytest.raises(TileError, match="lacks 1 of its 2 chunks"):
        plan_tile(case["tile"], request(case))
    plan = plan_tile(case["tile"], request(case, allow_missing_chunks=True))
    report = run_tile(plan)
    assert report.status == "written" and any("read as the fill value 0" in n for n in report.notes)
    out = zarr.open_group(report.output, mode="r")
    assert not np.asarray(out["0"][6:]).any() and np.asarray(out["0"][:6]).any()
    assert out.attrs["shadeflow"]["source"]["missing_chunks_read_as_fill_value"] == {"0": 1}


# ----------------------------------------------------------------------------------------------
# 3. non-finite voxels, odd flatfield TIFFs, empty axes


def float_tile(case, value=np.nan, at=(8, 0, 0), name="float.ome.zarr") -> str:
    tile, _ = make_tile(case["in"], name, shape=SHAPE, chunks=CHUNKS, dtype="float32")
    array = zarr.open_array(os.path.join(tile, "0"), mode="r+")
    array[at] = value
    return tile


@pytest.mark.parametrize("background", ["estimate", "100"])
def test_non_finite_voxels_fail_the_tile_naming_where_and_leave_no_output(case, background):
    tile = float_tile(case)
    plan = plan_tile(tile, request(case, background=background))
    with pytest.raises(TileError) as info:
        run_tile(plan)
    message = str(info.value)
    assert message.startswith(f"tile {tile}") and "non-finite" in message and "z=8, y=0, x=0" in message, (
        message
    )
    if background == "100":  # found as the chunk streamed through the correction
        assert "the chunk at z 6–11, y 0–47, x 0–63 holds 1 non-finite value" in message
    assert not os.path.exists(plan.output)


@pytest.mark.usefixtures("prefect_server")
def test_non_finite_voxels_fail_the_flow_run_for_that_tile(case):
    from shadeflow.core.errors import RunFailed as TilesFailed
    from shadeflow.flows.correct import CorrectParameters, correct
    from shadeflow.infra.cluster import task_runner

    tile = float_tile(case, at=(2, 40, 60))
    params = CorrectParameters(
        tiles=[tile], out=case["out"], flatfield=case["flatfield"], background="100", levels=2
    )
    with pytest.raises(
        TilesFailed,
        match=r"tile .*float\.ome\.zarr level 0: the chunk at z 0–5, y 0–47, x 0–63 holds 1 non-finite "
        r"value .* first at z=2, y=40, x=60",
    ):
        correct.with_options(task_runner=task_runner(memory="4GiB", workers=1))(params=params)
    assert not os.path.exists(os.path.join(case["out"], "float.ome.zarr"))


def test_non_finite_voxels_are_named_by_the_flatfield_estimate_too(case):
    tile = float_tile(case, value=np.inf, at=(5, 3, 4))
    with pytest.raises(TileError, match=r"non-finite values \(NaN or ±inf\) in plane z=5") as info:
        run_tile(plan_tile(tile, request(case, flatfield=None, method="estimate")))
    assert "no plane is brighter" not in str(info.value)


def test_flatfield_tiff_with_pages_of_different_shapes_is_refused(case):
    path = case["in"] / "pages.tif"
    tifffile.imwrite(path, np.ones(SHAPE[1:], np.float32))
    tifffile.imwrite(path, np.ones((24, 32), np.float32), append=True)
    with pytest.raises(
        FlatfieldError, match=r"pages.tif: its 2 pages have different shapes \(48×64, 24×32\)"
    ):
        read_field_file(str(path))
    with pytest.raises(FlatfieldError, match=f"tile {case['tile']}: flatfield file .*pages.tif: its 2 pages"):
        plan_tile(case["tile"], request(case, flatfield=str(path)))


def test_flatfield_tiff_written_page_by_page_is_read_whole(case):
    path = case["in"] / "two.tif"
    tifffile.imwrite(path, np.full(SHAPE[1:], 1.0, np.float32))
    tifffile.imwrite(path, np.full(SHAPE[1:], 2.0, np.float32), append=True)
    data = read_field_file(str(path))
    assert data.shape == (2, *SHAPE[1:]) and data[1].mean() == 2.0
    # no longer silently the first page
    with pytest.raises(FlatfieldError, match="holds 2 fields but the tile has 1 channel"):
        plan_tile(case["tile"], request(case, flatfield=str(path)))


@pytest.mark.parametrize("shape, axis", [((12, 0, 64), "y"), ((0, 48, 64), "z")])
def test_a_zero_length_axis_is_refused_up_front(case, shape, axis):
    url = str(case["in"] / f"empty-{axis}.ome.zarr")
    group = zarr.create_group(url, zarr_format=3)
    group.create_array("0", shape=shape, dtype="uint16", chunks=(6, 48, 64))
    group.attrs.update(zarr.open_group(case["tile"], mode="r").attrs.asdict())
    for background in ("100", "estimate"):
        with pytest.raises(TileError, match=f"tile {url}: zero-length axis {axis} at level 0"):
            plan_tile(url, request(case, levels=1, background=background))
    assert not os.path.exists(case["out"])


# ----------------------------------------------------------------------------------------------
# 4. credentials in URLs


def no_secret_anywhere(folder) -> None:
    for dirpath, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as handle:
                assert SECRET.encode() not in handle.read(), os.path.join(dirpath, name)


@pytest.mark.parametrize("where", ["tile", "--out", "--flatfield"])
def test_correct_refuses_credentials_in_urls_without_echoing_them(tmp_path, case, where):
    hostile = f"s3://AKIAEXAMPLE:{SECRET}@bucket/data/x.ome.zarr"
    tiles, out, flat = [case["tile"]], case["out"], case["flatfield"]
    if where == "tile":
        tiles = [hostile]
    elif where == "--out":
        out = hostile
    else:
        flat = hostile
    result, report = run(
        tmp_path, "correct", *tiles, "--out", out, "--flatfield", flat, "--background", "100"
    )
    assert result.returncode == 2 and not report["modules"] and not report["started"]
    assert SECRET not in result.stdout + result.stderr and "AKIAEXAMPLE" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {where} s3://***@bucket/data/x.ome.zarr: credentials in the URL are refused (they would "
        "end up in logs and in the run's records); "
        "remove them and give credentials through the environment (AWS_ACCESS_KEY_ID / "
        "AWS_SECRET_ACCESS_KEY) or a profile (AWS_PROFILE)"
    )
    assert not os.path.exists(case["out"])
    no_secret_anywhere(tmp_path)


def test_every_verb_refuses_credentials_in_urls(tmp_path):
    hostile = f"s3://KEY:{SECRET}@bucket/folder"
    out = str(tmp_path / "out")
    for args in (
        ["estimate", hostile, "--out", out],
        ["estimate", str(tmp_path), "--out", hostile],
        ["meanimage", hostile],
        ["model", "list", "--store", hostile],
        ["model", "build", "--version", "v1", "--models-csv", str(tmp_path / "m.csv"), "--root", hostile],
        ["applied-test", "--root", str(tmp_path), "--out", hostile],
        ["model", "compare", "--root", hostile],
    ):
        line = expect_error(
            tmp_path, args, "s3://***@bucket/folder", "credentials in the URL are refused", absent=[out]
        )
        assert SECRET not in line
    no_secret_anywhere(tmp_path)


def test_the_flow_parameters_refuse_credentials_too():
    from pydantic import ValidationError

    from shadeflow.flows.correct import CorrectParameters

    for hostile in ({"out": f"s3://K:{SECRET}@bucket/out"}, {"tiles": [f"s3://K:{SECRET}@bucket/t.zarr"]}):
        with pytest.raises(ValidationError) as info:
            CorrectParameters(
                **{"tiles": ["/data/t.zarr"], "out": "/data/out", "flatfield": "/data/f.npy", **hostile}
            )
        assert "credentials in the URL are refused" in str(info.value) and "s3://***@bucket/" in str(
            info.value
        )


# ----------------------------------------------------------------------------------------------
# 5. storage errors are the storage's, and named up front


def test_missing_output_bucket_is_named_up_front_with_an_s3_tile(tmp_path, case, s3_server, s3_bucket):
    tile, _ = make_tile(f"s3://{s3_bucket}/in", "t.ome.zarr", shape=SHAPE, chunks=CHUNKS)
    line = expect_error(
        tmp_path,
        ["correct", tile, "--out", "s3://no-such-out-bucket/out", "--flatfield", case["flatfield"]],
        env=s3_env(s3_server),
    )
    assert line.startswith(
        "error: --out s3://no-such-out-bucket/out: bucket 'no-such-out-bucket' does not exist"
    ), line
    assert "tile" not in line


@pytest.mark.parametrize("where", ["tile", "--out"])
def test_an_unreachable_endpoint_is_named_as_such_and_quickly(tmp_path, case, where):
    closed = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    tile = "s3://bucket-x/in/t.ome.zarr" if where == "tile" else case["tile"]
    out = "s3://bucket-x/out" if where == "--out" else case["out"]
    line = expect_error(
        tmp_path,
        ["correct", tile, "--out", out, "--flatfield", case["flatfield"], "--background", "100"],
        env=s3_env(closed),
    )
    named = tile if where == "tile" else out
    assert line.startswith(
        f"error: {where} {named}: bucket 'bucket-x': the storage endpoint cannot be reached"
    ), line
    assert "not an OME-Zarr image" not in line and "does not exist" not in line


def test_up_front_bucket_probes_make_one_attempt_not_seconds_of_retries(monkeypatch):
    """Why an unreachable endpoint fails quickly (speed itself is not asserted: no timed tests): the
    probe's client makes a single attempt, in botocore and in s3fs's own loop, with short timeouts."""
    from shadeflow.core.io import storage

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    fs = storage._probe_filesystem("s3://bucket-x/out")
    assert fs.retries == 1
    config = fs.config_kwargs
    assert config["retries"]["total_max_attempts"] == 1 and config["connect_timeout"] <= 5


def test_a_missing_input_bucket_is_not_called_a_format_problem(tmp_path, case, s3_server):
    line = expect_error(
        tmp_path,
        [
            "correct",
            "s3://no-such-in-bucket/t.ome.zarr",
            "--out",
            case["out"],
            "--flatfield",
            case["flatfield"],
        ],
        env=s3_env(s3_server),
    )
    assert (
        "tile s3://no-such-in-bucket/t.ome.zarr: bucket 'no-such-in-bucket' does not exist" in line
        and "not an OME-Zarr" not in line
    )


def test_refused_credentials_are_called_access_denied():
    from botocore.exceptions import ClientError, NoCredentialsError

    denied = ClientError(
        {
            "Error": {
                "Code": "InvalidAccessKeyId",
                "Message": "The AWS Access Key Id you provided does not exist",
            }
        },
        "GetObject",
    )
    wrapped = PermissionError("The AWS Access Key Id you provided does not exist")
    wrapped.__cause__ = denied
    assert storage.storage_problem(wrapped) == "access denied (InvalidAccessKeyId)"
    assert (
        storage.storage_problem(ClientError({"Error": {"Code": "403"}}, "HeadBucket"))
        == "access denied (403)"
    )
    assert storage.storage_problem(NoCredentialsError()).startswith("no usable AWS credentials")
    assert (
        storage.storage_problem(ClientError({"Error": {"Code": "NoSuchBucket"}}, "GetObject"))
        == "the bucket does not exist"
    )
    assert storage.storage_problem(ValueError("bad JSON")) is None


@pytest.mark.usefixtures("prefect_server")
def test_the_flow_checks_the_output_bucket_before_planning(case, s3_server):
    from shadeflow.flows.correct import CorrectParameters, correct
    from shadeflow.infra.cluster import task_runner

    before = tree(case["tmp"])
    params = CorrectParameters(
        tiles=[case["tile"]],
        out="s3://no-such-flow-bucket/out",
        flatfield=case["flatfield"],
        background="100",
    )
    with pytest.raises(
        InputError, match=r"^--out s3://no-such-flow-bucket/out: bucket 'no-such-flow-bucket' does not exist"
    ):
        correct.with_options(task_runner=task_runner(memory="4GiB", workers=1))(params=params)
    assert tree(case["tmp"]) == before
