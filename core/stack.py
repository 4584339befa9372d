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

import numba
import numpy as np

from . import buffers
from .io.slide import LayerGroup


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
    def empty(cls, shape: tuple[int, int, int]) -> MeanImageStack:
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

    def merge(self, other: MeanImageStack) -> MeanImageStack:
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


def mean_and_std_err(
    total: np.ndarray, total_sq: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error from sums (AstroPath §2.7).

    .. math:: \\bar x = S/N, \\qquad \\sigma_{\\bar x} = \\sqrt{\\left|SS/N - \\bar x^2\\right| / N}

    where pixels with N = 0 use the smallest non-zero count (so their mean is 0).
    """
    count = np.ascontiguousarray(count)
    if np.shape(total) != count.shape or np.shape(total_sq) != count.shape:
        # the pass below indexes all three alike (unchecked): no broadcasting
        raise ValueError(
            f"sums {np.shape(total)}, sums of squares {np.shape(total_sq)} and counts {count.shape} "
            "differ in shape"
        )
    smallest = _smallest_nonzero(count.reshape(-1))
    if smallest == 0:
        warnings.warn("empty mean-image stack: nothing was stacked", RuntimeWarning, stacklevel=2)
        return np.zeros(total.shape), np.zeros(total.shape)
    mean, std_err = np.empty(count.shape), np.empty(count.shape)
    # one pass with the numpy form's operations in its order (S/N, SS/N − x̄·x̄, |…|/N, √): the same
    # bits, without the five whole-stack float64 temporaries that cost seconds on a Vectra slide
    _mean_and_std_err_pass(
        np.ascontiguousarray(total, dtype=np.float64).reshape(-1),
        np.ascontiguousarray(total_sq, dtype=np.float64).reshape(-1),
        count.reshape(-1),
        float(smallest),
        mean.reshape(-1),
        std_err.reshape(-1),
    )
    return mean, std_err


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _smallest_nonzero(count):
    """The smallest non-zero value of a flat count array, 0 if all are 0."""
    smallest = 0
    for v in count:
        if v != 0 and (smallest == 0 or v < smallest):
            smallest = v
    return smallest


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _mean_and_std_err_pass(total, total_sq, count, empty_n, mean, std_err):
    """:func:`mean_and_std_err` on flat arrays, written into ``mean`` and ``std_err``."""
    for i in range(total.size):
        n = np.float64(count[i]) if count[i] != 0 else empty_n
        m = total[i] / n
        mean[i] = m
        std_err[i] = np.sqrt(np.abs(total_sq[i] / n - m * m) / n)


#: fields a layer of an accumulator takes before its sums and counts widen (uint32 sums hold
#: 65,537 × 65,535 and uint16 counts 65,535, so no realistic slide ever widens)
NARROW_FIELD_LIMIT = 65535


@dataclass
class CountAccumulator:
    """Exact integer sums of exposure-corrected uint16 fields of one slide, (L, H, W).

    Sums of squares are uint64 (one square needs 32 bits; > 10⁹ fields fit). Sums are uint32 and
    counts uint16 until a layer holds :data:`NARROW_FIELD_LIMIT` fields, then widen to uint64 and
    uint32: stacking is memory-bound, and the narrow types move a third less memory per field.
    """

    sum: np.ndarray  # uint32, or uint64 once widened
    sum_sq: np.ndarray  # uint64
    count: np.ndarray  # uint16, or uint32 once widened
    n_images: np.ndarray  # int64 (L,)
    fields: list[FieldLogRow] = field(default_factory=list)

    @classmethod
    def empty(cls, shape: tuple[int, int, int]) -> CountAccumulator:
        """An empty accumulator; its memory (0.7 GiB for a Vectra slide) reuses that of finished ones."""
        return cls(
            sum=buffers.recycled_zeros(shape, np.uint32),
            sum_sq=buffers.recycled_zeros(shape, np.uint64),
            count=buffers.recycled_zeros(shape, np.uint16),
            n_images=np.zeros(shape[0], np.int64),
        )

    @property
    def is_narrow(self) -> bool:
        return self.sum.dtype == np.uint32

    def widen(self) -> None:
        """Switch to uint64 sums and uint32 counts (exact for > 10⁹ fields)."""
        if self.is_narrow:
            self.sum = self.sum.astype(np.uint64)
            self.count = self.count.astype(np.uint32)

    def add(
        self, image: np.ndarray, masks: np.ndarray, groups: tuple[LayerGroup, ...], min_pixel_fraction: float
    ) -> tuple[int, ...]:
        """Stack one field and return the 1-based layers it was stacked in.

        Parameters
        ----------
        image
            Exposure-corrected (L, H, W) uint16 field.
        masks
            (G, H, W) boolean pixels to stack for each layer group.
        min_pixel_fraction
            A layer is stacked only if at least this fraction of its pixels is kept (AstroPath: 0.8);
            a layer with no pixel kept is never stacked.

        Notes
        -----
        shadeflow's default fraction is 0 (``MaskParameters.min_pixel_fraction``): every field adds
        its kept pixels. The mean is per pixel over the fields that kept it (the mask stack), so a
        field that is half tissue biases nothing; AstroPath's 80 % rule only discards data. On slides
        with less tissue it discards all of it: in the randomised sweep of ``bench/meanimage_accuracy.py``
        every cohort with tissue coverage below ~70 % stacked no field at all ("no tissue found"), and
        at 75–90 % it kept half the fields or fewer.
        """
        if self.n_images.max(initial=0) >= NARROW_FIELD_LIMIT:
            self.widen()
        stacked: list[int] = []
        for group, mask in zip(groups, masks):
            if not mask.any() or mask.mean() < min_pixel_fraction:
                continue
            for layer in range(group.first - 1, group.last):
                _stack_layer(image[layer], mask, self.sum[layer], self.sum_sq[layer], self.count[layer])
                self.n_images[layer] += 1
                stacked.append(layer + 1)
        return tuple(stacked)

    def merge(self, other: CountAccumulator) -> CountAccumulator:
        if self.is_narrow and (
            not other.is_narrow or (self.n_images + other.n_images).max(initial=0) > NARROW_FIELD_LIMIT
        ):
            self.widen()
        self.sum += other.sum
        self.sum_sq += other.sum_sq
        self.count += other.count
        self.n_images += other.n_images
        self.fields.extend(other.fields)
        return self

    def to_stack(self, exposure_ms: np.ndarray) -> MeanImageStack:
        """The stack in counts/ms: sums divided by the per-layer exposure time all fields were normalised
        to."""
        scale = 1.0 / np.asarray(exposure_ms, dtype=np.float64)[:, None, None]
        return MeanImageStack(
            sum=self.sum * scale,
            sum_sq=self.sum_sq * scale**2,
            count=self.count.astype(np.uint32),  # a copy, in the stack's dtype
            n_images=self.n_images.copy(),
            fields=list(self.fields),
        )


@numba.njit(cache=True, nogil=True, boundscheck=False)
def _stack_layer(image, mask, total, total_sq, count):
    """Add one (H, W) layer's masked pixels to its sums, sums of squares and counts, in one pass.

    The same exact integer result as ``total += image·mask; total_sq += (image·mask)²; count += mask``
    (numpy needs a masked copy and a uint64 square of the layer first: 3× the memory traffic).
    """
    for y in range(image.shape[0]):
        values, kept, t, t2, n = image[y], mask[y], total[y], total_sq[y], count[y]
        for x in range(values.size):
            v = np.uint64(values[x]) * np.uint64(kept[x])
            t[x] += v
            t2[x] += v * v
            n[x] += kept[x]
