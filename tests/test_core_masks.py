"""Field masks against the planted truth of a synthetic slide, and the labelled mask file form.

The accuracy tests run the reference path (plan, thresholds from edge fields, masks of every field)
on one seeded synthetic slide and compare with the truth saved by ``write_cohort``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from shadeflow.core import morphology as morph
from shadeflow.core.io.slide import LayerGroup, load_slide
from shadeflow.core.meanimage.masks.combined import (
    BLUR_REASON,
    SATURATION_REASON,
    FieldMasks,
    compute_field_masks,
    pack_tissue_mask,
    stacking_masks,
    unpack_tissue_mask,
)
from shadeflow.core.meanimage.pipeline import compute_thresholds, plan_slide, read_corrected_field
from shadeflow.core.synth.slides import SynthConfig, read_truth_masks, write_cohort


@pytest.fixture(scope="module")
def mask_scores(tmp_path_factory) -> dict:
    """Masks of every field of a 48-field synthetic slide, scored against the planted truth."""
    root = str(tmp_path_factory.mktemp("mask_truth"))
    (url,) = write_cohort(root, SynthConfig(slides=1, fields=48, seed=5))
    slide = load_slide(url)
    plan = plan_slide(slide)
    thresholds = compute_thresholds(plan).thresholds
    h, w = slide.height, slide.width
    # the smoothing before thresholding (σ = 5 native px) reaches 4σ (its kernel's truncation)
    reach_px = 4 * plan.grid.sigma(plan.params.smoothing_sigma) * plan.grid.binning
    s = dict(tissue=0, tissue_hit=0, empty=0, empty_hit=0, far_empty=0, far_empty_hit=0)
    s.update(
        blur_regions=[],
        saturation_regions=[],
        clean_tissue=0,
        blur_false=0,
        not_saturated=0,
        saturation_false=0,
    )
    for field in slide.fields:
        image = read_corrected_field(plan, field).copy()
        masks = compute_field_masks(
            image, thresholds, plan.exposure_ms, slide.layer_groups, plan.grid, plan.params
        )
        truth = read_truth_masks(root, slide.slide_id, field.key, (h, w))
        tissue, blur = masks.full(masks.tissue), masks.full(masks.blur)
        assert tissue.shape == blur.shape == (h, w)

        s["tissue"] += truth["tissue"].sum()
        s["tissue_hit"] += (tissue & truth["tissue"]).sum()
        s["empty"] += truth["empty"].sum()
        s["empty_hit"] += (tissue & truth["empty"]).sum()
        far_empty = truth["empty"] & (ndi.distance_transform_edt(~truth["tissue"]) > reach_px)
        s["far_empty"] += far_empty.sum()
        s["far_empty_hit"] += (tissue & far_empty).sum()

        labels, n = morph.label_regions(truth["blur"])
        s["blur_regions"] += [blur[labels == i].mean() for i in range(1, n + 1)]
        clean = truth["tissue"] & ~truth["blur"]
        s["clean_tissue"] += clean.sum()
        s["blur_false"] += (blur & clean).sum()

        for g in range(len(slide.layer_groups)):
            flagged = masks.full(masks.saturation[g])
            labels, n = morph.label_regions(truth["saturation"][g])
            s["saturation_regions"] += [flagged[labels == i].mean() for i in range(1, n + 1)]
            s["not_saturated"] += (~truth["saturation"][g]).sum()
            s["saturation_false"] += (flagged & ~truth["saturation"][g]).sum()
    return s


def test_tissue_mask_covers_planted_tissue(mask_scores):
    s = mask_scores
    assert s["tissue"] > 0
    assert s["tissue_hit"] / s["tissue"] >= 0.95


def test_tissue_mask_leaves_empty_background_out(mask_scores):
    """Empty background beyond the reach of the σ = 5 px smoothing is at most 3 % covered.

    Closer to tissue, the smoothed tissue signal itself exceeds the background threshold (by design of
    the AstroPath method), so the mask extends a few µm past the planted tissue edge.
    """
    s = mask_scores
    assert s["far_empty"] > 0.5 * s["empty"]  # most empty pixels are scored
    assert s["far_empty_hit"] / s["far_empty"] <= 0.03


def test_blurred_regions_are_found(mask_scores):
    regions = np.array(mask_scores["blur_regions"])
    assert regions.size >= 5  # the seed plants enough folds to make the rate meaningful
    assert np.mean(regions >= 0.5) >= 0.9


def test_blur_false_positives_are_rare(mask_scores):
    s = mask_scores
    assert s["blur_false"] / s["clean_tissue"] < 0.01


def test_saturated_regions_are_found(mask_scores):
    regions = np.array(mask_scores["saturation_regions"])
    assert regions.size >= 5
    assert np.mean(regions >= 0.5) >= 0.9


def test_saturation_false_positives_are_rare(mask_scores):
    s = mask_scores
    assert s["saturation_false"] / s["not_saturated"] < 0.01


# --- FieldMasks.labelled ------------------------------------------------------------------------

GROUPS = (LayerGroup("dapi", 1, 2), LayerGroup("fitc", 3, 5))


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _masks(binning=1, shape=(40, 50)) -> FieldMasks:
    small = (-(-shape[0] // binning), -(-shape[1] // binning))
    tissue = np.zeros(small, bool)
    tissue[:, : small[1] // 2 + 3] = True
    blur = _disc(small, small[0] * 0.3, small[1] * 0.25, small[0] * 0.12) | _disc(
        small, small[0] * 0.75, small[1] * 0.25, small[0] * 0.1
    )
    saturation = np.zeros((2, *small), bool)
    saturation[0] = _disc(small, small[0] * 0.5, small[1] * 0.8, small[0] * 0.12)
    saturation[1] = _disc(small, small[0] * 0.2, small[1] * 0.8, small[0] * 0.1) | _disc(
        small, small[0] * 0.8, small[1] * 0.8, small[0] * 0.1
    )
    return FieldMasks(tissue=tissue, blur=blur, saturation=saturation, binning=binning, shape=shape)


@pytest.mark.parametrize("binning", [1, 2])
def test_labelled_numbers_blur_from_two_then_saturation(binning):
    masks = _masks(binning)
    labelled, regions = masks.labelled("K", GROUPS)
    assert labelled.shape == (40, 50, 3) and labelled.dtype == np.uint8
    plane0 = labelled[..., 0]
    tissue, blur = masks.full(masks.tissue), masks.full(masks.blur)
    # background 0, tissue 1, blur regions 2 and 3 (in every plane)
    assert set(np.unique(plane0)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(plane0 == 0, ~tissue & ~blur)
    np.testing.assert_array_equal(plane0 == 1, tissue & ~blur)
    np.testing.assert_array_equal(plane0 >= 2, blur)
    for g in (1, 2):
        np.testing.assert_array_equal(
            np.isin(labelled[..., g], [2, 3]), blur & ~masks.full(masks.saturation[g - 1])
        )
    # group 1's one saturation region is 4; group 2's two are 5 and 6
    assert set(np.unique(labelled[..., 1])) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(labelled[..., 1] == 4, masks.full(masks.saturation[0]))
    assert set(np.unique(labelled[..., 2])) == {0, 1, 2, 3, 5, 6}
    np.testing.assert_array_equal(labelled[..., 2] >= 5, masks.full(masks.saturation[1]))

    assert [r.region_index for r in regions] == [2, 3, 4, 5, 6]
    assert [r.layers for r in regions] == ["all", "all", "1-2", "3-5", "3-5"]
    assert [r.reason_flagged for r in regions] == [BLUR_REASON] * 2 + [SATURATION_REASON] * 3
    assert all(r.image_key == "K" for r in regions)
    plane_of = {2: 0, 3: 0, 4: 1, 5: 2, 6: 2}
    for r in regions:
        assert r.n_pixels == (labelled[..., plane_of[r.region_index]] == r.region_index).sum() > 0


def _many_saturation_regions(n_regions: int, shape=(64, 64)) -> FieldMasks:
    """``n_regions`` isolated single pixels (two apart: not 8-connected) in group 0's saturation mask."""
    saturation = np.zeros((2, *shape), bool)
    spots = [(2 * (i // (shape[1] // 2)), 2 * (i % (shape[1] // 2))) for i in range(n_regions)]
    for y, x in spots:
        saturation[0, y, x] = True
    return FieldMasks(
        tissue=np.ones(shape, bool), blur=np.zeros(shape, bool), saturation=saturation, binning=1, shape=shape
    )


@pytest.mark.parametrize("n_regions, dtype", [(254, np.uint8), (255, np.uint16), (600, np.uint16)])
def test_labelled_switches_to_uint16_beyond_255_labels(n_regions, dtype):
    masks = _many_saturation_regions(n_regions)
    labelled, regions = masks.labelled("K", GROUPS)
    assert labelled.dtype == dtype
    assert len(regions) == n_regions
    assert labelled[..., 1].max() == n_regions + 1  # labels 2 … n + 1, no wrap-around
    values, counts = np.unique(labelled[..., 1], return_counts=True)
    assert set(values) == {1, *range(2, n_regions + 2)}
    assert all(c == 1 for v, c in zip(values, counts) if v >= 2)
    assert [r.n_pixels for r in regions] == [1] * n_regions
    np.testing.assert_array_equal(labelled[..., 2], 1)


def test_stacking_masks_keep_blur_and_drop_background_and_saturation():
    masks = _masks(2)
    stacking = masks.stacking_masks()
    assert stacking.shape == (2, 40, 50)
    tissue = masks.full(masks.tissue)
    for g in range(2):
        np.testing.assert_array_equal(stacking[g], tissue & ~masks.full(masks.saturation[g]))
    blur = masks.full(masks.blur)
    assert (stacking[0] & blur).sum() == (tissue & blur).sum() > 0


def test_stacking_guard_drops_a_band_along_tissue_and_saturation_edges_only():
    """Pixels within the guard of background or of a group's saturated pixels are not stacked; the
    field border is not an edge; guard 0 is AstroPath's masks."""
    tissue = np.zeros((60, 80), bool)
    tissue[:, :50] = True  # tissue on the left, touching three borders
    saturation = np.zeros((2, 60, 80), bool)
    saturation[1, 20:30, 10:20] = True
    np.testing.assert_array_equal(stacking_masks(tissue, saturation, 0.0), tissue[None] & ~saturation)

    keep = stacking_masks(tissue, saturation, 4.0)
    assert keep[0][:, :46].all() and not keep[0][:, 46:].any()  # distance 50 − column > 4
    assert keep[0][0].sum() == keep[0][-1].sum() == 46  # top and bottom rows: the border is no edge
    clear_of_spot = ndi.distance_transform_edt(~saturation[1]) > 4.0
    assert not clear_of_spot[18, 8] and keep[0][18, 8]  # 2 px from the block: kept in group 0 only
    np.testing.assert_array_equal(keep[1], keep[0] & clear_of_spot)
    everything = stacking_masks(np.ones((20, 30), bool), np.zeros((2, 20, 30), bool), 4.0)
    assert everything.all()  # nothing excluded: nothing to keep away from
    assert not stacking_masks(np.zeros((20, 30), bool), np.zeros((2, 20, 30), bool), 4.0).any()


@pytest.mark.parametrize("binning", [1, 2])
def test_applied_test_restacks_with_the_masks_meanimage_stacked(tmp_path, binning):
    """The stacking masks rebuilt from a field's mask files equal those meanimage stacked with."""
    from shadeflow.core.applied.evaluation import stacking_masks_from_files

    masks = _masks(binning)
    (tmp_path / "K_tissue_mask.bin").write_bytes(pack_tissue_mask(masks.full(masks.tissue)))
    (tmp_path / "K_full_mask.bin").write_bytes(masks.labelled("K", GROUPS)[0].tobytes())
    for guard in (0.0, 3.0):
        np.testing.assert_array_equal(
            stacking_masks_from_files(str(tmp_path), "K", (40, 50), 2, guard, binning),
            masks.stacking_masks(guard),
        )


def test_tissue_mask_pack_round_trip():
    rng = np.random.default_rng(0)
    mask = rng.random((13, 21)) < 0.5
    data = pack_tissue_mask(mask)
    assert len(data) == -(-13 * 21 // 8)
    np.testing.assert_array_equal(unpack_tissue_mask(data, (13, 21)), mask)
    assert np.unpackbits(np.frombuffer(data, np.uint8))[:21].astype(bool).tolist() == mask[0].tolist()


def test_clipped_pixels_are_saturated_whatever_their_rate_and_size():
    """A pixel at its layer's ceiling (clipped by the camera or the exposure correction) is flagged in
    its group even far below the counts/ms cut and smaller than AstroPath's size rules allow."""
    from shadeflow.core.meanimage.masks.combined import clipped_cells
    from shadeflow.core.meanimage.masks.parameters import MaskParameters, WorkingGrid
    from shadeflow.core.meanimage.masks.saturation import saturation_masks

    groups = (LayerGroup("dapi", 1, 2), LayerGroup("fitc", 3, 3))
    image = np.full((3, 40, 48), 500, np.uint16)
    image[2, 10:12, 20:23] = 15101  # the ceiling of a field exposed 4.3× longer than the median
    ceiling = np.array([65535, 65535, 15101], np.uint16)
    grid, params = WorkingGrid(scale=1.0, binning=2), MaskParameters()
    clipped = clipped_cells(image, ceiling, grid.binning)
    # 2×3 px: 1×2 cells
    assert clipped.shape == (3, 20, 24) and clipped[2].sum() == 2 and not clipped[:2].any()
    smoothed = np.full((3, 20, 24), 500.0, np.float32)
    exposure = np.full(3, 90.0)  # 15101 / 90 ≈ 168 counts/ms: under neither cut's area rules
    masks = saturation_masks(smoothed, exposure, groups, grid, params, clipped)
    assert not masks[0].any() and masks[1].sum() == 2
    assert not saturation_masks(smoothed, exposure, groups, grid, params).any()
    assert clipped_cells(image, np.full(3, 65535, np.uint16), 2) is None
