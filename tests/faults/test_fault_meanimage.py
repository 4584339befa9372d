"""Faults during ``shadeflow meanimage``: a Dask worker process SIGKILLed mid-run, and the CLI's whole
process group SIGKILLed at seeded points, each followed by a rerun.

Real components only: the CLI as a subprocess talking to this session's Prefect test server, a Dask
scheduler and worker processes on 127.0.0.1. Every wait is bounded; every process is stopped.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
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

SEED = 3
SHAPE = (96, 128, 4)
FIELDS = 16
RUN_TIMEOUT = 240


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A small synthetic cohort (2 slides) without outputs; tests copy it."""
    from shadeflow.core.synth.slides import SynthConfig, write_cohort

    root = tmp_path_factory.mktemp("fault-cohort")
    urls = write_cohort(str(root), SynthConfig(slides=2, fields=FIELDS, seed=SEED, shape=SHAPE))
    return root, [Path(u).name for u in urls]


stable = stable_path_fixture("meanimage")


def copy_of(pristine, target: Path, stable: StablePath) -> tuple[list[str], Path]:
    """A private copy of the cohort at ``target``, addressed through the stable path."""
    root, names = pristine
    shutil.copytree(root, target)
    link = stable.point_at(target)
    return [str(link / n) for n in names], target


def run_cli(slides: list[str], env: dict[str, str], log: Path, *extra: str) -> int:
    return run_shadeflow(["meanimage", *slides, *extra], env, log, RUN_TIMEOUT)


def digests(slides: list[str]) -> dict[str, dict[str, str]]:
    return {Path(s).name: output_digest(Path(s) / "meanimage") for s in slides}


@pytest.fixture(scope="module")
def reference(pristine, stable, tmp_path_factory):
    """Outputs of an undisturbed run (local cluster, one worker) of the same input."""
    base = tmp_path_factory.mktemp("fault-reference")
    slides, _ = copy_of(pristine, base / "cohort", stable)
    log = base / "run.log"
    code = run_cli(slides, prefect_env(base), log, "--workers", "1", "--memory", "2GiB")
    assert code == 0, tail(log)
    return digests(slides)


def mask_files(root: Path) -> int:
    """Mask files written so far into any staging folder below ``root``."""
    return sum(1 for p in root.glob("*/.meanimage.partial-*/image_masking/*") if p.is_file())


def staging_appeared(root: Path) -> bool:
    return any(root.glob("*/.meanimage.partial-*"))


def test_worker_loss_mid_run_then_rerun(pristine, stable, reference, tmp_path):
    """SIGKILL one of two single-thread worker processes once masks are being written (a seeded count)."""
    slides, root = copy_of(pristine, tmp_path / "cohort", stable)
    rng = random.Random(SEED)
    kill_after = rng.randint(1, FIELDS)  # mask files written before the kill
    victim = rng.randrange(2)
    env = prefect_env(tmp_path)
    with dask_processes(tmp_path / "dask", env, workers=2) as dask:
        run_env = dict(env, SHADEFLOW_CLUSTER=dask.address)
        log = tmp_path / "faulted.log"
        with session_process(shadeflow_args("meanimage", *slides), run_env, log) as cli:
            wait_for(
                lambda: mask_files(root) >= kill_after,
                180,
                f"{kill_after} mask files",
                interval=0.05,
                process=cli,
                log=log,
            )
            killpg(dask.workers[victim])
            try:
                code = cli.wait(RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"meanimage did not end within {RUN_TIMEOUT} s after losing a worker\n{tail(log)}"
                ) from None
        if code == 0:
            assert not (diff := differing(digests(slides), reference)), diff
        else:
            line = last_error_line(log)
            assert line.startswith("error: "), tail(log)
            for s in slides:
                assert_nothing_looks_complete(Path(s) / "meanimage")
        # the rerun, on the surviving worker
        rerun_log = tmp_path / "rerun.log"
        code = run_cli(slides, run_env, rerun_log)
        assert code == 0, tail(rerun_log)
    assert not (diff := differing(digests(slides), reference)), diff
    assert leftovers(root) == []


@pytest.mark.parametrize("point", ["staging", "midway"])
def test_cli_killed_then_rerun(pristine, stable, reference, tmp_path, point):
    """SIGKILL the CLI's whole process group (CLI, local cluster) right after its staging folder
    appears, or once a seeded share of the masks is written; a rerun completes identically and
    removes the abandoned staging folders; no process of the run survives."""
    slides, root = copy_of(pristine, tmp_path / "cohort", stable)
    env = prefect_env(tmp_path)
    args = ("--workers", "1", "--memory", "2GiB")
    log = tmp_path / "killed.log"
    rng = random.Random(f"{SEED}-{point}")
    with session_process(shadeflow_args("meanimage", *slides, *args), env, log) as cli:
        if point == "staging":
            wait_for(
                lambda: staging_appeared(root), 180, "a staging folder", interval=0.02, process=cli, log=log
            )
        else:
            n = rng.randint(FIELDS // 2, FIELDS)
            wait_for(
                lambda: mask_files(root) >= n, 180, f"{n} mask files", interval=0.05, process=cli, log=log
            )
        group = cli.pid
        killpg(cli)
    wait_no_processes(str(stable.link), {group}, timeout=30)
    for s in slides:
        assert_nothing_looks_complete(Path(s) / "meanimage")
    assert leftovers(root), "the killed run left no staging folder: the rerun's clean-up is not exercised"

    rerun_log = tmp_path / "rerun.log"
    code = run_cli(slides, env, rerun_log, *args)
    assert code == 0, tail(rerun_log)
    assert not (diff := differing(digests(slides), reference)), diff
    assert leftovers(root) == [], "staging folders left after the rerun"
    wait_no_processes(str(stable.link), {group}, timeout=30)
