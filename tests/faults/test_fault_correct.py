"""Faults during ``shadeflow correct`` of a small OME-Zarr tile: the CLI's process group SIGKILLed at
seeded points, and a Dask worker process SIGKILLed mid-run, each followed by a rerun that must give
output identical to an undisturbed run.

Real components only: the CLI as a subprocess on this session's Prefect test server, a Dask
scheduler and worker processes on 127.0.0.1. Every wait is bounded; every process is stopped.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from correct_support import make_tile
from fault_support import (
    StablePath,
    assert_nothing_looks_complete,
    dask_processes,
    differing,
    killpg,
    last_error_line,
    leftovers,
    output_digest,
    prefect_env,
    run_shadeflow,
    session_process,
    shadeflow_args,
    stable_path_fixture,
    tail,
    wait_for,
    wait_no_processes,
)

pytestmark = pytest.mark.usefixtures("prefect_server")

SEED = 11
RUN_TIMEOUT = 240
TILE = "tile.ome.zarr"


stable = stable_path_fixture("correct")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A small uint16 tile (64 × 128 × 128, 16 × 64 × 64 chunks) and a flatfield file, no outputs."""
    root = tmp_path_factory.mktemp("fault-tile") / "case"
    (root / "in").mkdir(parents=True)
    make_tile(root / "in", TILE, shape=(64, 128, 128), chunks=(8, 64, 64), seed=SEED)
    y, x = np.mgrid[0:128, 0:128]
    flat = 1.0 - 0.3 * (((y - 64) / 64.0) ** 2 + ((x - 64) / 64.0) ** 2) / 2
    np.save(root / "in" / "flat.npy", flat.astype(np.float32))
    return root


def case(pristine, target: Path, stable: StablePath) -> tuple[list[str], Path]:
    """A private copy at ``target`` addressed through the stable path; returns the CLI arguments and the
    output folder."""
    shutil.copytree(pristine, target)
    link = stable.point_at(target)
    args = [
        "correct",
        str(link / "in" / TILE),
        "--flatfield",
        str(link / "in" / "flat.npy"),
        "--background",
        "100",
        "--out",
        str(link / "out"),
        "--levels",
        "2",
    ]
    return args, target / "out"


def run_cli(args: list[str], env: dict[str, str], log: Path) -> int:
    return run_shadeflow(args, env, log, RUN_TIMEOUT)


LOCAL = ["--workers", "1", "--memory", "2GiB"]


@pytest.fixture(scope="module")
def reference(pristine, stable, tmp_path_factory):
    base = tmp_path_factory.mktemp("fault-correct-reference")
    args, out = case(pristine, base / "case", stable)
    log = base / "run.log"
    assert run_cli(args + LOCAL, prefect_env(base), log) == 0, tail(log)
    return {"out": output_digest(out)}


def chunk_files(out: Path) -> int:
    """Data files written so far below the output tile (level 0 chunks and others)."""
    tile = out / TILE
    return (
        sum(
            1
            for p in tile.rglob("*")
            if p.is_file() and not p.name.endswith((".json", ".zattrs", ".zarray", ".zgroup"))
        )
        if tile.exists()
        else 0
    )


@pytest.mark.parametrize("point", ["started", "midway"])
def test_correct_cli_killed_then_rerun(pristine, stable, reference, tmp_path, point):
    """SIGKILL the CLI's process group once the output tile appears, or once a seeded number of its
    chunks are written; nothing looks complete; a rerun gives the undisturbed run's output."""
    args, out = case(pristine, tmp_path / "case", stable)
    env = prefect_env(tmp_path)
    log = tmp_path / "killed.log"
    rng = random.Random(f"{SEED}-{point}")
    with session_process(shadeflow_args(*args, *LOCAL), env, log) as cli:
        if point == "started":
            wait_for(
                lambda: (out / TILE).exists(), 180, "the output tile", interval=0.02, process=cli, log=log
            )
        else:
            n = rng.randint(8, 24)
            wait_for(
                lambda: chunk_files(out) >= n, 180, f"{n} chunk files", interval=0.02, process=cli, log=log
            )
        group = cli.pid
        killpg(cli)
    wait_no_processes(str(stable.link), {group}, timeout=30)
    assert_nothing_looks_complete(out / TILE)

    rerun_log = tmp_path / "rerun.log"
    assert run_cli(args + LOCAL, env, rerun_log) == 0, tail(rerun_log)
    assert not (diff := differing({"out": output_digest(out)}, reference)), diff
    assert leftovers(tmp_path / "case") == [] and leftovers(tmp_path / "case", ".tmp-") == []
    wait_no_processes(str(stable.link), {group}, timeout=30)


def test_correct_worker_loss_then_rerun(pristine, stable, reference, tmp_path):
    """SIGKILL one of two single-thread worker processes once a seeded number of chunks are written."""
    args, out = case(pristine, tmp_path / "case", stable)
    rng = random.Random(SEED)
    kill_after, victim = rng.randint(4, 24), rng.randrange(2)
    env = prefect_env(tmp_path)
    with dask_processes(tmp_path / "dask", env, workers=2) as dask:
        run_env = dict(env, SHADEFLOW_CLUSTER=dask.address)
        log = tmp_path / "faulted.log"
        with session_process(shadeflow_args(*args), run_env, log) as cli:
            wait_for(
                lambda: chunk_files(out) >= kill_after,
                180,
                f"{kill_after} chunk files",
                interval=0.02,
                process=cli,
                log=log,
            )
            killpg(dask.workers[victim])
            try:
                code = cli.wait(RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"correct did not end within {RUN_TIMEOUT} s after losing a worker\n{tail(log)}"
                ) from None
        if code == 0:
            assert not (diff := differing({"out": output_digest(out)}, reference)), diff
        else:
            assert last_error_line(log).startswith("error: "), tail(log)
            assert_nothing_looks_complete(out / TILE)
        rerun_log = tmp_path / "rerun.log"
        assert run_cli(args, run_env, rerun_log) == 0, tail(rerun_log)
    assert not (diff := differing({"out": output_digest(out)}, reference)), diff
