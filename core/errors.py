"""What counts as a person's mistake, what counts as a hiccup, and how either is said in one line.

Two questions every layer asks of an exception, answered here once:

* **Is it the input's fault?** (:func:`is_expected`) Then the command line prints one line,
  ``error: <which input>: <what was wrong>[; <what to do>]``, with no traceback, and exits with
  :data:`EXIT_BAD_INPUT`. Every such error of shadeflow's is an :class:`InputError` (a ``ValueError``)
  that names the input; each job's own kind (``SlideError``, ``ModelError``, ``TileError``,
  ``FlatfieldError``, ``BackgroundError``, ``EstimateError``, ``SettingsError``, ``ServeError``) is a
  subclass, so callers can tell them apart. A missing or refused path is a
  ``FileNotFoundError``/``PermissionError``… that :func:`one_line` phrases the same way, and a job's
  parameters that do not validate become an :class:`InputError` through :func:`checked_parameters`.
* **Did a run fail for some of its units?** (:class:`RunFailed`) Slides, tiles or channels that
  failed after the run started, each named once with its reason (:func:`unit_failures`); one line too,
  exit code :data:`EXIT_RUN_FAILED`.
* **Would it go away if tried again?** (:func:`is_transient`) Only then does a Prefect task retry:
  connection errors, timeouts, S3 5xx and throttling. Everything else — bad input, and bugs — fails
  the same way again, so it runs once.

Light on purpose: the command line imports this before anything heavy.
"""

from __future__ import annotations

import errno
import re

#: exit code of a command whose input is wrong (nothing was started or written)
EXIT_BAD_INPUT = 2
#: exit code of a run that started and failed for some of its units (slides, tiles, channels)
EXIT_RUN_FAILED = 1


class InputError(ValueError):
    """An input that cannot work: ``<input>: <problem>[; <hint>]`` (e.g. ``--out s3://x: bucket 'x' does not
    exist; …``). Given one argument, it is the whole message, already naming the input (as the jobs'
    own subclasses are mostly raised: ``SlideError(f"slide {sid}: …")``)."""

    def __init__(self, input: str, problem: str = "", hint: str | None = None):
        super().__init__((f"{input}: {problem}" if problem else input) + (f"; {hint}" if hint else ""))
        self.input, self.problem, self.hint = input, problem, hint

    def __reduce__(self):  # raised on a worker, it crosses back to the flow by pickle
        return type(self), (self.input, self.problem, self.hint)


class RunFailed(RuntimeError):
    """A run started and some of its units (slides, tiles, channels) failed; the message names each
    one and why (:func:`unit_failures`). The command line prints it as one line and exits with
    :data:`EXIT_RUN_FAILED`."""


#: a missing, refused or misplaced path: the input's fault, not the storage's
_PATH_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input is wrong": shown as one line, never retried."""
    return (ValueError, *_PATH_ERRORS)


def is_expected(exc: BaseException) -> bool:
    return isinstance(exc, expected_errors())


def one_line(exc: BaseException) -> str:
    """The message of an expected error as one line: pydantic's errors as ``--option: problem``,
    an ``OSError`` as ``<path>: <what>``, anything else as its text."""
    if type(exc).__name__ == "ValidationError" and callable(getattr(exc, "errors", None)):
        text = validation_message(exc)
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror[:1].lower()}{exc.strerror[1:]}"
    else:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, KeyError) and len(exc.args) == 1:
            text = str(exc.args[0])
    return re.sub(r"\s*\n\s*", " ", text).strip()


def validation_message(exc) -> str:
    """A pydantic ``ValidationError`` as the command-line user would phrase it: ``--levels 0: Input should
    be …``."""
    parts = []
    for error in exc.errors():
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        where = ".".join(str(p) for p in error.get("loc", ()))
        if where:
            where = f"--{where.replace('_', '-')}{_shown_value(error.get('input'))}"
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def _shown_value(value) -> str:
    """The value at fault, when it is a plain number or a short word (never a URL, which may carry
    credentials, nor a whole list)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return ""
    text = str(value)
    if isinstance(value, str) and (len(text) > 40 or any(c in text for c in ":/@ ")):
        return ""
    return f" {text}"


def failure_reason(message: str | None) -> str:
    """The exception text inside a failed Prefect task's state message
    (``Task run encountered an exception TileError: tile …`` → ``tile …``)."""
    text = message or "failed"
    match = re.search(r"encountered an exception:? (?:\w+: )?(.*)$", text, re.S)
    return match.group(1) if match else text


def unit_failures(kind: str, failed: list[tuple[str, str | None]]) -> str:
    """The message of a :class:`RunFailed`: each failed unit — a ``kind`` (``"slide"``, ``"tile"``, or
    ``""`` when the names say it, as ``"channel 0"``) and its name — with the reason out of its Prefect
    task state's message, the unit named once (most reasons already start with it), joined by ``"; "``."""
    parts = []
    for name, message in failed:
        reason = re.sub(r"\s*\n\s*", " ", failure_reason(message)).strip()
        label = f"{kind} {name}" if kind else name
        parts.append(reason if name.rstrip("/") in reason else f"{label}: {reason}")
    return "; ".join(parts)


def checked_parameters(model: type, /, **values):
    """A job's parameters (its pydantic model) from ``values``; a value that does not validate is an
    :class:`InputError` phrased for the command line (``--levels: Input should be …``)."""
    try:
        return model(**values)
    except ValueError as exc:
        if type(exc).__name__ != "ValidationError":
            raise
        raise InputError(validation_message(exc)) from None


# ---------------------------------------------------------------------------------------------
# transient errors

#: errno values of I/O that may succeed when tried again (EREMOTEIO: s3fs's translation of a 500;
#: EBUSY: its translation of 503 SlowDown and 409; EIO: an unrecognised storage error)
_TRANSIENT_ERRNOS = {
    getattr(errno, name)
    for name in (
        "EAGAIN",
        "EBUSY",
        "EIO",
        "EREMOTEIO",
        "ETIMEDOUT",
        "ECONNRESET",
        "ECONNREFUSED",
        "ECONNABORTED",
        "EPIPE",
        "ENETDOWN",
        "ENETUNREACH",
        "ENETRESET",
        "EHOSTUNREACH",
        "EHOSTDOWN",
    )
    if hasattr(errno, name)
}
#: error codes of S3 (and AWS generally) that mean "slow down" or "try again"
_RETRYABLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "BandwidthLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "PriorRequestNotComplete",
}
#: connection and timeout errors of the storage and cluster libraries, by class name so classifying
#: needs none of them imported: botocore (``HTTPClientError`` is the base of its read/connect timeouts
#: and closed connections), aiohttp (s3fs's transport), urllib3 / http.client, distributed
_TRANSIENT_CLASSES = {
    "HTTPClientError",
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ProxyConnectionError",
    "ResponseStreamingError",
    "IncompleteReadError",
    "ClientConnectionError",
    "ClientOSError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
    "ClientPayloadError",
    "ProtocolError",
    "NewConnectionError",
    "IncompleteRead",
    "RemoteDisconnected",
    "CommClosedError",
}


def _retryable_response(exc: BaseException) -> bool:
    """botocore's ``ClientError`` (a 5xx, 429 or throttling code) or aiohttp's ``ClientResponseError`` (5xx,
    429)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        code = str((response.get("Error") or {}).get("Code", ""))
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return code in _RETRYABLE_CODES or (isinstance(status, int) and (status >= 500 or status == 429))
    status = getattr(exc, "status", None)
    return (
        type(exc).__name__ == "ClientResponseError"
        and isinstance(status, int)
        and (status >= 500 or status == 429)
    )


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _dask_lost_dependencies(exc: BaseException) -> bool:
    """Dask cancelled futures because the scheduler no longer knew a key they depend on: a state of the
    cluster (a worker gone, or a race inside the scheduler, dask/distributed#4612), not of the input."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"FuturesCancelledError", "FutureCancelledError"}) and "lost dependencies" in str(exc)


def is_transient(exc: BaseException) -> bool:
    """True for a failure worth retrying: a dropped or refused connection, a timeout, an S3 5xx or throttling.

    An error of the input (a ``ValueError`` such as every shadeflow input error, a missing or refused
    path) is never transient, even when it was raised while handling a transient one; a bug (a
    ``TypeError``, ``KeyError``…) is not transient either. The chain of causes is followed, so a
    storage error that a library re-raised as its own still counts.
    """
    for link in _causes(exc):
        if isinstance(link, (ValueError, *_PATH_ERRORS)):
            return False
        if isinstance(link, (ConnectionError, TimeoutError)):
            return True
        if any(cls.__name__ in _TRANSIENT_CLASSES for cls in type(link).__mro__):
            return True
        if _retryable_response(link) or _dask_lost_dependencies(link):
            return True
        if isinstance(link, OSError) and link.errno in _TRANSIENT_ERRNOS:
            if link.errno == errno.EIO and any(
                _client_error_says_permanent(c) for c in _causes(link.__cause__)
            ):
                return False
            return True
    return False


def _client_error_says_permanent(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    return isinstance(response, dict) and "Error" in response and not _retryable_response(exc)
