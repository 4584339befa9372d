"""Prefect's temporary ("ephemeral") API server, made to die with the command that started it.

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

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

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


def _uvicorn(port: int) -> subprocess.Popen:
    """Prefect's own command and environment (``SubprocessASGIServer._run_uvicorn_command``, Prefect
    3.8), plus the parent-death signal."""
    import prefect
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
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
