"""Output folders that look complete only when they are.

Every shadeflow output folder ends with a manifest, ``shadeflow.json``: what made it (kind,
parameters, inputs, shadeflow version, time) and every file in it with its size. The manifest is
written last, so *a folder without a manifest is incomplete* and readers treat it as absent.

Files are first written to a hidden staging folder beside the destination. On a local disk the
staging folder is renamed into place (atomic). Object stores have no rename, so there the old
manifest is removed first, the staged files are copied server-side, and the manifest comes last.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

from shadeflow.core import storage

MANIFEST = "shadeflow.json"


def shadeflow_version() -> str:
    from shadeflow import __version__

    return __version__


def is_complete(url: str) -> bool:
    """True when the output folder ``url`` holds its manifest."""
    return storage.exists(storage.join(url, MANIFEST))


def read_manifest(url: str) -> dict[str, Any]:
    """The manifest of a complete output folder; ``FileNotFoundError`` if it is incomplete or absent."""
    manifest_url = storage.join(url, MANIFEST)
    if not storage.exists(manifest_url):
        raise FileNotFoundError(f"{url} is not a complete shadeflow output (no {MANIFEST})")
    return json.loads(storage.read_text(manifest_url))


class StagedOutput:
    """Write a folder of outputs so that it appears at ``final_url`` only when complete.

    Use as a context manager: files are written below :meth:`url`, :meth:`commit` publishes them,
    and leaving the block with an exception removes the staging folder.
    """

    def __init__(self, final_url: str):
        self.final = storage.normalize(final_url)
        token = uuid.uuid4().hex[:10]
        self.staging = storage.join(storage.parent(self.final), f".{storage.basename(self.final)}.partial-{token}")
        self.committed = False

    def url(self, *parts: str) -> str:
        """Where to write a file of this output while it is being made."""
        return storage.join(self.staging, *parts)

    def commit(self, kind: str, parameters: dict[str, Any], inputs: list[str], outside: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        """Publish the staged files with a manifest and return the manifest.

        ``outside`` maps staged files to final URLs outside the folder (e.g. AstroPath's
        ``flatfield_<V>.bin`` beside ``flatfield_<V>/``); they are moved first, and the manifest,
        which makes the output complete, comes last.
        """
        outside = outside or {}
        for name in outside:
            if not storage.exists(self.url(name)):
                raise FileNotFoundError(f"staged file {name} is missing")
        files = storage.file_sizes(self.staging)
        files.update({f"../{storage.basename(url)}": files.pop(name) for name, url in outside.items()})
        manifest = {
            "kind": kind,
            "shadeflow_version": shadeflow_version(),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "parameters": parameters,
            "inputs": inputs,
            **extra,
            "files": dict(sorted(files.items())),
        }
        text = json.dumps(manifest, indent=2, default=str)
        fs, final_path = storage.filesystem(self.final)
        _, staging_path = storage.filesystem(self.staging)
        storage.remove(storage.join(self.final, MANIFEST))  # an old output stops being complete first
        for name, url in outside.items():
            _, target = storage.filesystem(url)
            _, source = storage.filesystem(self.url(name))
            fs.mv(source, target)
        if storage.is_remote(self.final):
            storage.remove(self.final)
            if files:
                fs.copy(staging_path, final_path, recursive=True)
            storage.write_text(storage.join(self.final, MANIFEST), text)
            storage.remove(self.staging)
        else:
            storage.write_text(self.url(MANIFEST), text)
            old = None
            if fs.exists(final_path):
                old = final_path.rstrip("/") + f".old-{uuid.uuid4().hex[:10]}"
                fs.mv(final_path, old, recursive=True)
            fs.mv(staging_path, final_path, recursive=True)
            if old:
                fs.rm(old, recursive=True)
        self.committed = True
        return manifest

    def abort(self) -> None:
        storage.remove(self.staging)

    def __enter__(self) -> "StagedOutput":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()
