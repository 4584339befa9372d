"""Worker processes keep the memory they free: glibc settings for in-process workers, worker processes
started by a local nanny, and Kubernetes worker pods (infra/allocator.py)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import dask.config
import pytest
from distributed import Client, LocalCluster

from shadeflow.infra import allocator
from shadeflow.infra.cluster import local_worker_memory, plan_cluster
from shadeflow.infra.kubernetes import PRE_SPAWN_ENV_VAR
from shadeflow.infra.sizing import ClusterSize

PRE_SPAWN = "distributed.nanny.pre-spawn-environ"
GLIBC = (
    sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION")
    if hasattr(os, "confstr")
    else False
)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt only")
def test_in_process_workers_apply_the_settings_with_mallopt():
    assert allocator.keep_freed_memory() is True
    with local_worker_memory(ClusterSize(1, 2, 2**30)):
        # untouched
        assert (
            dask.config.get(PRE_SPAWN).get("MALLOC_TRIM_THRESHOLD_")
            != allocator.MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]
        )


def test_worker_processes_start_with_the_settings_in_their_environment():
    dask_defaults = dict(dask.config.get(PRE_SPAWN))
    with local_worker_memory(ClusterSize(2, 1, 2**30)):
        environ = dask.config.get(PRE_SPAWN)
        with (
            LocalCluster(
                n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            seen = next(
                iter(
                    client.run(
                        lambda: {k: os.environ.get(k) for k in (*allocator.MALLOC_ENV, "OMP_NUM_THREADS")}
                    ).values()
                )
            )
    assert {k: seen[k] for k in allocator.MALLOC_ENV} == allocator.MALLOC_ENV
    assert seen["OMP_NUM_THREADS"] == str(dask_defaults["OMP_NUM_THREADS"])  # Dask's other settings stay
    assert environ["MALLOC_TRIM_THRESHOLD_"] != str(dask_defaults.get("MALLOC_TRIM_THRESHOLD_"))
    assert dict(dask.config.get(PRE_SPAWN)) == dask_defaults  # only while the cluster is created


def test_kubernetes_workers_get_the_settings_through_dask_config():
    """The worker pod's environment variable, read by a fresh Dask as the pod's nanny would."""
    plan = plan_cluster(
        {"SHADEFLOW_MEMORY": "16GiB"},
        cluster="kubernetes",
        flow_name="meanimage",
        run_id="5f0c3a1e-7d2b-4c1a-9e8f-0123456789ab",
    )
    workers = {e["name"]: e["value"] for e in plan.spec["spec"]["worker"]["spec"]["containers"][0]["env"]}
    scheduler = {e["name"] for e in plan.spec["spec"]["scheduler"]["spec"]["containers"][0].get("env", [])}
    assert PRE_SPAWN_ENV_VAR not in scheduler
    assert ast.literal_eval(workers[PRE_SPAWN_ENV_VAR]) == allocator.MALLOC_ENV
    env = {**os.environ, PRE_SPAWN_ENV_VAR: workers[PRE_SPAWN_ENV_VAR]}
    code = (
        "import json, dask.config, distributed; "
        "print(json.dumps(dask.config.get('distributed.nanny.pre-spawn-environ')))"
    )
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
    )
    assert {k: str(out[k]) for k in allocator.MALLOC_ENV} == allocator.MALLOC_ENV
    assert str(out["OMP_NUM_THREADS"]) == "1"  # merged into Dask's defaults, not replacing them
