"""Flatfield correction of a tile, chunk by chunk, and its multiscale pyramid, as one Dask graph.

The formula, per voxel, in float32:

.. math:: out = \\mathrm{clip}\\big(\\mathrm{rint}((in - B) / F),\\ \\text{dtype range}\\big)

with B the background (a number or a YX field per channel) and F the flatfield (a YX field per
channel, the same for every z plane and time point). Integer outputs are rounded half to even
(``numpy.rint``) and clipped to the dtype's range; float32 outputs are neither rounded nor clipped.

The pyramid halves y and x at every level and z too where the voxel size allows (see
:func:`plan_pyramid`); each level is the block mean of the previous one, computed in float32 and
rounded back to the tile's dtype. Level k is built from level k−1's Dask array, so level 0 is read
from storage once and never held whole: every task touches one chunk (or the few chunks of one
coarser chunk).

Two ways to the same voxels: :func:`correction_pyramid` returns every level as a Dask array (the
OME-TIFF writer takes level 0 from it); :func:`stored_correction` writes the levels into zarr arrays
itself, the task that writes a block also reducing it for the next level, so that a chunk is read,
corrected, written and halved in one task (the OME-Zarr path).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..io.omezarr import TileError

#: the z axis is halved together with y and x while its voxel is at most this many times the yx voxel
Z_ANISOTROPY_LIMIT = 2.0


def graph_constants_allowed():
    """A context in which Dask's distributed client does not warn about graph size: the flatfield and
    background pieces ride in the graph (4 bytes per pixel and channel, 16 MiB for a 2048×2048
    tile), which is what they are for. Only touches the setting when distributed is in use (setting
    it earlier would shadow distributed's own defaults)."""
    import contextlib
    import sys

    if "distributed" not in sys.modules:
        return contextlib.nullcontext()
    import dask

    return dask.config.set({"distributed.admin.large-graph-warning-threshold": "1GiB"})


def dtype_range(dtype: np.dtype) -> tuple[float, float] | None:
    """(min, max) of an integer dtype; ``None`` for floats (not clipped)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return None


def correct_block(
    block: np.ndarray, flatfield: np.ndarray, background: np.ndarray | float, dtype: np.dtype | None = None
) -> np.ndarray:
    """Background-subtract and flatfield-divide one chunk: ``clip(rint((block − B) / F))``.

    Parameters
    ----------
    block : ndarray
        A chunk whose last two axes are y and x (any leading axes).
    flatfield : ndarray
        float32, broadcastable to ``block`` (e.g. ``(1, C, 1, Y, X)`` for a ``(T, C, Z, Y, X)`` block).
    background : ndarray or float
        float32, broadcastable to ``block`` (a field like ``flatfield``, per-channel values, or one number).
    dtype : dtype, optional
        Output dtype (default: the block's). Integers are rounded half to even and clipped to their range.

    Returns
    -------
    ndarray
        The corrected chunk. Every arithmetic step is float32, exactly as
        ``np.clip(np.rint((x.astype(np.float32) - B) / F), lo, hi).astype(dtype)``; it works one
        (y, x) plane at a time so no float32 copy of the whole chunk is made.

    Examples
    --------
    >>> correct_block(np.array([[110, 210]], np.uint16), np.array([[0.5, 2.0]], np.float32), 10.0)
    array([[200, 100]], dtype=uint16)
    """
    return _correct_planes(block, flatfield, background, np.dtype(dtype or block.dtype), None)[0]


def correct_and_reduce_block(
    block: np.ndarray,
    flatfield: np.ndarray,
    background: np.ndarray | float,
    factors: tuple[int, ...],
    dtype: np.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``correct_block(block, …)`` and ``downsample_block`` of it over ``factors``, in one pass: each
    corrected plane is reduced while it is in the cache instead of reading the corrected chunk again.

    Only for outputs whose block sums are exact in float32 (integers of at most 16 bits): the sums
    are then gathered plane by plane, in another order than :func:`downsample_block`'s, with the same
    result.
    """
    dtype = np.dtype(dtype or block.dtype)
    if not _exact_sums(dtype, factors):
        raise ValueError(f"block sums of {dtype} over {factors} are not exact in float32; reduce separately")
    out, acc = _correct_planes(block, flatfield, background, dtype, factors)
    acc *= np.float32(1.0 / math.prod(factors))
    np.rint(acc, out=acc)
    return out, acc.astype(dtype)


def _correct_planes(block, flatfield, background, dtype: np.dtype, factors) -> tuple[np.ndarray, np.ndarray]:
    """The corrected block and, for ``factors``, the float32 block sums of it (else ``None``)."""
    flatfield, background = (
        _leading_ones(np.asarray(a, np.float32), block.ndim) for a in (flatfield, background)
    )
    limits = dtype_range(dtype)
    out = np.empty(block.shape, dtype)
    plane = np.empty(block.shape[-2:], np.float32)
    acc = None
    if factors is not None:
        reduced = tuple(n // f for n, f in zip(block.shape, factors))
        acc = np.zeros(reduced, np.float32)
        lead, yx = factors[:-2], factors[-2:]
        kept = tuple(m * f for m, f in zip(reduced[:-2], lead))  # planes past the last whole block: dropped
    for index in np.ndindex(block.shape[:-2]):
        # pick the matching (y, x) plane of the flatfield and background (size-1 axes broadcast)
        ff = flatfield[tuple(i if n > 1 else 0 for i, n in zip(index, flatfield.shape[:-2]))]
        bg = background[tuple(i if n > 1 else 0 for i, n in zip(index, background.shape[:-2]))]
        np.subtract(block[index], bg, out=plane, dtype=np.float32)
        np.divide(plane, ff, out=plane)
        if limits is not None:
            np.rint(plane, out=plane)
            np.clip(plane, limits[0], limits[1], out=plane)
        out[index] = plane
        if acc is not None and all(i < k for i, k in zip(index, kept)):
            # sums of the stored values (exact), added to the block they belong to
            slot = acc[tuple(i // f for i, f in zip(index, lead))]
            np.add(slot, _axis_sums(out[index], yx, slot.shape), out=slot)
    return out, acc


def _leading_ones(a: np.ndarray, ndim: int) -> np.ndarray:
    return a.reshape((1,) * (ndim - a.ndim) + a.shape)


def downsample_block(block: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Block mean over ``factors`` (one per axis; 1 keeps the axis), keeping the dtype.

    Trailing rows that do not fill a block are dropped (so a level has ``floor(n / f)`` pixels and
    level k's pixel i is exactly the mean of pixels f·i … f·i+f−1 of level k−1). The mean is float32,
    rounded half to even for integer dtypes.
    """
    out_shape = tuple(n // f for n, f in zip(block.shape, factors))
    if _exact_sums(block.dtype, factors):
        acc = _axis_sums(block, factors, out_shape)
    else:
        acc = np.zeros(out_shape, np.float32)
        for offsets in np.ndindex(*factors):
            view = block[tuple(slice(o, o + f * m, f) for o, f, m in zip(offsets, factors, out_shape))]
            np.add(acc, view, out=acc, dtype=np.float32)
    acc *= np.float32(1.0 / math.prod(factors))
    if np.dtype(block.dtype).kind in "ui":
        np.rint(acc, out=acc)
    return acc.astype(block.dtype, copy=False)


def _exact_sums(dtype: np.dtype, factors: tuple[int, ...]) -> bool:
    """Whether every float32 sum of ``prod(factors)`` values of ``dtype`` is exact (integers of at most
    16 bits, at most 256 of them: below 2**24), so the order of the additions cannot change it."""
    dtype = np.dtype(dtype)
    return dtype.kind in "ui" and dtype.itemsize <= 2 and math.prod(factors) <= 256


def _axis_sums(block: np.ndarray, factors: tuple[int, ...], out_shape: tuple[int, ...]) -> np.ndarray:
    """The float32 block sums, one axis at a time (each pass reads a smaller array than the last, where
    summing the ``prod(factors)`` strided views one by one reads the whole block every time). Only for
    :func:`_exact_sums` dtypes: the additions are in another order than :func:`downsample_block`'s
    general loop, which cannot matter when every sum is exact."""
    acc: np.ndarray = block[tuple(slice(0, m * f) for m, f in zip(out_shape, factors))]
    for axis, f in enumerate(factors):
        if f == 1:
            continue
        views = [acc[(slice(None),) * axis + (slice(o, None, f),)] for o in range(f)]
        total = np.add(views[0], views[1], dtype=np.float32)
        for view in views[2:]:
            np.add(total, view, out=total)
        acc = total
    if acc.dtype != np.float32:  # every factor was 1
        acc = acc.astype(np.float32)
    return acc


@dataclass(frozen=True)
class PyramidLevel:
    """One output level: shape, factor relative to the previous level, and its NGFF transform (t, c, z, y,
    x)."""

    shape: tuple[int, ...]
    factors: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]


def select_axes(levels: list[PyramidLevel], keep: list[int]) -> list[PyramidLevel]:
    """The levels of a (t, c, z, y, x) plan restricted to the axes ``keep`` (a tile's own axes)."""
    pick = lambda values: tuple(values[i] for i in keep)  # noqa: E731
    return [
        PyramidLevel(pick(lv.shape), pick(lv.factors), pick(lv.scale), pick(lv.translation)) for lv in levels
    ]


def plan_pyramid(
    shape: tuple[int, ...],
    scale: tuple[float, ...],
    translation: tuple[float, ...],
    n_levels: int,
    halve_z: bool = True,
) -> list[PyramidLevel]:
    """Shapes, factors, scales and translations of ``n_levels`` levels of a (t, c, z, y, x) image.

    Every level halves y and x. It halves z too when z has at least 2 planes and its voxel size is at
    most :data:`Z_ANISOTROPY_LIMIT` × the (larger) yx voxel size of the level being reduced, so
    voxels never become more than 2:1 anisotropic through the pyramid (a thin-sheet tile with
    z 4 µm, yx 1 µm keeps its z until yx reaches 2 µm). Translations follow the block centres:
    ``t_k = t_{k−1} + (f − 1)/2 · s_{k−1}``. ``halve_z=False`` keeps z at every level (OME-TIFF
    sub-resolutions belong to one plane each).

    Raises
    ------
    ValueError
        When y or x would shrink below one pixel; the message says how many levels fit.
    """
    if n_levels < 1:
        raise ValueError(f"need at least one level, got {n_levels}")
    levels = [PyramidLevel(tuple(shape), (1,) * len(shape), tuple(scale), tuple(translation))]
    for k in range(1, n_levels):
        prev = levels[-1]
        _, _, nz, ny, nx = prev.shape
        if ny < 2 or nx < 2:
            raise ValueError(
                f"a {shape[3]}×{shape[4]} (y×x) image has room for {k} pyramid level{'s' if k > 1 else ''}, "
                f"not {n_levels}"
            )
        yx_voxel = max(prev.scale[3], prev.scale[4])
        fz = 2 if halve_z and nz >= 2 and prev.scale[2] <= Z_ANISOTROPY_LIMIT * yx_voxel else 1
        factors = (1, 1, fz, 2, 2)
        new_shape = tuple(n // f for n, f in zip(prev.shape, factors))
        new_scale = tuple(s * f for s, f in zip(prev.scale, factors))
        new_translation = tuple(t + (f - 1) / 2 * s for t, s, f in zip(prev.translation, prev.scale, factors))
        levels.append(PyramidLevel(new_shape, factors, new_scale, new_translation))
    return levels


def non_finite_voxels(block: np.ndarray) -> np.ndarray | None:
    """Indices (n, ndim) of the NaN / ±inf voxels of a float block, or ``None`` when it has none.

    One float64 sum decides (no temporary the size of the block; float32 values cannot overflow a
    float64 sum); only a block that fails is searched."""
    if np.dtype(block.dtype).kind != "f" or np.isfinite(np.sum(block, dtype=np.float64)):
        return None
    bad = np.argwhere(~np.isfinite(block))
    return bad if len(bad) else None


def check_finite(
    block: np.ndarray, where: str, axis_names: tuple[str, ...], start: tuple[int, ...] = ()
) -> None:
    """Refuse a chunk holding NaN or ±inf: a corrected tile would carry them into every pyramid level
    (and a background or flatfield estimated from it would be NaN). ``start``: the chunk's origin in
    the level, so the message names voxels as the level counts them.

    Raises
    ------
    TileError
        Naming ``where``, the chunk's extent and the first bad voxel.
    """

    bad = non_finite_voxels(block)
    if bad is None:
        return
    start = tuple(start) or (0,) * block.ndim
    extent = ", ".join(f"{a} {s}–{s + n - 1}" for a, s, n in zip(axis_names, start, block.shape))
    first = ", ".join(f"{a}={s + i}" for a, s, i in zip(axis_names, start, bad[0]))
    raise TileError(
        f"{where}: the chunk at {extent} holds {len(bad)} non-finite value{'s' if len(bad) != 1 else ''} "
        f"(NaN or ±inf), the first at {first}; "
        "non-finite voxels cannot be corrected — fix or replace them in the input"
    )


def _correct_chunk(block, flatfield, background, *, dtype, on_block, check, block_info=None):
    if check is not None:  # (where, axis names): float tiles only
        origin = tuple(lo for lo, _ in block_info[0]["array-location"]) if block_info else ()
        check_finite(block, check[0], check[1], origin)
    out = correct_block(block, flatfield, background, dtype)
    if on_block is not None:
        on_block()
    return out


def _aligned_chunks(
    chunks: tuple[tuple[int, ...], ...], factors: tuple[int, ...]
) -> tuple[tuple[int, ...], ...]:
    """Chunks whose every block but the last along each axis is a multiple of that axis's factor."""
    aligned = []
    for sizes, f in zip(chunks, factors):
        if f == 1 or all(s % f == 0 for s in sizes[:-1]):
            aligned.append(sizes)
            continue
        step = max(f, (max(sizes) // f) * f)
        n = sum(sizes)
        aligned.append(tuple(min(step, n - i) for i in range(0, n, step)))
    return tuple(aligned)


def chunked_constant(array: np.ndarray, chunks: tuple[tuple[int, ...], ...]):
    """A Dask array of ``array`` split like ``chunks`` (axes of length 1 stay whole, to broadcast),
    each piece a literal in the graph: no task per piece, and each task gets only its own piece of,
    say, a flatfield."""
    import itertools

    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    axes = [tuple(sizes) if n > 1 else (1,) for sizes, n in zip(chunks, array.shape)]
    bounds = [np.cumsum((0,) + sizes) for sizes in axes]
    name = "constant-" + tokenize(array, axes)
    graph = {
        (name, *index): array[tuple(slice(b[i], b[i + 1]) for b, i in zip(bounds, index))]
        for index in itertools.product(*(range(len(sizes)) for sizes in axes))
    }
    return da.Array(
        HighLevelGraph.from_collections(name, graph, dependencies=()), name, tuple(axes), dtype=array.dtype
    )


def correction_pyramid(
    source,
    flatfield: np.ndarray,
    background: np.ndarray,
    levels: list[PyramidLevel],
    chunks: tuple[int, ...],
    on_block: Callable[[], None] | None = None,
    where: str | None = None,
    axis_names: tuple[str, ...] | None = None,
) -> list:
    """Dask arrays of every output level of a corrected tile, sharing one graph.

    Parameters
    ----------
    source : dask.array.Array
        The input level in the tile's own axes (any of t, c, z, then y, x), chunked like its zarr array.
    flatfield : ndarray
        float32 of the same number of dimensions, broadcastable to ``source`` (e.g. ``(1, C, 1, Y, X)``
        for ``tczyx``): one (Y, X) field per channel, the same for every z and t.
    background : ndarray
        float32, broadcastable like ``flatfield`` (a field per channel, or one value per channel).
    levels : list of PyramidLevel
        One per output level, with shapes and factors in the tile's axes.
    chunks : tuple of int, or one per level
        Dask block shape of the output levels (clamped to each level's shape): the zarr chunks, or
        the shards of sharded outputs.
    on_block : callable, optional
        Called after each level-0 chunk is corrected (progress reporting on the workers).
    where, axis_names : str and tuple of str, optional
        For float tiles: every input chunk is checked for NaN / ±inf as it streams through, and a bad
        one fails the computation with a :class:`~shadeflow.core.io.omezarr.TileError` that starts
        with ``where`` (e.g. ``tile URL level 0``) and names the voxels by ``axis_names``.
    """
    corrected = corrected_level(source, flatfield, background, on_block, where, axis_names)
    return reduced_levels(corrected, levels, chunks)


def corrected_level(
    source,
    flatfield: np.ndarray,
    background: np.ndarray,
    on_block: Callable[[], None] | None = None,
    where: str | None = None,
    axis_names: tuple[str, ...] | None = None,
):
    """The corrected level 0 as a Dask array chunked like ``source`` (parameters as
    :func:`correction_pyramid`)."""
    import dask.array as da

    dtype = source.dtype
    ff = chunked_constant(np.asarray(flatfield, np.float32), source.chunks)
    bg = chunked_constant(np.asarray(background, np.float32), source.chunks)
    check = (
        (where, tuple(axis_names or (f"axis {i}" for i in range(source.ndim))))
        if where and np.dtype(dtype).kind == "f"
        else None
    )
    if on_block is None and check is None:
        return da.map_blocks(correct_block, source, ff, bg, dtype, dtype=dtype, token="shadeflow-correct")
    # bound, not passed as arguments: Dask would walk a tuple argument looking for tasks and keys
    chunk = functools.partial(_correct_chunk, dtype=dtype, on_block=on_block, check=check)
    return da.map_blocks(chunk, source, ff, bg, dtype=dtype, token="shadeflow-correct")


def stored_correction(
    source,
    flatfield: np.ndarray,
    background: np.ndarray,
    levels: list[PyramidLevel],
    targets: list,
    on_block: Callable[[], None] | None = None,
    where: str | None = None,
    axis_names: tuple[str, ...] | None = None,
) -> list:
    """Dask arrays whose computation corrects ``source`` and writes it and its coarser ``levels`` into
    ``targets`` (zarr arrays, one per level); parameters as :func:`correction_pyramid`, result as
    :func:`stored_pyramid`.

    Where it can, one task per chunk reads it, corrects it, writes it and reduces it to its piece of
    level 1 (:func:`correct_and_reduce_block`: integer tiles of at most 16 bits, the input's blocks
    those of level 0's target, and blocks that halve whole); otherwise the corrected level is handed
    to :func:`stored_pyramid`.
    """
    import dask.array as da
    from dask.base import tokenize

    dtype = np.dtype(source.dtype)
    target = targets[0]
    blocks = da.core.normalize_chunks(
        tuple(max(1, min(c, n)) for c, n in zip(target.shards or target.chunks, source.shape)), source.shape
    )
    factors = levels[1].factors if len(levels) > 1 else None
    if (
        factors is None
        or source.chunks != blocks
        or not _exact_sums(dtype, factors)
        or not _reducible(source.chunks, factors)
    ):
        corrected = corrected_level(source, flatfield, background, on_block, where, axis_names)
        return stored_pyramid(corrected, levels, targets)
    ff = chunked_constant(np.asarray(flatfield, np.float32), source.chunks)
    bg = chunked_constant(np.asarray(background, np.float32), source.chunks)
    down = tuple(tuple(s // f for s in sizes) for sizes, f in zip(source.chunks, factors))
    name = f"shadeflow-correct-write-{tokenize(source.name, ff.name, bg.name, str(target.store_path))}"
    task = functools.partial(_correct_write_block, target=target, factors=factors, on_block=on_block)
    pieces = da.map_blocks(
        task, source, ff, bg, chunks=down, meta=np.empty((0,) * source.ndim, dtype), name=name
    )
    return stored_pyramid(pieces, levels[1:], targets[1:])


def _correct_write_block(
    block, flatfield, background, *, target, factors, on_block, block_info=None
) -> np.ndarray:
    """Correct a chunk, write it where it belongs in ``target`` and return its piece of the next level."""
    out, piece = correct_and_reduce_block(block, flatfield, background, factors)
    target[tuple(slice(lo, hi) for lo, hi in block_info[0]["array-location"])] = out
    if on_block is not None:
        on_block()
    return piece


def stored_pyramid(level0, levels: list[PyramidLevel], targets: list) -> list:
    """Dask arrays whose computation writes ``level0`` and the coarser ``levels`` into ``targets`` (zarr
    arrays, one per level); they hold no data (every block is empty), so computing them returns
    nothing worth gathering.

    The same levels as :func:`reduced_levels` (stored with ``dask.array.store``), in fewer tasks: the
    task that writes a block of level k also reduces it to its piece of level k+1 (so a corrected
    chunk is read, corrected, written and halved in one task, and the pyramid never goes back to
    storage). Each level is handed over in blocks of its target's shards (or chunks), so no two tasks
    write into the same one; where a level's blocks cannot be reduced whole (a block size not a
    multiple of the next factor), that level is written by its own tasks and reduced from aligned
    blocks, as :func:`reduced_levels` does.
    """
    import dask.array as da
    from dask.base import tokenize

    dtype = level0.dtype
    # given, so Dask does not call the writing functions on empty arrays to find out what they return
    meta = np.empty((0,) * level0.ndim, dtype)
    sinks = []
    current = level0
    for k, (level, target) in enumerate(zip(levels, targets)):
        blocks = da.core.normalize_chunks(
            tuple(max(1, min(c, n)) for c, n in zip(target.shards or target.chunks, level.shape)), level.shape
        )
        if current.chunks != blocks:
            current = current.rechunk(blocks)
        name = f"shadeflow-write-{tokenize(current.name, str(target.store_path), level.shape)}"
        following = levels[k + 1] if k + 1 < len(levels) else None
        if following is None or not _reducible(current.chunks, following.factors):
            empty = tuple((0,) * len(sizes) for sizes in current.chunks)
            write = functools.partial(_write_block, target=target, factors=None)
            sinks.append(da.map_blocks(write, current, chunks=empty, meta=meta, name=name))
            if following is None:
                break
            # only the reductions of empty remainder blocks are culled: their data is written above
            reduced = _block_means(current, following)
        else:
            down = tuple(tuple(s // f for s in sizes) for sizes, f in zip(current.chunks, following.factors))
            write = functools.partial(_write_block, target=target, factors=following.factors)
            reduced = da.map_blocks(write, current, chunks=down, meta=meta, name=name)
        current = reduced
    return sinks


def _reducible(chunks: tuple[tuple[int, ...], ...], factors: tuple[int, ...]) -> bool:
    """Every block reduces on its own to a non-empty piece of the next level: all blocks but the last
    along each axis are multiples of that axis's factor, and the last is at least the factor. (An empty
    piece would be dropped from the next level, and with it the task that writes its block.)"""
    return all(
        f == 1 or (all(s % f == 0 for s in sizes[:-1]) and sizes[-1] >= f)
        for sizes, f in zip(chunks, factors)
    )


def _write_block(block: np.ndarray, *, target, factors, block_info=None) -> np.ndarray:
    """Write ``block`` where it belongs in ``target``; return its block mean over ``factors`` (the next
    level's piece), or an empty array when there is no next level."""
    target[tuple(slice(lo, hi) for lo, hi in block_info[0]["array-location"])] = block
    if factors is None:
        return np.empty((0,) * block.ndim, block.dtype)
    return downsample_block(block, factors)


def _block_means(previous, level: PyramidLevel):
    """The Dask array of ``level``: block means of ``previous`` over the level's factors, its blocks first
    aligned to them. The last block along an axis may be odd: its trailing row is dropped (floor), which
    the chunk sizes say; the empty blocks a 1-pixel remainder would leave are dropped."""
    import dask.array as da

    aligned = previous.rechunk(_aligned_chunks(previous.chunks, level.factors))
    down = tuple(tuple(s // f for s in sizes) for sizes, f in zip(aligned.chunks, level.factors))
    reduced = da.map_blocks(
        downsample_block,
        aligned,
        level.factors,
        chunks=down,
        dtype=previous.dtype,
        token="shadeflow-downsample",
    )
    if any(0 in sizes for sizes in down):
        reduced = reduced[tuple(slice(0, n) for n in level.shape)]
    return reduced


def reduced_levels(level0, levels: list[PyramidLevel], chunks) -> list:
    """``[level0, level1, …]``: each level the block mean of the previous one's Dask array, rechunked
    to ``chunks`` (one shape for all levels, or one per level)."""
    per_level = (
        list(chunks) if chunks and isinstance(chunks[0], (tuple, list)) else [tuple(chunks)] * len(levels)
    )
    outputs = [
        level0
        if level0.chunksize == tuple(min(c, n) for c, n in zip(per_level[0], level0.shape))
        else level0.rechunk(per_level[0])
    ]
    for level, target_chunks in zip(levels[1:], per_level[1:]):
        reduced = _block_means(outputs[-1], level)
        target = tuple(max(1, min(c, n)) for c, n in zip(target_chunks, level.shape))
        outputs.append(reduced.rechunk(target))
    return outputs
