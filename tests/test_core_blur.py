"""The normalised Laplacian behind the blur mask (core/meanimage/masks/blur.py)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi

from shadeflow.core import morphology as morph
from shadeflow.core.meanimage.masks.blur import normalized_laplacian, window_mean


def _reference(layer: np.ndarray, sigma: float) -> np.ndarray:
    """NL = 5·(4-neighbour sum − 4·S) / (4-neighbour sum + S) by the textbook route: pad, slice, divide."""
    s = ndi.gaussian_filter(layer, sigma, output=np.float64, mode="mirror", truncate=3.0)
    p = np.pad(s, 1, mode="reflect")
    neighbours = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
    local = neighbours + s
    return np.where(local > 0, 5 * (neighbours - 4 * s) / np.where(local > 0, local, 1), 0.0)


@pytest.mark.parametrize("binning", [1, 2, 4])
def test_block_means_of_nl_and_nl_squared(binning):
    rng = np.random.default_rng(3)
    image = (rng.random((3, 41, 58)) * 500).astype(np.uint16)
    image[0, :8, :8] = 0  # an all-zero corner: NL = 0 there
    nl, nl2 = normalized_laplacian(image, 1.0, binning)
    h, w = -(-41 // binning), -(-58 // binning)
    assert nl.shape == nl2.shape == (3, h, w)
    for i, layer in enumerate(image):
        full = _reference(layer, 1.0)
        padded = np.pad(full, ((0, h * binning - 41), (0, w * binning - 58)), mode="edge")
        blocks = padded.reshape(h, binning, w, binning)
        np.testing.assert_allclose(nl[i], blocks.mean(axis=(1, 3)), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(nl2[i], (blocks**2).mean(axis=(1, 3)), rtol=1e-4, atol=1e-4)
    # at binning 1 a block is a pixel: the mean of NL² is NL², and NL is not its own square
    if binning == 1:
        np.testing.assert_allclose(nl2, nl**2, rtol=1e-6)
        assert not np.allclose(nl, nl2)


@pytest.mark.parametrize("size", [3.75, 7.5, 11.25])  # a 3×3 window (summed directly), and larger ones (FFT)
def test_window_mean_is_the_mirrored_ellipse_average(size):
    rng = np.random.default_rng(4)
    stack = rng.random((2, 30, 37)).astype(np.float32)
    footprint = morph.ellipse(size)
    expected = np.stack(
        [
            ndi.correlate(layer.astype(np.float64), footprint / footprint.sum(), mode="mirror")
            for layer in stack
        ]
    )
    got = window_mean(stack, footprint)
    assert got.dtype == np.float32 and got.shape == stack.shape
    np.testing.assert_allclose(got, expected, atol=2e-6)
