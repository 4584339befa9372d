"""Real Prefect processes for tests: a server on 127.0.0.1 with its own PREFECT_HOME, serve processes.

Every process is started in its own session and stopped by the context manager that started it,
also when the test fails: SIGTERM for servers and serve processes (they exit on it), then SIGKILL
if one does not go within the grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: settings of the outer test session that must not leak into child processes
_PRIVATE_PREFIXES = ("PREFECT_", "SHADEFLOW_", "CO_MEMORY", "KUBECONFIG", "KUBERNETES_", "AWS_ENDPOINT_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(home: Path, **extra: str) -> dict[str, str]:
    """The test process's environment without Prefect/shadeflow settings, with its own Prefect home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_PREFIXES)}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_LOGGING_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def wait_for(
    check: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.5,
    process: subprocess.Popen | None = None,
    log: Path | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` (and the log's tail) after
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(
                f"process exited with {process.returncode} while waiting for {what}\n{tail(log)}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}\n{tail(log)}")
        time.sleep(interval)


def tail(log: Path | None, lines: int = 40) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 30) -> None:
    """Stop a process started in its own session, with its children (flow-run subprocesses, uvicorn)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    # children may outlive their parent briefly; the session is ours alone
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def started(
    args: list[str],
    env: Mapping[str, str],
    log: Path,
    cwd: str | Path | None = None,
    sig: int = signal.SIGTERM,
) -> Iterator[subprocess.Popen]:
    """Run ``args`` in its own session with output to ``log``; stop it on leaving the block."""
    with open(log, "ab") as out:
        process = subprocess.Popen(
            args, env=dict(env), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
    try:
        yield process
    finally:
        stop(process, sig)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def prefect_server(home: Path, startup_timeout: float = 180, **extra_env: str) -> Iterator[str]:
    """``prefect server start`` on 127.0.0.1 with its own PREFECT_HOME; yields the API URL."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = home / "server.log"
    args = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-ui",
        "--analytics-off",
    ]
    with started(args, child_env(home, **extra_env), log) as process:
        wait_for(
            lambda: _healthy(url), startup_timeout, f"the Prefect server at {url}", process=process, log=log
        )
        yield url


def sync_client(api_url: str):
    """A synchronous Prefect client for ``api_url`` (settings are entered for the client's lifetime)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @contextmanager
    def client() -> Iterator[Any]:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            with get_client(sync_client=True) as c:
                yield c

    return client()
