"""The checks each command runs before Prefect or Dask start: a typo costs a second, not a server start.

Every function here takes a verb's options, reads only what deciding needs (listings, headers,
manifests, small files) and raises an expected error (see :mod:`shadeflow.core.errors`) naming the
input at fault; it writes nothing. The flows check again when they run (they are also started from
the Prefect UI), so these are the same core functions the flows' first tasks call.

Light on purpose: nothing here imports Prefect, ``distributed`` or ``prefect_dask`` (``import
prefect`` alone takes about 2 s, ``distributed`` about 1 s); ``tests/test_cli_errors.py`` holds that line.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from shadeflow.core import storage
from shadeflow.core.errors import InputError


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence a library's warnings while checking: a damaged file is reported as the one error line,
    not also as the library's complaint about it."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def spelling(memory: str | None = None) -> None:
    """The cluster settings as written (``--memory``, ``SHADEFLOW_MEMORY``, ``CO_MEMORY``,
    ``SHADEFLOW_CLUSTER``): checked first, as they apply to every input; reads nothing of the machine."""
    from shadeflow.infra.cluster import parse_cluster_setting
    from shadeflow.infra.sizing import memory_setting

    if memory is not None or os.environ.get("SHADEFLOW_MEMORY") or os.environ.get("CO_MEMORY"):
        memory_setting(override=memory)  # without any of them it would measure the machine
    parse_cluster_setting(os.environ.get("SHADEFLOW_CLUSTER"))


def settings(memory: str | None = None, workers: int | None = None) -> None:
    """The cluster settings (``--memory``, ``--workers``, ``SHADEFLOW_*``) against the machine, before
    anything is created.

    Checked after the inputs: sizing reads the machine's memory through ``distributed`` (~1 s to
    import), which a missing path should not wait for."""
    from shadeflow.infra.cluster import check_settings

    check_settings(memory=memory, workers=workers)


def meanimage(slides: list[str], memory: str | None = None, workers: int | None = None) -> None:
    """Every slide folder holds a valid ``slide.json`` and ``fields.csv`` with its field files, and its
    ``meanimage/`` output can be written."""
    from shadeflow.core.slide import load_slide

    spelling(memory)
    for url in slides:
        slide = load_slide(url)
        # meanimage/ and its staging folder go into the slide folder (the mean-image module itself is
        # not imported for its name: it pulls in the mask modules, ~0.7 s)
        storage.check_output_folder(slide.url, f"slide {slide.slide_id}", "meanimage writes its output into the slide folder")
    settings(memory, workers)


def model_build(version: str, models_csv: str, roots: list[str], store: str | None, overwrite: bool, memory: str | None = None) -> None:
    """The models CSV has the version, its slides have mean images under the roots, and the store can
    take the version (new, or ``--overwrite``)."""
    from shadeflow.core.cohort import model_slides
    from shadeflow.core.model_store import check_version_free

    spelling(memory)
    model_slides(version, models_csv, roots)
    store = storage.normalize(store) if store else storage.parent(storage.normalize(models_csv))
    storage.check_output_folder(store, "--store")
    check_version_free(store, version, overwrite)
    settings(memory)


def model_list(store: str) -> None:
    """The store exists (an existing store without versions is listed as empty)."""
    if not storage.exists(store):
        raise InputError(f"--store {storage.normalize(store)}", "does not exist", "give the folder `shadeflow model build` wrote to")


def model_compare(
    roots: list[str],
    slides: str | None,
    store_as: str | None,
    models_csv: str | None,
    workdir: str | None,
    band: tuple[float, float],
    min_images_stacked: int,
) -> None:
    """The roots hold slides matching ``--slides``, the ``--store-as`` request is new and writable, and
    the work folder can be written."""
    from shadeflow.core.compare_plan import make_plan

    spelling()
    plan = make_plan(roots, slides, workdir, band, min_images_stacked, store_as, models_csv)
    storage.check_output_folder(plan.workdir, "--workdir")
    if plan.models_csv:
        storage.check_output_folder(storage.parent(plan.models_csv), "--models-csv folder")
    settings()


def applied_test(roots: list[str], out: str, slides: str | None, overwrite: bool, memory: str | None = None) -> None:
    """Slides with mean images and their field files under the roots, and an output folder that can be
    written and holds no complete test (unless ``--overwrite``)."""
    from shadeflow.core.cohort import slides_with_meanimages
    from shadeflow.core.outputs import is_complete
    from shadeflow.core.slide import load_slide

    spelling(memory)
    out = storage.normalize(out)
    storage.check_output_folder(out, "--out")
    if is_complete(out) and not overwrite:
        raise FileExistsError(f"--out {out}: already holds a complete applied test; use --overwrite to replace it")
    for ref in slides_with_meanimages(roots, pattern=slides):
        load_slide(ref.url, check_files=True)  # the halves are restacked from the fields
    settings(memory)


def estimate(images: list[str], out: str, channels: int = 1, component: str | None = None, darkfield: bool = False, memory: str | None = None, workers: int | None = None) -> None:
    """The inputs open as one stack (headers only) with enough frames, and ``--out`` can be written."""
    from shadeflow.core.estimate_grid import EstimateError, frames_needed
    from shadeflow.core.estimate_inputs import open_images

    spelling(memory)
    with _quiet("tifffile"):
        stack = open_images(images, channels, component)
    need = frames_needed(darkfield)
    if stack.n_frames < need:
        raise EstimateError(
            f"{', '.join(stack.inputs)}: {stack.n_frames} image{'s' if stack.n_frames != 1 else ''}; "
            f"the estimator needs at least {need}{' to estimate a darkfield' if darkfield else ''}"
        )
    storage.check_output_folder(out, "--out")
    settings(memory, workers)


def correct(
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
    memory: str | None = None,
    workers: int | None = None,
) -> None:
    """Everything the flow's planning checks, for every tile, before Prefect starts: the options fit
    together; the flatfield source (the model version in the store, or the file) and darkfield exist
    and read; each tile is an OME-Zarr image with the level, its channels map onto the flatfield and
    its size onto the field; the output location can be written and holds nothing in the way.

    All tiles are checked and their problems reported together, in one line."""
    from shadeflow.core.corrected_tile import CorrectRequest, check_distinct_outputs, plan_tile
    from shadeflow.core.errors import is_expected, one_line
    from shadeflow.core.flatfield_sources import read_field_file, read_model_flatfield

    request = CorrectRequest(
        out=out, model=model, store=store, flatfield=flatfield, method=method, layer=layer, channel_map=channel_map,
        background=background if background is not None else "estimate", darkfield=darkfield, level=str(level), levels=levels,
        zarr_format=zarr_format, repair_flatfield=repair_flatfield, overwrite=overwrite,
    ).check()
    spelling(memory)
    # the sources every tile shares, once: an unknown version or a missing file is one error, not one per tile
    if request.model:
        if not storage.exists(request.store):
            raise InputError(f"--store {storage.normalize(request.store)}", "does not exist", "give the folder `shadeflow model build` wrote to")
        read_model_flatfield(storage.normalize(request.store), request.model)  # kept for the tiles below
    if request.flatfield:
        read_field_file(storage.normalize(request.flatfield))
    if request.darkfield:
        read_field_file(storage.normalize(request.darkfield), "darkfield file")
    storage.check_output_folder(out, "--out")
    check_distinct_outputs(tiles, out)
    problems = []
    for tile in tiles:
        try:
            plan_tile(tile, request)
        except Exception as exc:
            if not is_expected(exc):
                raise
            problems.append(one_line(exc))
    if problems:
        raise ValueError("; ".join(problems))
    settings(memory, workers)
