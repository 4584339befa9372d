"""AstroPath's file formats: interleaved ``.bin`` images and the CSV tables.

``.bin`` images are headerless little-endian arrays in C order (H, W, L) — every pixel's layers
together — in their own dtype (float64 for images, uint64 for the mask stack). shadeflow works in
layer-major (L, H, W) and converts at this boundary.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Iterable, Sequence

import numpy as np

from . import storage


class BinFormatError(ValueError):
    """A ``.bin`` file whose size does not match the expected shape and dtype."""


#: rows of an (L, H, W) array interleaved at a time: every layer's rows of a block stay in the CPU cache
INTERLEAVE_ROWS = 16


def interleave(layers: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    """An (L, H, W) array as a C-contiguous little-endian (H, W, L) array of ``dtype``: the bytes of
    AstroPath's ``.bin`` layout.

    A block of rows at a time: a whole-array transposed copy reads each pixel's layers from L places a
    whole layer apart (10 MB for a Vectra field), so every value it writes misses the cache; a block of
    rows keeps all layers' rows of the block in cache. The values (and bytes) are the same.
    """
    l, h, w = layers.shape
    out = np.empty((h, w, l), np.dtype(dtype).newbyteorder("<"))
    for y in range(0, h, INTERLEAVE_ROWS):
        out[y : y + INTERLEAVE_ROWS] = np.moveaxis(layers[:, y : y + INTERLEAVE_ROWS], 0, -1)
    return out


def encode_bin(layers: np.ndarray, dtype: str | np.dtype) -> bytes:
    """Bytes of an (L, H, W) array in AstroPath's interleaved (H, W, L) layout."""
    return interleave(layers, dtype).tobytes()


def decode_bin(
    data: bytes, shape: tuple[int, int, int], dtype: str | np.dtype, what: str = ".bin"
) -> np.ndarray:
    """(L, H, W) array from AstroPath's interleaved bytes; ``shape`` is (H, W, L)."""
    dtype = np.dtype(dtype).newbyteorder("<")
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        h, w, l = shape
        raise BinFormatError(
            f"{what}: {len(data)} bytes, expected {expected} for {h}x{w}x{l} {dtype.name} (truncated or "
            "corrupt?)"
        )
    interleaved = np.frombuffer(data, dtype=dtype).reshape(shape)
    return np.ascontiguousarray(np.moveaxis(interleaved, -1, 0)).astype(dtype.newbyteorder("="), copy=False)


def write_bin(url: str, layers: np.ndarray, dtype: str | np.dtype) -> None:
    """Write an (L, H, W) array as an interleaved ``.bin`` (without a bytes copy of it)."""
    storage.write_bytes(url, memoryview(interleave(layers, dtype)).cast("B"))


def read_bin(url: str, shape: tuple[int, int, int], dtype: str | np.dtype) -> np.ndarray:
    """Read an interleaved ``.bin`` of (H, W, L) ``shape`` as (L, H, W), checking its size."""
    if not storage.exists(url):
        raise FileNotFoundError(f"{url} not found")
    return decode_bin(storage.read_bytes(url), shape, dtype, what=url)


def csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(url: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    storage.write_text(url, csv_text(header, rows))


def write_dataclass_csv(url: str, rows: Sequence, cls: type) -> None:
    """Write dataclass instances as a CSV whose columns are the dataclass fields."""
    names = [f.name for f in dataclasses.fields(cls)]
    write_csv(url, names, ([_cell(getattr(r, n)) for n in names] for r in rows))


def read_csv(url: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(storage.read_text(url))))


def _cell(value) -> str:
    if isinstance(value, tuple):  # AstroPath writes layer lists as Python list strings: "[1, 2, 3]"
        return str(list(value))
    return value
