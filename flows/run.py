"""Running a flow from the command line with a progress bar.

The bar follows the run's progress artifacts (the same numbers the Prefect UI shows): each reports
``label: done/total`` for one slide and stage, and the bar shows their sum.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from uuid import UUID

_COUNTS = re.compile(r"(\d+)/(\d+)\s*$")


def progress_counts(descriptions: list[str]) -> tuple[int, int]:
    """Sum ``done/total`` over progress-artifact descriptions such as ``"SYN1_1 thresholds: 12/24"``."""
    done = total = 0
    for text in descriptions:
        match = _COUNTS.search(text or "")
        if match:
            done += int(match.group(1))
            total += int(match.group(2))
    return done, total


def _read_progress(run_id: UUID) -> tuple[int, int]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), type=ArtifactFilterType(any_=["progress"])
            ),
            limit=200,
            offset=0,
        )
    return progress_counts(newest_per_key(artifacts))


def newest_per_key(artifacts: list[Any]) -> list[str]:
    """Descriptions of the newest progress artifact of each key (unkeyed ones all count): a task that
    Dask ran again after losing its worker made a second artifact under the same key."""
    latest: dict[Any, str] = {}
    for artifact in sorted(artifacts, key=lambda a: a.created):
        latest[artifact.key or artifact.id] = artifact.description or ""
    return list(latest.values())


def _load_prefect_collections() -> None:
    # Prefect loads its installed collections (prefect-aws: ~1 s) the first time a task's context is
    # rebuilt on a worker, which every run does; cached after the first time
    from prefect.plugins import load_prefect_collections

    load_prefect_collections()


def _import_report_pages() -> None:
    # matplotlib (~1 s), for the previews and reports every job publishes at its end
    from ..core import report_pages  # noqa: F401


#: what a run does later anyway, done while the command waits for the API server it launched
_WARM_UPS = (_load_prefect_collections, _import_report_pages)


def _heartbeats_where_watched():
    """No flow-run heartbeats on the temporary API server this command launched: it ends with the
    command, so nothing could ever see a heartbeat stop, and the run waits about a second at its end for
    the heartbeat thread's one-second sleep. A configured, lasting API (``PREFECT_API_URL``) gets them."""
    from contextlib import nullcontext

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from .api_server import launched_api_server

    if not launched_api_server():
        return nullcontext()
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def run_with_progress(flow, parameters: dict[str, Any], task_runner, unit: str) -> Any:
    """Call ``flow(**parameters)`` on ``task_runner`` while a progress bar counts its ``unit`` (fields,
    slides…)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .api_server import wait_for_api

    wait_for_api(_WARM_UPS)  # the API server the command launched early, if it did, is up by now or nearly
    run: dict[str, UUID] = {}

    def remember_run(_flow, flow_run, _state) -> None:
        run["id"] = flow_run.id

    stop = threading.Event()
    columns = (
        TextColumn(f"[bold]{flow.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        bar_task = bar.add_task(flow.name, total=None)

        def follow() -> None:
            while not stop.wait(0.5):
                if "id" not in run:
                    continue
                try:
                    done, total = _read_progress(run["id"])
                except Exception:  # the API may not be up yet or already gone; the next poll retries
                    continue
                if total:
                    bar.update(bar_task, completed=done, total=total)

        follower = threading.Thread(target=follow, name="shadeflow-progress", daemon=True)
        follower.start()
        try:
            with _heartbeats_where_watched():
                return flow.with_options(task_runner=task_runner, on_running=[remember_run])(**parameters)
        finally:
            stop.set()
            follower.join(timeout=5)
            if "id" in run:
                try:
                    done, total = _read_progress(run["id"])
                    if total:
                        bar.update(bar_task, completed=done, total=total)
                except Exception:
                    pass
