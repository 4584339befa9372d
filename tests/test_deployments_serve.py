"""Served deployments end to end: a real ``prefect server start`` on 127.0.0.1 (own PREFECT_HOME), the
deployments served by ``python -m shadeflow.deployments.serve`` in a subprocess (what ``shadeflow
serve`` runs), runs started with ``run_deployment`` and parameters (what the UI's Run button does),
and a short interval schedule that creates and completes a run by itself.

Every process is started by a context manager here and stopped by it (SIGTERM), also on failure.
The served runs size their cluster from ``SHADEFLOW_MEMORY=4GiB`` in the serve process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from dask.utils import format_bytes, parse_bytes
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.sorting import FlowRunSort
from prefect_processes import child_env, prefect_server, started, sync_client, tail, wait_for

from shadeflow.core.io import astropath as astropath_io
from shadeflow.core.io.output_folders import is_complete, read_manifest
from shadeflow.core.model.store import read_model, version_folder
from shadeflow.core.synth.slides import SynthConfig, write_cohort
from shadeflow.deployments.serve import PREFECT_FILE, read_deployments

SERVE_MEMORY = "4GiB"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
SMALL = {"fields": 20, "shape": (96, 128, 4)}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with prefect_server(tmp_path_factory.mktemp("server") / "home") as url:
        yield url


def deployment_names(prefect_file: Path) -> list[str]:
    from prefect.flows import load_flow_from_entrypoint

    return [
        f"{load_flow_from_entrypoint(e.entrypoint).name}/{e.name}" for e in read_deployments(prefect_file)
    ]


def deployment_exists(api_url: str, name: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    with sync_client(api_url) as client:
        try:
            client.read_deployment_by_name(name)
            return True
        except ObjectNotFound:
            return False


@contextmanager
def serving(api_url: str, prefect_file: Path, work: Path, **extra_env: str) -> Iterator[Path]:
    """``python -m shadeflow.deployments.serve`` for ``prefect_file`` until the block ends; yields its log."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "serve.log"
    env = child_env(
        work / "home",
        PREFECT_API_URL=api_url,
        SHADEFLOW_MEMORY=SERVE_MEMORY,
        PREFECT_RUNNER_POLL_FREQUENCY="1",  # the least (whole seconds): a run waits for the next poll
        **extra_env,
    )
    with started(
        [sys.executable, "-m", "shadeflow.deployments.serve", "--prefect-file", str(prefect_file)],
        env,
        log,
        cwd=work,
    ) as process:
        for name in deployment_names(prefect_file):
            wait_for(
                lambda name=name: deployment_exists(api_url, name),
                120,
                f"deployment {name} to be served",
                process=process,
                log=log,
            )
        yield log


@pytest.fixture(scope="module")
def packaged(server, s3_server, tmp_path_factory):
    """The packaged prefect.yaml (every flow) served from a subprocess for this module's tests; its runs
    reach the loopback S3 server too."""
    with serving(
        server, PREFECT_FILE, tmp_path_factory.mktemp("serve-packaged"), **S3_ENV, AWS_ENDPOINT_URL=s3_server
    ) as log:
        yield log


def run_and_wait(api_url: str, name: str, parameters: dict, log: Path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        run = run_deployment(name, parameters=parameters, timeout=300, poll_interval=1)
    assert run.state.is_completed(), f"{name}: {run.state.type} {run.state.message}\n{tail(log)}"
    return run


def run_logs(api_url: str, run_id) -> list[str]:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with sync_client(api_url) as client:
        return [
            log.message
            for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200, offset=0
            )
        ]


def cluster_line_logged(api_url: str, run_id) -> str:
    """The cluster the run's factory reported (logs reach the API shortly after the run)."""
    return wait_for(
        lambda: next((m for m in run_logs(api_url, run_id) if "cluster for this run" in m), ""),
        60,
        f"the cluster log line of run {run_id}",
    )


def assert_mean_images(slide: str) -> None:
    """The slide's meanimage output is complete and the AstroPath mean image has the slide's shape."""
    meta = json.loads(Path(slide, "slide.json").read_text())
    out = os.path.join(slide, "meanimage")
    assert is_complete(out)
    h, w, layers = meta["shape"]
    assert os.path.getsize(os.path.join(out, f"{meta['slide_id']}-mean_image.bin")) == h * w * layers * 8


def test_the_run_button_runs_a_served_deployment_with_its_parameters(server, packaged, tmp_path):
    log = packaged
    slides = write_cohort(str(tmp_path / "cohort"), SynthConfig(slides=1, seed=21, **SMALL))

    run = run_and_wait(server, "meanimage/meanimage", {"params": {"slides": slides, "seed": 3}}, log)

    assert run.parameters == {"params": {"slides": slides, "seed": 3}}
    assert_mean_images(slides[0])
    # the form's values reached the flow
    assert read_manifest(os.path.join(slides[0], "meanimage"))["parameters"]["seed"] == 3
    line = cluster_line_logged(server, run.id)
    # sized from the serve process's setting
    assert f"{format_bytes(parse_bytes(SERVE_MEMORY))} per worker" in line, line
    # the serve process said when the run started and ended, with its address in the UI
    url = f"{server.removesuffix('/api')}/runs/flow-run/{run.id}"
    ended = wait_for(
        lambda: [
            ln
            for ln in log.read_text().splitlines()
            if ln.startswith("ended meanimage/meanimage") and url in ln
        ],
        30,
        "the serve process's line for the run's end",
    )
    assert "Completed" in ended[0], ended
    assert any(
        ln.startswith("started meanimage/meanimage") and url in ln for ln in log.read_text().splitlines()
    )


def test_the_nightly_refresh_builds_mean_images_then_the_model(server, packaged, tmp_path):
    log = packaged
    root = tmp_path / "cohort"
    slides = write_cohort(str(root), SynthConfig(slides=2, seed=22, **SMALL))
    models_csv = tmp_path / "models" / "AstroPathFlatfieldModels.csv"
    rows = []
    for slide in slides:
        meta = json.loads(Path(slide, "slide.json").read_text())
        rows.append(["nightly-test", meta["project"], meta["cohort"], meta["batch"], meta["slide_id"]])
    astropath_io.write_csv(str(models_csv), ["version", "Project", "Cohort", "BatchID", "SlideID"], rows)
    (nightly,) = [e for e in read_deployments() if e.schedules]
    params = {
        "meanimage": {"slides": slides},
        "model": {
            "version": "nightly-test",
            "models_csv": str(models_csv),
            "roots": [str(root)],
            "overwrite": True,
        },
    }

    run = run_and_wait(server, f"cohort-refresh/{nightly.name}", {"params": params}, log)

    for slide in slides:
        assert_mean_images(slide)
    store = str(models_csv.parent)  # the model store defaults to the models CSV's folder
    assert is_complete(version_folder(store, "nightly-test"))
    model = read_model(store, "nightly-test")
    h, w, layers = json.loads(Path(slides[0], "slide.json").read_text())["shape"]
    assert model.flatfield.shape == (layers, h, w)
    with sync_client(server) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])),
            sort=FlowRunSort.START_TIME_ASC,
        )
        names = [client.read_flow(child.flow_id).name for child in children]
    assert names == ["meanimage", "model-build"]  # mean images first, then the model
    assert children[0].end_time <= children[1].start_time
    assert all(child.state.is_completed() for child in children)
    for child in children:  # each subflow run made its own cluster from the serve process's setting
        assert f"{format_bytes(parse_bytes(SERVE_MEMORY))} per worker" in cluster_line_logged(
            server, child.id
        )


def test_a_short_interval_schedule_creates_and_completes_a_run(server, tmp_path):
    slides = write_cohort(str(tmp_path / "cohort"), SynthConfig(slides=1, seed=23, **SMALL))
    prefect_file = tmp_path / "prefect.yaml"
    (meanimage,) = [e for e in read_deployments() if e.entrypoint.endswith(".meanimage")]
    prefect_file.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": "every-10s",
                        "entrypoint": meanimage.entrypoint,
                        "parameters": {"params": {"slides": slides}},
                        "schedules": [{"interval": 10, "active": True}],
                    }
                ]
            }
        )
    )
    with serving(server, prefect_file, tmp_path / "serve") as log:
        with sync_client(server) as client:
            deployment = client.read_deployment_by_name("meanimage/every-10s")

        def completed_run():
            with sync_client(server) as client:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])
                    )
                )
            failed = [r for r in runs if r.state and r.state.is_failed()]
            assert not failed, f"{failed[0].state.message}\n{tail(log)}"
            return next((r for r in runs if r.state and r.state.is_completed()), None)

        run = wait_for(completed_run, 240, "a scheduled run to complete", interval=1, log=log)
    assert run.auto_scheduled  # made by the scheduler, not by us
    assert run.parameters == {"params": {"slides": slides}}
    assert_mean_images(slides[0])


def task_run_names(api_url: str, flow_run_id) -> list[str]:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    with sync_client(api_url) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
        )
    return [r.name for r in runs]


def test_prefect_deployment_run_watch_on_a_local_and_an_s3_slide(server, packaged, s3_bucket, tmp_path):
    """The README's form, ``prefect deployment run meanimage/meanimage --params … --watch``, on a local and
    an ``s3://`` slide in one run, exits 0, and the task runs it shows are named by step and slide ID (a
    path in brackets crashed Prefect's console with a rich MarkupError; an ``s3://`` one vanished)."""
    (local,) = write_cohort(str(tmp_path / "cohort"), SynthConfig(slides=1, seed=23, **SMALL))
    (remote,) = write_cohort(f"s3://{s3_bucket}/cohort", SynthConfig(slides=1, seed=24, project=2, **SMALL))
    env = child_env(tmp_path / "cli-home", PREFECT_API_URL=server, COLUMNS="200")
    params = json.dumps({"params": {"slides": [local, remote]}})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "deployment",
            "run",
            "meanimage/meanimage",
            "--params",
            params,
            "--watch",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:] + tail(packaged)
    assert "MarkupError" not in output
    flow_run_id = next(line.split()[-1] for line in output.splitlines() if "UUID" in line)
    names = task_run_names(server, flow_run_id)
    steps = {"plan-slide", "background-thresholds", "mask-and-stack", "write-mean-image"}
    for slide in (local, remote):
        slide_id = slide.rstrip("/").rsplit("/", 1)[-1]
        per_slide = {n.removesuffix(f"-{slide_id}") for n in names if n.endswith(f"-{slide_id}")}
        assert per_slide == steps, (slide_id, names)
    assert not any("[" in n or "/" in n for n in names), names
