"""A flatfield model from a mean-image stack (AstroPath §4).

The merged stack's mean image is smoothed (Gaussian, σ = 100 px for 1004×1344 fields, scaled with the
field size) with its standard error propagated, then each layer is divided by its inverse-variance
weighted mean, so the flatfield is 1 on average where it is best known.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..illumination import Variation, layer_variation
from ..smoothing import flatfield_sigma, local_linear_smooth_with_error, masked_smooth_with_error
from ..stack import MeanImageStack, mean_and_std_err


@dataclass
class Flatfield:
    """A flatfield and its uncertainty, (L, H, W); ``empty_layers`` were set to 1 (nothing stacked)."""

    flatfield: np.ndarray
    uncertainty: np.ndarray
    sigma: float
    border: str
    empty_layers: tuple[int, ...]  # 1-based

    def layer_statistics(self) -> list[tuple[Variation, Variation]]:
        """Whole-image and central-region spread of every layer (the flatfield is already mean-relative)."""
        return [layer_variation(layer) for layer in self.flatfield]


def normalise(
    smoothed: np.ndarray, error: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Divide each layer by its inverse-variance weighted mean.

    .. math::

        w = 1/\\sigma_G^2 \\;(0 \\text{ where } \\sigma_G = 0), \\quad \\mu = \\frac{\\sum w G}{\\sum w},
        \\quad F = G/\\mu, \\quad \\delta F = \\sigma_G/\\mu

    A layer with nothing stacked (or no weight) becomes F = δF = 1.
    """
    flatfield = np.ones(smoothed.shape)
    uncertainty = np.ones(smoothed.shape)
    empty = []
    for layer in range(smoothed.shape[0]):
        g, e = smoothed[layer], error[layer]
        weight = np.divide(1.0, e**2, out=np.zeros(e.shape), where=e > 0)
        if count[layer].max() < 1 or weight.sum() <= 0:
            empty.append(layer + 1)
            continue
        if not (np.isfinite(g).all() and (g > 0).all()):
            raise ValueError(
                f"layer {layer + 1}: the smoothed mean image is not positive everywhere; too little of the "
                "field was stacked"
            )
        mu = (weight * g).sum() / weight.sum()
        flatfield[layer] = g / mu
        uncertainty[layer] = e / mu
    return flatfield, uncertainty, tuple(empty)


BORDERS = ("linear", "replicate")


def smooth_mean_image(
    mean: np.ndarray, std_err: np.ndarray, count: np.ndarray, sigma: float, border: str = "linear"
) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed mean image and propagated error.

    ``linear`` (default) fits a local plane near the borders, so a sloping illumination is not
    flattened at the edges (the bias is a third of the ``replicate`` one); ``replicate`` is AstroPath's
    Gaussian with replicated borders. Both ignore pixels where nothing was stacked.
    """
    if border == "linear":
        return local_linear_smooth_with_error(mean, std_err, count, sigma)
    if border == "replicate":
        return masked_smooth_with_error(mean, std_err, count, sigma)
    raise ValueError(f"border must be one of {BORDERS}, got {border!r}")


def build_flatfield(stack: MeanImageStack, sigma: float | None = None, border: str = "linear") -> Flatfield:
    """The flatfield of a (merged) mean-image stack.

    Parameters
    ----------
    sigma
        Smoothing σ in pixels; default :func:`~shadeflow.core.smoothing.flatfield_sigma` of the field size.
    border
        How smoothing treats the field borders (see :func:`smooth_mean_image`).
    """
    h, w = stack.shape[1:]
    sigma = flatfield_sigma(h, w) if sigma is None else float(sigma)
    mean, std_err = mean_and_std_err(stack.sum, stack.sum_sq, stack.count)
    smoothed, error = smooth_mean_image(mean, std_err, stack.count, sigma, border)
    flatfield, uncertainty, empty = normalise(smoothed, error, stack.count)
    return Flatfield(
        flatfield=flatfield, uncertainty=uncertainty, sigma=sigma, border=border, empty_layers=empty
    )
