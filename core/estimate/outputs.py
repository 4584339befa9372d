"""The outputs of ``shadeflow estimate``: one folder that appears only when complete.

``<out>/`` holds

* ``flatfield.tiff`` — float32, one page per channel, each with mean 1;
* ``darkfield.tiff`` — float32, one page per channel, in counts (zeros where no darkfield was
  estimated or known: the model then had D = 0);
* ``estimate.zarr`` — a zarr group with the arrays ``flatfield`` and ``darkfield`` (C, H, W) and
  ``baseline`` (C, N; NaN for frames not used) and attributes: method, parameters, inputs, shadeflow
  version, and per channel its statistics and notes;
* ``shadeflow.json`` — the manifest, written last (``core.io.output_folders``).

A complete folder made with the same parameters and inputs is left as it is; one made otherwise is
replaced only with ``overwrite``.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from ..io import storage
from ..io.output_folders import StagedOutput, is_complete, read_manifest, shadeflow_version
from .estimator import METHOD, ShadingEstimate

KIND = "estimate"
FLATFIELD_TIFF = "flatfield.tiff"
DARKFIELD_TIFF = "darkfield.tiff"
ESTIMATE_ZARR = "estimate.zarr"


def output_state(out: str, parameters: dict[str, Any], inputs: list[str], overwrite: bool) -> str:
    """``write``, ``skip`` (complete, same parameters and inputs) or ``replace``.

    Raises
    ------
    FileExistsError
        A complete output made otherwise, or a folder that is not a shadeflow output, without ``overwrite``.
    """
    out = storage.normalize(out)
    if is_complete(out):
        manifest = read_manifest(out)
        same = (
            manifest.get("kind") == KIND
            and manifest.get("parameters") == _jsonable(parameters)
            and manifest.get("inputs") == inputs
        )
        if same and not overwrite:
            return "skip"
        if overwrite:
            return "replace"
        raise FileExistsError(
            f"output {out} exists and is complete (made {manifest.get('created', '?')} with other "
            "parameters or inputs); rerun with --overwrite to replace it"
        )
    fs, path = storage.filesystem(out)
    if fs.exists(path) and (not fs.isdir(path) or fs.ls(path)):
        if not overwrite:
            raise FileExistsError(
                f"output {out} exists and is not a shadeflow estimate; remove it, choose another --out, or "
                "rerun with --overwrite"
            )
        return "replace"
    return "write"


def _tiff_bytes(stack: np.ndarray, names: list[str]) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tif:
        for page, name in zip(stack, names):
            tif.write(np.ascontiguousarray(page, np.float32), description=name, metadata=None)
    return buffer.getvalue()


def channel_record(name: str, result: ShadingEstimate) -> dict[str, Any]:
    """Per channel: statistics, diagnostics and notes (JSON-ready)."""
    return {
        "channel": name,
        **result.summary(),
        "diagnostics": _jsonable(result.diagnostics),
        "rejected_frames": result.frames_rejected,
        "notes": result.notes,
    }


def write_estimate(
    out: str,
    results: list[ShadingEstimate],
    channel_names: list[str],
    parameters: dict[str, Any],
    inputs: list[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the output folder (module description) and return its manifest."""
    import zarr

    flat = np.stack([r.flatfield for r in results]).astype(np.float32)
    dark = np.stack([r.darkfield for r in results]).astype(np.float32)
    baseline = np.stack([r.baseline for r in results]).astype(np.float32)
    channels = [channel_record(n, r) for n, r in zip(channel_names, results)]
    attrs = {
        "kind": KIND,
        "method": results[0].diagnostics.get("method", METHOD) if results else METHOD,
        "model": "I_n(x) = flatfield(x) * baseline_n + darkfield(x) + specimen_n(x)",
        "parameters": _jsonable(parameters),
        "inputs": inputs,
        "shadeflow_version": shadeflow_version(),
        "channels": channels,
        **_jsonable(extra or {}),
    }
    with StagedOutput(out) as staged:
        storage.write_bytes(staged.url(FLATFIELD_TIFF), _tiff_bytes(flat, channel_names))
        storage.write_bytes(staged.url(DARKFIELD_TIFF), _tiff_bytes(dark, channel_names))
        url = staged.url(ESTIMATE_ZARR)
        group = zarr.open_group(url, mode="w", storage_options=storage.storage_options(url) or None)
        for name, values in (("flatfield", flat), ("darkfield", dark), ("baseline", baseline)):
            group.create_array(name, data=values, chunks=values.shape)
        group.attrs.update(attrs)
        return staged.commit(KIND, _jsonable(parameters), inputs, channels=channels, method=attrs["method"])


def read_estimate(out: str) -> dict[str, Any]:
    """What :func:`write_estimate` wrote: arrays and attributes of ``estimate.zarr``, and the TIFFs."""
    import tifffile
    import zarr

    out = storage.normalize(out)
    url = storage.join(out, ESTIMATE_ZARR)
    group = zarr.open_group(url, mode="r", storage_options=storage.storage_options(url) or None)
    data = {name: group[name][...] for name in ("flatfield", "darkfield", "baseline")}
    data["attrs"] = group.attrs.asdict()
    data["flatfield_tiff"] = tifffile.imread(
        io.BytesIO(storage.read_bytes(storage.join(out, FLATFIELD_TIFF)))
    )
    data["darkfield_tiff"] = tifffile.imread(
        io.BytesIO(storage.read_bytes(storage.join(out, DARKFIELD_TIFF)))
    )
    return data


def _jsonable(value: Any) -> Any:
    """JSON-ready: arrays as lists, numpy scalars as numbers, NaN and ±inf as null."""
    plain = json.loads(
        json.dumps(
            value,
            default=lambda v: (
                v.tolist()
                if isinstance(v, np.ndarray)
                else (v.item() if isinstance(v, np.generic) else str(v))
            ),
        )
    )
    return _finite(plain)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
