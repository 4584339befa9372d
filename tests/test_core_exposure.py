"""Exposure-time normalisation: the per-layer lookup table and its application to (L, H, W) fields."""

from __future__ import annotations

import numpy as np
import pytest

from shadeflow.core.io.transpose import NO_TABLES, layers_from_interleaved
from shadeflow.core.meanimage.exposure import correct_exposure, exposure_lut, exposure_tables

VALUES = np.arange(65536)


@pytest.mark.parametrize("offset", [0.0, 8.0, 7.3])
def test_lut_is_identity_when_exposure_equals_target(offset):
    lut = exposure_lut(50.0, 50.0, offset)
    assert lut.dtype == np.uint16 and lut.shape == (65536,)
    np.testing.assert_array_equal(lut, VALUES)


@pytest.mark.parametrize(
    "exposure, target, offset", [(40.0, 60.0, 8.0), (120.0, 60.0, 8.0), (33.0, 100.0, 12.5)]
)
def test_lut_keeps_values_at_or_below_offset(exposure, target, offset):
    lut = exposure_lut(exposure, target, offset)
    low = VALUES <= offset
    np.testing.assert_array_equal(lut[low], VALUES[low])


@pytest.mark.parametrize(
    "exposure, target, offset", [(40.0, 60.0, 8.0), (120.0, 60.0, 8.0), (33.0, 100.0, 12.5)]
)
def test_lut_scales_values_above_offset(exposure, target, offset):
    lut = exposure_lut(exposure, target, offset)
    ratio = target / exposure
    for v in [int(np.floor(offset)) + 1, 9, 100, 1000, 20000, 40000, 65535]:
        if v <= offset:
            continue
        # Python's round() is round-half-to-even, like np.rint
        expected = min(65535, max(0, round(offset + ratio * (v - offset))))
        assert int(lut[v]) == expected, v


def test_lut_clips_at_65535():
    lut = exposure_lut(10.0, 100.0, 8.0)  # ×10
    assert lut[65535] == 65535
    first_clipped = int(np.ceil(8 + (65535 - 8) / 10)) + 1
    assert (lut[first_clipped:] == 65535).all()
    assert lut[100] == 8 + 920


def test_lut_rounds_half_to_even():
    # offset 0, ratio 1.5: 1 → 1.5 → 2 (even), 3 → 4.5 → 4 (even), 5 → 7.5 → 8
    lut = exposure_lut(2.0, 3.0, 0.0)
    assert (lut[1], lut[3], lut[5]) == (2, 4, 8)


def _field(seed=0, shape=(4, 16, 20)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, shape).astype(np.uint16)


def test_correct_exposure_copy_leaves_input_untouched():
    image = _field()
    before = image.copy()
    exposure = np.array([50.0, 60.0, 50.0, 30.0])
    target = np.array([60.0, 60.0, 40.0, 30.0])
    out = correct_exposure(image, exposure, target, 8.0, inplace=False)
    np.testing.assert_array_equal(image, before)
    assert out is not image and out.dtype == np.uint16
    assert not np.array_equal(out, before)


def test_correct_exposure_inplace_modifies_input():
    image = _field(1)
    before = image.copy()
    exposure = np.array([50.0, 60.0, 50.0, 30.0])
    target = np.array([60.0, 60.0, 40.0, 30.0])
    out = correct_exposure(image, exposure, target, 8.0, inplace=True)
    assert out is image
    assert not np.array_equal(image, before)
    np.testing.assert_array_equal(image, correct_exposure(before, exposure, target, 8.0))


def test_only_layers_with_differing_exposure_change():
    image = _field(2)
    exposure = np.array([50.0, 60.0, 50.0, 30.0])
    target = np.array([60.0, 60.0, 40.0, 30.0])
    offset = 8.0
    out = correct_exposure(image, exposure, target, offset)
    for layer in (1, 3):
        np.testing.assert_array_equal(out[layer], image[layer])
    for layer in (0, 2):
        v = image[layer].astype(np.float64)
        expected = np.where(
            v > offset, np.clip(np.rint(offset + target[layer] / exposure[layer] * (v - offset)), 0, 65535), v
        )
        np.testing.assert_array_equal(out[layer], expected.astype(np.uint16))
        assert not np.array_equal(out[layer], image[layer])


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.uint32])
def test_rejects_non_uint16(dtype):
    image = np.zeros((2, 4, 4), dtype)
    with pytest.raises(TypeError, match="uint16"):
        correct_exposure(image, np.array([1.0, 2.0]), np.array([2.0, 2.0]), 0.0)


@pytest.mark.parametrize(
    "exposure, target, offset",
    [(100.0, 50.0, 8.0), (50.0, 100.0, 8.0), (60.0, 60.0, 4.0), (384.0, 88.475, 1.7), (7.0, 80.0, 0.0)],
)
def test_corrected_ceiling_is_where_a_clipped_raw_pixel_lands(exposure, target, offset):
    from shadeflow.core.meanimage.exposure import corrected_ceiling

    ceiling = corrected_ceiling(np.array([exposure, exposure]), np.array([target, target]), offset)
    assert ceiling.dtype == np.uint16
    np.testing.assert_array_equal(ceiling, exposure_lut(exposure, target, offset)[65535])
    if target < exposure:  # scaled down: only raw values within exposure/target counts of the top reach it
        lut = exposure_lut(exposure, target, offset)
        assert (lut[: 65535 - int(np.ceil(exposure / target))] < ceiling[0]).all()


def test_transposing_with_the_exposure_tables_is_transposing_then_correcting():
    """The compiled transpose (``core.io.transpose``) applies each layer's table on the way: the same
    values as numpy's transpose followed by :func:`correct_exposure`."""
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 65536, (23, 41, 5), dtype=np.uint16)
    exposure, target = np.array([40.0, 80.0, 40.0, 20.0, 80.0]), np.full(5, 80.0)
    tables, table_of = exposure_tables(exposure, target, 8.0)
    assert table_of.tolist() == [0, -1, 0, 1, -1]
    out = np.empty((5, 23, 41), np.uint16)
    layers_from_interleaved(raw, tables, table_of, out)
    np.testing.assert_array_equal(out, correct_exposure(raw.transpose(2, 0, 1).copy(), exposure, target, 8.0))
    layers_from_interleaved(raw, NO_TABLES, np.full(5, -1), out)
    np.testing.assert_array_equal(out, raw.transpose(2, 0, 1))
