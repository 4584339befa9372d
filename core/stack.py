"""The mean-image stack: a mergeable statistic of masked fields.

A stack holds, per pixel and layer, the sum and sum of squares of the stacked values and how many
fields contributed (the *mask stack*), plus per-layer image counts and the log of fields used.
Fields, slides, cohorts, halves of an applied test and flatfield models are all merges of stacks, so
memory is bounded by one stack however many fields go in.

Within a slide every field is normalised by the same per-layer exposure times, so stacking runs on
exact integer counts (:class:`CountAccumulator`) and converts to counts/ms once at the end.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from shadeflow.core.slide import LayerGroup


@dataclass(frozen=True)
class FieldLogRow:
    """A row of AstroPath's ``fields_used.csv``."""

    slide: str
    file: str
    location: str  # "edge" or "bulk"
    use: str  # "thresholding" or "stacking"
    stacked_in_layers: tuple[int, ...] = ()  # 1-based


@dataclass
class MeanImageStack:
    """Sum, sum of squares and count per pixel and layer of stacked fields, in counts/ms.

    Arrays are layer-major, (L, H, W).
    """

    sum: np.ndarray  # float64
    sum_sq: np.ndarray  # float64
    count: np.ndarray  # uint32: the mask stack
    n_images: np.ndarray  # int64 (L,): fields stacked in each layer
    fields: list[FieldLogRow] = field(default_factory=list)

    @classmethod
    def empty(cls, shape: tuple[int, int, int]) -> "MeanImageStack":
        """An empty stack for (L, H, W) images."""
        return cls(
            sum=np.zeros(shape, np.float64),
            sum_sq=np.zeros(shape, np.float64),
            count=np.zeros(shape, np.uint32),
            n_images=np.zeros(shape[0], np.int64),
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.sum.shape

    def merge(self, other: "MeanImageStack") -> "MeanImageStack":
        """The stack of both inputs (sums add; per-pixel counts weight every mean)."""
        if other.shape != self.shape:
            raise ValueError(f"cannot merge stacks of shape {self.shape} and {other.shape}")
        return MeanImageStack(
            sum=self.sum + other.sum,
            sum_sq=self.sum_sq + other.sum_sq,
            count=self.count + other.count,
            n_images=self.n_images + other.n_images,
            fields=self.fields + other.fields,
        )

    def mean(self) -> np.ndarray:
        """Mean image, 0 where nothing was stacked."""
        return mean_and_std_err(self.sum, self.sum_sq, self.count)[0]

    def std_err(self) -> np.ndarray:
        """Standard error of the mean image, 0 where nothing was stacked."""
        return mean_and_std_err(self.sum, self.sum_sq, self.count)[1]


def mean_and_std_err(total: np.ndarray, total_sq: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error from sums (AstroPath §2.7).

    .. math:: \\bar x = S/N, \\qquad \\sigma_{\\bar x} = \\sqrt{\\left|SS/N - \\bar x^2\\right| / N}

    where pixels with N = 0 use the smallest non-zero count (so their mean is 0).
    """
    if not count.any():
        warnings.warn("empty mean-image stack: nothing was stacked", RuntimeWarning, stacklevel=2)
        return np.zeros(total.shape), np.zeros(total.shape)
    n = count.astype(np.float64)
    n[count == 0] = count[count > 0].min()
    mean = total / n
    return mean, np.sqrt(np.abs(total_sq / n - mean**2) / n)


@dataclass
class CountAccumulator:
    """Exact integer sums of exposure-corrected uint16 fields of one slide, (L, H, W).

    uint64 sums cannot overflow for any realistic slide (> 10⁹ fields of 65,535²).
    """

    sum: np.ndarray  # uint64
    sum_sq: np.ndarray  # uint64
    count: np.ndarray  # uint32
    n_images: np.ndarray  # int64 (L,)
    fields: list[FieldLogRow] = field(default_factory=list)

    @classmethod
    def empty(cls, shape: tuple[int, int, int]) -> "CountAccumulator":
        return cls(
            sum=np.zeros(shape, np.uint64),
            sum_sq=np.zeros(shape, np.uint64),
            count=np.zeros(shape, np.uint32),
            n_images=np.zeros(shape[0], np.int64),
        )

    def add(self, image: np.ndarray, masks: np.ndarray, groups: tuple[LayerGroup, ...], min_pixel_fraction: float) -> tuple[int, ...]:
        """Stack one field and return the 1-based layers it was stacked in.

        Parameters
        ----------
        image
            Exposure-corrected (L, H, W) uint16 field.
        masks
            (G, H, W) boolean pixels to stack for each layer group.
        min_pixel_fraction
            A layer is stacked only if at least this fraction of its pixels is kept (AstroPath: 0.8).
        """
        stacked: list[int] = []
        for group, mask in zip(groups, masks):
            if mask.mean() < min_pixel_fraction:
                continue
            everywhere = bool(mask.all())  # common for bulk fields: skip the masking passes
            for layer in range(group.first - 1, group.last):
                kept = image[layer] if everywhere else image[layer] * mask
                self.sum[layer] += kept
                self.sum_sq[layer] += np.square(kept, dtype=np.uint64)  # squared in uint64: exact
                self.count[layer] += 1 if everywhere else mask
                self.n_images[layer] += 1
                stacked.append(layer + 1)
        return tuple(stacked)

    def merge(self, other: "CountAccumulator") -> "CountAccumulator":
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        self.count += other.count
        self.n_images += other.n_images
        self.fields.extend(other.fields)
        return self

    def to_stack(self, exposure_ms: np.ndarray) -> MeanImageStack:
        """The stack in counts/ms: sums divided by the per-layer exposure time all fields were normalised to."""
        scale = 1.0 / np.asarray(exposure_ms, dtype=np.float64)[:, None, None]
        return MeanImageStack(
            sum=self.sum * scale,
            sum_sq=self.sum_sq * scale**2,
            count=self.count.copy(),
            n_images=self.n_images.copy(),
            fields=list(self.fields),
        )
