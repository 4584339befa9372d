"""The cluster a flow run gets: made when the run starts its Dask work, closed when the run ends.

``SHADEFLOW_CLUSTER`` picks the kind:

- ``local`` (default): a ``distributed.LocalCluster`` in the flow-run process;
- ``kubernetes``: an ephemeral dask-kubernetes operator ``KubeCluster``, deleted when the run ends
  (and by the operator after an idle timeout if the run dies);
- ``tcp://host:port``: an existing scheduler, used as it is and left running.

Flows use :func:`task_runner`: a prefect-dask ``DaskTaskRunner`` whose cluster class is
:func:`make_cluster`. The engine copies the runner for every flow run and the copy calls
``make_cluster`` once, at the run's first task, so the settings are read per run (not when the flow
is imported) and every run has its own cluster, closed by the runner when the run ends, failed or not.
"""

from __future__ import annotations

import importlib
import os
import socket
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from . import allocator, kubernetes
from .kubernetes import kube_credentials
from .sizing import ClusterSize, SettingsError, size_from_settings

KINDS = ("local", "kubernetes")
DEFAULT_SCHEDULER_PORT = 8786
#: seconds an existing scheduler has to accept a connection and answer before the run is refused
CONNECT_TIMEOUT = 5.0

#: the class each kind of cluster is made with (a dotted path or a callable); tests swap in recording classes
CLUSTER_CLASSES: dict[str, str | Callable[..., Any]] = {
    "local": "distributed.LocalCluster",
    "kubernetes": "dask_kubernetes.operator.KubeCluster",
}


def parse_cluster_setting(value: str | None) -> tuple[str, str | None]:
    """``(kind, address)`` from a ``SHADEFLOW_CLUSTER`` value; kind is ``local``, ``kubernetes`` or
    ``address``."""
    text = (value or "").strip() or "local"
    if text.lower() in KINDS:
        return text.lower(), None
    if text.lower().startswith("tcp://"):
        rest = text[len("tcp://") :].rstrip("/")
        host, colon, port = rest.rpartition(":")
        if not colon or host.endswith(":") or (host.startswith("[") and not host.endswith("]")):
            host, port = rest, str(DEFAULT_SCHEDULER_PORT)  # no port (or a bare IPv6 address)
        if host and port.isdigit() and 0 < int(port) < 65536 and "/" not in host:
            return "address", f"tcp://{host}:{int(port)}"
    raise SettingsError(
        f"SHADEFLOW_CLUSTER={value!r} is not supported: expected 'local' (default), 'kubernetes', "
        "or the address of a running Dask scheduler such as tcp://10.0.0.5:8786"
    )


def cluster_kind(env: Mapping[str, str] | None = None) -> str:
    """``local``, ``kubernetes`` or ``address`` (an existing scheduler), from ``SHADEFLOW_CLUSTER``."""
    env = os.environ if env is None else env
    return parse_cluster_setting(env.get("SHADEFLOW_CLUSTER"))[0]


def local_cluster_kwargs(size: ClusterSize) -> dict[str, Any]:
    """``distributed.LocalCluster`` arguments for a cluster of ``size``."""
    return {
        "n_workers": size.n_workers,
        "threads_per_worker": size.threads_per_worker,
        "memory_limit": size.memory_per_worker,
        "processes": size.processes,
        "dashboard_address": ":0",  # any free port: several runs may share a machine
    }


def local_worker_memory(size: ClusterSize) -> AbstractContextManager:
    """Around creating a LocalCluster of ``size``: its workers keep the memory they free
    (``infra/allocator.py``).

    Threaded workers share this process, which gets the settings now; worker processes get them in
    the environment Dask's nannies start them with.
    """
    if not size.processes:
        allocator.keep_freed_memory()
        return nullcontext()
    import dask.config

    key = "distributed.nanny.pre-spawn-environ"
    return dask.config.set({key: allocator.worker_process_environ(dask.config.get(key, default={}))})


@dataclass(frozen=True)
class ClusterPlan:
    """The cluster a run would get, decided from the settings; creating it is :func:`make_cluster`'s job."""

    kind: str  # "local", "kubernetes" or "address"
    size: ClusterSize | None = None  # None for an existing scheduler
    memory_source: str | None = None  # SHADEFLOW_MEMORY, CO_MEMORY, --memory or machine
    address: str | None = None
    name: str | None = None  # the DaskCluster's name (kubernetes)
    spec: dict[str, Any] | None = None  # the DaskCluster resource (kubernetes)
    namespace: str | None = None

    @property
    def adapt_bounds(self) -> tuple[int, int] | None:
        """Adaptive scaling between one worker and the sized count, on Kubernetes when there is room to
        scale."""
        if self.kind == "kubernetes" and self.size is not None and self.size.n_workers > 1:
            return 1, self.size.n_workers
        return None

    def cluster_kwargs(self) -> dict[str, Any]:
        """Arguments for the cluster class of this kind."""
        if self.kind == "local":
            return local_cluster_kwargs(self.size)
        if self.kind == "kubernetes":
            # shutdown_on_close: the DaskCluster is deleted when the run's runner closes it, even if
            # a crashed earlier attempt of the same run left one of that name to connect to
            return {
                "custom_cluster_spec": self.spec,
                "namespace": self.namespace,
                "shutdown_on_close": True,
                "quiet": True,
            }
        raise ValueError(f"an existing scheduler ({self.address}) is not created")

    def describe(self) -> str:
        """One line: what the run gets."""
        if self.kind == "address":
            return f"existing Dask scheduler at {self.address}"
        text = self.size.describe()
        if self.kind == "kubernetes":
            bounds = self.adapt_bounds
            scaling = f", adaptive {bounds[0]}–{bounds[1]} workers" if bounds else ""
            image = self.spec["spec"]["worker"]["spec"]["containers"][0]["image"]
            return f"Dask on Kubernetes: {text}{scaling}, image {image}"
        return f"local Dask cluster: {text}"


def plan_cluster(
    env: Mapping[str, str] | None = None,
    memory: str | int | None = None,
    workers: int | None = None,
    cluster: str | None = None,
    flow_name: str | None = None,
    run_id: str | None = None,
) -> ClusterPlan:
    """Decide the cluster from the settings (``cluster`` overrides ``SHADEFLOW_CLUSTER``); creates nothing.

    Raises
    ------
    SettingsError
        An unknown kind, an unparsable size, or memory too small for one worker.
    """
    env = os.environ if env is None else env
    kind, address = parse_cluster_setting(cluster if cluster is not None else env.get("SHADEFLOW_CLUSTER"))
    if kind == "address":
        return ClusterPlan(kind=kind, address=address)
    size, source = size_from_settings(env, memory=memory, workers=workers, kind=kind)
    if kind == "local":
        return ClusterPlan(kind=kind, size=size, memory_source=source)

    settings = kubernetes.KubeSettings.from_env(env)
    name = kubernetes.cluster_name(flow_name, run_id)
    spec = kubernetes.cluster_spec(size, name, settings, kubernetes.labels(flow_name, run_id))
    return ClusterPlan(
        kind=kind, size=size, memory_source=source, name=name, spec=spec, namespace=settings.namespace
    )


def probe_scheduler(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise :class:`SettingsError` naming ``address`` unless a Dask scheduler answers there.

    First a plain TCP connection (its error says why: refused, unknown host, no answer), then Dask's
    ``identity`` call, since something else may accept connections on that port (a proxy, a worker).
    """
    host, _, port = address[len("tcp://") :].rpartition(":")
    advice = "start one there, or unset SHADEFLOW_CLUSTER for a local cluster"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        reason = (
            f"no answer within {timeout:g} s"
            if isinstance(exc, TimeoutError)
            else (exc.strerror or str(exc)).lower()
        )
        raise SettingsError(
            f"SHADEFLOW_CLUSTER={address}: no Dask scheduler reachable at {address} ({reason}); {advice}"
        ) from None
    try:
        identity = _identity(address, timeout)
    except Exception as exc:  # comm errors, timeouts, garbage on the wire
        raise SettingsError(
            f"SHADEFLOW_CLUSTER={address}: something listens at {address} but does not answer like a Dask "
            "scheduler "
            f"within {timeout:g} s ({exc.__class__.__name__}); {advice}"
        ) from None
    if identity.get("type") != "Scheduler":
        raise SettingsError(
            f"SHADEFLOW_CLUSTER={address}: {address} is a Dask {identity.get('type', 'server')}, not a "
            f"scheduler; {advice}"
        )


def _identity(address: str, timeout: float) -> dict[str, Any]:
    """Dask's ``identity`` of the server at ``address``, on a private event loop (callers may be in one)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from distributed.core import rpc

    async def ask() -> dict[str, Any]:
        async with rpc(address, timeout=timeout) as server:
            return await asyncio.wait_for(server.identity(), timeout)

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, ask()).result()


def check_environment(plan: ClusterPlan, env: Mapping[str, str] | None = None) -> str | None:
    """What the plan needs from outside, checked: a reachable scheduler, or Kubernetes credentials.

    Returns where the Kubernetes credentials come from (``None`` for other kinds).
    """
    if plan.kind == "address":
        probe_scheduler(plan.address)
    elif plan.kind == "kubernetes":
        return kube_credentials(env)
    return None


def check_settings(
    memory: str | int | None = None, workers: int | None = None, cluster: str | None = None
) -> ClusterPlan:
    """Validate the settings before a run starts, so bad values fail before anything is created."""
    plan = plan_cluster(memory=memory, workers=workers, cluster=cluster)
    check_environment(plan)
    return plan


class ExistingScheduler:
    """Stands in for a cluster object when the scheduler already runs elsewhere.

    ``distributed.Client`` accepts any object with a ``scheduler_address``; the runner connects
    through it and "closes" it at the end of the run, which leaves the scheduler running. (A
    ``DaskTaskRunner(cluster=…)`` would not do: the engine's per-run copy drops the cluster.)
    """

    def __init__(self, address: str):
        from distributed.core import Status

        self.scheduler_address = address
        self.status = Status.running
        self.dashboard_link = None

    def __await__(self):  # the client awaits a cluster to start it; this one is running
        async def started():
            return self

        return started().__await__()

    def close(self) -> None:
        from distributed.core import Status

        self.status = Status.closed

    def __enter__(self) -> ExistingScheduler:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ExistingScheduler({self.scheduler_address!r})"


def _cluster_class(kind: str) -> Callable[..., Any]:
    target = CLUSTER_CLASSES[kind]
    if isinstance(target, str):
        module, _, attr = target.rpartition(".")
        return getattr(importlib.import_module(module), attr)
    return target


def _current_run() -> tuple[str | None, str | None]:
    """The flow name and flow-run id when called inside a flow run."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None, None
    return (context.flow.name if context.flow else None), str(context.flow_run.id)


def _log(message: str) -> None:
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        get_run_logger().info(message)
    except MissingContextError:
        pass


def make_cluster(memory: str | int | None = None, workers: int | None = None):
    """Create the cluster for one flow run from the current settings (the task runner calls this).

    Everything is checked before anything is created. On Kubernetes the cluster scales between one
    worker and the sized count; if turning that on fails, the new cluster is closed before the error.
    """
    flow_name, run_id = _current_run()
    plan = plan_cluster(memory=memory, workers=workers, flow_name=flow_name, run_id=run_id)
    check_environment(plan)
    if plan.kind == "address":
        _log(f"cluster for this run: {plan.describe()}")
        return ExistingScheduler(plan.address)
    _log(f"cluster for this run: {plan.describe()}" + (f" (DaskCluster {plan.name})" if plan.name else ""))
    with local_worker_memory(plan.size) if plan.kind == "local" else nullcontext():
        cluster = _cluster_class(plan.kind)(**plan.cluster_kwargs())
    bounds = plan.adapt_bounds
    if bounds is not None:
        try:
            cluster.adapt(minimum=bounds[0], maximum=bounds[1])
        except BaseException:
            cluster.close()
            raise
    return cluster


def task_runner(memory: str | int | None = None, workers: int | None = None):
    """A ``DaskTaskRunner`` that creates a cluster sized from the settings at the start of each run."""
    from prefect_dask import DaskTaskRunner

    kwargs = {k: v for k, v in (("memory", memory), ("workers", workers)) if v is not None}
    return DaskTaskRunner(cluster_class=make_cluster, cluster_kwargs=kwargs)
