"""``deployments/prefect.yaml`` and the serve entry point, checked without a server.

The flows are found by importing every module of ``shadeflow.flows``, so a new flow without a
deployment fails here.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prefect import Flow
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema
from prefect_processes import child_env

import shadeflow.flows
from shadeflow.deployments import serve as serve_module
from shadeflow.deployments.serve import (
    ServeError,
    check_api_url,
    read_deployments,
    runner_deployments,
    schedule,
)

PREFECT_YAML = Path(serve_module.__file__).with_name("prefect.yaml")


def all_flows() -> dict[str, Flow]:
    flows = {}
    for module in pkgutil.iter_modules(shadeflow.flows.__path__):
        imported = importlib.import_module(f"shadeflow.flows.{module.name}")
        for value in vars(imported).values():
            if isinstance(value, Flow) and value.fn.__module__ == imported.__name__:
                flows[value.name] = value
    return flows


def test_every_flow_has_a_deployment():
    flows = all_flows()
    assert {"meanimage", "model-build", "applied-test"} <= set(flows)
    deployed = {load_flow_from_entrypoint(entry.entrypoint).name for entry in read_deployments()}
    assert set(flows) <= deployed, f"flows without a deployment: {sorted(set(flows) - deployed)}"


@pytest.mark.parametrize("entry", read_deployments(), ids=lambda e: e.entrypoint)
def test_entrypoints_are_module_paths_of_the_installed_package(entry):
    assert ":" not in entry.entrypoint and entry.entrypoint.startswith("shadeflow.flows.")
    module, _, name = entry.entrypoint.rpartition(".")
    assert load_flow_from_entrypoint(entry.entrypoint) is getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("entry", read_deployments(), ids=lambda e: e.entrypoint)
def test_parameters_are_a_described_pydantic_model(entry):
    flow = load_flow_from_entrypoint(entry.entrypoint)
    schema = parameter_schema(flow).model_dump()
    assert list(schema["properties"]) == ["params"]
    definitions = schema["definitions"]
    assert definitions
    for model, definition in definitions.items():
        for field, spec in definition["properties"].items():
            assert spec.get("description"), f"{model}.{field} has no description for the UI form"
    if entry.parameters:  # the deployment's own parameters must be valid for the flow
        model = flow.fn.__annotations__["params"]
        model = (
            getattr(importlib.import_module(flow.fn.__module__), model) if isinstance(model, str) else model
        )
        model.model_validate(entry.parameters["params"])


def test_nightly_example_refreshes_a_cohort_every_night():
    (nightly,) = [e for e in read_deployments() if e.schedules]
    flow = load_flow_from_entrypoint(nightly.entrypoint)
    assert flow.name == "cohort-refresh"
    (spec,) = nightly.schedules
    cron = schedule(spec)
    minute, hour, day, month, weekday = cron.cron.split()
    assert (day, month, weekday) == ("*", "*", "*") and minute.isdigit() and hour.isdigit()  # once a day
    assert cron.timezone == "UTC"
    params = nightly.parameters["params"]
    assert (
        params["meanimage"]["slides"] and params["model"]["version"] and params["model"]["overwrite"] is True
    )


def test_every_deployment_goes_to_the_kubernetes_pool_with_image_namespace_and_memory():
    config = yaml.safe_load(PREFECT_YAML.read_text())
    assert config["pull"] == []  # the image holds the package: nothing to pull or clone
    for deployment in config["deployments"]:
        pool = deployment["work_pool"]
        assert pool["name"] == config["definitions"]["work_pools"]["kubernetes"]["name"]
        variables = pool["job_variables"]
        assert variables["image"] == "{{ $SHADEFLOW_IMAGE }}"
        assert variables["namespace"] and variables["memory"]


def test_runner_deployments_carry_names_parameters_and_schedules():
    deployments = runner_deployments()
    entries = read_deployments()
    assert len(deployments) == len(entries)
    for deployment, entry in zip(deployments, entries):
        assert deployment.name == entry.name
        assert deployment.entrypoint == entry.entrypoint
        assert deployment.parameters == entry.parameters
        assert len(deployment.schedules) == len(entry.schedules)
        for made, spec in zip(deployment.schedules, entry.schedules):
            assert made.active == spec.get("active", True)
            assert getattr(made.schedule, "cron", None) == spec.get("cron")
    only = runner_deployments(only=["meanimage/meanimage"])
    assert [(d.flow_name, d.name) for d in only] == [("meanimage", "meanimage")]
    with pytest.raises(ServeError, match="no-such/flow"):
        runner_deployments(only=["no-such/flow"])


def test_schedules_of_every_kind(tmp_path):
    assert schedule({"interval": 30, "active": True}).interval.total_seconds() == 30
    assert schedule({"rrule": "FREQ=DAILY;BYHOUR=2"}).rrule == "FREQ=DAILY;BYHOUR=2"
    with pytest.raises(ServeError, match="none of cron, interval, rrule"):
        schedule({"every": "night"})
    empty = tmp_path / "prefect.yaml"
    empty.write_text("deployments: []\n")
    with pytest.raises(ServeError, match="lists no deployments"):
        read_deployments(empty)
    with pytest.raises(ServeError, match="does not exist"):
        read_deployments(tmp_path / "missing.yaml")


def test_serving_without_a_server_says_how_to_start_one(tmp_path):
    with pytest.raises(ServeError, match="prefect server start"):
        check_api_url(None)
    assert check_api_url("http://127.0.0.1:4200/api") == "http://127.0.0.1:4200/api"
    # the entry point itself, in a clean environment (no PREFECT_API_URL): exit 2 and the reason, nothing
    # served
    result = subprocess.run(
        [sys.executable, "-m", "shadeflow.deployments.serve"],
        env=child_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "PREFECT_API_URL" in result.stderr
