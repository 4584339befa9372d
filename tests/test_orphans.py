"""``kill -9`` of the command leaves no process behind (issue 11, defect 8).

Prefect's own ephemeral API server (a ``uvicorn`` subprocess, ~260 MB) is stopped from an ``atexit``
hook, which ``SIGKILL`` never runs: every killed command left one running with PPID 1. The command
line now starts that server with a parent-death signal (``shadeflow.flows.api_server``: prelaunched
by the command itself before its input checks, or by Prefect when something else needs it first).
Without that change both cases fail (checked by disabling it: the ``uvicorn`` server is left).

Each case runs the real command in a subprocess with no ``PREFECT_API_URL`` (so it needs its own API
server, as a user's would), in a session of its own, waits until it has started children, kills it
with ``SIGKILL`` and then checks, within a bound, that every process it had started — and every
process of its session, so children started after the last look are counted too — is gone. Whatever
the outcome, the test kills the whole session at the end: it stops everything it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from test_cli import clean_env

from shadeflow.core.synth.stacks import StackConfig, write_stack

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

#: generous bounds for a busy 2-core machine; they bound waiting, nothing is asserted about time
STARTUP_BOUND, GONE_BOUND = 240.0, 30.0


def processes() -> dict[int, tuple[int, int, str, str]]:
    """pid → (ppid, session id, state, start time) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        table[int(entry)] = (int(fields[1]), int(fields[3]), fields[0], fields[19])
    return table


def descendants(root: int, table) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, row in table.items() if row[0] in frontier} - found
        found |= frontier
    return found


def alive(pid: int, start: str, table) -> bool:
    """Still running: the same process (not a reused pid) and not a zombie (a dead process whose
    parent — PID 1 in a container without an init — has not reaped it)."""
    row = table.get(pid)
    return row is not None and row[3] == start and row[2] != "Z"


def command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return "?"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("orphans")
    write_stack(str(root / "in"), StackConfig(size=32, n=16, seed=3), workers=1)
    return root


@pytest.mark.parametrize(
    "when, extra, marker",
    [
        # as soon as the command has a child: its API server, starting (prelaunched before the checks)
        ("server-started", [], "serve_when_told"),
        # once the run is underway with Dask worker processes (--workers 2): more children to lose
        ("workers-started", ["--workers", "2"], "spawn_main"),
    ],
)
def test_kill_9_of_the_command_leaves_no_process(stack, tmp_path, when, extra, marker):
    env = clean_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_LOGGING_LEVEL="WARNING")
    log = tmp_path / "command.log"
    args = [
        sys.executable,
        "-m",
        "shadeflow",
        "estimate",
        str(stack / "in" / "stack.zarr"),
        "--out",
        str(tmp_path / "out"),
        "--darkfield",
        *extra,
    ]
    with open(log, "wb") as out:
        command = subprocess.Popen(
            args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    seen: dict[int, str] = {}  # every descendant ever seen → its start time
    try:
        deadline = time.monotonic() + STARTUP_BOUND
        while True:
            table = processes()
            for pid in descendants(command.pid, table):
                seen.setdefault(pid, table[pid][3])
            children = [pid for pid in seen if alive(pid, seen[pid], table)]
            if any(marker in command_line(pid) for pid in children):
                break
            assert command.poll() is None, (
                f"the command ended (exit {command.returncode}) before it started a {marker} "
                f"child:\n{log.read_text()}"
            )
            assert time.monotonic() < deadline, (
                f"no {marker} child of the command after {STARTUP_BOUND:.0f} s:\n{log.read_text()}"
            )
            time.sleep(0.1)
        described = {pid: command_line(pid) for pid in children}
        assert any(
            any(name in text for name in ("uvicorn", "prefect", "serve_when_told"))
            for text in described.values()
        ), described

        os.kill(command.pid, signal.SIGKILL)
        command.wait(30)

        deadline = time.monotonic() + GONE_BOUND
        while True:
            table = processes()
            left = {pid for pid in seen if alive(pid, seen[pid], table)}
            # its session
            left |= {pid for pid, row in table.items() if row[1] == command.pid and row[2] != "Z"}
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert not left, (
            "processes left running after kill -9 of the command: "
            f"{[(pid, command_line(pid)) for pid in sorted(left)]}"
        )
    finally:
        try:
            os.killpg(command.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid, start in seen.items():  # children that left the session, if any
            if alive(pid, start, processes()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if command.poll() is None:
            command.kill()
            command.wait(30)
