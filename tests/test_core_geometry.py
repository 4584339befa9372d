"""Field geometry: bulk (8 overlapping neighbours) versus edge fields, field size and pixel scale."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from shadeflow.core.io.slide import Field, LayerGroup, Slide
from shadeflow.core.meanimage.geometry import (
    NATIVE_PIXEL_UM,
    bulk_fields,
    classify_fields,
    field_size_um,
    overlap_counts,
    pixel_scale,
)

STEP_X, STEP_Y = 600.0, 450.0
SIZE_X, SIZE_Y = 660.0, 500.0  # 10 % overlap with each neighbour


def _grid(columns=5, rows=4):
    cx, cy = np.meshgrid(1000 + STEP_X * np.arange(columns), 2000 + STEP_Y * np.arange(rows))
    return cx.ravel(), cy.ravel()


def _slide(cx, cy, field_size=None, width=336) -> Slide:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    fields = tuple(
        Field(
            n=i + 1,
            row=i + 1,
            key=f"F_[{x:g},{y:g}]",
            file=f"f{i}.dat",
            cx=float(x),
            cy=float(y),
            acquired=start + dt.timedelta(seconds=i),
            exposure_ms=(10.0,),
        )
        for i, (x, y) in enumerate(zip(cx, cy))
    )
    return Slide(
        url="/nowhere/S1",
        slide_id="S1",
        project="1",
        cohort="1",
        batch="1",
        microscope="vectra",
        shape=(251, width, 2),
        dtype="uint16",
        layer_groups=(LayerGroup("dapi", 1, 2),),
        dark_current=8.0,
        field_size_um=field_size,
        fields=fields,
    )


def test_five_by_four_grid_has_three_by_two_bulk_interior():
    cx, cy = _grid()
    bulk = bulk_fields(cx, cy, SIZE_X, SIZE_Y).reshape(4, 5)
    expected = np.zeros((4, 5), bool)
    expected[1:3, 1:4] = True
    np.testing.assert_array_equal(bulk, expected)
    assert bulk.sum() == 6


def test_overlap_counts_on_grid():
    cx, cy = _grid()
    counts = overlap_counts(cx, cy, SIZE_X, SIZE_Y).reshape(4, 5)
    assert counts[0, 0] == 3  # corner
    assert counts[0, 2] == 5  # top edge
    assert counts[2, 2] == 8  # interior


def test_removing_one_neighbour_makes_a_bulk_field_edge():
    cx, cy = _grid()
    interior = 2 * 5 + 2  # row 2, column 2
    assert bulk_fields(cx, cy, SIZE_X, SIZE_Y)[interior]
    neighbour = 1 * 5 + 3  # diagonal neighbour (row 1, column 3)
    keep = np.ones(cx.size, bool)
    keep[neighbour] = False
    bulk = bulk_fields(cx[keep], cy[keep], SIZE_X, SIZE_Y)
    new_index = interior - (neighbour < interior)
    assert overlap_counts(cx[keep], cy[keep], SIZE_X, SIZE_Y)[new_index] == 7
    assert not bulk[new_index]


def test_overlap_needs_both_axes_strictly_closer_than_field_size():
    cx = np.array([0.0, 100.0])
    cy = np.array([0.0, 0.0])
    np.testing.assert_array_equal(overlap_counts(cx, cy, 100.0, 50.0), [0, 0])  # |Δcx| == w: no overlap
    np.testing.assert_array_equal(overlap_counts(cx, cy, 100.5, 50.0), [1, 1])


def test_field_size_from_slide_json_when_given():
    cx, cy = _grid()
    assert field_size_um(_slide(cx, cy, field_size=(SIZE_X, SIZE_Y))) == (SIZE_X, SIZE_Y)


def test_field_size_inferred_from_grid_step():
    cx, cy = _grid()
    w, h = field_size_um(_slide(cx, cy))
    assert STEP_X < w < 2 * STEP_X and STEP_Y < h < 2 * STEP_Y
    assert (w, h) == pytest.approx((1.5 * STEP_X, 1.5 * STEP_Y))
    # and the inferred size gives the same bulk/edge split as the true one
    np.testing.assert_array_equal(classify_fields(_slide(cx, cy)), bulk_fields(cx, cy, SIZE_X, SIZE_Y))


def test_pixel_scale_is_one_without_field_size():
    cx, cy = _grid()
    assert pixel_scale(_slide(cx, cy)) == 1.0


def test_pixel_scale_from_field_size():
    cx, cy = _grid()
    width_px = 336
    um = 4 * NATIVE_PIXEL_UM * width_px  # pixels 4× the native size
    assert pixel_scale(_slide(cx, cy, field_size=(um, um), width=width_px)) == pytest.approx(0.25)
