"""How uneven an illumination is: percentile spread and standard deviation of mean-relative intensity.

AstroPath's applied-test metrics (§5): an image is smoothed, each layer divided by its mean, and its
pixel values summarised over the whole image and over the central 64 % (10 % clipped from each side).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CENTRAL_CLIP = 0.1


@dataclass(frozen=True)
class Variation:
    """Spread of one layer's mean-relative intensity."""

    p5: float
    p95: float
    std: float

    @property
    def spread(self) -> float:
        return self.p95 - self.p5


def central(layer: np.ndarray, clip: float = CENTRAL_CLIP) -> np.ndarray:
    """The central region of a 2-D layer: ``clip`` of the height and width removed from each side."""
    h, w = layer.shape
    dy, dx = int(round(clip * h)), int(round(clip * w))
    return layer[dy : h - dy, dx : w - dx]


def variation(values: np.ndarray) -> Variation:
    """5th/95th percentiles (AstroPath's index ⌊0.05 n⌋ and ⌊0.95 n⌋ of the sorted values) and std."""
    flat = np.sort(values, axis=None)
    n = flat.size
    return Variation(
        p5=float(flat[int(0.05 * n)]), p95=float(flat[min(n - 1, int(0.95 * n))]), std=float(flat.std())
    )


def layer_variation(relative: np.ndarray) -> tuple[Variation, Variation]:
    """Whole-image and central-region variation of one mean-relative layer."""
    return variation(relative), variation(central(relative))


def mean_relative(layers: np.ndarray) -> np.ndarray:
    """Each layer divided by its plain mean (layers with mean 0 stay 0)."""
    means = layers.reshape(layers.shape[0], -1).mean(axis=1)
    return np.divide(
        layers, means[:, None, None], out=np.zeros(layers.shape), where=means[:, None, None] != 0
    )
