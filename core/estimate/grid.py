"""The working grid of the shading estimator: block means of each frame, and the smooth basis on it.

Every frame is reduced to the means of square blocks (about :data:`DEFAULT_GRID` across the longer
side; a 1024² frame gives 64×64 blocks of 16×16 px). The model I = S·B + D is linear, so block means
obey it exactly when S and D are smooth; the estimator then works on a few thousand numbers per frame
instead of a million, and reads each frame once.

Invalid pixels never enter a block mean: saturated pixels (at or above the saturation level, by
default the integer dtype's maximum) void their whole block in that frame, and a weight mask gives a
weighted mean with the block's share of weight as its validity.

For the floor method, S and D are expanded in tensor products of Legendre polynomials of total degree
≤ K on [−1, 1]² (pixel centres mapped to the open interval), evaluated exactly at any resolution. For
the surface method they are free values per block, brought to full resolution by bilinear
interpolation between block centres (:func:`full_resolution`); its first iterations may run on
coarser grids (:func:`coarsen`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.polynomial import legendre
from scipy.interpolate import RegularGridInterpolator

from ..errors import InputError

#: blocks across the longer side of a frame (floor method)
DEFAULT_GRID = 64
#: blocks across the longer side of a frame (surface method: fine enough for a sharp aperture edge)
SURFACE_GRID = 128
#: blocks across the longer side of a frame (lines method: α carries an aperture edge at this resolution)
LINES_GRID = 96
#: fewest blocks along either side
MIN_BLOCKS = 8


class EstimateError(InputError):
    """Input the shading estimator cannot use. The message names the input and what was expected."""


@dataclass(frozen=True)
class GridLayout:
    """Square blocks of ``block`` px, ``ny``×``nx`` of them, starting at (``y0``, ``x0``) in a ``shape`` frame
    (the few rows and columns that do not fill a block are left out, evenly on both sides)."""

    shape: tuple[int, int]
    block: int
    ny: int
    nx: int
    y0: int
    x0: int

    @property
    def size(self) -> int:
        return self.ny * self.nx

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Block centres on the [−1, 1] axes the basis uses (y, x)."""
        h, w = self.shape
        cy = (self.y0 + (np.arange(self.ny) + 0.5) * self.block) / h * 2 - 1
        cx = (self.x0 + (np.arange(self.nx) + 0.5) * self.block) / w * 2 - 1
        return cy, cx


def grid_layout(shape: tuple[int, int], grid: int = DEFAULT_GRID) -> GridLayout:
    """Blocks for frames of ``shape`` (module description).

    Raises
    ------
    EstimateError
        Frames too small for :data:`MIN_BLOCKS` blocks of at least one pixel along each side.
    """
    h, w = (int(s) for s in shape)
    if min(h, w) < MIN_BLOCKS:
        raise EstimateError(
            f"images of {h}×{w} px are too small: the estimator needs at least {MIN_BLOCKS} px along each "
            "side"
        )
    block = max(1, max(h, w) // max(grid, MIN_BLOCKS))
    block = min(block, min(h, w) // MIN_BLOCKS)
    ny, nx = h // block, w // block
    return GridLayout((h, w), block, ny, nx, (h - ny * block) // 2, (w - nx * block) // 2)


def block_means(
    frames: np.ndarray, layout: GridLayout, saturation: float | None = None, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Block means of (n, H, W) ``frames`` and each block's validity in [0, 1].

    Parameters
    ----------
    frames : ndarray
        Any real dtype; integers are summed exactly (uint32 / int64), floats in float64.
    saturation : float, optional
        Pixels at or above it void their block in that frame (validity 0).
    mask : ndarray, optional
        Weights, (H, W) for every frame or (n, H, W) per frame; 0 excludes a pixel.

    Returns
    -------
    means : ndarray
        (n, ny·nx) float64; 0 where a block has no valid weight.
    validity : ndarray
        (n, ny·nx) float64: the block's mean weight (1 without a mask), 0 if saturated.

    Raises
    ------
    EstimateError
        Non-finite values in a float frame.
    """
    b, ny, nx = layout.block, layout.ny, layout.nx
    view = frames[:, layout.y0 : layout.y0 + ny * b, layout.x0 : layout.x0 + nx * b]
    n = view.shape[0]
    if view.dtype.kind == "f":
        finite = np.isfinite(view).reshape(n, -1).all(axis=1)
        if not finite.all():
            raise EstimateError(
                f"image {int(np.flatnonzero(~finite)[0])} of the chunk holds non-finite values (NaN or ±inf)"
            )
    if mask is not None:
        m = mask[..., layout.y0 : layout.y0 + ny * b, layout.x0 : layout.x0 + nx * b].astype(np.float64)
        m = np.broadcast_to(m, view.shape)
        wsum = _block_sum(m, b, ny, nx)
        sums = _block_sum(view.astype(np.float64) * m, b, ny, nx)
        validity = wsum / (b * b)
        means = np.divide(sums, wsum, out=np.zeros_like(sums), where=wsum > 0)
    else:
        means = _block_sum(view, b, ny, nx).astype(np.float64) / (b * b)
        validity = np.ones((n, ny * nx))
    if saturation is not None:
        peaks = view.reshape(n, -1).max(axis=1)
        for i in np.flatnonzero(peaks >= saturation):
            hit = _block_sum((view[i : i + 1] >= saturation).astype(np.uint32), b, ny, nx)[0]
            validity[i, hit > 0] = 0.0
    return means, validity


def _block_sum(view: np.ndarray, b: int, ny: int, nx: int) -> np.ndarray:
    """Sum over b×b blocks → (n, ny·nx); rows first (contiguous adds of whole rows), then columns."""
    n = view.shape[0]
    kind = view.dtype.kind
    acc = np.uint64 if kind == "u" else np.int64 if kind in "ib" else np.float64
    if view.dtype.itemsize <= 2 and kind in "ub":
        acc = np.uint32  # 65,535 × 16,384 px still fits
    out = np.empty((n, ny * nx), acc)
    for i in range(n):  # one frame at a time: the partial sums stay in cache
        rows = view[i].reshape(ny, b, nx * b).sum(axis=1, dtype=acc)
        out[i] = rows.reshape(ny, nx, b).sum(axis=2, dtype=acc).reshape(-1)
    return out


# ---------------------------------------------------------------------------------------------
# the smooth basis


def degree_pairs(degree: int) -> list[tuple[int, int]]:
    """(i, j) with i + j ≤ degree: the Legendre products L_i(y)·L_j(x) of the basis, in column order."""
    return [(i, j) for i in range(degree + 1) for j in range(degree + 1 - i)]


def legendre_columns(t: np.ndarray, degree: int) -> np.ndarray:
    """(len(t), degree + 1): L_0(t) … L_degree(t)."""
    return np.stack([legendre.legval(t, [0] * k + [1]) for k in range(degree + 1)], axis=1)


def basis_matrix(cy: np.ndarray, cx: np.ndarray, degree: int) -> np.ndarray:
    """(len(cy)·len(cx), n_terms): the basis at the grid of points cy × cx (y major)."""
    ly, lx = legendre_columns(cy, degree), legendre_columns(cx, degree)
    return np.stack([np.outer(ly[:, i], lx[:, j]).ravel() for i, j in degree_pairs(degree)], axis=1)


def evaluate_field(coefficients: np.ndarray, degree: int, shape: tuple[int, int]) -> np.ndarray:
    """Σ c_ij L_i(y) L_j(x) at every pixel centre of a ``shape`` frame, float64 (separable: two small
    products)."""
    h, w = shape
    ly = legendre_columns((np.arange(h) + 0.5) / h * 2 - 1, degree)
    lx = legendre_columns((np.arange(w) + 0.5) / w * 2 - 1, degree)
    table = np.zeros((degree + 1, degree + 1))
    for c, (i, j) in zip(coefficients, degree_pairs(degree)):
        table[i, j] = c
    return ly @ table @ lx.T


def n_terms(degree: int) -> int:
    return (degree + 1) * (degree + 2) // 2


def laplacian(field: np.ndarray, layout: GridLayout) -> np.ndarray:
    """Finite-difference Laplacian of a grid field (in [−1, 1] units), interior points only."""
    f = field.reshape(layout.ny, layout.nx)
    dy, dx = 2.0 * layout.block / layout.shape[0], 2.0 * layout.block / layout.shape[1]
    lap = np.gradient(np.gradient(f, dy, axis=0), dy, axis=0) + np.gradient(
        np.gradient(f, dx, axis=1), dx, axis=1
    )
    trim = 2 if min(layout.ny, layout.nx) > 6 else 1
    return lap[trim:-trim, trim:-trim].ravel()


# ---------------------------------------------------------------------------------------------
# coarser grids and the way back to full resolution


def coarsen(Y: np.ndarray, V: np.ndarray, layout: GridLayout) -> tuple[np.ndarray, np.ndarray, GridLayout]:
    """Means of 2×2 blocks of a grid (a grid of blocks twice the size; an odd last row or column is left
    out). A coarse block is valid only where all four of its blocks are (a saturated pixel voids it)."""
    n = Y.shape[0]
    ny, nx = layout.ny // 2, layout.nx // 2

    def quads(a):
        return a.reshape(n, layout.ny, layout.nx)[:, : 2 * ny, : 2 * nx].reshape(n, ny, 2, nx, 2)

    Yq, Vq = quads(Y), quads(V)
    weight = Vq.sum(axis=(2, 4))
    means = np.divide((Yq * Vq).sum(axis=(2, 4)), weight, out=np.zeros((n, ny, nx)), where=weight > 0)
    validity = np.where((Vq > 0).all(axis=(2, 4)), weight / 4, 0.0)
    coarse = GridLayout(layout.shape, layout.block * 2, ny, nx, layout.y0, layout.x0)
    return means.reshape(n, -1), validity.reshape(n, -1), coarse


def block_centres(layout: GridLayout) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the blocks in pixel coordinates (y, x)."""
    b = layout.block
    return layout.y0 + (np.arange(layout.ny) + 0.5) * b, layout.x0 + (np.arange(layout.nx) + 0.5) * b


def interpolate(field: np.ndarray, layout: GridLayout, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """A grid field (G,) at the points ys × xs (pixel coordinates): bilinear between block centres,
    extended linearly past the outer centres (the border half-blocks and the left-out rows)."""
    cy, cx = block_centres(layout)
    grid = RegularGridInterpolator(
        (cy, cx), field.reshape(layout.ny, layout.nx), bounds_error=False, fill_value=None
    )
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return grid((yy, xx))


def regrid(field: np.ndarray, source: GridLayout, target: GridLayout) -> np.ndarray:
    """A field of one grid on another grid of the same frames (G_target,)."""
    return interpolate(field, source, *block_centres(target)).ravel()


def full_resolution(field: np.ndarray, layout: GridLayout) -> np.ndarray:
    """A grid field at every pixel centre of the frame (H, W)."""
    h, w = layout.shape
    if layout.block == 1 and (layout.ny, layout.nx) == (h, w):
        return field.reshape(h, w).astype(np.float64, copy=True)
    return interpolate(field, layout, np.arange(h) + 0.5, np.arange(w) + 0.5)


def single_threaded_blas():
    """A context in which BLAS uses one thread: the fit's linear algebra is on ~30×30 systems and thin
    4096×30 matrices, where BLAS threads only contend (measured here: 0.28 s steady with one thread,
    0.3–2.5 s with two while other processes share the cores)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def frames_needed(darkfield: bool) -> int:
    """Fewest frames the estimator accepts: a frame level per frame and a floor per block need repeats."""
    return 16 if darkfield else 8


def describe_layout(layout: GridLayout) -> str:
    return f"{layout.ny}×{layout.nx} blocks of {layout.block}×{layout.block} px"


def relative_rms(estimate: np.ndarray, truth: np.ndarray) -> float:
    """√mean((Ŝ/mean Ŝ)/(S/mean S) − 1)² — the benchmark's flatfield error."""
    r = (estimate / estimate.mean()) / (truth / truth.mean())
    return float(math.sqrt(np.mean((r - 1) ** 2)))
