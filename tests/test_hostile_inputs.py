"""Hostile and damaged input to every verb, as one table (issue 11: nothing lost, nothing falsely complete).

Each row builds a small world (a two-slide cohort with mean images, a models CSV, a model store, an
OME-Zarr tile, a folder of TIFF frames, a zarr stack), damages or misnames one thing, runs the real
command in a subprocess (``test_cli_errors.run``) and checks, for every row:

* the exit code: 2 for input refused before anything starts, 1 for a run that started and failed
  (``shadeflow.core.errors``), 0 for the few rows that must succeed;
* stderr holds exactly one ``error:`` line (none on success), naming the input at fault, and no
  traceback anywhere;
* every input file is byte-identical afterwards (sha256 of the whole world, outputs aside);
* nothing complete-looking was written: no new ``shadeflow.json`` manifest anywhere, unless the row
  succeeds;
* no secret (the credential in a URL) in stdout, stderr or any file under the test's folder;
* rows refused up front started nothing (no socket bound, no process): Prefect never started.

Rows that run a flow talk to this session's Prefect test server (``test_cli.test_server_env``) so
that only the rows that must run pay for a flow; no timings are asserted. The commands run two at a
time in a module fixture (``outcomes``); each row's test checks its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import _free_port, tree, write_mean_images
from correct_support import make_model, make_tile
from test_cli import clean_env
from test_cli_errors import run

SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYzSECRET"
KEY = "AKIAHOSTILEKEY"
TILE_SHAPE, TILE_CHUNKS = (12, 48, 64), (6, 48, 64)


# ----------------------------------------------------------------------------------------------
# the world every row starts from (built once, copied per row)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    from shadeflow.core.synth.slides import SynthConfig, write_cohort
    from shadeflow.core.synth.stacks import StackConfig, write_stack

    root = tmp_path_factory.mktemp("hostile-world")
    urls = write_cohort(
        str(root / "cohort"), SynthConfig(slides=2, fields=12, shape=(32, 48, 2), seed=1), workers=1
    )
    write_mean_images(urls)
    shutil.rmtree(root / "cohort" / "synthetic_truth", ignore_errors=True)
    (root / "models").mkdir()
    (root / "models" / "models.csv").write_text(
        "version,Project,Cohort,BatchID,SlideID\n"
        + "".join(f"v1,1,1,1,{os.path.basename(u)}\n" for u in urls)
    )
    _, truth = make_tile(root / "tiles", "tile.ome.zarr", shape=TILE_SHAPE, chunks=TILE_CHUNKS)
    shutil.move(truth["flatfield"], root / "flat.npy")
    make_model(str(root / "store"), "v1", np.ones((1,) + TILE_SHAPE[1:]), {"all": [1, 1]})
    frames = root / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        tifffile.imwrite(frames / f"f{i:02d}.tif", rng.integers(100, 1000, (32, 32)).astype(np.uint16))
    write_stack(str(root / "stack"), StackConfig(size=32, n=20, seed=2), workers=1)
    shutil.rmtree(root / "stack" / "truth", ignore_errors=True)
    for leftover in root.rglob("*"):  # the tile's truth files beside it are not inputs of any row
        if leftover.is_file() and "truth" in leftover.name and "tiles" in leftover.parts:
            leftover.unlink()
    return root


@dataclasses.dataclass
class World:
    root: Path

    @property
    def slide(self) -> Path:
        return self.root / "cohort" / "SYN1_1"

    @property
    def cohort(self) -> str:
        return str(self.root / "cohort")

    @property
    def csv(self) -> str:
        return str(self.root / "models" / "models.csv")

    @property
    def tile(self) -> str:
        return str(self.root / "tiles" / "tile.ome.zarr")

    @property
    def flat(self) -> str:
        return str(self.root / "flat.npy")

    @property
    def store(self) -> str:
        return str(self.root / "store")

    @property
    def frames(self) -> str:
        return str(self.root / "frames")

    @property
    def stack(self) -> str:
        return str(self.root / "stack" / "stack.zarr")

    def out(self, name: str = "out") -> str:
        return str(self.root.parent / name)

    def fields(self) -> list[dict]:
        import csv

        with open(self.slide / "fields.csv", newline="") as handle:
            return list(csv.DictReader(handle))

    def first_field(self) -> Path:
        return self.slide / self.fields()[0]["file"]

    def edit_csv(self, edit: Callable[[list[str]], list[str]], path: Path | None = None) -> None:
        path = path or self.slide / "fields.csv"
        lines = path.read_text().splitlines()
        path.write_text("\n".join(edit(lines)) + "\n")

    def edit_json(self, path: Path, **changes) -> None:
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))


def dead_endpoint() -> str:
    """A loopback port nothing listens on: connections are refused at once."""
    return f"http://127.0.0.1:{_free_port()}"


# ----------------------------------------------------------------------------------------------
# damage


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def symlink_out(w: World) -> None:
    """The first field becomes a link to a file outside the slide folder (a copy of itself)."""
    field = w.first_field()
    outside = w.root / "elsewhere.dat"
    shutil.copy(field, outside)
    field.unlink()
    field.symlink_to(outside)


def slide_with_tiff_fields(w: World) -> None:
    """Rewrite SYN1_1's fields as TIFFs ((L, H, W) pages), then cut the first in half."""
    meta = json.loads((w.slide / "slide.json").read_text())
    h, wd, layers = meta["shape"]
    rows = w.fields()
    for row in rows:
        raw = w.slide / row["file"]
        image = np.fromfile(raw, "<u2").reshape(h, wd, layers)
        tifffile.imwrite(raw.with_suffix("").with_suffix(".tif"), np.moveaxis(image, 2, 0))
        raw.unlink()
    w.edit_csv(lambda lines: [line.replace(".Data.dat", ".tif") for line in lines])
    shutil.rmtree(w.slide / "meanimage")  # a fresh slide: the run must read the fields
    cut_in_half(w.slide / rows[0]["file"].replace(".Data.dat", ".tif"))


def zarr_array(path: str, data: np.ndarray) -> None:
    array = zarr.create_array(
        path, shape=data.shape, chunks=tuple(max(1, n) for n in data.shape), dtype=data.dtype, zarr_format=3
    )
    if data.size:
        array[...] = data


def replace_stack(w: World, data: np.ndarray) -> None:
    shutil.rmtree(w.stack)
    zarr_array(w.stack, data)


def tile_level(w: World) -> str:
    return os.path.join(w.tile, "0")


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


# ----------------------------------------------------------------------------------------------
# the table


@dataclasses.dataclass
class Row:
    id: str
    #: damages the world (optional) and returns the command's arguments
    build: Callable[[World], list[str]]
    code: int
    #: what the error line must name (callables get the world)
    names: tuple = ()
    env: Callable[[World], dict[str, str]] | None = None
    #: the row runs a flow (talks to the test server), rather than failing before anything starts
    runs: bool = False
    s3: bool = False
    xfail: str | None = None


def meanimage(w: World, *extra: str) -> list[str]:
    return ["meanimage", str(w.slide), *extra]


def model_build(w: World, *extra: str, version: str = "v1") -> list[str]:
    return [
        "model",
        "build",
        "--version",
        version,
        "--models-csv",
        w.csv,
        "--root",
        w.cohort,
        "--store",
        w.out("store"),
        *extra,
    ]


def correct(w: World, *extra: str, tile: str | None = None) -> list[str]:
    return ["correct", tile or w.tile, "--out", w.out(), *extra]


def correct_flat(w: World, *extra: str, tile: str | None = None) -> list[str]:
    return correct(w, "--flatfield", w.flat, "--background", "100", "--levels", "1", *extra, tile=tile)


def estimate(w: World, *inputs: str, out: str | None = None) -> list[str]:
    return ["estimate", *(inputs or (w.stack,)), "--out", out or w.out()]


def _do(*steps):
    """Run damage steps, then return the last value (the arguments)."""
    return steps[-1]


ROWS: list[Row] = [
    # ---------------------------------------------------------------- meanimage
    Row(
        "meanimage-missing-slide", lambda w: ["meanimage", str(w.root / "cohort" / "NOPE_9")], 2, ("NOPE_9",)
    ),
    Row(
        "meanimage-slide-json-corrupt",
        lambda w: _do((w.slide / "slide.json").write_text('{"slide_id": "SYN1_1", '), meanimage(w)),
        2,
        ("slide.json",),
    ),
    Row(
        "meanimage-dat-wrong-size",
        lambda w: _do(cut_in_half(w.first_field()), meanimage(w)),
        2,
        (lambda w: w.fields()[0]["file"], "bytes, expected"),
    ),
    Row(
        "meanimage-field-file-missing",
        lambda w: _do(w.first_field().unlink(), meanimage(w)),
        2,
        (lambda w: w.fields()[0]["file"],),
    ),
    Row(
        "meanimage-fields-csv-malformed-row",
        lambda w: _do(
            w.edit_csv(lambda ls: ls[:2] + ['"SYN1_1_[1,1]",fields/x.Data.dat,not-a-number'] + ls[2:]),
            meanimage(w),
        ),
        2,
        ("fields.csv",),
    ),
    Row(
        "meanimage-fields-csv-nan-exposure",
        lambda w: _do(
            w.edit_csv(lambda ls: ls[:1] + [ls[1].rsplit(",", 1)[0] + ",nan"] + ls[2:]), meanimage(w)
        ),
        2,
        ("fields.csv", "finite"),
    ),
    Row(
        "meanimage-field-path-dotdot",
        lambda w: _do(
            w.edit_csv(lambda ls: ls[:1] + [ls[1].replace('"fields/', '"../SYN1_2/fields/', 1)] + ls[2:]),
            meanimage(w),
        ),
        2,
        ("fields.csv",),
    ),
    Row(
        "meanimage-field-symlink-outside",
        lambda w: _do(symlink_out(w), meanimage(w)),
        2,
        ("outside the slide folder",),
    ),
    Row(
        "meanimage-field-key-with-slash",
        lambda w: _do(
            w.edit_csv(lambda ls: ls[:1] + ['"a/b"' + ls[1][ls[1].index('",') + 1 :]] + ls[2:]), meanimage(w)
        ),
        2,
        ("'a/b'",),
    ),
    Row(
        "meanimage-zero-length-axis",
        lambda w: _do(w.edit_json(w.slide / "slide.json", shape=[0, 48, 2]), meanimage(w)),
        2,
        ("SYN1_1",),
    ),
    Row(
        "meanimage-wrong-dtype",
        lambda w: _do(w.edit_json(w.slide / "slide.json", dtype="float64"), meanimage(w)),
        2,
        ("SYN1_1", "dtype"),
    ),
    Row(
        "meanimage-credentials-in-url",
        lambda w: ["meanimage", f"s3://{KEY}:{SECRET}@bucket/cohort/SYN1_1"],
        2,
        ("slide",),
    ),
    Row(
        "meanimage-unreachable-s3",
        lambda w: ["meanimage", "s3://bucket/cohort/SYN1_1"],
        2,
        ("storage unreachable", "127.0.0.1", "/bucket/cohort/SYN1_1/"),
        env=lambda w: s3_env(dead_endpoint()),
    ),
    Row(
        "meanimage-tiff-field-cut-in-half",
        lambda w: _do(slide_with_tiff_fields(w), meanimage(w, "--workers", "1")),
        1,
        ("SYN1_1", ".tif"),
        runs=True,
    ),
    # ---------------------------------------------------------------- model build
    Row(
        "model-build-unknown-version",
        lambda w: model_build(w, version="v9"),
        2,
        ("'v9'", "versions present: v1"),
    ),
    Row(
        "model-build-missing-csv",
        lambda w: _do(os.remove(w.csv), model_build(w)),
        2,
        ("models.csv", "does not exist"),
    ),
    Row(
        "model-build-csv-row-without-slide",
        lambda w: _do(w.edit_csv(lambda ls: ls + ["v1,1,1,1,"], Path(w.csv)), model_build(w)),
        2,
        ("models.csv", "row"),
    ),
    Row(
        "model-build-csv-missing-columns",
        lambda w: _do(Path(w.csv).write_text("version;SlideID\nv1;SYN1_1\n"), model_build(w)),
        2,
        ("models.csv", "column"),
    ),
    Row(
        "model-build-csv-slide-not-under-root",
        lambda w: _do(w.edit_csv(lambda ls: ls + ["v1,1,1,1,GHOST_1"], Path(w.csv)), model_build(w)),
        2,
        ("GHOST_1",),
    ),
    Row(
        "model-build-slide-name-dotdot",
        lambda w: _do(w.edit_csv(lambda ls: ls + ["v1,1,1,1,../models"], Path(w.csv)), model_build(w)),
        2,
        ("../models",),
    ),
    Row(
        "model-build-missing-root",
        lambda w: [
            "model",
            "build",
            "--version",
            "v1",
            "--models-csv",
            w.csv,
            "--root",
            str(w.root / "no-root"),
        ],
        2,
        ("no-root", "does not exist"),
    ),
    Row(
        "model-build-credentials-in-store",
        lambda w: [
            "model",
            "build",
            "--version",
            "v1",
            "--models-csv",
            w.csv,
            "--root",
            w.cohort,
            "--store",
            f"s3://{KEY}:{SECRET}@bucket/store",
        ],
        2,
        ("--store",),
    ),
    Row(
        "model-build-missing-store-bucket",
        lambda w: [
            "model",
            "build",
            "--version",
            "v1",
            "--models-csv",
            w.csv,
            "--root",
            w.cohort,
            "--store",
            "s3://no-such-bucket/store",
        ],
        2,
        ("--store s3://no-such-bucket/store", "does not exist"),
        s3=True,
    ),
    Row(
        "model-build-mean-image-bin-truncated",
        lambda w: _do(cut_in_half(w.slide / "meanimage" / "SYN1_1-mean_image.bin"), model_build(w)),
        2,
        ("SYN1_1",),
    ),
    # ---------------------------------------------------------------- model compare
    Row(
        "model-compare-missing-root",
        lambda w: ["model", "compare", "--root", str(w.root / "no-root")],
        2,
        ("no-root", "does not exist"),
    ),
    Row(
        "model-compare-bad-pattern",
        lambda w: ["model", "compare", "--root", w.cohort, "--slides", "SYN("],
        2,
        ("--slides 'SYN('",),
    ),
    Row(
        "model-compare-store-as-existing-version",
        lambda w: [
            "model",
            "compare",
            "--root",
            w.cohort,
            "--store-as",
            "v1",
            "--models-csv",
            w.csv,
            "--workdir",
            w.out("cmp"),
        ],
        2,
        ("models.csv", "'v1'"),
    ),
    Row(
        "model-compare-credentials-in-workdir",
        lambda w: ["model", "compare", "--root", w.cohort, "--workdir", f"s3://{KEY}:{SECRET}@bucket/cmp"],
        2,
        ("--workdir",),
    ),
    # ---------------------------------------------------------------- applied-test
    Row(
        "applied-test-missing-root",
        lambda w: ["applied-test", "--root", str(w.root / "no-root"), "--out", w.out()],
        2,
        ("no-root",),
    ),
    Row(
        "applied-test-credentials-in-out",
        lambda w: ["applied-test", "--root", w.cohort, "--out", f"s3://{KEY}:{SECRET}@bucket/at"],
        2,
        ("--out",),
    ),
    Row(
        "applied-test-missing-out-bucket",
        lambda w: ["applied-test", "--root", w.cohort, "--out", "s3://no-such-bucket/at"],
        2,
        ("--out s3://no-such-bucket/at", "does not exist"),
        s3=True,
    ),
    Row(
        "applied-test-dat-wrong-size",
        lambda w: _do(cut_in_half(w.first_field()), ["applied-test", "--root", w.cohort, "--out", w.out()]),
        2,
        (lambda w: w.fields()[0]["file"],),
    ),
    Row(
        "applied-test-no-slides-match",
        lambda w: ["applied-test", "--root", w.cohort, "--slides", "NOPE", "--out", w.out()],
        2,
        ("'NOPE'",),
    ),
    # ---------------------------------------------------------------- estimate
    Row("estimate-missing-input", lambda w: estimate(w, str(w.root / "nope")), 2, ("nope", "does not exist")),
    # headers are whole, so only the run finds the short read; its one line does not say which file
    Row(
        "estimate-tiff-cut-in-half",
        lambda w: _do(cut_in_half(Path(w.frames) / "f03.tif"), estimate(w, w.frames)),
        1,
        ("f03.tif",),
        runs=True,
    ),
    Row(
        "estimate-bad-zarr-json",
        lambda w: _do((Path(w.stack) / "zarr.json").write_text("{not json"), estimate(w)),
        2,
        ("stack.zarr",),
    ),
    Row(
        "estimate-missing-chunk",
        lambda w: _do(os.remove(os.path.join(w.stack, "c", "3", "0", "0")), estimate(w)),
        2,
        ("stack.zarr", "1 of its 20 chunks are missing"),
    ),
    Row(
        "estimate-zero-length-axis",
        lambda w: _do(replace_stack(w, np.zeros((20, 0, 32), np.uint16)), estimate(w)),
        2,
        ("stack.zarr",),
    ),
    Row(
        "estimate-wrong-dtype",
        lambda w: _do(replace_stack(w, np.zeros((20, 32, 32), np.complex64)), estimate(w)),
        2,
        ("stack.zarr", "complex64"),
    ),
    Row(
        "estimate-non-finite-values",
        lambda w: _do(
            replace_stack(
                w,
                np.where(np.arange(20 * 32 * 32).reshape(20, 32, 32) % 7 == 0, np.nan, 500.0).astype(
                    np.float32
                ),
            ),
            estimate(w),
        ),
        1,
        ("stack.zarr", "non-finite"),
        runs=True,
    ),
    Row(
        "estimate-credentials-in-input",
        lambda w: estimate(w, f"s3://{KEY}:{SECRET}@bucket/stack.zarr"),
        2,
        ("input",),
    ),
    Row(
        "estimate-unreachable-s3",
        lambda w: estimate(w, "s3://bucket/stack.zarr"),
        2,
        ("storage unreachable", "127.0.0.1", "/bucket/stack.zarr"),
        env=lambda w: s3_env(dead_endpoint()),
    ),
    Row(
        "estimate-missing-out-bucket",
        lambda w: estimate(w, out="s3://no-such-bucket/est"),
        2,
        ("--out s3://no-such-bucket/est", "does not exist"),
        s3=True,
    ),
    # ---------------------------------------------------------------- correct
    Row(
        "correct-missing-tile",
        lambda w: correct_flat(w, tile=str(w.root / "tiles" / "nope.ome.zarr")),
        2,
        ("nope.ome.zarr", "does not exist"),
    ),
    Row(
        "correct-bad-zarr-json",
        lambda w: _do((Path(w.tile) / "zarr.json").write_text("{not json"), correct_flat(w)),
        2,
        ("tile.ome.zarr",),
    ),
    Row(
        "correct-missing-chunk",
        lambda w: _do(os.remove(os.path.join(tile_level(w), "c", "1", "0", "0")), correct_flat(w)),
        2,
        ("tile.ome.zarr", "c/1/0/0"),
    ),
    Row(
        "correct-unknown-model-version",
        lambda w: correct(w, "--model", "v9", "--store", w.store, "--background", "100"),
        2,
        ("'v9'", "versions present: v1"),
    ),
    Row(
        "correct-flatfield-non-finite",
        lambda w: _do(np.save(w.flat, np.where(np.eye(48, 64, dtype=bool), np.nan, 1.0)), correct_flat(w)),
        2,
        ("flat.npy",),
    ),
    Row(
        "correct-flatfield-tiff-cut-in-half",
        lambda w: _do(
            tifffile.imwrite(w.root / "flat.tif", np.ones((48, 64), np.float32)),
            cut_in_half(w.root / "flat.tif"),
            correct(w, "--flatfield", str(w.root / "flat.tif"), "--background", "100"),
        ),
        2,
        ("flat.tif",),
    ),
    # a local path with ".." that resolves to a real tile is that tile (its output is <out>/tile.ome.zarr);
    # a ".." that cannot name an output folder is refused (tests/test_correct_hostile.py)
    Row(
        "correct-tile-path-with-dotdot-is-the-tile",
        lambda w: correct_flat(w, tile=os.path.join(w.tile, "0", "..")),
        0,
        (),
        runs=True,
    ),
    Row(
        "correct-credentials-in-out",
        lambda w: ["correct", w.tile, "--out", f"s3://{KEY}:{SECRET}@bucket/out", "--flatfield", w.flat],
        2,
        ("--out",),
    ),
    Row(
        "correct-unreachable-s3",
        lambda w: correct_flat(w, tile="s3://bucket/t.ome.zarr"),
        2,
        ("s3://bucket/t.ome.zarr",),
        env=lambda w: s3_env(dead_endpoint()),
    ),
    Row(
        "correct-missing-out-bucket",
        lambda w: ["correct", w.tile, "--out", "s3://no-such-bucket/out", "--flatfield", w.flat],
        2,
        ("--out s3://no-such-bucket/out", "does not exist"),
        s3=True,
    ),
    Row(
        "correct-non-finite-voxels-in-float-tile",
        lambda w: _do(
            shutil.rmtree(w.tile),
            make_tile(
                w.root / "tiles", "tile.ome.zarr", shape=TILE_SHAPE, chunks=TILE_CHUNKS, dtype="float32"
            ),
            zarr.open_array(tile_level(w), mode="r+").__setitem__(slice(None), np.float32(np.inf)),
            correct_flat(w),
        ),
        1,
        ("tile.ome.zarr", "non-finite"),
        runs=True,
    ),
    # names with spaces and non-ASCII are ordinary names: the run succeeds and is complete
    Row(
        "correct-name-with-space-and-non-ascii",
        lambda w: _do(
            shutil.move(w.tile, w.root / "tiles" / "tïle 1.ome.zarr"),
            correct_flat(w, tile=str(w.root / "tiles" / "tïle 1.ome.zarr")),
        ),
        0,
        (),
        runs=True,
    ),
]


@pytest.fixture(scope="module")
def server_url(prefect_server):
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def manifests(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("shadeflow.json")}


def files_holding(folder: Path, secret: str) -> list[str]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if secret.encode() in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                pass
    return hits


@dataclasses.dataclass
class Outcome:
    """One row's command, run: its world, folder, arguments, result and what held before."""

    world: World
    folder: Path
    args: list[str]
    result: object
    report: dict
    inputs_before: dict[str, str]
    manifests_before: set[str]


def run_row(row: Row, template: Path, base: Path, s3_url: str | None, server_url: str) -> Outcome:
    folder = base / row.id
    folder.mkdir()
    world = World(folder / "world")
    shutil.copytree(template, world.root, symlinks=True)
    args = [str(a) for a in row.build(world)]
    extra = row.env(world) if row.env else {}
    if row.s3:
        extra = s3_env(s3_url)
    if row.runs:
        # credentials in the environment of every run: none may reach an output, a log or Prefect's database
        extra = {
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            **extra,
            "PREFECT_API_URL": server_url,
            "PREFECT_HOME": str(folder / "prefect-home"),
        }
    inputs_before = tree(world.root)
    manifests_before = manifests(folder)
    result, report = run(folder, *args, env=clean_env(**extra))
    return Outcome(world, folder, args, result, report, inputs_before, manifests_before)


@pytest.fixture(scope="module")
def outcomes(template, tmp_path_factory, request, server_url):
    """Every row's command, two at a time (each row has its own world; the commands are independent
    subprocesses): the table costs half the wall time. A row whose preparation failed re-raises in
    its test."""
    base = tmp_path_factory.mktemp("hostile-rows")
    s3_url = request.getfixturevalue("s3_server") if any(r.s3 for r in ROWS) else None
    with ThreadPoolExecutor(max_workers=2) as pool:
        return {r.id: pool.submit(run_row, r, template, base, s3_url, server_url) for r in ROWS}


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(r, id=r.id, marks=[pytest.mark.xfail(strict=True, reason=r.xfail)] if r.xfail else [])
        for r in ROWS
    ],
)
def test_hostile_input(row: Row, outcomes):
    outcome = outcomes[row.id].result()
    world, tmp_path, args, result, report = (
        outcome.world,
        outcome.folder,
        outcome.args,
        outcome.result,
        outcome.report,
    )
    inputs_before, manifests_before = outcome.inputs_before, outcome.manifests_before

    stderr_lines = [line for line in result.stderr.splitlines() if line.strip()]
    error_lines = [line for line in stderr_lines if line.startswith("error: ")]
    problems = []
    if result.returncode != row.code:
        problems.append(f"exit code {result.returncode}, expected {row.code}")
    if "Traceback" in result.stderr + result.stdout:
        problems.append("a traceback was printed")
    if row.code == 0:
        if error_lines:
            problems.append(f"error lines on success: {error_lines}")
    else:
        if len(error_lines) != 1:
            problems.append(f"expected exactly one 'error:' line, got {len(error_lines)}")
        if not row.runs and stderr_lines != error_lines:
            problems.append("stderr holds more than the one error line")
        for name in row.names:
            name = name(world) if callable(name) else name
            if not any(name in line for line in error_lines):
                problems.append(f"the error does not name {name!r}")
        if not row.runs and report["started"]:
            problems.append(f"started something before failing: {report['started']}")
    inputs_after = tree(world.root)
    if inputs_after != inputs_before:
        changed = sorted(set(inputs_after.items()) ^ set(inputs_before.items()))[:5]
        problems.append(f"inputs changed: {changed}")
    new_manifests = manifests(tmp_path) - manifests_before
    if row.code != 0 and new_manifests:
        problems.append(f"complete-looking output written: {sorted(new_manifests)}")
    if row.code == 0 and not new_manifests:
        problems.append("a successful run wrote no manifest")
    for text, where in ((result.stdout, "stdout"), (result.stderr, "stderr")):
        if SECRET in text:
            problems.append(f"the secret is in {where}")
    leaked = files_holding(tmp_path, SECRET)
    if leaked:
        problems.append(f"the secret is in {leaked}")
    assert not problems, (
        "\n".join(problems)
        + f"\n--- args: {args}\n--- stderr:\n{result.stderr[-3000:]}\n--- stdout:\n{result.stdout[-1500:]}"
    )


def test_no_secret_in_the_prefect_database(outcomes):
    """After the whole table (its runs had credentials in their environment, other rows in URLs),
    neither the key nor the secret is anywhere in the Prefect test server's database files, which
    hold the flow runs, their parameters, logs and artifacts."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    for future in outcomes.values():
        future.exception()  # wait for every row; their own tests report failures
    url = PREFECT_API_DATABASE_CONNECTION_URL.value()
    assert url.startswith("sqlite"), url
    database = Path(url.split(":///", 1)[1])
    data = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    assert b"meanimage" in data, "the database holds none of the table's runs: wrong file?"
    assert SECRET.encode() not in data and KEY.encode() not in data
