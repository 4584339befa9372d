"""``SHADEFLOW_CLUSTER=tcp://…``: runs use a scheduler that already runs, and leave it running.

The scheduler is a real ``distributed.LocalCluster`` listening on TCP, started by the test; the flow
is the meanimage flow with the runner of its decorator, as a deployment runs it.
"""

from __future__ import annotations

import os
import socket

import pytest
from distributed import Client, LocalCluster
from recording_clusters import Record, recording_classes

from shadeflow.core.io.output_folders import is_complete
from shadeflow.core.synth.slides import SynthConfig, write_cohort
from shadeflow.flows.meanimage import MeanImageParameters, meanimage
from shadeflow.infra import cluster as cluster_module
from shadeflow.infra.cluster import ExistingScheduler, check_settings, make_cluster
from shadeflow.infra.sizing import SettingsError

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def scheduler():
    with LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=":0",
    ) as cluster:
        yield cluster


@pytest.fixture
def record(monkeypatch):
    for name in ("SHADEFLOW_CLUSTER", "SHADEFLOW_MEMORY", "CO_MEMORY"):
        monkeypatch.delenv(name, raising=False)
    rec = Record()
    monkeypatch.setattr(cluster_module, "CLUSTER_CLASSES", recording_classes(rec))
    return rec


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runs_use_the_existing_scheduler_and_leave_it_running(scheduler, record, tmp_path, monkeypatch):
    assert scheduler.scheduler_address.startswith("tcp://127.0.0.1:")
    slides = write_cohort(str(tmp_path), SynthConfig(slides=1, fields=20, seed=5, shape=(96, 128, 4)))
    monkeypatch.setenv("SHADEFLOW_CLUSTER", scheduler.scheduler_address)
    before = scheduler.scheduler.transition_counter

    state = meanimage(MeanImageParameters(slides=slides), return_state=True)

    assert state.is_completed(), state.message
    assert is_complete(os.path.join(slides[0], "meanimage"))
    assert scheduler.scheduler.transition_counter > before  # the run's tasks went through this scheduler
    assert record.created == []  # nothing was created
    assert scheduler.status.name == "running"
    with Client(scheduler) as client:  # and it still serves work
        assert client.submit(lambda x: x + 1, 1).result(timeout=30) == 2


def test_the_stand_in_connects_and_closes_without_stopping_the_scheduler(scheduler, monkeypatch):
    monkeypatch.setenv("SHADEFLOW_CLUSTER", scheduler.scheduler_address)
    with make_cluster() as stand_in:
        assert isinstance(stand_in, ExistingScheduler)
        with Client(stand_in) as client:
            assert client.submit(sum, [1, 2]).result(timeout=30) == 3
    assert stand_in.status.name == "closed"
    assert scheduler.status.name == "running"


def test_an_unreachable_scheduler_is_refused_before_the_run_naming_the_address(record, monkeypatch):
    address = f"tcp://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("SHADEFLOW_CLUSTER", address)
    with pytest.raises(SettingsError, match=address):
        check_settings()


def test_a_run_against_an_unreachable_scheduler_fails_with_the_address(record, tmp_path, monkeypatch):
    address = f"tcp://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("SHADEFLOW_CLUSTER", address)
    slides = write_cohort(str(tmp_path), SynthConfig(slides=1, fields=20, seed=6, shape=(96, 128, 4)))
    state = meanimage(MeanImageParameters(slides=slides), return_state=True)
    assert state.is_failed()
    with pytest.raises(SettingsError, match=address):
        state.result()
    assert record.created == []
    assert not os.path.exists(os.path.join(slides[0], "meanimage"))


def test_something_that_is_not_a_scheduler_is_refused(scheduler):
    from shadeflow.infra.cluster import probe_scheduler

    with socket.socket() as silent:  # accepts connections (backlog) but never speaks Dask
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(SettingsError, match=f"{address} but does not answer like a Dask scheduler"):
            probe_scheduler(address, timeout=1)
    (worker,) = scheduler.scheduler.workers
    with pytest.raises(SettingsError, match="is a Dask Worker, not a scheduler"):
        probe_scheduler(worker)
    probe_scheduler(scheduler.scheduler_address)  # the real one passes
