"""Per-slide masked mean image, as plain functions on fields (AstroPath §2).

The order of work for one slide:

1. :func:`plan_slide` — validate the slide, split fields into edge and bulk, fix the working grid.
2. :func:`field_thresholds` on every edge field, then
   :func:`~shadeflow.core.meanimage.thresholds.slide_thresholds`.
3. :func:`mask_and_stack` on batches of fields: masks for every field (written to ``image_masking/``),
   bulk fields stacked into a :class:`~shadeflow.core.stack.CountAccumulator`; batches merge as a tree.
4. ``shadeflow.core.meanimage.outputs`` writes the mean image, its statistics and tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from .. import buffers
from ..io import astropath as astropath_io
from ..io import storage
from ..io.slide import Field, Slide, SlideError, is_interleaved, read_field, read_interleaved
from ..io.transpose import layers_from_interleaved
from ..stack import CountAccumulator, FieldLogRow, MeanImageStack
from .exposure import correct_exposure, corrected_ceiling, exposure_tables
from .geometry import pixel_scale, plannable_fields
from .masks.combined import (
    FieldMasks,
    MaskRegion,
    compute_field_masks,
    pack_tissue_mask,
    working_smoothed,
    working_smoothed_interleaved,
)
from .masks.parameters import MaskParameters, WorkingGrid
from .thresholds import N_BINS, slide_thresholds, thresholds_from_histograms

MASK_DIR = "image_masking"
#: recorded with every output, so a rerun does not take an output of an earlier masking method for its own
#: (2: thresholds above the background mode, every field stacks its kept pixels, a guard band around
#: background and saturation, field-border background not filled as holes, clipped pixels flagged)
MEANIMAGE_METHOD = "masks-2"


@dataclass(frozen=True)
class SlidePlan:
    """What will be done to a slide: its fields split into edge and bulk, and the masking grid."""

    slide: Slide
    bulk: tuple[bool, ...]  # per field, in slide.fields order
    grid: WorkingGrid
    params: MaskParameters
    skip_masking: bool = False

    @property
    def edge_fields(self) -> list[Field]:
        return [f for f, b in zip(self.slide.fields, self.bulk) if not b]

    @property
    def bulk_fields(self) -> list[Field]:
        return [f for f, b in zip(self.slide.fields, self.bulk) if b]

    @cached_property
    def bulk_keys(self) -> frozenset[str]:
        return frozenset(f.key for f, b in zip(self.slide.fields, self.bulk) if b)

    def is_bulk(self, field: Field) -> bool:
        return field.key in self.bulk_keys

    @property
    def exposure_ms(self) -> np.ndarray:
        """Per-layer exposure time every field is normalised to (the slide median)."""
        return self.slide.median_exposure_per_layer

    @property
    def stacking_guard_px(self) -> float:
        """The stacking guard band in pixels of this slide's fields (0 without masking)."""
        return 0.0 if self.skip_masking else self.grid.data_length(self.params.stacking_guard)


def plan_slide(
    slide: Slide, params: MaskParameters | None = None, binning: int | None = None, skip_masking: bool = False
) -> SlidePlan:
    """Check the slide can make a mean image and decide how.

    Raises
    ------
    SlideError
        No bulk fields (none has 8 overlapping neighbours), or no edge fields to threshold on.
    """
    params = params or MaskParameters(microscope=slide.microscope)
    try:
        params.cuts  # noqa: B018 — evaluated for its check: a microscope without cuts raises here
        for group in slide.layer_groups:
            params.saturation_cut(group.name)
            params.fold_cut(group.name)
    except ValueError as exc:
        raise SlideError(f"slide {slide.slide_id}: {exc}") from None
    bulk = tuple(bool(b) for b in plannable_fields(slide, skip_masking))
    if binning is not None and binning not in (1, 2, 4, 8):
        raise ValueError(f"mask binning must be 1, 2, 4 or 8, got {binning}")
    grid = WorkingGrid.auto(pixel_scale(slide), binning)
    return SlidePlan(slide=slide, bulk=bulk, grid=grid, params=params, skip_masking=skip_masking)


def read_corrected_field(plan: SlidePlan, field: Field) -> np.ndarray:
    """A field read and exposure-time corrected to the slide medians, (L, H, W) uint16.

    The array is this thread's scratch buffer: valid until the thread reads its next field.
    """
    slide = plan.slide
    if is_interleaved(field):  # transposed and corrected in one pass
        h, w, l = slide.shape
        tables, table_of = _exposure_tables(plan, field)
        image = buffers.scratch("field-layers", (l, h, w), slide.dtype)
        layers_from_interleaved(read_interleaved(slide, field, reuse_buffers=True), tables, table_of, image)
        return image
    return correct_exposure(
        read_field(slide, field, reuse_buffers=True),
        slide.exposure_per_layer(field),
        plan.exposure_ms,
        slide.dark_current,
        inplace=True,
    )


def read_corrected_layers(plan: SlidePlan, field: Field, layers: Sequence[int]) -> np.ndarray:
    """Some layers (0-based) of a field, exposure-time corrected as :func:`read_corrected_field` corrects
    them, (len(layers), H, W) uint16 in a new array: for a report that shows a few layers of a field,
    without transposing and correcting all of them."""
    slide, layers = plan.slide, list(layers)
    return correct_exposure(
        read_field(slide, field, layers=layers),
        slide.exposure_per_layer(field)[layers],
        plan.exposure_ms[layers],
        slide.dark_current,
        inplace=True,
    )


def _exposure_tables(plan: SlidePlan, field: Field) -> tuple[np.ndarray, np.ndarray]:
    """The exposure correction of ``field`` to the plan's exposure times, as lookup tables for kernels that
    correct as they read (``exposure.exposure_tables``)."""
    slide = plan.slide
    return exposure_tables(slide.exposure_per_layer(field), plan.exposure_ms, slide.dark_current)


def field_thresholds(plan: SlidePlan, field: Field) -> tuple[np.ndarray, np.ndarray]:
    """Background threshold of each layer of one (edge) field, in counts, shape (L,),
    and the histograms they came from, (L, 65536) int64."""
    slide = plan.slide
    if is_interleaved(field):  # binned as stored: no full-resolution transpose or corrected copy
        tables, table_of = _exposure_tables(plan, field)
        raw = read_interleaved(slide, field, reuse_buffers=True)
        smoothed = working_smoothed_interleaved(raw, tables, table_of, plan.grid, plan.params)
    else:
        smoothed = working_smoothed(read_corrected_field(plan, field), plan.grid, plan.params)
    smoothed = np.clip(np.rint(smoothed), 0, 65535).astype(np.uint16)
    histograms = np.stack([np.bincount(layer.ravel(), minlength=N_BINS) for layer in smoothed])
    return thresholds_from_histograms(histograms), histograms


@dataclass
class ThresholdResult:
    """The background thresholds of a slide and the edge-field data behind them."""

    fields: list[Field]  # edge fields, in the order of the rows below
    field_thresholds: np.ndarray  # (n_edge, L) counts
    thresholds: np.ndarray  # (L,) slide thresholds, counts
    histogram: np.ndarray  # (L, 65536) summed histograms of the edge fields' smoothed counts


def compute_thresholds(plan: SlidePlan) -> ThresholdResult:
    """Slide background thresholds from all edge fields, one after another (the reference path)."""
    fields = plan.edge_fields
    per_field = [field_thresholds(plan, f) for f in fields]
    rows = np.array([t for t, _ in per_field]).reshape(len(fields), plan.slide.n_layers)
    histogram = np.zeros((plan.slide.n_layers, N_BINS), np.int64)
    for _, h in per_field:
        histogram += h
    return ThresholdResult(fields, rows, slide_thresholds(rows), histogram)


@dataclass(frozen=True)
class FieldSummary:
    """What masking found in one field (for tables, plots and artifacts)."""

    key: str
    n: int
    bulk: bool
    tissue_fraction: float
    blur_pixels: int
    saturated_pixels: tuple[int, ...]  # per layer group
    stacked_layers: int


@dataclass
class BatchResult:
    """A batch of fields masked and (bulk fields) stacked. Batches merge into the slide's result."""

    accumulator: CountAccumulator
    regions: list[MaskRegion] = field(default_factory=list)
    summaries: list[FieldSummary] = field(default_factory=list)

    def merge(self, other: BatchResult) -> BatchResult:
        """Merge ``other`` into this result (consumes both; returns this one)."""
        self.accumulator.merge(other.accumulator)
        self.regions.extend(other.regions)
        self.summaries.extend(other.summaries)
        return self


def mask_and_stack(
    plan: SlidePlan,
    fields: list[Field],
    thresholds: np.ndarray,
    mask_dir_url: str,
    on_field: Callable[[str], None] | None = None,
) -> BatchResult:
    """Mask a batch of fields, write their mask files, and stack the bulk ones.

    Parameters
    ----------
    thresholds
        Slide background threshold per layer (counts).
    mask_dir_url
        Folder for AstroPath's per-field mask files (``<key>_tissue_mask.bin``, ``<key>_full_mask.bin``).
    on_field
        Called with each field's key when it is done (progress reporting).
    """
    slide = plan.slide
    h, w, l = slide.shape
    result = BatchResult(CountAccumulator.empty((l, h, w)))
    for f in fields:
        image = read_corrected_field(plan, f)
        if plan.skip_masking:
            masks = FieldMasks(
                tissue=np.ones((h, w), bool),
                blur=np.zeros((h, w), bool),
                saturation=np.zeros((len(slide.layer_groups), h, w), bool),
                binning=1,
                shape=(h, w),
            )
        else:
            ceiling = corrected_ceiling(slide.exposure_per_layer(f), plan.exposure_ms, slide.dark_current)
            masks = compute_field_masks(
                image,
                thresholds,
                plan.exposure_ms,
                slide.layer_groups,
                plan.grid,
                plan.params,
                slide.dark_current,
                ceiling,
            )
            _write_mask_files(mask_dir_url, f, masks, slide, result.regions)
        stacked: tuple[int, ...] = ()
        bulk = plan.is_bulk(f)
        if bulk:
            stacked = result.accumulator.add(
                image,
                masks.stacking_masks(plan.stacking_guard_px),
                slide.layer_groups,
                plan.params.min_pixel_fraction,
            )
            result.accumulator.fields.append(
                FieldLogRow(slide.slide_id, storage.basename(f.file), "bulk", "stacking", stacked)
            )
        result.summaries.append(
            FieldSummary(
                key=f.key,
                n=f.n,
                bulk=bulk,
                tissue_fraction=masks.pixel_count(masks.tissue) / (h * w),
                blur_pixels=masks.pixel_count(masks.blur),
                saturated_pixels=tuple(masks.pixel_count(s) for s in masks.saturation),
                stacked_layers=len(stacked),
            )
        )
        if on_field is not None:
            on_field(f.key)
    return result


def _write_mask_files(
    mask_dir_url: str, field: Field, masks: FieldMasks, slide: Slide, regions: list[MaskRegion]
) -> None:
    storage.write_bytes(
        storage.join(mask_dir_url, f"{field.key}_tissue_mask.bin"), pack_tissue_mask(masks.full(masks.tissue))
    )
    if masks.flagged:
        labelled, field_regions = masks.labelled(field.key, slide.layer_groups)
        storage.write_bytes(storage.join(mask_dir_url, f"{field.key}_full_mask.bin"), labelled.tobytes())
        regions.extend(field_regions)


@dataclass
class MeanImageResult:
    """A slide's mean image and everything that documents it (the input of the outputs and reports)."""

    plan: SlidePlan
    thresholds: ThresholdResult
    stack: MeanImageStack  # counts/ms
    regions: list[MaskRegion]
    summaries: list[FieldSummary]  # one per field, slide.fields order

    @property
    def slide_id(self) -> str:
        return self.plan.slide.slide_id


def finish_mean_image(plan: SlidePlan, thresholds: ThresholdResult, batches: BatchResult) -> MeanImageResult:
    """Check tissue was found and convert the stacked counts to counts/ms."""
    check_tissue_found(plan, batches)
    order = {f.key: i for i, f in enumerate(plan.slide.fields)}
    stack = batches.accumulator.to_stack(plan.exposure_ms)
    # the field log in the slide's field order, whatever order the cluster's batches merged in
    # (batches merge as they finish: without this, fields_used.csv changed from run to run)
    by_file = {storage.basename(f.file): i for i, f in enumerate(plan.slide.fields)}
    stack.fields = sorted(stack.fields, key=lambda row: by_file.get(row.file, len(by_file)))
    return MeanImageResult(
        plan=plan,
        thresholds=thresholds,
        stack=stack,
        regions=sorted(batches.regions, key=lambda r: (order[r.image_key], r.region_index)),
        summaries=sorted(batches.summaries, key=lambda s: order[s.key]),
    )


def compute_mean_image(plan: SlidePlan, mask_dir_url: str) -> MeanImageResult:
    """The whole mean-image computation of one slide in this thread (the reference path; flows use Dask)."""
    thresholds = compute_thresholds(plan)
    batches = mask_and_stack(plan, list(plan.slide.fields), thresholds.thresholds, mask_dir_url)
    return finish_mean_image(plan, thresholds, batches)


def check_tissue_found(plan: SlidePlan, result: BatchResult) -> None:
    """A slide whose bulk fields contain no tissue in any layer makes no mean image."""
    if result.accumulator.n_images.sum() == 0:
        n = len(plan.bulk_fields)
        best = max((s.tissue_fraction for s in result.summaries if s.bulk), default=0.0)
        needed = f"≥ {plan.params.min_pixel_fraction:.0%}" if plan.params.min_pixel_fraction > 0 else "any"
        raise SlideError(
            f"slide {plan.slide.slide_id}: no tissue found — none of its {n} bulk fields has "
            f"{needed} usable tissue in any layer (best: {best:.0%}); nothing was stacked"
        )


def edge_log_rows(plan: SlidePlan) -> list[FieldLogRow]:
    return [
        FieldLogRow(plan.slide.slide_id, storage.basename(f.file), "edge", "thresholding")
        for f in plan.edge_fields
    ]


def read_mask_file(url: str, shape: tuple[int, int], n_groups: int) -> np.ndarray:
    """A ``_full_mask.bin`` as (H, W, G+1); its dtype (uint8 or uint16) follows from its size."""
    data = storage.read_bytes(url)
    h, w = shape
    itemsize = len(data) // (h * w * (n_groups + 1))
    dtype = {1: np.uint8, 2: np.uint16}.get(itemsize)
    if dtype is None or len(data) != h * w * (n_groups + 1) * itemsize:
        raise astropath_io.BinFormatError(f"{url}: {len(data)} bytes is not a {h}x{w}x{n_groups + 1} mask")
    return np.frombuffer(data, dtype=dtype).reshape(h, w, n_groups + 1)
