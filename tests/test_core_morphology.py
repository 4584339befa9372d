"""Mask and stack image operations: elliptical morphology with replicated borders, binning, size filters."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from shadeflow.core import morphology as morph

SIZES = [1, 2.25, 3.75, 4.5, 9, 11.25]


def _reference(mask: np.ndarray, footprint: np.ndarray, op) -> np.ndarray:
    """scipy's binary operation on the edge-padded array, per 2-D plane, cropped back."""
    r = footprint.shape[0] // 2
    planes = mask.reshape(-1, *mask.shape[-2:])
    out = []
    for plane in planes:
        padded = np.pad(plane, r, mode="edge")
        result = op(padded, structure=footprint)
        out.append(result[r : r + plane.shape[0], r : r + plane.shape[1]])
    return np.stack(out).reshape(mask.shape)


def _ref_erode(mask, fp):
    return _reference(mask, fp, ndi.binary_erosion)


def _ref_dilate(mask, fp):
    return _reference(mask, fp, ndi.binary_dilation)


def _random_mask(shape, seed, density=0.5, blob=1.5):
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.random(shape), [0] * (len(shape) - 2) + [blob, blob])
    return noise > np.quantile(noise, 1 - density)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("shape", [(37, 41), (3, 29, 33)])
def test_erode_and_dilate_match_scipy_on_edge_padded_array(size, shape):
    fp = morph.ellipse(size)
    mask = _random_mask(shape, seed=int(size * 4))
    np.testing.assert_array_equal(morph.erode(mask, fp), _ref_erode(mask, fp))
    np.testing.assert_array_equal(morph.dilate(mask, fp), _ref_dilate(mask, fp))


@pytest.mark.parametrize("size", [3.75, 11.25, 30.0])  # the last is larger than the planes
@pytest.mark.parametrize("shape", [(1, 1), (2, 7), (9, 1), (2, 4, 3)])
def test_erode_and_dilate_match_scipy_on_tiny_planes(size, shape):
    fp = morph.ellipse(size)
    mask = np.random.default_rng(len(shape) + int(size)).random(shape) < 0.5
    np.testing.assert_array_equal(morph.erode(mask, fp), _ref_erode(mask, fp))
    np.testing.assert_array_equal(morph.dilate(mask, fp), _ref_dilate(mask, fp))
    # a strided view filters like its copy, and is not modified
    view = np.concatenate([mask, mask], axis=-1)[..., ::2]
    before = view.copy()
    np.testing.assert_array_equal(morph.erode(view, fp), _ref_erode(before, fp))
    np.testing.assert_array_equal(view, before)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("shape", [(37, 41), (3, 29, 33)])
def test_close_and_open_compose_the_reference_operations(size, shape):
    fp = morph.ellipse(size)
    mask = _random_mask(shape, seed=int(size * 4) + 1)
    np.testing.assert_array_equal(morph.close(mask, fp), _ref_erode(_ref_dilate(mask, fp), fp))
    np.testing.assert_array_equal(morph.open_(mask, fp), _ref_dilate(_ref_erode(mask, fp), fp))


def test_border_replication_keeps_a_full_edge_row():
    """With replicated borders, a mask that is True along a whole edge is not eroded from outside."""
    mask = np.zeros((20, 20), bool)
    mask[:6] = True
    eroded = morph.erode(mask, morph.ellipse(5))
    assert eroded[0].all() and eroded[3].all()
    assert not eroded[4:].any()


def test_operations_do_not_modify_input():
    mask = _random_mask((25, 25), seed=3)
    before = mask.copy()
    for op in (morph.erode, morph.dilate, morph.close, morph.open_):
        op(mask, morph.ellipse(4.5))
        op(mask, morph.ellipse(1))
    np.testing.assert_array_equal(mask, before)


def test_ellipse_nine():
    e = morph.ellipse(9)
    assert e.shape == (9, 9)
    assert e.dtype == bool
    np.testing.assert_array_equal(e, e.T)
    np.testing.assert_array_equal(e, e[::-1])
    np.testing.assert_array_equal(e, e[:, ::-1])
    assert e[4, 4]
    assert e[4, 0] and e[0, 4] and e[8, 4] and e[4, 8]
    assert not (e[0, 0] or e[0, 8] or e[8, 0] or e[8, 8])


def test_small_ellipses():
    assert morph.ellipse(1).shape == (1, 1) and morph.ellipse(1).all()
    cross = morph.ellipse(2.25)
    assert cross.shape == (3, 3)
    assert cross.sum() == 5 and not cross[0, 0]


def _block_mean_reference(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[-2:]
    pad = [(0, 0)] * (image.ndim - 2) + [(0, (-h) % factor), (0, (-w) % factor)]
    padded = np.pad(image.astype(np.float64), pad, mode="edge")
    H, W = padded.shape[-2:]
    blocks = padded.reshape(*padded.shape[:-2], H // factor, factor, W // factor, factor)
    return blocks.mean(axis=(-3, -1))


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(16, 24), (17, 23), (2, 13, 10)])
def test_bin_mean_equals_block_mean_with_edge_padding(factor, shape):
    rng = np.random.default_rng(factor)
    image = rng.integers(0, 65535, shape).astype(np.uint16)
    binned = morph.bin_mean(image, factor)
    assert binned.dtype == np.float32
    expected = _block_mean_reference(image, factor)
    assert binned.shape == expected.shape
    np.testing.assert_allclose(binned, expected, rtol=1e-6, atol=1e-2)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_upsample_inverts_binning_shape_and_repeats_blocks(factor):
    shape = (17, 23)
    small = _random_mask((-(-shape[0] // factor), -(-shape[1] // factor)), seed=5)
    big = morph.upsample(small, factor, shape)
    assert big.shape == shape
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    np.testing.assert_array_equal(big, small[yy // factor, xx // factor])
    # and binning the upsampled image gives back the small one (blocks are constant)
    np.testing.assert_array_equal(morph.bin_mean(big.astype(np.float32), factor) > 0.5, small)


def _with_component(size_px: int, shape=(30, 30), at=(5, 5)) -> np.ndarray:
    """A straight horizontal run of ``size_px`` True pixels."""
    mask = np.zeros(shape, bool)
    mask[at[0], at[1] : at[1] + size_px] = True
    return mask


def test_size_filter_removes_components_smaller_than_min_size_only():
    min_size = 7
    mask = _with_component(min_size - 1, at=(3, 2)) | _with_component(min_size, at=(20, 2))
    filtered = morph.size_filter(mask, min_size)
    assert not filtered[3].any()
    assert filtered[20].sum() == min_size


def test_size_filter_counts_diagonal_chains_as_one_component():
    mask = np.zeros((20, 20), bool)
    for i in range(6):  # 6 pixels touching only diagonally
        mask[2 + i, 2 + i] = True
    kept = morph.size_filter(mask, 6)
    np.testing.assert_array_equal(kept, mask)
    assert not morph.size_filter(mask, 7).any()


def test_size_filter_fills_holes_smaller_than_min_size_only():
    min_size = 6
    mask = np.ones((30, 30), bool)
    mask[5, 5 : 5 + min_size - 1] = False  # hole of min_size - 1 px
    mask[20, 5 : 5 + min_size] = False  # hole of min_size px
    filtered = morph.size_filter(mask, min_size)
    assert filtered[5].all()
    assert filtered[20].sum() == 30 - min_size


def test_size_filter_holes_are_eight_connected():
    mask = np.ones((20, 20), bool)
    for i in range(5):  # a diagonal crack of 5 px is one hole
        mask[3 + i, 3 + i] = False
    np.testing.assert_array_equal(morph.size_filter(mask, 5), mask)
    assert morph.size_filter(mask, 6).all()


def test_size_filter_fractional_min_size():
    mask = _with_component(2) | _with_component(3, at=(15, 2))
    filtered = morph.size_filter(mask, 2.5)  # drops 2 px (< 2.5), keeps 3 px
    assert not filtered[5].any() and filtered[15].sum() == 3


def test_size_filter_below_two_is_identity():
    mask = _random_mask((20, 20), seed=9)
    np.testing.assert_array_equal(morph.size_filter(mask, 1), mask)


def test_smooth_preserves_constant_image():
    image = np.full((2, 30, 40), 123.0)
    out = morph.smooth(image, 5.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 123.0, rtol=1e-6)
    assert out.mean() == pytest.approx(123.0, rel=1e-6)


def test_smooth_only_acts_on_last_two_axes():
    image = np.zeros((3, 21, 21), np.float32)
    image[1, 10, 10] = 1.0
    out = morph.smooth(image, 2.0)
    assert not out[0].any() and not out[2].any()
    assert out[1].sum() == pytest.approx(1.0, rel=1e-5)


def test_label_regions_uses_eight_connectivity():
    mask = np.zeros((10, 10), bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal pair: one region
    mask[6, 6] = True
    labels, n = morph.label_regions(mask)
    assert n == 2
    assert labels[1, 1] == labels[2, 2] != labels[6, 6]


def test_is_uniform():
    assert morph.is_uniform(np.zeros((3, 3), bool))
    assert morph.is_uniform(np.ones((3, 3), bool))
    m = np.zeros((3, 3), bool)
    m[1, 1] = True
    assert not morph.is_uniform(m)


def test_size_filter_can_leave_background_cut_by_the_border_unfilled():
    """Background touching the border is not a hole when ``fill_border_holes=False`` (tissue masks);
    holes inside are filled and small components removed either way."""
    mask = np.ones((30, 30), bool)
    mask[0, 10:13] = False  # 3 px of background cut off by the top border
    mask[15, 10:13] = False  # a 3 px hole inside
    mask[29, 0:2] = False  # 2 px in a corner
    assert morph.size_filter(mask, 6).all()  # AstroPath: every small background component is filled
    kept = morph.size_filter(mask, 6, fill_border_holes=False)
    assert not kept[0, 10:13].any() and not kept[29, 0:2].any()
    assert kept[15].all()
    assert kept.sum() == mask.size - 5
    speck = np.zeros((30, 30), bool)
    speck[0, 0:3] = True
    assert not morph.size_filter(speck, 6, fill_border_holes=False).any()
