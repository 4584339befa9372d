"""Background thresholds: Otsu on histograms, the iterated-Otsu skew criterion, and slide medians."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy import stats

from shadeflow.core.meanimage.thresholds import (
    N_BINS,
    _CumulativeMoments,
    iterated_otsu_threshold,
    otsu_bin,
    otsu_bin_skimage,
    slide_thresholds,
)
from shadeflow.core.morphology import smooth


def _histogram(values: np.ndarray) -> np.ndarray:
    return np.bincount(np.clip(np.rint(values), 0, N_BINS - 1).astype(np.int64).ravel(), minlength=N_BINS)


def test_otsu_bin_two_separated_peaks_lands_between_them():
    rng = np.random.default_rng(0)
    low = rng.integers(10, 20, 5000)
    high = rng.integers(200, 230, 3000)
    hist = _histogram(np.concatenate([low, high]))
    t = otsu_bin(hist)
    assert low.max() <= t < high.min()


def test_otsu_bin_two_single_bins_splits_after_the_first():
    hist = np.zeros(10, np.int64)
    hist[2], hist[7] = 5, 7
    assert 2 <= otsu_bin(hist) < 7


@pytest.mark.parametrize("seed", range(6))
def test_otsu_kernel_is_scikit_image_on_every_prefix(seed):
    """The compiled Otsu gives scikit-image's bin on realistic histograms (a background peak, a tissue
    tail, gaps, empty ends) and on the prefixes the iterated threshold walks down."""
    rng = np.random.default_rng(seed)
    values = np.concatenate(
        [rng.normal(300 + 50 * seed, 20, 60_000), rng.gamma(2.0, 800.0 * (seed + 1), 25_000) + 400]
    )
    hist = _histogram(values[rng.random(values.size) < 0.9])
    hist[rng.integers(0, 65536, 40)] += rng.integers(1, 3, 40)  # isolated bins, far out
    ends = np.flatnonzero(hist)[:: max(1, np.count_nonzero(hist) // 60)] + 1
    for end in [N_BINS, *ends]:
        assert otsu_bin(hist[:end]) == otsu_bin_skimage(hist[:end])
    assert iterated_otsu_threshold(hist) > 0


@pytest.mark.parametrize("occupied", [[], [5]])
def test_otsu_bin_is_minus_one_without_two_occupied_bins(occupied):
    hist = np.zeros(100, np.int64)
    hist[occupied] = 42
    assert otsu_bin(hist) == -1


@pytest.mark.parametrize("prefix_end", [3, 8, 15, 40, 120, 499])
def test_cumulative_skew_matches_scipy_on_expanded_data(prefix_end):
    rng = np.random.default_rng(1)
    hist = np.bincount(rng.gamma(3.0, 20.0, 20000).astype(np.int64), minlength=500)[:500]
    expected = stats.skew(np.repeat(np.arange(prefix_end + 1), hist[: prefix_end + 1]).astype(np.float64))
    assert _CumulativeMoments(hist).skew(prefix_end) == pytest.approx(expected, rel=1e-7, abs=1e-9)


def test_cumulative_skew_is_nan_for_empty_or_constant_prefixes():
    hist = np.zeros(20, np.int64)
    hist[5] = 10
    hist[9] = 3
    moments = _CumulativeMoments(hist)
    assert np.isnan(moments.skew(3))  # empty
    assert np.isnan(moments.skew(6))  # one value: no variance
    assert np.isnan(moments.skew(-1))
    assert np.isnan(moments.skew(20))
    assert not np.isnan(moments.skew(9))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_iterated_otsu_on_a_smoothed_field_lands_just_above_background(seed):
    """The intended input: a histogram of σ-smoothed counts (as the meanimage code feeds it).

    Background: dark current 35 plus right-skewed (gamma) autofluorescence, ~40 counts; tissue: discs
    of ~1500 counts. The threshold must sit above 90 % of the smoothed background (measured far from
    tissue) and below 99 % of the smoothed tissue interior.
    """
    rng = np.random.default_rng(seed)
    n, sigma = 256, 5.0
    yy, xx = np.mgrid[0:n, 0:n]
    tissue = np.zeros((n, n), bool)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(20, 50)
        tissue |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    raw = np.where(tissue, rng.normal(1500, 300, (n, n)), 35 + rng.gamma(2.0, 2.5, (n, n)))
    smoothed = np.rint(smooth(raw.astype(np.float32), sigma))
    far_background = smoothed[ndi.distance_transform_edt(~tissue) > 4 * sigma]
    deep_tissue = smoothed[ndi.distance_transform_edt(tissue) > 4 * sigma]
    assert far_background.size > 1000 and deep_tissue.size > 1000

    t = iterated_otsu_threshold(_histogram(smoothed))

    assert np.percentile(far_background, 90) < t < np.percentile(deep_tissue, 1)
    assert t < 0.1 * np.median(deep_tissue)  # far below tissue, not in the middle of the gap


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iterated_otsu_on_raw_skewed_background_plus_tissue(seed):
    """A raw histogram: background with a dark-current floor (35 + gamma, right-skewed, ~40) and a broad
    tissue peak around 1500. The threshold is above the background's peak and median, inside the
    background's upper part, and far below tissue."""
    rng = np.random.default_rng(seed)
    background = 35 + rng.gamma(2.0, 2.5, 200_000)
    tissue = rng.normal(1500, 300, 100_000)
    hist = _histogram(np.concatenate([background, tissue]))
    bg_counts = _histogram(background)

    t = iterated_otsu_threshold(hist)

    assert t > np.argmax(bg_counts)  # above the background peak (mode)
    assert t >= np.median(np.rint(background))
    assert t <= np.percentile(background, 99)
    assert t < np.percentile(tissue, 1)


def test_iterated_otsu_is_zero_for_empty_or_single_bin_histograms():
    assert iterated_otsu_threshold(np.zeros(N_BINS, np.int64)) == 0
    one = np.zeros(N_BINS, np.int64)
    one[123] = 1000
    assert iterated_otsu_threshold(one) == 0


def test_slide_thresholds_integer_median_of_nonzero_values():
    per_field = np.array(
        [
            [0, 5, 0, 7],
            [10, 0, 0, 7],
            [20, 8, 0, 9],
            [31, 0, 0, 0],
        ]
    )
    # layer 0: median(10, 20, 31) = 20; layer 1: median(5, 8) = 6.5 → 6; layer 2: all zero → 0;
    # layer 3: median(7, 7, 9) = 7
    result = slide_thresholds(per_field)
    np.testing.assert_array_equal(result, [20, 6, 0, 7])
    assert np.issubdtype(result.dtype, np.integer)


def test_slide_thresholds_single_field_row():
    np.testing.assert_array_equal(slide_thresholds(np.array([4, 0, 9])), [4, 0, 9])


def _iterated_otsu_on_all_bins(hist: np.ndarray) -> int:
    """The iteration of :func:`iterated_otsu_threshold`, run on the whole 65,536-bin histogram."""
    moments = _CumulativeMoments(hist)
    first = otsu_bin(hist)
    mode = int(np.argmax(hist[: first + 1])) if first >= 0 else 0
    records, end = [], hist.size
    while (t := otsu_bin(hist[:end])) >= 0 and not np.isnan(skew := moments.skew(t)):
        numerator = (moments.skew(t + 1) - moments.skew(t - 1)) / 2
        if t > mode:  # candidates at or below the background mode are not recorded
            records.append((0.0 if np.isnan(numerator) else numerator / skew, t))
        if t + 1 >= end:
            break
        end = t + 1
    return max(records)[1] if records else 0


@pytest.mark.parametrize("seed", range(6))
def test_iterated_otsu_ignores_the_empty_bins_above_the_data(seed):
    """The threshold only looks at bins up to the last occupied one (+1): the same as on all bins."""
    rng = np.random.default_rng(seed)
    parts = [
        rng.integers(0, 3000) + rng.gamma(rng.uniform(0.5, 5), rng.uniform(1, 300), rng.integers(10, 5000))
        for _ in range(rng.integers(1, 5))
    ]
    hist = _histogram(np.concatenate(parts))
    if seed == 0:
        hist[N_BINS - 1] += 5  # data in the very last bin
    assert iterated_otsu_threshold(hist) == _iterated_otsu_on_all_bins(hist)


def _astropath_iterated_otsu(hist: np.ndarray) -> int:
    """AstroPath's rule: every candidate recorded, however low (for comparison)."""
    moments = _CumulativeMoments(hist)
    records, end = [], hist.size
    while (t := otsu_bin(hist[:end])) >= 0 and not np.isnan(skew := moments.skew(t)):
        numerator = (moments.skew(t + 1) - moments.skew(t - 1)) / 2
        records.append((0.0 if np.isnan(numerator) else numerator / skew, t))
        if t + 1 >= end:
            break
        end = t + 1
    return max(records)[1] if records else 0


def _illuminated_field(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed counts of a field whose background (22 counts over a dark current of 28) is spread by
    the illumination (≈ 0.7–1.2 over the field), with discs of tissue at 400 counts; and its tissue."""
    rng = np.random.default_rng(seed)
    n = 256
    yy, xx = np.mgrid[0:n, 0:n] / n
    illumination = np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / 0.35)
    illumination /= illumination.mean()
    tissue = np.zeros((n, n), bool)
    for _ in range(5):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.08, 0.2)
        tissue |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    raw = rng.poisson(28 + illumination * np.where(tissue, 400.0, 22.0)) + rng.normal(0, 2, (n, n))
    return np.rint(smooth(raw.astype(np.float32), 5.0)), tissue


@pytest.mark.parametrize("seed", range(12))
def test_iterated_otsu_clears_a_background_broadened_by_the_illumination(seed):
    """Candidates below the background mode are not recorded, so the threshold clears the background
    (above its 99th percentile far from tissue) however broad the illumination makes it."""
    smoothed, tissue = _illuminated_field(seed)
    far_background = smoothed[ndi.distance_transform_edt(~tissue) > 20]
    deep_tissue = smoothed[ndi.distance_transform_edt(tissue) > 20]

    t = iterated_otsu_threshold(_histogram(smoothed))

    assert np.percentile(far_background, 99) < t < np.percentile(deep_tissue, 1)
    if seed in (2, 3, 4, 5, 10, 11):  # where AstroPath's rule lands below most of the background
        assert _astropath_iterated_otsu(_histogram(smoothed)) < np.median(far_background)
