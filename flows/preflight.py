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
from typing import TYPE_CHECKING

from ..core.errors import InputError
from ..core.io import storage

if TYPE_CHECKING:
    from ..core.io.astropath_tree import AstroPathSource
    from .parameters import CorrectParameters


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


def no_credentials(*labelled: tuple[str, str | list[str] | None]) -> None:
    """Refuse, first of all, any URL that carries credentials (``s3://KEY:SECRET@bucket/…``): the
    message shows it redacted, and nothing reads, logs or records it. ``labelled``: ``(what, url or
    urls)`` pairs, e.g. ``("tile", tiles)``."""
    for what, urls in labelled:
        for url in [urls] if isinstance(urls, str) else urls or []:
            storage.refuse_credentials_in_url(url, what)


def spelling(memory: str | None = None) -> None:
    """The cluster settings as written (``--memory``, ``SHADEFLOW_MEMORY``, ``CO_MEMORY``,
    ``SHADEFLOW_CLUSTER``): checked first, as they apply to every input; reads nothing of the machine."""
    from ..infra.cluster import parse_cluster_setting
    from ..infra.sizing import memory_setting

    if memory is not None or os.environ.get("SHADEFLOW_MEMORY") or os.environ.get("CO_MEMORY"):
        memory_setting(override=memory)  # without any of them it would measure the machine
    parse_cluster_setting(os.environ.get("SHADEFLOW_CLUSTER"))


def settings(memory: str | None = None, workers: int | None = None) -> None:
    """The cluster settings (``--memory``, ``--workers``, ``SHADEFLOW_*``) against the machine, before
    anything is created.

    Checked after the inputs: sizing reads the machine's memory through ``distributed`` (~1 s to
    import), which a missing path should not wait for."""
    from ..infra.cluster import check_settings

    check_settings(memory=memory, workers=workers)


def meanimage(
    slides: list[str],
    memory: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    source: AstroPathSource | None = None,
    skip_masking: bool = False,
) -> None:
    """Every slide folder holds a valid ``slide.json`` and ``fields.csv`` with its field files (inside
    the slide folder) — or, with an AstroPath ``source``, every SlideID is a good sample of its
    ``sampledef.csv`` with its XML metadata, exposure files and ``.Data.dat`` fields —, its fields'
    layout has bulk fields to stack and edge fields to threshold on, and its ``meanimage/`` output can
    be written: without ``overwrite``, an unfinished ``meanimage/`` holds nothing shadeflow did not
    write."""
    from ..core.io.astropath_tree import open_slide, sample_ids
    from ..core.io.output_folders import refuse_foreign
    from ..core.meanimage.geometry import plannable_fields

    if source is None:
        no_credentials(("slide", slides))
    else:
        no_credentials(
            ("--astropath", source.root), ("--shardedim3root", source.shardedim3root), ("--out", source.out)
        )
    spelling(memory)
    for url in sample_ids(source, slides) if source else slides:
        slide = open_slide(url, source)
        plannable_fields(slide, skip_masking)
        # meanimage/ and its staging folder go into the slide folder (the mean-image module itself is
        # not imported for its name: it pulls in the mask modules, ~0.7 s)
        storage.check_output_folder(
            slide.url, f"slide {slide.slide_id}", "meanimage writes its output into the slide folder"
        )
        refuse_foreign(storage.join(slide.url, "meanimage"), f"slide {slide.slide_id}", overwrite)
    settings(memory, workers)


def model_build(
    version: str,
    models_csv: str,
    roots: list[str],
    store: str | None,
    overwrite: bool,
    memory: str | None = None,
    source: AstroPathSource | None = None,
) -> None:
    """The models CSV has the version, its slides have mean images under the roots (or in the AstroPath
    ``source``), and the store can take the version (new, or ``--overwrite``)."""
    from ..core.io.cohort import model_slides
    from ..core.model.store import check_version_free

    no_credentials(("--models-csv", models_csv), ("--root", roots), ("--store", store))
    if source is not None:
        no_credentials(("--astropath", source.root), ("--shardedim3root", source.shardedim3root))
    spelling(memory)
    model_slides(version, models_csv, roots, source)
    store = storage.normalize(store) if store else storage.parent(storage.normalize(models_csv))
    storage.check_output_folder(store, "--store")
    check_version_free(store, version, overwrite)
    settings(memory)


def model_list(store: str) -> None:
    """The store exists (an existing store without versions is listed as empty)."""
    no_credentials(("--store", store))
    if not storage.exists(store):
        raise InputError(
            f"--store {storage.normalize(store)}",
            "does not exist",
            "give the folder `shadeflow model build` wrote to",
        )


def model_compare(
    roots: list[str],
    slides: str | None,
    store_as: str | None,
    models_csv: str | None,
    workdir: str | None,
    band: tuple[float, float],
    min_images_stacked: int,
    source: AstroPathSource | None = None,
) -> None:
    """The roots (or the AstroPath ``source``) hold slides matching ``--slides``, the ``--store-as``
    request is new and writable, and the work folder can be written."""
    from ..core.model.compare_plan import make_plan

    no_credentials(("--root", roots), ("--models-csv", models_csv), ("--workdir", workdir))
    if source is not None:
        no_credentials(("--astropath", source.root), ("--shardedim3root", source.shardedim3root))
    spelling()
    plan = make_plan(roots, slides, workdir, band, min_images_stacked, store_as, models_csv, source)
    storage.check_output_folder(plan.workdir, "--workdir")
    if plan.models_csv:
        storage.check_output_folder(storage.parent(plan.models_csv), "--models-csv folder")
    settings()


def applied_test(
    roots: list[str],
    out: str,
    slides: str | None,
    overwrite: bool,
    memory: str | None = None,
    source: AstroPathSource | None = None,
) -> None:
    """Slides with mean images and their field files under the roots (or in the AstroPath ``source``),
    and an output folder that can be written and holds no complete test (unless ``--overwrite``)."""
    from ..core.io.cohort import slides_with_meanimages
    from ..core.io.output_folders import is_complete

    no_credentials(("--root", roots), ("--out", out))
    if source is not None:
        no_credentials(("--astropath", source.root), ("--shardedim3root", source.shardedim3root))
    spelling(memory)
    out = storage.normalize(out)
    storage.check_output_folder(out, "--out")
    if is_complete(out) and not overwrite:
        raise FileExistsError(
            f"--out {out}: already holds a complete applied test; use --overwrite to replace it"
        )
    for ref in slides_with_meanimages(roots, pattern=slides, source=source):
        ref.load_slide(check_files=True)  # the halves are restacked from the fields
    settings(memory)


def estimate(
    images: list[str],
    out: str,
    channels: int = 1,
    component: str | None = None,
    darkfield: bool = False,
    dataset: str | None = None,
    memory: str | None = None,
    workers: int | None = None,
    recorded: dict | None = None,
    overwrite: bool = False,
    grid_blocks: int | None = None,
) -> None:
    """The inputs open as one stack (headers only) with enough frames, and ``--out`` can be written.
    Given the run's ``recorded`` parameters (and ``grid_blocks``, the working grid), also what the
    run's plan decides (``tasks/estimate.make_plan``): the frames cover the grid, and ``--out`` holds
    nothing in the way (a folder that is not an estimate, one made otherwise without ``overwrite``)."""
    from ..core.estimate.grid import EstimateError, frames_needed
    from ..core.estimate.inputs import open_images

    no_credentials(("input", images), ("--out", out))
    spelling(memory)
    with _quiet("tifffile"):
        stack = open_images(images, channels, component, dataset)
    need = frames_needed(darkfield)
    if stack.n_frames < need:
        raise EstimateError(
            f"{', '.join(stack.inputs)}: {stack.n_frames} image{'s' if stack.n_frames != 1 else ''}; "
            f"the estimator needs at least {need}{' to estimate a darkfield' if darkfield else ''}"
        )
    _real_numbers_stored(stack, component)
    storage.check_output_folder(out, "--out")
    if grid_blocks is not None:
        from ..core.estimate.grid import grid_layout

        grid_layout(stack.shape, grid_blocks)
    if recorded is not None:
        from ..core.estimate.outputs import output_state

        output_state(out, recorded, stack.inputs, overwrite)
    settings(memory, workers)


def _real_numbers_stored(stack, component: str | None) -> None:
    """What the headers already tell (issue 11), refused before the run and naming the input: frames
    too small to fit (an axis of length 0), pixels that are not real numbers, and a zarr array that
    lacks chunks its grid expects — read as the fill value, they would silently pass for dark frames."""
    import numpy as np

    from ..core.estimate.grid import EstimateError, grid_layout

    where = ", ".join(stack.inputs)
    try:
        grid_layout(stack.shape)  # frames with an axis of length 0 (or a few pixels) hold nothing to fit
    except EstimateError as exc:
        raise EstimateError(f"{where}: {exc}") from None
    if stack.dtype == np.bool_ or not (
        np.issubdtype(stack.dtype, np.integer) or np.issubdtype(stack.dtype, np.floating)
    ):
        raise EstimateError(
            f"{where}: dtype {stack.dtype} is not a real number type; give integer or floating-point images"
        )
    if stack.kind != "zarr":
        return
    import zarr

    node = zarr.open(
        stack.files[0], mode="r", storage_options=storage.storage_options(stack.files[0]) or None
    )
    if component:
        node = node[component]
    if not isinstance(node, zarr.Array):
        return
    expected, stored = node.nchunks, node.nchunks_initialized
    if stored < expected:
        raise EstimateError(
            f"{where}: {expected - stored} of its {expected} chunks are missing (they would read as the "
            "fill value "
            f"{node.fill_value!r} and be taken for images); restore them, or remove those frames from the "
            "array "
            "(zarr leaves out a chunk that holds only the fill value unless written with "
            "write_empty_chunks=True)"
        )


def correct(params: CorrectParameters, memory: str | None = None, workers: int | None = None) -> None:
    """Everything the flow's planning checks, for every tile, before Prefect starts: no URL carries
    credentials; the options fit together; every tile has a name an output can take; the storage
    of every location answers (endpoint, credentials, bucket); the flatfield source (the model
    version in the store, or the file) and darkfield exist and read; the output location can be
    written and holds nothing in the way; each tile is an OME-Zarr image with the level and every
    chunk stored (or a readable local TIFF file of one grey-level image with known axes), its
    channels map onto the flatfield and its size onto the field.

    All tiles are checked and their problems reported together, in one line."""
    from ..core.correct.flatfield_sources import read_field_file, read_model_flatfield
    from ..core.correct.tile import check_distinct_outputs, plan_tile
    from ..core.errors import is_expected, one_line

    tiles, out, store = params.tiles, params.out, params.store
    flatfield, darkfield = params.flatfield, params.darkfield
    no_credentials(
        ("tile", tiles),
        ("--out", out),
        ("--store", store),
        ("--flatfield", flatfield),
        ("--darkfield", darkfield),
    )
    request = params.request()  # its options fit together: the parameters' validator checked
    spelling(memory)
    check_distinct_outputs(tiles, out)  # also refuses a tile name no output can take (``..``, ``\``…)
    # the locations before their contents: an outage or a missing bucket is named as such, quickly
    storage.check_output_folder(out, "--out")
    for what, url in (("--store", store), ("--flatfield", flatfield), ("--darkfield", darkfield)):
        if url:
            storage.check_bucket(url, what)
    # the sources every tile shares, once: an unknown version or a missing file is one error, not one per tile
    if request.model:
        if not storage.exists(request.store):
            raise InputError(
                f"--store {storage.normalize(request.store)}",
                "does not exist",
                "give the folder `shadeflow model build` wrote to",
            )
        read_model_flatfield(storage.normalize(request.store), request.model)  # kept for the tiles below
    if request.flatfield:
        read_field_file(storage.normalize(request.flatfield))
    if request.darkfield:
        read_field_file(storage.normalize(request.darkfield), "darkfield file")
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
