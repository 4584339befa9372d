"""The cluster a flow run gets: made when the run starts, closed when it ends.

Flows use :func:`task_runner`: a prefect-dask ``DaskTaskRunner`` whose cluster class is
:func:`make_cluster`, so the settings are read when each run starts (not when the flow is imported).
"""

from __future__ import annotations

import os
from typing import Any

from shadeflow.infra.sizing import ClusterSize, SettingsError, size_from_settings


def cluster_kind(env: dict[str, str] | None = None) -> str:
    """``local`` (default); other kinds arrive with the cloud issue."""
    env = os.environ if env is None else env
    kind = (env.get("SHADEFLOW_CLUSTER") or "local").strip()
    if kind != "local":
        raise SettingsError(f"SHADEFLOW_CLUSTER={kind!r} is not supported: expected 'local'")
    return kind


def local_cluster_kwargs(size: ClusterSize) -> dict[str, Any]:
    """``distributed.LocalCluster`` arguments for a cluster of ``size``."""
    return {
        "n_workers": size.n_workers,
        "threads_per_worker": size.threads_per_worker,
        "memory_limit": size.memory_per_worker,
        "processes": size.processes,
        "dashboard_address": None,
    }


def make_cluster(memory: str | int | None = None, workers: int | None = None):
    """Create the cluster for one flow run from the current settings (the task runner calls this)."""
    from distributed import LocalCluster

    cluster_kind()
    size, _ = size_from_settings(memory=memory, workers=workers)
    return LocalCluster(**local_cluster_kwargs(size))


def task_runner(memory: str | int | None = None, workers: int | None = None):
    """A ``DaskTaskRunner`` that creates a cluster sized from the settings at the start of each run."""
    from prefect_dask import DaskTaskRunner

    kwargs = {k: v for k, v in (("memory", memory), ("workers", workers)) if v is not None}
    return DaskTaskRunner(cluster_class=make_cluster, cluster_kwargs=kwargs)


def check_settings(memory: str | int | None = None, workers: int | None = None) -> ClusterSize:
    """Validate the settings before a run starts, so bad values fail before anything is created."""
    cluster_kind()
    return size_from_settings(memory=memory, workers=workers)[0]
