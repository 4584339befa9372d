"""Synthetic OME-Zarr tiles with a known (planted) flatfield and background, for demos, tests and benchmarks.

A tile is ``background + flatfield · sample + noise``, per channel:

* the **flatfield** is :func:`shadeflow.core.synth.slides.planted_flatfield` — a Gaussian illumination spot,
  mean 1, ``corner_falloff`` dimmer in the farthest corner, shifted a little per channel;
* the **sample** occupies the middle of the z range; the first and last ``quiet_fraction`` of the
  planes hold background only (as in a light-sheet tile whose ends leave the tissue). In each plane
  it is a random, smooth texture (a bilinear interpolation of a coarse random grid) that averages to
  ``signal`` over many planes, so a flat-fielded tile has a flat mean plane;
* the **background** is a constant offset (camera offset plus haze), not shaded;
* **noise** is Gaussian with the variance of shot noise (counts) plus a small read noise.

Everything is generated chunk by chunk from seeds derived from the voxel coordinates, so tiles of
any size are written with bounded memory and the same ``seed`` and chunking give the same bytes.
The known flatfield and background are saved beside the tile (``truth/<stem>_flatfield.npy`` and
``truth/<stem>.json``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from ..correct.graph import chunked_constant, graph_constants_allowed, plan_pyramid, reduced_levels
from ..io import storage
from ..io.omezarr import (
    CANONICAL,
    SUPPORTED_DTYPES,
    create_image_group,
    create_level_array,
    write_multiscales,
)
from .slides import planted_flatfield

TRUTH_DIR = "truth"
COLORS = ("0000FF", "00FF00", "FF0000", "FF00FF", "00FFFF", "FFFF00")


@dataclass(frozen=True)
class SynthTileConfig:
    """What a synthetic tile looks like. ``shape`` follows ``axes`` (a subsequence of ``tczyx``)."""

    shape: tuple[int, ...] = (64, 256, 256)
    axes: str = "zyx"
    dtype: str = "uint16"
    chunks: tuple[int, ...] | None = None  # default: 64 planes × 256 × 256 (clamped)
    # zarr v3 only: shard shape along ``axes`` (multiples of the chunks)
    shards: tuple[int, ...] | None = None
    zarr_format: int = 3
    levels: int = 1  # resolution levels of the input itself
    scale: dict[str, float] = field(default_factory=lambda: {"z": 2.0, "y": 0.75, "x": 0.75})
    translation: dict[str, float] = field(default_factory=dict)
    background: float = 100.0
    signal: float = 1000.0
    corner_falloff: float = 0.3
    quiet_fraction: float = 0.15
    texture_cells: int = 64  # coarse grid cells across y and x of the sample texture (4 px each at 256 px)
    texture_contrast: float = 0.5
    read_noise: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (
            len(self.axes) != len(self.shape)
            or "".join(a for a in CANONICAL if a in self.axes) != self.axes
            or not self.axes.endswith("yx")
        ):
            raise ValueError(
                f"axes {self.axes!r} must be a subsequence of 'tczyx' ending in 'yx', one per shape entry "
                f"{self.shape}"
            )
        if np.dtype(self.dtype) not in SUPPORTED_DTYPES:
            raise ValueError(
                f"dtype {self.dtype} is not one of {', '.join(str(d) for d in SUPPORTED_DTYPES)}"
            )
        if self.zarr_format not in (2, 3):
            raise ValueError(f"zarr_format must be 2 or 3, got {self.zarr_format}")
        if self.shards is not None and (self.zarr_format != 3 or len(self.shards) != len(self.axes)):
            raise ValueError(
                f"shards {self.shards} need zarr format 3 and one entry per axis of {self.axes!r}"
            )

    def size(self, axis: str) -> int:
        return self.shape[self.axes.index(axis)] if axis in self.axes else 1

    def canonical_shape(self) -> tuple[int, ...]:
        return tuple(self.size(a) for a in CANONICAL)

    def canonical_chunks(self) -> tuple[int, ...]:
        if self.chunks is not None:
            given = dict(zip(self.axes, self.chunks))
            return tuple(min(given.get(a, 1), self.size(a)) for a in CANONICAL)
        default = {"t": 1, "c": 1, "z": 64, "y": 256, "x": 256}
        return tuple(min(default[a], self.size(a)) for a in CANONICAL)

    def levels_of_values(self) -> tuple[float, float, float]:
        """(background, signal, read noise) scaled to the dtype (uint8 tiles are 8× dimmer)."""
        k = 0.125 if np.dtype(self.dtype) == np.uint8 else 1.0
        return self.background * k, self.signal * k, self.read_noise * k


def planted_fields(config: SynthTileConfig) -> np.ndarray:
    """The known flatfield, (C, Y, X) float64, each channel mean 1."""
    return planted_flatfield((config.size("y"), config.size("x"), config.size("c")), config.corner_falloff)


def sample_envelope(n_planes: int, quiet_fraction: float) -> np.ndarray:
    """Per-plane sample amount: 0 in the quiet planes at both ends, 1 in the middle, smooth ramps."""
    z = (np.arange(n_planes) + 0.5) / n_planes
    q = quiet_fraction
    if n_planes < 3 or q <= 0:
        return np.ones(n_planes)
    ramp = np.clip(np.minimum(z - q, 1 - q - z) / max(0.5 * q, 1e-9), 0, 1)
    return ramp * ramp * (3 - 2 * ramp)  # smoothstep


def _texture(config: SynthTileConfig, t: int, c: int, z: int, ys: slice, xs: slice) -> np.ndarray:
    """One plane's sample texture over ``ys`` × ``xs`` (global pixel ranges), mean ≈ 1."""
    cells = config.texture_cells
    rng = np.random.default_rng([config.seed, 1, t, c, z])
    grid = 1 + config.texture_contrast * (2 * rng.random((cells + 2, cells + 2), dtype=np.float32) - 1)
    ny, nx = config.size("y"), config.size("x")
    gy = (np.arange(ys.start, ys.stop, dtype=np.float32) + 0.5) / ny * cells
    gx = (np.arange(xs.start, xs.stop, dtype=np.float32) + 0.5) / nx * cells
    iy, ix = gy.astype(np.int64), gx.astype(np.int64)
    wy, wx = (gy - iy)[:, None], (gx - ix)[None, :]
    g00, g01 = grid[iy][:, ix], grid[iy][:, ix + 1]
    g10, g11 = grid[iy + 1][:, ix], grid[iy + 1][:, ix + 1]
    return (g00 * (1 - wy) + g10 * wy) * (1 - wx) + (g01 * (1 - wy) + g11 * wy) * wx


def _block(
    flatfield: np.ndarray, config: SynthTileConfig, envelope: np.ndarray, block_info=None
) -> np.ndarray:
    """One (t, c, z, y, x) chunk of the tile, from its global location (``flatfield``: this chunk's piece)."""
    (t0, t1), (c0, c1), (z0, z1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    dtype = np.dtype(config.dtype)
    background, signal, read_noise = config.levels_of_values()
    out = np.empty((t1 - t0, c1 - c0, z1 - z0, y1 - y0, x1 - x0), dtype)
    rng = np.random.default_rng([config.seed, 2, t0, c0, z0, y0, x0])
    ys, xs = slice(y0, y1), slice(x0, x1)
    for t in range(t0, t1):
        for c in range(c0, c1):
            ff = flatfield[0, c - c0, 0]
            for z in range(z0, z1):
                mean = background + (signal * envelope[z]) * ff * (
                    _texture(config, t, c, z, ys, xs) if envelope[z] > 0 else 0
                )
                noisy = mean + rng.standard_normal(mean.shape, dtype=np.float32) * np.sqrt(
                    mean + read_noise**2
                )
                if dtype.kind in "ui":
                    info = np.iinfo(dtype)
                    noisy = np.clip(np.rint(noisy), info.min, info.max)
                out[t - t0, c - c0, z - z0] = noisy
    return out


def write_synthetic_tile(url: str, config: SynthTileConfig, compute=None) -> dict:
    """Write a synthetic tile to ``url`` (an OME-Zarr image) and its truth beside it; returns the truth.

    ``compute`` runs Dask collections (default ``dask.compute``; pass a client's for a cluster).
    """
    import dask
    import dask.array as da

    compute = compute or dask.compute
    url = storage.normalize(url)
    shape, chunks = config.canonical_shape(), config.canonical_chunks()
    shards = (
        tuple(dict(zip(config.axes, config.shards)).get(a, 1) for a in CANONICAL) if config.shards else None
    )
    blocks = shards or chunks  # one Dask block per shard: no two tasks write into the same one
    flatfield = planted_fields(config).astype(np.float32)
    envelope = sample_envelope(config.size("z"), config.quiet_fraction)
    grid = da.core.normalize_chunks(blocks, shape)
    pieces = chunked_constant(flatfield[None, :, None], grid)
    level0 = da.map_blocks(
        _block,
        da.broadcast_to(pieces, shape, chunks=grid),
        config,
        envelope,
        dtype=np.dtype(config.dtype),
        token="synth-tile",
    )
    scale = tuple(config.scale.get(a, 1.0) for a in CANONICAL)
    translation = tuple(config.translation.get(a, 0.0) for a in CANONICAL)
    plan = plan_pyramid(shape, scale, translation, config.levels)
    keep = tuple(slice(None) if a in config.axes else 0 for a in CANONICAL)
    own = [j for j, a in enumerate(CANONICAL) if a in config.axes]
    axes = [
        {
            "name": a,
            "type": {"t": "time", "c": "channel"}.get(a, "space"),
            **({"unit": "micrometer"} if a in "zyx" else {}),
        }
        for a in config.axes
    ]
    group = create_image_group(url, config.zarr_format, {})
    targets = [
        create_level_array(
            group,
            str(i),
            tuple(lv.shape[j] for j in own),
            tuple(chunks[j] for j in own),
            np.dtype(config.dtype),
            tuple(config.axes),
            config.shards,
        )
        for i, lv in enumerate(plan)
    ]
    write_blocks = [tuple(t.shards or t.chunks) for t in targets]
    arrays = reduced_levels(level0, plan, [_canonical_blocks(b, config.axes) for b in write_blocks])
    with graph_constants_allowed():  # the planted flatfield rides in the graph
        compute(da.store([a[keep] for a in arrays], targets, lock=False, compute=False))
    dims = [i for i, a in enumerate(CANONICAL) if a in config.axes]
    background, signal, _ = config.levels_of_values()
    top = float(np.iinfo(config.dtype).max) if np.dtype(config.dtype).kind == "u" else 65535.0
    omero = {
        "channels": [
            {
                "label": f"ch{c}",
                "color": COLORS[c % len(COLORS)],
                "active": True,
                "window": {
                    "min": 0.0,
                    "max": top,
                    "start": 0.0,
                    "end": min(top, float(background + 2 * signal)),
                },
            }
            for c in range(config.size("c"))
        ],
        "rdefs": {"model": "color" if config.size("c") > 1 else "greyscale"},
    }
    write_multiscales(
        group,
        axes,
        [
            (str(i), tuple(lv.scale[j] for j in dims), tuple(lv.translation[j] for j in dims))
            for i, lv in enumerate(plan)
        ],
        name=storage.basename(url),
        omero=omero,
        metadata={"method": "shadeflow synthetic tile (block mean pyramid)"},
    )
    truth = {
        "tile": url,
        "config": {**asdict(config), "shape": list(config.shape)},
        "background": background,
        "signal": signal,
        "quiet_planes": [int(z) for z in np.flatnonzero(envelope == 0)],
        "flatfield": flatfield_truth_url(url),
    }
    folder = storage.join(storage.parent(url), TRUTH_DIR)
    stem = _stem(url)
    buffer = _npy_bytes(planted_fields(config))
    storage.write_bytes(storage.join(folder, f"{stem}_flatfield.npy"), buffer)
    storage.write_text(storage.join(folder, f"{stem}.json"), json.dumps(truth, indent=2))
    return truth


def _canonical_blocks(blocks: tuple[int, ...], axes: str) -> tuple[int, ...]:
    given = dict(zip(axes, blocks))
    return tuple(given.get(a, 1) for a in CANONICAL)


def _stem(url: str) -> str:
    name = storage.basename(url)
    for suffix in (".ome.zarr", ".zarr"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def flatfield_truth_url(tile_url: str) -> str:
    """Where :func:`write_synthetic_tile` saves a tile's planted flatfield (``.npy``, (C, Y, X))."""
    return storage.join(
        storage.parent(storage.normalize(tile_url)), TRUTH_DIR, f"{_stem(tile_url)}_flatfield.npy"
    )


def read_truth(tile_url: str) -> dict:
    """The truth saved beside a synthetic tile (background, quiet planes, config)."""
    url = storage.join(storage.parent(storage.normalize(tile_url)), TRUTH_DIR, f"{_stem(tile_url)}.json")
    return json.loads(storage.read_text(url))


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    handle = io.BytesIO()
    np.save(handle, array)
    return handle.getvalue()


def synth_tile_command(
    out: str,
    name: str = "tile.ome.zarr",
    shape: tuple[int, ...] = (64, 256, 256),
    axes: str = "zyx",
    dtype: str = "uint16",
    chunks: tuple[int, ...] | None = None,
    zarr_format: int = 3,
    levels: int = 1,
    background: float = 100.0,
    seed: int = 0,
) -> dict:
    """What ``shadeflow synth tile`` does: write ``<out>/<name>`` and its truth (Dask's threaded
    scheduler, chunk by chunk); returns the truth. Bad options raise ``ValueError``."""
    config = SynthTileConfig(
        shape=tuple(shape),
        axes=axes,
        dtype=dtype,
        chunks=tuple(chunks) if chunks else None,
        zarr_format=zarr_format,
        levels=levels,
        background=background,
        seed=seed,
    )
    return write_synthetic_tile(storage.join(out, name), config)
