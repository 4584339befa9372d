"""Errors a person can read (issue 10, item 6): every verb, on an expected error, prints exactly one
line ``error: <which input>: <what was wrong>[; <what to do>]`` on stderr, without a traceback, exits
with 2, writes nothing — and fails before Prefect's API server or a Dask cluster starts.

Each case runs the real command in a subprocess that reports which modules it had imported when it
exited and whether it bound a socket or started a process (an API server or a cluster would): a
missing path or an unknown model version must fail before ``prefect`` or ``distributed`` is even
imported (that is what makes it fail in about a second; wall-clock times are in the issue, not
asserted here). Errors in option values that the flows' parameter models check may import Prefect,
but must still come before anything is started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import tifffile
from cli_zygote import run_code
from conftest import tree
from correct_support import make_model, make_tile
from test_cli import clean_env

#: imported by the flows, never by a command's first checks
HEAVY = ("prefect", "prefect_dask", "distributed")
#: audit events of starting something: an API server or a scheduler binds a socket; workers are processes
STARTING = ("socket.bind", "subprocess.Popen", "os.fork", "os.posix_spawn")

RUNNER = """
import glob, json, os, sys
started, prelaunched = [], []
def audit(event, args):
    # the process that imports Prefect's server while the command checks its input starts nothing
    # itself (no socket, no database: test_api_server_early.py); it must be gone when the command ends
    if event == "subprocess.Popen" and "serve_when_told" in " ".join(map(str, args[1] or ())):
        prelaunched.append(event)
    # urllib3 binds ('::1', 0) when imported, to learn whether IPv6 works; that starts nothing
    elif event in %r and not (event == "socket.bind" and args[1:] == (("::1", 0),)):
        started.append(event)
sys.addaudithook(audit)
from shadeflow.flows.cli import main
sys.argv = ["shadeflow", *sys.argv[1:]]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
finally:
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in %r)
    children = []
    for f in glob.glob("/proc/self/task/*/children"):
        try:  # a thread that ended since the glob has no file any more
            children += open(f).read().split()
        except OSError:
            pass
    with open(os.environ["SHADEFLOW_TEST_REPORT"], "w") as handle:
        json.dump({"modules": heavy, "started": sorted(set(started)), "prelaunched": len(prelaunched),
                   "children": children}, handle)
sys.exit(code)
""" % (STARTING, HEAVY)  # noqa: UP031 — the template is Python source full of braces


def run(tmp_path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """``shadeflow ARGS…`` in a process of its own (a fork of a pre-imported command line:
    ``cli_zygote``); returns the result and what it had imported and started by its end."""
    report = tmp_path / f"report-{len(list(tmp_path.glob('report-*')))}.json"
    environment = {**(env or clean_env()), "SHADEFLOW_TEST_REPORT": str(report)}
    result = run_code(RUNNER, list(args), environment, tmp_path, timeout=300)
    return result, json.loads(report.read_text())


def expect_error(
    tmp_path, args: list[str], *names: str, untouched=(), absent=(), light: bool = True, env=None
) -> str:
    """Run the command; expect exit code 2 and one ``error:`` line naming ``names``, no traceback,
    ``absent`` paths not created and ``untouched`` folders byte-identical. ``light``: not even Prefect
    or distributed imported; in any case, nothing started."""
    before = {str(p): tree(p) for p in untouched}
    result, report = run(tmp_path, *args, env=env)
    lines = result.stderr.splitlines()
    problems = []
    if result.returncode != 2:
        problems.append(f"exit code {result.returncode}, expected 2")
    if len(lines) != 1 or not lines[0].startswith("error: "):
        problems.append(f"stderr is not one 'error:' line: {result.stderr!r}")
    for name in names:
        if name not in result.stderr:
            problems.append(f"the error does not name {name!r}: {result.stderr!r}")
    if "Traceback" in result.stderr + result.stdout:
        problems.append("a traceback was printed")
    if light and report["modules"]:
        problems.append(f"imported before failing: {report['modules'][:5]}")
    if report["started"]:
        problems.append(f"started something before failing: {report['started']}")
    if report["children"]:
        problems.append(
            f"left {len(report['children'])} process(es) running (of {report['prelaunched']} prelaunched)"
        )
    problems += [f"{p} was written" for p in absent if os.path.exists(p)]
    problems += [f"{p} changed" for p in untouched if tree(p) != before[str(p)]]
    assert not problems, "\n".join(problems)
    return lines[0]


# ----------------------------------------------------------------------------------------------
# inputs


@pytest.fixture
def tile(tmp_path):
    """A small OME-Zarr tile and its planted flatfield under ``<tmp>/in``; outputs go to ``<tmp>/out``."""
    url, truth = make_tile(tmp_path / "in", shape=(12, 48, 64), chunks=(6, 48, 64))
    return {"url": url, "flatfield": truth["flatfield"], "in": tmp_path / "in", "out": tmp_path / "out"}


@pytest.fixture
def store(tile):
    """A model store holding versions v1 and v2."""
    folder = str(tile["in"] / "store")
    for version in ("v1", "v2"):
        make_model(folder, version, np.ones((1, 48, 64)), {"all": [1, 1]})
    return folder


@pytest.fixture
def frames(tmp_path):
    """A folder of 10 small TIFF frames."""
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        tifffile.imwrite(folder / f"f{i:02d}.tif", rng.integers(100, 1000, (32, 32)).astype(np.uint16))
    return folder


@pytest.fixture
def models_csv(tmp_path):
    path = tmp_path / "models" / "AstroPathFlatfieldModels.csv"
    path.parent.mkdir()
    path.write_text("version,Project,Cohort,BatchID,SlideID\nv1,1,1,1,SYN1_1\n")
    return path


def a_file(tmp_path, name="taken") -> str:
    path = tmp_path / name
    path.write_text("not a folder")
    return str(path)


# ----------------------------------------------------------------------------------------------
# meanimage, model, applied-test


def test_meanimage_missing_slide(tmp_path):
    line = expect_error(
        tmp_path,
        ["meanimage", str(tmp_path / "cohort" / "NOPE_7")],
        "NOPE_7",
        "slide.json",
        absent=[tmp_path / "cohort"],
    )
    assert line.startswith("error: slide NOPE_7: ")


def test_meanimage_slide_without_bulk_fields_is_refused_before_anything_starts(tmp_path, meanimage_cohort):
    """Only the first row of fields: none has 8 overlapping neighbours, nothing to stack. The layout is
    in fields.csv, so the command says so before Prefect or Dask start (the flow found it after ~1 min)."""
    import csv as csvlib

    slide = tmp_path / "cohort" / os.path.basename(meanimage_cohort["urls"][0])
    shutil.copytree(meanimage_cohort["urls"][0], slide, ignore=shutil.ignore_patterns("meanimage"))
    with open(slide / "fields.csv", newline="") as handle:
        reader = csvlib.DictReader(handle)
        header, rows = reader.fieldnames, list(reader)
    top = min(float(r["cy"]) for r in rows)
    with open(slide / "fields.csv", "w", newline="") as handle:
        writer = csvlib.DictWriter(handle, header)
        writer.writeheader()
        writer.writerows(r for r in rows if float(r["cy"]) == top)
    line = expect_error(
        tmp_path, ["meanimage", str(slide)], slide.name, "no bulk fields", absent=[slide / "meanimage"]
    )
    assert line.startswith(f"error: slide {slide.name}: no bulk fields")


def test_model_build_missing_models_csv(tmp_path):
    expect_error(
        tmp_path,
        [
            "model",
            "build",
            "--version",
            "v1",
            "--models-csv",
            str(tmp_path / "nope.csv"),
            "--root",
            str(tmp_path),
        ],
        "nope.csv",
        "does not exist",
        absent=[tmp_path / "flatfield"],
    )


def test_model_build_unknown_version_lists_the_versions(tmp_path, models_csv):
    expect_error(
        tmp_path,
        ["model", "build", "--version", "v9", "--models-csv", str(models_csv), "--root", str(tmp_path)],
        "'v9'",
        "versions present: v1",
        untouched=[models_csv.parent],
    )


def test_model_build_missing_root(tmp_path, models_csv):
    missing = tmp_path / "no-root"
    expect_error(
        tmp_path,
        ["model", "build", "--version", "v1", "--models-csv", str(models_csv), "--root", str(missing)],
        f"--root {missing}: does not exist",
        untouched=[models_csv.parent],
    )


def test_model_build_store_that_is_a_file(tmp_path, meanimage_cohort):
    csv = tmp_path / "models.csv"
    csv.write_text(
        "version,Project,Cohort,BatchID,SlideID\n"
        + "".join(f"v1,1,1,1,{os.path.basename(u)}\n" for u in meanimage_cohort["urls"])
    )
    taken = a_file(tmp_path)
    args = [
        "model",
        "build",
        "--version",
        "v1",
        "--models-csv",
        str(csv),
        "--root",
        meanimage_cohort["root"],
        "--store",
        taken,
    ]
    expect_error(
        tmp_path, args, f"--store {taken}: it is a file, not a folder", untouched=[meanimage_cohort["root"]]
    )


def test_model_list_missing_store(tmp_path):
    expect_error(
        tmp_path,
        ["model", "list", "--store", str(tmp_path / "nostore")],
        f"--store {tmp_path / 'nostore'}: does not exist",
    )


def test_model_compare_missing_root_and_bad_pattern(tmp_path):
    expect_error(
        tmp_path,
        ["model", "compare", "--root", str(tmp_path / "no-root")],
        "no-root",
        "does not exist",
        absent=[tmp_path / "no-root"],
    )
    (tmp_path / "root").mkdir()
    expect_error(
        tmp_path,
        ["model", "compare", "--root", str(tmp_path / "root"), "--slides", "SYN("],
        "--slides 'SYN('",
        "regular expression",
        untouched=[tmp_path / "root"],
    )


def test_model_compare_workdir_that_is_a_file(tmp_path, meanimage_cohort):
    taken = a_file(tmp_path)
    expect_error(
        tmp_path,
        ["model", "compare", "--root", meanimage_cohort["root"], "--workdir", taken],
        f"--workdir {taken}: it is a file, not a folder",
        untouched=[meanimage_cohort["root"]],
    )


def test_applied_test_missing_root_and_output_that_is_a_file(tmp_path):
    out = tmp_path / "at"
    expect_error(
        tmp_path,
        ["applied-test", "--root", str(tmp_path / "no-root"), "--out", str(out)],
        "--root",
        "no-root",
        absent=[out],
    )
    taken = a_file(tmp_path)
    expect_error(
        tmp_path,
        ["applied-test", "--root", str(tmp_path / "no-root"), "--out", taken],
        f"--out {taken}: it is a file",
    )


# ----------------------------------------------------------------------------------------------
# correct


def correct_args(tile, *extra: str, tiles=None) -> list[str]:
    return ["correct", *(tiles or [tile["url"]]), "--out", str(tile["out"]), *extra]


def test_correct_missing_tile(tmp_path, tile):
    missing = str(tile["in"] / "missing.ome.zarr")
    expect_error(
        tmp_path,
        correct_args(tile, "--flatfield", tile["flatfield"], "--background", "100", tiles=[missing]),
        missing,
        "does not exist",
        absent=[tile["out"]],
        untouched=[tile["in"]],
    )


def test_correct_unknown_model_version_lists_the_versions(tmp_path, tile, store):
    expect_error(
        tmp_path,
        correct_args(tile, "--model", "v9", "--store", store, "--background", "100"),
        "'v9'",
        "versions present: v1, v2",
        absent=[tile["out"]],
        untouched=[tile["in"]],
    )


def test_correct_missing_store_and_flatfield_and_darkfield(tmp_path, tile):
    nostore = str(tile["in"] / "nostore")
    expect_error(
        tmp_path,
        correct_args(tile, "--model", "v1", "--store", nostore),
        f"--store {nostore}: does not exist",
        absent=[tile["out"]],
    )
    nope = str(tile["in"] / "nope.npy")
    expect_error(
        tmp_path,
        correct_args(tile, "--flatfield", nope),
        f"flatfield file {nope}: does not exist",
        absent=[tile["out"]],
    )
    dark = str(tile["in"] / "dark.tif")
    expect_error(
        tmp_path,
        correct_args(tile, "--flatfield", tile["flatfield"], "--darkfield", dark),
        f"darkfield file {dark}: does not exist",
        absent=[tile["out"]],
        untouched=[tile["in"]],
    )


def test_correct_flatfield_in_the_wrong_format_or_shape(tmp_path, tile):
    garbage = tile["in"] / "garbage.tif"
    garbage.write_bytes(b"not a tiff")
    expect_error(
        tmp_path,
        correct_args(tile, "--flatfield", str(garbage)),
        str(garbage),
        "cannot be read as TIFF, .npy or zarr",
        absent=[tile["out"]],
    )
    square = tile["in"] / "square.npy"
    np.save(square, np.ones((64, 64)))
    expect_error(
        tmp_path,
        correct_args(tile, "--flatfield", str(square), "--background", "100"),
        tile["url"],
        "aspect ratios differ",
        absent=[tile["out"]],
        untouched=[tile["in"]],
    )


def test_correct_level_that_does_not_exist(tmp_path, tile):
    expect_error(
        tmp_path,
        correct_args(tile, "--flatfield", tile["flatfield"], "--level", "3"),
        tile["url"],
        "level '3' does not exist",
        absent=[tile["out"]],
        untouched=[tile["in"]],
    )


def test_correct_names_every_bad_tile_and_writes_none(tmp_path, tile):
    other, _ = make_tile(tile["in"], "other.ome.zarr", shape=(12, 48, 64), chunks=(6, 48, 64))
    plain = tile["in"] / "plain"
    plain.mkdir()
    line = expect_error(
        tmp_path,
        correct_args(
            tile,
            "--flatfield",
            tile["flatfield"],
            "--background",
            "100",
            tiles=[tile["url"], str(plain), other],
        ),
        str(plain),
        absent=[tile["out"]],
        untouched=[tile["in"]],
    )
    assert "not an OME-Zarr image" in line and tile["url"] + ":" not in line


def test_correct_bad_option_values(tmp_path, tile):
    ff = tile["flatfield"]
    expect_error(
        tmp_path,
        correct_args(tile, "--flatfield", ff, "--background", "lots"),
        "--background 'lots'",
        absent=[tile["out"]],
    )
    expect_error(
        tmp_path,
        correct_args(tile, "--flatfield", ff, "--layer", "2"),
        "--layer",
        "--model",
        absent=[tile["out"]],
    )
    expect_error(tmp_path, correct_args(tile), "exactly one flatfield source", absent=[tile["out"]])
    expect_error(
        tmp_path,
        correct_args(tile, "--flatfield", ff, "--zarr-format", "5"),
        "--zarr-format 5",
        absent=[tile["out"]],
    )
    # checked by the flow's parameter model: Prefect is imported, nothing is started
    expect_error(
        tmp_path,
        correct_args(tile, "--flatfield", ff, "--levels", "99"),
        "--levels",
        absent=[tile["out"]],
        light=False,
    )


def test_correct_output_that_is_a_file(tmp_path, tile):
    taken = a_file(tmp_path)
    expect_error(
        tmp_path,
        ["correct", tile["url"], "--out", taken, "--flatfield", tile["flatfield"]],
        f"--out {taken}: it is a file, not a folder",
        untouched=[tile["in"]],
    )


def test_correct_output_bucket_that_does_not_exist_is_the_outputs_problem(tmp_path, tile, s3_server):
    env = clean_env(
        AWS_ENDPOINT_URL=s3_server,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    line = expect_error(
        tmp_path,
        ["correct", tile["url"], "--out", "s3://no-such-bucket/out", "--flatfield", tile["flatfield"]],
        env=env,
        untouched=[tile["in"]],
    )
    assert line.startswith("error: --out s3://no-such-bucket/out: bucket 'no-such-bucket' does not exist"), (
        line
    )
    assert "tile" not in line


# ----------------------------------------------------------------------------------------------
# estimate


def test_estimate_missing_input(tmp_path):
    out = tmp_path / "est"
    line = expect_error(tmp_path, ["estimate", str(tmp_path / "nope"), "--out", str(out)], absent=[out])
    assert line == f"error: input {tmp_path / 'nope'}: does not exist"


def test_estimate_unreadable_input_and_too_few_frames(tmp_path, frames):
    out = tmp_path / "est"
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00garbage")
    expect_error(
        tmp_path, ["estimate", str(broken), "--out", str(out)], str(broken), "cannot be read", absent=[out]
    )
    expect_error(
        tmp_path,
        ["estimate", str(frames), "--out", str(out), "--darkfield"],
        "10 images",
        "at least 16",
        absent=[out],
        untouched=[frames],
    )


def test_estimate_output_that_is_a_file(tmp_path, frames):
    taken = a_file(tmp_path)
    expect_error(
        tmp_path,
        ["estimate", str(frames), "--out", taken],
        f"--out {taken}: it is a file",
        untouched=[frames],
    )


def test_estimate_camera_offset_with_darkfield_or_negative(tmp_path, frames):
    out = tmp_path / "est"
    line = expect_error(
        tmp_path,
        ["estimate", str(frames), "--out", str(out), "--darkfield", "--camera-offset", "100"],
        "--camera-offset",
        "--darkfield",
        absent=[out],
        light=False,
    )
    assert "use one" in line
    expect_error(
        tmp_path,
        ["estimate", str(frames), "--out", str(out), "--camera-offset", "-5"],
        "--camera-offset",
        absent=[out],
        light=False,
    )


def test_estimate_bad_option_value_and_foreign_output(tmp_path, frames):
    out = tmp_path / "est"
    expect_error(
        tmp_path,
        ["estimate", str(frames), "--out", str(out), "--degree", "40"],
        "--degree",
        absent=[out],
        light=False,
    )
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    expect_error(
        tmp_path,
        ["estimate", str(frames), "--out", str(out)],
        str(out),
        "not a shadeflow estimate",
        "--overwrite",
        untouched=[out],
        light=False,
    )


# ----------------------------------------------------------------------------------------------
# synth and cluster


def test_synth_bad_options_and_outputs(tmp_path):
    out = tmp_path / "synth"
    expect_error(
        tmp_path,
        ["synth", "tile", "--out", str(out), "--dtype", "int7"],
        "--dtype int7",
        "uint16",
        absent=[out],
    )
    taken = a_file(tmp_path)
    expect_error(tmp_path, ["synth", "tile", "--out", taken], f"--out {taken}: it is a file")
    expect_error(
        tmp_path,
        ["synth", "stack", "--out", taken, "--size", "16", "--frames", "2"],
        f"--out {taken}: it is a file",
    )
    expect_error(
        tmp_path, ["synth", "stack", "--out", str(out), "--format", "png"], "--format png", absent=[out]
    )
    expect_error(
        tmp_path,
        ["synth", "slides", "--out", f"{taken}/cohort", "--slides", "1", "--fields", "2"],
        f"{taken} is a file",
    )


def test_cluster_bad_settings(tmp_path):
    expect_error(tmp_path, ["cluster", "--memory", "banana"], "--memory", "banana")
    expect_error(tmp_path, ["cluster", "--cluster", "banana"], "banana")
