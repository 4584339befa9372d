"""The model store: immutable, versioned flatfield models in AstroPath's layout.

::

    <store>/flatfield/flatfield_<V>.bin                       float64 (H, W, L) interleaved
    <store>/flatfield/flatfield_<V>/flatfield_<V>_uncertainty.bin
    <store>/flatfield/flatfield_<V>/fields_used.csv, metadata_summary_stacked_images.csv
    <store>/flatfield/flatfield_<V>/flatfield_summary_<V>.pdf
    <store>/flatfield/flatfield_<V>/flatfield_<V>.zarr          self-describing copy (flatfield, uncertainty,
                                                                count)
    <store>/flatfield/flatfield_<V>/shadeflow.json              manifest, written last

A version exists when it is complete (``core.io.output_folders``: its manifest, no publishing under way); it
is never changed except by an explicit overwrite. Everything is staged and published at the end, the
``.bin`` last, so AstroPath's tools never find a ``.bin`` without its folder and manifest. Files in
the store that shadeflow did not write (e.g. an AstroPath-made ``flatfield_<V>.bin``) stop a build of
that version unless ``--overwrite``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from ..io import astropath as astropath_io
from ..io import storage
from ..io.output_folders import StagedOutput, is_complete, read_manifest, refuse_foreign
from .models_csv import ModelError, check_version_name

FLATFIELD_DIR = "flatfield"
KIND = "flatfield-model"


def version_folder(store: str, version: str) -> str:
    return storage.join(store, FLATFIELD_DIR, f"flatfield_{check_version_name(version)}")


def version_bin(store: str, version: str) -> str:
    return storage.join(store, FLATFIELD_DIR, f"flatfield_{check_version_name(version)}.bin")


def version_exists(store: str, version: str) -> bool:
    return is_complete(version_folder(store, version))


def list_versions(store: str) -> list[dict[str, Any]]:
    """Manifests of every complete version in the store, oldest first."""
    fs, path = storage.filesystem(storage.join(store, FLATFIELD_DIR))
    if not fs.isdir(path):
        return []
    manifests = []
    for entry in fs.ls(path, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry["type"] == "directory" and name.startswith("flatfield_") and not name.startswith("."):
            folder = storage.join(store, FLATFIELD_DIR, name)
            if is_complete(folder):
                manifest = read_manifest(folder)
                if manifest.get("kind") == KIND:
                    manifests.append(manifest)
    return sorted(manifests, key=lambda m: m.get("created", ""))


def check_version_free(store: str, version: str, overwrite: bool) -> None:
    """Refuse to build a version that exists, or whose folder or ``.bin`` holds files shadeflow did not
    write (an AstroPath-made model, say), unless overwriting. A build that crashed is redone."""
    if version_exists(store, version) and not overwrite:
        made = read_manifest(version_folder(store, version)).get("created", "?")
        raise ModelError(
            f"model version {version!r} already exists in {store} (built {made}); versions are immutable — "
            "use --overwrite to replace it"
        )
    refuse_foreign(
        version_folder(store, version),
        f"model version {version!r}",
        overwrite,
        beside=[version_bin(store, version)],
    )


def staged_version(store: str, version: str) -> StagedOutput:
    return StagedOutput(version_folder(store, version))


def bin_name(version: str) -> str:
    return f"flatfield_{version}.bin"


def write_version_files(
    staged: StagedOutput,
    version: str,
    flatfield: np.ndarray,
    uncertainty: np.ndarray,
    count: np.ndarray,
    attributes: dict[str, Any],
) -> None:
    """Write the model's images into the staged version (the .bin that goes beside the folder included)."""
    astropath_io.write_bin(staged.url(bin_name(version)), flatfield, "float64")
    astropath_io.write_bin(staged.url(f"flatfield_{version}_uncertainty.bin"), uncertainty, "float64")
    url = staged.url(f"flatfield_{version}.zarr")
    group = zarr.open_group(
        url, mode="w", storage_options=storage.storage_options(url) or None, zarr_format=3
    )
    codec = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    for name, data in (("flatfield", flatfield), ("uncertainty", uncertainty), ("count", count)):
        group.create_array(
            name,
            data=data,
            chunks=(1, *data.shape[1:]),
            compressors=codec,
            dimension_names=("layer", "y", "x"),
        )
    group.attrs.update({"format": "shadeflow-flatfield/1", **attributes})


def publish_version(
    staged: StagedOutput,
    store: str,
    version: str,
    parameters: dict[str, Any],
    inputs: list[str],
    expected: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Publish the folder and its manifest, then the flatfield .bin beside it (last: see the module
    description). Nothing is published unless the files of :func:`write_version_files` and ``expected`` are
    staged."""
    files = [f"flatfield_{version}_uncertainty.bin", f"flatfield_{version}.zarr", *(expected or [])]
    return staged.commit(
        KIND,
        parameters,
        inputs,
        outside={bin_name(version): version_bin(store, version)},
        expected=files,
        version=version,
        **extra,
    )


@dataclass
class StoredModel:
    """A model version read from the store."""

    version: str
    flatfield: np.ndarray  # (L, H, W)
    uncertainty: np.ndarray
    manifest: dict[str, Any]

    @property
    def layer_groups(self) -> dict[str, list[int]]:
        return self.manifest["layer_groups"]


def read_model(store: str, version: str) -> StoredModel:
    """A complete model version; unknown versions are an error listing those present."""
    check_version_name(version)
    if not version_exists(store, version):
        present = [m["version"] for m in list_versions(store)]
        raise ModelError(
            f"model version {version!r} not found in {store}; versions present: "
            f"{', '.join(present) or 'none'}"
        )
    manifest = read_manifest(version_folder(store, version))
    shape = tuple(manifest["shape"])
    try:
        flatfield = astropath_io.read_bin(version_bin(store, version), shape, "float64")
        uncertainty = astropath_io.read_bin(
            storage.join(version_folder(store, version), f"flatfield_{version}_uncertainty.bin"),
            shape,
            "float64",
        )
    except (astropath_io.BinFormatError, FileNotFoundError) as exc:
        raise ModelError(f"model version {version!r}: {exc}") from None
    return StoredModel(version, flatfield, uncertainty, manifest)
