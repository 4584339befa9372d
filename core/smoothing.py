"""Gaussian smoothing of mean images at flatfield scale (σ ≈ 100 px), with error propagation.

At σ = 100 px a direct convolution costs ~1 GMAC per layer, so the Gaussian is applied in the Fourier
domain (``scipy.ndimage.fourier_gaussian``) on an edge-padded copy: borders replicate, as AstroPath's
OpenCV smoothing does.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import fft
from scipy import ndimage as ndi

#: AstroPath smooths 1004×1344 fields with σ = 100 px
REFERENCE_SIGMA = 100.0
REFERENCE_FIELD = (1004, 1344)


def flatfield_sigma(height: int, width: int) -> float:
    """σ for a field of this size: 100 px at 1004×1344, scaled with the field's linear size."""
    return REFERENCE_SIGMA * math.sqrt(height * width / (REFERENCE_FIELD[0] * REFERENCE_FIELD[1]))


def gaussian_smooth(
    layers: np.ndarray, sigma: float, truncate: float = 4.0, mode: str = "edge"
) -> np.ndarray:
    """Each layer of an (L, H, W) stack smoothed with a Gaussian of ``sigma`` px.

    ``mode`` is the ``numpy.pad`` mode beyond the borders: ``edge`` replicates (AstroPath), ``constant`` is 0.
    """
    layers = np.asarray(layers, dtype=np.float64)
    if sigma <= 0:
        return layers.copy()
    pad = int(math.ceil(truncate * sigma))
    h, w = layers.shape[-2:]
    out = np.empty(layers.shape, dtype=np.float64)
    for index in np.ndindex(layers.shape[:-2]):
        padded = np.pad(layers[index], pad, mode=mode)
        spectrum = fft.rfft2(padded)
        spectrum = ndi.fourier_gaussian(spectrum, sigma, n=padded.shape[-1])
        out[index] = fft.irfft2(spectrum, s=padded.shape)[pad : pad + h, pad : pad + w]
    return out


def smooth_with_error(mean: np.ndarray, std_err: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed mean image and its propagated standard error.

    .. math:: G = k * m, \\qquad \\sigma_G = \\sqrt{k^2 * \\sigma^2}

    For a Gaussian kernel k of width σ, k² is a Gaussian of width σ/√2 scaled by 1/(4πσ²) in 2-D.
    """
    smoothed = gaussian_smooth(mean, sigma)
    variance = gaussian_smooth(std_err.astype(np.float64) ** 2, sigma / math.sqrt(2)) / (
        4 * math.pi * sigma**2
    )
    return smoothed, np.sqrt(np.clip(variance, 0, None))


def masked_smooth(mean: np.ndarray, count: np.ndarray, sigma: float) -> np.ndarray:
    """Smoothing that ignores pixels where nothing was stacked (normalised convolution)."""
    covered = (count > 0).astype(np.float64)
    weight = gaussian_smooth(covered, sigma)
    return np.divide(
        gaussian_smooth(mean * covered, sigma), weight, out=np.zeros(mean.shape), where=weight > 1e-6
    )


def relative_rms(estimate: np.ndarray, truth: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """Per-layer relative RMS difference of two (L, H, W) fields after normalising each layer to mean 1.

    .. math::

        \\sqrt{\\langle (\\hat F / F - 1)^2 \\rangle}, \\quad
        \\hat F, F \\text{ each divided by its mean over } where
    """
    where = np.ones(truth.shape, bool) if where is None else where
    errors = []
    for e, t, w in zip(estimate, truth, where):
        if not w.any():
            errors.append(np.nan)
            continue
        ratio = (e / e[w].mean()) / (t / t[w].mean())
        errors.append(float(np.sqrt(np.mean((ratio[w] - 1) ** 2))))
    return np.array(errors)


def masked_smooth_with_error(
    mean: np.ndarray, std_err: np.ndarray, count: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed mean and propagated error, ignoring pixels where nothing was stacked.

    Normalised convolution: with w = [N > 0], G = k∗(w·m) / k∗w and σ_G² = k²∗(w·σ²) / (k∗w)².
    Where every pixel is covered this is exactly :func:`smooth_with_error` (AstroPath's smoothing).
    """
    covered = (count > 0).astype(np.float64)
    weight = gaussian_smooth(covered, sigma)
    safe = np.where(weight > 1e-6, weight, np.inf)
    smoothed = gaussian_smooth(mean * covered, sigma) / safe
    variance = (
        gaussian_smooth(covered * std_err.astype(np.float64) ** 2, sigma / math.sqrt(2))
        / (4 * math.pi * sigma**2)
        / safe**2
    )
    return smoothed, np.sqrt(np.clip(variance, 0, None))


def local_linear_smooth_with_error(
    mean: np.ndarray, std_err: np.ndarray, count: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian local-linear smoothing of covered pixels, with exact error propagation.

    At each pixel p a plane a + b·dx + c·dy is fitted to the covered pixels (N > 0) with Gaussian
    weights K(q − p), and G(p) = a. Inside the image this equals plain Gaussian smoothing (the
    kernel's first moments vanish); at the borders, where a replicated edge would flatten a sloping
    illumination (~0.75 % RMS at a 30 % corner fall-off), the fit follows the slope. Pixels with
    nothing stacked get no weight; where less than half the kernel's in-image weight is covered, or
    the plane would leave the range of the data, the Gaussian-weighted mean is used instead.

    G = Σ ℓ_q m_q with equivalent kernel ℓ_q = K(q − p)·w_q·(r₀ + r₁ dx + r₂ dy), so
    σ_G² = Σ ℓ_q² σ_q², evaluated with Gaussian convolutions of moments of w·σ² (K² is a Gaussian of
    width σ/√2 scaled by 1/(4πσ²)).
    """
    L, h, w = mean.shape
    y, x = np.meshgrid(np.arange(h) / sigma, np.arange(w) / sigma, indexing="ij")  # scaled for conditioning
    smoothed = np.zeros(mean.shape)
    error = np.zeros(mean.shape)
    cache: dict[bytes, np.ndarray] = {}
    for layer in range(L):
        covered = (count[layer] > 0).astype(np.float64)
        key = np.packbits(covered.astype(bool)).tobytes()
        if key not in cache:
            cache[key] = _plane_fit_rows(covered, x, y, sigma)
            weight = gaussian_smooth(covered[None], sigma, mode="constant")[0]
            in_image = gaussian_smooth(np.ones((1, h, w)), sigma, mode="constant")[0]
            cache[key + b"level"] = (weight, weight / in_image)  # Σ K w, and the covered share of Σ K
        r0, r1, r2 = cache[key]
        d1, dx_, dy_ = gaussian_smooth(
            np.stack([covered * mean[layer], covered * mean[layer] * x, covered * mean[layer] * y]),
            sigma,
            mode="constant",
        )
        linear = r0 * d1 + r1 * (dx_ - x * d1) + r2 * (dy_ - y * d1)
        # a plane extrapolated far from the data can run away: where less than half of the kernel's
        # in-image weight is covered, or the fit leaves the data's range, use the weighted mean instead
        level = cache[key + b"level"]
        constant = np.divide(d1, level[0], out=np.zeros(d1.shape), where=level[0] > 1e-6)
        low, high = (
            mean[layer][covered > 0].min(initial=np.inf),
            mean[layer][covered > 0].max(initial=-np.inf),
        )
        trusted = (level[1] >= 0.5) & (linear >= low) & (linear <= high)
        smoothed[layer] = np.where(trusted, linear, constant)
        var = covered * std_err[layer].astype(np.float64) ** 2
        m = gaussian_smooth(
            np.stack([var, var * x, var * y, var * x * x, var * x * y, var * y * y]),
            sigma / math.sqrt(2),
            mode="constant",
        )
        m /= 4 * math.pi * sigma**2
        # Σ K² v (r0 + r1 (xq − xp) + r2 (yq − yp))², expanded in moments about the origin
        c0 = r0 - r1 * x - r2 * y
        total = (
            c0**2 * m[0] + 2 * c0 * (r1 * m[1] + r2 * m[2]) + r1**2 * m[3] + 2 * r1 * r2 * m[4] + r2**2 * m[5]
        )
        constant_total = np.divide(m[0], level[0] ** 2, out=np.zeros(m[0].shape), where=level[0] > 1e-6)
        error[layer] = np.sqrt(np.clip(np.where(trusted, total, constant_total), 0, None))
    return smoothed, error


def _plane_fit_rows(
    covered: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First row of the inverse local normal matrix at every pixel (what turns data moments into a)."""
    m1, mx, my, mxx, mxy, myy = gaussian_smooth(
        np.stack([covered, covered * x, covered * y, covered * x * x, covered * x * y, covered * y * y]),
        sigma,
        mode="constant",
    )
    # moments about each pixel
    sx, sy = mx - x * m1, my - y * m1
    sxx = mxx - 2 * x * mx + x * x * m1
    sxy = mxy - x * my - y * mx + x * y * m1
    syy = myy - 2 * y * my + y * y * m1
    a = np.stack([np.stack([m1, sx, sy], -1), np.stack([sx, sxx, sxy], -1), np.stack([sy, sxy, syy], -1)], -2)
    det = np.linalg.det(a)
    well_posed = det > 1e-9 * np.maximum(m1, 1e-300) ** 3
    rows = np.zeros((3, *covered.shape))
    inverse = np.linalg.inv(np.where(well_posed[..., None, None], a, np.eye(3)))
    rows[:, well_posed] = np.moveaxis(inverse[..., 0, :], -1, 0)[:, well_posed]
    # where a plane is not determined (too little covered around), fall back to a weighted mean
    fallback = ~well_posed & (m1 > 1e-9)
    rows[0, fallback] = 1.0 / m1[fallback]
    return rows[0], rows[1], rows[2]
