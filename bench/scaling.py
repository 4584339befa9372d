"""meanimage and correct on a real multi-process Dask cluster: one and two worker processes.

    .venv/bin/python bench/scaling.py [--slides 4] [--fields 12] [--tiles 4] [--planes 128] [--out DIR]

Generates (once, then reuses) a synthetic cohort of ``--slides`` slides of ``--fields`` Vectra-size
fields (1004×1344×35 uint16) and ``--tiles`` synthetic OME-Zarr tiles (``--planes``×1024×1024 uint16,
chunks 64×256×256), and runs the ``meanimage`` flow on the cohort and the ``correct`` flow on the tiles
(reference flatfield file, ``--background 100``, ``--levels 4``) on three clusters, one after the other:

* **in-process** — the cluster a flow run gets by default on this machine (1 worker × 2 threads in the
  flow's process): the reference outputs;
* **1 worker process** — a Dask scheduler and one single-thread worker process (each under a nanny),
  on 127.0.0.1, started by this script; the flows are told about it as a user would, with
  ``SHADEFLOW_CLUSTER=tcp://127.0.0.1:<port>``;
* **2 worker processes** — the same with two single-thread worker processes.

The flows are called in this process (as ``shadeflow meanimage`` / ``shadeflow correct`` call them, with
the runner of their decorator: the same cluster choice), not through the CLI: only the flow call is
timed, and the CLI's fixed costs (interpreter, imports, Prefect's API server start; issue 14 item 3)
stay out of the throughput. Each cluster first runs both flows once on tiny inputs (not timed: the
worker processes import shadeflow, Prefect and scipy on their first task). Every timed run works on a
fresh copy of the inputs (hard links: the flows only read their inputs) at the same path, so outputs
that record their input's path compare byte for byte; every output file is compared with the
in-process run's (``shadeflow.core.io.output_digest``: without time stamps and PDF bytes).

It prints fields/s (meanimage) and MB/s (uncompressed input, correct) per cluster with the CPU seconds
each role used during the run (the flow's process, Prefect's API server, the scheduler, the workers),
the efficiency of two worker processes against one (throughput with 2 ÷ (2 × throughput with 1);
target ≥ 0.8), and whether every output file is identical to the in-process reference.

Worker processes get the memory settings Kubernetes worker pods get (``infra/allocator.py``, through
the nanny's pre-spawn environment) and half of this machine's memory each, as ``--workers 2`` would size
them. Prefect's API is a temporary server of this process (state under ``<out>/scaling/prefect-home``),
its address passed to the worker processes as ``PREFECT_API_URL``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

VECTRA = (1004, 1344, 35)
TILE_YX = (1024, 1024)
CHUNKS = (64, 256, 256)
TINY_FIELD = (96, 128, 4)
TINY_TILE = (16, 128, 128)


# ----------------------------------------------------------------------------------------------
# inputs


def cohort(root: pathlib.Path, slides: int, fields: int, shape=VECTRA) -> pathlib.Path:
    """A synthetic cohort, generated once per configuration and reused."""
    from shadeflow.core.synth.slides import TRUTH_DIR, SynthConfig, write_cohort

    config = SynthConfig(slides=slides, fields=fields, shape=shape, seed=0)
    done = root / TRUTH_DIR / "truth.json"
    if not (
        done.exists() and json.loads(done.read_text())["config"] == json.loads(json.dumps(_asdict(config)))
    ):
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        write_cohort(str(root), config, workers=os.cpu_count() or 2)
        print(f"generated {slides} × {fields} fields in {time.perf_counter() - start:.0f} s → {root}")
    return root


def _asdict(config) -> dict:
    from dataclasses import asdict

    return asdict(config)


def tiles(root: pathlib.Path, n: int, shape: tuple[int, int, int]) -> pathlib.Path:
    """``n`` synthetic tiles (seeds 0…n-1, the same planted flatfield), generated once and reused."""
    from shadeflow.core.synth.tiles import SynthTileConfig, write_synthetic_tile

    for i in range(n):
        url = root / f"tile{i}.ome.zarr"
        config = SynthTileConfig(shape=shape, chunks=tuple(min(c, s) for c, s in zip(CHUNKS, shape)), seed=i)
        done = root / f"tile{i}.done"  # holds the config the tile was made with
        if not done.exists() or done.read_text() != repr(config):
            shutil.rmtree(url, ignore_errors=True)
            start = time.perf_counter()
            write_synthetic_tile(str(url), config)
            done.write_text(repr(config))
            print(f"generated tile {i} {'×'.join(map(str, shape))} in {time.perf_counter() - start:.0f} s")
    return root


def fresh_copy(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    """``source`` at ``target`` (replacing what is there), files hard-linked: a new tree for the run's
    outputs, the input bytes shared (the flows only read them; :func:`unchanged` checks)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, copy_function=os.link)
    return target


def files_of(root: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Every file below ``root`` → (size, mtime): what a run must not change in its inputs."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            stat = os.stat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (stat.st_size, stat.st_mtime_ns)
    return out


def read_all(root: pathlib.Path) -> int:
    """Read every file below ``root`` (into the page cache); returns the bytes read."""
    total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as handle:
                while chunk := handle.read(2**24):
                    total += len(chunk)
    return total


# ----------------------------------------------------------------------------------------------
# a Dask scheduler and single-thread worker processes on 127.0.0.1


@contextmanager
def dask_processes(n_workers: int, folder: pathlib.Path, memory: int) -> Iterator[str]:
    """A scheduler and ``n_workers`` single-thread worker processes (each under a nanny) on 127.0.0.1, as
    one would start them with ``dask scheduler`` / ``dask worker``; yields the scheduler's address. Every
    process is stopped on leaving (its own session: the nanny's worker too)."""
    from distributed import Client

    from shadeflow.infra.allocator import MALLOC_ENV
    from shadeflow.infra.kubernetes import PRE_SPAWN_ENV_VAR

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    env = {**os.environ, PRE_SPAWN_ENV_VAR: repr(MALLOC_ENV)}
    env.pop("SHADEFLOW_CLUSTER", None)
    scheduler_file = folder / "scheduler.json"
    started: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> subprocess.Popen:
        with open(folder / log, "ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        return process

    try:
        scheduler = start(
            [
                "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file),
            ],
            "scheduler.log",
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not scheduler_file.exists():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Dask scheduler did not start: see {folder / 'scheduler.log'}")
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written whole, but give the writer a moment
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(n_workers):
            start(
                [
                    "distributed.cli.dask_worker", "--nthreads", "1", "--nanny", "--name", f"w{i}",
                    "--memory-limit", str(memory), "--scheduler-file", str(scheduler_file),
                    "--local-directory", str(folder / f"w{i}"),
                ],
                f"worker-{i}.log",
            )  # fmt: skip
        with Client(address, timeout=60) as client:
            client.wait_for_workers(n_workers, timeout=120)
        PROCESSES.update(scheduler=started[:1], workers=started[1:])
        yield address
    finally:
        PROCESSES.clear()
        for process in reversed(started):
            _stop(process)


#: the running external cluster's processes (:func:`dask_processes`), for :func:`cpu_by_role`
PROCESSES: dict[str, list[subprocess.Popen]] = {}


def cpu_by_role() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each role: this process (the flow: Prefect's client,
    the Dask client — and, in-process, the workers' threads), Prefect's API server (this process's
    ``uvicorn`` child), the Dask scheduler and the workers (each with its nanny). Differences of two
    calls say where a run's CPU went: what the workers do is the work, the rest is orchestration."""
    import psutil

    def tree(pid: int) -> float:
        try:
            root = psutil.Process(pid)
            return sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            return 0.0

    me = psutil.Process()
    api = [c.pid for c in me.children() if "uvicorn" in " ".join(c.cmdline())]
    return {
        "flow process": sum(me.cpu_times()[:2]),
        "API server": sum(tree(pid) for pid in api),
        "scheduler": sum(tree(p.pid) for p in PROCESSES.get("scheduler", [])),
        "workers": sum(tree(p.pid) for p in PROCESSES.get("workers", [])),
    }


def cpu_during(before: dict[str, float]) -> str:
    after = cpu_by_role()
    return ", ".join(f"{role} {after[role] - before[role]:.1f}" for role in after)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process's session (a nanny closes its worker), SIGKILL after 20 s."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


# ----------------------------------------------------------------------------------------------
# runs


def without_heartbeats():
    """As the command line runs a flow on the temporary API server it started (``flows/run.py``): no
    flow-run heartbeats, which nothing could watch there. With them, every flow call ends waiting up to
    a second for the heartbeat thread's sleep (Prefect's ``_send_heartbeats`` joins it): the flow-call
    times came in whole-second steps, a 0–1 s of noise on a 4–7 s correct run."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def run_meanimage(pristine: pathlib.Path, work: pathlib.Path) -> tuple[float, dict[str, str]]:
    """The meanimage flow on a fresh copy of ``pristine`` at ``work``: (seconds of the flow call, output
    digests)."""
    from shadeflow.core.io.output_digest import output_digest
    from shadeflow.flows.meanimage import meanimage
    from shadeflow.flows.parameters import MeanImageParameters

    root = fresh_copy(pristine, work)
    slides = sorted(p for p in root.iterdir() if (p / "slide.json").exists())
    params = MeanImageParameters(slides=[str(s) for s in slides])
    cpu, start = cpu_by_role(), time.perf_counter()
    with without_heartbeats():
        state = meanimage(params, return_state=True)
    seconds = time.perf_counter() - start
    CPU["meanimage"] = cpu_during(cpu)
    state.result()  # raises if the run failed
    STAGES["meanimage"] = stage_seconds(state)
    digests = {}
    for slide in slides:
        digests.update({f"{slide.name}/{k}": v for k, v in output_digest(slide / "meanimage").items()})
    return seconds, digests


def run_correct(pristine: pathlib.Path, work: pathlib.Path) -> tuple[float, dict[str, str]]:
    """The correct flow on fresh copies of the tiles in ``pristine``, written below ``work``."""
    from shadeflow.core.io.output_digest import output_digest
    from shadeflow.core.synth.tiles import flatfield_truth_url
    from shadeflow.flows.correct import correct
    from shadeflow.flows.parameters import CorrectParameters

    shutil.rmtree(work, ignore_errors=True)
    root = fresh_copy(pristine, work / "in")
    urls = sorted(str(p) for p in root.glob("*.ome.zarr"))
    out = work / "out"
    params = CorrectParameters(
        tiles=urls, out=str(out), flatfield=flatfield_truth_url(urls[0]), background="100", levels=4
    )
    cpu, start = cpu_by_role(), time.perf_counter()
    with without_heartbeats():
        state = correct(params, return_state=True)
    seconds = time.perf_counter() - start
    CPU["correct"] = cpu_during(cpu)
    state.result()
    STAGES["correct"] = stage_seconds(state)
    return seconds, output_digest(out)


#: CPU seconds per role during the last call of each flow (:func:`cpu_by_role`; the digests not included)
CPU: dict[str, str] = {}
#: seconds per task name of the last run of each flow (:func:`stage_seconds`)
STAGES: dict[str, dict[str, tuple[float, float]]] = {}


def stage_seconds(state) -> dict[str, tuple[float, float]]:
    """Per task of a finished flow run (by name): (sum of its runs' durations, span from the first start
    to the last end), from Prefect's records."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
            limit=200,
        )
    by_name: dict[str, list] = {}
    for run in runs:
        if run.start_time and run.end_time:
            by_name.setdefault(run.task_key.rsplit("-", 1)[0], []).append(run)
    return {
        name: (
            sum((r.end_time - r.start_time).total_seconds() for r in group),
            (max(r.end_time for r in group) - min(r.start_time for r in group)).total_seconds(),
        )
        for name, group in by_name.items()
    }


def describe_stages(stages: dict[str, tuple[float, float]]) -> str:
    return ", ".join(f"{name} {total:.1f} s (span {span:.1f} s)" for name, (total, span) in stages.items())


def tile_bytes(root: pathlib.Path) -> int:
    """Uncompressed bytes of level 0 of every tile below ``root``."""
    from shadeflow.core.io.omezarr import open_image

    total = 0
    for url in sorted(root.glob("*.ome.zarr")):
        level = open_image(str(url)).levels[0]
        n = 1
        for s in level.shape:
            n *= s
        total += n * level.dtype.itemsize
    return total


def start_prefect_api(home: pathlib.Path) -> str:
    """Prefect's temporary API server for this process (tied to it: ``flows/api_server.py``), started now
    so that worker processes started later get its address."""
    os.environ.setdefault("PREFECT_HOME", str(home))
    from shadeflow.flows.api_server import tie_ephemeral_server

    tie_ephemeral_server()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.api_healthcheck()
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise RuntimeError("Prefect's API server did not publish its address (PREFECT_API_URL)")
    return url


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--fields", type=int, default=12, help="fields per slide")
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--planes", type=int, default=128, help="z planes per tile (each 1024×1024)")
    parser.add_argument("--out", default="bench-output")
    args = parser.parse_args()

    # quiet and offline, before Prefect is imported
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.pop("SHADEFLOW_CLUSTER", None)
    base = pathlib.Path(args.out).resolve() / "scaling"
    inputs = base / "inputs"
    print(f"load average {os.getloadavg()[0]:.2f} at start")

    shape = (args.planes, *TILE_YX)
    slides_in = cohort(inputs / f"cohort-{args.slides}x{args.fields}", args.slides, args.fields)
    tiles_in = tiles(inputs / f"tiles-{args.tiles}x{'x'.join(map(str, shape))}", args.tiles, shape)
    tiny_slides = cohort(inputs / "tiny-cohort", 1, 16, TINY_FIELD)
    tiny_tiles = tiles(inputs / "tiny-tiles", 1, TINY_TILE)
    n_fields = args.slides * args.fields
    mb = tile_bytes(tiles_in) / 1e6

    from shadeflow.infra.sizing import size_from_settings

    local, source = size_from_settings()
    per_worker = size_from_settings(workers=2)[0].memory_per_worker
    api = start_prefect_api(base / "prefect-home")
    print(
        f"cohort: {args.slides} slides × {args.fields} fields of {'×'.join(map(str, VECTRA))} uint16; "
        f"tiles: {args.tiles} × {'×'.join(map(str, shape))} uint16 ({mb:.0f} MB), chunks "
        f"{'×'.join(map(str, CHUNKS))}\nin-process cluster: {local.describe()} (memory from {source}); "
        f"worker processes: 1 thread, {per_worker / 2**30:.1f} GiB each; Prefect API {api}\n"
    )
    before = {"cohort": files_of(slides_in), "tiles": files_of(tiles_in)}
    read_all(slides_in)
    read_all(tiles_in)  # every run reads its inputs from the page cache

    clusters = (("in-process", 0), ("1 worker process", 1), ("2 worker processes", 2))
    results = {}
    for label, n in clusters:
        context = dask_processes(n, base / "dask", per_worker) if n else nullcontext(None)
        with context as address:
            if address:
                os.environ["SHADEFLOW_CLUSTER"] = address
            try:
                start = time.perf_counter()
                run_meanimage(tiny_slides, base / "run" / "tiny-cohort")
                run_correct(tiny_tiles, base / "run" / "tiny-tiles")
                warm = time.perf_counter() - start
                t_mean, d_mean = run_meanimage(slides_in, base / "run" / "cohort")
                t_corr, d_corr = run_correct(tiles_in, base / "run" / "tiles")
                cpu = dict(CPU)
                stages = dict(STAGES)
            finally:
                os.environ.pop("SHADEFLOW_CLUSTER", None)
        results[label] = (t_mean, d_mean, t_corr, d_corr)
        print(
            f"{label:19s}: meanimage {n_fields / t_mean:5.2f} fields/s ({t_mean:5.1f} s), correct "
            f"{mb / t_corr:5.0f} MB/s ({t_corr:5.1f} s); warm-up on tiny inputs {warm:.1f} s"
            + (f" ({address})" if address else "")
            + f"\n    meanimage tasks: {describe_stages(stages['meanimage'])}"
            + f"\n    meanimage CPU s: {cpu['meanimage']}"
            + f"\n    correct tasks: {describe_stages(stages['correct'])}"
            + f"\n    correct CPU s: {cpu['correct']}",
            flush=True,
        )
    if files_of(slides_in) != before["cohort"] or files_of(tiles_in) != before["tiles"]:
        raise RuntimeError("a run changed its (hard-linked) inputs")

    from shadeflow.core.io.output_digest import differing

    ref = results["in-process"]
    one, two = results["1 worker process"], results["2 worker processes"]
    print()
    for name, t, unit, work in (("meanimage", 0, "fields/s", n_fields), ("correct", 2, "MB/s", mb)):
        r1, r2 = work / one[t], work / two[t]
        print(
            f"{name:9s} efficiency, 2 workers vs 1: {r2 / (2 * r1):.2f}  ({r2:.2f} ÷ (2 × {r1:.2f}) {unit}; "
            f"target ≥ 0.8); 2 worker processes ÷ in-process: {r2 / (work / ref[t]):.2f}"
        )
    for label in ("1 worker process", "2 worker processes"):
        for name, d in (("meanimage", 1), ("correct", 3)):
            diff = differing(results[label][d], ref[d])
            verdict = "identical" if not diff else f"DIFFER in {len(diff)} files: {', '.join(diff[:5])}"
            print(f"{label:19s} {name:9s} outputs ({len(ref[d])} files) vs in-process: {verdict}")
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    shutil.rmtree(base / "run", ignore_errors=True)


if __name__ == "__main__":
    main()
