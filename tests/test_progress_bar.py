"""The command line's progress bar counts the newest progress artifact of each key (a task that Dask
ran again after losing its worker makes a second one under the same key)."""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import get_run_context

from shadeflow.flows.run import _read_progress

pytestmark = pytest.mark.usefixtures("prefect_server")


@flow
def two_attempts_of_one_task():
    first = create_progress_artifact(0.0, key="merge-slide-stacks", description="slides merged: 0/4")
    update_progress_artifact(first, 50.0, description="slides merged: 2/4")  # the attempt whose worker died
    # Dask's rerun
    create_progress_artifact(100.0, key="merge-slide-stacks", description="slides merged: 4/4")
    create_progress_artifact(50.0, key="thresholds", description="thresholds: 1/2")
    return get_run_context().flow_run.id


def test_a_task_run_again_is_counted_once():
    assert _read_progress(two_attempts_of_one_task()) == (5, 6)


def test_a_progress_update_that_fails_does_not_fail_the_task(monkeypatch, caplog):
    """Seen after a worker loss: the rerun task's Prefect client was closed when it published progress."""
    import shadeflow.tasks.progress as progress_module

    def closed(*args, **kwargs):
        raise RuntimeError("Cannot send a request, as the client has been closed.")

    monkeypatch.setattr(progress_module, "update_progress_artifact", closed)

    @flow
    def counting() -> int:
        progress = progress_module.Progress("fields", 3, key="fields")
        for _ in range(3):
            progress.advance()
            progress.publish(force=True)
        return progress.done

    assert counting() == 3
    assert sum("progress not shown in the UI" in r.getMessage() for r in caplog.records) == 1
