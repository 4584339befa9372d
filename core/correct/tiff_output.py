"""A TIFF tile's output: one OME-TIFF file, ``<out>/<stem>.ome.tif``, looking complete only when it is.

- The corrected planes are computed on the cluster a window of Dask blocks at a time (the same
  correction graph as an OME-Zarr tile, :func:`~.graph.correction_pyramid`) and written page by page,
  in order, to ``<out>/.<stem>.ome.tif.partial``; only that window is ever held in memory.
- With ``levels`` > 1 the pyramid is stored as OME-TIFF SubIFDs. An OME-TIFF sub-resolution belongs to
  one plane, so every level halves y and x only (never z); each level is the float32 block mean of the
  one before it, rounded to the tile's dtype (:func:`~.graph.downsample_block`, as for OME-Zarr). A
  TIFF holds all of level 0 before any SubIFD page, so the coarser pages wait in a scratch folder
  ``<out>/.<stem>.ome.tif.partial-levels`` (a third of the output's size at most) until level 0 is
  written.
- The provenance (what the OME-Zarr path stores in its attributes and ``shadeflow.json``) travels in
  the file: an OME ``CommentAnnotation`` with namespace :data:`PROVENANCE_NAMESPACE` holding the JSON,
  and a one-line ``Description`` of the image.
- Last, the file is renamed to its final name. A final name whose annotation says ``corrected-tile``
  is *complete*; a leftover ``.partial`` file or folder is *partial* (removed and redone by a rerun); a
  final name without the annotation is *foreign*.

Pages are written uncompressed (readable everywhere; microscopy stacks are usually stored so), as
BigTIFF when the output may pass 2 GiB.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..io.tiffstack import TiffImage, ome_unit
from .graph import PyramidLevel, correction_pyramid, downsample_block

PROVENANCE_NAMESPACE = "shadeflow/provenance"
#: how many bytes of corrected blocks the writer asks the cluster for at a time (what it holds)
WINDOW_BYTES = 64 * 2**20
_BIGTIFF_FROM = 2**31


def partial_paths(output: str) -> tuple[str, str]:
    """The file being written and the scratch folder of the coarser levels, beside the output."""
    folder, name = os.path.split(output)
    return os.path.join(folder, f".{name}.partial"), os.path.join(folder, f".{name}.partial-levels")


def read_tiff_manifest(output: str) -> dict[str, Any]:
    """The provenance recorded in a corrected OME-TIFF (``{}`` when there is none or it cannot be read)."""
    import tifffile

    try:
        with tifffile.TiffFile(output) as tif:
            ome = tifffile.xml2dict(tif.ome_metadata) if tif.ome_metadata else {}
    except Exception:
        return {}
    annotations = (ome.get("OME") or {}).get("StructuredAnnotations") or {}
    comments = annotations.get("CommentAnnotation") or []
    for comment in [comments] if isinstance(comments, dict) else comments:
        if isinstance(comment, dict) and comment.get("Namespace") == PROVENANCE_NAMESPACE:
            try:
                value = json.loads(str(comment.get("Value", "")))
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}


def tiff_output_state(output: str, kind: str) -> str:
    """``absent``, ``complete`` (ours, renamed into place), ``partial`` (ours, unfinished) or ``foreign``."""
    if os.path.lexists(output):
        return "complete" if read_tiff_manifest(output).get("kind") == kind else "foreign"
    return "partial" if any(os.path.lexists(p) for p in partial_paths(output)) else "absent"


def remove_tiff_output(output: str) -> None:
    """The output and anything an interrupted run left beside it."""
    for path in (output, *partial_paths(output)):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)


def tiff_metadata(image: TiffImage, pyramid: list[PyramidLevel], description: str, provenance: dict) -> dict:
    """tifffile's OME metadata of the output: axes, physical sizes when known, channel names, provenance."""
    roles = image.roles
    meta: dict[str, Any] = {"axes": "".join(r.upper() for r in roles), "Name": image.multiscale_name}
    for role in ("z", "y", "x"):
        if role in roles and role in image.units:
            meta[f"PhysicalSize{role.upper()}"] = pyramid[0].scale[roles.index(role)]
            meta[f"PhysicalSize{role.upper()}Unit"] = ome_unit(image.units[role])
    if image.channel_names:
        meta["Channel"] = {"Name": list(image.channel_names)}
    meta["Description"] = description
    meta["CommentAnnotation"] = {"Namespace": PROVENANCE_NAMESPACE, "Value": json.dumps(provenance)}
    return meta


def write_corrected_tiff(
    output: str,
    image: TiffImage,
    pyramid: list[PyramidLevel],
    flatfield: np.ndarray,
    background: np.ndarray,
    metadata: dict[str, Any],
    software: str,
    compute: Callable,
    on_block: Callable[[], None] | None = None,
    where: str | None = None,
    window_bytes: int | None = None,
) -> None:
    """Correct ``image`` and write it with its ``pyramid`` (y/x-only levels) to ``output`` (module
    description). Anything half-written is removed when a block fails; the caller removes an
    earlier output first."""
    import tifffile

    level = image.levels[0]
    dtype = np.dtype(level.dtype)
    (corrected,) = correction_pyramid(
        image.dask_array(level),
        flatfield,
        background,
        pyramid[:1],
        level.chunks,
        on_block=on_block,
        where=where,
        axis_names=image.axis_names,
    )
    temp, scratch_dir = partial_paths(output)
    n_pages = math.prod(level.shape[:-2])
    total = sum(math.prod(lv.shape) for lv in pyramid) * dtype.itemsize
    try:
        scratch = []
        if len(pyramid) > 1:
            os.makedirs(scratch_dir)
            # plain files, written and read a page at a time (a memory map would count in the memory used)
            scratch = [os.path.join(scratch_dir, f"level{k}.raw") for k in range(1, len(pyramid))]
        pages = _corrected_pages(corrected, scratch, compute, window_bytes or WINDOW_BYTES)
        with tifffile.TiffWriter(temp, bigtiff=total >= _BIGTIFF_FROM, ome=True) as tif:
            tif.write(
                pages,
                shape=pyramid[0].shape,
                dtype=dtype,
                photometric="minisblack",
                subifds=len(pyramid) - 1 or None,
                metadata=metadata,
                software=software,
            )
            for lv, stored in zip(pyramid[1:], scratch):
                tif.write(
                    _stored_pages(stored, n_pages, lv.shape[-2:], dtype),
                    shape=lv.shape,
                    dtype=dtype,
                    photometric="minisblack",
                    subfiletype=1,
                )
        os.replace(temp, output)  # the output exists only once it is whole
    except BaseException:
        for path in (temp, scratch_dir):
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else _unlink(path)
        raise
    shutil.rmtree(scratch_dir, ignore_errors=True)


def _unlink(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _corrected_pages(corrected, scratch: list[str], compute, window_bytes: int) -> Iterator[np.ndarray]:
    """Level-0 pages in file order (t, c, z), a window of blocks computed at a time; each page's coarser
    levels are appended to the ``scratch`` files on the way."""
    grid = list(np.ndindex(*corrected.numblocks))  # C order over (t, c, z) blocks = page order
    block_bytes = math.prod(max(c) for c in corrected.chunks) * corrected.dtype.itemsize
    per_window = max(1, window_bytes // max(block_bytes, 1))
    files = [open(path, "wb") for path in scratch]
    try:
        for start in range(0, len(grid), per_window):
            blocks = compute(*(corrected.blocks[index] for index in grid[start : start + per_window]))
            for block in blocks:
                planes = np.asarray(block).reshape(-1, *block.shape[-2:])
                reduced = planes
                for file in files:
                    reduced = downsample_block(reduced, (1, 2, 2))
                    file.write(np.ascontiguousarray(reduced).tobytes())
                yield from planes
    finally:
        for file in files:
            file.close()


def _stored_pages(path: str, n_pages: int, shape: tuple[int, int], dtype: np.dtype) -> Iterator[np.ndarray]:
    with open(path, "rb") as file:
        for _ in range(n_pages):
            yield np.fromfile(file, dtype, count=math.prod(shape)).reshape(shape)
