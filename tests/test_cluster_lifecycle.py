"""Every flow run gets its own cluster: created at the run's first task, sized from the settings read
then, closed when the run ends — also when it fails.

The flows run for real (Prefect test server, synthetic slides) through the ``DaskTaskRunner`` of their
decorator, as deployments run them, or through ``with_options`` as the CLI does. The cluster classes
are swapped for recording ones that run a real in-process LocalCluster underneath.
"""

from __future__ import annotations

import importlib.resources

import jsonschema
import pytest
import yaml
from dask.utils import parse_bytes
from recording_clusters import FAKE_KUBECONFIG, Record, recording_classes

from shadeflow.core.synth.slides import SynthConfig, write_cohort
from shadeflow.flows.meanimage import MeanImageParameters, meanimage
from shadeflow.infra import cluster as cluster_module
from shadeflow.infra.cluster import task_runner

pytestmark = pytest.mark.usefixtures("prefect_server")

SETTINGS = (
    "SHADEFLOW_MEMORY",
    "CO_MEMORY",
    "SHADEFLOW_WORKER_MEMORY",
    "SHADEFLOW_WORKER_CPUS",
    "SHADEFLOW_CLUSTER",
    "SHADEFLOW_IMAGE",
    "SHADEFLOW_NAMESPACE",
    "KUBECONFIG",
)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    return write_cohort(
        str(tmp_path_factory.mktemp("lifecycle")),
        SynthConfig(slides=1, fields=20, seed=11, shape=(96, 128, 4)),
    )


@pytest.fixture
def record(monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    rec = Record()
    monkeypatch.setattr(cluster_module, "CLUSTER_CLASSES", recording_classes(rec))
    return rec


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    path = tmp_path / "kubeconfig"
    path.write_text(FAKE_KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


def run_id(state) -> str:
    return str(state.state_details.flow_run_id)


def test_each_run_gets_its_own_cluster_sized_when_it_starts(record, slides, monkeypatch):
    monkeypatch.setenv("SHADEFLOW_MEMORY", "3GiB")
    first = meanimage(MeanImageParameters(slides=slides), return_state=True)
    monkeypatch.setenv("SHADEFLOW_MEMORY", "5GiB")  # same flow object, imported once: read again at run start
    second = meanimage(MeanImageParameters(slides=slides), return_state=True)

    assert first.is_completed() and second.is_completed()
    assert run_id(first) != run_id(second)
    assert [c["memory_limit"] for c in record.created] == [parse_bytes("3GiB"), parse_bytes("5GiB")]
    # one cluster per run, closed before the next
    assert record.events == ["create", "close", "create", "close"]


def test_the_cli_memory_option_wins_for_that_run(record, slides, monkeypatch):
    monkeypatch.setenv("SHADEFLOW_MEMORY", "3GiB")
    state = meanimage.with_options(task_runner=task_runner(memory="6GiB", workers=2))(
        MeanImageParameters(slides=slides), return_state=True
    )
    assert state.is_completed()
    (created,) = record.created
    assert (created["n_workers"], created["memory_limit"]) == (2, parse_bytes("6GiB") // 2)
    assert record.events == ["create", "close"]


def test_the_cluster_is_closed_when_the_run_fails(record, tmp_path, monkeypatch):
    monkeypatch.setenv("SHADEFLOW_MEMORY", "3GiB")
    missing = str(tmp_path / "no-such-slide")
    state = meanimage(MeanImageParameters(slides=[missing]), return_state=True)
    assert state.is_failed()
    assert "no-such-slide" in state.message
    assert record.events == ["create", "close"]


def daskcluster_validator() -> jsonschema.Draft7Validator:
    path = (
        importlib.resources.files("dask_kubernetes.operator")
        / "deployment"
        / "helm"
        / "dask-kubernetes-operator"
        / "crds"
        / "daskcluster.yaml"
    )
    crd = yaml.safe_load(path.read_text())
    return jsonschema.Draft7Validator(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_kubernetes_run_creates_its_daskcluster_scales_it_and_deletes_it(
    record, slides, kubeconfig, monkeypatch
):
    monkeypatch.setenv("SHADEFLOW_CLUSTER", "kubernetes")
    monkeypatch.setenv("SHADEFLOW_MEMORY", "24GiB")
    monkeypatch.setenv("SHADEFLOW_IMAGE", "registry.example.org/shadeflow:test")
    state = meanimage(MeanImageParameters(slides=slides), return_state=True)

    assert state.is_completed()
    (created,) = record.created
    spec = created["custom_cluster_spec"]
    assert not list(daskcluster_validator().iter_errors(spec))
    replicas = parse_bytes("24GiB") // parse_bytes("8GiB")  # the default worker pod
    assert spec["spec"]["worker"]["replicas"] == replicas
    assert spec["spec"]["worker"]["spec"]["containers"][0]["image"] == "registry.example.org/shadeflow:test"
    name = spec["metadata"]["name"]
    assert name.startswith("shadeflow-meanimage-") and name.endswith(run_id(state).replace("-", "")[:8])
    assert spec["metadata"]["labels"]["shadeflow.io/flow-run-id"] == run_id(state)
    assert created["shutdown_on_close"] is True
    assert record.adapted == [(1, replicas)]
    assert record.closed == [name]
    assert record.events == ["create", "adapt", "close"]


def test_a_kubernetes_cluster_is_closed_when_scaling_cannot_be_set_up(slides, kubeconfig, monkeypatch):
    for name in SETTINGS[:-1]:
        monkeypatch.delenv(name, raising=False)
    record = Record()
    monkeypatch.setattr(cluster_module, "CLUSTER_CLASSES", recording_classes(record, fail_adapt=True))
    monkeypatch.setenv("SHADEFLOW_CLUSTER", "kubernetes")
    monkeypatch.setenv("SHADEFLOW_MEMORY", "16GiB")
    state = meanimage(MeanImageParameters(slides=slides), return_state=True)
    assert state.is_failed()
    assert record.events == ["create", "adapt", "close"]


def test_a_failed_kubernetes_run_deletes_its_cluster(record, tmp_path, kubeconfig, monkeypatch):
    monkeypatch.setenv("SHADEFLOW_CLUSTER", "kubernetes")
    monkeypatch.setenv("SHADEFLOW_MEMORY", "16GiB")
    state = meanimage(MeanImageParameters(slides=[str(tmp_path / "missing")]), return_state=True)
    assert state.is_failed()
    (created,) = record.created
    assert record.closed == [created["custom_cluster_spec"]["metadata"]["name"]]
