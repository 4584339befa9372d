"""The mean-image stack: merging, mean and standard error, exact integer accumulation, counts/ms."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from shadeflow.core.io.slide import LayerGroup
from shadeflow.core.stack import (
    NARROW_FIELD_LIMIT,
    CountAccumulator,
    FieldLogRow,
    MeanImageStack,
    mean_and_std_err,
)

SHAPE = (3, 6, 7)  # (L, H, W)
GROUPS = (LayerGroup("dapi", 1, 2), LayerGroup("fitc", 3, 3))


def _stack_of(values: np.ndarray, masks: np.ndarray, name: str) -> MeanImageStack:
    """A stack built directly from (n, L, H, W) values and boolean masks."""
    kept = np.where(masks, values, 0.0)
    return MeanImageStack(
        sum=kept.sum(axis=0),
        sum_sq=(kept**2).sum(axis=0),
        count=masks.sum(axis=0).astype(np.uint32),
        n_images=np.full(values.shape[1], values.shape[0], np.int64),
        fields=[
            FieldLogRow(name, f"{name}_{i}.Data.dat", "bulk", "stacking", (1, 2, 3))
            for i in range(values.shape[0])
        ],
    )


def _random_data(seed: int, n: int):
    rng = np.random.default_rng(seed)
    values = rng.gamma(4.0, 5.0, (n, *SHAPE))
    masks = rng.random((n, *SHAPE)) < 0.7
    return values, masks


def test_merge_equals_stack_of_all_data():
    va, ma = _random_data(0, 5)
    vb, mb = _random_data(1, 8)
    a, b = _stack_of(va, ma, "A"), _stack_of(vb, mb, "B")
    merged = a.merge(b)
    whole = _stack_of(np.concatenate([va, vb]), np.concatenate([ma, mb]), "all")
    np.testing.assert_allclose(merged.sum, whole.sum, rtol=1e-12)
    np.testing.assert_allclose(merged.sum_sq, whole.sum_sq, rtol=1e-12)
    np.testing.assert_array_equal(merged.count, whole.count)
    np.testing.assert_array_equal(merged.n_images, [13, 13, 13])
    assert merged.fields == a.fields + b.fields
    # the inputs are unchanged
    np.testing.assert_array_equal(a.count, ma.sum(axis=0))


def test_mean_of_merge_is_count_weighted_mean_of_parts():
    va, ma = _random_data(2, 4)
    vb, mb = _random_data(3, 9)
    a, b = _stack_of(va, ma, "A"), _stack_of(vb, mb, "B")
    merged = a.merge(b)
    na, nb = a.count.astype(float), b.count.astype(float)
    both = (na + nb) > 0
    expected = (a.mean() * na + b.mean() * nb)[both] / (na + nb)[both]
    np.testing.assert_allclose(merged.mean()[both], expected, rtol=1e-12)


def test_merge_rejects_different_shapes():
    with pytest.raises(ValueError, match="shape"):
        MeanImageStack.empty((2, 3, 4)).merge(MeanImageStack.empty((2, 3, 5)))


def test_mean_and_std_err_match_numpy_per_pixel():
    rng = np.random.default_rng(4)
    n = 12
    values = rng.normal(100.0, 15.0, (n, *SHAPE))
    per_pixel_count = rng.integers(0, n + 1, SHAPE)
    per_pixel_count[0, 0, 0] = 0
    per_pixel_count[1, 2, 3] = 1
    masks = np.arange(n)[:, None, None, None] < per_pixel_count[None]
    stack = _stack_of(values, masks, "S")
    mean, std_err = stack.mean(), stack.std_err()
    for index in np.ndindex(SHAPE):
        chosen = values[(slice(None), *index)][masks[(slice(None), *index)]]
        if chosen.size == 0:
            assert mean[index] == 0
            continue
        assert mean[index] == pytest.approx(chosen.mean(), rel=1e-10)
        assert std_err[index] == pytest.approx(chosen.std(ddof=0) / np.sqrt(chosen.size), rel=1e-6, abs=1e-9)
    assert std_err[1, 2, 3] == pytest.approx(0.0, abs=1e-9)


def test_pixels_without_count_have_zero_mean_and_std_err():
    total = np.array([[[0.0, 6.0, 0.0]]])
    total_sq = np.array([[[0.0, 20.0, 0.0]]])
    count = np.array([[[0, 2, 0]]], np.uint32)
    mean, std_err = mean_and_std_err(total, total_sq, count)
    np.testing.assert_array_equal(mean, [[[0.0, 3.0, 0.0]]])
    np.testing.assert_array_equal(std_err[..., [0, 2]], 0.0)
    assert std_err[0, 0, 1] == pytest.approx(np.sqrt((20 / 2 - 9) / 2))


def test_empty_stack_warns_and_gives_zeros():
    stack = MeanImageStack.empty(SHAPE)
    with pytest.warns(RuntimeWarning, match="empty"):
        mean = stack.mean()
    assert mean.shape == SHAPE and not mean.any()


def _image(seed: int, low=0, high=1000) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, SHAPE).astype(np.uint16)


def test_count_accumulator_respects_masks():
    acc = CountAccumulator.empty(SHAPE)
    image = _image(5)
    masks = np.ones((2, *SHAPE[1:]), bool)
    masks[0, 0, :3] = False  # 3 of 42 px dropped from dapi (93 % kept)
    masks[1, 5, 6] = False
    layers = acc.add(image, masks, GROUPS, 0.8)
    assert layers == (1, 2, 3)
    full = masks[[0, 0, 1]]
    np.testing.assert_array_equal(acc.sum, np.where(full, image, 0))
    np.testing.assert_array_equal(acc.sum_sq, np.where(full, image.astype(np.uint64) ** 2, 0))
    np.testing.assert_array_equal(acc.count, full)
    np.testing.assert_array_equal(acc.n_images, [1, 1, 1])


def test_count_accumulator_skips_groups_below_min_pixel_fraction():
    acc = CountAccumulator.empty(SHAPE)
    masks = np.ones((2, *SHAPE[1:]), bool)
    h, w = SHAPE[1:]
    masks[0].ravel()[: int(np.ceil(0.21 * h * w))] = False  # dapi keeps < 80 %
    assert masks[0].mean() < 0.8 <= masks[1].mean()
    layers = acc.add(_image(6), masks, GROUPS, 0.8)
    assert layers == (3,)  # 1-based: only fitc's layer
    np.testing.assert_array_equal(acc.n_images, [0, 0, 1])
    assert not acc.sum[:2].any() and not acc.count[:2].any()
    assert acc.count[2].all()


def test_count_accumulator_exact_fraction_is_kept():
    acc = CountAccumulator.empty((1, 5, 2))
    masks = np.ones((1, 5, 2), bool)
    masks[0, 0] = False  # exactly 80 %
    assert acc.add(np.ones((1, 5, 2), np.uint16), masks, (LayerGroup("dapi", 1, 1),), 0.8) == (1,)


def test_uint64_sums_are_exact_near_65535():
    rng = np.random.default_rng(7)
    n = 40
    images = rng.integers(65000, 65536, (n, *SHAPE)).astype(np.uint16)
    acc = CountAccumulator.empty(SHAPE)
    masks = np.ones((2, *SHAPE[1:]), bool)
    for image in images:
        acc.add(image, masks, GROUPS, 0.8)
    for index in [(0, 0, 0), (1, 3, 4), (2, 5, 6)]:
        column = [int(v) for v in images[(slice(None), *index)]]
        assert int(acc.sum[index]) == sum(column)
        assert int(acc.sum_sq[index]) == sum(v * v for v in column)
    assert acc.sum_sq.dtype == np.uint64


def test_narrow_sums_and_counts_widen_before_they_could_overflow():
    """uint16 counts overflow at 65,536 fields and uint32 sums at 65,538 fields of 65,535."""
    acc = CountAccumulator.empty((1, 1, 2))
    image = np.full((1, 1, 2), 65535, np.uint16)
    keep = np.ones((1, 1, 2), bool)
    group = (LayerGroup("dapi", 1, 1),)
    n = NARROW_FIELD_LIMIT + 3
    for i in range(n):
        acc.add(image, keep, group, 0.8)
        if i + 1 == NARROW_FIELD_LIMIT:
            assert acc.is_narrow  # still narrow while every value fits
    assert not acc.is_narrow
    assert acc.count.tolist() == [[[n, n]]] and acc.n_images.tolist() == [n]
    assert acc.sum.tolist() == [[[n * 65535, n * 65535]]]
    assert acc.sum_sq.tolist() == [[[n * 65535**2, n * 65535**2]]]


def test_merge_widens_when_the_merged_counts_would_not_fit():
    def full_of(n_fields: int) -> CountAccumulator:
        shape = (1, 2, 2)
        return CountAccumulator(
            sum=np.full(shape, n_fields * 65535, np.uint32),
            sum_sq=np.full(shape, n_fields * 65535**2, np.uint64),
            count=np.full(shape, n_fields, np.uint16),
            n_images=np.array([n_fields]),
        )

    merged = full_of(40_000).merge(full_of(40_000))
    assert not merged.is_narrow
    assert (merged.sum == 80_000 * 65535).all() and (merged.count == 80_000).all()
    small = full_of(30_000).merge(full_of(30_000))
    assert small.is_narrow and (small.sum == 60_000 * 65535).all() and (small.count == 60_000).all()
    # a narrow accumulator merging a widened one widens too
    wide = full_of(2)
    wide.widen()
    assert not full_of(1).merge(wide).is_narrow


def test_to_stack_divides_sums_by_exposure():
    acc = CountAccumulator.empty(SHAPE)
    masks = np.ones((2, *SHAPE[1:]), bool)
    images = [_image(8), _image(9)]
    for image in images:
        acc.add(image, masks, GROUPS, 0.8)
    acc.fields.append(FieldLogRow("S", "a.Data.dat", "bulk", "stacking", (1, 2, 3)))
    exposure = np.array([50.0, 50.0, 125.0])
    stack = acc.to_stack(exposure)
    t = exposure[:, None, None]
    total = sum(i.astype(np.float64) for i in images)
    total_sq = sum(i.astype(np.float64) ** 2 for i in images)
    np.testing.assert_allclose(stack.sum, total / t, rtol=1e-12)
    np.testing.assert_allclose(stack.sum_sq, total_sq / t**2, rtol=1e-12)
    np.testing.assert_array_equal(stack.count, acc.count)
    np.testing.assert_array_equal(stack.n_images, [2, 2, 2])
    assert stack.fields == acc.fields
    # the mean image is in counts/ms
    np.testing.assert_allclose(stack.mean(), total / 2 / t, rtol=1e-12)
    # the stack does not alias the accumulator
    acc.count += 1
    assert not np.array_equal(stack.count, acc.count)


def test_accumulator_merge_adds_everything():
    a, b = CountAccumulator.empty(SHAPE), CountAccumulator.empty(SHAPE)
    masks = np.ones((2, *SHAPE[1:]), bool)
    ia, ib = _image(10), _image(11)
    a.add(ia, masks, GROUPS, 0.8)
    b.add(ib, masks, GROUPS, 0.8)
    b.fields.append(FieldLogRow("S", "b.Data.dat", "bulk", "stacking", (1,)))
    merged = a.merge(b)
    np.testing.assert_array_equal(merged.sum, ia.astype(np.uint64) + ib)
    np.testing.assert_array_equal(merged.count, 2)
    np.testing.assert_array_equal(merged.n_images, [2, 2, 2])
    assert [r.file for r in merged.fields] == ["b.Data.dat"]


def test_no_warning_for_non_empty_stack():
    va, ma = _random_data(12, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _stack_of(va, ma, "A").mean()


def _numpy_mean_and_std_err(total, total_sq, count):
    """The whole-array numpy form :func:`mean_and_std_err` computes in one pass."""
    n = count.astype(np.float64)
    n[count == 0] = count[count > 0].min()
    mean = total / n
    return mean, np.sqrt(np.abs(total_sq / n - mean**2) / n)


@pytest.mark.parametrize("count_dtype", [np.uint16, np.uint32, np.uint64])
def test_mean_and_std_err_are_the_numpy_formula_bit_for_bit(count_dtype):
    rng = np.random.default_rng(7)
    shape = (3, 37, 41)
    count = rng.integers(0, 9, shape).astype(count_dtype)
    count[0, :5] = 0
    count[1] = np.where(count[1] > 0, 2, 0)  # no pixel of this layer has the slide's smallest count
    values = rng.integers(0, 65536, (8, *shape)).astype(np.uint64)
    kept = np.arange(8)[:, None, None, None] < count[None]
    exposure = np.array([37.0, 113.0, 3.3])[:, None, None]  # counts/ms sums, as the stacks hold them
    total = (values * kept).sum(axis=0) / exposure
    total_sq = (values**2 * kept).sum(axis=0) / exposure**2
    expected = _numpy_mean_and_std_err(total, total_sq, count)
    for got, want in zip(mean_and_std_err(total, total_sq, count), expected):
        assert got.shape == shape and got.dtype == np.float64
        np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))
    # a layer of a stack (as the reports take them) and strided inputs give the same bits
    layer = mean_and_std_err(total[2], total_sq[2], count[2])
    want_layer = _numpy_mean_and_std_err(total[2], total_sq[2], count[2])
    for got, want in zip(layer, want_layer):
        np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))
    strided = mean_and_std_err(total[:, ::2, ::3], total_sq[:, ::2, ::3], count[:, ::2, ::3])
    want_strided = _numpy_mean_and_std_err(total[:, ::2, ::3], total_sq[:, ::2, ::3], count[:, ::2, ::3])
    for got, want in zip(strided, want_strided):
        np.testing.assert_array_equal(got.view(np.uint64), want.view(np.uint64))


def test_mean_and_std_err_refuse_arrays_of_different_shapes():
    count = np.ones((2, 3, 4), np.uint32)
    with pytest.raises(ValueError, match="differ in shape"):
        mean_and_std_err(np.ones((2, 3, 5)), np.ones((2, 3, 4)), count)
    with pytest.raises(ValueError, match="differ in shape"):
        mean_and_std_err(np.ones((2, 3, 4)), np.ones((3, 4)), count)
