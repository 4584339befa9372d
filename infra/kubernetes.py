"""The Dask cluster a flow run gets on Kubernetes: settings, a pure ``DaskCluster`` spec builder, credentials.

The dask-kubernetes operator turns a ``DaskCluster`` resource into a scheduler pod, a service and a
group of worker pods. :func:`cluster_spec` writes that resource from a :class:`ClusterSize`: worker
replicas, container resources (memory request = limit, so a worker is never placed on a node that
cannot hold it), the Dask worker's ``--memory-limit`` equal to the container limit (Dask spills and
pauses before the kernel's OOM killer strikes), a smaller scheduler, the image, and an idle timeout
after which the operator deletes a cluster whose flow run died without closing it.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .. import __version__
from . import allocator
from .sizing import ClusterSize, SettingsError, parse_count

#: the scheduler holds the task graph, not data: one CPU and 2 GiB serve thousands of field tasks
SCHEDULER_RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
#: seconds without Dask tasks after which the operator deletes an orphaned cluster; longer than the
#: flows' longest stretch of work outside Dask (smoothing a model in the flow process takes minutes)
IDLE_TIMEOUT = 1800
#: non-secret settings the Dask pods inherit from the flow run (secrets: SHADEFLOW_DASK_SECRET)
PASS_THROUGH_ENV = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
#: the Dask setting (as an environment variable) for the environment worker processes start with
PRE_SPAWN_ENV_VAR = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"
#: DaskCluster names must leave room for the operator's ``-scheduler`` suffix within 63 characters
MAX_NAME_LENGTH = 63 - len("-scheduler")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def default_image() -> str:
    """``shadeflow:<version>``, the tag the README's ``docker build`` gives the image."""
    return f"shadeflow:{__version__.replace('+', '-')}"


@dataclass(frozen=True)
class KubeSettings:
    """Where and how the Dask pods run, from the ``SHADEFLOW_*`` environment."""

    image: str
    namespace: str | None = None  # None: the credentials' namespace (a flow-run pod's own)
    idle_timeout: int = IDLE_TIMEOUT
    service_account: str | None = None  # for the Dask pods, e.g. one with S3 access (IRSA)
    secret: str | None = None  # a Secret whose keys become environment variables of the Dask pods
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KubeSettings:
        """``SHADEFLOW_IMAGE``, ``SHADEFLOW_NAMESPACE``, ``SHADEFLOW_IDLE_TIMEOUT`` (seconds),
        ``SHADEFLOW_DASK_SERVICE_ACCOUNT``, ``SHADEFLOW_DASK_SECRET``; the AWS endpoint and region pass
        through."""
        env = os.environ if env is None else env
        namespace = (env.get("SHADEFLOW_NAMESPACE") or "").strip() or None
        if namespace is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", namespace):
            raise SettingsError(
                f"SHADEFLOW_NAMESPACE={namespace!r} is not a Kubernetes namespace name (lowercase letters, "
                "digits, '-')"
            )
        idle = (
            parse_count(env["SHADEFLOW_IDLE_TIMEOUT"], "SHADEFLOW_IDLE_TIMEOUT")
            if env.get("SHADEFLOW_IDLE_TIMEOUT")
            else IDLE_TIMEOUT
        )
        return cls(
            image=(env.get("SHADEFLOW_IMAGE") or "").strip() or default_image(),
            namespace=namespace,
            idle_timeout=idle,
            service_account=(env.get("SHADEFLOW_DASK_SERVICE_ACCOUNT") or "").strip() or None,
            secret=(env.get("SHADEFLOW_DASK_SECRET") or "").strip() or None,
            env={k: env[k] for k in PASS_THROUGH_ENV if env.get(k)},
        )


def cluster_name(flow_name: str | None, run_id: str | None) -> str:
    """``shadeflow-<flow>-<first 8 characters of the run id>``: unique per run, RFC 1123, short enough.

    Without a run (a preview) the id is random.
    """
    flow = re.sub(r"[^a-z0-9]+", "-", (flow_name or "run").lower()).strip("-") or "run"
    short = re.sub(r"[^a-z0-9]", "", str(run_id or uuid.uuid4().hex).lower())[:8] or uuid.uuid4().hex[:8]
    flow = flow[: MAX_NAME_LENGTH - len("shadeflow--") - len(short)].rstrip("-") or "run"
    return f"shadeflow-{flow}-{short}"


def quantity(n_bytes: int) -> str:
    """A Kubernetes memory quantity for ``n_bytes``: ``8Gi``, ``1536Mi`` or plain bytes."""
    for suffix, unit in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n_bytes % unit == 0:
            return f"{n_bytes // unit}{suffix}"
    return str(n_bytes)


def worker_command(size: ClusterSize) -> list[str]:
    """The Dask worker's command: threads and a memory limit equal to the container's limit.

    The operator appends ``--name $(DASK_WORKER_NAME) --dashboard --dashboard-address 8788`` and
    gives the scheduler address in ``DASK_SCHEDULER_ADDRESS``. (distributed 2026 has no ``dask-worker``
    script any more, only ``dask worker``.)
    """
    return [
        "dask",
        "worker",
        "--nthreads",
        str(size.threads_per_worker),
        "--memory-limit",
        str(size.memory_per_worker),
    ]


def scheduler_args() -> list[str]:
    return ["dask", "scheduler", "--host", "0.0.0.0"]


def labels(flow_name: str | None, run_id: str | None) -> dict[str, str]:
    """Labels that tie the DaskCluster to shadeflow and, in a run, to the flow and the flow run."""
    out = {"app.kubernetes.io/name": "shadeflow", "app.kubernetes.io/component": "dask-cluster"}
    if flow_name:
        value = re.sub(r"[^A-Za-z0-9_.-]+", "-", flow_name)[:63].strip("-_.")
        if value and _LABEL_VALUE.match(value):
            out["shadeflow.io/flow"] = value
    if run_id:
        out["shadeflow.io/flow-run-id"] = str(run_id)
    return out


def cluster_spec(
    size: ClusterSize, name: str, settings: KubeSettings, spec_labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ``kubernetes.dask.org/v1`` ``DaskCluster`` resource for a cluster of ``size``.

    Built with the operator's own ``make_cluster_spec``, then adjusted: the scheduler gets
    :data:`SCHEDULER_RESOURCES` instead of a worker's, both run ``dask …`` commands, and both pods
    get the service account and secret from the settings.
    """
    from dask_kubernetes.operator import make_cluster_spec

    memory = quantity(size.memory_per_worker)
    # no CPU limit: CFS throttling slows numpy without protecting anything; the request places the pod
    worker_resources = {
        "requests": {"cpu": str(size.threads_per_worker), "memory": memory},
        "limits": {"memory": memory},
    }
    env = [{"name": k, "value": v} for k, v in sorted(settings.env.items())]
    spec = make_cluster_spec(
        name=name,
        image=settings.image,
        n_workers=size.n_workers,
        resources=worker_resources,
        env=env,
        worker_command=worker_command(size),
        idle_timeout=settings.idle_timeout,
    )
    # make_cluster_spec shares the env and resources objects between scheduler and workers; copy so
    # each can be changed alone (and YAML shows no anchors)
    spec = json.loads(json.dumps(spec))
    worker_pod = spec["spec"]["worker"]["spec"]
    scheduler_pod = spec["spec"]["scheduler"]["spec"]
    scheduler = scheduler_pod["containers"][0]
    scheduler["args"] = scheduler_args()
    scheduler["resources"] = json.loads(json.dumps(SCHEDULER_RESOURCES))
    for pod in (worker_pod, scheduler_pod):
        if settings.service_account:
            pod["serviceAccountName"] = settings.service_account
        if settings.secret:
            pod["containers"][0]["envFrom"] = [{"secretRef": {"name": settings.secret}}]
    # worker processes keep the memory they free (infra/allocator.py); Dask merges this dict into
    # its own pre-spawn environment, replacing only its 64 KiB trim threshold
    worker_pod["containers"][0].setdefault("env", []).append(
        {"name": PRE_SPAWN_ENV_VAR, "value": repr(allocator.MALLOC_ENV)}
    )
    spec["metadata"]["labels"] = dict(spec_labels or labels(None, None))
    return spec


def spec_yaml(spec: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(spec), sort_keys=False, default_flow_style=False)


def kube_credentials(
    env: Mapping[str, str] | None = None, service_account_dir: str = SERVICE_ACCOUNT_DIR
) -> str:
    """Where Kubernetes credentials come from: a pod's service account or a kubeconfig with a context.

    Raises
    ------
    SettingsError
        Neither is there, so creating a cluster would fail.
    """
    env = os.environ if env is None else env
    token = os.path.join(service_account_dir, "token")
    if env.get("KUBERNETES_SERVICE_HOST") and os.path.isfile(token):
        return f"in-cluster service account ({token})"
    home = env.get("HOME") or os.path.expanduser("~")
    configured = env.get("KUBECONFIG")
    paths = [
        p
        for p in (configured.split(os.pathsep) if configured else [os.path.join(home, ".kube", "config")])
        if p
    ]
    problems = []
    for path in paths:
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            problems.append(f"{path} does not exist")
            continue
        try:
            with open(path) as handle:
                config = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"{path} is not readable YAML ({exc.__class__.__name__})")
            continue
        contexts = (
            [c.get("name") for c in (config.get("contexts") or []) if isinstance(c, dict)]
            if isinstance(config, dict)
            else []
        )
        if not contexts:
            problems.append(f"{path} has no contexts")
            continue
        current = config.get("current-context") or contexts[0]
        return f"kubeconfig {path} (context {current})"
    raise SettingsError(
        "SHADEFLOW_CLUSTER=kubernetes needs Kubernetes credentials, and there are none: "
        + "; ".join(problems)
        + f"; and this is not a pod with a service account (KUBERNETES_SERVICE_HOST and {token}). "
        "Set KUBECONFIG, or run inside the cluster."
    )
