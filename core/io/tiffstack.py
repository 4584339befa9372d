"""TIFF and OME-TIFF stacks as tiles of the correct job, read lazily page by page.

A TIFF tile is a local ``.tif`` / ``.tiff`` / ``.ome.tif`` / ``.ome.tiff`` file holding one image
(one tifffile series) of uint8, uint16 or float32 grey-level pages. Its axes come from the file's
metadata as tifffile reads it (OME-XML, ImageJ or tifffile's own shaped description): ``T``, ``C``,
``Z``, then the page's ``Y``, ``X``, in any order the file stores them (ImageJ stores ``TZCYX``).
A file without axis metadata (a plain multi-page TIFF, axis ``I``, or one unnamed axis ``Q``) is a
z stack of one channel; more than one unnamed axis is refused rather than guessed. Physical voxel
sizes come from the OME-XML ``Pixels`` (``PhysicalSize{X,Y,Z}`` and units) when present, else 1.

The tile is presented as an :class:`~shadeflow.core.io.omezarr.OmeImage` with its axes in the
canonical t, c, z, y, x order (a transposed view of the file), one resolution level (the full one)
and Dask blocks of whole pages, so the correction graph, the background and the flatfield
estimates read it exactly as they read a zarr tile. Each Dask task opens the file itself (one open
file per worker thread, kept for the next task), so nothing unpicklable travels to the workers and
memory stays flat in the file size.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import storage
from .omezarr import CANONICAL, SUPPORTED_DTYPES, Level, OmeImage, TileError

TIFF_SUFFIXES = (".tif", ".tiff")
#: a Dask block holds whole pages, about this many bytes (at least one page)
BLOCK_BYTES = 4 * 2**20
#: tifffile's axis letters → canonical roles; I (image sequence) and Q (unnamed) mean "planes"
_ROLE_OF = {"T": "t", "C": "c", "Z": "z", "Y": "y", "X": "x"}
_PLANE_LETTERS = ("I", "Q")
_AXIS_TYPE = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def is_tiff(url: str) -> bool:
    """A tile named like a TIFF file (chosen by extension, as every other TIFF input of shadeflow)."""
    return storage.basename(url.rstrip("/")).lower().endswith(TIFF_SUFFIXES)


def tiff_stem(name: str) -> str:
    """``stack.ome.tiff`` → ``stack``: the name without its TIFF (and OME) extension."""
    lower = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class TiffImage(OmeImage):
    """A TIFF tile as an image with one level, its axes in canonical order (module description)."""

    series: int = 0
    file_axes: str = ""  # the series' axes as stored, e.g. "ZCYX"
    file_shape: tuple[int, ...] = ()
    kind: str = ""  # tifffile's series kind: "ome", "imagej", "shaped", "uniform", …
    channel_names: list[str] | None = None
    units: dict[str, str] = field(default_factory=dict)  # role → OME unit of the physical size

    def array(self, level: Level):
        """The level as a lazily read array-like (canonical axes), for :meth:`dask_array`."""
        return TiffPlanes(self.url, self.series, self.file_axes, self.file_shape, np.dtype(level.dtype))

    def dask_array(self, level: Level, chunks: tuple[int, ...] | None = None):
        import dask.array as da

        planes = self.array(level)
        return da.from_array(
            planes,
            chunks=chunks or level.chunks,
            name=f"tiff-{planes.token()}",
            asarray=False,
            fancy=False,
            meta=np.empty((0,) * len(level.shape), level.dtype),
        )

    def describe(self, level: Level) -> str:
        dims = "×".join(str(s) for s in level.shape)
        return f"{dims} {level.dtype} ({''.join(self.axis_names)}, {self.kind} TIFF stored {self.file_axes})"


class TiffPlanes:
    """The pages of one TIFF series as an array in canonical axis order, read on indexing.

    Picklable (a path and the layout); each thread keeps its own open file (:func:`_open_tiff`).
    """

    def __init__(self, path: str, series: int, file_axes: str, file_shape: tuple[int, ...], dtype):
        self.path, self.series, self.file_axes, self.file_shape = path, series, file_axes, tuple(file_shape)
        self.dtype = np.dtype(dtype)
        roles = [_role(a) for a in file_axes]
        order = [r for r in CANONICAL if r in roles]
        self.perm = [roles.index(r) for r in order]  # canonical axis i is file axis perm[i]
        self.shape = tuple(self.file_shape[p] for p in self.perm)
        self.ndim = len(self.shape)

    def token(self) -> str:
        from dask.base import tokenize

        stat = os.stat(self.path)
        return tokenize(self.path, stat.st_mtime_ns, stat.st_size, self.series, self.file_axes)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        ranges = [
            range(*k.indices(n)) if isinstance(k, slice) else range(k, k + 1) for k, n in zip(key, self.shape)
        ]
        file_ranges = [None] * self.ndim
        for i, p in enumerate(self.perm):
            file_ranges[p] = ranges[i]
        lead, (ys, xs) = file_ranges[:-2], file_ranges[-2:]
        pages = [
            int(np.ravel_multi_index(index, self.file_shape[:-2])) if lead else 0 for index in _product(lead)
        ]
        try:
            tif = _open_tiff(self.path)
            data = tif.asarray(series=self.series, key=pages) if pages else np.empty((0,), self.dtype)
        except Exception as exc:
            raise TileError(
                f"tile {self.path}: cannot read pages {_span(pages)} ({type(exc).__name__}: {exc})"
            ) from None
        data = np.asarray(data).reshape((len(pages),) + self.file_shape[-2:])
        data = data[:, ys.start : ys.stop : ys.step, xs.start : xs.stop : xs.step]
        data = data.reshape(tuple(len(r) for r in file_ranges))
        data = data.transpose(self.perm)
        # integer indices drop their axis, as numpy does
        return data[tuple(0 if not isinstance(k, slice) else slice(None) for k in key)]


def _product(ranges):
    import itertools

    return itertools.product(*ranges)


def _span(pages: list[int]) -> str:
    return f"{pages[0]}–{pages[-1]}" if len(pages) > 1 else str(pages[0]) if pages else "none"


_OPEN = threading.local()
_OPEN_PER_THREAD = 4


def _open_tiff(path: str):
    """An open ``TiffFile`` of ``path`` for this thread, reused while the file is unchanged."""
    import tifffile

    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size)
    files: OrderedDict = getattr(_OPEN, "files", None) or OrderedDict()
    _OPEN.files = files
    if key in files:
        files.move_to_end(key)
        return files[key]
    tif = tifffile.TiffFile(path)
    files[key] = tif
    while len(files) > _OPEN_PER_THREAD:
        files.popitem(last=False)[1].close()
    return tif


def _role(letter: str) -> str:
    return _ROLE_OF.get(letter, "z" if letter in _PLANE_LETTERS else "?")


def open_tiff_image(url: str) -> TiffImage:
    """Open and validate the TIFF tile at ``url`` (a local file; read-only; reads metadata only).

    Raises
    ------
    TileError
        A remote URL, a missing or unreadable file, more than one image in the file, RGB or other
        multi-sample pages, axes other than T, C, Z (or one unnamed plane axis), Y, X, or an
        unsupported dtype.
    """
    import tifffile

    url = storage.normalize(url)
    if storage.is_remote(url):
        raise TileError(
            f"tile {url}: TIFF tiles are read from local files only; copy it to a local disk or convert it "
            "to OME-Zarr"
        )
    if not os.path.isfile(url):
        raise TileError(
            f"tile {url}: {'is a folder, not a TIFF file' if os.path.isdir(url) else 'does not exist'}"
        )
    try:
        with _tifffile_messages() as messages, tifffile.TiffFile(url) as tif:
            series_list = list(tif.series)
            if not series_list:
                said = f" ({messages[0]})" if messages else ""
                raise TileError(f"tile {url}: not a readable TIFF, no image in it{said}")
            if len(series_list) > 1:
                shapes = ", ".join(f"{s.axes} {'×'.join(map(str, s.shape))}" for s in series_list[:4])
                more = ", …" if len(series_list) > 4 else ""
                raise TileError(
                    f"tile {url}: holds {len(series_list)} images ({shapes}{more}); "
                    "shadeflow corrects one image per TIFF file — split it"
                )
            series = series_list[0]
            axes, shape, dtype = series.axes, tuple(int(n) for n in series.shape), np.dtype(series.dtype)
            kind = series.kind
            ome = tifffile.xml2dict(tif.ome_metadata) if tif.is_ome and tif.ome_metadata else None
    except TileError:
        raise
    except Exception as exc:
        raise TileError(f"tile {url}: not a readable TIFF ({type(exc).__name__}: {exc})") from None
    roles = _check_axes(url, axes)
    if dtype not in SUPPORTED_DTYPES:
        raise TileError(
            f"tile {url}: unsupported dtype {dtype}; supported: {', '.join(str(d) for d in SUPPORTED_DTYPES)}"
        )
    if any(n == 0 for n in shape):
        raise TileError(
            f"tile {url}: zero-length axis in shape {shape} ({axes}); there is nothing to correct"
        )
    order = [r for r in CANONICAL if r in roles]
    canonical_shape = tuple(shape[roles.index(r)] for r in order)
    pixels = _ome_pixels(ome)
    sizes, units = _physical_sizes(pixels)
    scale = tuple(sizes.get(r, 1.0) for r in order)
    page_bytes = shape[-1] * shape[-2] * dtype.itemsize
    per_block = max(1, BLOCK_BYTES // page_bytes)
    chunks = tuple(
        min(n, per_block) if r == "z" else 1 if r in ("t", "c") else n for r, n in zip(order, canonical_shape)
    )
    level = Level(0, "0", canonical_shape, chunks, dtype, scale, (0.0,) * len(order))
    axis_dicts = [
        {"name": r, "type": _AXIS_TYPE[r], **({"unit": units[r]} if r in units else {})} for r in order
    ]
    names = _channel_names(pixels)
    n_c = canonical_shape[order.index("c")] if "c" in order else 1
    return TiffImage(
        url=url,
        name=storage.basename(url),
        zarr_format=0,
        ngff_version="",
        axes=axis_dicts,
        levels=[level],
        multiscale_name=tiff_stem(storage.basename(url)),
        series=0,
        file_axes=axes,
        file_shape=shape,
        kind=kind,
        channel_names=names if names and len(names) == n_c else None,
        units=units,
    )


@contextlib.contextmanager
def _tifffile_messages():
    """What tifffile logs while a file is opened (e.g. a broken page chain), kept for the error message
    instead of printed beside it."""
    import logging

    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage().split("> ", 1)[-1])

    logger = logging.getLogger("tifffile")
    handler, propagate = Keep(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _check_axes(url: str, axes: str) -> list[str]:
    expected = "T, C, Z (or one unnamed plane axis) and the pages' Y, X"
    if "S" in axes:
        raise TileError(
            f"tile {url}: pages with several samples each (axes {axes}, e.g. RGB); shadeflow corrects "
            "grey-level pages — store one channel per page"
        )
    if axes[-2:] != "YX":
        raise TileError(f"tile {url}: axes {axes}; expected {expected}")
    roles = [_role(a) for a in axes]
    unnamed = [a for a in axes if a in _PLANE_LETTERS]
    if "?" in roles or len(set(roles)) != len(roles) or len(unnamed) > 1:
        hint = (
            "; several unnamed axes cannot be told apart — write it as OME-TIFF (or with ImageJ "
            "metadata) naming its axes"
            if len(unnamed) > 1
            else ""
        )
        raise TileError(f"tile {url}: axes {axes}; expected {expected}{hint}")
    return roles


def _ome_pixels(ome: dict[str, Any] | None) -> dict[str, Any]:
    image = (ome or {}).get("OME", {}).get("Image")
    image = image[0] if isinstance(image, list) else image
    pixels = image.get("Pixels") if isinstance(image, dict) else None
    return pixels if isinstance(pixels, dict) else {}


def _physical_sizes(pixels: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    sizes, units = {}, {}
    for role in ("z", "y", "x"):
        value = pixels.get(f"PhysicalSize{role.upper()}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if value > 0 and np.isfinite(value):
            sizes[role] = value
            units[role] = _ngff_unit(str(pixels.get(f"PhysicalSize{role.upper()}Unit", "µm")))
    return sizes, units


def _ngff_unit(ome_unit: str) -> str:
    return {"µm": "micrometer", "um": "micrometer", "nm": "nanometer", "mm": "millimeter", "m": "meter"}.get(
        ome_unit, ome_unit
    )


def ome_unit(ngff_unit: str) -> str:
    """The OME-XML spelling of an NGFF unit (as written back into a corrected OME-TIFF)."""
    return {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "meter": "m"}.get(ngff_unit, ngff_unit)


def _channel_names(pixels: dict[str, Any]) -> list[str] | None:
    channels = pixels.get("Channel")
    channels = [channels] if isinstance(channels, dict) else channels
    if not isinstance(channels, list):
        return None
    names = [c.get("Name") if isinstance(c, dict) else None for c in channels]
    return [str(n) for n in names] if all(n is not None for n in names) else None
