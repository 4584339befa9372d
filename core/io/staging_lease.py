"""Which run owns a staging folder, and when a leftover one may be removed.

A staging folder (``.<name>.partial-<token>`` beside an output) belongs to the one run that chose
``<token>``; only that run writes to it or removes it. A run that crashed leaves its staging folder
behind, and another run may remove it only when it is provably not in use:

* on a local disk the owner holds an ``flock`` on ``<staging>/.lease`` for as long as it may write
  there; the operating system drops the lock when the owner's process dies, so a lease that can be
  locked belongs to a dead run (NFSv4 clients share these locks across machines); a run killed while
  making its folder leaves it empty or with only its private, unrenamed lease, which is removed the same
  way;
* on object stores there is no such lock, and a staging folder without a lease (still being made, or
  left by an older shadeflow) proves nothing: those are left in place, and the caller names them so a
  person can remove them once no run writes that output.
"""

from __future__ import annotations

import os
import uuid

from . import storage

try:  # POSIX only; elsewhere no lease is held and leftovers are never removed automatically
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

#: the lock file of a staging folder (never published with the output)
LEASE = ".lease"


def new_run_token() -> str:
    """A token naming one run's staging folders: decided once per run, never by a step that may be
    recomputed."""
    return uuid.uuid4().hex[:12]


def staging_url(final_url: str, token: str) -> str:
    """The staging folder of run ``token`` for the output ``final_url``: hidden, beside it."""
    final = storage.normalize(final_url)
    return storage.join(storage.parent(final), f"{_prefix(final)}{token}")


def _prefix(final: str) -> str:
    return f".{storage.basename(final)}.partial-"


def _lockable(url: str) -> bool:
    return fcntl is not None and not storage.is_remote(url)


class StagingLease:
    """Holds ``<staging>/.lease`` locked while its run may write to ``staging`` (local disks; a no-op on
    object stores)."""

    def __init__(self, staging: str):
        self.staging = staging
        self._handle = None

    def acquire(self) -> StagingLease:
        if not _lockable(self.staging) or self._handle is not None:
            return self
        os.makedirs(self.staging, exist_ok=True)
        # locked under a private name, then renamed: a lease is never visible unlocked
        temporary = os.path.join(self.staging, f"{LEASE}.{uuid.uuid4().hex[:8]}")
        handle = open(temporary, "w")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(temporary, os.path.join(self.staging, LEASE))
        self._handle = handle
        return self

    def release(self, remove: bool = False) -> None:
        """Unlock; with ``remove`` the staging folder goes too (the caller knows nothing writes there any
        more)."""
        if remove:
            storage.remove(self.staging)
        if self._handle is not None:
            if not remove and _only_the_lease(self.staging):  # never used: leave no trace
                storage.remove(self.staging)
            # otherwise an unlocked lease stays with the files: the next run can tell they are abandoned
            self._handle.close()
            self._handle = None

    def __getstate__(self):  # a lock does not travel: a copy on another process holds nothing
        return {"staging": self.staging, "_handle": None}

    def __enter__(self) -> StagingLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _only_the_lease(staging: str) -> bool:
    try:
        return os.listdir(staging) == [LEASE]
    except OSError:
        return False


def other_partials(final_url: str, own_token: str | None = None) -> list[str]:
    """Staging folders of ``final_url`` that belong to other runs (URLs)."""
    final = storage.normalize(final_url)
    fs, path = storage.filesystem(storage.parent(final))
    if not fs.isdir(path):
        return []
    prefix = _prefix(final)
    found = []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(prefix) and name[len(prefix) :] != own_token:
            found.append(storage.join(storage.parent(final), name))
    return sorted(found)


def remove_stale_partials(final_url: str, own_token: str | None = None) -> list[str]:
    """Remove the staging folders of ``final_url`` whose runs provably ended (module description);
    returns the others' folders that were left (in use, or nothing proves otherwise)."""
    left = []
    for url in other_partials(final_url, own_token):
        if not _remove_if_abandoned(url):
            left.append(url)
    return left


def _remove_if_abandoned(url: str) -> bool:
    if not _lockable(url):
        return False
    try:
        handle = open(os.path.join(url, LEASE), "r+")
    except OSError:  # no lease: still being made, or left by a run that held none
        return _remove_if_unfinished(url)
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # its run is alive
        storage.remove(url)  # removed while we hold its lease
    return True


def _remove_if_unfinished(url: str) -> bool:
    """A run killed while it made its staging folder (:meth:`StagingLease.acquire`) leaves the folder empty,
    or holding only the private lease it had locked but not yet renamed. Empty: ``rmdir``, which fails,
    harmlessly, once its maker has put anything in it (a live maker loses at most its own run). Only a
    private lease: removed if it can be locked, as its maker is then dead. Anything else proves nothing."""
    try:
        names = os.listdir(url)
    except OSError:
        return False
    if not names:
        try:
            os.rmdir(url)
        except OSError:
            return False
        return True
    if len(names) != 1 or not names[0].startswith(LEASE + "."):
        return False
    try:
        handle = open(os.path.join(url, names[0]), "r+")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # its maker is alive, about to rename it
        storage.remove(url)
    return True
