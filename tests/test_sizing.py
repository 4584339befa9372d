"""One memory setting sizes the cluster (``shadeflow.infra.sizing``, ``shadeflow.infra.cluster``).

The pure functions get explicit environments, CPUs and memory; where they read the machine, the
machine is replaced by fixed values so the results do not depend on where the tests run.
"""

from __future__ import annotations

import pytest

from shadeflow.infra import cluster, sizing
from shadeflow.infra.sizing import (
    ClusterSize,
    SettingsError,
    memory_setting,
    parse_size,
    size_cluster,
    size_from_settings,
)

GIB = 2**30
SETTINGS = (
    "SHADEFLOW_MEMORY",
    "CO_MEMORY",
    "SHADEFLOW_WORKER_MEMORY",
    "SHADEFLOW_WORKER_CPUS",
    "SHADEFLOW_CLUSTER",
)


@pytest.fixture
def machine(monkeypatch):
    """A fixed machine: 8 CPUs and 32 GiB."""
    monkeypatch.setattr(sizing, "machine_cpus", lambda: 8)
    monkeypatch.setattr(sizing, "machine_memory", lambda: 32 * GIB)
    return {"cpus": 8, "memory": 32 * GIB}


@pytest.fixture
def clean_settings(monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)


# ----------------------------------------------------------------------------------------------
# parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16GiB", 16 * 2**30),
        ("500MB", 500 * 10**6),
        ("1.5GiB", 3 * 2**29),
        ("4096", 4096),
        (" 2GiB ", 2 * 2**30),
        (123, 123),
    ],
)
def test_parse_size_reads_bytes_and_units(text, expected):
    assert parse_size(text, "SHADEFLOW_MEMORY") == expected


@pytest.mark.parametrize("text", ["banana", "0", "-1", "16 bananas", "-2GiB"])
def test_parse_size_rejects_nonsense_naming_the_setting(text):
    with pytest.raises(SettingsError, match="SHADEFLOW_MEMORY") as error:
        parse_size(text, "SHADEFLOW_MEMORY")
    assert repr(text) in str(error.value)


def test_parse_size_bytes_only_refuses_units():
    assert parse_size("17179869184", "CO_MEMORY", bytes_only=True) == 16 * GIB
    with pytest.raises(SettingsError, match="CO_MEMORY.*whole number of bytes"):
        parse_size("16GiB", "CO_MEMORY", bytes_only=True)


# ----------------------------------------------------------------------------------------------
# memory_setting: SHADEFLOW_MEMORY, then CO_MEMORY, then the machine


def test_shadeflow_memory_beats_co_memory(machine):
    assert memory_setting({"SHADEFLOW_MEMORY": "8GiB", "CO_MEMORY": str(4 * GIB)}) == (
        8 * GIB,
        "SHADEFLOW_MEMORY",
    )


def test_co_memory_beats_the_machine(machine):
    assert memory_setting({"CO_MEMORY": str(4 * GIB)}) == (4 * GIB, "CO_MEMORY")


def test_the_machine_is_the_last_resort(machine):
    assert memory_setting({}) == (32 * GIB, "machine")
    assert memory_setting({"SHADEFLOW_MEMORY": "", "CO_MEMORY": ""}) == (32 * GIB, "machine")


def test_command_line_memory_beats_every_setting(machine):
    assert memory_setting({"SHADEFLOW_MEMORY": "8GiB", "CO_MEMORY": "1"}, override="3GiB") == (
        3 * GIB,
        "--memory",
    )


def test_co_memory_must_be_plain_bytes(machine):
    with pytest.raises(SettingsError, match="CO_MEMORY"):
        memory_setting({"CO_MEMORY": "16GiB"})


def test_bad_shadeflow_memory_is_named(machine):
    with pytest.raises(SettingsError, match="SHADEFLOW_MEMORY='banana'"):
        memory_setting({"SHADEFLOW_MEMORY": "banana", "CO_MEMORY": str(4 * GIB)})


def test_memory_setting_reads_the_process_environment_by_default(machine, clean_settings, monkeypatch):
    monkeypatch.setenv("CO_MEMORY", str(6 * GIB))
    assert memory_setting() == (6 * GIB, "CO_MEMORY")


# ----------------------------------------------------------------------------------------------
# size_cluster


def test_default_is_one_worker_with_every_cpu_and_all_memory():
    size = size_cluster(16 * GIB, cpus=8)
    assert size == ClusterSize(n_workers=1, threads_per_worker=8, memory_per_worker=16 * GIB)
    assert size.processes is False
    assert size.total_threads == 8


def test_workers_split_memory_and_cpus():
    size = size_cluster(16 * GIB, cpus=8, workers=4)
    assert size == ClusterSize(n_workers=4, threads_per_worker=2, memory_per_worker=4 * GIB)
    assert size.processes is True


def test_more_workers_than_cpus_still_get_a_thread_each():
    size = size_cluster(16 * GIB, cpus=2, workers=4)
    assert (size.n_workers, size.threads_per_worker) == (4, 1)


def test_worker_memory_derives_the_worker_count():
    size = size_cluster(16 * GIB, cpus=8, worker_memory=4 * GIB)
    assert size == ClusterSize(n_workers=4, threads_per_worker=2, memory_per_worker=4 * GIB)


def test_worker_count_from_worker_memory_is_bounded_by_cpus():
    size = size_cluster(64 * GIB, cpus=2, worker_memory=4 * GIB)
    assert size.n_workers == 2
    assert size.threads_per_worker == 1
    assert size.memory_per_worker == 4 * GIB


def test_worker_count_from_worker_memory_and_cpus():
    size = size_cluster(64 * GIB, cpus=8, worker_memory=4 * GIB, worker_cpus=4)
    assert size == ClusterSize(n_workers=2, threads_per_worker=4, memory_per_worker=4 * GIB)


def test_worker_cpus_alone_derive_the_worker_count():
    size = size_cluster(16 * GIB, cpus=8, worker_cpus=2)
    assert size == ClusterSize(n_workers=4, threads_per_worker=2, memory_per_worker=4 * GIB)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"memory": 16 * GIB, "cpus": 0}, "CPU"),
        ({"memory": 16 * GIB, "cpus": 4, "workers": 0}, "workers"),
        ({"memory": 16 * GIB, "cpus": 4, "workers": -2}, "workers"),
        ({"memory": 16 * GIB, "cpus": 4, "worker_cpus": 0}, "SHADEFLOW_WORKER_CPUS"),
        ({"memory": 1 * GIB, "cpus": 4}, "below one worker's minimum"),
        ({"memory": 16 * GIB, "cpus": 4, "worker_memory": 1 * GIB}, "SHADEFLOW_WORKER_MEMORY"),
        ({"memory": 6 * GIB, "cpus": 8, "workers": 4}, "for 4 workers"),
    ],
)
def test_impossible_sizes_are_refused(kwargs, named):
    with pytest.raises(SettingsError, match=named):
        size_cluster(**kwargs)


def test_minimum_worker_memory_is_exactly_allowed():
    size = size_cluster(sizing.MIN_WORKER_MEMORY * 3, cpus=3, workers=3)
    assert size.memory_per_worker == sizing.MIN_WORKER_MEMORY


def test_describe_says_what_a_run_gets():
    text = size_cluster(8 * GIB, cpus=4, workers=2).describe()
    assert "2 workers" in text and "2 threads" in text and "4.00 GiB" in text


# ----------------------------------------------------------------------------------------------
# size_from_settings: the same from an environment mapping


def test_size_from_settings_uses_the_memory_setting(machine):
    size, source = size_from_settings({"SHADEFLOW_MEMORY": "12GiB"})
    assert source == "SHADEFLOW_MEMORY"
    assert size == ClusterSize(n_workers=1, threads_per_worker=8, memory_per_worker=12 * GIB)


def test_size_from_settings_reads_worker_memory_and_cpus(machine):
    size, source = size_from_settings(
        {"CO_MEMORY": str(32 * GIB), "SHADEFLOW_WORKER_MEMORY": "8GiB", "SHADEFLOW_WORKER_CPUS": "2"}
    )
    assert source == "CO_MEMORY"
    assert size == ClusterSize(n_workers=4, threads_per_worker=2, memory_per_worker=8 * GIB)


def test_size_from_settings_command_line_wins(machine):
    size, source = size_from_settings({"SHADEFLOW_MEMORY": "12GiB"}, memory="6GiB", workers=3)
    assert source == "--memory"
    assert size == ClusterSize(n_workers=3, threads_per_worker=2, memory_per_worker=2 * GIB)


def test_size_from_settings_machine_default(machine):
    size, source = size_from_settings({})
    assert source == "machine"
    assert size == ClusterSize(
        n_workers=1, threads_per_worker=machine["cpus"], memory_per_worker=machine["memory"]
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SHADEFLOW_WORKER_CPUS": "two"}, "SHADEFLOW_WORKER_CPUS='two'"),
        ({"SHADEFLOW_WORKER_MEMORY": "lots"}, "SHADEFLOW_WORKER_MEMORY='lots'"),
        ({"SHADEFLOW_WORKER_MEMORY": "1GiB"}, "SHADEFLOW_WORKER_MEMORY"),
    ],
)
def test_size_from_settings_bad_worker_settings_are_named(machine, env, named):
    with pytest.raises(SettingsError, match=named):
        size_from_settings(env)


# ----------------------------------------------------------------------------------------------
# the LocalCluster


def test_local_cluster_kwargs():
    """Sizes map onto LocalCluster's arguments: threads in this process for one worker, processes for
    several."""
    keys = ("n_workers", "threads_per_worker", "memory_limit", "processes")
    one = cluster.local_cluster_kwargs(ClusterSize(1, 4, 8 * GIB))
    assert tuple(one[k] for k in keys) == (1, 4, 8 * GIB, False)
    several = cluster.local_cluster_kwargs(ClusterSize(3, 2, 4 * GIB))
    assert tuple(several[k] for k in keys) == (3, 2, 4 * GIB, True)


def test_make_cluster_follows_the_memory_setting(clean_settings, monkeypatch):
    monkeypatch.setenv("SHADEFLOW_MEMORY", "4GiB")
    cpus = sizing.machine_cpus()
    with cluster.make_cluster() as local:
        workers = local.scheduler_info["workers"]
        assert len(workers) == 1
        (worker,) = workers.values()
        assert worker["nthreads"] == cpus
        assert worker["memory_limit"] == 4 * GIB
        assert type(local).__name__ == "LocalCluster"


def test_check_settings_validates_before_a_run(clean_settings, monkeypatch, machine):
    monkeypatch.setenv("SHADEFLOW_MEMORY", "6GiB")
    assert cluster.check_settings(workers=3).size == ClusterSize(
        n_workers=3, threads_per_worker=2, memory_per_worker=2 * GIB
    )
    with pytest.raises(SettingsError, match="--memory='banana'"):
        cluster.check_settings(memory="banana")


def test_unknown_cluster_kind_is_named(clean_settings, monkeypatch):
    monkeypatch.setenv("SHADEFLOW_CLUSTER", "carrier-pigeon")
    with pytest.raises(SettingsError, match="SHADEFLOW_CLUSTER='carrier-pigeon'"):
        cluster.make_cluster(memory="4GiB")
    with pytest.raises(SettingsError, match="SHADEFLOW_CLUSTER"):
        cluster.check_settings()
