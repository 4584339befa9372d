"""Running per-field work on the flow run's Dask cluster from inside a Prefect task."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from distributed import Client, Future, wait

if TYPE_CHECKING:  # Prefect is not needed to run a graph
    from .progress import Progress

T = TypeVar("T")


@contextmanager
def cluster_client():
    """A client for the flow run's cluster, from inside a Prefect task running on it.

    The task's worker thread is handed back to the pool while the block runs (Dask's
    ``worker_client`` secedes), so slide tasks waiting for their field tasks cannot starve them.
    prefect-dask's ``get_dask_client`` keeps the thread, which deadlocks once every thread holds a
    waiting slide.
    """
    from distributed import worker_client

    with worker_client() as client:
        yield client


class Stopped(RuntimeError):
    """A batch stopped early because another part of the same work failed."""


def _field_done(topic: str | None, stop: str | None, key: str) -> None:
    from distributed import Event, get_worker

    if topic is not None:
        get_worker().log_event(topic, key)
    if stop is not None and Event(stop).is_set():
        raise Stopped(f"stopped after field {key}: another batch failed")


def field_reporter(progress: Progress | None = None, stop: str | None = None) -> Callable[[str], None]:
    """A picklable callback workers call after each field: reports progress (a Dask event on the
    progress topic) and stops the batch once the Dask ``Event`` named ``stop`` is set."""
    return partial(_field_done, progress.topic if progress is not None else None, stop)


@contextmanager
def field_events(client: Client, progress: Progress):
    """Count the field events workers send to ``progress.topic`` while the block runs."""
    client.subscribe_topic(progress.topic, progress.event_handler)
    try:
        yield
    finally:
        client.unsubscribe_topic(progress.topic)


def reduce_tree(
    client: Client,
    futures: list[Future],
    combine: Callable[[T, T], T],
    progress: Progress | None = None,
    on_error: Callable[[], None] | None = None,
) -> T:
    """Merge results pairwise on the cluster along a fixed binary tree, publishing progress.

    The tree is fixed by the order of ``futures`` (not by which finishes first), so floating-point
    merges give bit-identical results run after run; merges start as soon as both inputs exist. Each
    input stays referenced until the merge that consumes it is done, then is released, so memory stays
    at a few partial results and no merge ever depends on a key the client gave up. (An undisturbed
    run once saw a merge cancelled for "lost dependencies", a known Dask race with trees of futures,
    dask/distributed#4612, not reproduced here; the tasks calling this retry that as transient.)
    ``futures`` is emptied: the caller must not hold the leaves either. The first failure is raised:
    without ``on_error`` the other work is cancelled; with it, ``on_error`` is called (e.g. to tell
    running tasks to stop) and the rest is waited for, so nothing still writes when this returns.
    """
    level = list(futures)
    futures.clear()  # the tree owns the leaves now
    if not level:
        raise ValueError("nothing to reduce")
    pending = set(level)
    inputs: dict[Future, tuple[Future, Future]] = {}  # a merge -> the inputs it holds until done
    depth = 0
    while len(level) > 1:
        depth += 1
        # merges outrank new leaves: a worker merges what is ready before loading more partial results
        merged = []
        for i in range(0, len(level) - 1, 2):
            merge = client.submit(combine, level[i], level[i + 1], pure=False, priority=100 + depth)
            inputs[merge] = (level[i], level[i + 1])
            merged.append(merge)
        level = merged + level[len(merged) * 2 :]
        pending.update(merged)
    final = level.pop()
    while pending:
        try:
            done, still = wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done, still = set(), pending
        pending = set(still)
        failed = next((f for f in done if f.status == "error"), None)
        if failed is not None:
            # fetch the task's own exception before cancelling: a cancelled dependent would
            # otherwise surface as a bare FutureCancelledError instead of the field's error
            error = failed.exception()
            if on_error is None:
                for other in pending:
                    other.cancel()
            else:
                on_error()
                wait(list(pending))  # running tasks cannot be killed: let them stop
            raise error
        for future in done:
            inputs.pop(future, None)  # a finished merge no longer needs its inputs kept
        del done, still
        if progress is not None:
            progress.publish()
    if progress is not None:
        progress.publish(force=True)
    return final.result()


def scatter(client: Client, value: Any) -> Future:
    """Send ``value`` to the workers once, to be shared by many Dask tasks.

    Copying it to every worker is an optimisation: when a worker leaves while the copies are made
    (distributed's ``replicate`` then fails, e.g. ``ValueError: Sample larger than population``, or
    with a closed connection), the value is scattered once more without copies and the workers
    fetch it when they need it, instead of failing the slide.
    """
    try:
        return client.scatter(value, broadcast=True, hash=False)
    except (ValueError, OSError):
        return client.scatter(value, hash=False)


def progress_compute(client: Client, progress: Progress):
    """``compute(*collections)`` on the cluster that publishes progress while it waits."""

    def compute(*collections):
        futures = client.compute(list(collections))
        while True:
            try:
                wait(futures, timeout=1.0)
                break
            except TimeoutError:
                progress.publish()
        progress.publish()
        try:
            return client.gather(futures)
        except BaseException:
            # a failed block: stop what is queued and let what is running finish before the caller
            # cleans up, so that no block writes into an output after it was removed
            client.cancel(futures)
            _settle(client, {str(key) for c in collections for key in c.__dask_graph__()})
            raise

    return compute


def _settle(client: Client, keys: set[str], bound: float = 30.0) -> None:
    """Wait (at most ``bound`` seconds) until no task of ``keys`` runs on the cluster (the calling
    Prefect task itself may be one of the cluster's running tasks: only these keys count)."""
    import time

    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if not any(str(key) in keys for running in client.processing().values() for key in running):
            return
        time.sleep(0.1)
