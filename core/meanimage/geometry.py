"""Field geometry: which fields are in the bulk of the tissue and which are at its edge."""

from __future__ import annotations

import numpy as np

from ..io.slide import Slide, SlideError

#: AstroPath's native pixel size (Vectra 3.0 / Polaris, µm per pixel); mask parameters are defined at it.
NATIVE_PIXEL_UM = 0.4976


def overlap_counts(cx: np.ndarray, cy: np.ndarray, field_w: float, field_h: float) -> np.ndarray:
    """Number of other fields overlapping each field.

    Two fields overlap when their centres are closer than one field size on both axes:
    ``|Δcx| < w`` and ``|Δcy| < h`` (AstroPath's rule).
    """
    dx = np.abs(cx[:, None] - cx[None, :]) < field_w
    dy = np.abs(cy[:, None] - cy[None, :]) < field_h
    return (dx & dy).sum(axis=1) - 1  # minus the field itself


def bulk_fields(cx: np.ndarray, cy: np.ndarray, field_w: float, field_h: float) -> np.ndarray:
    """Boolean array: a field is *bulk* when it has exactly 8 overlapping neighbours, else *edge*."""
    return overlap_counts(cx, cy, field_w, field_h) == 8


def field_size_um(slide: Slide) -> tuple[float, float]:
    """Field width and height in µm.

    From ``slide.json``'s ``field_size_um`` when given. Otherwise inferred from the acquisition grid:
    fields on a grid with step s overlap their neighbours, so any size between s and 2s gives the same
    neighbour graph; 1.5 s is used.
    """
    if slide.field_size_um is not None:
        return slide.field_size_um
    cx = np.array([f.cx for f in slide.fields])
    cy = np.array([f.cy for f in slide.fields])
    return 1.5 * _grid_step(cx), 1.5 * _grid_step(cy)


def _grid_step(values: np.ndarray) -> float:
    steps = np.diff(np.unique(np.round(values, 3)))
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def pixel_scale(slide: Slide) -> float:
    """Native pixel size ÷ this slide's pixel size (1 for Vectra/Polaris data, < 1 for larger pixels).

    Mask lengths and areas are AstroPath's, defined at the native pixel size; a slide with larger pixels
    (e.g. a binned or synthetic small field) scales them by this factor (lengths) and its square (areas).
    Without ``field_size_um`` the slide is taken to be at the native pixel size (scale 1).
    """
    if slide.field_size_um is None:
        return 1.0
    um_per_px = slide.field_size_um[0] / slide.width
    return NATIVE_PIXEL_UM / um_per_px


def classify_fields(slide: Slide) -> np.ndarray:
    """Bulk (True) / edge (False) for each of the slide's fields, in ``slide.fields`` order."""
    w, h = field_size_um(slide)
    cx = np.array([f.cx for f in slide.fields])
    cy = np.array([f.cy for f in slide.fields])
    return bulk_fields(cx, cy, w, h)


def plannable_fields(slide: Slide, skip_masking: bool = False) -> np.ndarray:
    """:func:`classify_fields`, refusing a slide that cannot make a mean image: no bulk field to stack, or
    (unless masking is skipped) no edge field to compute background thresholds from. Reads no image, so
    the command checks it before anything starts."""
    bulk = classify_fields(slide)
    if not bulk.any():
        w, h = field_size_um(slide)
        raise SlideError(
            f"slide {slide.slide_id}: no bulk fields — none of its {len(bulk)} fields has 8 overlapping "
            f"neighbours (field size {w:g}×{h:g} µm), so there is nothing to stack"
        )
    if bulk.all() and not skip_masking:
        raise SlideError(f"slide {slide.slide_id}: no edge fields to compute background thresholds from")
    return bulk
