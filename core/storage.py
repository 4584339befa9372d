"""Storage adapters: one vocabulary for local paths and ``s3://`` URLs (via fsspec).

The S3 endpoint comes from ``AWS_ENDPOINT_URL`` when it is set (an S3-compatible server such as
MinIO, Ceph or moto); credentials come from the usual AWS environment.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


def is_remote(url: str) -> bool:
    """True for URLs with a protocol other than ``file://`` (e.g. ``s3://``)."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    return protocol not in ("file", "local")


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for ``url``: the S3 endpoint from ``AWS_ENDPOINT_URL`` when set."""
    if url.startswith(("s3://", "s3a://")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        return {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    return {}


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding ``url`` and the path of ``url`` on it."""
    fs, path = fsspec.core.url_to_fs(url, **storage_options(url))
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join path components onto a URL or local path with ``/``."""
    if is_remote(url):
        return posixpath.join(url.rstrip("/"), *parts)
    return os.path.join(url, *parts)


def normalize(url: str) -> str:
    """Absolute local paths; remote URLs without a trailing slash."""
    if is_remote(url):
        return url.rstrip("/")
    if url.startswith("file://"):
        url = url[len("file://") :]
    return os.path.abspath(os.path.expanduser(url))


def basename(url: str) -> str:
    return posixpath.basename(url.rstrip("/")) if is_remote(url) else os.path.basename(url.rstrip(os.sep))


def parent(url: str) -> str:
    if is_remote(url):
        protocol, rest = url.split("://", 1)
        return f"{protocol}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(url.rstrip(os.sep))


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file. Never half-written: locally via a temporary name and an atomic rename;
    object stores replace objects atomically anyway."""
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        return
    fs.pipe_file(path, data)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def file_sizes(url: str) -> dict[str, int]:
    """Sizes of every file below the folder ``url``, keyed by path relative to it.

    One listing call, so checking a thousand field files on S3 costs one request, not a thousand.
    """
    fs, path = filesystem(url)
    if not fs.isdir(path):
        return {}
    base = path.rstrip("/") + "/"
    found = fs.find(path, detail=True)
    return {name[len(base) :]: int(info.get("size") or 0) for name, info in found.items() if name.startswith(base)}


def remove(url: str) -> None:
    """Remove a file or folder if it exists."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def check_output_folder(url: str, what: str = "--out", hint: str | None = None) -> None:
    """Refuse, before anything runs, an output folder that cannot be written; writes nothing.

    Locally: the folder (or the nearest part of its path that exists) must be a writable folder. On
    S3: the bucket must exist and be reachable — a missing output bucket is the output's problem,
    named as such, not discovered when the first result is written.
    """
    from shadeflow.core.errors import InputError, one_line

    url = normalize(url)
    label = f"{what} {url}"
    elsewhere = hint or f"choose another {what}"
    if is_remote(url):
        fs, path = filesystem(url)
        bucket = path.split("/", 1)[0]
        if not bucket:
            raise InputError(label, "names no bucket", f"give {what} as s3://BUCKET/FOLDER")
        try:
            found = fs.exists(bucket)
            is_file = found and "/" in path.strip("/") and fs.isfile(path)
        except PermissionError:
            raise InputError(label, f"bucket {bucket!r} cannot be accessed (permission denied)", "check the AWS credentials") from None
        except OSError as exc:
            raise InputError(label, f"bucket {bucket!r} cannot be reached ({one_line(exc)})", "check AWS_ENDPOINT_URL and the network") from None
        if not found:
            raise InputError(label, f"bucket {bucket!r} does not exist", f"create it or {elsewhere}")
        if is_file:
            raise InputError(label, "is a file, not a folder", elsewhere)
        return
    existing = url
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "it is a file, not a folder" if existing == url else f"{existing} is a file, so the folder cannot be made"
        raise InputError(label, where, elsewhere)
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "the folder is not writable" if existing == url else f"the folder cannot be made: {existing} is not writable"
        raise InputError(label, where, elsewhere)
