"""All masks of one field, and their AstroPath file forms (AstroPath §2.5–2.6)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from shadeflow.core import morphology as morph
from shadeflow.core.blur_mask import blur_mask, normalized_laplacian
from shadeflow.core.mask_params import MaskParameters, WorkingGrid
from shadeflow.core.saturation_mask import saturation_masks
from shadeflow.core.slide import LayerGroup
from shadeflow.core.tissue_mask import tissue_mask

BLUR_REASON = "blurred likely folded tissue or dust"
SATURATION_REASON = "saturated likely skin or red blood cells or stain"


@dataclass(frozen=True)
class MaskRegion:
    """A row of ``labelled_mask_regions.csv``."""

    image_key: str
    region_index: int
    layers: str  # "all" (blur) or "a-b" (saturation group)
    n_pixels: int
    reason_flagged: str


@dataclass
class FieldMasks:
    """A field's masks on the working grid (True = tissue / flagged)."""

    tissue: np.ndarray  # (h, w)
    blur: np.ndarray  # (h, w)
    saturation: np.ndarray  # (G, h, w)
    binning: int
    shape: tuple[int, int]  # full-resolution (H, W)

    @property
    def flagged(self) -> bool:
        return bool(self.blur.any() or self.saturation.any())

    def full(self, mask: np.ndarray) -> np.ndarray:
        """A working-grid mask at full resolution."""
        return morph.upsample(mask, self.binning, self.shape)

    @cached_property
    def cell_pixels(self) -> np.ndarray:
        """(h, w) full-resolution pixels each working-grid cell covers (border cells may be cut)."""
        (h, w), b = self.tissue.shape, self.binning
        rows = np.minimum(b, self.shape[0] - b * np.arange(h))
        cols = np.minimum(b, self.shape[1] - b * np.arange(w))
        return np.outer(rows, cols)

    def pixel_count(self, mask: np.ndarray) -> int:
        """Full-resolution pixels of a working-grid mask, without upsampling it."""
        return int(self.cell_pixels[mask].sum())

    def stacking_masks(self) -> np.ndarray:
        """(G, H, W): pixels each group's layers contribute to the mean image.

        Background and the group's saturated pixels are excluded; blurred tissue is deliberately kept
        (as in AstroPath since commit 9742e622), but not background inside blur regions.
        """
        return self.full(self.tissue[None] & ~self.saturation)

    def labelled(self, key: str, groups: tuple[LayerGroup, ...]) -> tuple[np.ndarray, list[MaskRegion]]:
        """The full-resolution label image (H, W, G+1) and its region table.

        Plane 0 is tissue (1) / background (0) with blur regions numbered from 2; plane g adds group g's
        saturation regions, numbered on after the blur regions. Flags override background. Labels fit
        uint8 unless a field has more than 253 regions, then uint16 (AstroPath's uint8 overflowed).

        Regions are labelled on the working grid and the planes upsampled once: upsampling by whole
        cells keeps 8-connected components and their raster order, so the labels are those of the
        full-resolution masks, and region sizes count each cell's full-resolution pixels.
        """
        regions: list[MaskRegion] = []
        blur_labels, n_blur = morph.label_regions(self.blur)
        plane0 = self.tissue.astype(np.int64)
        plane0[blur_labels > 0] = blur_labels[blur_labels > 0] + 1
        for i, size in enumerate(self._region_sizes(blur_labels, n_blur), start=2):
            regions.append(MaskRegion(key, i, "all", size, BLUR_REASON))
        planes = [plane0]
        next_label = n_blur + 2
        for g, group in enumerate(groups):
            plane = plane0.copy()
            sat_labels, n_sat = morph.label_regions(self.saturation[g])
            if n_sat:
                plane[sat_labels > 0] = sat_labels[sat_labels > 0] + next_label - 1
                for i, size in enumerate(self._region_sizes(sat_labels, n_sat), start=next_label):
                    regions.append(MaskRegion(key, i, group.label, size, SATURATION_REASON))
                next_label += n_sat
            planes.append(plane)
        dtype = np.uint8 if next_label - 1 <= 255 else np.uint16
        full = self.full(np.stack(planes).astype(dtype))  # (G+1, H, W)
        return np.ascontiguousarray(np.moveaxis(full, 0, -1)), regions

    def _region_sizes(self, labels: np.ndarray, n: int) -> list[int]:
        """Full-resolution pixels of regions 1…n of a working-grid label image."""
        return [int(v) for v in np.bincount(labels.ravel(), weights=self.cell_pixels.ravel(), minlength=n + 1)[1:]]


def compute_field_masks(
    image: np.ndarray,
    thresholds: np.ndarray,
    exposure_ms: np.ndarray,
    groups: tuple[LayerGroup, ...],
    grid: WorkingGrid,
    params: MaskParameters,
    dark_current: float = 0.0,
) -> FieldMasks:
    """Tissue, blur and saturation masks of one exposure-corrected (L, H, W) field.

    Parameters
    ----------
    thresholds
        Slide background threshold per layer (counts).
    exposure_ms
        Exposure time per layer the field is normalised to (the slide median).
    dark_current
        The camera's dark current (counts); nothing at or below it is tissue.
    """
    smoothed = working_smoothed(image, grid, params)
    tissue = tissue_mask(smoothed, thresholds, groups, grid, params, dark_current)
    nl, nl2 = normalized_laplacian(image, params.cuts.presmooth_sigma, grid.binning)
    blur = blur_mask(nl, nl2, tissue, groups, grid, params)
    saturation = saturation_masks(smoothed, exposure_ms, groups, grid, params)
    return FieldMasks(tissue=tissue, blur=blur, saturation=saturation, binning=grid.binning, shape=image.shape[1:])


def working_smoothed(image: np.ndarray, grid: WorkingGrid, params: MaskParameters) -> np.ndarray:
    """The field binned to the working grid and smoothed to σ = 5 native px (float32, (L, h, w))."""
    return morph.smooth(morph.bin_mean(image, grid.binning), grid.sigma(params.smoothing_sigma))


def pack_tissue_mask(tissue: np.ndarray) -> bytes:
    """AstroPath's ``_tissue_mask.bin``: the (H, W) mask bit-packed row-major (numpy ``packbits``)."""
    return np.packbits(tissue.astype(bool).ravel()).tobytes()


def unpack_tissue_mask(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=h * w).reshape(h, w).astype(bool)
