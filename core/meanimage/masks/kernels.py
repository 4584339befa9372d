"""Compiled (numba) kernels for the per-field masking: one pass over a layer where numpy makes many.

A Vectra field is 35 layers of 1004×1344 pixels. The numpy forms of the steps below make a dozen
full-resolution passes over memory per layer (presmooth, two Laplacian sums, quotient, two block
means); these kernels stream each layer row by row through buffers that stay in the CPU cache and
write only the working-grid results.

- :func:`normalized_laplacian_layer`, :func:`block_mean_layer`, :func:`gaussian_layer` reproduce
  their numpy/scipy versions *bit for bit* — the same float32/float64 operations in the same order —
  so the masks do not change;
- :func:`window_sum_rows` (the 45-px window mean) replaced a float32 FFT convolution; it is the exact
  average to float64 rounding, and differs from the FFT by float32 rounding only.

``tests/test_core_mask_kernels.py`` checks each against its numpy/scipy version on random fields.
Kernels run single-threaded and release the GIL (``nogil``): Dask already runs a field per thread.
They compile on first use (≈ 10 s once) and are cached next to this file (``__pycache__``,
git-ignored; numba falls back to a per-user cache where that is read-only).
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True, boundscheck=False)


def gaussian_taps(sigma: float, truncate: float) -> np.ndarray:
    """The half kernel [w₀, w₁, …, w_r] of ``scipy.ndimage.gaussian_filter`` (same rounding), float64."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (float(sigma) * float(sigma)) * x**2)
    phi /= phi.sum()
    return np.ascontiguousarray(phi[radius:])


@_jit
def _mirror(i: int, n: int) -> int:
    """Index ``i`` reflected about the edge pixels into [0, n) (scipy ``mirror``, numpy ``reflect``)."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i %= period
    return period - i if i >= n else i


MIRROR, NEAREST = 0, 1  # scipy.ndimage border modes of the kernels below


@_jit
def _border(i: int, n: int, mode: int) -> int:
    """Index ``i`` of a border mode (``MIRROR`` or ``NEAREST``) mapped into [0, n)."""
    if mode == NEAREST:
        return min(max(i, 0), n - 1)
    return _mirror(i, n)


@_jit
def _scratch(layer, taps):
    """Per-layer scratch of :func:`_smoothed_row`: float64 copies of the last 2r+1 input rows (each row
    converted once, not once per tap), which row each slot holds, and two float64 rows."""
    w = layer.shape[1]
    radius = taps.size - 1
    rows = np.empty((2 * radius + 1, w), np.float64)
    held = np.full(2 * radius + 1, -1, np.int64)
    column = np.empty(w, np.float64)
    padded = np.empty(w + 2 * radius, np.float64)
    return rows, held, column, padded


@_jit
def _input_row(layer, i, rows, held):
    """Row ``i`` of the layer as float64, from the slot ring (rows needed together never share a slot)."""
    slot = i % rows.shape[0]
    if held[slot] != i:
        src, dst = layer[i], rows[slot]
        for c in range(src.size):
            dst[c] = src[c]
        held[slot] = i
    return rows[slot]


@_jit
def _smoothed_row_7(layer, r, taps, rows, held, centre, padded, out, mode):
    """:func:`_smoothed_row` for 7 taps, the taps summed in registers (same operations, same order)."""
    h, w = layer.shape
    t0, t1, t2, t3 = taps[0], taps[1], taps[2], taps[3]
    a3 = _input_row(layer, _border(r - 3, h, mode), rows, held)
    b3 = _input_row(layer, _border(r + 3, h, mode), rows, held)
    a2 = _input_row(layer, _border(r - 2, h, mode), rows, held)
    b2 = _input_row(layer, _border(r + 2, h, mode), rows, held)
    a1 = _input_row(layer, _border(r - 1, h, mode), rows, held)
    b1 = _input_row(layer, _border(r + 1, h, mode), rows, held)
    middle = padded[3 : 3 + w]
    for c in range(w):
        acc = centre[c] * t0
        acc += (a3[c] + b3[c]) * t3
        acc += (a2[c] + b2[c]) * t2
        acc += (a1[c] + b1[c]) * t1
        middle[c] = np.float32(acc)
    _horizontal_7(padded, taps, out, mode)


@_jit
def _smoothed_row_7_int(layer, r, taps, padded, out):
    """:func:`_smoothed_row_7` (mirror borders) of an integer layer of ≤ 16 bits, the same bits faster.

    Each vertical pair ``x₋ₖ + xₖ`` is an integer exact in int32 and in float64 alike, so it is summed
    as int32 straight from the layer's rows (8 lanes, 2-byte loads) and converted once, instead of
    adding float64 copies of the rows: ~30 % faster.
    """
    h, w = layer.shape
    t0, t1, t2, t3 = taps[0], taps[1], taps[2], taps[3]
    a3, b3 = layer[_mirror(r - 3, h)], layer[_mirror(r + 3, h)]
    a2, b2 = layer[_mirror(r - 2, h)], layer[_mirror(r + 2, h)]
    a1, b1 = layer[_mirror(r - 1, h)], layer[_mirror(r + 1, h)]
    centre = layer[r]
    middle = padded[3 : 3 + w]
    for c in range(w):
        acc = np.float64(centre[c]) * t0
        acc += np.float64(np.int32(a3[c]) + np.int32(b3[c])) * t3
        acc += np.float64(np.int32(a2[c]) + np.int32(b2[c])) * t2
        acc += np.float64(np.int32(a1[c]) + np.int32(b1[c])) * t1
        middle[c] = np.float32(acc)
    _horizontal_7(padded, taps, out, MIRROR)


@_jit
def _horizontal_7(padded, taps, out, mode):
    """The horizontal pass of the 7-tap filter on ``padded[3 : 3 + w]`` (its borders filled here)."""
    w = out.size
    t0, t1, t2, t3 = taps[0], taps[1], taps[2], taps[3]
    middle = padded[3 : 3 + w]
    for k in range(1, 4):
        padded[3 - k] = padded[3 + _border(-k, w, mode)]
        padded[3 + w - 1 + k] = padded[3 + _border(w - 1 + k, w, mode)]
    p0, p1, p2, p4, p5, p6 = (
        padded[:w],
        padded[1 : 1 + w],
        padded[2 : 2 + w],
        padded[4 : 4 + w],
        padded[5 : 5 + w],
        padded[6 : 6 + w],
    )
    for c in range(w):
        acc = middle[c] * t0
        acc += (p0[c] + p6[c]) * t3
        acc += (p1[c] + p5[c]) * t2
        acc += (p2[c] + p4[c]) * t1
        out[c] = np.float32(acc)


@_jit
def _smoothed_row(layer, r, taps, scratch, out, mode=MIRROR):
    """Row ``r`` of the layer smoothed by the separable Gaussian ``taps`` (border ``mode``), into ``out``.

    As ``ndimage.gaussian_filter(..., output=float32)``: the vertical pass is summed in float64 and
    stored as float32, then the horizontal pass reads those float32 values; each output pixel is
    ``x₀w₀ + Σ_{k=r..1} (x₋ₖ + xₖ)wₖ`` (scipy's order for symmetric kernels). Loops run over 1-D row
    views and slices: those vectorise, 2-D indexing does not.
    """
    rows, held, column, padded = scratch
    h, w = layer.shape
    radius = taps.size - 1
    t0 = taps[0]  # a local: read through the array it could alias the output, and not vectorise
    centre = _input_row(layer, r, rows, held)
    if radius == 3:  # the Vectra presmooth (σ = 1 to 3σ): every tap in one loop, the same order
        _smoothed_row_7(layer, r, taps, rows, held, centre, padded, out, mode)
        return
    for c in range(w):
        column[c] = centre[c] * t0
    for k in range(radius, 0, -1):
        above = _input_row(layer, _border(r - k, h, mode), rows, held)
        below = _input_row(layer, _border(r + k, h, mode), rows, held)
        tk = taps[k]
        for c in range(w):
            column[c] += (above[c] + below[c]) * tk
    for c in range(w):  # the vertical pass's float32 result, held as float64
        padded[radius + c] = np.float32(column[c])
    for k in range(1, radius + 1):
        padded[radius - k] = padded[radius + _border(-k, w, mode)]
        padded[radius + w - 1 + k] = padded[radius + _border(w - 1 + k, w, mode)]
    for c in range(w):
        column[c] = padded[radius + c] * t0
    for k in range(radius, 0, -1):
        tk = taps[k]
        left, right = padded[radius - k : radius - k + w], padded[radius + k : radius + k + w]
        for c in range(w):
            column[c] += (left[c] + right[c]) * tk
    for c in range(w):
        out[c] = np.float32(column[c])


@_jit
def _fold_rows(nl, r, h, binning, acc, acc2, out, out2):
    """Add one full-resolution NL row (and its square) to the running block sums; finish a block row.

    ``morphology.bin_mean``'s arithmetic: rows of a block summed in order, then the block's columns,
    then × 1/b²; the edge-padded part repeats the last row or column.
    """
    w = nl.size
    wb = out.shape[0]
    first = r % binning == 0
    for c in range(w):
        v = nl[c]
        if first:
            acc[c] = v
            acc2[c] = v * v
        else:
            acc[c] += v
            acc2[c] += v * v
    for c in range(w, wb * binning):  # columns past the edge repeat the last one
        acc[c] = acc[w - 1]
        acc2[c] = acc2[w - 1]
    last = r == h - 1
    if r % binning == binning - 1 or last:
        if last:  # rows past the edge repeat the last one
            for _ in range(r % binning + 1, binning):
                for c in range(wb * binning):
                    acc[c] += nl[min(c, w - 1)]
                    acc2[c] += nl[min(c, w - 1)] * nl[min(c, w - 1)]
        scale = np.float32(1.0 / (binning * binning))
        for j in range(wb):
            s, s2 = acc[j * binning], acc2[j * binning]
            for i in range(1, binning):
                s += acc[j * binning + i]
                s2 += acc2[j * binning + i]
            if binning > 1:
                s *= scale
                s2 *= scale
            out[j] = s
            out2[j] = s2


@_jit
def normalized_laplacian_layer(layer, taps, binning, out, out2, small_int=False):
    """Block means of NL and NL² of one layer (see ``blur.normalized_laplacian``), into ``out``, ``out2``.

    Parameters
    ----------
    layer
        (H, W) uint16 (or any integer/float) layer, H ≥ 2.
    taps
        Half Gaussian kernel from :func:`gaussian_taps`; ``[1.0]`` for no presmoothing.
    binning
        Block size; ``out`` and ``out2`` are (⌈H/b⌉, ⌈W/b⌉) float32.
    small_int
        The layer holds integers of ≤ 16 bits: a 7-tap presmooth takes :func:`_smoothed_row_7_int`.
    """
    h, w = layer.shape
    scratch = _scratch(layer, taps)
    ring = np.empty((3, w), np.float32)  # smoothed rows r-1, r, r+1 (by index mod 3)
    made = np.full(3, -1, np.int64)  # which mirrored row each ring slot holds
    nl = np.empty(w, np.float32)
    wb = out.shape[1]
    acc = np.empty(wb * binning, np.float32)
    acc2 = np.empty(wb * binning, np.float32)
    four, five, tiny = np.float32(4), np.float32(5), np.float32(np.finfo(np.float32).tiny)
    for r in range(h):
        rows = (_mirror(r - 1, h), r, _mirror(r + 1, h))
        for q in rows:
            if made[q % 3] != q:
                if small_int and taps.size == 4:
                    _smoothed_row_7_int(layer, q, taps, scratch[3], ring[q % 3])
                else:
                    _smoothed_row(layer, q, taps, scratch, ring[q % 3])
                made[q % 3] = q
        up, centre, down = ring[rows[0] % 3], ring[r % 3], ring[rows[2] % 3]
        inside = 0 < r < h - 1
        for c in range(w):  # up + down, then left, then right: the numpy version's order
            nl[c] = up[c] + down[c] if inside else up[c] * np.float32(2)
        nl[0] += centre[1]
        nl[0] += centre[1]
        inner, left, right = nl[1 : w - 1], centre[: w - 2], centre[2:]
        for c in range(w - 2):
            inner[c] += left[c]
            inner[c] += right[c]
        nl[w - 1] += centre[w - 2]
        nl[w - 1] += centre[w - 2]
        for c in range(w):
            neighbours, s = nl[c], centre[c]
            denominator = max(neighbours + s, tiny)
            nl[c] = (neighbours - s * four) * five / denominator
        _fold_rows(nl, r, h, binning, acc, acc2, out[r // binning], out2[r // binning])


@_jit
def window_sum_rows(stack, rows, cols, spans, weight, out):
    """``weight`` × the sum of each layer over a window made of one run of columns per row.

    ``rows``/``cols`` map padded coordinates to the layer's (the border mode, e.g. ``np.pad`` of
    ``arange``); window row ``dy`` covers columns ``spans[dy, 0] … spans[dy, 1]`` (inclusive, in padded
    coordinates relative to the output pixel). Row runs are differences of float64 prefix sums, so a
    13×13 ellipse costs 2 additions per window row instead of 97 products — and the sums are exact to
    ~1e-15 relative, where an FFT convolution in float32 is exact to ~1e-6.
    """
    n, h, w = out.shape
    prefix = np.empty((rows.size, cols.size + 1), np.float64)
    acc = np.empty(w, np.float64)
    for l in range(n):
        layer = stack[l]
        for py in range(rows.size):
            src, p = layer[rows[py]], prefix[py]
            p[0] = 0.0
            for px in range(cols.size):
                p[px + 1] = p[px] + src[cols[px]]
        for y in range(h):
            acc[:] = 0.0
            for dy in range(spans.shape[0]):
                p = prefix[y + dy]
                hi, lo = p[spans[dy, 1] + 1 : spans[dy, 1] + 1 + w], p[spans[dy, 0] : spans[dy, 0] + w]
                for x in range(w):
                    acc[x] += hi[x] - lo[x]
            target = out[l, y]
            for x in range(w):
                target[x] = np.float32(acc[x] * weight)


@_jit
def gaussian_layer(layer, taps, mode, out):
    """``ndimage.gaussian_filter(layer, σ, output=float32, mode=…)`` of one 2-D layer, bit for bit."""
    scratch = _scratch(layer, taps)
    for r in range(layer.shape[0]):
        _smoothed_row(layer, r, taps, scratch, out[r], mode)


@_jit
def block_mean_layer(layer, binning, out):
    """``morphology.bin_mean`` of one integer layer (edge-padded b×b block means), float32, bit for bit.

    Block sums of uint16 values are integers below 2²⁴ for b ≤ 8, exact in float32 in any order, so
    they are summed as integers and scaled once by 1/b² (a power of two: exact too).
    """
    h, w = layer.shape
    hb, wb = out.shape
    rows = np.empty(wb * binning, np.int64)  # a block row's column sums, edge-padded to whole blocks
    scale = np.float32(1.0 / (binning * binning))
    for yb in range(hb):
        rows[:] = 0
        for i in range(binning):
            row = layer[min(yb * binning + i, h - 1)]
            for x in range(w):
                rows[x] += row[x]
            for x in range(w, wb * binning):
                rows[x] += row[w - 1]
        target = out[yb]
        for j in range(wb):
            block = rows[j * binning]
            for k in range(1, binning):
                block += rows[j * binning + k]
            target[j] = np.float32(block) * scale


@_jit
def block_mean_interleaved(raw, tables, table_of, binning, out):
    """:func:`block_mean_layer` of every exposure-corrected layer, straight from the (H, W, L) file layout.

    The thresholds pass needs only the working grid of its edge fields: summing the interleaved pixels
    in place skips the transpose to (L, H, W) and the corrected copy, which cost more than the binning.
    Layer ``l`` is corrected by ``tables[table_of[l]]`` (−1: as it is; see ``exposure.exposure_tables``).
    Block sums are exact integers, so this gives :func:`block_mean_layer`'s bits; out is (L, ⌈H/b⌉, ⌈W/b⌉).
    """
    h, w, n = raw.shape
    _, hb, wb = out.shape
    corrected = np.flatnonzero(table_of >= 0)
    acc = np.empty((wb, n), np.int64)  # a block row's sums, block by layer (the file's order)
    scale = np.float32(1.0 / (binning * binning))
    for yb in range(hb):
        acc[:] = 0
        for i in range(binning):
            row = raw[min(yb * binning + i, h - 1)]
            for x in range(wb * binning):  # columns past the edge repeat the last one
                pixel, block = row[min(x, w - 1)], acc[x // binning]
                for l in range(n):
                    block[l] += pixel[l]
                for l in corrected:  # the table's value instead of the raw one (exact integers)
                    block[l] += np.int64(tables[table_of[l], pixel[l]]) - np.int64(pixel[l])
        for l in range(n):
            target = out[l, yb]
            for j in range(wb):
                target[j] = np.float32(acc[j, l]) * scale


@_jit
def correlate_mirror(stack, dy, dx, weights, out):
    """``ndimage.correlate(stack, kernel[None], mode="mirror")`` of a float32 (L, H, W) stack, bit for bit.

    ``dy``, ``dx``, ``weights`` (float64) are the kernel's non-zero taps in raster order, offsets from
    its centre. As scipy does, each pixel sums ``value × weight`` in float64 in that order and stores
    float32; here the sums run over whole rows at a time (they vectorise, scipy's per-pixel loop does
    not: ~10× faster on the 3×3 window).
    """
    n, h, w = stack.shape
    r = 0
    for k in range(dx.size):
        r = max(r, abs(dx[k]))
    padded = np.empty((h, w + 2 * r), np.float64)  # the layer with mirrored columns
    acc = np.empty(w, np.float64)
    for l in range(n):
        layer = stack[l]
        for y in range(h):
            src, dst = layer[y], padded[y, r : r + w]
            for x in range(w):
                dst[x] = src[x]
            for x in range(1, r + 1):
                padded[y, r - x] = src[_mirror(-x, w)]
                padded[y, r + w - 1 + x] = src[_mirror(w - 1 + x, w)]
        for y in range(h):
            acc[:] = 0.0
            for k in range(weights.size):
                row, weight = padded[_mirror(y + dy[k], h)], weights[k]
                src = row[r + dx[k] : r + dx[k] + w]
                for x in range(w):
                    acc[x] += src[x] * weight
            target = out[l, y]
            for x in range(w):
                target[x] = np.float32(acc[x])
