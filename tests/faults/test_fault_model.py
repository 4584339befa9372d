"""Faults during ``shadeflow model build``: a Dask worker process SIGKILLed while it reads a slide's
stack or publishes the version (with and without a nanny that restarts it), and the CLI's whole
process group SIGKILLed at each step of publishing; each followed by a rerun.

The moments are exact: ``core/failpoints.py`` holds the first process that reaches the named point
until the test kills it (publishing takes milliseconds and could not be hit otherwise). Real
components only: the CLI as a subprocess on this session's Prefect test server, a Dask scheduler and
worker processes on 127.0.0.1. Every wait is bounded; every process is stopped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import write_mean_images
from fault_support import (
    StablePath,
    assert_nothing_looks_complete,
    dask_processes,
    failpoint_env,
    held_pid,
    kill_pid,
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

SEED = 17
SLIDES = 4
RUN_TIMEOUT = 240
VERSION = "v1"
LOCAL = ("--memory", "2GiB")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Four small synthetic slides with mean images, and a models CSV selecting all of them."""
    from shadeflow.core.synth.slides import SynthConfig, write_cohort

    root = tmp_path_factory.mktemp("fault-model") / "case"
    urls = write_cohort(
        str(root / "cohort"), SynthConfig(slides=SLIDES, fields=16, seed=SEED, shape=(96, 128, 4))
    )
    write_mean_images(urls)
    rows = "".join(f"{VERSION},1,1,{i + 1},{os.path.basename(u)}\n" for i, u in enumerate(urls))
    (root / "store").mkdir()
    (root / "store" / "models.csv").write_text("version,Project,Cohort,BatchID,SlideID\n" + rows)
    return root


stable = stable_path_fixture("model")


def case(pristine, target: Path, stable: StablePath) -> tuple[list[str], Path]:
    """A private copy at ``target`` addressed through the stable path: CLI arguments, and the store."""
    shutil.copytree(pristine, target)
    link = stable.point_at(target)
    args = [
        "model",
        "build",
        "--version",
        VERSION,
        "--models-csv",
        str(link / "store" / "models.csv"),
        "--root",
        str(link / "cohort"),
    ]
    return args, target / "store"


def run_cli(args: list[str], env: dict[str, str], log: Path) -> int:
    return run_shadeflow(args, env, log, RUN_TIMEOUT)


def digest(store: Path) -> dict[str, str]:
    """The version's folder and its .bin beside it (the models CSV is an input)."""
    return output_digest(store / "flatfield")


def assert_version_not_complete_looking(store: Path) -> None:
    """The version folder is absent or incomplete, and AstroPath's reader finds no .bin without a complete
    folder."""
    folder = store / "flatfield" / f"flatfield_{VERSION}"
    assert_nothing_looks_complete(folder)
    complete = (folder / "shadeflow.json").exists() and not (folder / ".shadeflow-writing.json").exists()
    if not complete:
        assert not (store / "flatfield" / f"flatfield_{VERSION}.bin").exists(), (
            "a .bin beside an incomplete version folder"
        )


@pytest.fixture(scope="module")
def reference(pristine, stable, tmp_path_factory):
    base = tmp_path_factory.mktemp("fault-model-reference")
    args, store = case(pristine, base / "case", stable)
    log = base / "run.log"
    assert run_cli([*args, *LOCAL], prefect_env(base), log) == 0, tail(log)
    found = digest(store)
    assert f"flatfield_{VERSION}.bin" in found and f"flatfield_{VERSION}/shadeflow.json" in found, sorted(
        found
    )
    return found


def rerun_matches(
    args: list[str], env: dict[str, str], store: Path, reference: dict[str, str], log: Path
) -> None:
    code = run_cli(args, env, log)
    assert code == 0, tail(log)
    got = digest(store)
    assert got == reference, sorted(k for k in set(got) | set(reference) if got.get(k) != reference.get(k))
    assert leftovers(store) == [], "staging folders left after the rerun"


@pytest.mark.parametrize("nanny", [True], ids=["nanny"])
def test_worker_lost_during_model_build_then_rerun(pristine, stable, reference, tmp_path, nanny):
    """The worker that reads a slide's stack is SIGKILLed there (a nanny restarts it, or it stays dead;
    the task merging the stacks may run on the same worker). The run completes identically or fails
    with one clear line leaving nothing that looks complete; then a rerun completes identically."""
    point = "load-stack"
    args, store = case(pristine, tmp_path / "case", stable)
    env = prefect_env(tmp_path)
    held, holder = failpoint_env(point, tmp_path)
    with dask_processes(tmp_path / "dask", dict(env, **held), workers=2, nanny=nanny) as dask:
        run_env = dict(env, SHADEFLOW_CLUSTER=dask.address)
        log = tmp_path / "faulted.log"
        with session_process(shadeflow_args(*args), run_env, log) as cli:
            victim = wait_for(
                lambda: held_pid(holder), 180, f"a worker at {point}", interval=0.05, process=cli, log=log
            )
            kill_pid(victim)
            try:
                code = cli.wait(RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"model build did not end within {RUN_TIMEOUT} s after losing a worker\n{tail(log)}"
                ) from None
        if code == 0:
            got = digest(store)
            assert got == reference, sorted(
                k for k in set(got) | set(reference) if got.get(k) != reference.get(k)
            )
            assert leftovers(store) == []
            # a task Dask ran again is not counted twice
            assert f"{SLIDES}/{SLIDES} slides" in log.read_text(), tail(log)
            return
        assert last_error_line(log).startswith("error: "), tail(log)
        assert_version_not_complete_looking(store)
        if nanny:
            wait_for(lambda: dask.worker_count() == 2, 60, "the nanny's restarted worker")
        rerun_matches(args, run_env, store, reference, tmp_path / "rerun.log")


@pytest.mark.parametrize("point", ["publish-moved", "publish-manifest"])
def test_model_build_killed_while_publishing_then_rerun(pristine, stable, reference, tmp_path, point):
    """SIGKILL the CLI's process group (CLI and local cluster) while it publishes the version — its files
    moved in without a manifest, or the manifest written but not yet the .bin beside the folder:
    nothing looks complete, no .bin stands beside an incomplete folder, no process of the run is left,
    and a rerun without --overwrite completes identically."""
    args, store = case(pristine, tmp_path / "case", stable)
    env = prefect_env(tmp_path)
    held, holder = failpoint_env(point, tmp_path)
    log = tmp_path / "killed.log"
    with session_process(shadeflow_args(*args, *LOCAL), dict(env, **held), log) as cli:
        wait_for(lambda: held_pid(holder), 180, f"the build at {point}", interval=0.05, process=cli, log=log)
        group = cli.pid
        killpg(cli)
    wait_no_processes(str(stable.link), {group}, timeout=30)
    assert_version_not_complete_looking(store)
    assert (store / "flatfield" / f"flatfield_{VERSION}" / ".shadeflow-writing.json").exists(), (
        "the kill did not land inside publishing"
    )

    rerun_matches([*args, *LOCAL], env, store, reference, tmp_path / "rerun.log")
    wait_no_processes(str(stable.link), {group}, timeout=30)
