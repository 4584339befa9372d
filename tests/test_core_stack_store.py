"""The self-describing Zarr copy of a mean-image stack: write, read back, reject foreign groups."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from shadeflow.core.stack import FieldLogRow, MeanImageStack, mean_and_std_err
from shadeflow.core.stack_store import FORMAT, read_stack, write_stack


def _stack() -> MeanImageStack:
    rng = np.random.default_rng(0)
    shape = (3, 8, 9)
    count = rng.integers(0, 5, shape).astype(np.uint32)
    total = rng.random(shape) * count
    return MeanImageStack(
        sum=total,
        sum_sq=total**2 / np.maximum(count, 1) + rng.random(shape),
        count=count,
        n_images=np.array([4, 4, 2], np.int64),
        fields=[
            FieldLogRow("S1", "S1_[1,2].Data.dat", "bulk", "stacking", (1, 2, 3)),
            FieldLogRow("S1", "S1_[3,4].Data.dat", "bulk", "stacking", (3,)),
            FieldLogRow("S1", "S1_[5,6].Data.dat", "bulk", "stacking", ()),
        ],
    )


def test_round_trip(tmp_path):
    stack = _stack()
    url = str(tmp_path / "S1.stack.zarr")
    attributes = {
        "slide": "S1",
        "layer_groups": {"dapi": [1, 2], "fitc": [3, 3]},
        "parameters": {"binning": 4},
        "inputs": ["a", "b"],
    }
    write_stack(url, stack, attributes)
    back, attrs = read_stack(url)
    for name in ("sum", "sum_sq", "count"):
        original, read = getattr(stack, name), getattr(back, name)
        assert read.dtype == original.dtype
        np.testing.assert_array_equal(read, original)
    np.testing.assert_array_equal(back.n_images, stack.n_images)
    assert back.fields == stack.fields
    assert attrs["format"] == FORMAT
    for key, value in attributes.items():
        assert attrs[key] == value
    group = zarr.open_group(url, mode="r")
    mean, std_err = mean_and_std_err(stack.sum, stack.sum_sq, stack.count)
    np.testing.assert_array_equal(group["mean"][:], mean)
    np.testing.assert_array_equal(group["std_err"][:], std_err)


def test_the_fast_codec_round_trips_every_bit(tmp_path):
    """Full-mantissa float64 (what sums of hundreds of fields look like), zeros, tiny and huge values and
    a uint32 count come back bit for bit through the Blosc lz4 bit-shuffle codec."""
    rng = np.random.default_rng(1)
    shape = (2, 67, 131)  # odd sizes: blosc's bit shuffle leaves a tail of bytes unshuffled
    count = rng.integers(0, 900, shape).astype(np.uint32)
    total = rng.random(shape) * 1e6 * count
    total_sq = total**2 / np.maximum(count, 1) + rng.random(shape)
    total.flat[:5] = [0.0, 5e-324, np.finfo(np.float64).max, -0.0, 1 / 3]
    stack = MeanImageStack(
        sum=total,
        sum_sq=total_sq,
        count=count,
        n_images=np.array([900, 900], np.int64),
        fields=[],
    )
    url = str(tmp_path / "S1.stack.zarr")
    write_stack(url, stack, {"slide": "S1"})
    back, _ = read_stack(url)
    for name in ("sum", "sum_sq", "count"):
        original, read = getattr(stack, name), getattr(back, name)
        assert read.dtype == original.dtype
        assert read.tobytes() == original.tobytes()
    group = zarr.open_group(url, mode="r")
    for name in ("sum", "sum_sq", "count", "mean", "std_err"):
        (codec,) = group[name].compressors
        assert (codec.cname.value, codec.clevel, codec.shuffle.value) == ("lz4", 1, "bitshuffle")


def test_reading_a_group_without_format_raises(tmp_path):
    url = str(tmp_path / "other.zarr")
    group = zarr.open_group(url, mode="w", zarr_format=3)
    group.create_array("sum", data=np.zeros((1, 2, 2)))
    group.attrs["note"] = "not a stack"
    with pytest.raises(ValueError, match="not a shadeflow mean-image stack"):
        read_stack(url)


def test_reading_a_group_with_another_format_raises(tmp_path):
    url = str(tmp_path / "other.zarr")
    group = zarr.open_group(url, mode="w", zarr_format=3)
    group.attrs["format"] = "something-else/1"
    with pytest.raises(ValueError, match="something-else"):
        read_stack(url)
