"""Where a small local run's wall time goes: the fixed cost of ``shadeflow estimate``, ``correct`` and
``meanimage`` (issue 14 item 3).

    .venv/bin/python bench/startup.py [--repeats 3] [--verbs estimate,correct,meanimage,missing-tile]
        [--out DIR] [--python LABEL=PATH ...] [--json FILE] [--sample PREFIX]

``--python before=/path/to/other/venv/bin/python --python after=.venv/bin/python`` measures two
checkouts side by side (their runs interleaved); ``--sample`` writes the command's main-thread stack
every 0.25 s, to look inside a phase.

Each run is the real command line in a subprocess of its own (``shadeflow.flows.cli.main``, as the
``shadeflow`` script calls it), on small inputs made once under ``--out``:

* **estimate** — BaSiC's 63-frame 128 × 128 ``wsi_brain`` stack (``../shared/data/real-stacks``) as one
  zarr array (a synthetic 63 × 128 × 128 stack if the real one is not there);
* **correct** — one synthetic 8 × 128 × 128 OME-Zarr tile, its planted flatfield, background 100;
* **meanimage** — one synthetic slide of 4 × 4 fields of 96 × 128 × 2;
* **missing-tile** — ``correct`` with a tile that does not exist: the time to its error line.

The subprocess is instrumented from outside the package (hooks installed before the CLI is imported,
no change to what runs): it records when the CLI module is imported, when the input checks
(``flows/preflight.py``) end, when the flow module (Prefect, Dask) is imported, when the flow is called
and returns, when Prefect's API answers, when the run's Dask cluster is created and closed, when the
outputs are written, when the command returns and when its exit handlers start. The table shows, per
phase, the minimum and the median over ``--repeats`` runs, in seconds of wall time on the command's
critical path:

``interpreter + CLI import`` · ``input checks`` · ``flow import (Prefect, Dask)`` · ``plan + settings``
(until the flow is called) · ``API start, waited`` (the time the command waited for Prefect's API server
after it had nothing else to do; with the early server of ``flows/api_server.py`` this includes the
imports made meanwhile) · ``run set-up`` (the flow run created, until the cluster starts) ·
``cluster start`` · ``work`` · ``writing`` (estimate, meanimage: the output writing task; correct writes
inside its work) · ``after writing`` (artifacts, results) · ``cluster close`` · ``run end`` (final
state, until the flow call returns) · ``report`` (the summary lines) · ``exit handlers`` (the API
server's stop, log flushing) · ``interpreter exit`` (after the last exit handler) — then the wall
total, the CPU time of the command and its children, and the API server's own start time (launch to
first answer, in the background).

All runs share one Prefect home under ``--out`` (as a user's ``~/.prefect``); the very first run, on a
fresh home (the database is created and migrated), is reported on its own. The machine's load average
is printed before and after: on a shared 2-core machine wall times follow the load, CPU times much less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_STACK = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "real-stacks", "wsi_brain.npz"))
EVENTS_ENV, T0_ENV, SAMPLE_ENV = (
    "SHADEFLOW_STARTUP_EVENTS",
    "SHADEFLOW_STARTUP_T0",
    "SHADEFLOW_STARTUP_SAMPLE",
)

#: (label, start event, end event): consecutive spans of the command's own thread
PHASES = (
    ("interpreter + CLI import", "spawn", "cli_imported"),
    ("input checks", "cli_imported", "preflight_end"),
    ("flow import (Prefect, Dask)", "preflight_end", "flow_import_end"),
    ("plan + settings", "flow_import_end", "flow_start"),
    ("run set-up", "flow_start", "cluster_start"),
    ("cluster start", "cluster_start", "cluster_ready"),
    ("work", "cluster_ready", "write_start"),
    ("writing", "write_start", "write_end"),
    ("after writing", "write_end", "cluster_close_start"),
    ("cluster close", "cluster_close_start", "cluster_close_end"),
    ("run end", "cluster_close_end", "flow_end"),
    ("report", "flow_end", "main_end"),
    ("exit handlers", "main_end", "atexit_end"),
    ("interpreter exit", "atexit_end", "exit"),
)
API_WAITED = "API start, waited"


# ----------------------------------------------------------------------------------------------
# the instrumented command (runs in the subprocess)


def mark(name: str) -> None:
    """Record that ``name`` happened now (seconds since the spawn), one JSON line appended to the events
    file: wrappers that Dask pickles by value and runs elsewhere in the process still reach it."""
    line = json.dumps([name, time.time() - float(os.environ[T0_ENV])])
    with open(os.environ[EVENTS_ENV], "a") as f:
        f.write(line + "\n")


def timed(fn, start: str, end: str, first_only: bool = False):
    """``fn``, marking ``start`` before and ``end`` after each call (``first_only``: the first call only;
    Prefect's server ``start`` returns at once to a second caller while the first one still waits)."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(None)
        if first_only and len(calls) > 1:
            return fn(*args, **kwargs)
        mark(start)
        try:
            return fn(*args, **kwargs)
        finally:
            mark(end)

    return wrapper


def _sample_main_thread(path: str, every: float = 0.25) -> None:
    """Write the main thread's stack every ``every`` seconds to ``path`` (to see inside a phase)."""
    import threading
    import traceback

    main = threading.main_thread().ident
    t0 = float(os.environ[T0_ENV])

    def sample() -> None:
        with open(path, "w") as f:
            while True:
                time.sleep(every)
                frame = sys._current_frames().get(main)
                if frame is None:
                    return
                stack = "".join(traceback.format_stack(frame, limit=40))
                f.write(f"=== {time.time() - t0:.2f}\n{stack}")
                f.flush()

    threading.Thread(target=sample, name="startup-sampler", daemon=True).start()


def child(argv: list[str]) -> None:
    """Run ``shadeflow <argv>`` with timing hooks; the events go to ``$SHADEFLOW_STARTUP_EVENTS``."""
    import atexit
    import importlib.util

    mark("python")
    atexit.register(mark, "atexit_end")  # the last exit handler to run: registered first
    if os.environ.get(SAMPLE_ENV):
        _sample_main_thread(os.environ[SAMPLE_ENV])

    def local_cluster(**kwargs):
        from distributed import LocalCluster

        mark("cluster_start")
        cluster = LocalCluster(**kwargs)
        mark("cluster_ready")
        cluster.close = timed(cluster.close, "cluster_close_start", "cluster_close_end")
        return cluster

    def preflight(module) -> None:
        for verb in ("estimate", "correct", "meanimage"):
            setattr(module, verb, timed(getattr(module, verb), "preflight_start", "preflight_end"))

    def api_server(module) -> None:  # this checkout's own API start, if it has one
        for name, start, end in (
            ("prelaunch_api_server", "api_spawn", "api_spawned"),  # the first of the two counts
            ("start_api_server", "api_spawn", "api_spawned"),
            ("wait_for_api", "api_wait", "api_ready"),
        ):
            if hasattr(module, name):
                setattr(module, name, timed(getattr(module, name), start, end, first_only=True))

    def prefect_server(module) -> None:  # Prefect's ephemeral server, started inside the flow call
        base = module.SubprocessASGIServer
        base.start = timed(base.start, "api_wait", "api_ready", first_only=True)

    def cluster(module) -> None:
        module.CLUSTER_CLASSES["local"] = local_cluster

    def run(module) -> None:
        module.run_with_progress = timed(module.run_with_progress, "flow_start", "flow_end")

    def estimate_tasks(module) -> None:
        module.write_estimate = timed(module.write_estimate, "write_start", "write_end")

    def meanimage_tasks(module) -> None:
        module.write_meanimage_outputs = timed(module.write_meanimage_outputs, "write_start", "write_end")

    after_import = {
        "shadeflow.flows.preflight": preflight,
        "shadeflow.flows.api_server": api_server,
        "prefect.server.api.server": prefect_server,
        "shadeflow.infra.cluster": cluster,
        "shadeflow.flows.run": run,
        "shadeflow.tasks.estimate": estimate_tasks,
        "shadeflow.tasks.meanimage": meanimage_tasks,
    }
    flow_modules = {f"shadeflow.flows.{verb}" for verb in ("estimate", "correct", "meanimage")}

    class Hooks:
        """Patch a module right after it is executed; time the flow module's import."""

        def find_spec(self, name, path=None, target=None):
            if name not in after_import and name not in flow_modules:
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            load = spec.loader.exec_module

            def exec_module(module) -> None:
                if name in flow_modules:
                    mark("flow_import_start")
                load(module)
                if name in after_import:
                    after_import[name](module)
                if name in flow_modules:
                    mark("flow_import_end")

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Hooks())
    from shadeflow.flows import cli

    mark("cli_imported")
    sys.argv = ["shadeflow", *argv]
    code: int | str | None = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
    mark("main_end")
    atexit.register(mark, "atexit_start")  # the first exit handler to run: registered last
    sys.exit(code)


# ----------------------------------------------------------------------------------------------
# inputs


def shadeflow(*args: str, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "shadeflow", *args], env=env, check=True, stdout=subprocess.DEVNULL)


def make_inputs(folder: str, env: dict[str, str]) -> dict[str, str]:
    """Small inputs for each verb, made once."""
    inputs = {
        "stack": os.path.join(folder, "stack.zarr"),
        "tile": os.path.join(folder, "tiles", "tile.ome.zarr"),
        "flatfield": os.path.join(folder, "tiles", "truth", "tile_flatfield.npy"),
        "slide": os.path.join(folder, "slides", "SYN1_1"),
    }
    if not os.path.exists(REAL_STACK):  # a synthetic stack of the same size
        from shadeflow.core.synth.stacks import STACK_NAME, StackConfig, write_stack

        synthetic = os.path.join(folder, "synthetic-stack")
        inputs["stack"] = os.path.join(synthetic, STACK_NAME)
        if not os.path.exists(inputs["stack"]):
            write_stack(synthetic, StackConfig(kind="tissue", size=128, n=63, seed=0))
    elif not os.path.exists(inputs["stack"]):
        import numpy as np
        import zarr

        images = np.load(REAL_STACK)["images"]
        array = zarr.create_array(inputs["stack"], shape=images.shape, chunks=(16, *images.shape[1:]),
                                  dtype=images.dtype)  # fmt: skip
        array[:] = images
    if not os.path.exists(inputs["tile"]):
        shadeflow("synth", "tile", "--out", os.path.join(folder, "tiles"), "--shape", "8,128,128",
                  "--chunks", "8,128,128", env=env)  # fmt: skip
    if not os.path.exists(inputs["slide"]):
        shadeflow("synth", "slides", "--out", os.path.join(folder, "slides"), "--slides", "1",
                  "--grid", "4x4", "--shape", "96", "128", "2", env=env)  # fmt: skip
    return inputs


def commands(inputs: dict[str, str], out: str) -> dict[str, list[str]]:
    correct = ["--flatfield", inputs["flatfield"], "--background", "100", "--out", out]
    return {
        "estimate": ["estimate", inputs["stack"], "--out", out],
        "correct": ["correct", inputs["tile"], *correct],
        "meanimage": ["meanimage", inputs["slide"], "--overwrite"],  # into the slide folder, again
        "missing-tile": [
            "correct",
            os.path.join(os.path.dirname(inputs["tile"]), "missing.ome.zarr"),
            *correct,
        ],
    }


# ----------------------------------------------------------------------------------------------
# running and reporting


def run_once(python: str, argv: list[str], env: dict[str, str]) -> dict:
    """One instrumented command: its events (seconds from spawn), wall, CPU and exit code."""
    with tempfile.TemporaryDirectory() as scratch:
        events_path = os.path.join(scratch, "events.json")
        log_path = os.path.join(scratch, "log")
        start = time.time()
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [python, os.path.abspath(__file__), "--child", *argv],
                env={**env, EVENTS_ENV: events_path, T0_ENV: repr(start)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            _, status, usage = os.wait4(process.pid, 0)
        wall = time.time() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        events: dict[str, float] = {}
        if os.path.exists(events_path):
            for line in open(events_path):
                name, at = json.loads(line)
                events.setdefault(name, at)  # the first time each happened
        output = open(log_path).read()
    events.update(spawn=0.0, exit=wall)
    return {
        "events": events,
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "code": process.returncode,
        "output": output,
    }


def phases(run: dict) -> dict[str, float]:
    """Seconds per phase on the command's critical path (a phase whose events are missing is left out)."""
    ev = run["events"]
    spans: dict[str, float] = {}
    chain = [p for p in PHASES if p[1] in ev and p[2] in ev]
    if "write_start" not in ev:  # correct writes inside its work: work runs to the cluster's close
        chain = [(n, a, "cluster_close_start" if b == "write_start" else b) for n, a, b in chain]
        if "cluster_ready" in ev and "cluster_close_start" in ev:
            chain.append(("work", "cluster_ready", "cluster_close_start"))
    for name, a, b in chain:
        spans[name] = max(0.0, ev[b] - ev[a])
    if "api_wait" in ev and "api_ready" in ev:
        waited = ev["api_ready"] - ev["api_wait"]
        spans[API_WAITED] = waited
        # the wait happened inside one of the spans above: take it out of that one
        for name, a, b in chain:
            if ev[a] <= ev["api_wait"] and ev["api_ready"] <= ev[b]:
                spans[name] -= waited
                break
    spans["total wall"] = run["wall"]
    spans["CPU (command + children)"] = run["cpu"]
    start = ev.get("api_spawn", ev.get("api_wait"))
    if start is not None and "api_ready" in ev:
        spans["API server start (background)"] = ev["api_ready"] - start
    return spans


ORDER = [p[0] for p in PHASES[:4]] + [API_WAITED] + [p[0] for p in PHASES[4:]]
ORDER += ["total wall", "CPU (command + children)", "API server start (background)"]


def table(verb: str, results: dict[str, list[dict]]) -> str:
    """One row per phase, a column (min / median) per checkout."""
    spans = {label: [phases(r) for r in runs] for label, runs in results.items()}
    width = max(len(n) for n in ORDER)
    head = f"{verb + ' (s, min / median)':<{width}}" + "".join(f" | {label:>19}" for label in results)
    lines = [head, "-" * len(head)]
    for name in ORDER:
        cells = []
        for label in results:
            values = [s[name] for s in spans[label] if name in s]
            cells.append(f"{min(values):7.2f} / {statistics.median(values):7.2f}" if values else "—")
        if any(c != "—" for c in cells):
            lines.append(f"{name:<{width}}" + "".join(f" | {c:>19}" for c in cells))
    return "\n".join(lines)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--verbs", default="estimate,correct,meanimage,missing-tile")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-output", "startup"))
    parser.add_argument(
        "--python",
        action="append",
        metavar="LABEL=PATH",
        help="Measure the checkout of this interpreter (its venv) too, side by side, runs interleaved "
        "(repeatable; default: this=the interpreter running the script)",
    )
    parser.add_argument("--json", help="Also write every run's events and phases here")
    parser.add_argument(
        "--sample", help="Write each run's main-thread stack every 0.25 s to SAMPLE.<verb>.<n>"
    )
    args = parser.parse_args()
    pythons = dict(p.split("=", 1) for p in args.python) if args.python else {"this": sys.executable}

    os.makedirs(args.out, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SHADEFLOW_"))}
    home = os.path.join(args.out, "prefect-home")
    env.update(
        PREFECT_HOME=home,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    inputs = make_inputs(os.path.join(args.out, "inputs"), env)
    print(load())

    def run(label: str, verb: str, i: int) -> dict:
        out = os.path.join(args.out, "runs", f"{verb}-{i}-{time.time_ns()}")
        sample = {SAMPLE_ENV: f"{args.sample}.{label}.{verb}.{i}"} if args.sample else {}
        result = run_once(pythons[label], commands(inputs, out)[verb], {**env, **sample})
        expected = 2 if "missing" in verb else 0
        if result["code"] != expected:
            raise SystemExit(
                f"{label} {verb}: exit {result['code']} (expected {expected}):\n{result['output']}"
            )
        return result

    verbs = [v.strip() for v in args.verbs.split(",") if v.strip()]
    if not os.path.exists(home):
        label = next(iter(pythons))
        first = run(label, verbs[0], 0)
        print(f"first run on a fresh Prefect home ({label}, {verbs[0]}): {first['wall']:.2f} s wall, "
              f"{first['cpu']:.2f} s CPU")  # fmt: skip
    results: dict[str, dict[str, list[dict]]] = {verb: {label: [] for label in pythons} for verb in verbs}
    for i in range(args.repeats):
        for verb in verbs:  # interleaved: a change of load touches every verb and checkout alike
            for label in pythons:
                results[verb][label].append(run(label, verb, i + 1))
                print(f"  {label} {verb} #{i + 1}: {results[verb][label][-1]['wall']:.2f} s", flush=True)
    for verb in verbs:
        print()
        print(table(verb, results[verb]))
    print()
    print(load())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    v: {k: [{**r, "phases": phases(r)} for r in rs] for k, rs in by.items()}
                    for v, by in results.items()
                },
                f,
            )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
    else:
        main()
