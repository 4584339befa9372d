"""Statistics of a flatfield model, per layer and over layers (AstroPath's flatfield statistics table).

Public: :class:`LayerStatistics`, :func:`layer_statistics`, :func:`summary_statistics`. Shared by the
model build (its manifest) and its summary PDF (``core.model.report``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .flatfield import Flatfield


@dataclass(frozen=True)
class LayerStatistics:
    """Per-layer statistics of a flatfield (mean-relative: the flatfield averages 1)."""

    layer: int
    group: str
    n_images: int
    minimum: float
    maximum: float
    p5: float
    p95: float
    spread: float
    std: float
    central_p5: float
    central_p95: float
    central_spread: float
    central_std: float


def layer_statistics(
    flatfield: Flatfield, n_images: np.ndarray, layer_groups: dict[str, list[int]]
) -> list[LayerStatistics]:
    group_of = {
        layer: name for name, (first, last) in layer_groups.items() for layer in range(first, last + 1)
    }
    rows = []
    for index, (whole, central) in enumerate(flatfield.layer_statistics()):
        layer = flatfield.flatfield[index]
        rows.append(
            LayerStatistics(
                layer=index + 1,
                group=group_of.get(index + 1, ""),
                n_images=int(n_images[index]),
                minimum=float(layer.min()),
                maximum=float(layer.max()),
                p5=whole.p5,
                p95=whole.p95,
                spread=whole.spread,
                std=whole.std,
                central_p5=central.p5,
                central_p95=central.p95,
                central_spread=central.spread,
                central_std=central.std,
            )
        )
    return rows


def summary_statistics(rows: list[LayerStatistics]) -> dict[str, float]:
    """AstroPath's statistics table: extremes over layers and spreads averaged over layers."""
    used = [r for r in rows if r.n_images > 0] or rows
    return {
        "max": max(r.maximum for r in used),
        "min": min(r.minimum for r in used),
        "mean_spread": float(np.mean([r.spread for r in used])),
        "mean_std": float(np.mean([r.std for r in used])),
        "mean_central_spread": float(np.mean([r.central_spread for r in used])),
        "mean_central_std": float(np.mean([r.central_std for r in used])),
    }
