"""Does a flatfield really flatten held-out images? (AstroPath's applied flatfield test, §5.)

Each slide's bulk fields are split into two halves by a seeded generator. One half of every slide
builds a test flatfield exactly as a model is built; the other half's mean image is divided by it.
The illumination variation — spread and standard deviation of the smoothed, mean-relative
intensity — is measured before and after. Fields are re-stacked with the masks meanimage wrote.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..illumination import Variation, layer_variation, mean_relative
from ..io import storage
from ..io.slide import Field
from ..meanimage.masks.combined import stacking_masks, unpack_tissue_mask
from ..meanimage.outputs import output_url
from ..meanimage.pipeline import MASK_DIR, SlidePlan, read_corrected_field, read_mask_file
from ..model.flatfield import Flatfield, build_flatfield
from ..model.models_csv import ModelError
from ..morphology import upsample
from ..smoothing import flatfield_sigma, masked_smooth
from ..stack import CountAccumulator, FieldLogRow, MeanImageStack, mean_and_std_err


@dataclass(frozen=True)
class Split:
    """A slide's bulk fields in two halves: one builds the test flatfield, the other is corrected."""

    slide_id: str
    flatfield: tuple[str, ...]  # field keys
    corrected: tuple[str, ...]


def split_fields(slide_id: str, bulk_keys: list[str], seed: int) -> Split:
    """Draw ⌈n/2⌉ of a slide's bulk fields for the flatfield half, reproducibly.

    The generator is seeded by ``seed`` and the SlideID, so a slide splits the same way whatever
    other slides are in the test (AstroPath's split was unseeded).
    """
    if len(bulk_keys) < 2:
        raise ModelError(
            f"slide {slide_id}: {len(bulk_keys)} bulk field(s); the applied test needs at least 2 to split"
        )
    rng = np.random.default_rng([seed, zlib.crc32(slide_id.encode())])
    chosen = set(rng.choice(len(bulk_keys), size=(len(bulk_keys) + 1) // 2, replace=False).tolist())
    return Split(
        slide_id,
        tuple(k for i, k in enumerate(bulk_keys) if i in chosen),
        tuple(k for i, k in enumerate(bulk_keys) if i not in chosen),
    )


def stacking_masks_from_files(
    mask_dir_url: str,
    key: str,
    shape: tuple[int, int],
    n_groups: int,
    guard_px: float = 0.0,
    binning: int = 1,
) -> np.ndarray:
    """(G, H, W) pixels to stack per layer group, from the mask files meanimage wrote for a field.

    Tissue comes from ``<key>_tissue_mask.bin``; group g's saturation from ``<key>_full_mask.bin``
    plane g, whose saturation labels are those above plane 0's largest (blur) label. ``guard_px`` is
    the stacking guard band (:func:`~shadeflow.core.meanimage.masks.combined.stacking_masks`, in
    full-resolution pixels). Masks made on a working grid of ``binning`` (constant over its cells) get
    the band on that grid, so the fields are stacked exactly as meanimage stacked them; others at full
    resolution.
    """
    tissue_url = storage.join(mask_dir_url, f"{key}_tissue_mask.bin")
    if not storage.exists(tissue_url):
        raise ModelError(f"field {key}: no tissue mask {tissue_url}; rerun meanimage for its slide")
    tissue = unpack_tissue_mask(storage.read_bytes(tissue_url), shape)
    saturation = np.zeros((n_groups, *shape), bool)
    full_url = storage.join(mask_dir_url, f"{key}_full_mask.bin")
    if storage.exists(full_url):
        labels = read_mask_file(full_url, shape, n_groups)
        last_blur = max(int(labels[..., 0].max()), 1)
        for g in range(n_groups):
            saturation[g] = labels[..., g + 1] > last_blur
    if guard_px > 0 and binning > 1:
        cells_tissue, cells_saturation = tissue[::binning, ::binning], saturation[:, ::binning, ::binning]
        if (upsample(cells_tissue, binning, shape) == tissue).all() and (
            upsample(cells_saturation, binning, shape) == saturation
        ).all():
            return upsample(
                stacking_masks(cells_tissue, cells_saturation, guard_px / binning), binning, shape
            )
    return stacking_masks(tissue, saturation, guard_px)


def restack(plan: SlidePlan, fields: list[Field], half: str) -> MeanImageStack:
    """Stack fields of one slide with its meanimage masks, in counts/ms.

    ``half`` names the use in the field log (e.g. "flatfield" or "corrected_mean_image").
    """
    slide = plan.slide
    h, w, n = slide.shape
    mask_dir = storage.join(output_url(slide.url), MASK_DIR)
    accumulator = CountAccumulator.empty((n, h, w))
    for field in fields:
        image = read_corrected_field(plan, field)
        masks = stacking_masks_from_files(
            mask_dir, field.key, (h, w), len(slide.layer_groups), plan.stacking_guard_px, plan.grid.binning
        )
        layers = accumulator.add(image, masks, slide.layer_groups, plan.params.min_pixel_fraction)
        accumulator.fields.append(
            FieldLogRow(slide.slide_id, storage.basename(field.file), "bulk", half, layers)
        )
    return accumulator.to_stack(plan.exposure_ms)


@dataclass(frozen=True)
class LayerMetrics:
    """Illumination variation of one layer before and after correction."""

    layer: int
    pre: Variation
    post: Variation
    pre_central: Variation
    post_central: Variation

    @staticmethod
    def change(pre: float, post: float) -> float:
        """Percent change, 100 · (post − pre) / pre."""
        return 100.0 * (post - pre) / pre if pre else float("nan")

    def row(self) -> dict[str, float]:
        """A row of ``applied_flatfield_metrics.csv``."""
        out: dict[str, float] = {"layer_n": self.layer}
        for name, value in (
            ("pre", self.pre),
            ("post", self.post),
            ("pre_central", self.pre_central),
            ("post_central", self.post_central),
        ):
            out.update(
                {
                    f"{name}_p5": value.p5,
                    f"{name}_p95": value.p95,
                    f"{name}_spread": value.spread,
                    f"{name}_std": value.std,
                }
            )
        out["spread_change_percent"] = self.change(self.pre.spread, self.post.spread)
        out["std_change_percent"] = self.change(self.pre.std, self.post.std)
        out["central_spread_change_percent"] = self.change(self.pre_central.spread, self.post_central.spread)
        out["central_std_change_percent"] = self.change(self.pre_central.std, self.post_central.std)
        return out


@dataclass
class AppliedTestResult:
    flatfield: Flatfield  # built from the flatfield halves
    flatfield_stack: MeanImageStack
    corrected_stack: MeanImageStack
    mean: np.ndarray  # the corrected halves' mean image before correction
    corrected: np.ndarray
    corrected_error: np.ndarray
    smoothed_pre: np.ndarray  # smoothed, mean-relative
    smoothed_post: np.ndarray
    metrics: list[LayerMetrics]

    @property
    def tested_layers(self) -> list[int]:
        """0-based layers stacked in both halves (the others say nothing about the flatfield)."""
        empty = set(self.flatfield.empty_layers)
        return [
            i for i in range(len(self.metrics)) if self.corrected_stack.n_images[i] > 0 and i + 1 not in empty
        ]

    def summary(self) -> dict[str, dict[str, float]]:
        """AstroPath's tables over the tested layers: extremes and averaged spreads, before/after,
        whole/central; % change."""
        table: dict[str, dict[str, float]] = {}
        layers = self.tested_layers or list(range(len(self.metrics)))
        for when, images, attr in (
            ("pre", self.smoothed_pre[layers], "pre"),
            ("post", self.smoothed_post[layers], "post"),
        ):
            whole = [getattr(self.metrics[i], attr) for i in layers]
            centre = [getattr(self.metrics[i], f"{attr}_central") for i in layers]
            table[when] = {
                "max_relative_intensity": float(images.max()),
                "min_relative_intensity": float(images.min()),
                "mean_spread": float(np.mean([v.spread for v in whole])),
                "mean_std": float(np.mean([v.std for v in whole])),
                "mean_central_spread": float(np.mean([v.spread for v in centre])),
                "mean_central_std": float(np.mean([v.std for v in centre])),
            }
        table["change_percent"] = {
            key: LayerMetrics.change(table["pre"][key], table["post"][key])
            for key in ("mean_spread", "mean_std", "mean_central_spread", "mean_central_std")
        }
        return table


def correct_mean_image(
    mean: np.ndarray, std_err: np.ndarray, flatfield: np.ndarray, uncertainty: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Corrected mean image m/F and its uncertainty, relative errors combined in quadrature.

    .. math:: c = m/F, \\qquad \\sigma_c = |c|\\sqrt{(\\sigma_m/m)^2 + (\\delta F/F)^2}

    (AstroPath multiplied the relative errors instead.) Pixels with m = 0 get σ_c = σ_m / F.
    """
    corrected = mean / flatfield
    relative_mean = np.divide(std_err, np.abs(mean), out=np.zeros(mean.shape), where=mean != 0)
    error = np.abs(corrected) * np.sqrt(relative_mean**2 + (uncertainty / flatfield) ** 2)
    error = np.where(mean != 0, error, std_err / flatfield)
    return corrected, error


def evaluate(
    flatfield_stack: MeanImageStack,
    corrected_stack: MeanImageStack,
    sigma: float | None = None,
    border: str = "linear",
) -> AppliedTestResult:
    """Build the test flatfield from one half, correct the other half's mean image, measure both.

    The evaluation smoothing is AstroPath's — a Gaussian of the same σ with replicated borders, then
    each layer divided by its plain mean — except that pixels where nothing was stacked are ignored.
    """
    h, w = flatfield_stack.shape[1:]
    sigma = flatfield_sigma(h, w) if sigma is None else float(sigma)
    model = build_flatfield(flatfield_stack, sigma, border)
    mean, std_err = mean_and_std_err(corrected_stack.sum, corrected_stack.sum_sq, corrected_stack.count)
    corrected, error = correct_mean_image(mean, std_err, model.flatfield, model.uncertainty)
    pre = mean_relative(masked_smooth(mean, corrected_stack.count, sigma))
    post = mean_relative(masked_smooth(corrected, corrected_stack.count, sigma))
    metrics = []
    for layer in range(mean.shape[0]):
        before, before_central = layer_variation(pre[layer])
        after, after_central = layer_variation(post[layer])
        metrics.append(LayerMetrics(layer + 1, before, after, before_central, after_central))
    return AppliedTestResult(
        model, flatfield_stack, corrected_stack, mean, corrected, error, pre, post, metrics
    )
