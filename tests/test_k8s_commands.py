"""The scheduler and worker commands of a generated DaskCluster run with the installed distributed.

The image installs the same packages as this environment, so running the containers' ``args`` here
(with what the operator would inject: DASK_SCHEDULER_ADDRESS, DASK_WORKER_NAME) shows the commands
exist, the flags parse, and the worker gets the threads and memory limit the spec promises.
(make_cluster_spec's own default, ``dask-worker``, no longer exists in distributed 2026.)
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.request
from pathlib import Path

from distributed import Client
from prefect_processes import free_port, started, tail, wait_for

from shadeflow.infra.cluster import plan_cluster


def local_args(args: list[str], replace: dict[str, str]) -> list[str]:
    """Container args as a local command: the venv's ``dask``; flag values replaced for free ports on
    127.0.0.1."""
    out = list(args)
    out[0] = shutil.which(args[0], path=os.path.dirname(sys.executable)) or args[0]
    for flag, value in replace.items():
        if flag in out:
            out[out.index(flag) + 1] = value
        else:
            out += [flag, value]
    return [a.replace("$(DASK_WORKER_NAME)", "spec-worker-0") for a in out]


def test_scheduler_and_worker_commands_start_and_match_the_spec(tmp_path: Path):
    spec = plan_cluster(
        {"SHADEFLOW_MEMORY": "6GiB", "SHADEFLOW_WORKER_MEMORY": "3GiB", "SHADEFLOW_WORKER_CPUS": "2"},
        cluster="kubernetes",
    ).spec
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    worker = spec["spec"]["worker"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    comm, dashboard = free_port(), free_port()
    address = f"tcp://127.0.0.1:{comm}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}

    scheduler_cmd = local_args(
        scheduler["args"],
        {"--host": "127.0.0.1", "--port": str(comm), "--dashboard-address": f"127.0.0.1:{dashboard}"},
    )
    worker_cmd = local_args(worker["args"], {"--dashboard-address": "127.0.0.1:0", "--host": "127.0.0.1"})
    worker_env = {**env, "DASK_SCHEDULER_ADDRESS": address, "DASK_WORKER_NAME": "spec-worker-0"}

    with started(scheduler_cmd, env, tmp_path / "scheduler.log") as sched_proc:
        # the readiness probe of the spec: GET <path> on the dashboard port answers
        probe = scheduler["readinessProbe"]["httpGet"]
        # the probe's named port is the dashboard port we moved to `dashboard`
        assert ports[probe["port"]] == 8787

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{dashboard}{probe['path']}", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(
            ready, 60, "the scheduler's readiness probe", process=sched_proc, log=tmp_path / "scheduler.log"
        )
        with started(worker_cmd, worker_env, tmp_path / "worker.log") as worker_proc:
            with Client(address, timeout=30) as client:
                wait_for(
                    lambda: client.scheduler_info(n_workers=-1)["workers"],
                    60,
                    "the worker to register",
                    process=worker_proc,
                    log=tmp_path / "worker.log",
                )
                (info,) = client.scheduler_info(n_workers=-1)["workers"].values()
                assert info["name"] == "spec-worker-0", tail(tmp_path / "worker.log")
                assert info["nthreads"] == int(worker["resources"]["requests"]["cpu"])
                assert info["memory_limit"] == 3 * 2**30
                assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
