"""The correct job: flatfield-correct OME-Zarr tiles (or TIFF stacks) and write them with a multiscale
pyramid (OME-Zarr, or one OME-TIFF per TIFF tile)."""

from __future__ import annotations

from typing import Any

from prefect import flow, unmapped
from prefect.futures import wait

from ..core.correct.tile import check_distinct_outputs
from ..core.errors import RunFailed, checked_parameters, unit_failures
from ..core.io import storage
from ..infra.cluster import check_settings, task_runner
from ..tasks.correct import correct_tile_task, plan_tile_task, publish_correct_table, report_dicts, tile_stage
from ..tasks.progress import announce
from .parameters import CorrectParameters
from .run import run_with_progress


@flow(name="correct", task_runner=task_runner(), log_prints=True)
def correct(params: CorrectParameters) -> list[dict]:
    """Flatfield-correct every tile.

    All tiles are validated first (metadata, level, flatfield mapping, background, output location):
    if any is bad, the run stops with nothing written. Then, per tile and in parallel: background,
    flatfield, correction and pyramid as one Dask graph on the run's cluster, the completion marker
    last. A table of the tiles (shape, flatfield source, background, seconds, MB/s) is published.
    """
    request = params.request()
    check_distinct_outputs(params.tiles, params.out)
    # the output location once, before any tile is planned: a missing output bucket is --out's
    # problem, not something the first tile discovers when it writes
    storage.check_output_folder(params.out, "--out")
    plans = plan_tile_task.map(params.tiles, unmapped(request))
    wait(plans)
    invalid = [(tile, p.state.message) for tile, p in zip(params.tiles, plans) if not p.state.is_completed()]
    if invalid:  # nothing has been written yet
        raise RunFailed(unit_failures("tile", invalid))
    planned = [p.result() for p in plans]
    announce([tile_stage(plan) for plan in planned])  # the progress bar's total, before any tile starts
    runs = [correct_tile_task.submit(plan) for plan in planned]
    wait(runs)
    failed = [(plan.tile, r.state.message) for plan, r in zip(planned, runs) if not r.state.is_completed()]
    done = [r.result() for r in runs if r.state.is_completed()]
    publish_correct_table(done, planned)
    if failed:
        raise RunFailed(unit_failures("tile", failed))
    return report_dicts(done)


def correct_command(memory: str | None = None, workers: int | None = None, **values: Any) -> list[dict]:
    """What ``shadeflow correct`` does with ``values`` (:class:`CorrectParameters` by name): validate them
    and the cluster settings, run the flow with a progress bar, and return one report per tile. User
    errors raise ``ValueError`` (or :class:`~shadeflow.core.errors.RunFailed`) with a one-line message."""
    params = checked_parameters(CorrectParameters, **values)
    check_settings(memory=memory, workers=workers)
    return run_with_progress(
        correct, {"params": params}, task_runner(memory=memory, workers=workers), "chunks"
    )
