"""The DaskCluster specs shadeflow generates, validated offline against the CRD in the dask-kubernetes wheel.

Expected numbers are worked out here from the settings (memory // worker memory, requests = limits);
the schema and the name rule come from dask-kubernetes itself.
"""

from __future__ import annotations

import importlib.resources
import inspect
import re

import jsonschema
import pytest
import yaml
from dask.utils import parse_bytes

from shadeflow.infra import kubernetes
from shadeflow.infra.cluster import plan_cluster
from shadeflow.infra.kubernetes import PRE_SPAWN_ENV_VAR
from shadeflow.infra.sizing import SettingsError

GIB = 2**30
CRDS = (
    importlib.resources.files("dask_kubernetes.operator")
    / "deployment"
    / "helm"
    / "dask-kubernetes-operator"
    / "crds"
)
RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
QUANTITY = re.compile(r"^(\d+)(Ki|Mi|Gi|Ti)?$")
UNITS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def crd_schema(name: str) -> dict:
    """The schema of the served version of a CRD shipped in the dask-kubernetes wheel."""
    crd = yaml.safe_load((CRDS / f"{name}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("served")]
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft7Validator(crd_schema("daskcluster"))


def to_bytes(quantity: str) -> int:
    match = QUANTITY.match(quantity)
    assert match, f"unexpected memory quantity {quantity!r}"
    return int(match.group(1)) * UNITS[match.group(2)]


def k8s_plan(memory: str, **env: str):
    return plan_cluster(
        {"SHADEFLOW_MEMORY": memory, **env},
        cluster="kubernetes",
        flow_name="meanimage",
        run_id="5f0c3a1e-7d2b-4c1a-9e8f-0123456789ab",
    )


def worker(spec):
    return spec["spec"]["worker"]["spec"]["containers"][0]


def scheduler(spec):
    return spec["spec"]["scheduler"]["spec"]["containers"][0]


def arg(container, flag):
    args = container["args"]
    return args[args.index(flag) + 1]


MEMORIES = [
    ("4GiB", {}),
    ("16GiB", {}),
    ("20GiB", {}),
    ("64Gi", {}),
    ("100GiB", {"SHADEFLOW_WORKER_MEMORY": "12GiB", "SHADEFLOW_WORKER_CPUS": "3"}),
    ("2GiB", {"SHADEFLOW_WORKER_CPUS": "1"}),
]


@pytest.mark.parametrize(("memory", "env"), MEMORIES)
def test_generated_specs_are_valid_dask_clusters(validator, memory, env):
    spec = k8s_plan(memory, **env).spec
    errors = sorted(validator.iter_errors(spec), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    assert spec["apiVersion"] == "kubernetes.dask.org/v1" and spec["kind"] == "DaskCluster"


@pytest.mark.parametrize(("memory", "env"), MEMORIES)
def test_workers_threads_and_memory_follow_the_setting(memory, env):
    spec = k8s_plan(memory, **env).spec
    total = parse_bytes(memory)
    per_worker = min(parse_bytes(env.get("SHADEFLOW_WORKER_MEMORY", "8GiB")), total)
    threads = int(env.get("SHADEFLOW_WORKER_CPUS", "2"))
    container = worker(spec)

    assert spec["spec"]["worker"]["replicas"] == total // per_worker
    resources = container["resources"]
    # a worker never lands where it cannot fit
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    assert to_bytes(resources["limits"]["memory"]) == per_worker
    # Dask spills and pauses against the container's limit
    assert int(arg(container, "--memory-limit")) == per_worker
    assert int(arg(container, "--nthreads")) == threads == int(resources["requests"]["cpu"])
    assert "cpu" not in resources["limits"]  # no CFS throttling of numpy threads


@pytest.mark.parametrize(("memory", "env"), MEMORIES)
def test_the_scheduler_is_smaller_than_a_worker_and_runs_dask(memory, env):
    spec = k8s_plan(memory, **env).spec
    sched, work = scheduler(spec), worker(spec)
    sched_memory, work_memory = (
        to_bytes(sched["resources"]["limits"]["memory"]),
        to_bytes(work["resources"]["limits"]["memory"]),
    )
    assert sched_memory <= work_memory
    if work_memory >= 4 * GIB:
        assert sched_memory < work_memory
    assert sched["resources"]["requests"]["memory"] == sched["resources"]["limits"]["memory"]
    assert sched["args"][:2] == ["dask", "scheduler"] and work["args"][:2] == ["dask", "worker"]
    # the scheduler's resources are its own, not a copy of the workers' object
    assert sched["resources"] is not work["resources"] and sched["env"] is not work["env"]


@pytest.mark.parametrize(("memory", "env"), MEMORIES)
def test_names_are_rfc1123_and_accepted_by_dask_kubernetes(memory, env):
    from dask_kubernetes.operator.validation import validate_cluster_name

    plan = k8s_plan(memory, **env)
    name = plan.spec["metadata"]["name"]
    assert name == plan.name
    validate_cluster_name(name)
    assert RFC1123_LABEL.match(name) and len(name) + len("-scheduler") <= 63
    assert plan.spec["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == name


def test_adaptive_bounds_are_one_to_the_sized_count():
    assert k8s_plan("64GiB").adapt_bounds == (1, 8)
    assert k8s_plan("20GiB").adapt_bounds == (1, 2)
    assert k8s_plan("4GiB").adapt_bounds is None  # one worker: nothing to scale


def test_idle_timeout_deletes_orphans_and_can_be_set():
    assert k8s_plan("16GiB").spec["spec"]["idleTimeout"] == kubernetes.IDLE_TIMEOUT > 0
    assert k8s_plan("16GiB", SHADEFLOW_IDLE_TIMEOUT="600").spec["spec"]["idleTimeout"] == 600
    with pytest.raises(SettingsError, match="SHADEFLOW_IDLE_TIMEOUT='0'"):
        k8s_plan("16GiB", SHADEFLOW_IDLE_TIMEOUT="0")


def test_image_namespace_account_secret_and_environment_come_from_settings(validator):
    plan = k8s_plan(
        "16GiB",
        SHADEFLOW_IMAGE="registry.example.org/lab/shadeflow:1.2.3",
        SHADEFLOW_NAMESPACE="imaging",
        SHADEFLOW_DASK_SERVICE_ACCOUNT="shadeflow-dask",
        SHADEFLOW_DASK_SECRET="s3-credentials",
        AWS_ENDPOINT_URL="https://s3.example.org",
        AWS_SECRET_ACCESS_KEY="never-in-a-spec",
    )
    assert not list(validator.iter_errors(plan.spec))
    for pod in (plan.spec["spec"]["worker"]["spec"], plan.spec["spec"]["scheduler"]["spec"]):
        container = pod["containers"][0]
        assert container["image"] == "registry.example.org/lab/shadeflow:1.2.3"
        assert pod["serviceAccountName"] == "shadeflow-dask"
        assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
        env = {e["name"]: e["value"] for e in container["env"]}
        env.pop(PRE_SPAWN_ENV_VAR, None)  # workers only: tests/test_allocator.py
        assert env == {"AWS_ENDPOINT_URL": "https://s3.example.org"}  # secrets never appear in the resource
    assert plan.namespace == "imaging"
    assert plan.cluster_kwargs()["namespace"] == "imaging"
    with pytest.raises(SettingsError, match="SHADEFLOW_NAMESPACE='Not_A_Namespace'"):
        k8s_plan("16GiB", SHADEFLOW_NAMESPACE="Not_A_Namespace")


def test_default_image_is_the_installed_version():
    import shadeflow

    assert worker(k8s_plan("16GiB").spec)["image"] == f"shadeflow:{shadeflow.__version__}"


def test_labels_tie_the_cluster_to_the_flow_run():
    labels = k8s_plan("16GiB").spec["metadata"]["labels"]
    assert labels["shadeflow.io/flow"] == "meanimage"
    assert labels["shadeflow.io/flow-run-id"] == "5f0c3a1e-7d2b-4c1a-9e8f-0123456789ab"
    label_value = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    assert all(label_value.match(v) and len(v) <= 63 for v in labels.values())


def test_kube_cluster_accepts_the_arguments():
    """The arguments bind to the real KubeCluster's signature (creating one needs a cluster)."""
    from dask_kubernetes.operator import KubeCluster

    kwargs = k8s_plan("16GiB").cluster_kwargs()
    inspect.signature(KubeCluster).bind(**kwargs)
    assert kwargs["shutdown_on_close"] is True
    assert kwargs["custom_cluster_spec"]["metadata"]["name"].startswith("shadeflow-meanimage-5f0c3a1e")


@pytest.mark.parametrize(
    ("flow", "run_id"),
    [
        ("meanimage", "5f0c3a1e-7d2b"),
        ("Model Build!!", "ABCDEF12-3456"),
        ("x" * 80, "0123456789abcdef"),
        ("-", None),
        (None, None),
        ("flow_with_underscores", "ffff"),
    ],
)
def test_cluster_names_for_any_flow(flow, run_id):
    from dask_kubernetes.operator.validation import validate_cluster_name

    name = kubernetes.cluster_name(flow, run_id)
    validate_cluster_name(name)
    assert name.startswith("shadeflow-")
    if run_id:
        assert name.endswith("-" + re.sub(r"[^a-z0-9]", "", run_id.lower())[:8])


def test_cluster_names_are_unique_per_run_and_stable_within_one():
    a = kubernetes.cluster_name("meanimage", "11111111-aaaa")
    assert a == kubernetes.cluster_name("meanimage", "11111111-aaaa")
    assert a != kubernetes.cluster_name("meanimage", "22222222-aaaa")
    assert kubernetes.cluster_name("meanimage", None) != kubernetes.cluster_name("meanimage", None)


def test_preview_yaml_is_the_spec(validator):
    from shadeflow.infra.preview import cluster_preview

    text, _ = cluster_preview(memory="64GiB", cluster="kubernetes", env={"HOME": "/nonexistent"})
    assert "workers: 8" in text and "threads per worker: 2" in text and "memory per worker: 8.00 GiB" in text
    document = yaml.safe_load(text.split("\n\n# DaskCluster resource", 1)[1].split("\n", 1)[1])
    assert not list(validator.iter_errors(document))
    assert document["spec"]["worker"]["replicas"] == 8
