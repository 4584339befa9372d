"""Shared fixtures: real components only (Prefect test server, S3 server on loopback, Dask LocalCluster)."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import shutil
import socket
from concurrent.futures import ProcessPoolExecutor

import pytest

# Offline and quiet, before Prefect is imported anywhere.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# Small, fast clusters in tests: one process, threads.
os.environ.setdefault("SHADEFLOW_TEST_MODE", "1")


@pytest.fixture(scope="session", autouse=True)
def no_flow_heartbeats():
    """Flow runs here send no heartbeats: a heartbeat thread sleeps in one-second steps and the run waits
    for it to notice the end (≈ 1 s per flow run, measured); nothing in a test watches heartbeats."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect API (own database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto) on 127.0.0.1; yields its endpoint URL and sets AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        yield endpoint
    finally:
        if previous is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = previous
        server.stop()


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh, empty bucket on the loopback S3 server; yields its name."""
    import boto3

    name = "sf-" + request.node.name.lower().replace("_", "-")[:40].strip("-") + f"-{os.getpid()}"
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=name)
    yield name


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    """A seeded synthetic cohort (3 slides, 48 small fields each) shared read-only by tests.

    Tests must not modify it: copy it (``copy_cohort``) before writing into slide folders.
    """
    from shadeflow.core.synth.slides import SynthConfig, write_cohort

    root = tmp_path_factory.mktemp("cohort")
    config = SynthConfig(slides=3, fields=48, seed=7)
    urls = write_cohort(str(root), config)
    return {"root": str(root), "urls": urls, "config": config}


@pytest.fixture
def copy_cohort(small_cohort, tmp_path):
    """A private, writable copy of the shared synthetic cohort."""
    target = tmp_path / "cohort"
    shutil.copytree(small_cohort["root"], target)
    return {
        "root": str(target),
        "urls": [str(target / os.path.basename(u)) for u in small_cohort["urls"]],
        "config": small_cohort["config"],
    }


def without_meanimage_reports():
    """Within this block, meanimage outputs are written without their PDF summaries (for fixtures whose
    mean images are only the input of another job)."""
    from unittest import mock

    return mock.patch("shadeflow.core.meanimage.report.write_reports")


def write_mean_image(url: str) -> None:
    """meanimage outputs for one synthetic slide, computed in-process (the reference path, no Prefect).

    Without the three PDF summaries: they are for people, no tool reads them (``expected_files`` in
    ``core/meanimage/outputs.py``), and drawing them was most of this function's CPU time (about 60 %,
    matplotlib). Tests that use these outputs as input to model build, compare or the applied test read
    the data files only; the meanimage tests run the real path, reports included."""
    from shadeflow.core.io.output_folders import StagedOutput
    from shadeflow.core.io.slide import load_slide
    from shadeflow.core.meanimage.outputs import output_url, write_meanimage_outputs
    from shadeflow.core.meanimage.pipeline import MASK_DIR, MEANIMAGE_METHOD, compute_mean_image, plan_slide

    staged = StagedOutput(output_url(url))
    with staged, without_meanimage_reports():
        result = compute_mean_image(plan_slide(load_slide(url)), staged.url(MASK_DIR))
        write_meanimage_outputs(
            staged,
            result,
            {"mask_binning": None, "skip_masking": False, "seed": 0, "method": MEANIMAGE_METHOD},
        )


def write_mean_images(urls: list[str]) -> None:
    """meanimage outputs for synthetic slides, two slides at a time in fresh processes (spawned: this
    process runs threads, which forking would copy half-way)."""
    if len(urls) < 2:
        for url in urls:
            write_mean_image(url)
        return
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(write_mean_image, urls))


@pytest.fixture(scope="session")
def meanimage_cohort(tmp_path_factory):
    """A seeded cohort (3 slides × 80 small fields) with meanimage outputs, shared read-only.

    Large enough for accuracy tests of models and applied tests; copy it before writing into it.
    """
    from shadeflow.core.synth.slides import SynthConfig, write_cohort

    root = tmp_path_factory.mktemp("meanimage-cohort")
    config = SynthConfig(slides=3, fields=80, seed=21)
    urls = write_cohort(str(root), config)
    write_mean_images(urls)
    return {"root": str(root), "urls": urls, "config": config}


def tree(folder) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones included) → sha256 of its bytes: proves inputs unchanged."""
    folder = str(folder)
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, folder)] = hashlib.sha256(handle.read()).hexdigest()
    return out


def flow_run_artifacts(flow_run_id) -> list:
    """The artifacts one flow run published, newest first (the test server holds every test's runs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.client.schemas.sorting import ArtifactSort

    run = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=run, limit=50, offset=0, sort=ArtifactSort.CREATED_DESC)


# --- CPU time per test phase (opt-in) ---------------------------------------------------------------
# The machine running the suite is often shared, so wall-clock durations mislead; with
# SHADEFLOW_CPU_DURATIONS=<file> each test's setup / call / teardown CPU time (this process plus
# children it has reaped) and wall time are written to that file, one tab-separated line per phase.
_CPU_LOG = os.environ.get("SHADEFLOW_CPU_DURATIONS")


def _cpu_seconds() -> float:
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if _CPU_LOG:
    import time

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(item):
        yield from _timed(item, "setup")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):
        yield from _timed(item, "call")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(item):
        yield from _timed(item, "teardown")

    def _timed(item, phase):
        cpu, wall = _cpu_seconds(), time.perf_counter()
        yield
        cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
        with open(_CPU_LOG, "a") as handle:
            handle.write(f"{cpu:.2f}\t{wall:.2f}\t{phase}\t{item.nodeid}\n")
