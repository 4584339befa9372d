"""One tile's correction from start to finish: plan (validate everything, write nothing), then run.

The output of tile ``<name>`` is ``<out>/<name>``, an OME-Zarr image written in place:

1. the group is created with ``attributes.shadeflow.status = "writing"`` (so an interrupted output
   is recognisable as ours), then the level arrays and their data;
2. the NGFF ``multiscales`` / ``omero`` metadata, then the provenance (``shadeflow`` attribute);
3. last, the completion marker ``shadeflow.json`` (:data:`shadeflow.core.io.output_folders.MANIFEST`).

An output without the marker is *partial*: a rerun removes and redoes it. An output with the marker
made by the same request is *complete* and skipped; one made by another request is refused unless
``overwrite`` (which removes the marker first, so a crash during the rewrite leaves a partial output,
never a stale complete one). A folder that is neither is not ours and is refused unless ``overwrite``.
The input is only ever opened read-only; an output inside the input (or the input inside the
output) is refused.

A TIFF tile (``.tif``/``.tiff``, a local file: :mod:`shadeflow.core.io.tiffstack`) goes through the
same planning, background, flatfield and correction graph, and is written as one OME-TIFF file
``<out>/<stem>.ome.tif`` that appears under its name only when whole (:mod:`.tiff_output`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..io import storage
from ..io.omezarr import (
    CANONICAL,
    NGFF_FOR_ZARR,
    Level,
    OmeImage,
    TileError,
    check_not_empty,
    create_image_group,
    create_level_array,
    missing_chunks,
    open_group,
    open_image,
    remove_interrupted_chunk_writes,
    write_multiscales,
)
from ..io.output_folders import MANIFEST, is_complete, read_manifest, shadeflow_version
from ..io.tiffstack import TiffImage, is_tiff, open_tiff_image, tiff_stem
from .background import (
    Background,
    BackgroundError,
    constant_background,
    estimate_background,
    survey_level,
)
from .flatfield_sources import (
    Flatfield,
    darkfield_fields,
    estimate_flatfield,
    file_flatfield,
    model_flatfield,
    parse_channel_map,
)
from .graph import graph_constants_allowed, plan_pyramid, select_axes, stored_correction
from .tiff_output import (
    read_tiff_manifest,
    remove_tiff_output,
    tiff_metadata,
    tiff_output_state,
    write_corrected_tiff,
)

KIND = "corrected-tile"
PROVENANCE_KEY = "shadeflow"
#: the output format of a TIFF tile, recorded with its parameters
OME_TIFF = "ome-tiff"


@dataclass(frozen=True)
class CorrectRequest:
    """What to do with every tile of a run (validated by the flow's parameters)."""

    out: str
    model: str | None = None
    store: str | None = None
    flatfield: str | None = None
    method: str | None = None  # "estimate"
    layer: int | None = None
    channel_map: str | None = None
    background: str = "estimate"  # "estimate", "none", "VALUE" or "V0,V1,…"
    darkfield: str | None = None
    level: str = "0"
    levels: int = 4
    zarr_format: int | None = None  # None: as the input
    repair_flatfield: bool = False
    overwrite: bool = False
    allow_missing_chunks: bool = False  # read absent chunks as the fill value instead of refusing the tile

    def flatfield_kind(self) -> str:
        kinds = [
            k for k, v in (("model", self.model), ("file", self.flatfield), ("estimate", self.method)) if v
        ]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one flatfield source (--model V --store URL, --flatfield URL or --method "
                f"estimate); got {', '.join(kinds) or 'none'}"
            )
        if kinds == ["model"] and not self.store:
            raise ValueError("--model needs --store (the model store holding the version)")
        if self.method and self.method != "estimate":
            raise ValueError(f"--method {self.method!r} is not known; the only method is 'estimate'")
        return kinds[0]

    def check(self) -> CorrectRequest:
        """The options fit together: exactly one flatfield source, layers only for a model, a darkfield
        or a background, no credentials in any URL; reads nothing."""
        storage.refuse_credentials_in_url(self.out, "--out")
        for what, url in (
            ("--store", self.store),
            ("--flatfield", self.flatfield),
            ("--darkfield", self.darkfield),
        ):
            if url:
                storage.refuse_credentials_in_url(url, what)
        self.flatfield_kind()
        if self.model is None and (self.layer is not None or self.channel_map):
            raise ValueError("--layer and --channel-map choose model layers; they need --model")
        if self.layer is not None and self.channel_map:
            raise ValueError("give --layer or --channel-map, not both")
        if self.channel_map:
            parse_channel_map(self.channel_map)
        if self.darkfield and self.background.strip().lower() != "estimate":
            raise ValueError("give --darkfield or --background, not both")
        if not self.darkfield:
            parse_background(self.background)
        return self

    def recorded(self, tile: str) -> dict[str, Any]:
        """What makes an output: compared with a complete output's marker to decide skip or refuse."""
        kind = self.flatfield_kind()
        flat: dict[str, Any] = {"kind": kind, "repair": self.repair_flatfield}
        if kind == "model":
            flat.update(
                store=storage.normalize(self.store),
                version=self.model,
                layer=self.layer,
                channel_map=self.channel_map,
            )
        elif kind == "file":
            flat.update(url=storage.normalize(self.flatfield))
        background = (
            {"kind": "darkfield", "url": storage.normalize(self.darkfield)}
            if self.darkfield
            else {"kind": self.background}
        )
        return {
            "tile": storage.normalize(tile),
            "level": str(self.level),
            "flatfield": flat,
            "background": background,
            "levels": self.levels,
            "zarr_format": self.zarr_format,
        }


@dataclass
class TilePlan:
    """A validated tile: what will be read, how it will be corrected, and where it goes."""

    tile: str
    name: str
    output: str
    image: OmeImage
    level: Level
    zarr_format: int | None  # None: a TIFF tile (written as OME-TIFF)
    recorded: dict[str, Any]
    action: str  # "write", "redo" (partial output), "replace" (overwrite), "skip"
    flatfield: Flatfield | None  # None: estimated when the tile runs
    background: Background | None  # None: estimated when the tile runs
    notes: list[str] = field(default_factory=list)
    out: str = ""  # --out, normalised: the output must be a direct child of it
    missing_chunks: dict[str, int] = field(default_factory=dict)  # level → chunks read as the fill value

    @property
    def is_tiff(self) -> bool:
        return self.recorded.get("format") == OME_TIFF

    @property
    def shape(self) -> tuple[int, ...]:
        return self.level.shape

    @property
    def n_blocks(self) -> int:
        """Level-0 Dask blocks (chunks, or shards of sharded tiles): the progress bar's unit."""
        return math.prod(math.ceil(s / c) for s, c in zip(self.level.shape, self.level.blocks))


@dataclass
class TileReport:
    """What happened to one tile (the run's table artifact and the CLI)."""

    tile: str
    output: str
    status: str  # "written" or "skipped"
    shape: list[int]
    dtype: str
    levels: int
    flatfield: str
    background: str
    seconds: float = 0.0
    mb_per_s: float = 0.0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# output location and state


def tile_name(tile_url: str) -> str:
    """The name a tile's output gets under ``--out``: the last component of its URL, validated; a TIFF
    tile's is its name without the TIFF extension, plus ``.ome.tif``.

    The name becomes a path that may be removed (``--overwrite``, a partial output), so anything
    that is not one plain folder name is refused: empty, ``.``, ``..`` (``s3://bucket/x/..`` is a
    literal key on S3 but would name ``--out``'s parent locally), or holding ``/``, ``\\`` or NUL.
    Credentials in the URL are refused too (they would be echoed and recorded)."""
    storage.refuse_credentials_in_url(tile_url, "tile")
    name = storage.basename(storage.normalize(tile_url))
    if name in ("", ".", "..") or any(ch in name for ch in "/\\\0"):
        raise TileError(
            f"tile {storage.redact(tile_url)}: its name {name!r} cannot name an output folder under --out; "
            "give the tile's own folder (e.g. s3://bucket/tiles/tile.ome.zarr)"
        )
    if is_tiff(name):
        if not tiff_stem(name).strip("."):
            raise TileError(f"tile {storage.redact(tile_url)}: its name {name!r} cannot name an output file")
        return tiff_stem(name) + ".ome.tif"
    return name


def output_url(out: str, tile_url: str) -> str:
    return storage.join(storage.normalize(out), tile_name(tile_url))


def check_output_child(out: str, output: str) -> None:
    """The last guard before anything is removed or written: ``output`` must be a direct child of
    ``--out`` with a plain name (never ``--out`` itself, its parent, or anything elsewhere)."""
    out = storage.normalize(out)
    name = storage.basename(output)
    if name in ("", ".", "..") or any(ch in name for ch in "/\\\0") or storage.join(out, name) != output:
        raise TileError(
            f"output {output} is not a folder directly inside --out {out}; refusing to write or remove it"
        )


def _inside(inner: str, outer: str) -> bool:
    inner, outer = inner.rstrip("/"), outer.rstrip("/")
    return inner == outer or inner.startswith(outer + "/")


def check_output_location(tile_url: str, output: str) -> None:
    """Refuse an output that is the input, lies inside it, or contains it."""
    tile, out = storage.normalize(tile_url), storage.normalize(output)
    if out.rstrip("/") == tile.rstrip("/"):
        raise TileError(
            f"tile {tile}: the output would be the input tile itself (--out is the folder holding it); "
            "choose another --out"
        )
    if _inside(out, tile):
        raise TileError(f"tile {tile}: output {out} is inside the input tile; choose an --out outside it")
    if _inside(tile, out):
        raise TileError(
            f"tile {tile}: the input lies inside the output {out}; writing there would destroy it — choose "
            "another --out"
        )


def check_distinct_outputs(tiles: list[str], out: str) -> None:
    """Two tiles with the same name would write the same output."""
    seen: dict[str, str] = {}
    for tile in tiles:
        target = output_url(out, tile)
        if target in seen and storage.normalize(seen[target]) != storage.normalize(tile):
            raise TileError(
                f"tiles {seen[target]} and {tile} have the same name and would both write {target}"
            )
        if target in seen:
            raise TileError(f"tile {tile} is listed twice")
        seen[target] = tile


def output_state(url: str) -> str:
    """``absent``, ``complete`` (marker present), ``partial`` (ours, unfinished) or ``foreign``."""
    if not storage.exists(url):
        return "absent"
    if is_complete(url):
        return "complete"
    fs, path = storage.filesystem(url)
    if fs.isdir(path) and not fs.ls(path, detail=False):
        return "partial"
    try:
        attrs = open_group(url, mode="r").attrs.asdict()
    except Exception:
        return "foreign"
    return (
        "partial"
        if isinstance(attrs.get(PROVENANCE_KEY), dict) and attrs[PROVENANCE_KEY].get("kind") == KIND
        else "foreign"
    )


# ---------------------------------------------------------------------------------------------
# planning


def parse_background(text: str) -> list[float] | str:
    """``estimate`` / ``none`` or the value(s): ``100`` or ``100,120`` (one per channel)."""
    text = (text or "").strip().lower()
    if text in ("estimate", "none"):
        return text
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise BackgroundError(
            f"--background {text!r} is not 'estimate', 'none', a number or one number per channel (e.g. 100 "
            "or 100,120)"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise BackgroundError(f"--background {text!r} must be finite")
    return values


def plan_tile(tile_url: str, request: CorrectRequest) -> TilePlan:
    """Validate one tile against the request, load its flatfield (model or file) and fixed background,
    and decide what to do with its output. Nothing is written.

    Raises
    ------
    TileError, FlatfieldError, BackgroundError, ModelError
        With the tile's URL and what was expected.
    """
    tile = storage.normalize(tile_url)
    kind = request.flatfield_kind()
    name = tile_name(tile)  # before anything is read: the name decides what may be removed
    output = storage.join(storage.normalize(request.out), name)
    check_output_child(request.out, output)
    tiff = is_tiff(tile)
    if tiff:
        check_tiff_request(tile, request)
    image = open_tiff_image(tile) if tiff else open_image(tile)
    level = image.level(request.level)
    check_not_empty(image, level)
    zarr_format = None if tiff else request.zarr_format or image.zarr_format
    if not tiff and zarr_format not in NGFF_FOR_ZARR:
        raise TileError(f"tile {tile}: --zarr-format {zarr_format} is not 2 or 3")
    check_output_location(tile, output)
    notes: list[str] = []
    absent_chunks: dict[str, int] = {}
    # every level the run reads: the corrected one, and the background survey's
    read = [level] + (
        [survey_level(image, level)]
        if not request.darkfield and request.background.strip().lower() == "estimate"
        else []
    )
    for lv in {lv.path: lv for lv in read}.values() if not tiff else ():  # a TIFF has no chunks to lose
        absent = missing_chunks(image, lv)
        if not absent.missing:
            continue
        if not request.allow_missing_chunks:
            raise TileError(
                f"tile {tile}: {absent.describe()}; zarr would read them as the fill value "
                f"{absent.fill_value!r} — "
                "restore them, or rerun with --allow-missing-chunks if they were left out on purpose (zarr "
                "omits chunks holding only the fill value)"
            )
        absent_chunks[lv.path] = absent.missing
        notes.append(
            f"tile {tile}: {absent.describe()}, read as the fill value {absent.fill_value!r} "
            "(--allow-missing-chunks)"
        )
    canonical = tuple(image.size(r, level.index) for r in CANONICAL)
    try:
        plan_pyramid(canonical, (1.0,) * 5, (0.0,) * 5, request.levels, halve_z=not tiff)
    except ValueError as exc:
        raise TileError(f"tile {tile}: --levels {request.levels}: {exc}") from None
    yx = (canonical[3], canonical[4])
    n_c = canonical[1]
    flat = None
    if kind == "model":
        flat = model_flatfield(
            request.store,
            request.model,
            yx,
            n_c,
            request.layer,
            request.channel_map,
            request.repair_flatfield,
            tile,
        )
    elif kind == "file":
        flat = file_flatfield(request.flatfield, yx, n_c, request.repair_flatfield, tile)
    background = None
    notes += list(flat.notes) if flat else []
    if request.darkfield:
        if request.background not in ("estimate", ""):
            raise BackgroundError(f"tile {tile}: give --darkfield or --background, not both")
        fields, details, dnotes = darkfield_fields(request.darkfield, yx, n_c, tile)
        background = Background(
            fields, "darkfield", f"darkfield {storage.basename(request.darkfield)}", details
        )
        notes += dnotes
    else:
        parsed = parse_background(request.background)
        if parsed == "none":
            background = constant_background([0.0], n_c, kind="none")
        elif parsed == "estimate":
            slices = canonical[0] * canonical[2]
            if slices < 3:
                raise BackgroundError(
                    f"tile {tile}: {slices} slice{'s' if slices != 1 else ''} (z planes × time points); "
                    "--background estimate needs at least 3 "
                    "— use --background VALUE, --darkfield URL or --background none"
                )
        else:
            try:
                background = constant_background(parsed, n_c)
            except BackgroundError as exc:
                raise BackgroundError(f"tile {tile}: {exc}") from None
    # as resolved, not as spelled
    recorded = {**request.recorded(tile), "level": level.path, "zarr_format": zarr_format}
    if tiff:
        recorded["format"] = OME_TIFF
    state = tiff_output_state(output, KIND) if tiff else output_state(output)
    action = {"absent": "write", "partial": "redo"}.get(state)
    if state == "complete":
        manifest = read_tiff_manifest(output) if tiff else read_manifest(output)
        if manifest.get("kind") == KIND and manifest.get("parameters") == recorded and not request.overwrite:
            action = "skip"
        elif request.overwrite:
            action = "replace"
        else:
            raise TileError(
                f"tile {tile}: output {output} exists and is complete (made {manifest.get('created', '?')} "
                "with other parameters); "
                "rerun with --overwrite to replace it"
            )
    elif state == "foreign":
        if not request.overwrite:
            raise TileError(
                f"tile {tile}: output {output} exists and is not a shadeflow output; remove it, choose "
                "another --out, or rerun with --overwrite"
            )
        action = "replace"
    return TilePlan(
        tile,
        name,
        output,
        image,
        level,
        zarr_format,
        recorded,
        action,
        flat,
        background,
        notes,
        storage.normalize(request.out),
        absent_chunks,
    )


def check_tiff_request(tile: str, request: CorrectRequest) -> None:
    """What a TIFF tile cannot do: be read from or written to remote storage (tifffile reads and
    writes seekable local files), or take a zarr format."""
    if storage.is_remote(request.out):
        raise TileError(
            f"tile {tile}: a TIFF tile is written as an OME-TIFF file, which needs a local --out (got "
            f"{storage.normalize(request.out)}); write locally and upload, or convert the tile to OME-Zarr"
        )
    if request.zarr_format is not None:
        raise TileError(
            f"tile {tile}: --zarr-format is for OME-Zarr tiles; a TIFF tile is written as OME-TIFF"
        )


# ---------------------------------------------------------------------------------------------
# running


def default_compute(*collections):
    """``dask.compute`` on a private thread pool, so that when a block fails the call returns only after
    the blocks already running have finished: none can write into the output after it is removed."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import dask

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # shut down (waiting) on error too
        return dask.compute(*collections, scheduler="threads", pool=pool)


def _log(message: str) -> None:
    logger = logging.getLogger("shadeflow.correct")
    if message.startswith("WARNING "):
        logger.warning("%s", message[len("WARNING ") :])
    else:
        logger.info("%s", message)


def run_tile(
    plan: TilePlan,
    compute: Callable = default_compute,
    on_block: Callable[[], None] | None = None,
    log: Callable[[str], None] = _log,
) -> TileReport:
    """Correct one planned tile and write its output (module description).

    ``compute`` runs Dask collections (``dask.compute`` or a client's); ``on_block`` is called per
    corrected level-0 chunk; ``log`` receives progress lines (warnings start with ``WARNING ``).
    """
    import dask.array as da

    image, level = plan.image, plan.level
    report = TileReport(
        tile=plan.tile,
        output=plan.output,
        status="skipped",
        shape=list(level.shape),
        dtype=str(level.dtype),
        levels=plan.recorded["levels"],
        flatfield=plan.flatfield.summary if plan.flatfield else "estimate",
        background=plan.background.summary if plan.background else "estimate",
        notes=list(plan.notes),
    )
    if plan.action == "skip":
        manifest = read_tiff_manifest(plan.output) if plan.is_tiff else read_manifest(plan.output)
        report.flatfield = manifest.get("flatfield", {}).get("summary", report.flatfield)
        report.background = manifest.get("background", {}).get("summary", report.background)
        log(f"{plan.name}: complete output with the same parameters exists, skipped ({plan.output})")
        return report
    started = time.perf_counter()
    check_output_child(plan.out or storage.parent(plan.output), plan.output)
    # everything that can fail on the data is computed before the output is touched
    background = plan.background or estimate_background(image, level, compute)
    for message in background.warnings:
        log(f"WARNING {message}")
    flat = plan.flatfield or estimate_flatfield(image, level, background.fields, compute)
    report.flatfield, report.background = flat.summary, background.summary
    report.notes += flat.notes if plan.flatfield is None else []
    report.notes += background.warnings
    if plan.action in ("redo", "replace"):
        what = (
            "partial output of an interrupted run"
            if plan.action == "redo"
            else "replacing the existing output"
        )
        log(f"{plan.name}: {what} at {plan.output}, rewriting it")
        if plan.is_tiff:
            remove_tiff_output(plan.output)
        else:
            storage.remove(storage.join(plan.output, MANIFEST))
            storage.remove(plan.output)
    if plan.is_tiff:
        return _finish(report, plan, _write_tiff(plan, flat, background, compute, on_block, started))
    pyramid = _output_pyramid(plan)
    source = da.from_zarr(image.array(level), chunks=level.blocks)  # the tile's own axes: no reshaping layers
    ff, bg = _in_tile_axes(image.roles, flat.fields), _in_tile_axes(image.roles, background.fields)
    provenance = _provenance(plan, flat, background, pyramid, status="writing")
    try:
        group = create_image_group(plan.output, plan.zarr_format, {PROVENANCE_KEY: provenance})
        paths = [str(i) for i in range(len(pyramid))]
        shards = level.shards if plan.zarr_format == 3 else None
        targets = [
            create_level_array(group, p, lv.shape, level.chunks, level.dtype, image.axis_names, shards)
            for p, lv in zip(paths, pyramid)
        ]
        # written in blocks of the arrays' shards (or chunks), so no two tasks write into the same one;
        # float tiles: each chunk checked for NaN / ±inf as it streams
        where = f"tile {plan.tile} level {level.path}"
        stores = stored_correction(
            source, ff, bg, pyramid, targets, on_block=on_block, where=where, axis_names=image.axis_names
        )
        with graph_constants_allowed():
            compute(*stores)
        for stray in remove_interrupted_chunk_writes(plan.output):
            log(f"{plan.name}: removed {stray}, left by a writer lost mid-chunk (its chunk was rewritten)")
        write_multiscales(
            group,
            image.axes,
            [(p, lv.scale, lv.translation) for p, lv in zip(paths, pyramid)],
            name=image.multiscale_name or plan.name,
            omero=image.omero,
            metadata={
                "method": "block mean (float32, rounded to the tile's dtype)",
                "description": "flatfield-corrected by shadeflow",
            },
        )
        seconds = time.perf_counter() - started
        provenance = _provenance(plan, flat, background, pyramid, status="complete", seconds=seconds)
        group.attrs[PROVENANCE_KEY] = provenance
        _write_marker(plan, provenance)
    except BaseException:
        # leave nothing half-written behind when we can (a crash leaves a recognisable partial output)
        try:
            storage.remove(plan.output)
        except Exception:
            pass
        raise
    return _finish(report, plan, seconds)


def _finish(report: TileReport, plan: TilePlan, seconds: float) -> TileReport:
    level = plan.level
    report.status = "written"
    report.seconds = round(seconds, 2)
    # 3 significant digits: small tiles stay non-zero
    report.mb_per_s = float(f"{math.prod(level.shape) * level.dtype.itemsize / 1e6 / max(seconds, 1e-9):.3g}")
    return report


def _output_pyramid(plan: TilePlan, halve_z: bool = True) -> list:
    """The output levels in the tile's own axes (those of t, c, z, y, x it has)."""
    image, level = plan.image, plan.level
    roles = image.roles
    levels = plan_pyramid(
        tuple(image.size(r, level.index) for r in CANONICAL),
        _canonical(level.scale, roles, 1.0),
        _canonical(level.translation, roles, 0.0),
        plan.recorded["levels"],
        halve_z=halve_z,
    )
    return select_axes(levels, [i for i, r in enumerate(CANONICAL) if r in roles])


def _in_tile_axes(roles, fields: np.ndarray) -> np.ndarray:
    """(C, Y, X) fields as an array broadcastable to the tile: size 1 along t and z, C along c."""
    return fields[None, :, None][tuple(slice(None) if r in roles else 0 for r in CANONICAL)]


def _write_tiff(plan: TilePlan, flat: Flatfield, background: Background, compute, on_block, started) -> float:
    """A TIFF tile's correction, written as one OME-TIFF (:mod:`.tiff_output`); returns the seconds taken."""
    image = plan.image
    assert isinstance(image, TiffImage)
    pyramid = _output_pyramid(plan, halve_z=False)  # an OME-TIFF sub-resolution holds one plane
    ff, bg = _in_tile_axes(image.roles, flat.fields), _in_tile_axes(image.roles, background.fields)
    # the file carries its provenance from the first write on, so it is complete when it appears
    provenance = {**_provenance(plan, flat, background, pyramid, status="complete"), "inputs": [plan.tile]}
    description = (
        f"flatfield-corrected by shadeflow {provenance['shadeflow_version']} (flatfield {flat.summary}; "
        f"background {background.summary})"
    )
    with graph_constants_allowed():
        write_corrected_tiff(
            plan.output,
            image,
            pyramid,
            ff,
            bg,
            tiff_metadata(image, pyramid, description, provenance),
            f"shadeflow {provenance['shadeflow_version']}",
            compute,
            on_block=on_block,
            where=f"tile {plan.tile}",
        )
    return time.perf_counter() - started


def _canonical(values: tuple, roles: tuple[str, ...], missing) -> tuple:
    by_role = dict(zip(roles, values))
    return tuple(by_role.get(r, missing) for r in CANONICAL)


def _provenance(
    plan: TilePlan,
    flat: Flatfield,
    background: Background,
    pyramid,
    status: str,
    seconds: float | None = None,
) -> dict[str, Any]:
    image, level = plan.image, plan.level
    if plan.is_tiff:
        source = {
            "url": plan.tile,
            "format": f"{image.kind} TIFF",
            "axes": image.file_axes,
            "shape": list(level.shape),
            "dtype": str(level.dtype),
        }
        output = {"format": OME_TIFF, "levels": [list(lv.shape) for lv in pyramid], "pyramid": "SubIFDs, y/x"}
    else:
        source = {
            "url": plan.tile,
            "level": level.path,
            "shape": list(level.shape),
            "dtype": str(level.dtype),
            "ngff_version": image.ngff_version,
            "zarr_format": image.zarr_format,
            **({"missing_chunks_read_as_fill_value": plan.missing_chunks} if plan.missing_chunks else {}),
        }
        output = {
            "ngff_version": NGFF_FOR_ZARR[plan.zarr_format],
            "zarr_format": plan.zarr_format,
            "levels": [list(lv.shape) for lv in pyramid],
        }
    return {
        "kind": KIND,
        "status": status,
        "shadeflow_version": shadeflow_version(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": source,
        "output": output,
        "formula": "out = clip(rint((in - background) / flatfield), dtype range), float32; floats not "
        "rounded or clipped",
        "flatfield": {"summary": flat.summary, **_jsonable(flat.details)},
        "background": {"summary": background.summary, **_jsonable(background.details)},
        "parameters": plan.recorded,
        **({"seconds": round(seconds, 3)} if seconds is not None else {}),
    }


def _jsonable(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda v: v.tolist() if isinstance(v, np.ndarray) else str(v))
    )


def _write_marker(plan: TilePlan, provenance: dict[str, Any]) -> None:
    files = storage.file_sizes(plan.output)
    manifest = {
        "kind": KIND,
        "shadeflow_version": provenance["shadeflow_version"],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "parameters": plan.recorded,
        "inputs": [plan.tile],
        "flatfield": provenance["flatfield"],
        "background": provenance["background"],
        "output": provenance["output"],
        "n_files": len(files),
        "bytes": sum(files.values()),
    }
    storage.write_text(storage.join(plan.output, MANIFEST), json.dumps(manifest, indent=2))


def report_dict(report: TileReport) -> dict[str, Any]:
    return asdict(report)
