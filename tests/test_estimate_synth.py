"""Synthetic stacks for the estimator: the recipe of reference/basicpy.md §3, checked from its definition."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile
import zarr

from shadeflow.core.synth.stacks import (
    StackConfig,
    generate_stack,
    read_truth,
    truth_darkfield,
    truth_flatfield,
    write_stack,
)


def test_flatfield_and_darkfield_follow_the_recipe():
    size = 200
    flat = truth_flatfield(size)
    assert flat.mean() == pytest.approx(1.0)
    assert 0.64 < flat.min() < 0.66 and 1.17 < flat.max() < 1.19  # basicpy.md: range 0.65–1.18
    # a Gaussian spot at (u, v) = (0.56, 0.45) whose farthest corner (0, 1) is 0.55 of the peak
    u0, v0 = 0.56, 0.45
    two_sigma2 = ((0 - u0) ** 2 + (1 - v0) ** 2) / -math.log(0.55)
    centres = (np.arange(size) + 0.5) / size
    spot = np.exp(-((centres[None, :] - u0) ** 2 + (centres[:, None] - v0) ** 2) / two_sigma2)  # rows are v
    assert np.allclose(flat, spot / spot.mean(), rtol=1e-12)
    dark = truth_darkfield(size)
    assert dark[0, 0] == pytest.approx(100 + 6 * 0.5 / size + 4 * 0.5 / size)
    assert dark[-1, -1] == pytest.approx(100 + 6 * (size - 0.5) / size + 4 * (size - 0.5) / size)
    assert not truth_darkfield(size, on=False).any()


def test_stacks_are_seeded_and_record_their_outliers():
    config = StackConfig(kind="tissue", size=64, n=50, outlier_fraction=0.06, saturated_fraction=0.1, seed=2)
    a, truth = generate_stack(config, workers=1)
    b, _ = generate_stack(config, workers=2)
    assert np.array_equal(a, b) and a.dtype == np.uint16 and a.shape == (50, 64, 64)
    assert sorted(truth["outliers"].values()) == ["dark", "object", "overexposed"]
    dark = next(i for i, k in truth["outliers"].items() if k == "dark")
    assert a[dark].mean() < truth["darkfield"].mean() + 10  # a closed shutter: darkfield and read noise only
    assert len(truth["saturated"]) == 5 and all((a[i] == 65535).any() for i in truth["saturated"])
    assert 0.85 <= truth["brightness"].min() and truth["brightness"].max() <= 1.15
    other, _ = generate_stack(
        StackConfig(kind="tissue", size=64, n=50, outlier_fraction=0.06, saturated_fraction=0.1, seed=3),
        workers=1,
    )
    assert not np.array_equal(a, other)


@pytest.mark.parametrize(
    "kind, low, high", [("tissue", 0.6, 0.9), ("sparse", 0.05, 0.3), ("empty", 0.0, 0.08)]
)
def test_scenes_cover_what_they_say(kind, low, high):
    images, truth = generate_stack(StackConfig(kind=kind, size=128, n=12, darkfield=False, seed=1))
    # specimen share: pixels well above the frame's background (100 · b · F)
    expected_background = 100 * truth["brightness"][:, None, None] * truth["flatfield"][None]
    covered = (images > 1.5 * expected_background).mean()
    assert low <= covered <= high, f"{kind}: {covered:.0%}"


@pytest.mark.parametrize("fmt", ["zarr", "tiff"])
def test_written_stack_and_truth(tmp_path, fmt):
    config = StackConfig(kind="sparse", size=32, n=10, seed=1)
    where = write_stack(str(tmp_path), config, fmt=fmt)
    images, truth = generate_stack(config)
    if fmt == "zarr":
        stored = zarr.open_array(where["images"], mode="r")[...]
    else:
        stored = np.stack([tifffile.imread(tmp_path / "images" / f"frame_{i:05d}.tif") for i in range(10)])
    assert np.array_equal(stored, images)
    back = read_truth(str(tmp_path))
    assert np.array_equal(back["flatfield"], truth["flatfield"]) and np.array_equal(
        back["darkfield"], truth["darkfield"]
    )
    meta = json.loads((tmp_path / "truth" / "truth.json").read_text())
    assert meta["config"]["kind"] == "sparse" and len(meta["brightness"]) == 10


def test_bad_configurations():
    with pytest.raises(ValueError, match="kind 'cells' is not one of tissue, sparse, empty"):
        StackConfig(kind="cells")
    with pytest.raises(ValueError, match="outlier_fraction 2 must be between 0 and 1"):
        StackConfig(outlier_fraction=2)
