"""What ``shadeflow estimate`` reads: TIFF, PNG, FITS or HDF5 files, a zarr array, or slides — as lazy
(N, C, H, W) stacks.

Rules a user can rely on (all inputs of one call form *one* stack; every frame must have one shape):

* **TIFF files and folders of TIFFs** (``.tif``/``.tiff``, a folder's files in name order): every page
  is a frame of one channel. With ``channels`` = C > 1 the pages of each file are interleaved by
  channel (page k is frame k // C of channel k % C, ImageJ's order for a C-channel stack), so each
  file's page count must be a multiple of C.
* **PNG, FITS and HDF5 files and folders of them** (:mod:`.frame_files`): a PNG is one frame, a FITS
  file's image extensions (and the planes of a 3-D one) are frames, an HDF5 file's frames are the
  dataset ``dataset`` names (found by itself when the file holds one). ``channels`` interleaves them as
  for TIFF pages.
* **A zarr array** (a path ending in ``.zarr``, or any zarr store, with ``component`` naming the array
  inside a group): (N, H, W) is one channel, (N, C, H, W) has C channels. A group holding exactly one
  array needs no component.
* **Slide folders** (slide contract: ``slide.json`` + ``fields.csv``): the frames are the slide's
  fields and the channels its layers, one estimate per layer; several slides are pooled (same shape).
  The slide's ``dark_current`` is the known darkfield unless a darkfield is estimated.

Nothing is read until a channel's stack is computed, and then chunk by chunk (one TIFF file, zarr
chunk or slide field per task).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from ..io import storage
from ..io.slide import SlideError, load_slide, read_field
from . import frame_files
from .grid import EstimateError

TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class ImageStack:
    """A lazy (N, C, H, W) stack and where it came from."""

    kind: str  # "tiff", "zarr", "slide"
    inputs: list[str]  # the URLs as given (normalised)
    files: list[str]  # what was read (TIFF files, the zarr array, slide folders)
    array: object  # dask array (N, C, H, W)
    channel_names: list[str]
    known_darkfield: float | None = None  # e.g. a slide's dark current
    notes: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return int(self.array.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.array.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.array.shape[2]), int(self.array.shape[3])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def channel(self, c: int):
        """Channel ``c`` as an (N, H, W) Dask array."""
        return self.array[:, c]

    def describe(self) -> str:
        return (
            f"{self.n_frames} frames × {self.n_channels} channel{'s' if self.n_channels != 1 else ''} of "
            f"{self.shape[0]}×{self.shape[1]} {self.dtype} ({self.kind})"
        )


def open_images(
    urls: list[str], channels: int = 1, component: str | None = None, dataset: str | None = None
) -> ImageStack:
    """The stack the inputs make (module description).

    Raises
    ------
    EstimateError
        Missing inputs, a mix of kinds, images of different shapes, page counts that do not divide
        into ``channels``, unreadable files.
    """
    if not urls:
        raise EstimateError("no images given")
    if channels < 1:
        raise EstimateError(f"channels must be at least 1, got {channels}")
    urls = [storage.normalize(u) for u in urls]
    kinds = [_kind(u) for u in urls]
    if len(set(kinds)) > 1:
        raise EstimateError(
            "give one kind of input per run (TIFF files or folders, one zarr array, or slide folders); got "
            + ", ".join(f"{u} ({k})" for u, k in zip(urls, kinds))
        )
    kind = kinds[0]
    if dataset and kind != "hdf5":
        raise EstimateError("--dataset names the frames inside an HDF5 file; the inputs are not HDF5")
    if kind in ("png", "fits", "hdf5"):
        if component:
            raise EstimateError(
                f"--component names an array inside a zarr store; the inputs are {kind.upper()}"
            )
        return _open_frame_files(urls, kind, channels, dataset)
    if kind == "zarr":
        if len(urls) > 1:
            raise EstimateError(f"give one zarr array per run, got {len(urls)}")
        return _open_zarr(urls[0], component)
    if component:
        raise EstimateError("--component names an array inside a zarr store; the inputs are not zarr")
    if kind == "slide":
        if channels != 1:
            raise EstimateError("--channels applies to TIFF pages; a slide's channels are its layers")
        return _open_slides(urls)
    return _open_tiffs(urls, channels)


def _kind(url: str) -> str:
    fs, path = storage.filesystem(url)
    if not fs.exists(path):
        raise EstimateError(f"input {url}: does not exist")
    name = storage.basename(url).lower()
    if name.endswith(TIFF_SUFFIXES) and fs.isfile(path):
        return "tiff"
    if frame_files.file_format(url) and fs.isfile(path):
        return frame_files.file_format(url)
    if fs.isdir(path):
        if fs.exists(path.rstrip("/") + "/slide.json"):
            return "slide"
        if name.endswith(".zarr") or any(
            fs.exists(path.rstrip("/") + "/" + m) for m in ("zarr.json", ".zarray", ".zgroup")
        ):
            return "zarr"
        listed = fs.ls(path, detail=False)
        if any(p.lower().endswith(TIFF_SUFFIXES) for p in listed):
            return "tiff-folder"
        formats = {frame_files.file_format(p) for p in listed} - {None}
        if len(formats) > 1:
            raise EstimateError(
                f"folder {url} holds {' and '.join(sorted(formats))} files; give one kind per run"
            )
        return formats.pop() if formats else "tiff-folder"
    raise EstimateError(
        f"input {url} is neither a TIFF file, a folder of TIFFs, a zarr store nor a slide folder"
    )


# ---------------------------------------------------------------------------------------------
# TIFF


def _tiff_files(urls: list[str]) -> list[str]:
    files = []
    for url in urls:
        fs, path = storage.filesystem(url)
        if fs.isdir(path):
            found = sorted(p for p in fs.ls(path, detail=False) if p.lower().endswith(TIFF_SUFFIXES))
            if not found:
                raise EstimateError(f"folder {url} holds no .tif/.tiff files")
            files += [storage.join(url, p.rstrip("/").rsplit("/", 1)[-1]) for p in found]
        else:
            files.append(url)
    return files


def _tiff_header(url: str) -> tuple[tuple[int, ...], np.dtype]:
    import tifffile

    fs, path = storage.filesystem(url)
    try:
        with fs.open(path, "rb") as handle, tifffile.TiffFile(handle) as tif:  # reads the headers only
            pages = len(tif.pages)
            page = tif.pages[0]
            # every page's header, so that a page of another shape is named here, not by a stack error mid-run
            for index, other in enumerate(tif.pages):
                if other.shape != page.shape or other.dtype != page.dtype:
                    raise EstimateError(
                        f"TIFF {url}: page {index} is {other.shape} {other.dtype} but page 0 is "
                        f"{page.shape} {page.dtype}; all pages must be frames of one shape"
                    )
            return (pages, *page.shape), np.dtype(page.dtype)
    except EstimateError:
        raise
    except Exception as exc:  # tifffile raises several types for damaged files
        raise EstimateError(f"TIFF {url} cannot be read ({type(exc).__name__}: {exc})") from None


def _read_tiff(url: str, pages: int) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(storage.read_bytes(url))) as tif:
            return np.stack([p.asarray() for p in tif.pages[:pages]])
    except Exception as exc:  # a file cut short or damaged after its headers were read: name it
        raise EstimateError(f"TIFF {url} cannot be read ({type(exc).__name__}: {exc})") from None


def _open_tiffs(urls: list[str], channels: int) -> ImageStack:
    import dask
    import dask.array as da

    files = _tiff_files(urls)
    parts = []
    first_shape, first_dtype, first_file = None, None, None
    for url in files:
        shape, dtype = _tiff_header(url)
        if len(shape) != 3:
            raise EstimateError(
                f"TIFF {url}: pages of shape {shape[1:]} are not 2-D images (RGB and volumes are not "
                "supported)"
            )
        pages, h, w = shape
        if first_shape is None:
            first_shape, first_dtype, first_file = (h, w), dtype, url
        elif (h, w) != first_shape:
            raise EstimateError(
                f"images of different shapes: {url} is {h}×{w} but {first_file} is "
                f"{first_shape[0]}×{first_shape[1]}"
            )
        elif dtype != first_dtype:
            raise EstimateError(
                f"images of different types: {url} is {dtype} but {first_file} is {first_dtype}"
            )
        if pages % channels:
            raise EstimateError(f"TIFF {url} has {pages} pages, not a multiple of --channels {channels}")
        stack = da.from_delayed(dask.delayed(_read_tiff, pure=True)(url, pages), (pages, h, w), dtype)
        parts.append(stack.reshape(pages // channels, channels, h, w))
    array = da.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    return ImageStack("tiff", urls, files, array, [f"channel {c}" for c in range(channels)])


# ---------------------------------------------------------------------------------------------
# PNG, FITS, HDF5


def _frame_files(urls: list[str], fmt: str) -> list[str]:
    files = []
    for url in urls:
        fs, path = storage.filesystem(url)
        if fs.isdir(path):
            found = sorted(p for p in fs.ls(path, detail=False) if frame_files.file_format(p) == fmt)
            files += [storage.join(url, p.rstrip("/").rsplit("/", 1)[-1]) for p in found]
        else:
            files.append(url)
    return files


def _open_frame_files(urls: list[str], fmt: str, channels: int, dataset: str | None) -> ImageStack:
    import dask
    import dask.array as da

    files = _frame_files(urls, fmt)
    parts, first = [], None
    for url in files:
        header = frame_files.read_header(url, fmt, dataset)
        if first is None:
            first = (url, header)
        elif header.shape != first[1].shape:
            raise EstimateError(
                f"images of different shapes: {url} is {header.shape[0]}×{header.shape[1]} but {first[0]} is "
                f"{first[1].shape[0]}×{first[1].shape[1]}"
            )
        elif header.dtype != first[1].dtype:
            raise EstimateError(
                f"images of different types: {url} is {header.dtype} but {first[0]} is {first[1].dtype}"
            )
        block = frame_files.HDF5_BLOCK if fmt == "hdf5" else header.frames
        for start in range(0, header.frames, block):
            stop = min(header.frames, start + block)
            read = dask.delayed(frame_files.read_frames, pure=True)(url, fmt, dataset, start, stop)
            parts.append(da.from_delayed(read, (stop - start, *header.shape), header.dtype))
    frames = da.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    n = frames.shape[0]
    if n % channels:
        raise EstimateError(f"{', '.join(urls)}: {n} frames, not a multiple of --channels {channels}")
    array = frames.reshape(n // channels, channels, *frames.shape[1:])
    return ImageStack(fmt, urls, files, array, [f"channel {c}" for c in range(channels)])


# ---------------------------------------------------------------------------------------------
# zarr


def _open_zarr(url: str, component: str | None) -> ImageStack:
    import dask.array as da
    import zarr

    try:
        node = zarr.open(url, mode="r", storage_options=storage.storage_options(url) or None)
        if component:
            node = node[component]
        elif not isinstance(node, zarr.Array):
            arrays = dict(node.arrays())
            if len(arrays) != 1:
                raise EstimateError(
                    f"zarr group {url} holds {len(arrays)} arrays ({', '.join(sorted(arrays)) or 'none'}); "
                    "name one with --component"
                )
            component, node = next(iter(arrays.items()))
    except EstimateError:
        raise
    except KeyError:
        raise EstimateError(f"zarr {url} has no array {component!r}") from None
    except Exception as exc:
        raise EstimateError(f"zarr {url} cannot be opened ({type(exc).__name__}: {exc})") from None
    if not isinstance(node, zarr.Array):
        raise EstimateError(
            f"zarr {url}{'/' + component if component else ''} is a group; name an array with --component"
        )
    array = da.from_zarr(node)
    where = url + (f" (array {component})" if component else "")
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim != 4:
        raise EstimateError(f"zarr {where}: shape {array.shape} is neither (N, H, W) nor (N, C, H, W)")
    return ImageStack("zarr", [url], [where], array, [f"channel {c}" for c in range(array.shape[1])])


# ---------------------------------------------------------------------------------------------
# slides


def _read_slide_field(slide, field_) -> np.ndarray:

    return read_field(slide, field_)


def _open_slides(urls: list[str]) -> ImageStack:
    import dask
    import dask.array as da

    parts, names, darks = [], None, []
    first = None
    for url in urls:
        try:
            slide = load_slide(url)
        except SlideError as exc:
            raise EstimateError(str(exc)) from None
        h, w, n_layers = slide.shape
        if first is None:
            first = slide
            names = [f"layer {i + 1}" for i in range(n_layers)]
        elif slide.shape != first.shape:
            raise EstimateError(
                f"images of different shapes: slide {slide.slide_id} is {h}×{w}×{n_layers} but "
                f"{first.slide_id} is {'×'.join(map(str, first.shape))}"
            )
        darks.append(slide.dark_current)
        for field_ in slide.fields:
            parts.append(
                da.from_delayed(
                    dask.delayed(_read_slide_field, pure=True)(slide, field_),
                    (n_layers, h, w),
                    np.dtype(slide.dtype),
                )
            )
    array = da.stack(parts)
    notes = []
    dark = float(np.median(darks))
    if len(set(darks)) > 1:
        notes.append(
            f"slides give different dark currents {sorted(set(darks))}; the median {dark:g} is subtracted"
        )
    return ImageStack("slide", urls, urls, array, names, dark, notes)
