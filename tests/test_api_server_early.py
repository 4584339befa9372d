"""The API server the command line launches early (``shadeflow.flows.api_server.start_api_server``,
issue 14 item 3): a run still goes to a Prefect API and is recorded there, the command never imports
Prefect's server module, the server is gone when the command ends, and nothing is launched when an
API is configured.

Each case is a fresh interpreter (as a command is), with its own ``PREFECT_HOME`` and no
``PREFECT_API_URL``; nothing is asserted about time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_cli import clean_env

COMMAND = """
import json, os, sys
from shadeflow.flows import api_server

prelaunched = None
if os.environ.get("PRELAUNCH"):  # as the command line does: before the input checks, then confirmed
    api_server.prelaunch_api_server()
    assert "prefect" not in sys.modules
    prelaunched = api_server._early.process.pid
api_server.start_api_server()
launched = api_server._early is not None
first = api_server._early.process.pid if launched else None
api_server.start_api_server()  # a second call changes nothing
assert api_server._early is None or api_server._early.process.pid == first
url = os.environ.get("PREFECT_API_URL")
steps = []
api_server.wait_for_api([lambda: steps.append("a"), lambda: steps.append("b")])

from prefect import flow
from prefect.client.orchestration import get_client

@flow(name="early-api-check")
def check() -> int:
    return 42

result = check()
with get_client(sync_client=True) as client:
    client_url = str(client.api_url)
    runs = [(r.name, r.flow_id, r.state.type.value) for r in client.read_flow_runs(limit=10)]
    flows = {str(f.id): f.name for f in client.read_flows(limit=10)}
print(json.dumps({
    "launched": launched,
    "url": url,
    "client_url": client_url,
    "result": result,
    "runs": [(flows.get(str(flow_id)), state) for _, flow_id, state in runs],
    "steps": steps,
    "server_module_imported": "prefect.server.api.server" in sys.modules,
    "server_pid": api_server._early.process.pid if launched else None,
    "prelaunched_pid": prelaunched,
}))
"""


def run(tmp_path, **env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", COMMAND],
        # the command line's patience (a fresh database is migrated first)
        env=clean_env(
            PREFECT_HOME=str(tmp_path / "prefect-home"),
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
            **env,
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] == "Z"  # a zombie is gone too
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("prelaunch", [False, True], ids=["launched", "prelaunched"])
def test_a_run_goes_to_the_early_server_and_is_recorded(tmp_path, prelaunch):
    report = run(tmp_path, **({"PRELAUNCH": "1"} if prelaunch else {}))
    assert report["launched"]
    if prelaunch:  # the prelaunched process is the one that serves
        assert report["server_pid"] == report["prelaunched_pid"]
    assert report["url"].startswith("http://127.0.0.1:") and report["url"].endswith("/api")
    assert report["client_url"].rstrip("/") == report["url"]  # Prefect uses it: no server of its own
    assert report["result"] == 42
    assert ["early-api-check", "COMPLETED"] in report["runs"]
    assert not report["server_module_imported"]
    assert report["steps"] in ([], ["a"], ["a", "b"])  # in order, only while the server did not answer
    if sys.platform.startswith("linux"):
        assert gone(report["server_pid"]), "the API server outlived the command"


def test_nothing_is_launched_when_an_api_is_configured(tmp_path):
    code = (
        "import json, os\n"
        "from shadeflow.flows import api_server\n"
        "api_server.start_api_server()\n"
        "api_server.wait_for_api([lambda: 1 / 0])\n"  # nothing to wait for: the steps do not run
        "print(json.dumps([api_server._early is None, os.environ['PREFECT_API_URL']]))\n"
    )
    url = "http://127.0.0.1:9/api"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env(PREFECT_HOME=str(tmp_path / "home"), PREFECT_API_URL=url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == [True, url]
    assert not os.path.exists(tmp_path / "home" / "prefect.db")


SERVE_WHEN_TOLD = """
import atexit, json, sys
bound = []
sys.addaudithook(lambda event, args: event == "socket.bind" and args[1:] != (("::1", 0),) and bound.append(1))
server = "prefect.server.api.server"
atexit.register(lambda: print(json.dumps({"bound": len(bound), "imported": server in sys.modules})))
from shadeflow.flows.api_server import serve_when_told
serve_when_told()
"""


def serve_when_told(tmp_path, home, told: str) -> tuple[int, dict]:
    result = subprocess.run(
        [sys.executable, "-c", SERVE_WHEN_TOLD],
        input=told,
        env=clean_env(PREFECT_HOME=str(home)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def test_the_prelaunched_process_not_told_to_serve_starts_nothing(tmp_path):
    """Launched before the input checks: it imports Prefect's server, and when the command ends without
    telling it to serve (a refused input) it exits having bound no socket and opened no database."""
    home = tmp_path / "home"
    code, report = serve_when_told(tmp_path, home, told="")
    assert code == 0
    assert report == {"bound": 0, "imported": True}
    assert not (home / "prefect.db").exists()


def test_the_prelaunched_process_exits_when_a_profile_configures_an_api(tmp_path):
    """The API may be configured where the command's first checks do not look (a Prefect profile): the
    prelaunched process reads the settings as Prefect does, and exits without importing the server."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "profiles.toml").write_text(
        'active = "remote"\n[profiles.remote]\nPREFECT_API_URL = "http://127.0.0.1:9/api"\n'
    )
    code, report = serve_when_told(tmp_path, home, told="serve 1\n")
    assert code == 4
    assert report == {"bound": 0, "imported": False}
    assert not (home / "prefect.db").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_in_the_terminal_leaves_the_prelaunched_process_to_the_command(tmp_path):
    """Ctrl-C reaches every process of the terminal's foreground group: the prelaunched process ignores
    it (the command handles it and ends the process), so no second traceback is printed."""
    import signal
    import time

    process = subprocess.Popen(
        [sys.executable, "-c", "from shadeflow.flows.api_server import serve_when_told; serve_when_told()"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(PREFECT_HOME=str(tmp_path / "home")),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120  # bounds the wait; nothing is asserted about time
        while not _ignores_sigint(process.pid):
            assert process.poll() is None and time.monotonic() < deadline, "SIGINT never ignored"
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(b"", timeout=300)  # the command ends: standard input closes
    finally:
        process.kill()
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr and b"KeyboardInterrupt" not in stderr


def _ignores_sigint(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as handle:
        ignored = next(line for line in handle if line.startswith("SigIgn:")).split()[1]
    return bool(int(ignored, 16) & (1 << (2 - 1)))  # SIGINT is signal 2
