"""The compiled masking kernels against the numpy/scipy code they replace.

``normalized_laplacian``, ``working_smoothed`` and the stacking kernel must give the *same bits* as
the numpy/scipy versions (kept here as references), so masks and mean images do not change. The
45-px window mean is the one step that changes arithmetic (float64 row sums instead of a float32 FFT):
its differences are rounding, and a sharpness cut decides differently only where the statistic lies
within that rounding of the cut.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy import signal

from shadeflow.core import morphology as morph
from shadeflow.core.io.slide import interleaved_to_layers
from shadeflow.core.meanimage.exposure import correct_exposure, exposure_tables
from shadeflow.core.meanimage.masks.blur import normalized_laplacian, window_mean
from shadeflow.core.meanimage.masks.combined import working_smoothed, working_smoothed_interleaved
from shadeflow.core.meanimage.masks.parameters import MaskParameters, WorkingGrid
from shadeflow.core.stack import _stack_layer


def _nl_numpy(image: np.ndarray, presmooth_sigma: float, binning: int) -> tuple[np.ndarray, np.ndarray]:
    """The numpy/scipy normalised Laplacian the kernel replaced (full-resolution float32 passes)."""
    nl_binned, nl2_binned = [], []
    tiny = np.finfo(np.float32).tiny
    for layer in image:
        if presmooth_sigma > 0:
            s = ndi.gaussian_filter(layer, presmooth_sigma, output=np.float32, mode="mirror", truncate=3.0)
        else:
            s = layer.astype(np.float32)
        nb = np.empty_like(s)  # 4-neighbour sum, reflected borders, up+down then left then right
        nb[1:-1] = s[:-2] + s[2:]
        nb[0], nb[-1] = s[1] * 2, s[-2] * 2
        nb[:, 1:-1] += s[:, :-2]
        nb[:, 1:-1] += s[:, 2:]
        for edge, mirror in ((0, 1), (-1, -2)):
            nb[:, edge] += s[:, mirror]
            nb[:, edge] += s[:, mirror]
        denominator = np.maximum(nb + s, tiny)
        nl = (nb - s * 4) * np.float32(5) / denominator
        nl_binned.append(morph.bin_mean(nl, binning))
        nl2_binned.append(morph.bin_mean(nl * nl, binning))
    return np.stack(nl_binned), np.stack(nl2_binned)


def _field(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Random uint16 layers with the cases that matter: zero patches (NL = 0) and saturated ones."""
    rng = np.random.default_rng(seed)
    image = rng.gamma(2.0, 300.0, shape).clip(0, 65535).astype(np.uint16)
    image[:, : shape[1] // 3, : shape[2] // 4] = 0
    image[0, -3:, -5:] = 65535
    return image


@pytest.mark.parametrize("shape", [(2, 61, 83), (1, 32, 32), (1, 2, 5), (1, 9, 2)])
@pytest.mark.parametrize("binning", [1, 2, 4, 8])
@pytest.mark.parametrize("sigma", [1.0, 0.0, 2.5])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])  # integer pair sums / float64 row copies
def test_normalized_laplacian_is_the_numpy_version_bit_for_bit(shape, binning, sigma, dtype):
    image = _field(shape, seed=binning)
    nl, nl2 = normalized_laplacian(image.astype(dtype), sigma, binning)
    ref, ref2 = _nl_numpy(image, sigma, binning)
    assert nl.dtype == nl2.dtype == np.float32
    np.testing.assert_array_equal(nl, ref)
    np.testing.assert_array_equal(nl2, ref2)


@pytest.mark.parametrize("shape", [(3, 61, 83), (1, 7, 3), (2, 1, 9)])
@pytest.mark.parametrize("binning", [1, 2, 4, 8])
def test_working_smoothed_is_bin_mean_then_scipy_gaussian_bit_for_bit(shape, binning):
    image = _field(shape, seed=10 + binning)
    grid, params = WorkingGrid(scale=1.0, binning=binning), MaskParameters(microscope="vectra")
    expected = morph.smooth(morph.bin_mean(image, binning), grid.sigma(params.smoothing_sigma))
    np.testing.assert_array_equal(working_smoothed(image, grid, params), expected)


@pytest.mark.parametrize("shape", [(3, 61, 83), (5, 7, 3), (2, 1, 9)])
@pytest.mark.parametrize("binning", [1, 2, 4, 8])
def test_working_smoothed_of_the_stored_field_is_that_of_the_corrected_layers(shape, binning):
    """Binning the (H, W, L) file layout with the exposure tables applied on the way: the same bits as
    transposing, correcting, then :func:`working_smoothed`."""
    image = _field(shape, seed=20 + binning)
    raw = np.ascontiguousarray(np.moveaxis(image, 0, -1))
    exposure = np.array([50.0, 80.0, 50.0, 200.0, 80.0][: shape[0]])  # repeated and unchanged layers
    target = np.full(shape[0], 80.0)
    grid, params = WorkingGrid(scale=1.0, binning=binning), MaskParameters(microscope="vectra")
    tables, table_of = exposure_tables(exposure, target, 8.0)
    assert tables.shape[0] == len(set(exposure[exposure != 80.0]))
    expected = working_smoothed(
        correct_exposure(interleaved_to_layers(raw), exposure, target, 8.0), grid, params
    )
    np.testing.assert_array_equal(working_smoothed_interleaved(raw, tables, table_of, grid, params), expected)


@pytest.mark.parametrize("everywhere", [True, False])
@pytest.mark.parametrize("narrow", [True, False])
def test_stacking_kernel_is_the_numpy_sums(everywhere, narrow):
    rng = np.random.default_rng(7)
    layer = rng.integers(0, 65536, (37, 53), dtype=np.uint16)
    layer[0, :4] = 65535  # the largest square
    mask = np.ones(layer.shape, bool) if everywhere else rng.random(layer.shape) < 0.6
    sum_t, count_t = (np.uint32, np.uint16) if narrow else (np.uint64, np.uint32)
    total = rng.integers(0, 2**20, layer.shape).astype(sum_t)
    total_sq = rng.integers(0, 2**40, layer.shape).astype(np.uint64)
    count = rng.integers(0, 100, layer.shape).astype(count_t)
    kept = layer * mask
    expected = (total + kept, total_sq + np.square(kept, dtype=np.uint64), count + mask)
    _stack_layer(layer, mask, total, total_sq, count)
    for got, want in zip((total, total_sq, count), expected):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(3, 70, 90), (1, 1, 9), (2, 2, 1), (1, 5, 3)])
@pytest.mark.parametrize("size", [3.75, 2.0, 4.0])  # the 15-px window on the 4×-binned grid, and others
def test_small_window_mean_is_scipy_correlate_bit_for_bit(shape, size):
    rng = np.random.default_rng(13)
    stack = (rng.standard_normal(shape) ** 2 * 1e3).astype(np.float32)
    stack[:, :1] = 0
    footprint = morph.ellipse(size)
    assert 1 < footprint.sum() <= 16
    expected = ndi.correlate(stack, (footprint / footprint.sum()).astype(np.float32)[None], mode="mirror")
    np.testing.assert_array_equal(window_mean(stack, footprint), expected)


def _window_mean_fft(stack: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """The FFT window mean the row-sum kernel replaced (float32 FFT convolution of a reflected pad)."""
    kernel = (footprint / footprint.sum()).astype(np.float32)
    r = footprint.shape[0] // 2
    mode = "reflect" if min(stack.shape[1:]) > r else "symmetric"
    padded = np.pad(stack, ((0, 0), (r, r), (r, r)), mode=mode)
    return signal.fftconvolve(padded, kernel[None], mode="valid", axes=(1, 2)).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 70, 90), (1, 13, 40), (1, 5, 9)])
def test_large_window_mean_differs_from_the_fft_version_by_rounding_only(shape):
    """Both are the window average up to float32 rounding; the row sums are the closer of the two."""
    rng = np.random.default_rng(11)
    stack = (rng.standard_normal(shape) ** 2).astype(np.float32)
    stack[:, :4, :4] = 0
    footprint = morph.ellipse(11.25)  # the 45-px window on the 4×-binned grid
    got, fft = window_mean(stack, footprint), _window_mean_fft(stack, footprint)
    scale = np.abs(stack).max()
    assert np.abs(got - fft).max() <= 2e-6 * scale
    if min(shape[1:]) > footprint.shape[0] // 2:  # ndimage's mirror is the reference where it applies
        exact = ndi.correlate(stack.astype(np.float64), footprint[None] / footprint.sum(), mode="mirror")
        assert np.abs(got - exact).max() <= np.abs(fft - exact).max()
        assert np.abs(got - exact).max() <= 2.0 * np.spacing(np.float32(scale))


def test_sharpness_cuts_disagree_with_the_fft_version_only_within_rounding_of_the_cut():
    """Variance of NL over the 45-px window, thresholded as ``sharp_layers`` does, on realistic NL block
    means: a pixel is classified differently only where the statistic is within 1e-5 (relative) of
    the cut — float rounding, not a different method."""
    image = _field((4, 240, 320), seed=3)
    image[:, 100:, 150:] = ndi.gaussian_filter(image[:, 100:, 150:], (0, 4, 4))  # a blurred region
    nl, nl2 = normalized_laplacian(image, 1.0, 4)
    window = morph.ellipse(11.25)
    new = np.abs(window_mean(nl2, window) - window_mean(nl, window) ** 2)
    old = np.abs(_window_mean_fft(nl2, window) - _window_mean_fft(nl, window) ** 2)
    np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-5 * np.abs(old).max())
    for cut in np.quantile(old, [0.1, 0.5, 0.9]):  # cuts through the bulk of the values
        disagree = (new > cut) != (old > cut)
        near = np.abs(old - cut) <= 1e-5 * max(cut, np.abs(old).max())
        assert not np.any(disagree & ~near)
