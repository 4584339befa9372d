"""AstroPath's interleaved ``.bin`` layout: encode/decode round trips, byte layout, size checks."""

from __future__ import annotations

import numpy as np
import pytest

from shadeflow.core.io.astropath import (
    INTERLEAVE_ROWS,
    BinFormatError,
    decode_bin,
    encode_bin,
    read_bin,
    write_bin,
)

L, H, W = 3, 4, 5


@pytest.mark.parametrize("dtype", ["float64", "uint64"])
def test_round_trip(dtype):
    rng = np.random.default_rng(0)
    layers = (rng.random((L, H, W)) * 1e6).astype(dtype)
    data = encode_bin(layers, dtype)
    assert len(data) == L * H * W * 8
    back = decode_bin(data, (H, W, L), dtype)
    assert back.shape == (L, H, W) and back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, layers)


@pytest.mark.parametrize("dtype", ["<f8", "<u8"])
def test_byte_layout_is_pixel_interleaved_little_endian(dtype):
    layers = np.arange(L * H * W).reshape(L, H, W).astype(dtype)
    flat = np.frombuffer(encode_bin(layers, dtype), dtype=dtype)
    # the first L values are pixel (0, 0)'s layers, then pixel (0, 1)'s, …
    np.testing.assert_array_equal(flat[:L], layers[:, 0, 0])
    np.testing.assert_array_equal(flat[L : 2 * L], layers[:, 0, 1])
    # pixel (1, 0) starts after a whole row of W pixels
    np.testing.assert_array_equal(flat[W * L : W * L + L], layers[:, 1, 0])
    # element (l, y, x) is at index (y * W + x) * L + l
    np.testing.assert_array_equal(flat[(2 * W + 3) * L + 1], layers[1, 2, 3])


def test_big_endian_input_is_written_little_endian():
    layers = np.arange(L * H * W, dtype=">f8").reshape(L, H, W)
    flat = np.frombuffer(encode_bin(layers, "float64"), dtype="<f8")
    np.testing.assert_array_equal(flat[:L], [0, H * W, 2 * H * W])


@pytest.mark.parametrize("dtype", ["float64", "uint64"])
def test_truncated_buffer_names_expected_size(dtype):
    data = encode_bin(np.zeros((L, H, W), dtype), dtype)
    with pytest.raises(BinFormatError, match=f"expected {L * H * W * 8}") as info:
        decode_bin(data[:-8], (H, W, L), dtype, what="thing.bin")
    assert "thing.bin" in str(info.value)
    assert str(len(data) - 8) in str(info.value)
    with pytest.raises(BinFormatError):
        decode_bin(data + b"\0" * 8, (H, W, L), dtype)


def test_write_and_read_file(tmp_path):
    layers = np.random.default_rng(1).random((L, H, W))
    url = str(tmp_path / "sub" / "x.bin")
    write_bin(url, layers, "float64")
    np.testing.assert_array_equal(read_bin(url, (H, W, L), "float64"), layers)
    with pytest.raises(BinFormatError, match=str(L * H * W * 8)):
        read_bin(url, (H, W, L + 1), "float64")
    with pytest.raises(FileNotFoundError):
        read_bin(str(tmp_path / "missing.bin"), (H, W, L), "float64")


@pytest.mark.parametrize(
    ("source", "dtype"), [("float64", "float64"), ("uint32", "uint64"), (">f8", "float64")]
)
def test_interleaving_by_blocks_of_rows_is_the_whole_array_transpose(tmp_path, source, dtype):
    # more rows than one block, and a last block cut short
    layers = (np.random.default_rng(2).random((5, 2 * INTERLEAVE_ROWS + 3, 7)) * 1e5).astype(source)
    expected = np.ascontiguousarray(np.moveaxis(layers, 0, -1), dtype=np.dtype(dtype).newbyteorder("<"))
    assert encode_bin(layers, dtype) == expected.tobytes()
    url = str(tmp_path / "x.bin")
    write_bin(url, layers, dtype)
    assert (tmp_path / "x.bin").read_bytes() == expected.tobytes()
