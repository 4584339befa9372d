"""Exposure-time normalisation of raw fields (AstroPath's ET correction).

Each layer is rescaled to the slide's median exposure time of that layer, pivoting on the dark
current: counts above the dark current scale with the exposure ratio, counts at or below it stay.
"""

from __future__ import annotations

import numpy as np

_UINT16_VALUES = np.arange(65536, dtype=np.float64)


def exposure_lut(exposure_ms: float, target_ms: float, offset: float) -> np.ndarray:
    """Lookup table (65,536 entries, uint16) for the exposure-time correction of one layer.

    .. math::

        v' = \\begin{cases}
            \\mathrm{rint}\\left(o + \\frac{t_\\mathrm{target}}{t}(v - o)\\right) & v - o > 0 \\\\
            v & \\text{otherwise}
        \\end{cases}

    clipped to [0, 65535], where *o* is the offset (dark current) and *t* the layer's exposure time.
    A table makes the correction exact and one memory pass per layer.
    """
    shifted = _UINT16_VALUES - offset
    corrected = np.where(shifted > 0, np.rint(offset + (target_ms / exposure_ms) * shifted), _UINT16_VALUES)
    return np.clip(corrected, 0, 65535).astype(np.uint16)


def corrected_ceiling(exposure_ms: np.ndarray, target_ms: np.ndarray, offset: float) -> np.ndarray:
    """Per layer, the corrected value of a raw pixel at the top of the uint16 range (65,535).

    Corrected values at or above it were clipped — by the camera, or by the correction itself when
    it scales up — so they no longer measure brightness (see ``shadeflow.core.meanimage.masks.saturation``).
    """
    exposure_ms, target_ms = np.asarray(exposure_ms, np.float64), np.asarray(target_ms, np.float64)
    top = 65535.0 - offset
    ceiling = np.where(top > 0, np.rint(offset + (target_ms / exposure_ms) * top), 65535.0)
    return np.clip(np.where(exposure_ms == target_ms, 65535.0, ceiling), 0, 65535).astype(np.uint16)


def exposure_tables(
    exposure_ms: np.ndarray, target_ms: np.ndarray, offset: float
) -> tuple[np.ndarray, np.ndarray]:
    """The tables :func:`correct_exposure` applies, for kernels that correct as they read.

    Returns the distinct tables, (T, 65536) uint16, and per layer the row of its table or −1 where
    the layer is left as it is (its exposure is the target).
    """
    keys: dict[tuple[float, float], int] = {}
    table_of = np.full(len(exposure_ms), -1, np.int64)
    for layer, (exposure, target) in enumerate(zip(exposure_ms, target_ms)):
        if exposure != target:
            table_of[layer] = keys.setdefault((float(exposure), float(target)), len(keys))
    tables = np.empty((len(keys), 65536), np.uint16)
    for (exposure, target), row in keys.items():
        tables[row] = exposure_lut(exposure, target, offset)
    return tables, table_of


def correct_exposure(
    image: np.ndarray, exposure_ms: np.ndarray, target_ms: np.ndarray, offset: float, inplace: bool = False
) -> np.ndarray:
    """Exposure-time corrected (L, H, W) uint16 image (a copy unless ``inplace``).

    Parameters
    ----------
    image
        Raw counts, (L, H, W) uint16.
    exposure_ms
        The field's exposure time of every layer, shape (L,).
    target_ms
        The exposure time to normalise to (the slide's per-layer median), shape (L,).
    offset
        Counts below which nothing is rescaled (the camera's dark current).
    """
    if image.dtype != np.uint16:
        raise TypeError(f"exposure correction expects uint16 counts, got {image.dtype}")
    corrected = image if inplace else image.copy()
    tables: dict[tuple[float, float], np.ndarray] = {}
    for layer, (exposure, target) in enumerate(zip(exposure_ms, target_ms)):
        if exposure == target:
            continue
        key = (float(exposure), float(target))
        if key not in tables:
            tables[key] = exposure_lut(exposure, target, offset)
        # a table lookup; 'raise' mode buffers the overlap
        np.take(tables[key], corrected[layer], out=corrected[layer])
    return corrected
