"""One memory setting sizes the cluster: a pure function from settings to workers, threads and limits.

The memory comes from ``SHADEFLOW_MEMORY`` (bytes or a size such as ``16GiB``; Kubernetes' ``16Gi``
also works), else ``CO_MEMORY`` (bytes, as Code Ocean sets it), else the machine's memory as the
cgroup allows it. ``SHADEFLOW_WORKER_MEMORY`` and ``SHADEFLOW_WORKER_CPUS`` fix one worker's share.

A local cluster is bounded by this machine's CPUs. A Kubernetes cluster brings its CPUs with each
worker pod, so there the worker size (default :data:`KUBE_WORKER_MEMORY` and :data:`KUBE_WORKER_CPUS`)
and the memory alone decide the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from dask.utils import format_bytes, parse_bytes

from ..core.errors import InputError

GIB = 2**30
#: smallest worker worth starting: a Vectra field's buffers plus one ~1 GiB partial stack
MIN_WORKER_MEMORY = 2 * GIB
#: default Kubernetes worker pod: 2 threads × ~1.5 GiB per Vectra field plus ~1 GiB of partial stack
#: is ~4 GiB, which stays below Dask's 60 % spill target of 8 GiB; 4 GiB per CPU fits general-purpose nodes
KUBE_WORKER_MEMORY = 8 * GIB
KUBE_WORKER_CPUS = 2


class SettingsError(InputError):
    """A cluster setting that cannot work. The message names the setting and the value."""


@dataclass(frozen=True)
class ClusterSize:
    """How a cluster is laid out."""

    n_workers: int
    threads_per_worker: int
    memory_per_worker: int  # bytes; the Dask worker's memory limit (and a Kubernetes pod's request = limit)

    @property
    def processes(self) -> bool:
        """One worker runs threads in this process (stacks merge without copies); several are processes."""
        return self.n_workers > 1

    @property
    def total_threads(self) -> int:
        return self.n_workers * self.threads_per_worker

    @property
    def total_memory(self) -> int:
        return self.n_workers * self.memory_per_worker

    def describe(self) -> str:
        return (
            f"{self.n_workers} worker{'s' if self.n_workers != 1 else ''} × {self.threads_per_worker} "
            f"thread{'s' if self.threads_per_worker != 1 else ''}, {format_bytes(self.memory_per_worker)} "
            "per worker"
        )


def parse_size(value: str | int, setting: str, bytes_only: bool = False) -> int:
    """Bytes from ``16GiB``, ``16Gi``, ``500MB`` or a plain integer; a clear error naming ``setting``
    otherwise."""
    text = str(value).strip()
    if not text:  # dask's parse_bytes("") is 1 byte
        raise SettingsError(
            f"{setting} is empty: expected "
            f"{'a whole number of bytes' if bytes_only else 'bytes or a size like 16GiB'}"
        )
    try:
        size = int(text) if bytes_only else parse_bytes(text)
    except (ValueError, TypeError):
        expected = "a whole number of bytes" if bytes_only else "bytes or a size like 16GiB"
        raise SettingsError(f"{setting}={value!r} is not {expected}") from None
    if size <= 0:
        raise SettingsError(f"{setting}={value!r} must be positive")
    return size


def parse_count(value: str | int, setting: str) -> int:
    """A whole number of at least 1 (CPUs, workers); a clear error naming ``setting`` otherwise."""
    try:
        count = int(str(value).strip())
    except ValueError:
        raise SettingsError(f"{setting}={value!r} is not a whole number") from None
    if count < 1:
        raise SettingsError(f"{setting}={value!r} must be at least 1")
    return count


def machine_memory() -> int:
    """The memory this process may use: the machine's, or the cgroup limit if lower."""
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT)


def machine_cpus() -> int:
    """CPUs this process may use (affinity and cgroup quota aware)."""
    from dask.system import CPU_COUNT

    return int(CPU_COUNT)


def memory_setting(
    env: Mapping[str, str] | None = None, override: str | int | None = None
) -> tuple[int, str]:
    """The memory to size the cluster from, and where it came from."""
    env = os.environ if env is None else env
    if override is not None:
        return parse_size(override, "--memory"), "--memory"
    if env.get("SHADEFLOW_MEMORY"):
        return parse_size(env["SHADEFLOW_MEMORY"], "SHADEFLOW_MEMORY"), "SHADEFLOW_MEMORY"
    if env.get("CO_MEMORY"):
        return parse_size(env["CO_MEMORY"], "CO_MEMORY", bytes_only=True), "CO_MEMORY"
    return machine_memory(), "machine"


def size_cluster(
    memory: int,
    cpus: int | None,
    workers: int | None = None,
    worker_memory: int | None = None,
    worker_cpus: int | None = None,
    min_worker_memory: int = MIN_WORKER_MEMORY,
    setting: str = "memory",
) -> ClusterSize:
    """Workers, threads and per-worker memory from the total memory and CPUs.

    Local (``cpus`` given): by default one worker uses every CPU as a thread and all the memory.
    ``workers`` fixes the number of workers; ``worker_memory`` / ``worker_cpus`` fix each worker's
    share and derive the number, never more workers than the CPUs allow.

    Kubernetes (``cpus=None``: each worker pod brings its own CPUs): workers of ``worker_memory``
    (default :data:`KUBE_WORKER_MEMORY`) with ``worker_cpus`` threads (default :data:`KUBE_WORKER_CPUS`),
    as many as fit in ``memory``; a smaller ``memory`` makes one smaller worker.

    ``setting`` names the memory in error messages (e.g. ``SHADEFLOW_MEMORY='1GiB'``).

    Raises
    ------
    SettingsError
        Zero or negative CPUs or workers, or less memory per worker than ``min_worker_memory``.

    Examples
    --------
    >>> size_cluster(64 * GIB, None).describe()
    '8 workers × 2 threads, 8.00 GiB per worker'
    """
    if cpus is not None and cpus < 1:
        raise SettingsError(f"need at least one CPU, got {cpus}")
    for name, value in (("workers", workers), ("SHADEFLOW_WORKER_CPUS", worker_cpus)):
        if value is not None and value < 1:
            raise SettingsError(f"{name} must be at least 1, got {value}")
    if memory < min_worker_memory:
        raise SettingsError(
            f"{setting} {format_bytes(memory)} is below one worker's minimum of "
            f"{format_bytes(min_worker_memory)}"
        )
    if worker_memory is not None and worker_memory < min_worker_memory:
        raise SettingsError(
            f"SHADEFLOW_WORKER_MEMORY {format_bytes(worker_memory)} is below one worker's minimum of "
            f"{format_bytes(min_worker_memory)}"
        )

    if cpus is None:  # Kubernetes: the pods bring the CPUs
        threads = worker_cpus or KUBE_WORKER_CPUS
        if workers is not None:
            n, per_worker = workers, memory // workers
        else:
            per_worker = min(worker_memory or KUBE_WORKER_MEMORY, memory)
            n = memory // per_worker
    elif workers is not None:
        n, per_worker = workers, memory // workers
        threads = worker_cpus if worker_cpus is not None else max(1, cpus // n)
    elif worker_memory is not None:
        per_worker = min(worker_memory, memory)
        n = max(1, min(memory // per_worker, max(1, cpus // (worker_cpus or 1))))
        threads = worker_cpus if worker_cpus is not None else max(1, cpus // n)
    elif worker_cpus is not None:
        n = max(1, cpus // worker_cpus)
        per_worker, threads = memory // n, worker_cpus
    else:
        n, per_worker, threads = 1, memory, cpus
    if per_worker < min_worker_memory:
        raise SettingsError(
            f"{setting} {format_bytes(memory)} for {n} workers leaves {format_bytes(per_worker)} each, "
            f"below the minimum of {format_bytes(min_worker_memory)}"
        )
    return ClusterSize(n_workers=int(n), threads_per_worker=int(threads), memory_per_worker=int(per_worker))


def size_from_settings(
    env: Mapping[str, str] | None = None,
    memory: str | int | None = None,
    workers: int | None = None,
    kind: str = "local",
) -> tuple[ClusterSize, str]:
    """:func:`size_cluster` from the environment (and CLI overrides); also says where the memory came from.

    ``kind`` is ``"local"`` (bounded by this machine's CPUs) or ``"kubernetes"`` (worker pods).
    """
    env = os.environ if env is None else env
    total, source = memory_setting(env, memory)
    worker_memory = (
        parse_size(env["SHADEFLOW_WORKER_MEMORY"], "SHADEFLOW_WORKER_MEMORY")
        if env.get("SHADEFLOW_WORKER_MEMORY")
        else None
    )
    worker_cpus = (
        parse_count(env["SHADEFLOW_WORKER_CPUS"], "SHADEFLOW_WORKER_CPUS")
        if env.get("SHADEFLOW_WORKER_CPUS")
        else None
    )
    cpus = None if kind == "kubernetes" else machine_cpus()
    if source == "machine":
        setting = "this machine's memory"
    else:
        setting = f"{source}={(memory if source == '--memory' else env[source])!r}:"
    size = size_cluster(
        total, cpus, workers=workers, worker_memory=worker_memory, worker_cpus=worker_cpus, setting=setting
    )
    return size, source
