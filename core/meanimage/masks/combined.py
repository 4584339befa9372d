"""All masks of one field, and their AstroPath file forms (AstroPath §2.5–2.6)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage as ndi

from ... import morphology as morph
from ...io.slide import LayerGroup
from . import kernels
from .blur import blur_mask, normalized_laplacian
from .parameters import MaskParameters, WorkingGrid
from .saturation import saturation_masks
from .tissue import tissue_mask

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

    def stacking_masks(self, guard_px: float = 0.0) -> np.ndarray:
        """(G, H, W): pixels each group's layers contribute to the mean image (:func:`stacking_masks`).

        Background and the group's saturated pixels are excluded; blurred tissue is deliberately kept
        (as in AstroPath since commit 9742e622), but not background inside blur regions. ``guard_px``
        (full-resolution pixels) is applied on the working grid, where the masks were made.
        """
        return self.full(stacking_masks(self.tissue, self.saturation, guard_px / self.binning))

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
        return [
            int(v) for v in np.bincount(labels.ravel(), weights=self.cell_pixels.ravel(), minlength=n + 1)[1:]
        ]


def stacking_masks(tissue: np.ndarray, saturation: np.ndarray, guard_px: float = 0.0) -> np.ndarray:
    """(G, H, W) pixels each layer group stacks: tissue, not saturated in the group, and further than
    ``guard_px`` from every pixel that is not.

    Parameters
    ----------
    tissue
        (H, W) tissue mask at full resolution.
    saturation
        (G, H, W) saturated pixels of each layer group.
    guard_px
        Width of the guard band, in pixels of the field (``MaskParameters.stacking_guard`` scaled);
        0 stacks the masks as they are (AstroPath).

    Notes
    -----
    *Why a guard band* (AstroPath stacks every tissue pixel, reference spec §2.6). The tissue mask is
    the set of pixels whose σ-smoothed counts (σ = 5 native px) exceed a background threshold that
    sits just above the background, so it reaches past the tissue edge for as long as the smoothed
    tissue still lifts a pixel over the threshold — for bright tissue, up to the kernel's reach of 4σ —
    and the close/open steps fill concavities. Those rim pixels are mostly background. Their number
    depends on how bright the tissue is relative to the threshold, and so on the illumination itself:
    rims are wider where the field is brighter, which flattens the mean image towards the centre. In
    the randomised sweep of ``bench/meanimage_accuracy.py`` this was the largest error once the
    thresholds were right. Stacking only the pixels further than 4σ from the mask's edge — no smoothed
    value there saw across it — takes the rim out wherever it is; it costs the outer 4σ of the tissue
    (20 native px, 10 µm), the same everywhere in the field, so it biases nothing (3σ left part of the
    rim, 5σ cost more data than it saved, on the same sweep). The image border is not an edge (the
    tissue continues into the neighbouring field). The same band is kept around saturated regions,
    whose flags, made on smoothed counts, stop short of the object's dimmer fringe.

    The tissue mask files keep AstroPath's definition; the band applies to stacking only, and the
    applied test derives it from those files in the same way.
    """
    keep = tissue[None] & ~saturation
    if guard_px <= 0:
        return keep
    inner = None
    for g in range(keep.shape[0]):
        if keep[g].all() or not keep[g].any():
            continue  # nothing excluded (the distance to "nothing" is undefined), or nothing kept
        if saturation[g].any():
            keep[g] = ndi.distance_transform_edt(keep[g]) > guard_px
        else:
            if inner is None:  # every unsaturated group shares the tissue's band
                inner = ndi.distance_transform_edt(tissue) > guard_px
            keep[g] = inner
    return keep


def compute_field_masks(
    image: np.ndarray,
    thresholds: np.ndarray,
    exposure_ms: np.ndarray,
    groups: tuple[LayerGroup, ...],
    grid: WorkingGrid,
    params: MaskParameters,
    dark_current: float = 0.0,
    ceiling: np.ndarray | None = None,
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
    ceiling
        Per layer, the corrected value of a clipped raw pixel
        (:func:`~shadeflow.core.meanimage.exposure.corrected_ceiling`): pixels at or above it are saturated.
    """
    smoothed = working_smoothed(image, grid, params)
    tissue = tissue_mask(smoothed, thresholds, groups, grid, params, dark_current)
    nl, nl2 = normalized_laplacian(image, params.cuts.presmooth_sigma, grid.binning)
    blur = blur_mask(nl, nl2, tissue, groups, grid, params)
    clipped = None if ceiling is None else clipped_cells(image, ceiling, grid.binning)
    saturation = saturation_masks(smoothed, exposure_ms, groups, grid, params, clipped)
    return FieldMasks(
        tissue=tissue, blur=blur, saturation=saturation, binning=grid.binning, shape=image.shape[1:]
    )


def clipped_cells(image: np.ndarray, ceiling: np.ndarray, binning: int) -> np.ndarray | None:
    """(L, h, w) working-grid cells holding a pixel at or above its layer's ``ceiling``; None if there is
    none."""
    layers = [i for i in range(image.shape[0]) if image[i].max() >= ceiling[i]]
    if not layers:
        return None
    out = np.zeros((image.shape[0], -(-image.shape[1] // binning), -(-image.shape[2] // binning)), bool)
    for i in layers:
        out[i] = morph.bin_mean(image[i] >= ceiling[i], binning) > 0
    return out


def working_smoothed(image: np.ndarray, grid: WorkingGrid, params: MaskParameters) -> np.ndarray:
    """The field binned to the working grid and smoothed to σ = 5 native px (float32, (L, h, w)).

    ``morph.smooth(morph.bin_mean(image, b), σ)`` (scipy, edges replicated) computed layer by layer by
    compiled kernels with the same arithmetic: the same bits, one pass over the field.
    """
    n, h, w = image.shape
    b = grid.binning
    binned = np.empty((-(-h // b), -(-w // b)), np.float32)
    smoothed = np.empty((n, *binned.shape), np.float32)
    taps = _smoothing_taps(grid, params)
    for i, layer in enumerate(image):
        kernels.block_mean_layer(layer, b, binned)
        kernels.gaussian_layer(binned, taps, kernels.NEAREST, smoothed[i])
    return smoothed


def working_smoothed_interleaved(
    raw: np.ndarray, tables: np.ndarray, table_of: np.ndarray, grid: WorkingGrid, params: MaskParameters
) -> np.ndarray:
    """:func:`working_smoothed` of a field as stored, (H, W, L) raw counts, exposure-corrected by
    ``tables``/``table_of`` (``exposure.exposure_tables``) as it is binned: the same bits, without
    transposing or correcting the field at full resolution first."""
    h, w, n = raw.shape
    b = grid.binning
    binned = np.empty((n, -(-h // b), -(-w // b)), np.float32)
    kernels.block_mean_interleaved(raw, tables, table_of, b, binned)
    smoothed = np.empty_like(binned)
    taps = _smoothing_taps(grid, params)
    for i in range(n):
        kernels.gaussian_layer(binned[i], taps, kernels.NEAREST, smoothed[i])
    return smoothed


def _smoothing_taps(grid: WorkingGrid, params: MaskParameters) -> np.ndarray:
    sigma = grid.sigma(params.smoothing_sigma)
    return kernels.gaussian_taps(sigma, 4.0) if sigma > 1e-15 else np.ones(1)  # scipy skips σ ≈ 0


def pack_tissue_mask(tissue: np.ndarray) -> bytes:
    """AstroPath's ``_tissue_mask.bin``: the (H, W) mask bit-packed row-major (numpy ``packbits``)."""
    return np.packbits(tissue.astype(bool).ravel()).tobytes()


def unpack_tissue_mask(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=h * w).reshape(h, w).astype(bool)
