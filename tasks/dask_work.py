"""Running per-field work on the flow run's Dask cluster from inside a Prefect task."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from functools import partial
from typing import Any, TypeVar

from distributed import Client, Future, wait

from shadeflow.tasks.progress import Progress

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


def _log_field_event(topic: str, key: str) -> None:
    from distributed import get_worker

    get_worker().log_event(topic, key)


def field_reporter(progress: Progress) -> Callable[[str], None]:
    """A picklable callback for workers: one Dask event on the progress topic per finished field."""
    return partial(_log_field_event, progress.topic)


@contextmanager
def field_events(client: Client, progress: Progress):
    """Count the field events workers send to ``progress.topic`` while the block runs."""
    client.subscribe_topic(progress.topic, progress.event_handler)
    try:
        yield
    finally:
        client.unsubscribe_topic(progress.topic)


def reduce_as_completed(client: Client, futures: Iterable[Future], combine: Callable[[T, T], T], progress: Progress | None = None) -> T:
    """Merge results pairwise on the cluster as they finish (a tree reduction), publishing progress.

    Memory stays at a few partial results however many there are. The first failure is raised.
    """
    pending: set[Future] = set(futures)
    ready: list[Future] = []
    if not pending:
        raise ValueError("nothing to reduce")
    while pending or len(ready) > 1:
        if pending:
            try:
                done, still = wait(pending, timeout=1.0, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done, still = set(), pending
            pending = set(still)
            for future in done:
                if future.status == "error":
                    for other in pending:
                        other.cancel()
                    future.result()  # raises the task's exception
                ready.append(future)
        while len(ready) >= 2:
            a, b = ready.pop(), ready.pop()
            pending.add(client.submit(combine, a, b, pure=False))
        if progress is not None:
            progress.publish()
    if progress is not None:
        progress.publish(force=True)
    return ready[0].result()


def scatter(client: Client, value: Any) -> Future:
    """Send ``value`` to the workers once, to be shared by many Dask tasks."""
    return client.scatter(value, broadcast=True, hash=False)
