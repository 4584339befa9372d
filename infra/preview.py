"""``shadeflow cluster``: the cluster a run would get, as text, without creating anything."""

from __future__ import annotations

import os
from collections.abc import Mapping

from dask.utils import format_bytes

from .cluster import ClusterPlan, check_environment, plan_cluster
from .kubernetes import spec_yaml
from .sizing import SettingsError


def cluster_preview(
    memory: str | None = None,
    cluster: str | None = None,
    workers: int | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[str, list[str]]:
    """The text ``shadeflow cluster`` prints, and warnings about what a run would find missing.

    Invalid settings raise :class:`SettingsError`; a missing scheduler or missing Kubernetes
    credentials are warnings, since a preview is often made away from where runs happen.
    """
    env = os.environ if env is None else env
    plan = plan_cluster(env, memory=memory, workers=workers, cluster=cluster)
    lines = [f"cluster: {_kind_label(plan)}"]
    warnings = []
    try:
        credentials = check_environment(plan, env)
    except SettingsError as exc:
        credentials = None
        warnings.append(str(exc))
    if plan.kind == "address":
        lines.append("sizing settings do not apply: the scheduler's own workers run the tasks")
        return "\n".join(lines), warnings
    size = plan.size
    lines += [
        f"memory: {format_bytes(size.total_memory)} in workers (setting from {plan.memory_source})",
        f"workers: {size.n_workers}",
        f"threads per worker: {size.threads_per_worker}",
        f"memory per worker: {format_bytes(size.memory_per_worker)}",
    ]
    if plan.kind == "local":
        lines.append(f"processes: {'yes' if size.processes else 'no (threads in the flow-run process)'}")
        return "\n".join(lines), warnings

    worker = plan.spec["spec"]["worker"]["spec"]["containers"][0]
    scheduler = plan.spec["spec"]["scheduler"]["spec"]["containers"][0]["resources"]
    bounds = plan.adapt_bounds
    lines += [
        f"adaptive scaling: {f'{bounds[0]}–{bounds[1]} workers' if bounds else 'off (one worker)'}",
        f"worker pod resources: {_resources(worker['resources'])}",
        f"scheduler pod resources: {_resources(scheduler)}",
        f"image: {worker['image']}",
        f"namespace: {plan.namespace or '(the credentials’ namespace; a flow-run pod’s own)'}",
        f"idle timeout: {plan.spec['spec']['idleTimeout']} s (then the operator deletes an orphaned cluster)",
        f"name: one per flow run, shadeflow-<flow>-<run id>, e.g. {plan.name}",
    ]
    if credentials:
        lines.append(f"credentials: {credentials}")
    lines += [
        "",
        "# DaskCluster resource (kubectl apply -f would create it; shadeflow creates one per run)",
        spec_yaml(plan.spec).rstrip(),
    ]
    return "\n".join(lines), warnings


def _kind_label(plan: ClusterPlan) -> str:
    return {
        "local": "local (distributed.LocalCluster)",
        "kubernetes": "kubernetes (dask-kubernetes operator KubeCluster)",
    }.get(plan.kind, f"existing scheduler {plan.address}")


def _resources(resources: dict) -> str:
    parts = []
    for kind in ("requests", "limits"):
        values = resources.get(kind) or {}
        if values:
            parts.append(f"{kind} " + ", ".join(f"{k} {v}" for k, v in values.items()))
    return "; ".join(parts)
