"""Bad cluster settings are clear errors before any cluster or run is created; ``shadeflow cluster``'s text.

``check_settings`` is what the CLI calls before it starts a run; ``make_cluster`` is what a run calls
before it creates anything. Both are checked with recording cluster classes that must stay unused.
"""

from __future__ import annotations

import os

import pytest
from dask.utils import parse_bytes
from recording_clusters import FAKE_KUBECONFIG, Record, recording_classes

from shadeflow.infra import cluster as cluster_module
from shadeflow.infra.cluster import (
    check_settings,
    cluster_kind,
    make_cluster,
    parse_cluster_setting,
    plan_cluster,
)
from shadeflow.infra.kubernetes import kube_credentials
from shadeflow.infra.preview import cluster_preview
from shadeflow.infra.sizing import MIN_WORKER_MEMORY, SettingsError

SETTINGS = (
    "SHADEFLOW_MEMORY",
    "CO_MEMORY",
    "SHADEFLOW_WORKER_MEMORY",
    "SHADEFLOW_WORKER_CPUS",
    "SHADEFLOW_CLUSTER",
    "KUBECONFIG",
    "KUBERNETES_SERVICE_HOST",
)


@pytest.fixture
def record(monkeypatch, tmp_path):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config
    rec = Record()
    monkeypatch.setattr(cluster_module, "CLUSTER_CLASSES", recording_classes(rec))
    return rec


def refused(match: str, **kwargs) -> str:
    """Both gates refuse: the CLI's pre-run check and the run's own cluster factory."""
    with pytest.raises(SettingsError, match=match) as before_run:
        check_settings(**kwargs)
    with pytest.raises(SettingsError, match=match):
        make_cluster(**{k: v for k, v in kwargs.items() if k != "cluster"})
    return str(before_run.value)


# ----------------------------------------------------------------------------------------------
# SHADEFLOW_CLUSTER


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("local", None)),
        ("", ("local", None)),
        (" Kubernetes ", ("kubernetes", None)),
        ("LOCAL", ("local", None)),
        ("tcp://10.0.0.5:8786", ("address", "tcp://10.0.0.5:8786")),
        ("tcp://scheduler.dask.svc", ("address", "tcp://scheduler.dask.svc:8786")),
        ("tcp://[::1]:9000", ("address", "tcp://[::1]:9000")),
    ],
)
def test_cluster_setting_values(value, expected):
    assert parse_cluster_setting(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "slurm",
        "kubernetes-please",
        "tcp://",
        "tcp://host:notaport",
        "tcp://host:99999",
        "tls://10.0.0.5:8786",
        "10.0.0.5:8786",
    ],
)
def test_unknown_cluster_setting_is_refused_before_anything_is_created(record, monkeypatch, value):
    monkeypatch.setenv("SHADEFLOW_CLUSTER", value)
    message = refused("SHADEFLOW_CLUSTER", memory="4GiB")
    assert repr(value) in message
    assert "'local'" in message and "'kubernetes'" in message and "tcp://" in message  # what would work
    assert record.created == []


def test_cluster_kind_reads_the_environment(monkeypatch):
    monkeypatch.setenv("SHADEFLOW_CLUSTER", "kubernetes")
    assert cluster_kind() == "kubernetes"
    assert cluster_kind({}) == "local"


# ----------------------------------------------------------------------------------------------
# memory too small for one worker


@pytest.mark.parametrize("kind", ["local", "kubernetes"])
def test_memory_below_one_worker_is_refused_naming_the_setting(record, monkeypatch, tmp_path, kind):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(FAKE_KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("SHADEFLOW_CLUSTER", kind)
    monkeypatch.setenv("SHADEFLOW_MEMORY", "1GiB")
    message = refused("SHADEFLOW_MEMORY='1GiB'")
    assert "minimum" in message
    assert parse_bytes("1GiB") < MIN_WORKER_MEMORY
    assert record.created == []


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SHADEFLOW_MEMORY": "plenty"}, "SHADEFLOW_MEMORY='plenty'"),
        ({"SHADEFLOW_MEMORY": "16GiB", "SHADEFLOW_WORKER_CPUS": "0"}, "SHADEFLOW_WORKER_CPUS='0'"),
        ({"SHADEFLOW_MEMORY": "16GiB", "SHADEFLOW_WORKER_MEMORY": "1GiB"}, "SHADEFLOW_WORKER_MEMORY"),
        ({"CO_MEMORY": "16GiB"}, "CO_MEMORY"),
    ],
)
@pytest.mark.parametrize("kind", ["local", "kubernetes"])
def test_unusable_sizes_are_refused_for_every_kind(record, monkeypatch, env, named, kind):
    with pytest.raises(SettingsError, match=named):
        plan_cluster({**env, "SHADEFLOW_CLUSTER": kind})


# ----------------------------------------------------------------------------------------------
# kubernetes credentials


def test_kubernetes_without_credentials_is_refused_before_anything_is_created(record, monkeypatch, tmp_path):
    monkeypatch.setenv("SHADEFLOW_CLUSTER", "kubernetes")
    monkeypatch.setenv("SHADEFLOW_MEMORY", "16GiB")
    message = refused("Kubernetes credentials")
    assert os.path.join(str(tmp_path / "home"), ".kube", "config") in message  # where it looked
    assert "KUBECONFIG" in message
    assert record.created == []

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-a") + os.pathsep + str(tmp_path / "missing-b"))
    message = refused("Kubernetes credentials")
    assert "missing-a" in message and "missing-b" in message


def test_a_kubeconfig_without_contexts_is_no_credentials(record, monkeypatch, tmp_path):
    empty = tmp_path / "empty-kubeconfig"
    empty.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n")
    with pytest.raises(SettingsError, match="has no contexts"):
        kube_credentials({"KUBECONFIG": str(empty), "HOME": str(tmp_path)})


def test_kubeconfig_or_in_cluster_service_account_are_credentials(tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(FAKE_KUBECONFIG)
    assert "context test" in kube_credentials({"KUBECONFIG": str(kubeconfig)})
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("token")
    assert "in-cluster" in kube_credentials(
        {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "HOME": str(tmp_path)}, service_account_dir=str(account)
    )
    with pytest.raises(SettingsError):  # a token without the service host is not a pod
        kube_credentials({"HOME": str(tmp_path)}, service_account_dir=str(account))


def test_kubernetes_with_credentials_passes_the_checks(record, monkeypatch, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(FAKE_KUBECONFIG)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    plan = check_settings(memory="32GiB", cluster="kubernetes")
    assert plan.kind == "kubernetes" and plan.size.n_workers == parse_bytes("32GiB") // parse_bytes("8GiB")
    assert "Dask on Kubernetes" in plan.describe() and "adaptive 1–4" in plan.describe()
    assert record.created == []  # checking creates nothing


# ----------------------------------------------------------------------------------------------
# shadeflow cluster (the preview)


def test_preview_local_says_workers_threads_memory(record, monkeypatch):
    text, warnings = cluster_preview(memory="8GiB", env={})
    assert "cluster: local" in text
    assert "workers: 1" in text and "memory per worker: 8.00 GiB" in text and "threads per worker:" in text
    assert warnings == [] and record.created == []


def test_preview_kubernetes_warns_about_missing_credentials_but_still_shows_the_spec(record):
    text, warnings = cluster_preview(memory="64GiB", cluster="kubernetes", env={"HOME": "/nonexistent"})
    assert "kind: DaskCluster" in text and "replicas: 8" in text
    assert len(warnings) == 1 and "Kubernetes credentials" in warnings[0]
    assert record.created == []


def test_preview_of_an_unreachable_scheduler_warns_with_the_address(record):
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text, warnings = cluster_preview(cluster=f"tcp://127.0.0.1:{port}", env={})
    assert f"tcp://127.0.0.1:{port}" in text
    assert len(warnings) == 1 and f"tcp://127.0.0.1:{port}" in warnings[0]


def test_preview_refuses_invalid_settings(record):
    with pytest.raises(SettingsError, match="SHADEFLOW_CLUSTER='nomad'"):
        cluster_preview(env={"SHADEFLOW_CLUSTER": "nomad"})
    with pytest.raises(SettingsError, match="--memory='1GiB'"):
        cluster_preview(memory="1GiB", cluster="kubernetes", env={})
