"""Saturation masks of one field, one per layer group (AstroPath §2.4)."""

from __future__ import annotations

import numpy as np

from ... import morphology as morph
from ...io.slide import LayerGroup
from .parameters import MaskParameters, WorkingGrid


def saturation_masks(
    smoothed: np.ndarray,
    exposure_ms: np.ndarray,
    groups: tuple[LayerGroup, ...],
    grid: WorkingGrid,
    params: MaskParameters,
    clipped: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean (G, h, w) masks, True where a group is saturated (skin, red blood cells, stain).

    A pixel is flagged in a group when any of the group's layers, smoothed (σ = 5) and expressed in
    counts/ms, exceeds the group's cut. Flags are opened and closed (ellipse 18), filtered by size
    (1,000 px) and dropped altogether when fewer than 4,500 px remain. Pixels ``clipped`` in any of
    the group's layers are flagged as well, whatever their size.

    Parameters
    ----------
    smoothed
        (L, h, w) exposure-corrected counts smoothed with σ = 5 native px, on the working grid.
    exposure_ms
        The exposure time each layer is normalised to (the slide median), shape (L,).
    clipped
        (L, h, w) working-grid cells holding a pixel at the top of its range (see
        :func:`~shadeflow.core.meanimage.exposure.corrected_ceiling`), or None.

    Notes
    -----
    *Clipped pixels* (not in AstroPath, reference spec §2.4). AstroPath recognises saturation only by
    the counts/ms cut, after the exposure-time correction. A field exposed longer than the slide's
    median is scaled down by that correction, and a pixel the camera clipped at 65,535 comes out at
    65,535 × median/own exposure: with a 4× longer exposure a saturated object reads as a quarter of
    the camera's maximum rate and can pass under the cut, to be stacked as (very bright) tissue. In the
    randomised sweep of ``bench/meanimage_accuracy.py`` (exposure times varying up to 20× within a
    slide) such missed spots made single layer groups of the mean image 5–9 % wrong. A clipped value
    measures nothing, so it is flagged without the size rules, which exist to ignore small excursions
    over a brightness cut.
    """
    fp = morph.ellipse(grid.length(params.saturation_morph))
    masks = np.zeros((len(groups), *smoothed.shape[1:]), dtype=bool)
    for g, group in enumerate(groups):
        counts_per_ms = smoothed[group.index] / exposure_ms[group.index, None, None]
        flagged = (counts_per_ms > params.saturation_cut(group.name)).any(axis=0)
        if not morph.is_uniform(flagged):
            flagged = morph.size_filter(
                morph.close(morph.open_(flagged, fp), fp), grid.area(params.saturation_min_size)
            )
        if flagged.sum() < grid.area(params.saturation_min_pixels):
            flagged[:] = False
        if clipped is not None:
            flagged |= clipped[group.index].any(axis=0)
        masks[g] = flagged
    return masks
