"""The estimate job: flatfield (and darkfield) estimated from the images themselves."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.futures import wait

from ..core.errors import RunFailed, checked_parameters, unit_failures
from ..infra.cluster import check_settings, task_runner
from ..tasks.estimate import (
    channel_stage,
    estimate_channel,
    make_plan,
    plan_estimate,
    publish_estimate_table,
    write_estimate_task,
)
from ..tasks.progress import announce
from .parameters import EstimateParameters
from .run import run_with_progress


@flow(name="estimate", task_runner=task_runner(), log_prints=True)
def estimate(params: EstimateParameters) -> dict:
    """Flatfield (and darkfield) of every channel of a stack of images.

    The inputs are opened and checked first (headers only; nothing is written if they are bad). Then,
    per channel and in parallel: the frames are reduced to block means chunk by chunk on the run's
    cluster and the robust floor regression fits the shading. flatfield.tiff, darkfield.tiff and
    estimate.zarr are published together, the manifest last; a table of per-channel statistics is
    published as an artifact.
    """
    plan = plan_estimate.submit(
        params.images,
        params.out,
        params.channels,
        params.component,
        params.settings(),
        params.recorded(),
        params.overwrite,
        params.dataset,
        params.camera_offset,
    ).result()
    names = plan.stack.channel_names
    if plan.action == "skip":
        print(f"{plan.out} is complete with the same parameters and inputs; nothing to do")
        return {"out": plan.out, "status": "skipped", "channels": names}
    announce([channel_stage(plan, c) for c in range(plan.stack.n_channels)])  # the bar's total, up front
    futures = [estimate_channel.submit(plan, c) for c in range(plan.stack.n_channels)]
    wait(futures)
    failed = [(name, f.state.message) for name, f in zip(names, futures) if not f.state.is_completed()]
    if failed:
        raise RunFailed(unit_failures("", failed))
    results = [f.result() for f in futures]
    manifest = write_estimate_task.submit(plan, results).result()
    publish_estimate_table(names, results, plan.out)
    return {
        "out": plan.out,
        "status": "written",
        "channels": names,
        "summary": [r.summary() for r in results],
        "notes": [n for r in results for n in r.notes],
        "files": sorted(manifest["files"]),
    }


def estimate_command(memory: str | None = None, workers: int | None = None, **values: Any) -> dict:
    """What ``shadeflow estimate`` does with ``values`` (:class:`EstimateParameters` by name): validate
    them, the inputs, the output location and the cluster settings, run the flow with a progress bar,
    and return its summary. User errors raise ``ValueError`` (or ``FileExistsError``) with a one-line
    message, before a Prefect server or cluster starts. (The command line checks the inputs even
    earlier, before this module is imported: :func:`shadeflow.flows.preflight.estimate`.)"""
    params = checked_parameters(EstimateParameters, **values)
    # the plan the flow's first task makes (inputs, frames, grid, output), made here first: a bad input fails
    # now
    make_plan(
        params.images,
        params.out,
        params.channels,
        params.component,
        params.settings(),
        params.recorded(),
        params.overwrite,
        params.dataset,
        params.camera_offset,
    )
    check_settings(memory=memory, workers=workers)
    return run_with_progress(
        estimate, {"params": params}, task_runner(memory=memory, workers=workers), "frames"
    )
