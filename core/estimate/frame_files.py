"""Frames from PNG, FITS and HDF5 files: the headers (how many frames, their shape and type) and the pixels.

- **PNG** (Pillow): one grayscale frame per file, 8 or 16 bit (a colour PNG is refused: the channels
  of a colour camera are not one illumination).
- **FITS** (astropy): every image HDU of a file is a frame, in order — the mosaic of a wide-field
  camera is one file of many extensions — and the planes of a 3-D HDU are frames too. Pixels are read
  with the file's BSCALE/BZERO applied, as float32 (what the physical values are); an HDU without data
  (a primary header) is skipped.
- **HDF5** (h5py): the dataset ``dataset`` names (e.g. ``/entry/data/data`` of a detector), (N, H, W)
  or one (H, W) frame; frames are read in blocks, never the whole file.

Each reader is given a URL (local or ``s3://``) and opens it through fsspec.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io import storage
from .grid import EstimateError

FORMATS = {
    ".png": "png",
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".nxs": "hdf5",
}
#: frames of an HDF5 dataset read by one task
HDF5_BLOCK = 64


@dataclass(frozen=True)
class FrameHeader:
    """What a file holds, from its header: ``frames`` frames of ``shape`` in ``dtype``."""

    frames: int
    shape: tuple[int, int]
    dtype: np.dtype


def file_format(url: str) -> str | None:
    """``"png"``, ``"fits"`` or ``"hdf5"`` by the file's suffix, else None."""
    name = storage.basename(url).lower()
    return next((fmt for suffix, fmt in FORMATS.items() if name.endswith(suffix)), None)


def read_header(url: str, fmt: str, dataset: str | None = None) -> FrameHeader:
    """The header of one file (nothing but headers is read)."""
    reader = {"png": _png_header, "fits": _fits_header, "hdf5": _hdf5_header}[fmt]
    try:
        return reader(url, dataset)
    except EstimateError:
        raise
    except Exception as exc:  # each library raises several types for damaged files
        raise EstimateError(f"{fmt.upper()} {url} cannot be read ({type(exc).__name__}: {exc})") from None


def read_frames(url: str, fmt: str, dataset: str | None, start: int, stop: int) -> np.ndarray:
    """Frames ``start:stop`` of one file as an (n, H, W) array."""
    reader = {"png": _png_frames, "fits": _fits_frames, "hdf5": _hdf5_frames}[fmt]
    try:
        return reader(url, dataset, start, stop)
    except EstimateError:
        raise
    except Exception as exc:  # a file cut short or damaged after its header was read: name it
        raise EstimateError(f"{fmt.upper()} {url} cannot be read ({type(exc).__name__}: {exc})") from None


def _open(url: str):
    fs, path = storage.filesystem(url)
    return fs.open(path, "rb")


# ---------------------------------------------------------------------------------------------
# PNG

_PNG_MODES = {"L": np.uint8, "I;16": np.uint16, "I;16B": np.uint16, "I": np.int32, "F": np.float32}


def _png_header(url: str, dataset: str | None) -> FrameHeader:
    from PIL import Image

    with _open(url) as handle, Image.open(handle) as image:
        if image.mode not in _PNG_MODES:
            raise EstimateError(
                f"PNG {url}: a {image.mode} image; give grayscale frames (a colour camera's channels "
                "are not one illumination)"
            )
        return FrameHeader(1, (image.height, image.width), np.dtype(_PNG_MODES[image.mode]))


def _png_frames(url: str, dataset: str | None, start: int, stop: int) -> np.ndarray:
    from PIL import Image

    with _open(url) as handle, Image.open(handle) as image:
        return np.asarray(image, dtype=_PNG_MODES[image.mode])[None]


# ---------------------------------------------------------------------------------------------
# FITS


def _image_hdus(hdul) -> list:
    return [hdu for hdu in hdul if getattr(hdu, "is_image", False) and hdu.header.get("NAXIS", 0) >= 2]


def _fits_header(url: str, dataset: str | None) -> FrameHeader:
    from astropy.io import fits

    with _open(url) as handle, fits.open(handle, lazy_load_hdus=True, memmap=False) as hdul:
        hdus = _image_hdus(hdul)
        if not hdus:
            raise EstimateError(f"FITS {url}: no image HDU with 2-D data")
        frames, shape = 0, None
        for index, hdu in enumerate(hdus):
            dims = tuple(int(v) for v in hdu.shape)  # from the header: (planes, H, W) or (H, W)
            if len(dims) > 3:
                raise EstimateError(f"FITS {url}: HDU {index} has {len(dims)} axes; give 2-D or 3-D images")
            if shape is None:
                shape = dims[-2:]
            elif dims[-2:] != shape:
                raise EstimateError(
                    f"FITS {url}: HDU {index} is {dims[-2]}×{dims[-1]} but the first image is "
                    f"{shape[0]}×{shape[1]}; every extension must have one shape"
                )
            frames += dims[0] if len(dims) == 3 else 1
        return FrameHeader(frames, shape, np.dtype(np.float32))


def _fits_frames(url: str, dataset: str | None, start: int, stop: int) -> np.ndarray:
    from astropy.io import fits

    with _open(url) as handle, fits.open(handle, memmap=False) as hdul:
        planes = []
        for hdu in _image_hdus(hdul):
            data = np.asarray(hdu.data, dtype=np.float32)
            planes.extend(data if data.ndim == 3 else [data])
        return np.stack(planes[start:stop])


# ---------------------------------------------------------------------------------------------
# HDF5


def _dataset(h5, url: str, dataset: str | None):
    import h5py

    if not dataset:
        found = []
        h5.visititems(
            lambda name, node: (
                found.append(name) if isinstance(node, h5py.Dataset) and node.ndim >= 2 else None
            )
        )
        if len(found) != 1:
            raise EstimateError(
                f"HDF5 {url} holds {len(found)} image datasets ({', '.join(found[:5]) or 'none'}); name one "
                "with --dataset"
            )
        dataset = found[0]
    if dataset not in h5:
        raise EstimateError(f"HDF5 {url} has no dataset {dataset!r}")
    node = h5[dataset]
    if not isinstance(node, h5py.Dataset):
        raise EstimateError(f"HDF5 {url}: {dataset!r} is a group; name a dataset with --dataset")
    if node.ndim not in (2, 3):
        raise EstimateError(
            f"HDF5 {url}: dataset {dataset!r} has shape {node.shape}; give (N, H, W) or (H, W)"
        )
    return node


def _hdf5_header(url: str, dataset: str | None) -> FrameHeader:
    import h5py

    with _open(url) as handle, h5py.File(handle, "r") as h5:
        node = _dataset(h5, url, dataset)
        frames = node.shape[0] if node.ndim == 3 else 1
        return FrameHeader(frames, tuple(int(v) for v in node.shape[-2:]), np.dtype(node.dtype))


def _hdf5_frames(url: str, dataset: str | None, start: int, stop: int) -> np.ndarray:
    import h5py

    with _open(url) as handle, h5py.File(handle, "r") as h5:
        node = _dataset(h5, url, dataset)
        return node[start:stop] if node.ndim == 3 else node[()][None]
