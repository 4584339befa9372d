"""Synthetic star fields: sparse point sources on a sky, seen through a planted flatfield.

Frame *i* is ``Poisson(S·(sky_i + stars_i)) + D + read noise``: every photon, sky or star, passes the
optics S; the sky level changes from frame to frame (moon, airmass, exposure), the stars move (each
frame a different field). A star is a Gaussian core (σ = ``psf_sigma`` px) with a faint wide halo
(σ ×4, 10 % of its flux, the wings that bias a plain block mean); fluxes follow a power law (many faint,
few bright). Used by the mesh-background tests and ``bench/estimate_mesh.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter


@dataclass(frozen=True)
class StarField:
    """What a star-field stack looks like (all counts in photo-electrons per pixel)."""

    frames: int = 24
    shape: tuple[int, int] = (256, 256)
    density: float = 2.0  # stars per 1000 px²
    sky: float = 200.0  # median sky level at unit flatfield
    sky_spread: float = 0.3  # sky_i = sky · U(1 − spread, 1 + spread)
    flux_min: float = 200.0  # faintest star's total flux
    flux_max: float = 2e5  # brightest star's total flux
    psf_sigma: float = 1.5
    read_noise: float = 5.0
    seed: int = 0


def star_light(rng: np.random.Generator, field: StarField) -> np.ndarray:
    """One frame's star light (H, W) at unit flatfield, without noise."""
    h, w = field.shape
    n = rng.poisson(field.density * h * w / 1000)
    # power law dN/dF ∝ F^-2 between flux_min and flux_max (inverse-CDF draw)
    u = rng.random(n)
    lo, hi = 1 / field.flux_min, 1 / field.flux_max
    flux = 1 / (lo - u * (lo - hi))
    points = np.zeros(field.shape)
    np.add.at(points, (rng.integers(0, h, n), rng.integers(0, w, n)), flux)
    core = gaussian_filter(points, field.psf_sigma, mode="constant", truncate=5)
    halo = gaussian_filter(points, 4 * field.psf_sigma, mode="constant", truncate=4)
    return 0.9 * core + 0.1 * halo


def star_field_stack(
    field: StarField, flatfield: np.ndarray, darkfield: np.ndarray | float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) float32 frames of ``field`` through ``flatfield`` (H, W) plus ``darkfield``, and the
    sky levels (N,) that were planted — the truth of each frame's smooth background
    ``sky_i·flatfield + darkfield``."""
    rng = np.random.default_rng([field.seed, 2026])
    skies = field.sky * rng.uniform(1 - field.sky_spread, 1 + field.sky_spread, field.frames)
    frames = np.empty((field.frames, *field.shape), np.float32)
    for i, sky in enumerate(skies):
        light = flatfield * (sky + star_light(rng, field))
        frames[i] = rng.poisson(light) + darkfield + rng.normal(0, field.read_noise, field.shape)
    return frames, skies
