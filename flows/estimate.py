"""The estimate job: flatfield (and darkfield) estimated from the images themselves."""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from prefect import flow
from prefect.futures import wait
from pydantic import BaseModel, Field

from ..core.errors import RunFailed, checked_parameters, unit_failures
from ..core.estimate.estimator import EstimateSettings
from ..infra.cluster import check_settings, task_runner
from ..tasks.estimate import (
    estimate_channel,
    make_plan,
    plan_estimate,
    publish_estimate_table,
    write_estimate_task,
)
from .run import run_with_progress


class EstimateParameters(BaseModel):
    """Parameters of an estimate run (the Prefect UI renders them as a form)."""

    images: list[str] = Field(
        min_length=1,
        description="TIFF files or folders of TIFFs, one zarr array, or slide folders (local paths or s3:// "
        "URLs); together one stack",
    )
    out: str = Field(
        description="Folder (or s3:// prefix) for flatfield.tiff, darkfield.tiff and estimate.zarr"
    )
    darkfield: bool = Field(
        False, description="Estimate a darkfield too (else none, or a slide's dark current)"
    )
    channels: int = Field(
        1,
        ge=1,
        le=64,
        description="Channels interleaved in the pages of each TIFF (page k: frame k // C, channel k % C)",
    )
    component: str | None = Field(None, description="Array inside a zarr group (e.g. 'raw' or '0')")
    method: Literal["auto", "floor", "surface"] = Field(
        "auto",
        description="floor: smooth polynomials (fast); surface: free surfaces whose smoothness is chosen by "
        "cross-validation (follows sharp aperture edges; slower); auto: floor, and without a darkfield to "
        "estimate surface where the polynomial fit is refused or does not converge",
    )
    degree: int = Field(6, ge=1, le=12, description="floor: total degree of the flatfield's polynomial")
    darkfield_degree: int = Field(
        2, ge=0, le=12, description="floor: total degree of the darkfield's polynomial"
    )
    smoothness: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="surface: smoothing length of the flatfield in pixels (default: chosen by "
        "cross-validation over the frames)",
    )
    order_statistics: bool = Field(
        False,
        description="surface: separate flatfield and darkfield by each pixel's order statistics (assumes "
        "the specimen is spread evenly; for stacks whose levels do not vary)",
    )
    max_frames: int = Field(
        1000,
        ge=16,
        description="Frames of the robust fit (a seeded sample when there are more); every frame enters the "
        "final pass",
    )
    seed: int = Field(0, ge=0, description="Seed of the frame sample")
    overwrite: bool = Field(
        False, description="Replace a complete output made with other parameters or inputs"
    )

    def settings(self) -> EstimateSettings:
        return EstimateSettings(
            darkfield=self.darkfield,
            method=self.method,
            degree=self.degree,
            darkfield_degree=min(self.darkfield_degree, self.degree),
            smoothness=self.smoothness,
            order_statistics=self.order_statistics,
            max_frames=self.max_frames,
            seed=self.seed,
        )

    def recorded(self) -> dict:
        """The parameters recorded with (and compared against) the output."""
        return {
            "darkfield": self.darkfield,
            "channels": self.channels,
            "component": self.component,
            "method": self.method,
            "degree": self.degree,
            "darkfield_degree": self.darkfield_degree,
            "smoothness": self.smoothness,
            "order_statistics": self.order_statistics,
            "max_frames": self.max_frames,
            "seed": self.seed,
            "settings": asdict(self.settings()),
        }


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
    ).result()
    names = plan.stack.channel_names
    if plan.action == "skip":
        print(f"{plan.out} is complete with the same parameters and inputs; nothing to do")
        return {"out": plan.out, "status": "skipped", "channels": names}
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


def estimate_command(
    images: list[str],
    out: str,
    darkfield: bool = False,
    channels: int = 1,
    component: str | None = None,
    method: str = "auto",
    degree: int = 6,
    darkfield_degree: int = 2,
    smoothness: float | None = None,
    order_statistics: bool = False,
    max_frames: int = 1000,
    seed: int = 0,
    overwrite: bool = False,
    memory: str | None = None,
    workers: int | None = None,
) -> dict:
    """What ``shadeflow estimate`` does: validate the parameters, the inputs, the output location and the
    cluster settings, run the flow with a progress bar, and return its summary. User errors raise
    ``ValueError`` (or ``FileExistsError``) with a one-line message, before a Prefect server or cluster
    starts. (The command line checks the inputs even earlier, before this module is imported:
    :func:`shadeflow.flows.preflight.estimate`.)"""

    params = checked_parameters(
        EstimateParameters,
        images=images,
        out=out,
        darkfield=darkfield,
        channels=channels,
        component=component,
        method=method,
        degree=degree,
        darkfield_degree=darkfield_degree,
        smoothness=smoothness,
        order_statistics=order_statistics,
        max_frames=max_frames,
        seed=seed,
        overwrite=overwrite,
    )
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
    )
    check_settings(memory=memory, workers=workers)
    return run_with_progress(
        estimate, {"params": params}, task_runner(memory=memory, workers=workers), "frames"
    )
