"""Command-line runs for tests from a pre-imported process that forks one child per command.

A command refused before anything starts costs about a second of CPU in a fresh interpreter, nearly all
of it imports; the error tables run well over a hundred of them. A *zygote* imports the command line
and its input checks once (nothing of Prefect or Dask: a test checks that a refused command never
imports them) and forks a child for each command. The child is a fresh process as far as the command
can tell: its own environment, working folder, standard streams and exit code, and it ends through
the interpreter's normal shutdown (exit handlers, thread joins) as ``python -c`` would.

The child runs ``code`` (a Python source that reads ``sys.argv`` and calls ``sys.exit``), so a test
asserts on it exactly as on a subprocess.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

#: the children's captured streams live here, not in the command's folder (tests compare those folders)
_STREAMS = Path(tempfile.mkdtemp(prefix="shadeflow-cli-streams-"))

#: the zygote: reads one JSON request per line, forks, and answers ``pid`` then the exit code; the child
#: leaves the loop and runs the request's code at module level, so that it exits like ``python -c``
ZYGOTE = r"""
import json, os, sys
# what every command imports
import shadeflow.flows.cli, shadeflow.flows.preflight, shadeflow.flows.parameters
import numpy, tifffile, threading
# a fork copies only the forking thread: a thread an import started would be missing in every child
assert threading.active_count() == 1, [t.name for t in threading.enumerate()]
reply = os.fdopen(os.dup(1), "w")
while True:
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)
    request = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush(); reply.flush()
    pid = os.fork()
    if pid == 0:
        break
    print(pid, file=reply, flush=True)
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), file=reply, flush=True)
reply.close()
os.chdir(request["cwd"])
os.environ.clear()
os.environ.update(request["env"])
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
for fd, name in ((1, "stdout"), (2, "stderr")):
    os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
sys.argv = ["-c", *request["args"]]
exec(compile(request["code"], "<command>", "exec"))
"""


class Zygote:
    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
            start_new_session=True,
        )

    def run(self, code: str, args: list[str], env: dict[str, str], cwd: Path, timeout: float):
        streams = {name: _STREAMS / f"{name}-{threading.get_ident()}" for name in ("stdout", "stderr")}
        request = {
            "code": code,
            "args": args,
            "env": env,
            "cwd": str(cwd),
            **{k: str(v) for k, v in streams.items()},
        }
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        pid = int(self.process.stdout.readline())
        answer: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: answer.put(self.process.stdout.readline()), daemon=True).start()
        try:
            code_line = answer.get(timeout=timeout)
        except queue.Empty:
            os.kill(pid, signal.SIGKILL)
            answer.get()
            raise subprocess.TimeoutExpired(args, timeout) from None
        outputs = {name: path.read_text() for name, path in streams.items()}
        for path in streams.values():
            path.unlink()
        return subprocess.CompletedProcess(args, int(code_line), outputs["stdout"], outputs["stderr"])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


_free: queue.SimpleQueue = queue.SimpleQueue()
_all: list[Zygote] = []
_lock = threading.Lock()


def run_code(code: str, args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300):
    """``python -c code *args`` with ``env`` in ``cwd``, as a fork of a zygote (one per concurrent caller)."""
    try:
        zygote = _free.get_nowait()
    except queue.Empty:
        with _lock:
            zygote = Zygote({k: v for k, v in env.items() if not k.startswith(("PREFECT_", "SHADEFLOW_"))})
            _all.append(zygote)
    try:
        return zygote.run(code, args, env, cwd, timeout)
    finally:
        _free.put(zygote)


@atexit.register
def close_all() -> None:
    for zygote in _all:
        zygote.close()
