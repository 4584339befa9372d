"""How right the mean-image chain is on a synthetic cohort: against the planted flatfield and an informed
oracle.

The *pipeline* arm runs the core functions the flows run —
:func:`~shadeflow.core.meanimage.pipeline.compute_mean_image` per slide (thresholds, masks written to
``<slide>/meanimage/image_masking/``, stacking), the model build
(:func:`~shadeflow.core.model.flatfield.build_flatfield` on the merged slide stacks) and the applied test
(:func:`~shadeflow.core.applied.evaluation.split_fields`,
:func:`~shadeflow.core.applied.evaluation.restack` with the mask files just written,
:func:`~shadeflow.core.applied.evaluation.evaluate`).

The *oracle* arm is the same chain with the masks replaced by the truth: the same bulk fields, read
and exposure-normalised by the same function (:func:`~shadeflow.core.meanimage.pipeline.read_corrected_field`:
dark current kept, as AstroPath's mean image keeps it), stacked under the planted tissue mask minus
the planted saturated spots of each layer group (blurred tissue is kept, as the pipeline keeps it):
every planted tissue pixel of every bulk field, whatever share of its field is tissue. Then the same
applied-test split, smoothed and normalised the same way. What separates the two arms is therefore
only what the thresholds, the masks and the choice of stacked pixels get wrong.

Figures (all relative RMS after normalising each layer to mean 1, as ``flows/demo.py`` reports them):

* mean image — a slide's mean image smoothed at the flatfield σ ignoring unstacked pixels
  (:func:`~shadeflow.core.smoothing.masked_smooth`) against the planted flatfield, over stacked pixels;
* model — the flatfield of all slides against the planted one, over the whole field;
* applied reduction — −(% change) of the mean std of the smoothed mean-relative intensity, whole image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..applied.evaluation import evaluate, restack, split_fields
from ..io import storage
from ..io.slide import Field, SlideError, load_slide
from ..meanimage.masks.parameters import MaskParameters
from ..meanimage.outputs import output_url
from ..meanimage.pipeline import MASK_DIR, SlidePlan, compute_mean_image, plan_slide, read_corrected_field
from ..model.flatfield import build_flatfield
from ..smoothing import flatfield_sigma, masked_smooth, relative_rms
from ..stack import CountAccumulator, FieldLogRow, MeanImageStack
from .slides import read_truth_flatfield, read_truth_masks


@dataclass
class ArmResult:
    """One arm's figures on a cohort (NaN where a step could not be done; ``failures`` says why)."""

    mean_image: np.ndarray  # (slides, L) relative RMS of each slide's smoothed mean image
    model: np.ndarray  # (L,) relative RMS of the model
    applied_reduction: float  # % of the illumination variation (mean std) the applied test removes
    stacked_fields: np.ndarray  # (slides,) bulk fields stacked in at least one layer
    failures: list[str] = field(default_factory=list)

    def mean_image_figure(self) -> float:
        """Worst slide's median-over-layers error (inf if a slide made no mean image)."""
        per_slide = [np.nanmedian(row) if np.isfinite(row).any() else np.inf for row in self.mean_image]
        return float(max(per_slide))

    def model_figure(self) -> float:
        return float(np.nanmedian(self.model)) if np.isfinite(self.model).any() else np.inf


def planted_stacking_masks(root: str, slide_id: str, key: str, shape: tuple[int, int]) -> np.ndarray:
    """(G, H, W) pixels the oracle stacks per layer group: planted tissue minus the group's planted
    saturation."""
    truth = read_truth_masks(root, slide_id, key, shape)
    return truth["tissue"][None] & ~truth["saturation"]


#: the oracle stacks a layer group of a field wherever it has any planted tissue
ORACLE_MIN_FRACTION = 1e-12


def stack_with_masks(
    plan: SlidePlan, fields: list[Field], masks_of: Callable[[Field], np.ndarray], use: str
) -> MeanImageStack:
    """Fields of one slide read as the pipeline reads them, stacked under the given masks (every kept pixel),
    in counts/ms."""
    slide = plan.slide
    h, w, n = slide.shape
    accumulator = CountAccumulator.empty((n, h, w))
    for f in fields:
        image = read_corrected_field(plan, f)
        layers = accumulator.add(image, masks_of(f), slide.layer_groups, ORACLE_MIN_FRACTION)
        accumulator.fields.append(FieldLogRow(slide.slide_id, storage.basename(f.file), "bulk", use, layers))
    return accumulator.to_stack(plan.exposure_ms)


def mean_image_error(stack: MeanImageStack, truth: np.ndarray) -> np.ndarray:
    """Per-layer relative RMS of a stack's smoothed mean image against the planted flatfield (NaN: nothing
    stacked)."""
    h, w = stack.shape[1:]
    smoothed = masked_smooth(stack.mean(), stack.count, flatfield_sigma(h, w))
    return relative_rms(smoothed, truth, where=stack.count > 0)


def _merge(stacks: list[MeanImageStack]) -> MeanImageStack | None:
    merged = None
    for s in stacks:
        merged = s if merged is None else merged.merge(s)
    return merged


def run_arm(
    root: str, slide_urls: list[str], oracle: bool, seed: int = 1, params: MaskParameters | None = None
) -> ArmResult:
    """The chain on a synthetic cohort, with the pipeline's masks or (``oracle``) the planted ones.

    The pipeline arm must run first: it writes the mask files its applied test re-reads. ``params``
    replaces the pipeline's default masking parameters.
    """
    plans = [plan_slide(load_slide(url), params) for url in slide_urls]
    shape = plans[0].slide.shape
    n_layers = shape[2]
    truth = read_truth_flatfield(root, shape)
    failures: list[str] = []
    stacks: list[MeanImageStack | None] = []
    for plan in plans:
        slide = plan.slide
        try:
            if oracle:
                stack = stack_with_masks(
                    plan,
                    plan.bulk_fields,
                    lambda f, s=slide: planted_stacking_masks(root, s.slide_id, f.key, shape[:2]),
                    "stacking",
                )
                if stack.n_images.sum() == 0:
                    raise SlideError(f"slide {slide.slide_id}: the planted masks keep no bulk field")
            else:
                stack = compute_mean_image(plan, storage.join(output_url(slide.url), MASK_DIR)).stack
        except SlideError as exc:
            failures.append(str(exc))
            stack = None
        stacks.append(stack)
    mean_image = np.array(
        [mean_image_error(s, truth) if s is not None else np.full(n_layers, np.nan) for s in stacks]
    )
    stacked = np.array(
        [sum(1 for row in s.fields if row.stacked_in_layers) if s is not None else 0 for s in stacks]
    )

    model = np.full(n_layers, np.nan)
    merged = _merge([s for s in stacks if s is not None])
    if merged is not None:
        try:
            model = relative_rms(build_flatfield(merged).flatfield, truth)
        except ValueError as exc:
            failures.append(f"model: {exc}")

    reduction = float("nan")
    try:
        halves: list[list[MeanImageStack]] = [[], []]
        for plan in plans:
            slide = plan.slide
            split = split_fields(slide.slide_id, [f.key for f in plan.bulk_fields], seed)
            for i, keys in enumerate((split.flatfield, split.corrected)):
                fields = [slide.field_by_key(k) for k in keys]
                use = ("flatfield", "corrected_mean_image")[i]
                if oracle:
                    halves[i].append(
                        stack_with_masks(
                            plan,
                            fields,
                            lambda f, s=slide: planted_stacking_masks(root, s.slide_id, f.key, shape[:2]),
                            use,
                        )
                    )
                else:
                    halves[i].append(restack(plan, fields, use))
        result = evaluate(_merge(halves[0]), _merge(halves[1]))
        reduction = -float(result.summary()["change_percent"]["mean_std"])
    except (ValueError, SlideError) as exc:
        failures.append(f"applied test: {exc}")
    return ArmResult(mean_image, model, reduction, stacked, failures)
