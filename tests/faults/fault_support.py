"""Helpers for fault tests: real processes started in their own sessions, killed with SIGKILL, and
proof that a run either finished identically or left nothing that looks complete.

Every wait is bounded; every process a helper starts is stopped by the context manager that
started it (its whole session, SIGKILL), also when the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect_processes import stop, tail, wait_for

# the fault tests compare outputs with these (shadeflow.core.io.output_digest)
from shadeflow.core.io.output_digest import content_digest, output_digest  # noqa: F401
from shadeflow.core.io.output_folders import MANIFEST


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Prefect, AWS and shadeflow settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "SHADEFLOW_", "CO_MEMORY", "AWS_ENDPOINT_URL"))
    }
    env.update(
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        COLUMNS="160",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def prefect_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for subprocesses that use this session's Prefect test server."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "the Prefect test harness did not set an API URL"
    return clean_env(
        PREFECT_API_URL=url,
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_LOGGING_LEVEL="WARNING",
        **extra,
    )


def shadeflow_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "shadeflow", *args]


@contextmanager
def session_process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """``args`` in its own session, output to ``log``; the whole session is SIGKILLed on leaving."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop(process, signal.SIGKILL, grace=15)


def run_shadeflow(args: list[str], env: dict[str, str], log: Path, timeout: float) -> int:
    """``shadeflow <args>`` to its end (exit code); a run that outlives ``timeout`` fails the test with its
    log."""
    with session_process(shadeflow_args(*args), env, log) as process:
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"shadeflow {args[0]} did not end within {timeout:.0f} s\n{tail(log)}"
            ) from None


def killpg(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(30)


# ----------------------------------------------------------------------------------------------
# a Dask scheduler and single-thread workers as separate OS processes


class DaskProcesses:
    def __init__(self, folder: Path, env: dict[str, str]):
        self.folder = folder
        self.env = env
        self.scheduler_file = folder / "scheduler.json"
        self.workers: list[subprocess.Popen] = []
        self.address = ""

    def worker_count(self) -> int:
        from distributed import Client

        with Client(self.address, timeout=20) as client:
            return len(client.scheduler_info(n_workers=-1)["workers"])


@contextmanager
def dask_processes(
    folder: Path, env: dict[str, str], workers: int = 2, timeout: float = 60, nanny: bool = False
) -> Iterator[DaskProcesses]:
    """A scheduler and ``workers`` single-thread worker processes on 127.0.0.1: nanny-less (a killed
    worker stays dead) or each under a nanny (a killed worker is restarted)."""
    folder.mkdir(parents=True, exist_ok=True)
    dask = DaskProcesses(folder, env)
    scheduler_log = folder / "scheduler.log"
    scheduler_args = [
        sys.executable,
        "-m",
        "distributed.cli.dask_scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--dashboard-address",
        "127.0.0.1:0",
        "--scheduler-file",
        str(dask.scheduler_file),
    ]
    with session_process(scheduler_args, env, scheduler_log) as scheduler:
        wait_for(
            dask.scheduler_file.exists,
            timeout,
            "the Dask scheduler file",
            process=scheduler,
            log=scheduler_log,
        )
        dask.address = wait_for(
            lambda: _address(dask.scheduler_file),
            timeout,
            "the scheduler address",
            process=scheduler,
            log=scheduler_log,
        )
        started = []
        try:
            for i in range(workers):
                log = folder / f"worker-{i}.log"
                args = [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    "--nthreads",
                    "1",
                    "--nanny" if nanny else "--no-nanny",
                    "--name",
                    f"w{i}",
                    "--memory-limit",
                    "2GiB",
                    "--scheduler-file",
                    str(dask.scheduler_file),
                    "--local-directory",
                    str(folder / f"w{i}"),
                ]
                with open(log, "ab") as out:
                    started.append(
                        subprocess.Popen(
                            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                        )
                    )
            dask.workers = started
            wait_for(
                lambda: dask.worker_count() == workers,
                timeout,
                f"{workers} Dask workers",
                log=folder / "worker-0.log",
            )
            yield dask
        finally:
            for process in started:
                stop(process, signal.SIGKILL, grace=15)


def failpoint_env(point: str, folder: Path, **extra: str) -> tuple[dict[str, str], Path]:
    """Environment entries that hold the first process reaching ``point`` (``core/failpoints.py``),
    and the file where that process writes its id."""
    holder = folder / f"failpoint-{point}"
    return {"SHADEFLOW_FAILPOINT": point, "SHADEFLOW_FAILPOINT_FILE": str(holder), **extra}, holder


def held_pid(holder: Path) -> int | None:
    """The id of the process held at a failpoint, once it is there."""
    try:
        text = holder.read_text()
    except OSError:
        return None
    return int(text) if text.strip() else None


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _address(scheduler_file: Path) -> str | None:
    try:
        return json.loads(scheduler_file.read_text())["address"]
    except (OSError, ValueError, KeyError):
        return None


# ----------------------------------------------------------------------------------------------
# outputs


def assert_nothing_looks_complete(output: str | Path) -> None:
    """An output folder is absent, has no manifest, or is exactly what its manifest lists."""
    manifest = Path(output) / MANIFEST
    if not manifest.exists() or (Path(output) / ".shadeflow-writing.json").exists():
        return  # incomplete by definition (core/io/output_folders.py): every reader treats it as absent
    files = json.loads(manifest.read_text())["files"]
    for name, size in files.items():
        path = Path(output) / name
        assert path.exists(), f"{output}: the manifest lists {name}, which is missing"
        assert path.stat().st_size == size, (
            f"{output}: {name} has {path.stat().st_size} bytes, the manifest says {size}"
        )


def leftovers(root: str | Path, pattern: str = ".partial-") -> list[str]:
    """Staging folders (and temporary files) left below ``root``."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        found += [os.path.join(dirpath, n) for n in dirs + files if pattern in n]
    return sorted(found)


# ----------------------------------------------------------------------------------------------
# processes of ours


def _stat(pid: str) -> tuple[int, int] | None:
    """(pgrp, session) of a process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[2]), int(fields[3])


def our_processes(marker: str, groups: set[int]) -> list[str]:
    """Live processes whose command line holds ``marker`` or that are in one of ``groups``' sessions."""
    me = os.getpid()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if state == "Z":  # reaped soon by its parent; it runs nothing
            continue
        stat = _stat(pid)
        if marker in cmdline or (stat is not None and (stat[0] in groups or stat[1] in groups)):
            found.append(f"{pid}: {cmdline[:200]}")
    return found


def wait_no_processes(marker: str, groups: set[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = our_processes(marker, groups)
        if not left:
            return
        if time.monotonic() > deadline:
            listing = "\n".join(left)
            raise AssertionError(f"processes of the test still run after {timeout:.0f} s:\n{listing}")
        time.sleep(0.1)  # reads /proc only: cheap, and every fault test waits here twice


def last_error_line(log: Path) -> str:
    lines = [l for l in log.read_text(errors="replace").splitlines() if l.strip()]
    return lines[-1] if lines else ""


__all__ = ["tail", "wait_for"]


def differing(got: dict[str, dict[str, str]], want: dict[str, dict[str, str]]) -> list[str]:
    """Names (``slide/file``) whose digests differ or that only one side has."""
    out = []
    for slide in sorted(set(got) | set(want)):
        a, b = got.get(slide, {}), want.get(slide, {})
        out += [f"{slide}/{name}" for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]
    return out


class StablePath:
    """One absolute path (a symlink) for every run's input, so outputs that record input paths compare byte
    for byte."""

    def __init__(self, base: Path):
        self.link = base / "cohort"

    def point_at(self, target: Path) -> Path:
        temporary = self.link.with_name(f".cohort-{os.getpid()}")
        if temporary.is_symlink():
            temporary.unlink()
        os.symlink(target, temporary)
        os.replace(temporary, self.link)
        return self.link


def stable_path_fixture(name: str):
    """A module fixture: one fixed absolute path for every run's input in the module (outputs record
    their input paths, so runs compare byte for byte); removed at the end."""

    @pytest.fixture(scope="module")
    def stable():
        base = Path(tempfile.mkdtemp(prefix=f"sf-faults-{name}-{os.getpid()}-"))
        try:
            yield StablePath(base)
        finally:
            shutil.rmtree(base, ignore_errors=True)

    return stable
