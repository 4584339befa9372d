"""Serve every flow as a deployment with its schedules, from this machine, without a work pool.

``shadeflow serve`` (or ``python -m shadeflow.deployments.serve``) reads the deployments of
``prefect.yaml`` — names, descriptions, tags, parameters and schedules; the ``work_pool`` sections are
for ``prefect deploy`` and are ignored here — and serves them all from one process. Runs started from
the UI, by ``run_deployment`` or by a schedule then execute here, each in a subprocess with its own
Dask cluster sized from this machine's settings (``SHADEFLOW_MEMORY`` …).

Serving needs a Prefect server (``prefect server start``) and ``PREFECT_API_URL`` pointing at it;
the temporary server of a plain flow call would vanish with this process, and with it the UI.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import InputError

PREFECT_FILE = Path(__file__).with_name("prefect.yaml")
#: runs at once by default: each local run sizes its cluster from the whole machine
DEFAULT_LIMIT = 1


class ServeError(InputError):
    """The deployments cannot be served; the message says why and what to do."""


@dataclass(frozen=True)
class DeploymentEntry:
    """One deployment of ``prefect.yaml``, as serving needs it."""

    name: str
    entrypoint: str  # a module path, e.g. shadeflow.flows.meanimage.meanimage
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: list[dict[str, Any]] = field(default_factory=list)


def read_deployments(prefect_file: str | Path | None = None) -> list[DeploymentEntry]:
    """The deployments listed in ``prefect_file`` (default: the packaged ``prefect.yaml``)."""
    path = Path(prefect_file) if prefect_file else PREFECT_FILE
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ServeError(f"{path} does not exist") from None
    entries = []
    for number, spec in enumerate(config.get("deployments") or [], start=1):
        if not spec.get("name") or not spec.get("entrypoint"):
            raise ServeError(f"{path}: deployment {number} needs a name and an entrypoint")
        entries.append(
            DeploymentEntry(
                name=spec["name"],
                entrypoint=spec["entrypoint"],
                description=spec.get("description"),
                tags=list(spec.get("tags") or []),
                parameters=dict(spec.get("parameters") or {}),
                schedules=list(spec.get("schedules") or []),
            )
        )
    if not entries:
        raise ServeError(f"{path} lists no deployments")
    return entries


def schedule(spec: dict[str, Any]):
    """A Prefect schedule from a ``schedules:`` item of ``prefect.yaml`` (cron, interval or rrule)."""
    from prefect.schedules import Cron, Interval, RRule

    common = {"timezone": spec.get("timezone"), "active": spec.get("active", True)}
    if "cron" in spec:
        return Cron(spec["cron"], day_or=spec.get("day_or", True), **common)
    if "interval" in spec:
        anchor = spec.get("anchor_date")
        if isinstance(anchor, str):
            anchor = dt.datetime.fromisoformat(anchor)
        return Interval(dt.timedelta(seconds=float(spec["interval"])), anchor_date=anchor, **common)
    if "rrule" in spec:
        return RRule(spec["rrule"], **common)
    raise ServeError(f"schedule {spec!r} has none of cron, interval, rrule")


def load_flow(entrypoint: str):
    """The flow object an entrypoint names (module path or ``file.py:function``)."""
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False)


def runner_deployments(prefect_file: str | Path | None = None, only: list[str] | None = None) -> list:
    """``RunnerDeployment`` objects for the deployments of ``prefect_file`` (``only``: ``flow/name`` list)."""
    from prefect.deployments.runner import EntrypointType

    deployments = []
    for entry in read_deployments(prefect_file):
        flow = load_flow(entry.entrypoint)
        if only is not None and f"{flow.name}/{entry.name}" not in only:
            continue
        deployments.append(
            flow.to_deployment(
                name=entry.name,
                description=entry.description,
                tags=entry.tags,
                parameters=entry.parameters,
                schedules=[schedule(s) for s in entry.schedules],
                entrypoint_type=EntrypointType.MODULE_PATH,  # the package is installed: no file paths needed
            )
        )
    if only is not None:
        missing = sorted(set(only) - {f"{d.flow_name}/{d.name}" for d in deployments})
        if missing:
            raise ServeError(f"no deployment named {', '.join(missing)} in {prefect_file or PREFECT_FILE}")
    return deployments


def check_api_url(url: str | None) -> str:
    """The Prefect server to serve to; an error explaining how to get one if there is none."""
    if not url:
        raise ServeError(
            "serving needs a Prefect server: start one with `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (or point it at your server)"
        )
    return url


def ui_url(api_url: str, configured: str | None = None) -> str:
    """The UI's address: ``PREFECT_UI_URL`` when set, else the API's without its ``/api``."""
    return (configured or api_url.rstrip("/").removesuffix("/api")).rstrip("/")


class RunLog(threading.Thread):
    """One line when a run of the served deployments starts and one when it ends, with its UI address.

    Prefect's runner itself says nothing while it runs flows; a person watching ``shadeflow serve``
    should see what it does. It polls the API every ``interval`` seconds (runs end on their own
    clock, and Prefect offers the runner no hook for them)."""

    def __init__(self, names: list[str], ui: str, interval: float = 2.0, echo=print):
        super().__init__(name="shadeflow-run-log", daemon=True)
        self.names, self.ui, self.interval, self.echo = names, ui, interval, echo
        self.since = dt.datetime.now(dt.UTC)
        self.stopped = threading.Event()
        self.started: set = set()
        self.ended: set = set()

    def run(self) -> None:
        from prefect.client.orchestration import get_client

        ids: dict = {}
        with get_client(sync_client=True) as client:
            while not self.stopped.wait(self.interval):
                try:
                    ids.update(self._deployment_ids(client, ids))
                    if ids:
                        self._report(client, ids)
                except Exception as exc:  # the log must not stop serving: say so once per failure
                    self.echo(f"run log: could not read runs from the API ({type(exc).__name__})", flush=True)

    def _deployment_ids(self, client, known: dict) -> dict:
        from prefect.exceptions import ObjectNotFound

        found = {}
        for name in self.names:
            if name in known.values():
                continue
            try:
                found[client.read_deployment_by_name(name).id] = name
            except ObjectNotFound:
                pass  # not registered yet
        return found

    def _report(self, client, ids: dict) -> None:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=list(ids))), limit=200
        )
        for run in runs:
            state = run.state
            began = run.start_time
            if state is None or began is None or began < self.since:
                continue
            where = f"{ids[run.deployment_id]} run '{run.name}'"
            url = f"{self.ui}/runs/flow-run/{run.id}"
            if run.id not in self.started:
                self.started.add(run.id)
                self.echo(f"started {where} → {url}", flush=True)
            if state.is_final() and run.id not in self.ended:
                self.ended.add(run.id)
                took = f" after {run.total_run_time.total_seconds():.0f} s" if run.total_run_time else ""
                self.echo(f"ended {where}: {state.name}{took} → {url}", flush=True)


def serve_all(
    prefect_file: str | Path | None = None, limit: int | None = DEFAULT_LIMIT, only: list[str] | None = None
) -> None:
    """Serve every deployment of ``prefect_file`` with its schedules until interrupted.

    ``limit`` caps the runs executing at once (default 1: a local run sizes its cluster from the
    whole machine); ``None`` removes the cap. Each run's start and end are printed with its UI address.
    """
    from prefect import serve
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    api = check_api_url(settings.api.url)
    deployments = runner_deployments(prefect_file, only)
    log = RunLog([f"{d.flow_name}/{d.name}" for d in deployments], ui_url(api, settings.ui_url))
    log.start()
    try:
        serve(*deployments, limit=limit)
    finally:
        log.stopped.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shadeflow.deployments.serve", description=serve_all.__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--prefect-file", default=None, help="prefect.yaml to read (default: the packaged one)"
    )
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="most runs at once (0: no limit)")
    parser.add_argument(
        "--only", action="append", default=None, help="serve only this flow/deployment (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        serve_all(args.prefect_file, limit=args.limit or None, only=args.only)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
