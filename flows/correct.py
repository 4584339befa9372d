"""The correct job: flatfield-correct OME-Zarr tiles and write them with a multiscale pyramid."""

from __future__ import annotations

from typing import Literal

from prefect import flow, unmapped
from prefect.futures import wait
from pydantic import BaseModel, Field, model_validator

from ..core.correct.tile import CorrectRequest, check_distinct_outputs
from ..core.errors import RunFailed, checked_parameters, unit_failures
from ..core.io import storage
from ..infra.cluster import check_settings, task_runner
from ..tasks.correct import correct_tile_task, plan_tile_task, publish_correct_table, report_dicts
from .run import run_with_progress


class CorrectParameters(BaseModel):
    """Parameters of a correct run (the Prefect UI renders them as a form)."""

    tiles: list[str] = Field(
        min_length=1,
        description="OME-Zarr tiles (image groups), local paths or s3:// URLs; NGFF 0.4 on zarr v2 or 0.5 "
        "on zarr v3",
    )
    out: str = Field(
        description="Folder (or s3:// prefix) for the corrected tiles: each is written to <out>/<tile name>"
    )
    model: str | None = Field(
        None, description="Flatfield model version (built by `model build`) to apply; needs `store`"
    )
    store: str | None = Field(None, description="Model store holding `model`")
    layer: int | None = Field(None, ge=1, description="Model layer (1-based) applied to every channel")
    channel_map: str | None = Field(
        None,
        description="Model layer per channel: CHANNEL=LAYER pairs, e.g. '0=5,1=12' or '0=dapi,1=fitc' (a "
        "group's middle layer)",
    )
    flatfield: str | None = Field(
        None,
        description="Flatfield file instead of a model: TIFF, .npy or zarr; one (Y, X) field or one per "
        "channel",
    )
    method: Literal["estimate"] | None = Field(
        None, description="'estimate': estimate the flatfield from each tile's own planes"
    )
    background: str = Field(
        "estimate",
        description="'estimate' (from the quietest slices), 'none', a value in counts, or one value per "
        "channel ('100,120')",
    )
    darkfield: str | None = Field(
        None, description="Darkfield image(s) to subtract instead of `background`: TIFF, .npy or zarr"
    )
    level: str = Field(
        "0",
        description="Resolution level of the input to correct: index (0 = full resolution) or dataset path",
    )
    levels: int = Field(
        4,
        ge=1,
        le=16,
        description="Pyramid levels to write (each halves y and x, and z where the voxel size allows)",
    )
    zarr_format: Literal[2, 3] | None = Field(
        None, description="Zarr format of the output (2 → NGFF 0.4, 3 → NGFF 0.5); empty: as the input"
    )
    repair_flatfield: bool = Field(
        False,
        description="Replace zero, negative or non-finite flatfield pixels by their neighbourhood instead "
        "of failing",
    )
    overwrite: bool = Field(
        False,
        description="Replace complete outputs made with other parameters (and folders that are not "
        "shadeflow outputs)",
    )
    allow_missing_chunks: bool = Field(
        False,
        description="Read chunks absent from a tile as its fill value instead of refusing the tile (zarr "
        "omits chunks holding only the fill value)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> CorrectParameters:
        for tile in self.tiles:  # credentials in a URL would be echoed and recorded with the run
            storage.refuse_credentials_in_url(tile, "tile")
        self.request().check()  # exactly one flatfield source, --model with --store, layers only for a model…
        return self

    def request(self) -> CorrectRequest:
        """The plain request the core code works from."""
        return CorrectRequest(
            out=self.out,
            model=self.model,
            store=self.store,
            flatfield=self.flatfield,
            method=self.method,
            layer=self.layer,
            channel_map=self.channel_map,
            background=self.background,
            darkfield=self.darkfield,
            level=self.level,
            levels=self.levels,
            zarr_format=self.zarr_format,
            repair_flatfield=self.repair_flatfield,
            overwrite=self.overwrite,
            allow_missing_chunks=self.allow_missing_chunks,
        )


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
    runs = [correct_tile_task.submit(plan) for plan in planned]
    wait(runs)
    failed = [(plan.tile, r.state.message) for plan, r in zip(planned, runs) if not r.state.is_completed()]
    done = [r.result() for r in runs if r.state.is_completed()]
    publish_correct_table(done)
    if failed:
        raise RunFailed(unit_failures("tile", failed))
    return report_dicts(done)


def correct_command(
    tiles: list[str],
    out: str,
    model: str | None = None,
    store: str | None = None,
    layer: int | None = None,
    channel_map: str | None = None,
    flatfield: str | None = None,
    method: str | None = None,
    background: str | None = None,
    darkfield: str | None = None,
    level: str = "0",
    levels: int = 4,
    zarr_format: int | None = None,
    repair_flatfield: bool = False,
    overwrite: bool = False,
    allow_missing_chunks: bool = False,
    memory: str | None = None,
    workers: int | None = None,
) -> list[dict]:
    """What ``shadeflow correct`` does: validate the parameters and the cluster settings, run the flow
    with a progress bar, and return one report per tile. User errors raise ``ValueError`` (or
    :class:`~shadeflow.core.errors.RunFailed`) with a one-line message."""

    params = checked_parameters(
        CorrectParameters,
        tiles=tiles,
        out=out,
        model=model,
        store=store,
        layer=layer,
        channel_map=channel_map,
        flatfield=flatfield,
        method=method,
        background=background if background is not None else "estimate",
        darkfield=darkfield,
        level=level,
        levels=levels,
        zarr_format=zarr_format,
        repair_flatfield=repair_flatfield,
        overwrite=overwrite,
        allow_missing_chunks=allow_missing_chunks,
    )
    check_settings(memory=memory, workers=workers)
    return run_with_progress(
        correct, {"params": params}, task_runner(memory=memory, workers=workers), "chunks"
    )
