"""Prefect's temporary ("ephemeral") API server: started early, made to die with the command that
started it.

**Started early** (issue 14 item 3). Prefect starts its temporary server inside the flow call, when
the run needs its first client, and then waits for it: about 4.5 s of CPU in the server process
before it answers (most of it importing Prefect's server), after the command itself has imported
that server module only to launch it (7.6 s of ``-X importtime`` on a busy 2-core machine).
:func:`start_api_server`, called by the command line as soon as its input checks pass, launches
the same ``uvicorn`` command itself and points this process's Prefect at it (``PREFECT_API_URL``):
the server comes up while the command imports the flow, plans the run and starts its cluster;
:func:`wait_for_api`, just before the flow is called, waits only for the rest. Prefect then sees a
configured API: the run is recorded in the same database (``PREFECT_HOME``), and this process never
imports the server module. The server is stopped as Prefect stops its own, by ``SIGTERM`` at exit
and a wait for its orderly shutdown (which writes what it still holds).

When no Prefect API is configured (no ``PREFECT_API_URL``), Prefect 3 starts an ephemeral API server
the first time a client is needed: a ``uvicorn`` subprocess (``SubprocessASGIServer``) that it stops
from an ``atexit`` hook. A command killed with ``SIGKILL`` (or by the OOM killer) runs no ``atexit``
hook, and that server — about 260 MB — lived on with PPID 1 (issue 11, defect 8).

:func:`tie_ephemeral_server` registers, before Prefect needs it, Prefect's own server object with one
change: its ``uvicorn`` child asks the kernel for ``SIGKILL`` when its parent dies
(``prctl(PR_SET_PDEATHSIG)``, Linux). Everything else stays Prefect's: the server starts lazily (an
input refused by a flow's checks never starts it), on Prefect's ports, and stops at exit. Processes
the command starts afterwards (Dask workers) get ``PREFECT_API_URL`` pointing at it, so none of them
starts an untied server of its own. With an API configured nothing changes.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable

#: ``prctl`` option: the signal the calling process gets when its parent (thread) dies
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``SIGKILL`` when this process dies (Linux), or None.

    The kernel ties the signal to the *thread* that forks, so call :func:`subprocess.Popen` from a
    thread that lives as long as the child should (:func:`_from_a_lasting_thread`)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _from_a_lasting_thread(start: Callable[[], subprocess.Popen]) -> subprocess.Popen:
    """Call ``start`` in a thread that lives as long as this process: the kernel sends the parent-death
    signal when the *thread* that forked exits, and Prefect may first need its server in a short-lived
    thread (a task's, the progress bar's)."""
    done, result = threading.Event(), {}

    def spawn_and_stay() -> None:
        try:
            result["process"] = start()
        except BaseException as exc:  # handed to the caller
            result["error"] = exc
        done.set()
        threading.Event().wait()  # forever; a daemon thread ends with the process

    threading.Thread(target=spawn_and_stay, name="shadeflow-api-server-parent", daemon=True).start()
    done.wait()
    if "error" in result:
        raise result["error"]
    return result["process"]


def _uvicorn(port: int, settings_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Prefect's own command and environment (``SubprocessASGIServer._run_uvicorn_command``, Prefect
    3.8), plus the parent-death signal."""
    import prefect
    from prefect.settings import get_current_settings

    if settings_env is None:
        settings_env = get_current_settings().to_environment_variables(exclude_unset=True)
    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **settings_env,
    }
    args = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
        "--factory", "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "error", "--lifespan", "on",
    ]  # fmt: skip
    return subprocess.Popen(args, env=env, preexec_fn=die_with_parent())


def tie_ephemeral_server() -> None:
    """If Prefect would start its ephemeral API server, make that server die with this process.

    Prefect's server module is not imported here (importing it runs a subprocess and takes a while, and
    a command that fails its checks should start nothing): the tied server is registered the moment
    Prefect imports that module, which it does just before it starts the server."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value() or die_with_parent() is None:
        return
    module = sys.modules.get(_SERVER_MODULE)
    if module is not None:
        _register(module.SubprocessASGIServer)
    elif not any(isinstance(finder, _RegisterOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())


_SERVER_MODULE = "prefect.server.api.server"


class _RegisterOnImport:
    """A meta-path finder that, once, lets the server module load as usual and then registers the tied
    server."""

    def find_spec(self, name, path=None, target=None):
        if name != _SERVER_MODULE:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module) -> None:
            load(module)
            _register(module.SubprocessASGIServer)

        spec.loader.exec_module = exec_module
        return spec


def _register(base) -> None:
    if None in base._instances:  # Prefect's server object exists already (tied or not); leave it be
        return

    class TiedServer(base):
        def _run_uvicorn_command(self) -> subprocess.Popen:
            return _from_a_lasting_thread(lambda: _uvicorn(self.port))

        def start(self, timeout: int | None = None) -> None:
            super().start(timeout)
            os.environ["PREFECT_API_URL"] = self.api_url  # for processes started from now on

    TiedServer()  # the instance Prefect's get_client() finds (its key: port None)


#: uvicorn's exit code when it cannot start (e.g. the port was taken meanwhile): Prefect tries another port
_STARTUP_FAILURE = 3
_STOP_GRACE = 5.0  # seconds for the server's orderly shutdown, as Prefect allows its own


class EarlyServer:
    """The API server :func:`start_api_server` launched: its process, port and address."""

    def __init__(self, settings_env: dict[str, str], timeout: float):
        self.settings_env = settings_env
        self.timeout = timeout
        self.ready = False
        self.process: subprocess.Popen | None = None
        self._launch()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _launch(self) -> None:
        self.port = _free_port()
        self.launched = time.monotonic()
        start = lambda: _uvicorn(self.port, self.settings_env)  # noqa: E731
        self.process = start() if threading.current_thread() is threading.main_thread() else (
            _from_a_lasting_thread(start)
        )  # fmt: skip

    def wait(self, meanwhile: Iterable[Callable[[], object]] = ()) -> None:
        """Until the server answers ``/health``; another port if uvicorn could not start on this one.
        While it does not answer yet, the steps of ``meanwhile`` run one by one (the ones left when it
        answers are skipped)."""
        import httpx

        steps = iter(meanwhile)
        with httpx.Client() as client:
            while not self.ready:
                if self.process.poll() is not None:
                    if self.process.returncode != _STARTUP_FAILURE:
                        raise RuntimeError(
                            f"Prefect's temporary API server exited with code {self.process.returncode}"
                        )
                    self._launch()
                    os.environ["PREFECT_API_URL"] = self.api_url
                    _refresh_prefect_settings()
                try:
                    self.ready = client.get(f"{self.api_url}/health").status_code == 200
                except httpx.TransportError:
                    pass
                step = None if self.ready else next(steps, None)
                if step is not None:
                    step()
                    continue  # ask again before the next step
                if not self.ready:
                    if time.monotonic() > self.launched + self.timeout:  # as Prefect counts: from the launch
                        raise RuntimeError(
                            f"Prefect's temporary API server did not answer within {self.timeout:g} s "
                            "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)"
                        )
                    time.sleep(0.05)

    def stop(self) -> None:
        """As Prefect stops its own: ``SIGTERM``, a few seconds for the orderly shutdown, then ``SIGKILL``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=_STOP_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_early: EarlyServer | None = None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _refresh_prefect_settings() -> None:
    """Prefect reads its settings once, when imported: make it see the changed environment."""
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()


def start_api_server() -> None:
    """Launch Prefect's temporary API server now, if this command will need one (no ``PREFECT_API_URL``,
    ephemeral mode on), and point Prefect — in this process and in any it starts — at it. Returns at
    once; :func:`wait_for_api` waits for the server to answer. Called once the command's input checks
    have passed (nothing starts for a refused input)."""
    global _early
    if _early is not None:
        return
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        return
    _early = EarlyServer(
        settings.to_environment_variables(exclude_unset=True),
        float(settings.server.ephemeral.startup_timeout_seconds),
    )
    atexit.register(_early.stop)
    os.environ["PREFECT_API_URL"] = _early.api_url
    _refresh_prefect_settings()


def wait_for_api(meanwhile: Iterable[Callable[[], object]] = ()) -> None:
    """Until the server :func:`start_api_server` launched answers (nothing to wait for without one);
    meanwhile, the steps of ``meanwhile`` while it does not answer yet (e.g. imports the run makes later
    anyway)."""
    if _early is not None:
        _early.wait(meanwhile)


def launched_api_server() -> bool:
    """Whether this command launched Prefect's temporary API server (:func:`start_api_server`)."""
    return _early is not None
