"""Where a tile's flatfield comes from: a model version, a file, or the tile itself.

Every source ends as one float32 (Y, X) field per channel of the tile, applied to every z plane and
time point. Rules a user can rely on:

* **Model** (``--model V --store URL``): channel c uses layer ``--layer L`` (1-based, AstroPath's
  numbering) or the layer ``--channel-map`` gives it (:func:`parse_channel_map`); with neither, a
  one-layer model serves every channel and a model with exactly one layer per channel maps
  channel c → layer c+1. Model layers are used as stored (the model build normalised them).
* **File** (``--flatfield URL``): a TIFF, ``.npy`` or zarr array holding one (Y, X) field for every
  channel or a (C, Y, X) stack with one per channel. Each field is divided by its mean, so the
  correction keeps the tile's average brightness whatever units the file is in.
* **Estimate** (``--method estimate``): :func:`estimate_flatfield`.

A field of another size is resampled with a cubic spline (``skimage.transform.resize``, order 3,
anti-aliased when shrinking, pixel centres aligned) and rescaled to its original mean; the
provenance says "resampled from H×W". Fields whose aspect ratio differs from the tile's by more
than :data:`ASPECT_TOLERANCE` cannot be mapped (that is another camera or binning, not a resize).
Zero, negative or non-finite pixels are an error unless repaired (:func:`repair_flatfield`).
"""

from __future__ import annotations

import functools
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError
from ..estimate.estimator import estimate_shading
from ..estimate.grid import frames_needed
from ..io import astropath as astropath_io
from ..io import storage
from ..io.omezarr import TileError, to_canonical
from ..io.output_folders import read_manifest
from ..model.models_csv import ModelError
from ..model.store import read_model, version_bin, version_exists, version_folder
from ..smoothing import gaussian_smooth

ASPECT_TOLERANCE = 0.02
#: working size (pixels across) of the estimate
ESTIMATE_SIZE = 256
#: σ of the estimate's smoothing as a fraction of the field's size (AstroPath: 100 px on 1344 px)
ESTIMATE_SIGMA_FRACTION = 0.075
ESTIMATE_MAX_PLANES = 48


class FlatfieldError(InputError):
    """A flatfield that cannot be read, mapped onto the tile, or used. The message says which and why."""


@dataclass
class Flatfield:
    """Per-channel flatfields for one tile and where they came from."""

    fields: np.ndarray  # (C, Y, X) float32
    kind: str  # "model", "file", "estimate"
    summary: str  # one line for tables and logs
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# channel → model layer


_MAP_ENTRY = re.compile(r"^\s*(\d+)\s*=\s*([^,=\s][^,=]*?)\s*$")


def parse_channel_map(text: str) -> dict[int, str]:
    """``"0=5,1=12"`` or ``"0=dapi,1=fitc"`` → ``{0: "5", 1: "dapi"}``.

    Keys are the tile's channel indices (0-based, the OME-Zarr ``c`` axis); values are model layer
    numbers (1-based) or layer-group names, which stand for the group's middle layer.
    """
    mapping: dict[int, str] = {}
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        match = _MAP_ENTRY.match(entry)
        if not match:
            raise FlatfieldError(
                f"--channel-map entry {entry.strip()!r} is not CHANNEL=LAYER (e.g. 0=5 or 0=dapi)"
            )
        channel = int(match.group(1))
        if channel in mapping:
            raise FlatfieldError(f"--channel-map maps channel {channel} twice")
        mapping[channel] = match.group(2)
    if not mapping:
        raise FlatfieldError(
            "--channel-map is empty; expected CHANNEL=LAYER,… (e.g. 0=5,1=12 or 0=dapi,1=fitc)"
        )
    return mapping


def _layer_of(value: str, n_layers: int, layer_groups: dict[str, list[int]], where: str) -> tuple[int, str]:
    if value.isdigit():
        layer = int(value)
        if not 1 <= layer <= n_layers:
            raise FlatfieldError(f"{where}: layer {layer} does not exist (the model has layers 1–{n_layers})")
        return layer, f"layer {layer}"
    groups = {name.lower(): (name, span) for name, span in (layer_groups or {}).items()}
    if value.lower() not in groups:
        raise FlatfieldError(
            f"{where}: {value!r} is neither a layer number nor a layer group of the model (groups: "
            f"{', '.join(layer_groups or {}) or 'none'})"
        )
    name, (first, last) = groups[value.lower()]
    layer = (int(first) + int(last)) // 2
    return layer, f"layer {layer} (middle of group {name}, layers {first}–{last})"


def model_layers(
    n_channels: int,
    n_layers: int,
    layer_groups: dict[str, list[int]],
    layer: int | None,
    channel_map: str | None,
    where: str,
) -> list[tuple[int, str]]:
    """The 1-based model layer for each channel, with how it was chosen (rules in the module description)."""
    if layer is not None and channel_map:
        raise FlatfieldError(f"{where}: give --layer or --channel-map, not both")
    if layer is not None:
        chosen = _layer_of(str(layer), n_layers, layer_groups, where)
        return [(chosen[0], f"{chosen[1]} (--layer)")] * n_channels
    if channel_map:
        mapping = parse_channel_map(channel_map)
        extra = sorted(c for c in mapping if c >= n_channels)
        if extra:
            raise FlatfieldError(
                f"{where}: --channel-map names channel(s) {extra} but the tile has {n_channels} "
                f"channel{'s' if n_channels != 1 else ''} (0–{n_channels - 1})"
            )
        missing = [c for c in range(n_channels) if c not in mapping]
        if missing:
            raise FlatfieldError(
                f"{where}: --channel-map does not map channel(s) {missing}; every channel of the tile needs "
                "a layer"
            )
        return [
            _layer_of(mapping[c], n_layers, layer_groups, f"{where} channel {c}") for c in range(n_channels)
        ]
    if n_layers == 1:
        return [(1, "layer 1 (the model's only layer)")] * n_channels
    if n_layers == n_channels:
        return [
            (c + 1, f"layer {c + 1} (channel {c} → layer {c + 1}, one layer per channel)")
            for c in range(n_channels)
        ]
    raise FlatfieldError(
        f"{where}: cannot map the model's {n_layers} layers onto the tile's {n_channels} "
        f"channel{'s' if n_channels != 1 else ''}; "
        "give --layer N or --channel-map 0=N,1=… (layer numbers or group names)"
    )


# ---------------------------------------------------------------------------------------------
# fields: validity, repair, resampling


def invalid_pixels(field_: np.ndarray) -> np.ndarray:
    """Pixels a flatfield cannot divide by: zero, negative or not finite."""
    return ~np.isfinite(field_) | (field_ <= 0)


def repair_flatfield(field_: np.ndarray, bad: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Replace ``bad`` pixels by their neighbourhood: a Gaussian-weighted mean of the valid pixels
    around them (normalised convolution, σ = ``sigma`` px), and the nearest valid pixel's value
    where no valid pixel is within reach."""
    from scipy import ndimage as ndi

    good = ~bad
    values = np.where(good, field_, 0).astype(np.float64)
    weight = ndi.gaussian_filter(good.astype(np.float64), sigma, mode="nearest")
    smooth = ndi.gaussian_filter(values, sigma, mode="nearest")
    out = field_.astype(np.float64).copy()
    reach = bad & (weight > 1e-3)
    out[reach] = smooth[reach] / weight[reach]
    rest = bad & ~reach
    if rest.any():
        _, (iy, ix) = ndi.distance_transform_edt(bad, return_indices=True)
        out[rest] = field_[iy[rest], ix[rest]]
    return out


def checked(fields: np.ndarray, repair: bool, where: str) -> tuple[np.ndarray, list[int]]:
    """``fields`` (K, H, W) with invalid pixels refused or repaired; also the repaired count per field."""
    counts = []
    out = []
    for k, f in enumerate(fields):
        bad = invalid_pixels(f)
        n_bad = int(bad.sum())
        if n_bad and not repair:
            y, x = np.argwhere(bad)[0]
            raise FlatfieldError(
                f"{where}{f' field {k}' if len(fields) > 1 else ''}: {n_bad} "
                f"pixel{'s' if n_bad != 1 else ''} zero, negative or not finite "
                f"(first at y={y}, x={x}); rerun with --repair-flatfield to replace them by their "
                "neighbourhood"
            )
        if n_bad == f.size:
            raise FlatfieldError(
                f"{where}{f' field {k}' if len(fields) > 1 else ''}: every pixel is zero, negative or not "
                "finite; nothing to repair from"
            )
        out.append(repair_flatfield(f, bad) if n_bad else f.astype(np.float64))
        counts.append(n_bad)
    return np.stack(out), counts


def resample_field(field_: np.ndarray, shape: tuple[int, int], where: str) -> np.ndarray:
    """``field_`` resampled to ``shape`` (cubic spline, pixel centres aligned, anti-aliased when
    shrinking) and rescaled to its original mean.

    Raises
    ------
    FlatfieldError
        The aspect ratios differ by more than :data:`ASPECT_TOLERANCE`.
    """
    from skimage.transform import resize

    h, w = field_.shape
    if (h, w) == tuple(shape):
        return field_
    mismatch = abs((h / w) / (shape[0] / shape[1]) - 1)
    if mismatch > ASPECT_TOLERANCE:
        raise FlatfieldError(
            f"{where}: a {h}×{w} field cannot be mapped onto a {shape[0]}×{shape[1]} (y×x) tile — the "
            "aspect ratios differ by "
            f"{mismatch:.1%} (at most {ASPECT_TOLERANCE:.0%} is resampled)"
        )
    shrinking = h > shape[0] or w > shape[1]
    out = resize(
        field_.astype(np.float64), shape, order=3, mode="edge", anti_aliasing=shrinking, preserve_range=True
    )
    return out * (field_.mean() / out.mean())


# ---------------------------------------------------------------------------------------------
# sources


def read_model_flatfield(store: str, version: str) -> tuple[np.ndarray, dict[str, Any]]:
    """A model version's flatfield (L, H, W) and manifest, read once per process and version.

    Every tile of a run needs the same model, and a Vectra model is 378 MB of float64: it is read
    once (the flatfield only, not its uncertainty) and kept while the version's manifest is
    unchanged. An unknown version raises the model store's error, which lists the versions present.
    """

    if not version_exists(store, version):
        read_model(store, version)  # raises ModelError naming the versions present
    manifest = read_manifest(version_folder(store, version))
    return _cached_model_flatfield(store, version, str(manifest.get("created"))), manifest


@functools.lru_cache(maxsize=2)
def _cached_model_flatfield(store: str, version: str, created: str) -> np.ndarray:

    shape = tuple(read_manifest(version_folder(store, version))["shape"])
    try:
        stack = astropath_io.read_bin(version_bin(store, version), shape, "float64")
    except (astropath_io.BinFormatError, FileNotFoundError) as exc:
        raise ModelError(f"model version {version!r}: {exc}") from None
    stack.setflags(write=False)  # shared between tiles
    return stack


def model_flatfield(
    store: str,
    version: str,
    shape: tuple[int, int],
    n_channels: int,
    layer: int | None,
    channel_map: str | None,
    repair: bool,
    tile: str,
) -> Flatfield:
    """Channel fields from a model version in ``store`` (rules in the module description)."""

    try:
        stack, manifest = read_model_flatfield(storage.normalize(store), version)
    except ModelError as exc:
        raise ModelError(f"tile {tile}: {exc}") from None
    where = f"tile {tile}: model {version}"
    layers = model_layers(
        n_channels, stack.shape[0], manifest.get("layer_groups") or {}, layer, channel_map, where
    )
    fields, counts = checked(np.stack([stack[n - 1] for n, _ in layers]), repair, where)
    notes = []
    resampled = tuple(stack.shape[1:]) != tuple(shape)
    if resampled:
        fields = np.stack([resample_field(f, shape, where) for f in fields])
        notes.append(
            f"model {version} is {stack.shape[1]}×{stack.shape[2]}, the tile {shape[0]}×{shape[1]}: "
            f"flatfield resampled from {stack.shape[1]}×{stack.shape[2]} (cubic spline, mean kept)"
        )
    notes += [
        f"{where} channel {c}: repaired {n} flatfield pixel{'s' if n != 1 else ''}"
        for c, n in enumerate(counts)
        if n
    ]
    details = {
        "kind": "model",
        "store": storage.normalize(store),
        "version": version,
        "model_created": manifest.get("created"),
        "model_shape": list(stack.shape),
        "layers": [{"channel": c, "layer": n, "how": how} for c, (n, how) in enumerate(layers)],
        "resampled_from": [int(stack.shape[1]), int(stack.shape[2])] if resampled else None,
        "repaired_pixels": counts,
    }
    layer_text = ",".join(str(n) for n, _ in layers)
    summary = f"model {version} layer{'s' if len(set(n for n, _ in layers)) > 1 else ''} {layer_text}" + (
        f" (resampled from {stack.shape[1]}×{stack.shape[2]})" if resampled else ""
    )
    return Flatfield(fields.astype(np.float32), "model", summary, details, notes)


def read_field_file(url: str, what: str = "flatfield file") -> np.ndarray:
    """A flatfield (or darkfield) file as an array: TIFF (``.tif``/``.tiff``), NumPy ``.npy``, or
    zarr (an array, or a group holding an OME-Zarr image, a ``flatfield`` array or exactly one array)."""
    name = storage.basename(url).lower()
    try:
        found = storage.exists(url)
    except Exception as exc:  # the location's fault (endpoint, credentials, bucket), said as such
        problem = storage.storage_problem(exc)
        if problem is None:
            raise
        raise FlatfieldError(f"{what} {url}: {problem}") from None
    if not found:
        raise FlatfieldError(f"{what} {url}: does not exist")
    try:
        if name.endswith(".npy"):
            return np.load(io.BytesIO(storage.read_bytes(url)), allow_pickle=False)
        if name.endswith((".tif", ".tiff")):
            return _read_tiff_field(url, what)
        return _read_zarr_field(url)
    except FlatfieldError:
        raise
    except Exception as exc:
        problem = storage.storage_problem(exc)
        if problem:
            raise FlatfieldError(f"{what} {url}: {problem}") from None
        raise FlatfieldError(
            f"{what} {url} cannot be read as TIFF, .npy or zarr ({type(exc).__name__}: {exc})"
        ) from None


def _read_tiff_field(url: str, what: str) -> np.ndarray:
    """Every page of a TIFF: one field, or a stack of same-shaped pages (one per channel).

    ``tifffile.imread`` reads the first series only, so the pages of a file written page by page
    (or a page of another size) would be dropped without a word; pages of different shapes cannot
    be one field per channel, so they are refused, naming the file."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(storage.read_bytes(url))) as tif:
        shapes = [tuple(page.shape) for page in tif.pages]
        if len(set(shapes)) > 1:
            listed = ", ".join("×".join(str(n) for n in shape) for shape in shapes[:4]) + (
                ", …" if len(shapes) > 4 else ""
            )
            raise FlatfieldError(
                f"{what} {url}: its {len(shapes)} pages have different shapes ({listed}); give one field, "
                "or one same-sized page per channel"
            )
        series = tif.series[0] if tif.series else None
        if series is not None and len(tif.series) == 1 and len(series.pages) == len(tif.pages):
            return series.asarray()  # one series covers every page: keep its shape (e.g. C, Y, X)
        return tif.asarray(key=range(len(tif.pages)))  # same-shaped pages written one by one


def _read_zarr_field(url: str) -> np.ndarray:
    import zarr

    node = zarr.open(url, mode="r", storage_options=storage.storage_options(url) or None)
    if isinstance(node, zarr.Array):
        return node[...]
    attrs = node.attrs.asdict()
    multiscales = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
    if multiscales:
        return node[multiscales[0]["datasets"][0]["path"]][...]
    arrays = dict(node.arrays())
    if "flatfield" in arrays:
        return arrays["flatfield"][...]
    if len(arrays) == 1:
        return next(iter(arrays.values()))[...]
    raise FlatfieldError(
        f"{url}: a zarr group with {len(arrays)} arrays and no 'flatfield' array or OME-Zarr image; point "
        "at the array"
    )


def file_flatfield(url: str, shape: tuple[int, int], n_channels: int, repair: bool, tile: str) -> Flatfield:
    """Channel fields from a file (rules in the module description)."""
    url = storage.normalize(url)
    where = f"tile {tile}: flatfield {url}"
    try:
        data = np.asarray(read_field_file(url))
    except FlatfieldError as exc:
        raise FlatfieldError(f"tile {tile}: {exc}") from None
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[-1] < 2 or data.shape[-2] < 2:
        raise FlatfieldError(f"{where}: shape {data.shape} is neither one (Y, X) field nor a (C, Y, X) stack")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise FlatfieldError(f"{where}: dtype {data.dtype} is not a real number type")
    if data.shape[0] not in (1, n_channels):
        raise FlatfieldError(
            f"{where}: holds {data.shape[0]} fields but the tile has {n_channels} "
            f"channel{'s' if n_channels != 1 else ''}; give one field or one per channel"
        )
    fields, counts = checked(data.astype(np.float64), repair, where)
    notes = [f"{where}: repaired {n} pixel{'s' if n != 1 else ''}" for n in counts if n]
    resampled = tuple(fields.shape[1:]) != tuple(shape)
    if resampled:
        notes.append(
            f"{where}: resampled from {fields.shape[1]}×{fields.shape[2]} to {shape[0]}×{shape[1]} (cubic "
            "spline)"
        )
        fields = np.stack([resample_field(f, shape, where) for f in fields])
    means = fields.reshape(len(fields), -1).mean(axis=1)
    fields = fields / means[:, None, None]
    if fields.shape[0] == 1 and n_channels > 1:
        fields = np.repeat(fields, n_channels, axis=0)
    details = {
        "kind": "file",
        "url": url,
        "file_shape": list(data.shape),
        "normalised_by_mean": [float(m) for m in means],
        "resampled_from": [int(data.shape[1]), int(data.shape[2])] if resampled else None,
        "repaired_pixels": counts,
    }
    summary = f"file {storage.basename(url)}" + (
        f" (resampled from {data.shape[1]}×{data.shape[2]})" if resampled else ""
    )
    return Flatfield(fields.astype(np.float32), "file", summary, details, notes)


def darkfield_fields(
    url: str, shape: tuple[int, int], n_channels: int, tile: str
) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    """Darkfield images (counts, subtracted as they are) from a file, one per channel."""
    url = storage.normalize(url)
    where = f"tile {tile}: darkfield {url}"
    try:
        data = np.asarray(read_field_file(url, "darkfield file"), dtype=np.float64)
    except FlatfieldError as exc:
        raise FlatfieldError(f"tile {tile}: {exc}") from None
    while data.ndim > 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[0] not in (1, n_channels):
        raise FlatfieldError(
            f"{where}: shape {data.shape} is neither one (Y, X) image nor one per channel of the tile's "
            f"{n_channels}"
        )
    if not np.isfinite(data).all():
        raise FlatfieldError(f"{where}: holds non-finite values")
    notes = []
    resampled = tuple(data.shape[1:]) != tuple(shape)
    if resampled:
        notes.append(
            f"{where}: resampled from {data.shape[1]}×{data.shape[2]} to {shape[0]}×{shape[1]} (cubic spline)"
        )
        data = np.stack([resample_field(d, shape, where) for d in data])
    if data.shape[0] == 1 and n_channels > 1:
        data = np.repeat(data, n_channels, axis=0)
    details = {
        "kind": "darkfield",
        "url": url,
        "resampled_from": list(data.shape[1:]) if resampled else None,
        "mean": [float(d.mean()) for d in data],
    }
    return data.astype(np.float32), details, notes


def estimate_flatfield(image, level, background: np.ndarray, compute, repair: bool = False) -> Flatfield:
    """A flatfield from the tile's own planes.

    Per channel: up to :data:`ESTIMATE_MAX_PLANES` planes spread evenly over z (and t), block-mean
    reduced to about :data:`ESTIMATE_SIZE` px across, background subtracted; the planes carrying
    sample (mean ≥ half the 90th percentile of plane means and more than 5 standard errors above the
    background) go to :func:`shadeflow.core.estimate.estimator.estimate_shading` (the robust floor
    regression of
    ``shadeflow estimate``, darkfield = the subtracted background). With fewer than 8 such planes,
    they are each divided by their mean, the per-pixel median taken and smoothed with a Gaussian of
    σ = 7.5 % of the field (edges replicated). The field is resampled to the tile's size and
    normalised to mean 1. Only the chunks holding those planes are read.

    Raises
    ------
    FlatfieldError
        A channel with no planes brighter than the background.
    """
    import dask.array as da

    source5 = to_canonical(image.dask_array(level), image.roles)
    n_t, n_c, n_z, n_y, n_x = source5.shape
    n = n_t * n_z
    picks = sorted(set(np.linspace(0, n - 1, min(n, ESTIMATE_MAX_PLANES)).round().astype(int).tolist()))
    factor = max(1, max(n_y, n_x) // ESTIMATE_SIZE)
    by_t: dict[int, list[int]] = {}
    for p in picks:
        by_t.setdefault(p // n_z, []).append(p % n_z)
    parts = [source5[t][:, zs] for t, zs in sorted(by_t.items())]  # (C, k, Y, X)
    planes = da.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    reduced = (
        da.coarsen(_mean32, planes, {2: factor, 3: factor}, trim_excess=True)
        if factor > 1
        else planes.astype(np.float32)
    )
    (low,) = compute(reduced)
    low = np.asarray(low, np.float32)
    finite = np.isfinite(low).reshape(n_c, len(picks), -1).all(axis=2)  # per channel and plane
    if not finite.all():  # else the planes' means are NaN and no plane looks brighter than the background
        c, k = (int(v) for v in np.argwhere(~finite)[0])
        t, z = divmod(picks[k], n_z)
        plane = (f"t={t} " if n_t > 1 else "") + f"z={z}"
        raise TileError(
            f"tile {image.url} channel {c}: non-finite values (NaN or ±inf) in plane {plane} at level "
            f"{level.path}; "
            "non-finite voxels cannot be corrected — fix or replace them in the input"
        )
    h, w = low.shape[-2:]
    bg = np.asarray(background, np.float32)
    if bg.shape[-2:] != (1, 1):
        bg = bg[:, : h * factor, : w * factor].reshape(n_c, h, factor, w, factor).mean(axis=(2, 4))
    low = low - bg[:, None]
    sigma = ESTIMATE_SIGMA_FRACTION * max(h, w)
    fields, notes, used = [], [], []
    for c in range(n_c):
        flat_planes = low[c].reshape(low.shape[1], -1)
        means = flat_planes.mean(axis=1)
        # a plane carries sample if its mean is well above the background: more than 5 standard
        # errors of a plane mean (pure background planes scatter around 0 by about one)
        errors = flat_planes.std(axis=1) / math.sqrt(flat_planes.shape[1])
        bright = (means >= 0.5 * np.percentile(means, 90)) & (means > 5 * errors)
        if not np.any(bright):
            raise FlatfieldError(
                f"tile {image.url} channel {c}: no plane is brighter than the background; cannot estimate a "
                "flatfield (give --model or --flatfield)"
            )
        keep = bright
        if keep.sum() >= frames_needed(False):  # the floor regression of `shadeflow estimate` (issue 6)
            smooth = estimate_shading(low[c][keep], where=f"tile {image.url} channel {c}").flatfield.astype(
                np.float64
            )
        else:  # too few planes for it: the simple median of mean-normalised planes
            estimate = np.median(low[c][keep] / means[keep, None, None], axis=0)
            smooth = gaussian_smooth(estimate[None], sigma)[0]
            smooth = np.clip(smooth, 1e-3 * smooth.mean(), None)
        full = resample_field(smooth, (n_y, n_x), f"tile {image.url}") if (h, w) != (n_y, n_x) else smooth
        fields.append(full / full.mean())
        used.append(int(keep.sum()))
    if min(used) < 8:
        notes.append(
            f"tile {image.url}: flatfield estimated from only {min(used)} plane(s) with sample; the "
            "sample's own structure may show in it"
        )
    fields_arr, counts = checked(np.stack(fields), repair, f"tile {image.url}: estimated flatfield")
    details = {
        "kind": "estimate",
        "method": "shadeflow floor regression of the planes with sample at reduced resolution "
        "(core.estimate); with fewer than 8 such planes, their median, Gaussian-smoothed",
        "planes_sampled": len(picks),
        "planes_used": used,
        "reduction": factor,
        "working_shape": [h, w],
        "sigma_px": round(sigma * factor, 2),
    }
    return Flatfield(
        fields_arr.astype(np.float32), "estimate", f"estimate ({len(picks)} planes)", details, notes
    )


def _mean32(block: np.ndarray, axis) -> np.ndarray:
    return block.mean(axis=axis, dtype=np.float32)
