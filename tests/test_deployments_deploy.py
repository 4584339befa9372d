"""``prefect deploy --all`` with ``deployments/prefect.yaml`` onto a Kubernetes work pool made from
``deployments/k8s-work-pool.json``, with the real ``prefect`` command against the session's test
server. No worker runs (that needs Kubernetes); what a worker would start is rendered from the pool's
template and the deployment's job variables as stored by the server, and validated as a Kubernetes Job.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.settings import PREFECT_API_URL
from prefect.utilities.templating import apply_values
from prefect_processes import child_env

from shadeflow.deployments.serve import read_deployments
from shadeflow.infra.sizing import parse_size

ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
WORK_POOL = ROOT / "deployments" / "k8s-work-pool.json"
IMAGE = "registry.example.org/lab/shadeflow:0.1.0-test"

pytestmark = pytest.mark.usefixtures("prefect_server")


def prefect(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (
        f"prefect {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """The work pool and every deployment, created by the real CLI from a directory unrelated to the
    repository."""
    work = tmp_path_factory.mktemp("deploy")
    pool = yaml.safe_load(PREFECT_YAML.read_text())["definitions"]["work_pools"]["kubernetes"]["name"]
    env = child_env(work / "home", PREFECT_API_URL=PREFECT_API_URL.value(), SHADEFLOW_IMAGE=IMAGE)
    prefect(
        ["work-pool", "create", pool, "--type", "kubernetes", "--base-job-template", str(WORK_POOL)],
        env,
        work,
    )
    output = prefect(["--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_YAML)], env, work)
    return {"pool": pool, "output": output.stdout}


def read_all(pool_name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    with get_client(sync_client=True) as client:
        pool = client.read_work_pool(pool_name)
        deployments = client.read_deployments(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool_name]))
        )
        flows = {f.id: f.name for f in client.read_flows()}
    return pool, {(flows[d.flow_id], d.name): d for d in deployments}


def test_every_deployment_is_created_on_the_kubernetes_pool(deployed):
    pool, deployments = read_all(deployed["pool"])
    assert pool.type == "kubernetes"
    expected = {(load_flow_from_entrypoint(e.entrypoint).name, e.name) for e in read_deployments()}
    assert set(deployments) == expected
    for (flow_name, _), deployment in deployments.items():
        assert deployment.work_queue_name == "default"
        assert deployment.entrypoint.startswith("shadeflow.flows.")
        # what the flow-run pod will load
        assert load_flow_from_entrypoint(deployment.entrypoint).name == flow_name
        assert not deployment.pull_steps  # nothing to clone: the image holds the package
        assert deployment.job_variables["image"] == IMAGE
        assert deployment.job_variables["namespace"] == "shadeflow"
        parse_size(deployment.job_variables["memory"], "memory")


def test_parameter_forms_have_descriptions_and_the_nightly_schedule_is_kept(deployed):
    _, deployments = read_all(deployed["pool"])
    for key, deployment in deployments.items():
        schema = deployment.parameter_openapi_schema
        assert schema["required"] == ["params"], key
        for model, definition in schema["definitions"].items():
            assert all(spec.get("description") for spec in definition["properties"].values()), (key, model)
    (nightly,) = [d for d in deployments.values() if d.schedules]
    (entry,) = [e for e in read_deployments() if e.schedules]
    (schedule,) = nightly.schedules
    assert schedule.schedule.cron == entry.schedules[0]["cron"]
    assert schedule.schedule.timezone == entry.schedules[0]["timezone"]
    assert schedule.active is entry.schedules[0]["active"]
    assert nightly.parameters == entry.parameters


def test_what_the_worker_would_start_is_a_valid_job_carrying_the_memory(deployed):
    pool, deployments = read_all(deployed["pool"])
    template = pool.base_job_template
    assert template == json.loads(WORK_POOL.read_text())
    defaults = {
        k: v["default"]
        for k, v in template["variables"]["properties"].items()
        if v.get("default") is not None
    }
    for key, deployment in deployments.items():
        job = apply_values(
            copy.deepcopy(template["job_configuration"]), {**defaults, **deployment.job_variables}
        )["job_manifest"]
        # the worker fills these from the flow run
        job["metadata"].update(generateName="shadeflow-run-", labels={})
        assert kubernetes_validate.validate(job, "1.37") == "1.37", key
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SHADEFLOW_MEMORY"] == deployment.job_variables["memory"], key
        assert container["image"] == env["SHADEFLOW_IMAGE"] == IMAGE
