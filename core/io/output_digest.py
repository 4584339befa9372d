"""Digests of output files that are equal for two runs that computed the same thing.

Two runs of a job on the same input write the same bytes except where a file records *when* it was
made: manifests and zarr metadata with provenance hold ``created`` and ``seconds``, a corrected tile's
manifest holds its byte total (its metadata, which counts, holds the time), and the summary PDFs
print their creation time inside compressed streams. :func:`content_digest` hashes a file without
those; :func:`output_digest` does it for every file below a local folder. Used to prove that runs on
different clusters (``bench/scaling.py``) or after faults (``tests/faults/``) wrote identical outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .output_folders import MANIFEST

#: keys that record when (and how long): left out of manifests and zarr metadata before hashing
TIME_KEYS = ("created", "seconds")


def _without_times(data):
    if isinstance(data, dict):
        return {k: _without_times(v) for k, v in data.items() if k not in TIME_KEYS}
    if isinstance(data, list):
        return [_without_times(v) for v in data]
    return data


def content_digest(name: str, data: bytes) -> str:
    """sha256 of one output file's bytes, without what legitimately differs between identical runs."""
    name = name.rsplit("/", 1)[-1]
    if name.endswith(".json") and name != MANIFEST and b'"created"' in data:  # zarr metadata with provenance
        data = json.dumps(_without_times(json.loads(data)), sort_keys=True).encode()
    elif name == MANIFEST:
        manifest = _without_times(json.loads(data))
        manifest.pop("bytes", None)  # a corrected tile's total: its metadata holds the time and duration
        # summary PDFs print their creation time (compressed): only their presence is compared
        if isinstance(manifest.get("files"), dict):
            manifest["files"] = {k: (None if k.endswith(".pdf") else v) for k, v in manifest["files"].items()}
        data = json.dumps(manifest, sort_keys=True).encode()
    elif name.endswith(".pdf"):
        data = b"a PDF report: it shows the time it was made"
    return hashlib.sha256(data).hexdigest()


def output_digest(folder: str | Path) -> dict[str, str]:
    """Every file below ``folder`` (its path relative to ``folder``) → :func:`content_digest`."""
    folder = str(folder)
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, folder)] = content_digest(name, handle.read())
    return out


def differing(got: dict[str, str], want: dict[str, str]) -> list[str]:
    """Files whose digests differ, or that only one side has."""
    return [name for name in sorted(set(got) | set(want)) if got.get(name) != want.get(name)]
