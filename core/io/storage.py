"""Storage adapters: one vocabulary for local paths and ``s3://`` URLs (via fsspec).

The S3 endpoint comes from ``AWS_ENDPOINT_URL`` when it is set (an S3-compatible server such as
MinIO, Ceph or moto); credentials come from the usual AWS environment.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..errors import InputError, one_line


def is_remote(url: str) -> bool:
    """True for URLs with a protocol other than ``file://`` (e.g. ``s3://``)."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    return protocol not in ("file", "local")


#: ``scheme://userinfo@`` — credentials written into a URL (``s3://KEY:SECRET@bucket/…``). The password may
#: hold ``/`` (AWS secret keys do); ``s3://bucket/user@host/…`` (an ``@`` in a key) is no userinfo
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@\s:]*(?::[^@\s]*)?)@")


def userinfo(url: str) -> str | None:
    """The ``user[:password]`` part of a URL with a scheme, if any (a local path's ``@`` is just a
    character)."""
    match = _USERINFO.match(url.strip())
    return match.group(2) if match else None


def redact(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***`` (``s3://***@bucket/…``)."""
    return _USERINFO.sub(r"\1***@", text)


def refuse_credentials_in_url(url: str, what: str) -> None:
    """Refuse a URL that carries credentials, before anything reads it or records it: they would be
    echoed in errors and logs and stored with the run (Prefect parameters, task names, results).
    The message shows the URL redacted."""
    if url and userinfo(url) is not None:
        raise InputError(
            f"{what} {redact(url)}",
            "credentials in the URL are refused (they would end up in logs and in the run's records)",
            "remove them and give credentials through the environment (AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY) or a profile (AWS_PROFILE)",
        )


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


def write_bytes(url: str, data: bytes | memoryview) -> None:
    """Write a whole file. Never half-written: locally via a temporary name and an atomic rename;
    object stores replace objects atomically anyway. ``data`` may be a byte ``memoryview`` (of an array:
    no copy is made locally)."""
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
    fs.pipe_file(path, bytes(data))  # object-store clients take bytes


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
    return {
        name[len(base) :]: int(info.get("size") or 0) for name, info in found.items() if name.startswith(base)
    }


def remove(url: str) -> None:
    """Remove a file or folder if it exists."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


# ---------------------------------------------------------------------------------------------
# storage errors: the storage's fault, not the data's


#: botocore / aiohttp / urllib3 classes meaning "the endpoint did not answer" (by name: nothing imported)
_UNREACHABLE = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "ProxyConnectionError",
    "ReadTimeoutError",
    "ClientConnectorError",
    "ClientConnectionError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
    "NewConnectionError",
}
_NO_CREDENTIALS = {
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
    "ProfileNotFound",
    "TokenRetrievalError",
}
_DENIED_CODES = {
    "403",
    "AccessDenied",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidSecurity",
    "RequestTimeTooSkewed",
}


def _error_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):
        return str(response["Error"].get("Code", "")) or None
    return None


def storage_problem(exc: BaseException) -> str | None:
    """What an exception says about the storage, or ``None`` when it is not the storage's fault.

    An unreachable endpoint, missing or refused credentials, and a bucket that does not exist are
    problems of the location, not of the data there: they are named as such (never as "not an image").
    The chain of causes is followed (s3fs re-raises botocore's errors as ``OSError``\\ s)."""
    seen = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        names = {cls.__name__ for cls in type(link).__mro__}
        code = _error_code(link)
        text = redact(str(link)).strip()
        if names & _UNREACHABLE or isinstance(link, (ConnectionError, TimeoutError)):
            return f"the storage endpoint cannot be reached ({text or type(link).__name__})"
        if names & _NO_CREDENTIALS:
            return f"no usable AWS credentials ({text or type(link).__name__})"
        if code in _DENIED_CODES:
            return f"access denied ({code})"
        if code == "NoSuchBucket":
            return "the bucket does not exist"
        link = link.__cause__ or link.__context__
    return None


def _probe_filesystem(url: str) -> fsspec.AbstractFileSystem:
    """A private S3 filesystem for quick probes: one attempt, short timeouts. The shared one retries a
    refused connection for seconds, which an up-front check about a typo should not wait for."""
    return _probe_filesystem_for(url.split("://", 1)[0], os.environ.get("AWS_ENDPOINT_URL"), os.getpid())


@functools.lru_cache(maxsize=8)
def _probe_filesystem_for(protocol: str, endpoint: str | None, pid: int) -> fsspec.AbstractFileSystem:
    # one per endpoint and process: a new client costs ~0.2 s, and a run probes every tile
    config = {"connect_timeout": 5, "read_timeout": 10, "retries": {"total_max_attempts": 1}}
    options = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    fs = fsspec.filesystem(protocol, skip_instance_cache=True, config_kwargs=config, **options)
    fs.retries = 1  # s3fs's own retry loop around botocore's
    return fs


def check_bucket(url: str, what: str, hint: str | None = None) -> None:
    """For an ``s3://`` URL: the endpoint answers, the credentials are accepted and the bucket exists
    (one HEAD request, no retries); raises :class:`~shadeflow.core.errors.InputError` naming ``what``
    and the URL. Local paths pass (their checks are the callers')."""

    if not url.startswith(("s3://", "s3a://")):
        return
    url = normalize(url)
    label = f"{what} {redact(url)}"
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if not bucket:
        raise InputError(label, "names no bucket", "give it as s3://BUCKET/PATH")
    try:
        _probe_filesystem(url).call_s3("head_bucket", Bucket=bucket)
    except Exception as exc:
        problem = storage_problem(exc)
        if problem is None and isinstance(exc, FileNotFoundError):
            problem = "the bucket does not exist"  # HEAD on a bucket: 404 has no body, so no code to read
        if problem is None and isinstance(exc, PermissionError):
            problem = "access denied"
        if problem is None:
            raise
        if problem == "the bucket does not exist":
            raise InputError(
                label,
                f"bucket {bucket!r} does not exist",
                hint or "check the bucket name and AWS_ENDPOINT_URL",
            ) from None
        advice = (
            "check AWS_ENDPOINT_URL and the network"
            if "endpoint" in problem
            else "check the AWS credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and "
            "the bucket's permissions"
        )
        raise InputError(label, f"bucket {bucket!r}: {problem}", advice) from None


def check_output_folder(url: str, what: str = "--out", hint: str | None = None) -> None:
    """Refuse, before anything runs, an output folder that cannot be written; writes nothing.

    Locally: the folder (or the nearest part of its path that exists) must be a writable folder. On
    S3: the bucket must exist and be reachable — a missing output bucket is the output's problem,
    named as such, not discovered when the first result is written.
    """

    url = normalize(url)
    label = f"{what} {redact(url)}"
    elsewhere = hint or f"choose another {what}"
    if is_remote(url):
        fs, path = filesystem(url)
        bucket = path.split("/", 1)[0]
        if not bucket:
            raise InputError(label, "names no bucket", f"give {what} as s3://BUCKET/FOLDER")
        if url.startswith(("s3://", "s3a://")):
            # one quick HEAD: fs.exists() would call an unreachable endpoint or refused credentials
            # "does not exist", after seconds of retries
            check_bucket(url, what, f"create it or {elsewhere}")
        try:
            found = fs.exists(bucket)
            is_file = found and "/" in path.strip("/") and fs.isfile(path)
        except PermissionError:
            raise InputError(
                label,
                f"bucket {bucket!r} cannot be accessed (permission denied)",
                "check the AWS credentials",
            ) from None
        except OSError as exc:
            raise InputError(
                label,
                f"bucket {bucket!r} cannot be reached ({redact(one_line(exc))})",
                "check AWS_ENDPOINT_URL and the network",
            ) from None
        if not found:
            raise InputError(label, f"bucket {bucket!r} does not exist", f"create it or {elsewhere}")
        if is_file:
            raise InputError(label, "is a file, not a folder", elsewhere)
        return
    existing = url
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = (
            "it is a file, not a folder"
            if existing == url
            else f"{existing} is a file, so the folder cannot be made"
        )
        raise InputError(label, where, elsewhere)
    if not os.access(existing, os.W_OK | os.X_OK):
        where = (
            "the folder is not writable"
            if existing == url
            else f"the folder cannot be made: {existing} is not writable"
        )
        raise InputError(label, where, elsewhere)
