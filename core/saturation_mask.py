"""Saturation masks of one field, one per layer group (AstroPath §2.4)."""

from __future__ import annotations

import numpy as np

from shadeflow.core import morphology as morph
from shadeflow.core.mask_params import MaskParameters, WorkingGrid
from shadeflow.core.slide import LayerGroup


def saturation_masks(
    smoothed: np.ndarray,
    exposure_ms: np.ndarray,
    groups: tuple[LayerGroup, ...],
    grid: WorkingGrid,
    params: MaskParameters,
) -> np.ndarray:
    """Boolean (G, h, w) masks, True where a group is saturated (skin, red blood cells, stain).

    A pixel is flagged in a group when any of the group's layers, smoothed (σ = 5) and expressed in
    counts/ms, exceeds the group's cut. Flags are opened and closed (ellipse 18), filtered by size
    (1,000 px) and dropped altogether when fewer than 4,500 px remain.

    Parameters
    ----------
    smoothed
        (L, h, w) exposure-corrected counts smoothed with σ = 5 native px, on the working grid.
    exposure_ms
        The exposure time each layer is normalised to (the slide median), shape (L,).
    """
    fp = morph.ellipse(grid.length(params.saturation_morph))
    masks = np.zeros((len(groups), *smoothed.shape[1:]), dtype=bool)
    for g, group in enumerate(groups):
        counts_per_ms = smoothed[group.index] / exposure_ms[group.index, None, None]
        flagged = (counts_per_ms > params.saturation_cut(group.name)).any(axis=0)
        if not morph.is_uniform(flagged):
            flagged = morph.size_filter(morph.close(morph.open_(flagged, fp), fp), grid.area(params.saturation_min_size))
        if flagged.sum() < grid.area(params.saturation_min_pixels):
            flagged[:] = False
        masks[g] = flagged
    return masks
