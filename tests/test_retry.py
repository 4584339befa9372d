"""Retries are for transient I/O only (issue 10, item 6): one shared condition for every task that
retries; a deterministic error runs once, a transient one is retried (on the Prefect test server)."""

from __future__ import annotations

import errno
import importlib
import pkgutil

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from distributed.client import CancelledFuturesGroup, FutureCancelledError, FuturesCancelledError
from s3fs.errors import translate_boto_error

from shadeflow.core.errors import is_transient
from shadeflow.core.estimate.grid import EstimateError
from shadeflow.core.io.omezarr import TileError
from shadeflow.core.model.models_csv import ModelError
from shadeflow.tasks.retry import TRANSIENT_RETRY, retry_transient


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


def raised_from(exc: BaseException, cause: BaseException) -> BaseException:
    try:
        raise exc from cause
    except BaseException as raised:
        return raised


TRANSIENT = {
    "connection reset": ConnectionResetError(errno.ECONNRESET, "reset"),
    "connection refused": ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
    "timeout": TimeoutError("timed out"),
    "botocore endpoint": EndpointConnectionError(endpoint_url="http://s3.example"),
    "botocore read timeout": ReadTimeoutError(endpoint_url="http://s3.example"),
    "S3 503 SlowDown": client_error("SlowDown", 503),
    "S3 500 InternalError": client_error("InternalError", 500),
    "S3 throttling": client_error("Throttling", 400),
    "s3fs SlowDown": translate_boto_error(client_error("SlowDown", 503)),
    "s3fs InternalError": translate_boto_error(client_error("InternalError", 500)),
    "s3fs RequestTimeout": translate_boto_error(client_error("RequestTimeout", 400)),
    "wrapped connection error": raised_from(RuntimeError("chunk read failed"), ConnectionResetError("reset")),
    "Dask lost dependencies": FuturesCancelledError(
        [CancelledFuturesGroup([FutureCancelledError("_merge-1", "lost dependencies")], "lost dependencies")]
    ),
}
DETERMINISTIC = {
    "EstimateError": EstimateError("the stack is constant"),
    "TileError": TileError("tile x: not an OME-Zarr image"),
    "ModelError": ModelError("model version 'v9' not found"),
    "ValueError": ValueError("bad value"),
    "missing file": FileNotFoundError(errno.ENOENT, "No such file", "/x"),
    "permission": PermissionError(errno.EACCES, "denied", "/x"),
    "KeyError": KeyError("k"),
    "TypeError": TypeError("bug"),
    "RuntimeError": RuntimeError("bug"),
    "S3 NoSuchKey": translate_boto_error(client_error("NoSuchKey", 404)),
    "S3 NoSuchBucket": translate_boto_error(client_error("NoSuchBucket", 404)),
    "S3 AccessDenied": translate_boto_error(client_error("AccessDenied", 403)),
    "S3 400 as ClientError": client_error("InvalidArgument", 400),
    "input error raised while handling a hiccup": raised_from(
        TileError("tile x: unreadable"), ConnectionResetError("reset")
    ),
    "disk full": OSError(errno.ENOSPC, "No space left on device"),
    "Dask future cancelled by the client": FuturesCancelledError(
        [CancelledFuturesGroup([FutureCancelledError("_merge-1", "cancelled")], "cancelled")]
    ),
}


@pytest.mark.parametrize("name", TRANSIENT)
def test_transient_errors_are_retried(name):
    assert is_transient(TRANSIENT[name])


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_errors_are_not(name):
    assert not is_transient(DETERMINISTIC[name])


def all_tasks():
    from prefect.tasks import Task

    import shadeflow.tasks

    for info in pkgutil.iter_modules(shadeflow.tasks.__path__):
        module = importlib.import_module(f"shadeflow.tasks.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, Task) and value.__module__ == module.__name__:
                yield f"{info.name}.{name}", value


def test_every_task_that_retries_uses_the_shared_condition():
    tasks = dict(all_tasks())
    retrying = {name: t for name, t in tasks.items() if t.retries}
    assert {"correct.correct_tile_task", "estimate.estimate_channel"} <= set(retrying)
    wrong = [name for name, t in retrying.items() if t.retry_condition_fn is not retry_transient]
    assert not wrong, f"tasks retrying without the transient-only condition: {wrong}"


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize(
    "error, runs",
    [
        (EstimateError("the stack is constant"), 1),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/frame.tif"), 1),
        (KeyError("channel"), 1),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), 2),
        (translate_boto_error(client_error("SlowDown", 503)), 2),
    ],
    ids=["EstimateError", "FileNotFoundError", "KeyError", "ConnectionResetError", "S3 SlowDown"],
)
def test_a_task_runs_once_on_a_deterministic_error_and_twice_on_a_transient_one(error, runs):
    """A real task with the shared retry settings (no delay), failing on its first run."""
    from prefect import flow, task

    calls = []

    @task(**{**TRANSIENT_RETRY, "retry_delay_seconds": 0})
    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise error
        return "done"

    @flow
    def run() -> tuple[bool, str]:
        state = flaky(return_state=True)
        outcome = state.result(raise_on_failure=False)
        return state.is_completed(), type(outcome).__name__

    completed, outcome = run()
    assert len(calls) == runs
    assert completed == (runs == 2)
    assert outcome == ("str" if runs == 2 else type(error).__name__)
