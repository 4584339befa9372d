"""Output folders that look complete only when they are, and that never lose files shadeflow did not write.

Every shadeflow output folder ends with a manifest, ``shadeflow.json``: what made it (kind,
parameters, inputs, shadeflow version, time) and every file in it with its size. An output is
*complete* when its manifest exists and no publishing is under way (no ``.shadeflow-writing.json``);
readers treat anything else as absent.

Files are first written to a staging folder beside the destination that belongs to one run
(``.<name>.partial-<token>``, see :mod:`shadeflow.core.io.staging_lease`). :meth:`StagedOutput.commit`
publishes them:

1. the files the writer expects must all be staged; the staged files and their sizes make the manifest;
2. ``.shadeflow-writing.json`` goes into the destination first, listing the old output's files and
   the new ones: from then on a crash leaves a folder whose files are recognisably shadeflow's;
3. files kept beside the folder (AstroPath's ``flatfield_<V>.bin``) are removed, then the old
   manifest, then the old output's files the new one does not have;
4. the staged files are moved in (copied on object stores) and each is checked, with its size;
5. only then the manifest; files beside the folder come last (an AstroPath reader never finds a
   ``.bin`` without its folder and manifest); last, the writing marker is removed.

Files in the destination that no marker lists were not written by shadeflow and are never removed:
jobs refuse such a destination without ``--overwrite`` (:func:`refuse_foreign`), and with it
replace only the files they write, keeping the rest.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterable
from typing import Any

from ... import __version__
from ..errors import InputError
from ..failpoints import reached
from . import storage
from .staging_lease import (
    LEASE,
    StagingLease,
    new_run_token,
    remove_stale_partials,
    staging_url,
)

MANIFEST = "shadeflow.json"
#: present while an output is being published; lists every file of the old and the new output
WRITING = ".shadeflow-writing.json"
_MARKERS = (MANIFEST, WRITING)
_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{8}$")  # storage.write_bytes' temporary name of a file


class IncompleteOutput(RuntimeError):
    """Files of an output went missing while it was published; it is not marked complete."""


def shadeflow_version() -> str:
    return __version__


def is_complete(url: str) -> bool:
    """True when the output folder ``url`` holds its manifest and is not being (re)published."""
    return storage.exists(storage.join(url, MANIFEST)) and not storage.exists(storage.join(url, WRITING))


def read_manifest(url: str) -> dict[str, Any]:
    """The manifest of a complete output folder; ``FileNotFoundError`` if it is incomplete or absent."""
    if not is_complete(url):
        raise FileNotFoundError(
            f"{url} is not a complete shadeflow output (no {MANIFEST}, or it is being written)"
        )
    return json.loads(storage.read_text(storage.join(url, MANIFEST)))


# ---------------------------------------------------------------------------------------------
# what in a destination shadeflow wrote


def _listed(url: str, marker: str) -> set[str]:
    try:
        files = json.loads(storage.read_text(storage.join(url, marker))).get("files", [])
    except FileNotFoundError:
        return set()
    except (ValueError, AttributeError):  # damaged: it proves nothing about the files
        return set()
    return {str(name) for name in files}


def owned_files(url: str) -> set[str]:
    """Files shadeflow wrote at the output ``url`` according to its markers: names relative to the
    folder, ``../<name>`` for files beside it."""
    return _listed(url, MANIFEST) | _listed(url, WRITING)


def foreign_files(url: str, beside: Iterable[str] = ()) -> list[str]:
    """URLs of the files at the output ``url``, and of the ``beside`` files next to it, that shadeflow did not
    write."""
    url = storage.normalize(url)
    fs, path = storage.filesystem(url)
    if fs.exists(path) and not fs.isdir(path):
        return [url]
    owned = owned_files(url) | set(_MARKERS)
    found = [
        storage.join(url, name)
        for name in sorted(storage.file_sizes(url))
        if _TEMPORARY.sub("", name) not in owned
    ]
    found += [
        other for other in beside if f"../{storage.basename(other)}" not in owned and storage.exists(other)
    ]
    return found


def refuse_foreign(url: str, label: str, overwrite: bool, beside: Iterable[str] = ()) -> None:
    """Without ``overwrite``, refuse an output location holding files shadeflow did not write.

    A complete output is left to its job to judge (skip, refuse or replace): what a person added to it
    stays and is never read. One line names the first such file."""
    if overwrite or is_complete(url):
        return
    foreign = foreign_files(url, beside)
    if foreign:
        more = (
            f" (nor {len(foreign) - 1} other file{'s' if len(foreign) > 2 else ''} there)"
            if len(foreign) > 1
            else ""
        )
        raise InputError(
            f"{label}: {foreign[0]}",
            f"was not written by shadeflow{more}",
            "move it away, or rerun with --overwrite (the files shadeflow writes are replaced, others kept)",
        )


# ---------------------------------------------------------------------------------------------
# publishing


class StagedOutput:
    """Write a folder of outputs so that it appears at ``final_url`` only when complete.

    Files are written below :meth:`url` (the staging folder of run ``token``: one per run, decided
    once by the run, so a recomputed step writes to the same place) and :meth:`commit` publishes them.
    As a context manager it holds the staging folder's lease, removes staging folders of crashed
    runs of the same output on entering, and removes its own unless committed on leaving.
    """

    def __init__(self, final_url: str, token: str | None = None):
        self.final = storage.normalize(final_url)
        self.token = token or new_run_token()
        self.staging = staging_url(self.final, self.token)
        self.committed = False
        self.lease = StagingLease(self.staging)
        #: staging folders of other runs left in place on entering (in use, or not provably abandoned)
        self.others: list[str] = []

    def url(self, *parts: str) -> str:
        """Where to write a file of this output while it is being made."""
        return storage.join(self.staging, *parts)

    def commit(
        self,
        kind: str,
        parameters: dict[str, Any],
        inputs: list[str],
        outside: dict[str, str] | None = None,
        expected: Iterable[str] = (),
        **extra: Any,
    ) -> dict[str, Any]:
        """Publish the staged files with a manifest (module description) and return the manifest.

        ``expected`` names files (or folders, which must hold files) the writer wrote: if any is not
        staged, nothing is published. ``outside`` maps staged files to final URLs beside the folder
        (e.g. AstroPath's ``flatfield_<V>.bin`` beside ``flatfield_<V>/``); they are moved last.
        """
        outside = outside or {}
        # a temporary left by a writer killed before its rename (a lost worker; the step was recomputed)
        # is not part of the output: it goes with the staging folder
        staged = {
            name: size
            for name, size in storage.file_sizes(self.staging).items()
            if not name.startswith(LEASE) and not _TEMPORARY.search(name)
        }
        present = set(staged) | {parent for name in staged for parent in _parents(name)}
        missing = [name for name in [*expected, *outside] if name.strip("/") not in present]
        if missing:
            raise IncompleteOutput(
                f"{self.final}: {len(missing)} file{'s' if len(missing) > 1 else ''} of the output "
                f"{'are' if len(missing) > 1 else 'is'} "
                f"missing from its staging folder {self.staging} (e.g. {missing[0]}); nothing was published"
            )
        inside = {name: size for name, size in staged.items() if name not in outside}
        files = {**inside, **{f"../{storage.basename(url)}": staged[name] for name, url in outside.items()}}
        manifest = {
            "kind": kind,
            "shadeflow_version": shadeflow_version(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "parameters": parameters,
            "inputs": inputs,
            **extra,
            "files": dict(sorted(files.items())),
        }
        text = json.dumps(manifest, indent=2, default=str)
        before = owned_files(self.final)
        storage.write_text(
            storage.join(self.final, WRITING),
            json.dumps({"kind": kind, "files": sorted(before | set(files))}, indent=1),
        )
        reached("publish-marked")
        beside = set(outside.values()) | {
            storage.join(storage.parent(self.final), n[3:]) for n in before if n.startswith("../")
        }
        for url in sorted(beside):  # first: no AstroPath reader sees an old .bin beside a changing folder
            storage.remove(url)
        storage.remove(storage.join(self.final, MANIFEST))
        _remove_files(
            self.final,
            [n for n in before if not n.startswith("../") and n not in inside and n not in _MARKERS],
        )
        _place(self.staging, self.final, list(inside))
        _verify(self.final, inside)
        reached("publish-moved")
        storage.write_text(storage.join(self.final, MANIFEST), text)
        reached("publish-manifest")
        for name, url in outside.items():
            _place_file(self.url(name), url)
            _verify_file(url, staged[name])
        storage.remove(storage.join(self.final, WRITING))
        storage.remove(self.staging)
        self.committed = True
        return manifest

    def abort(self) -> None:
        storage.remove(self.staging)

    def __enter__(self) -> StagedOutput:
        self.others = remove_stale_partials(self.final, self.token)
        self.lease.acquire()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self.committed:
                self.abort()
        finally:
            self.lease.release()


def _parents(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _remove_files(folder: str, names: list[str]) -> None:
    """Remove files of an old output; emptied folders go too (locally: object stores have none)."""
    if not names:
        return
    fs, root = storage.filesystem(folder)
    paths = [f"{root.rstrip('/')}/{name}" for name in names]
    existing = [p for p in paths if fs.exists(p)]
    if existing:
        fs.rm(existing)
    if not storage.is_remote(folder):
        for parent in sorted({os.path.dirname(p) for p in paths}, key=len, reverse=True):
            while parent.startswith(root.rstrip("/") + "/"):
                try:
                    os.rmdir(parent)
                except OSError:
                    break
                parent = os.path.dirname(parent)


def _place(staging: str, final: str, names: list[str]) -> None:
    """Move staged files into the output folder: renames on a local disk, server-side copies on object
    stores."""
    if not names:
        return
    fs, source = storage.filesystem(staging)
    _, target = storage.filesystem(final)
    sources = [f"{source.rstrip('/')}/{name}" for name in names]
    targets = [f"{target.rstrip('/')}/{name}" for name in names]
    if storage.is_remote(final):
        fs.copy(sources, targets)
        return
    for src, dst in zip(sources, targets):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)


def _place_file(source_url: str, target_url: str) -> None:
    fs, source = storage.filesystem(source_url)
    _, target = storage.filesystem(target_url)
    if storage.is_remote(target_url):
        fs.copy(source, target)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(source, target)


def _verify(folder: str, files: dict[str, int]) -> None:
    """Every file of the new output is at ``folder`` with its size, or the output stays incomplete."""
    fs, path = storage.filesystem(folder)
    fs.invalidate_cache(path)
    found = storage.file_sizes(folder)
    wrong = [name for name, size in files.items() if found.get(name) != size]
    if wrong:
        raise IncompleteOutput(
            f"{folder}: {len(wrong)} of its {len(files)} files are missing or of another size after "
            f"publishing (e.g. {wrong[0]}); "
            "it is not marked complete — was it written by another run at the same time?"
        )


def _verify_file(url: str, size: int) -> None:
    fs, path = storage.filesystem(url)
    fs.invalidate_cache(path)
    if not fs.exists(path) or fs.size(path) != size:
        raise IncompleteOutput(
            f"{url}: missing or of another size after publishing; the output is not marked complete"
        )
