"""One memory setting sizes the cluster: a pure function from settings to workers, threads and limits.

The memory comes from ``SHADEFLOW_MEMORY`` (bytes or a size such as ``16GiB``), else ``CO_MEMORY``
(bytes, as Code Ocean sets it), else the machine's memory as the cgroup allows it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from dask.utils import format_bytes, parse_bytes

GIB = 2**30
#: smallest worker worth starting: a Vectra field's buffers plus one ~1 GiB partial stack
MIN_WORKER_MEMORY = 2 * GIB


class SettingsError(ValueError):
    """A cluster setting that cannot work. The message names the setting and the value."""


@dataclass(frozen=True)
class ClusterSize:
    """How a cluster is laid out."""

    n_workers: int
    threads_per_worker: int
    memory_per_worker: int  # bytes; the Dask worker's memory limit

    @property
    def processes(self) -> bool:
        """One worker runs threads in this process (stacks merge without copies); several are processes."""
        return self.n_workers > 1

    @property
    def total_threads(self) -> int:
        return self.n_workers * self.threads_per_worker

    def describe(self) -> str:
        return (
            f"{self.n_workers} worker{'s' if self.n_workers != 1 else ''} × {self.threads_per_worker} "
            f"thread{'s' if self.threads_per_worker != 1 else ''}, {format_bytes(self.memory_per_worker)} per worker"
        )


def parse_size(value: str | int, setting: str, bytes_only: bool = False) -> int:
    """Bytes from ``16GiB``, ``500MB`` or a plain integer; a clear error naming ``setting`` otherwise."""
    text = str(value).strip()
    try:
        size = int(text) if bytes_only else parse_bytes(text)
    except (ValueError, TypeError):
        expected = "a whole number of bytes" if bytes_only else "bytes or a size like 16GiB"
        raise SettingsError(f"{setting}={value!r} is not {expected}") from None
    if size <= 0:
        raise SettingsError(f"{setting}={value!r} must be positive")
    return size


def machine_memory() -> int:
    """The memory this process may use: the machine's, or the cgroup limit if lower."""
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT)


def machine_cpus() -> int:
    """CPUs this process may use (affinity and cgroup quota aware)."""
    from dask.system import CPU_COUNT

    return int(CPU_COUNT)


def memory_setting(env: Mapping[str, str] | None = None, override: str | int | None = None) -> tuple[int, str]:
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
    cpus: int,
    workers: int | None = None,
    worker_memory: int | None = None,
    worker_cpus: int | None = None,
    min_worker_memory: int = MIN_WORKER_MEMORY,
) -> ClusterSize:
    """Workers, threads and per-worker memory from the total memory and CPUs.

    By default one worker uses every CPU as a thread and all the memory. ``workers`` fixes the number
    of workers; ``worker_memory`` / ``worker_cpus`` fix each worker's share and derive the number.

    Raises
    ------
    SettingsError
        Zero or negative CPUs or workers, or less memory per worker than ``min_worker_memory``.
    """
    if cpus < 1:
        raise SettingsError(f"need at least one CPU, got {cpus}")
    for name, value in (("workers", workers), ("SHADEFLOW_WORKER_CPUS", worker_cpus)):
        if value is not None and value < 1:
            raise SettingsError(f"{name} must be at least 1, got {value}")
    if memory < min_worker_memory:
        raise SettingsError(f"memory {format_bytes(memory)} is below one worker's minimum of {format_bytes(min_worker_memory)}")
    if workers is not None:
        n = workers
    elif worker_memory is not None:
        if worker_memory < min_worker_memory:
            raise SettingsError(f"SHADEFLOW_WORKER_MEMORY {format_bytes(worker_memory)} is below one worker's minimum of {format_bytes(min_worker_memory)}")
        n = max(1, min(memory // worker_memory, max(1, cpus // (worker_cpus or 1))))
    elif worker_cpus is not None:
        n = max(1, cpus // worker_cpus)
    else:
        n = 1
    per_worker = worker_memory if worker_memory is not None and workers is None else memory // n
    if per_worker < min_worker_memory:
        raise SettingsError(f"{format_bytes(memory)} for {n} workers leaves {format_bytes(per_worker)} each, below the minimum of {format_bytes(min_worker_memory)}")
    threads = worker_cpus if worker_cpus is not None else max(1, cpus // n)
    return ClusterSize(n_workers=int(n), threads_per_worker=int(threads), memory_per_worker=int(per_worker))


def size_from_settings(env: Mapping[str, str] | None = None, memory: str | int | None = None, workers: int | None = None) -> tuple[ClusterSize, str]:
    """:func:`size_cluster` from the environment (and CLI overrides); also says where the memory came from."""
    env = os.environ if env is None else env
    total, source = memory_setting(env, memory)
    worker_memory = parse_size(env["SHADEFLOW_WORKER_MEMORY"], "SHADEFLOW_WORKER_MEMORY") if env.get("SHADEFLOW_WORKER_MEMORY") else None
    worker_cpus = None
    if env.get("SHADEFLOW_WORKER_CPUS"):
        try:
            worker_cpus = int(env["SHADEFLOW_WORKER_CPUS"])
        except ValueError:
            raise SettingsError(f"SHADEFLOW_WORKER_CPUS={env['SHADEFLOW_WORKER_CPUS']!r} is not a whole number") from None
    return size_cluster(total, machine_cpus(), workers=workers, worker_memory=worker_memory, worker_cpus=worker_cpus), source
