"""Blur mask of one field: out-of-focus ("folded") tissue and dust (AstroPath §2.3).

Sharpness is the local variance of the *normalised Laplacian* — the Laplacian divided by the local
mean, so it measures texture contrast independently of brightness. It is computed at full
resolution (the cut values refer to it), then averaged over large elliptical windows on the working grid.
"""

from __future__ import annotations

import numpy as np

from ... import morphology as morph
from ...io.slide import LayerGroup
from . import kernels
from .parameters import MaskParameters, WorkingGrid

#: groups whose blur counts most in the fold vote
_HEAVY_GROUPS = ("dapi", "fitc")


def normalized_laplacian(
    image: np.ndarray, presmooth_sigma: float, binning: int
) -> tuple[np.ndarray, np.ndarray]:
    """Block means of NL and NL² on the working grid, where NL = Laplacian ÷ local mean.

    .. math:: NL = \\frac{\\Delta S}{\\bar S_+}, \\qquad \\bar S_+ = \\tfrac15(S + \\text{4 neighbours})

    with S the layer (Gaussian-presmoothed when ``presmooth_sigma`` > 0), the 3×3 Laplacian and the
    cross mean sharing the 4-neighbour sum, and NL = 0 where the local mean is 0. Borders reflect.

    Parameters
    ----------
    image
        (L, H, W) exposure-corrected counts.
    presmooth_sigma
        σ (data pixels) of the smoothing before the Laplacian; 0 for none.
    binning
        Block size of the working grid.
    """
    n_layers, h, w = image.shape
    out_shape = (n_layers, -(-h // binning), -(-w // binning))
    nl_binned, nl2_binned = np.empty(out_shape, np.float32), np.empty(out_shape, np.float32)
    # kernel to 3σ: OpenCV's 9-tap σ=1 kernel has ±4 taps of 1.3e-4; 7 taps are ~20 % faster
    taps = kernels.gaussian_taps(presmooth_sigma, 3.0) if presmooth_sigma > 0 else np.ones(1)
    small_int = image.dtype.kind in "ui" and image.dtype.itemsize <= 2  # exact int32 pair sums
    for i, layer in enumerate(image):
        # one streamed pass per layer; the same float32 arithmetic as the numpy steps
        # (scipy's presmooth, the shared 4-neighbour sum, the quotient, two bin_means), bit for bit
        kernels.normalized_laplacian_layer(layer, taps, binning, nl_binned[i], nl2_binned[i], small_int)
    return nl_binned, nl2_binned


#: windows of at most this many pixels are correlated directly (scipy); larger ones by row-run sums
_DIRECT_WINDOW_MAX = 16


def window_mean(stack: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Mean of each layer over an elliptical window (reflected borders), float32.

    Small windows (the 15-px one is 3×3 on the 4×-binned grid) are direct correlations; larger ones
    sums of row runs (the ellipse is one run of columns per row) in float64
    (:func:`~.kernels.window_sum_rows`). Those replaced a float32 FFT convolution, ~4× slower and
    ~10× further from the exact average: the two differ by float32 rounding only
    (``tests/test_core_mask_kernels.py``).
    """
    if footprint.size == 1:
        return stack
    kernel = (footprint / footprint.sum()).astype(np.float32)
    if footprint.sum() <= _DIRECT_WINDOW_MAX:  # scipy's correlate, bit for bit
        weights = kernel.astype(np.float64)
        dy, dx = np.nonzero(np.abs(weights) > np.finfo(np.float64).eps)  # scipy's taps, raster order
        out = np.empty(stack.shape, np.float32)
        c = np.array(kernel.shape) // 2
        kernels.correlate_mirror(
            np.ascontiguousarray(stack, np.float32), dy - c[0], dx - c[1], weights[dy, dx], out
        )
        return out
    r = footprint.shape[0] // 2
    _, h, w = stack.shape
    mode = "reflect" if min(h, w) > r else "symmetric"
    rows, cols = (np.pad(np.arange(n), r, mode=mode) for n in (h, w))
    used = np.flatnonzero(footprint.any(axis=1))
    spans = np.array([np.flatnonzero(footprint[i])[[0, -1]] for i in used])
    if np.any(np.diff(used) != 1) or any(not footprint[i, a : b + 1].all() for i, (a, b) in zip(used, spans)):
        raise ValueError("window rows must be single runs of pixels (a convex footprint)")
    out = np.empty(stack.shape, np.float32)
    kernels.window_sum_rows(stack, rows[used[0] : used[-1] + h], cols, spans, 1.0 / footprint.sum(), out)
    return out


def sharpness(
    nl: np.ndarray, nl2: np.ndarray, grid: WorkingGrid, params: MaskParameters
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised Laplacian variance over the 45-px window, and its mean over the 15-px window, per layer."""
    window = morph.ellipse(grid.length(params.nlv_window))
    nlv = np.abs(window_mean(nl2, window) - window_mean(nl, window) ** 2)
    return nlv, window_mean(nlv, morph.ellipse(grid.length(params.nlv_mean_window)))


def sharp_layers(
    nlv: np.ndarray,
    nlv_mean: np.ndarray,
    cut: np.ndarray,
    mean_cut: np.ndarray,
    grid: WorkingGrid,
    params: MaskParameters,
) -> np.ndarray:
    """Per-layer sharp masks: variance or its local mean above the cut, then open, close and erode."""
    sharp = (nlv > cut[:, None, None]) | (nlv_mean > mean_cut[:, None, None])
    fp = morph.ellipse(grid.length(params.layer_morph))
    cleaned = morph.erode(
        morph.close(morph.open_(sharp, fp), fp), morph.ellipse(grid.length(params.sharp_erode))
    )
    uniform = sharp.all(axis=(1, 2)) | ~sharp.any(axis=(1, 2))
    cleaned[uniform] = sharp[uniform]
    return cleaned


def morph_filter(
    flagged: np.ndarray,
    tissue: np.ndarray,
    min_pixels: float,
    min_size: float,
    grid: WorkingGrid,
    params: MaskParameters,
) -> np.ndarray:
    """AstroPath's clean-up of a blur flag mask (``get_morphed_and_filtered_mask``).

    Flags near existing flags may grow into tissue along a smoothed version of the mask; then
    regions and holes below ``min_size`` go, and a mask with fewer than ``min_pixels`` flags is cleared.
    """
    ok = ~flagged
    if morph.is_uniform(ok):
        return flagged
    e15 = morph.ellipse(grid.length(params.sharp_erode))
    e45 = morph.ellipse(grid.length(params.nlv_window))
    smoothed_ok = morph.dilate(morph.open_(morph.erode(ok & tissue, e15), e45), e15)
    far_from_flags = morph.erode(morph.erode(ok, e45), e45)
    ok = np.where(ok & tissue & ~far_from_flags, smoothed_ok, ok)
    flagged = morph.size_filter(~ok, grid.area(min_size))
    if flagged.sum() < grid.area(min_pixels):
        flagged[:] = False
    return flagged


def blur_mask(
    nl: np.ndarray,
    nl2: np.ndarray,
    tissue: np.ndarray,
    groups: tuple[LayerGroup, ...],
    grid: WorkingGrid,
    params: MaskParameters,
) -> np.ndarray:
    """Boolean blur mask on the working grid (True = blurred: folded tissue or dust).

    *Fold*: a group is blurred where at most ``flag_cut`` of its layers are sharp; blurred DAPI or FITC
    groups vote 10, others 1, and a pixel is flagged above 12. *Dust*: the DAPI group alone, blurred
    where at most half its layers are sharp under the stricter dust cuts; dust regions are kept only
    if at least 25 % of them lies outside the fold flags. The result is fold ∪ dust.

    Parameters
    ----------
    nl, nl2
        Block means of the normalised Laplacian and its square, (L, h, w) (:func:`normalized_laplacian`).
    tissue
        The field's tissue mask on the working grid.
    """
    nlv, nlv_mean = sharpness(nl, nl2, grid, params)
    layer_cuts = np.array([params.fold_cut(group.name) for group in groups])[_layer_groups(groups)]
    sharp = sharp_layers(nlv, nlv_mean, layer_cuts[:, 0], layer_cuts[:, 1], grid, params)
    votes = np.zeros(tissue.shape, dtype=np.int32)
    for group in groups:
        blurred = sharp[group.index].sum(axis=0) <= params.fold_flag_cut(group.size)
        votes += (10 if group.name.lower() in _HEAVY_GROUPS else 1) * blurred
    fold = morph_filter(votes > 12, tissue, params.fold_min_pixels, params.fold_min_size, grid, params)

    dapi = next((g for g in groups if g.name.lower() == "dapi"), None)
    if dapi is None:
        return fold
    cut, mean_cut = params.cuts.dust_cut
    n = dapi.size
    dust_sharp = sharp_layers(
        nlv[dapi.index], nlv_mean[dapi.index], np.full(n, cut), np.full(n, mean_cut), grid, params
    )
    dust = morph_filter(
        dust_sharp.sum(axis=0) <= 0.5 * n, tissue, params.dust_min_pixels, params.dust_min_size, grid, params
    )
    if dust.any():
        labels, count = morph.label_regions(dust)
        size = np.bincount(labels.ravel(), minlength=count + 1)
        outside = np.bincount(labels.ravel(), weights=(~fold).ravel(), minlength=count + 1)
        keep = outside >= params.dust_outside_fold_fraction * size
        keep[0] = False
        dust = keep[labels]
    return fold | dust


def _layer_groups(groups: tuple[LayerGroup, ...]) -> np.ndarray:
    return np.concatenate([np.full(g.size, i) for i, g in enumerate(groups)])
