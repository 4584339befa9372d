"""Cluster classes that record what the cluster factory does with them, for ``CLUSTER_CLASSES``.

Both run a real in-process ``distributed.LocalCluster`` underneath, so flows really execute on them:

- :class:`RecordingLocalCluster` takes the LocalCluster arguments the factory computed;
- :class:`RecordingKubeCluster` takes exactly the keyword arguments of dask-kubernetes' operator
  ``KubeCluster`` the factory passes (the DaskCluster spec among them) and records ``adapt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distributed import LocalCluster


@dataclass
class Record:
    created: list[dict[str, Any]] = field(default_factory=list)  # keyword arguments, one per cluster
    adapted: list[tuple[int | None, int | None]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # names of the clusters, in closing order
    events: list[str] = field(default_factory=list)


def recording_classes(record: Record, fail_adapt: bool = False) -> dict[str, type]:
    class RecordingLocalCluster(LocalCluster):
        def __init__(self, **kwargs: Any):
            record.created.append(dict(kwargs))
            record.events.append("create")
            # keep the test in one process, whatever the sizing said
            super().__init__(**{**kwargs, "processes": False, "n_workers": 1, "dashboard_address": ":0"})

        def close(self, *args: Any, **kwargs: Any):
            if self.status.name not in ("closed", "closing"):
                record.closed.append(self.name)
                record.events.append("close")
            return super().close(*args, **kwargs)

    class RecordingKubeCluster(LocalCluster):
        def __init__(
            self, *, custom_cluster_spec: dict, namespace: str | None, shutdown_on_close: bool, quiet: bool
        ):
            record.created.append(
                {
                    "custom_cluster_spec": custom_cluster_spec,
                    "namespace": namespace,
                    "shutdown_on_close": shutdown_on_close,
                    "quiet": quiet,
                }
            )
            record.events.append("create")
            super().__init__(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0")
            self.spec_name = custom_cluster_spec["metadata"]["name"]

        def adapt(self, minimum: int | None = None, maximum: int | None = None, **kwargs: Any):
            record.adapted.append((minimum, maximum))
            record.events.append("adapt")
            if fail_adapt:
                raise RuntimeError("the DaskAutoscaler could not be created")

        def close(self, *args: Any, **kwargs: Any):
            if self.status.name not in ("closed", "closing"):
                record.closed.append(self.spec_name)
                record.events.append("close")
            return super().close(*args, **kwargs)

    return {"local": RecordingLocalCluster, "kubernetes": RecordingKubeCluster}


FAKE_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: "https://127.0.0.1:1"}
contexts:
- name: test
  context: {cluster: test, user: test, namespace: shadeflow}
current-context: test
users:
- name: test
  user: {token: not-a-real-token}
"""
