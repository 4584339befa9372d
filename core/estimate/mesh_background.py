"""Sources removed with a SExtractor-style mesh background (``--background mesh``), for images of sparse
bright sources such as star fields.

Each frame's background is photutils' :class:`~photutils.background.Background2D`: the frame is cut
into square boxes, each box's sky is its sigma-clipped median (3σ, so the stars in it do not count)
with its sigma-clipped standard deviation as the noise, the grid of box values is median-filtered over
3×3 boxes (a box filled by a bright star or galaxy takes its neighbours' value) and interpolated to
every pixel. Pixels more than ``threshold`` times the noise above that background are sources; grown
by ``grow`` pixels (the faint wings of the point-spread function), they get zero weight, and the
estimator fits the shading from the remaining sky pixels of the *raw* frames.

Why the raw sky and not the background maps themselves: the maps are smoothed over about three boxes
and extrapolated beyond the outermost box centres, which flattens a vignetting's curvature (at the
centre the 3×3 median of a quadratic is off by about S''·box²/2), bends the field's edges and smears a
sharp aperture edge over a box or two; fitted as frames, they gave flatfields 1–6 % off on smooth
shadings and 33–79 % at an aperture edge, where the default estimator is at 0.1–1.7 % and 0.8–15 %
(``bench/estimate_mesh.py``, BENCHMARKS.md). Used only to decide which pixels are sky, the same maps
cost nothing in accuracy: a pixel near a sharp edge that the smoothed map misjudges is at worst left
out. On smooth shadings this halves the default's error (0.4–0.8× on 11 of 12 star-field stacks); at a
sharp aperture edge it ties, the error there being the edge fit's, not the stars'.

Reference: Bertin, E. & Arnouts, S. SExtractor: software for source extraction. A&AS 117, 393–404
(1996), §3.1 (background estimation).

Example
-------
>>> sources = source_mask(frame, box=32)                  # True on stars and their wings
>>> background, noise = mesh_background(frame, box=32)     # the smooth sky map and its noise
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_dilation

from .grid import EstimateError

#: what ``--background`` accepts: ``none`` fits the frames as they are
BACKGROUNDS = ("none", "mesh")
#: the automatic box: this fraction of the shorter side, within [MIN_BOX, MAX_BOX] px
BOX_FRACTION = 1 / 8
MIN_BOX, MAX_BOX = 16, 128


def mesh_box(shape: tuple[int, int]) -> int:
    """The automatic mesh box for frames of ``shape``: 1/8 of the shorter side within 16–128 px (SExtractor's
    default is 64 px: large against a star, small against the shading's scale); never more than half the
    shorter side, so at least 2×2 boxes."""
    short = min(shape)
    return int(max(min(MIN_BOX, short // 2), min(MAX_BOX, round(short * BOX_FRACTION))))


@dataclass(frozen=True)
class MeshBackground:
    """How sources are found: the mesh ``box`` (px; None: :func:`mesh_box`), the detection ``threshold`` in
    units of the background's noise, and the ``grow`` (px) of each detection."""

    box: int | None = None
    threshold: float = 3.0
    grow: int = 3

    def box_for(self, shape: tuple[int, int]) -> int:
        return self.box if self.box is not None else mesh_box(shape)

    def describe(self, shape: tuple[int, int]) -> str:
        return (
            f"mesh background (photutils Background2D, {self.box_for(shape)} px boxes): pixels "
            f"{self.threshold:g}σ above it, grown by {self.grow} px, left out as sources"
        )


def mesh_background(
    frame: np.ndarray, box: int, mask: np.ndarray | None = None, filter_size: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """The smooth sky of one frame and its noise (module description).

    Parameters
    ----------
    frame : ndarray
        (H, W), any real dtype.
    box : int
        Side of the mesh boxes in pixels (the last row and column of boxes may be partial).
    mask : ndarray, optional
        (H, W) boolean, True for pixels to ignore (they get the interpolated background too).
    filter_size : int
        Median filter over ``filter_size`` × ``filter_size`` boxes (1: none).

    Returns
    -------
    background, noise : ndarray
        (H, W) float64 each: the interpolated sigma-clipped median and standard deviation.

    Raises
    ------
    EstimateError
        A box larger than the frame, or a frame with too few usable pixels.
    """
    from photutils.background import Background2D

    frame = np.asarray(frame, dtype=np.float64)
    if not 2 <= box <= min(frame.shape):
        raise EstimateError(f"mesh box of {box} px does not fit a {frame.shape[0]}×{frame.shape[1]} image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # photutils warns about masked or non-finite pixels: handled here
            found = Background2D(frame, box, mask=mask, filter_size=filter_size)
    except ValueError as exc:
        raise EstimateError(f"no mesh background: {exc}") from None
    return np.asarray(found.background, np.float64), np.asarray(found.background_rms, np.float64)


def source_mask(
    frame: np.ndarray, box: int, threshold: float = 3.0, grow: int = 3, ignore: np.ndarray | None = None
) -> np.ndarray:
    """(H, W) boolean, True on sources: pixels more than ``threshold`` × noise above the frame's mesh
    background (:func:`mesh_background`; ``ignore``: pixels it does not look at), grown by ``grow``
    pixels. Only bright deviations count: a dark pixel (an aperture's shadow) is sky."""
    background, noise = mesh_background(frame, box, ignore)
    sources = np.asarray(frame, np.float64) - background > threshold * noise
    if grow > 0 and sources.any():
        sources = binary_dilation(sources, iterations=grow)
    return sources


def sky_weights(
    frames: np.ndarray, mask: np.ndarray | None, mesh: MeshBackground, first: int = 0
) -> np.ndarray:
    """Weights (n, H, W) of ``frames`` (n, H, W): the given ``mask`` ((H, W), (n, H, W) or None) with each
    frame's sources (:func:`source_mask`) set to zero. ``first``: the index of ``frames[0]`` in the stack,
    for errors."""
    frames = np.asarray(frames)
    box = mesh.box_for(frames.shape[1:])
    weights = (
        np.ones(frames.shape, np.float32)
        if mask is None
        else np.array(np.broadcast_to(mask, frames.shape), np.float32)
    )
    for i, frame in enumerate(frames):
        try:
            ignore = None if mask is None else weights[i] == 0  # masked pixels do not make the background
            weights[i][source_mask(frame, box, mesh.threshold, mesh.grow, ignore)] = 0
        except EstimateError as exc:
            raise EstimateError(f"image {first + i}: {exc}") from None
    return weights
