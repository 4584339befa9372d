"""Pure functions of the correct job: the per-chunk formula, the pyramid plan, slice rejection,
channel → layer mapping, flatfield checks, repair and resampling."""

from __future__ import annotations

import numpy as np
import pytest
from correct_support import reference

from shadeflow.core.correct.background import BackgroundError, map_planes, select_quiet_slices
from shadeflow.core.correct.flatfield_sources import (
    FlatfieldError,
    checked,
    model_layers,
    parse_channel_map,
    resample_field,
)
from shadeflow.core.correct.graph import (
    correct_and_reduce_block,
    correct_block,
    corrected_level,
    correction_pyramid,
    downsample_block,
    plan_pyramid,
    select_axes,
    stored_correction,
    stored_pyramid,
)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_correct_block_is_the_formula(dtype):
    rng = np.random.default_rng(1)
    top = 255 if dtype == "uint8" else 4000
    x = rng.integers(0, top, (2, 3, 5, 17, 19)).astype(dtype)
    ff = rng.uniform(0.2, 1.8, (1, 3, 1, 17, 19)).astype(np.float32)
    bg = rng.uniform(0, 50, (1, 3, 1, 17, 19)).astype(np.float32)
    out = correct_block(x, ff, bg)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, reference(x, bg, ff, dtype))


def test_correct_block_clips_and_rounds_half_to_even():
    x = np.array([[0, 10, 65535, 13]], np.uint16)
    ff = np.array([[1.0, 1.0, 0.5, 4.0]], np.float32)
    # 0−5 → −5 → 0 (clipped); 10−5 = 5; (65535−5)/0.5 > 65535 → 65535; (13−5)/4 = 2 exactly;
    np.testing.assert_array_equal(correct_block(x, ff, 5.0), [[0, 5, 65535, 2]])
    halves = np.array([[5, 7]], np.uint16)  # (5−0)/2 = 2.5 → 2, (7−0)/2 = 3.5 → 4 (half to even)
    np.testing.assert_array_equal(correct_block(halves, np.full((1, 2), 2.0, np.float32), 0.0), [[2, 4]])


def test_downsample_block_means_keep_dtype_and_floor():
    x = np.arange(5 * 7, dtype=np.uint16).reshape(5, 7)
    out = downsample_block(x, (2, 2))
    assert out.shape == (2, 3) and out.dtype == np.uint16
    expected = np.rint(x[:4, :6].reshape(2, 2, 3, 2).astype(np.float64).mean(axis=(1, 3)))
    np.testing.assert_array_equal(out, expected)
    f = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    assert downsample_block(f, (2, 2, 2))[0, 0, 0] == pytest.approx(3.5)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16"])
@pytest.mark.parametrize("factors", [(1, 2, 2), (2, 2, 2), (2, 1, 2), (2, 2, 1), (1, 1, 1)])
def test_downsample_block_of_16_bit_data_is_the_exact_rounded_mean(dtype, factors):
    # integer data up to 16 bits takes a shortcut (sums one axis at a time); its float32 sums must be
    # exact, so it must equal the mean computed in float64 and rounded half to even, extremes included
    info = np.iinfo(dtype)
    rng = np.random.default_rng(4)
    x = rng.integers(info.min, int(info.max) + 1, (7, 10, 13), dtype=np.int64).astype(dtype)
    x[:2, :2, :2] = info.max  # the largest sums
    x[2:4, 2:4, 2:4] = info.min
    out = downsample_block(x, factors)
    m = tuple(n // f for n, f in zip(x.shape, factors))
    trimmed = x[tuple(slice(0, n * f) for n, f in zip(m, factors))].astype(np.float64)
    blocks = trimmed.reshape(m[0], factors[0], m[1], factors[1], m[2], factors[2])
    assert out.dtype == np.dtype(dtype) and out.shape == m
    np.testing.assert_array_equal(out, np.rint(blocks.mean(axis=(1, 3, 5))).astype(dtype))


@pytest.mark.parametrize(
    ("shape", "chunks", "z_scale", "dtype"),
    [
        ((32, 64, 64), (16, 16, 16), 2.0, "uint16"),  # z kept at level 1, halved from level 2
        ((33, 50, 67), (16, 16, 16), 2.0, "uint16"),  # odd remainders, a 1-plane last block
        ((33, 50, 67), (15, 15, 16), 1.0, "uint16"),  # blocks that do not halve: aligned by rechunking
        ((33, 50, 67), (16, 16, 16), 1.0, "float32"),
    ],
)
def test_stored_pyramid_writes_the_levels_of_correction_pyramid(shape, chunks, z_scale, dtype):
    """The fused graph (each task writes its block and reduces it for the next level) writes exactly
    what the level-by-level graph stored with dask.array.store writes."""
    import dask
    import dask.array as da
    import zarr

    rng = np.random.default_rng(5)
    x = (rng.random(shape) * 3000).astype(dtype)
    ff = rng.uniform(0.5, 1.5, (1, *shape[1:])).astype(np.float32)
    bg = np.full((1, 1, 1), 100, np.float32)
    levels = select_axes(plan_pyramid((1, 1, *shape), (1, 1, z_scale, 1.0, 1.0), (0.0,) * 5, 4), [2, 3, 4])

    def targets():
        return [
            zarr.create_array(
                zarr.storage.MemoryStore(),
                shape=lv.shape,
                chunks=tuple(min(c, n) for c, n in zip(chunks, lv.shape)),
                dtype=dtype,
                fill_value=0,
            )
            for lv in levels
        ]

    source = da.from_array(x, chunks=chunks)
    expected, written = targets(), targets()
    outputs = correction_pyramid(source, ff, bg, levels, [t.chunks for t in expected])
    dask.compute(da.store(outputs, expected, lock=False, compute=False), scheduler="threads")
    sinks = stored_pyramid(corrected_level(source, ff, bg), levels, written)
    fused = targets()  # correction, level 0 and its reduction in one task per chunk where it can
    sinks += stored_correction(source, ff, bg, levels, fused)
    assert all(0 in sink.shape for sink in sinks)  # nothing to gather
    dask.compute(*sinks, scheduler="threads")
    np.testing.assert_array_equal(written[0][...], correct_block(x, ff, bg))
    for level, want, got, got_fused in zip(levels, expected, written, fused):
        assert got.shape == got_fused.shape == level.shape
        np.testing.assert_array_equal(got[...], want[...])
        np.testing.assert_array_equal(got_fused[...], want[...])


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
@pytest.mark.parametrize("factors", [(1, 1, 1, 2, 2), (1, 1, 2, 2, 2), (1, 1, 2, 1, 2)])
def test_correct_and_reduce_block_is_correct_then_downsample(dtype, factors):
    # a (t, c, z, y, x) block with one flatfield and background per channel, odd z, y and x (the
    # trailing plane, row and column are dropped from the reduction), and values that clip at both ends
    info = np.iinfo(dtype)
    rng = np.random.default_rng(6)
    x = rng.integers(info.min, info.max, (2, 3, 5, 17, 19), endpoint=True).astype(dtype)
    ff = rng.uniform(0.2, 1.8, (1, 3, 1, 17, 19)).astype(np.float32)
    bg = rng.uniform(0, 50, (1, 3, 1, 1, 1)).astype(np.float32)
    out, piece = correct_and_reduce_block(x, ff, bg, factors)
    expected = correct_block(x, ff, bg)
    assert (expected == info.max).any() and (expected == info.min).any()
    np.testing.assert_array_equal(out, expected)
    assert piece.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(piece, downsample_block(expected, factors))


def test_correct_and_reduce_block_refuses_sums_that_are_not_exact():
    x = np.ones((2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="not exact"):
        correct_and_reduce_block(x, np.ones((1, 4, 4), np.float32), 0.0, (2, 2, 2))


def test_pyramid_halves_z_only_while_voxels_stay_within_2_to_1():
    # z 4 µm, yx 1 µm: z kept until yx reaches 2 µm, then halved with y and x
    levels = plan_pyramid((1, 1, 64, 256, 256), (1, 1, 4.0, 1.0, 1.0), (0, 0, 10.0, 5.0, 5.0), 4)
    assert [lv.shape[2:] for lv in levels] == [(64, 256, 256), (64, 128, 128), (32, 64, 64), (16, 32, 32)]
    assert [lv.scale[2:] for lv in levels] == [(4, 1, 1), (4, 2, 2), (8, 4, 4), (16, 8, 8)]
    # translations follow the block centres: t_k = t_{k-1} + (f − 1)/2 · s_{k-1}
    assert levels[1].translation[2:] == (10.0, 5.5, 5.5)
    assert levels[2].translation[2:] == (10.0 + 2.0, 5.5 + 1.0, 5.5 + 1.0)
    # isotropic voxels: z halved at every level; a single plane never is
    assert plan_pyramid((1, 1, 8, 64, 64), (1,) * 5, (0,) * 5, 3)[2].shape == (1, 1, 2, 16, 16)
    assert plan_pyramid((1, 1, 1, 64, 64), (1,) * 5, (0,) * 5, 3)[2].shape == (1, 1, 1, 16, 16)


def test_pyramid_with_more_levels_than_pixels_is_an_error():
    with pytest.raises(ValueError, match="room for 3 pyramid levels, not 5"):
        plan_pyramid((1, 1, 1, 4, 8), (1,) * 5, (0,) * 5, 5)


def _stack(n: int, quiet: list[int], rng, shape=(32, 32)) -> np.ndarray:
    planes = rng.normal(100, 5, (n, *shape))
    for z in range(n):
        if z not in quiet:
            planes[z, 4:28, 4:28] += 200 * rng.random((24, 24))  # tissue in the middle
    return planes


def test_quiet_slices_are_the_background_only_ones():
    rng = np.random.default_rng(3)
    quiet = [0, 1, 2, 3, 36, 37, 38, 39]
    result = select_quiet_slices(_stack(40, quiet, rng))
    assert result.fallback is None
    assert result.indices == quiet  # candidates were the quietest 3, growth added the rest
    assert result.mu == pytest.approx(100, abs=1) and result.sigma == pytest.approx(5, rel=0.1)


def test_short_stack_still_gets_rank_candidates():
    # the spec's 5th-percentile rule keeps a single slice below 21 planes; ranks keep 3
    rng = np.random.default_rng(4)
    result = select_quiet_slices(_stack(8, [0, 7], rng))
    assert len(result.candidates) == 3 and result.indices == [0, 7]


def test_rejection_of_everything_falls_back_explicitly():
    rng = np.random.default_rng(5)
    planes = _stack(10, [], rng)  # tissue in every slice
    result = select_quiet_slices(planes)
    assert result.fallback and "used the candidates anyway" in result.fallback
    assert result.indices == result.candidates and len(result.indices) == 3


def test_too_few_slices_is_an_error():
    with pytest.raises(BackgroundError, match="2 slices; estimating a background needs at least 3"):
        select_quiet_slices(np.zeros((2, 8, 8)))


def test_map_planes_by_physical_z():
    assert map_planes([5], 1.0, 0.0, 1.0, 0.0, 10) == [5]
    # level-1 plane 2 (scale 2, translation 0.5) covers level-0 planes 4 and 5
    assert map_planes([2], 2.0, 0.5, 1.0, 0.0, 10) == [4, 5]
    assert map_planes([0, 4], 2.0, 0.5, 1.0, 0.0, 9) == [0, 1, 8]  # clamped to the target


def test_channel_map_syntax():
    assert parse_channel_map("0=5, 1=dapi") == {0: "5", 1: "dapi"}
    for bad in ("0:5", "a=5", "0=5,0=6", "", "0="):
        with pytest.raises(FlatfieldError):
            parse_channel_map(bad)


def test_model_layers_rules():
    groups = {"dapi": [1, 2], "fitc": [3, 5]}
    assert [n for n, _ in model_layers(2, 5, groups, None, "0=2,1=fitc", "t")] == [2, 4]
    assert [n for n, _ in model_layers(3, 5, groups, 5, None, "t")] == [5, 5, 5]
    assert [n for n, _ in model_layers(2, 2, {}, None, None, "t")] == [1, 2]
    assert [n for n, _ in model_layers(2, 1, {}, None, None, "t")] == [1, 1]
    with pytest.raises(FlatfieldError, match="cannot map the model's 5 layers onto the tile's 2 channels"):
        model_layers(2, 5, groups, None, None, "t")
    with pytest.raises(FlatfieldError, match=r"does not map channel\(s\) \[1\]"):
        model_layers(2, 5, groups, None, "0=1", "t")
    with pytest.raises(FlatfieldError, match="layer 9 does not exist"):
        model_layers(1, 5, groups, None, "0=9", "t")
    with pytest.raises(FlatfieldError, match="neither a layer number nor a layer group"):
        model_layers(1, 5, groups, None, "0=cy5", "t")


def test_invalid_flatfield_pixels_refused_or_repaired():
    field = np.ones((1, 16, 16))
    field[0, 5, 6] = 0
    field[0, 9, 9] = np.nan
    field[0, 0, 0] = -1
    with pytest.raises(FlatfieldError, match="3 pixels zero, negative or not finite .*--repair-flatfield"):
        checked(field, repair=False, where="tile x")
    repaired, counts = checked(field, repair=True, where="tile x")
    assert counts == [3] and np.all(np.isfinite(repaired)) and repaired.min() > 0
    np.testing.assert_allclose(repaired, 1.0)  # neighbourhood of ones
    with pytest.raises(FlatfieldError, match="every pixel"):
        checked(np.zeros((1, 4, 4)), repair=True, where="tile x")


def test_resampling_is_smooth_keeps_the_mean_and_refuses_other_aspects():
    y, x = np.mgrid[0:32, 0:48]
    field = 1 + 0.3 * np.cos((x - 24) / 30) * np.cos((y - 16) / 20)
    big = resample_field(field, (64, 96), "t")
    assert big.shape == (64, 96) and big.mean() == pytest.approx(field.mean())
    yy, xx = (np.mgrid[0:64, 0:96] + 0.5) / 2 - 0.5  # pixel centres of the big grid on the small one
    truth = 1 + 0.3 * np.cos((xx - 24) / 30) * np.cos((yy - 16) / 20)
    assert np.abs(big - truth)[4:-4, 4:-4].max() < 1e-3
    with pytest.raises(FlatfieldError, match="aspect ratios differ"):
        resample_field(field, (64, 64), "t")
