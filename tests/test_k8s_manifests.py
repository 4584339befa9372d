"""Kubernetes manifests, the work-pool job template, the image and the operator's Helm values, checked
offline.

Manifests are validated against the Kubernetes 1.37 schemas of kubernetes-validate (strict: unknown
fields are errors). Cross-references (service accounts, roles, the work pool's defaults) are checked
between the files, and the Dask RBAC against the CRDs shipped in the dask-kubernetes wheel.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.resources
import json
import re
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prefect.utilities.templating import apply_values

from shadeflow.infra.sizing import parse_count, parse_size

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
WORK_POOL = ROOT / "deployments" / "k8s-work-pool.json"
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
CHART = (
    importlib.resources.files("dask_kubernetes.operator") / "deployment" / "helm" / "dask-kubernetes-operator"
)
K8S_VERSION = "1.37"


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def find(kind: str, name: str) -> dict:
    matches = [d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def work_pool() -> dict:
    return json.loads(WORK_POOL.read_text())


# ----------------------------------------------------------------------------------------------
# manifests


@pytest.mark.parametrize(
    ("file", "document"),
    documents(),
    ids=lambda v: v if isinstance(v, str) else f"{v['kind']}-{v['metadata']['name']}",
)
def test_manifest_is_valid_kubernetes(file, document):
    assert kubernetes_validate.validate(document, K8S_VERSION, strict=True) == K8S_VERSION


def test_strict_validation_catches_a_misspelt_field():
    broken = copy.deepcopy(find("Deployment", "prefect-worker"))
    broken["spec"]["template"]["spec"]["serviceAcountName"] = broken["spec"]["template"]["spec"].pop(
        "serviceAccountName"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_everything_lives_in_the_work_pools_namespace():
    namespace = work_pool()["variables"]["properties"]["namespace"]["default"]
    find("Namespace", namespace)
    for _, document in documents():
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == namespace, document["metadata"]["name"]


def test_role_bindings_bind_existing_accounts_to_existing_roles():
    bindings = [d for _, d in documents() if d["kind"] == "RoleBinding"]
    assert bindings
    for binding in bindings:
        find("Role", binding["roleRef"]["name"])
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            find("ServiceAccount", subject["name"])


def rules_of(role: str) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in find("Role", role)["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def bound_role(account: str) -> str:
    (binding,) = [
        d
        for _, d in documents()
        if d["kind"] == "RoleBinding" and any(s["name"] == account for s in d["subjects"])
    ]
    return binding["roleRef"]["name"]


def test_no_role_uses_wildcards():
    for _, document in documents():
        if document["kind"] in ("Role", "ClusterRole"):
            for rule in document["rules"]:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], document["metadata"][
                    "name"
                ]
    assert not [d for _, d in documents() if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_flow_run_pods_may_do_exactly_what_a_kube_cluster_does():
    """The flow-run account: the three Dask resources of a run (from the CRDs in the wheel), never DaskJobs,
    plus pods/services."""
    account = work_pool()["variables"]["properties"]["service_account_name"]["default"]
    rules = rules_of(bound_role(account))
    crds = {
        n: yaml.safe_load((CHART / "crds" / f"{n}.yaml").read_text())["spec"]
        for n in ("daskcluster", "daskworkergroup", "daskautoscaler", "daskjob")
    }
    group = crds["daskcluster"]["group"]
    plural = {n: c["names"]["plural"] for n, c in crds.items()}
    # what dask_kubernetes.operator.KubeCluster calls for create → adapt → wait → close (kr8s gets by name as
    # a list)
    needed = {
        (group, plural["daskcluster"]): {"get", "list", "create", "delete"},
        (group, plural["daskworkergroup"]): {"get", "list"},
        (group, plural["daskautoscaler"]): {"create", "patch"},
        ("", "pods"): {"get", "list"},
        ("", "pods/log"): {"get"},
        ("", "services"): {"get", "list"},
    }
    assert rules == needed
    assert (group, plural["daskjob"]) not in rules
    assert not any(g == "batch" for g, _ in rules)  # flow runs do not start Jobs


def test_the_worker_may_run_jobs_but_not_dask_clusters():
    rules = rules_of(bound_role("prefect-worker"))
    assert {"create", "delete", "watch"} <= rules[("batch", "jobs")]
    assert {"get", "list", "watch"} <= rules[("", "pods/log")] | rules[("", "pods")]
    assert not any(g == "kubernetes.dask.org" for g, _ in rules)


def test_worker_deployment_runs_the_pinned_prefect_as_non_root_on_the_pool():
    deployment = find("Deployment", "prefect-worker")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == "prefect-worker"
    find("ServiceAccount", pod["serviceAccountName"])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    image, tag = container["image"].rsplit(":", 1)
    assert image == "prefecthq/prefect"
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert tag == f"{importlib.metadata.version('prefect')}-{python}-kubernetes"
    args = container["args"]
    assert args[:3] == ["prefect", "worker", "start"]
    assert (
        args[args.index("--pool") + 1]
        == yaml.safe_load(PREFECT_YAML.read_text())["definitions"]["work_pools"]["kubernetes"]["name"]
    )
    assert args[args.index("--type") + 1] == "kubernetes"
    env = {e["name"]: e for e in container["env"]}
    assert "PREFECT_API_URL" in env
    assert (
        env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"]["value"]
        == deployment["metadata"]["namespace"]
    )
    assert (
        deployment["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_dask_pods_account_exists_without_api_access():
    account = work_pool()["variables"]["properties"]["dask_service_account"]["default"]
    document = find("ServiceAccount", account)
    assert document["automountServiceAccountToken"] is False
    assert not [
        d
        for _, d in documents()
        if d["kind"] == "RoleBinding" and any(s["name"] == account for s in d["subjects"])
    ]


# ----------------------------------------------------------------------------------------------
# the work pool's base job template


def default_kubernetes_template() -> dict:
    """Prefect's own default base job template for kubernetes work pools (shipped with prefect)."""
    path = (
        importlib.resources.files("prefect.server.api.collections_data")
        / "views"
        / "aggregate-worker-metadata.json"
    )
    return json.loads(path.read_text())["prefect-kubernetes"]["kubernetes"]["default_base_job_configuration"]


def render(template: dict, job_variables: dict) -> dict:
    """The job configuration a worker would build: variable defaults, overridden by the deployment's
    values."""
    values = {
        k: v["default"]
        for k, v in template["variables"]["properties"].items()
        if v.get("default") is not None
    }
    values.update(job_variables)
    return apply_values(copy.deepcopy(template["job_configuration"]), values)


def test_work_pool_template_extends_prefects_default():
    ours, default = work_pool(), default_kubernetes_template()
    assert set(default["variables"]["properties"]) <= set(ours["variables"]["properties"])
    assert set(default["job_configuration"]) == set(ours["job_configuration"])
    added = set(ours["variables"]["properties"]) - set(default["variables"]["properties"])
    assert added == {"memory", "worker_memory", "worker_cpus", "cluster", "dask_service_account"}
    manifest = json.dumps(ours["job_configuration"]["job_manifest"])
    for variable in added:
        assert "{{ " + variable + " }}" in manifest, variable


def test_template_defaults_are_valid_settings():
    props = work_pool()["variables"]["properties"]
    parse_size(props["memory"]["default"], "memory")
    parse_size(props["worker_memory"]["default"], "worker_memory")
    parse_count(props["worker_cpus"]["default"], "worker_cpus")
    assert props["cluster"]["default"] == "kubernetes"
    for value in ("16Gi", "64GiB", "500Mi", "1.5Gi", "17179869184"):
        assert re.match(props["memory"]["pattern"], value)
        parse_size(value, "memory")
    for value in ("lots", "-1Gi", "16 bananas"):
        assert not re.match(props["memory"]["pattern"], value)


def prefect_yaml_deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_YAML.read_text())["deployments"]


@pytest.mark.parametrize(
    "deployment", prefect_yaml_deployments(), ids=lambda d: d["entrypoint"].rsplit(".", 1)[-1]
)
def test_each_deployment_renders_a_valid_job_whose_memory_sets_shadeflow_memory(deployment, monkeypatch):
    monkeypatch.setenv("SHADEFLOW_IMAGE", "registry.example.org/shadeflow:9.9.9")
    variables = apply_values(
        deployment["work_pool"]["job_variables"], dict(__import__("os").environ), remove_notset=False
    )
    template = work_pool()
    unknown = set(variables) - set(template["variables"]["properties"])
    assert not unknown, f"job variables the work pool does not define: {unknown}"
    config = render(template, variables)
    job = config["job_manifest"]
    job["metadata"]["generateName"] = "shadeflow-run-"  # the worker fills these from the flow run
    job["metadata"]["labels"] = {}
    assert kubernetes_validate.validate(job, K8S_VERSION) == K8S_VERSION
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["SHADEFLOW_MEMORY"] == variables["memory"]
    assert parse_size(env["SHADEFLOW_MEMORY"], "memory") > 0
    assert env["SHADEFLOW_CLUSTER"] == "kubernetes"
    # Dask pods run the flow's image
    assert env["SHADEFLOW_IMAGE"] == container["image"] == "registry.example.org/shadeflow:9.9.9"
    assert job["metadata"]["namespace"] == variables["namespace"]
    assert pod["serviceAccountName"] == template["variables"]["properties"]["service_account_name"]["default"]
    assert container["resources"]["requests"]["memory"] == variables.get(
        "memory_request", template["variables"]["properties"]["memory_request"]["default"]
    )


# ----------------------------------------------------------------------------------------------
# the image


def dockerfile() -> list[str]:
    text = (ROOT / "infra" / "Dockerfile").read_text()
    return [
        line.strip()
        for line in text.replace("\\\n", " ").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_dockerfile_base_image_is_pinned_to_this_python():
    args = {m.group(1): m.group(2) for line in dockerfile() if (m := re.match(r"ARG (\w+)=(\S+)", line))}
    froms = [line.split()[1] for line in dockerfile() if line.startswith("FROM ")]
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms)
    image = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", image), f"{image} is not an exact release"
    # the image's minor release matches the interpreter the project is tested on (patch releases are
    # ABI-compatible)
    assert image.split(":")[1].split(".")[:2] == [str(v) for v in sys.version_info[:2]]
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["SETUPTOOLS_VERSION"])


def test_dockerfile_installs_with_the_constraints_and_runs_as_non_root():
    lines = dockerfile()
    installs = [line for line in lines if "pip install" in line]
    assert installs and all("--constraint constraints.txt" in line for line in installs)
    assert any(line.startswith("COPY") and "constraints.txt" in line for line in lines)
    assert any("pip check" in line for line in lines)
    user = [line for line in lines if line.startswith("USER ")][-1].split()[1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert any(f"--uid {uid}" in line for line in lines if "useradd" in line)


def test_dockerfile_copies_every_package_and_the_context_allows_it():
    lines = dockerfile()
    copied = {
        source
        for line in lines
        if line.startswith("COPY ") and "--from" not in line
        for source in line.split()[1:-1]
    }
    package_dirs = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    )
    assert package_dirs <= copied
    for source in copied:
        assert (ROOT / source).exists(), source
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / "infra" / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    assert copied <= allowed


# ----------------------------------------------------------------------------------------------
# the Dask operator's Helm values


def flatten(values: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        keys.add(prefix + key)
        if isinstance(value, dict) and value:
            keys |= flatten(value, prefix + key + ".")
    return keys


def test_operator_values_are_chart_values_and_match_the_client():
    ours = yaml.safe_load((ROOT / "infra" / "helm" / "dask-operator-values.yaml").read_text())
    chart = yaml.safe_load((CHART / "values.yaml").read_text())
    # every key we set exists in the chart (resources' sub-keys are free-form Kubernetes)
    keys = {k for k in flatten(ours) if not k.startswith(("resources.", "securityContext."))}
    assert keys <= flatten(chart) | {"resources", "securityContext"}
    assert ours["image"]["tag"] == importlib.metadata.version("dask-kubernetes")
    assert ours["image"]["name"] == chart["image"]["name"]
    note = (ROOT / "infra" / "helm" / "README.md").read_text()
    assert f"--version {importlib.metadata.version('dask-kubernetes')}" in note
