"""Helpers shared by the ``test_correct_*`` files: synthetic tiles, tiny models, independent references.

The references here are written from the issue's formula and the NGFF spec, not from the code under test.
"""

from __future__ import annotations

import os

import numpy as np

from shadeflow.core.synth.tiles import SynthTileConfig, write_synthetic_tile

SMALL = dict(shape=(32, 96, 128), axes="zyx", chunks=(16, 64, 64))


def make_tile(folder, name: str = "tile.ome.zarr", **overrides) -> tuple[str, dict]:
    """A small synthetic tile ``<folder>/<name>``; returns its URL and truth."""
    config = SynthTileConfig(**{**SMALL, **overrides})
    url = os.path.join(str(folder), name) if "://" not in str(folder) else f"{str(folder).rstrip('/')}/{name}"
    return url, write_synthetic_tile(url, config)


def reference(x: np.ndarray, background, flatfield: np.ndarray, dtype) -> np.ndarray:
    """The issue's formula in float32, straight from numpy: clip(rint((x − bg) / ff)) for integers."""
    out = (x.astype(np.float32) - np.asarray(background, np.float32)) / np.asarray(flatfield, np.float32)
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(dtype)


def smoothed_mean_plane_rms(stack: np.ndarray, planes: list[int], sigma: float) -> float:
    """Relative RMS of the Gaussian-smoothed mean of ``planes`` of a (Z, Y, X) stack (edges reflected)."""
    from scipy import ndimage as ndi

    mean = stack[planes].astype(np.float64).mean(axis=0)
    smooth = ndi.gaussian_filter(mean, sigma, mode="reflect")
    return float(smooth.std() / smooth.mean())


def make_model(store: str, version: str, flatfield: np.ndarray, layer_groups: dict[str, list[int]]) -> None:
    """Publish a tiny model version (L, H, W) into ``store`` with the model store's own functions."""
    from shadeflow.core.model.store import publish_version, staged_version, write_version_files

    n_layers, h, w = flatfield.shape
    with staged_version(store, version) as staged:
        write_version_files(
            staged,
            version,
            flatfield,
            np.full(flatfield.shape, 0.01),
            np.ones(flatfield.shape, np.uint64),
            {"version": version, "layer_groups": layer_groups},
        )
        publish_version(
            staged,
            store,
            version,
            {"test": True},
            inputs=[],
            shape=[h, w, n_layers],
            layer_groups=layer_groups,
        )
