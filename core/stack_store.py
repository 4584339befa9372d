"""The self-describing copy of a mean-image stack: a Zarr group shadeflow writes and reads back.

AstroPath's ``.bin`` files carry no shape, dtype or provenance; this copy carries all of it (layer
groups, units, parameters, inputs, shadeflow version) and every sufficient statistic, so slides can
be merged into models without re-reading any field.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from .io import storage
from .stack import FieldLogRow, MeanImageStack, mean_and_std_err

FORMAT = "shadeflow-mean-image-stack/1"
_ARRAYS = ("sum", "sum_sq", "count", "mean", "std_err")


def _compressor():
    """Blosc lz4 at level 1 with bit shuffle: a slide's float64 statistics are mostly mantissa noise, so
    the zstd level 3 of earlier versions bought little size for 3-4x the CPU (BENCHMARKS.md, "Where a
    slide's ... time goes"): on a proxy of a 500-field slide 70 % of the raw size against 69 %, 2.1 s
    against 7.0 s per Vectra slide. Lossless; any zarr 3 reader decodes it."""
    return zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")


def write_stack(
    url: str,
    stack: MeanImageStack,
    attributes: dict[str, Any],
    mean_and_error: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Write ``stack`` (and its mean and standard error) as a Zarr v3 group at ``url``.

    Arrays are (layer, y, x), one chunk per layer; ``attributes`` (slide, layer groups, parameters,
    inputs, …) are stored with the format name, units and the per-layer image counts and field log.
    ``mean_and_error`` is ``mean_and_std_err`` of the stack when the caller already has it.
    """
    mean, std_err = mean_and_error or mean_and_std_err(stack.sum, stack.sum_sq, stack.count)
    group = zarr.open_group(
        url, mode="w", storage_options=storage.storage_options(url) or None, zarr_format=3
    )
    values = {
        "sum": stack.sum,
        "sum_sq": stack.sum_sq,
        "count": stack.count,
        "mean": mean,
        "std_err": std_err,
    }
    for name in _ARRAYS:
        data = values[name]
        group.create_array(
            name,
            data=data,
            chunks=(1, *data.shape[1:]),
            compressors=_compressor(),
            dimension_names=("layer", "y", "x"),
        )
    group.attrs.update(
        {
            "format": FORMAT,
            "units": {
                "sum": "counts/ms",
                "sum_sq": "(counts/ms)^2",
                "count": "fields",
                "mean": "counts/ms",
                "std_err": "counts/ms",
            },
            "n_images": [int(v) for v in stack.n_images],
            "fields": [[r.slide, r.file, r.location, r.use, list(r.stacked_in_layers)] for r in stack.fields],
            **attributes,
        }
    )


def read_stack(url: str) -> tuple[MeanImageStack, dict[str, Any]]:
    """Read a stack written by :func:`write_stack` and its attributes."""
    group = zarr.open_group(url, mode="r", storage_options=storage.storage_options(url) or None)
    attrs = dict(group.attrs)
    if attrs.get("format") != FORMAT:
        raise ValueError(f"{url} is not a shadeflow mean-image stack (format {attrs.get('format')!r})")
    stack = MeanImageStack(
        sum=group["sum"][:],
        sum_sq=group["sum_sq"][:],
        count=group["count"][:],
        n_images=np.asarray(attrs["n_images"], dtype=np.int64),
        fields=[FieldLogRow(s, f, loc, use, tuple(layers)) for s, f, loc, use, layers in attrs["fields"]],
    )
    return stack, attrs
