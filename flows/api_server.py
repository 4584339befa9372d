"""Prefect's temporary ("ephemeral") API server: started early, made to die with the command that
started it.

**Started early** (issue 14 item 3). Prefect starts its temporary server inside the flow call, when
the run needs its first client, and then waits for it: about 4 s of CPU in the server process before
it answers on two cores — 2.5 s importing Prefect's server, 1.4 s importing every installed collection
to register block types this server never serves — after the command itself has imported that server
module only to launch it. Here, instead:

- :func:`prelaunch_api_server`, called by the command line as soon as its parameters parse and before
  its input checks, launches a process that imports Prefect's server (:func:`serve_when_told`) and
  waits; it binds no socket and opens no database, and a refused input ends it.
- :func:`start_api_server`, once the input checks out, tells it to serve on a free port (or launches
  Prefect's ``uvicorn`` command itself) and points this process's Prefect at it (``PREFECT_API_URL``):
  the server comes up while the command imports the flow, plans the run and starts its cluster.
- :func:`wait_for_api`, just before the flow is called, waits only for the rest.

Prefect then sees a configured API: the run is recorded in the same database (``PREFECT_HOME``), and
this process never imports the server module. The server is stopped as Prefect stops its own, by
``SIGTERM`` at exit and a wait for its orderly shutdown (which writes what it still holds).

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


#: The temporary server serves this command's runs only; shadeflow uses no Prefect blocks. Registering
#: the installed collections' block types (or hashing them to learn it need not) imports every collection
#: first: prefect-aws and prefect-dask, 1.4 s of the server's ~4 s start on 2 cores. A lasting
#: ``prefect server`` on the same home still registers them when it starts. Settings the user gives win.
_TEMPORARY_SERVER_DEFAULTS = {
    "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
    "PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
}


def _server_environment(settings_env: dict[str, str]) -> dict[str, str]:
    """Prefect's environment for its server process (``SubprocessASGIServer._run_uvicorn_command``,
    Prefect 3.8): this one, the temporary server's defaults, then the settings the user gave."""
    return {
        **os.environ,
        **_TEMPORARY_SERVER_DEFAULTS,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **settings_env,
    }


def _uvicorn_arguments(port: int) -> list[str]:
    """Prefect's own ``uvicorn`` command line for its temporary server."""
    import prefect

    return [
        "--app-dir", str(prefect.__module_path__.parent), "--factory", "prefect.server.api.server:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on",
    ]  # fmt: skip


def _uvicorn(port: int, settings_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Prefect's own command and environment, plus the parent-death signal."""
    from prefect.settings import get_current_settings

    if settings_env is None:
        settings_env = get_current_settings().to_environment_variables(exclude_unset=True)
    args = [sys.executable, "-m", "uvicorn", *_uvicorn_arguments(port)]
    return subprocess.Popen(args, env=_server_environment(settings_env), preexec_fn=die_with_parent())


def _prelaunched() -> subprocess.Popen:
    """The process :func:`serve_when_told` runs: it imports Prefect's server while this command checks
    its input, and serves once told to (and on which port)."""
    code = "from shadeflow.flows.api_server import serve_when_told; serve_when_told()"
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, preexec_fn=die_with_parent())


#: the prelaunched process's exit code when Prefect has an API configured or its temporary server off
_NOT_NEEDED = 4
#: the line that tells the prelaunched process to serve (then its port); anything else makes it exit
_SERVE = b"serve"


def serve_when_told() -> None:
    """In the prelaunched process: exit at once if Prefect is configured with an API (or without its
    temporary server); otherwise import Prefect's server — most of its start, and nothing that starts
    anything: no socket, no database — and wait for the command. Told to serve (``serve PORT`` on
    standard input), serve on that port as :func:`_uvicorn` would; otherwise exit. The settings are read
    here as the command reads them (same environment, folder and Prefect home), and the server's
    environment is made as Prefect makes it."""
    # Ctrl-C in the terminal reaches this process too: the command handles it and stops this one, which
    # must not print a traceback of its own meanwhile (uvicorn installs its handlers when it serves)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        sys.exit(_NOT_NEEDED)
    os.environ.update(_server_environment(settings.to_environment_variables(exclude_unset=True)))
    _refresh_prefect_settings()
    import prefect.server.api.server  # noqa: F401 — imported now, created and started only when told
    from uvicorn.main import main as uvicorn

    told = sys.stdin.buffer.readline().split()
    if len(told) != 2 or told[0] != _SERVE:
        sys.exit(0)  # the command refused its input, or ended
    uvicorn.main(args=_uvicorn_arguments(int(told[1])), prog_name="uvicorn")


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
    """The API server :func:`prelaunch_api_server` or :func:`start_api_server` launched: its process,
    port and address. Without ``settings_env`` (prelaunched) the process decides for itself whether to
    serve (:func:`serve_when_told`); :func:`start_api_server` later confirms it (:meth:`confirm`)."""

    def __init__(self, timeout: float, settings_env: dict[str, str] | None = None):
        self.settings_env = settings_env
        self.timeout = timeout
        self.ready = False
        self.process: subprocess.Popen | None = None
        self._launch()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def confirm(self, settings_env: dict[str, str], timeout: float) -> None:
        """Prefect needs this server: tell the prelaunched process to serve; keep the settings (for a
        relaunch on another port) and the patience."""
        self.settings_env, self.timeout = settings_env, timeout
        self.port = _free_port()
        try:
            self.process.stdin.write(_SERVE + b" %d\n" % self.port)
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):  # it exited: :meth:`wait` learns why and launches anew
            pass

    def _launch(self) -> None:
        self.launched = time.monotonic()
        if self.settings_env is None:  # the port is chosen when it is told to serve: nothing bound before
            self.port = None
            start = _prelaunched
        else:
            self.port = _free_port()
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
                    if self.process.returncode not in (_STARTUP_FAILURE, _NOT_NEEDED):
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
        if process is None:
            return
        if process.stdin is not None:
            try:
                process.stdin.close()  # a prelaunched process not told to serve exits
            except OSError:
                pass
        if process.poll() is not None:
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


def prelaunch_api_server() -> None:
    """Launch, before this process imports Prefect, the process that imports Prefect's server and becomes
    the temporary API server once :func:`start_api_server` tells it to (:func:`serve_when_told`).
    Called as soon as the command's parameters parse, before its input checks: on two cores the checks
    and the server's imports (~2.5 s of CPU, most of a small run's fixed cost) run side by side. Nothing
    is started before the input checks out — no socket bound, no database opened; a refused input ends
    the process (:func:`stop_api_server`)."""
    global _early
    if _early is not None or os.environ.get("PREFECT_API_URL"):
        return
    _early = EarlyServer(_STARTUP_TIMEOUT)
    atexit.register(_early.stop)


#: until the settings are read (:func:`start_api_server`); Prefect's default is 20 s, the command's 120 s
_STARTUP_TIMEOUT = 120.0


def start_api_server() -> None:
    """Once the command's input checks have passed: if Prefect needs its temporary API server (no
    ``PREFECT_API_URL``, ephemeral mode on), confirm the prelaunched one, or launch it now, and point
    Prefect — in this process and in any it starts — at it; otherwise stop the prelaunched one. Returns
    at once; :func:`wait_for_api` waits for the server to answer."""
    global _early
    if _early is not None and _early.settings_env is not None:
        return  # launched, or confirmed, already
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        stop_api_server()
        return
    settings_env = settings.to_environment_variables(exclude_unset=True)
    timeout = float(settings.server.ephemeral.startup_timeout_seconds)
    if _early is None:
        _early = EarlyServer(timeout, settings_env)
        atexit.register(_early.stop)
    else:
        _early.confirm(settings_env, timeout)
    os.environ["PREFECT_API_URL"] = _early.api_url
    _refresh_prefect_settings()


def stop_api_server() -> None:
    """Stop the server :func:`prelaunch_api_server` or :func:`start_api_server` launched, if any (a
    refused input; Prefect configured with an API after all)."""
    global _early
    if _early is not None:
        _early.stop()
        _early = None


def wait_for_api(meanwhile: Iterable[Callable[[], object]] = ()) -> None:
    """Until the server :func:`start_api_server` launched answers (nothing to wait for without one);
    meanwhile, the steps of ``meanwhile`` while it does not answer yet (e.g. imports the run makes later
    anyway)."""
    if _early is not None:
        _early.wait(meanwhile)


def launched_api_server() -> bool:
    """Whether this command launched Prefect's temporary API server (:func:`start_api_server`)."""
    return _early is not None
