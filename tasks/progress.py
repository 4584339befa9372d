"""Progress of per-field Dask work, shown in the Prefect UI, the run's logs and the CLI's progress bar.

A task that runs many fields on the cluster creates a Prefect *progress artifact* for its slide and
updates it as fields finish. Fields report from the workers as Dask events (``log_event``), so the
count is per field even when fields run in large batches; the task's own thread pulls the count and
talks to the Prefect API.
"""

from __future__ import annotations

import re
import threading
import time
import uuid

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

MIN_UPDATE_SECONDS = 1.0


def artifact_key(*parts: str) -> str:
    """A valid artifact key (lowercase letters, digits and dashes)."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


#: one stage of a run's work as its progress artifact shows it: label, total units, artifact key
Stage = tuple[str, int, str]


def announce(stages: list[Stage]) -> None:
    """Progress artifacts at 0 for every stage a run will go through, made once the run is planned and
    before any stage starts: the sum of their totals, which the command line's bar shows, is known
    from the start (it grew as stages began, and the bar jumped backwards). Each stage's task then
    reports under the same key (the newest artifact of a key counts)."""
    for label, total, key in stages:
        create_progress_artifact(0.0, key=key, description=f"{label}: 0/{total}")


def _announced(key: str | None):
    """The id of the progress artifact under ``key`` that this flow run announced, if any."""
    if key is None:
        return None
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
        ArtifactFilterType,
    )
    from prefect.client.schemas.sorting import ArtifactSort
    from prefect.runtime import flow_run

    if not flow_run.id:
        return None
    try:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[key]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
                    type=ArtifactFilterType(any_=["progress"]),
                ),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
    except Exception:  # noqa: BLE001 — a progress display must never fail the work it counts
        return None
    return found[0].id if found else None


class Progress:
    """Counts finished units of one task towards ``total`` and reports them."""

    def __init__(self, label: str, total: int, key: str | None = None):
        self.label = label
        self.total = max(1, total)
        self.done = 0
        self._lock = threading.Lock()
        self._last_update = 0.0
        self._last_logged_decile = -1
        self._warned = False
        description = f"{label}: 0/{total}"
        self._artifact = None
        try:
            announced = _announced(key)
            if announced is not None:  # the flow made it when it planned the run: report there
                update_progress_artifact(announced, 0.0, description=description)
                self._artifact = announced
            else:
                self._artifact = create_progress_artifact(0.0, key=key, description=description)
        except Exception as exc:  # noqa: BLE001 — a progress display must never fail the work it counts
            # seen on worker processes of an existing scheduler that outlive a run's tasks: another task
            # run in the same process closed the Prefect client this one shares (bench/scaling.py)
            self._warn(exc)
        self.topic = f"shadeflow-progress-{uuid.uuid4().hex}"

    def advance(self, n: int = 1) -> None:
        """Count ``n`` more units (thread-safe)."""
        with self._lock:
            self.done = min(self.total, self.done + n)

    def publish(self, force: bool = False) -> None:
        """Send the count to the Prefect API and the log (rate-limited); call from the task's thread."""
        now = time.monotonic()
        if not force and now - self._last_update < MIN_UPDATE_SECONDS:
            return
        self._last_update = now
        done, total = self.done, self.total
        try:
            if self._artifact is not None:
                update_progress_artifact(
                    self._artifact, 100.0 * done / total, description=f"{self.label}: {done}/{total}"
                )
        except Exception as exc:  # noqa: BLE001 — a progress display must never fail the work it counts
            # seen after a lost worker: Dask reran the task and its Prefect client was already closed
            self._warn(exc)
        decile = int(10 * done / total)
        if decile != self._last_logged_decile:
            self._last_logged_decile = decile
            get_run_logger().info("%s: %d/%d", self.label, done, total)

    def _warn(self, exc: Exception) -> None:
        """Log (once) that the UI does not show this progress."""
        if not self._warned:
            self._warned = True
            get_run_logger().warning(
                "%s: progress not shown in the UI (%s: %s); the work goes on",
                self.label,
                type(exc).__name__,
                exc,
            )

    def event_handler(self, event) -> None:
        """Handler for the Dask events workers send to :attr:`topic` (one per finished field)."""
        self.advance(1)
