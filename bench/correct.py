"""Tile correction throughput and memory against a plain zarr copy of the same tile.

    .venv/bin/python bench/correct.py [--repeat 3] [--out bench-output] [--no-large]

Generates (once, then reuses) a synthetic 128×1024×1024 uint16 OME-Zarr tile (chunks 64×256×256,
blosc-zstd) with a planted flatfield, and two 4× larger ones: 4× the planes (512×1024×1024) and 4×
the plane area (128×2048×2048). Starts the cluster the flows would get on this machine and times,
side by side on that cluster:

* **correct** — exactly what the ``correct`` flow's tile task runs (``plan_tile`` + ``run_tile``):
  reference flatfield file, ``--background 100``, ``--levels 4``; one Dask graph reads each chunk
  once, corrects it, writes level 0 and builds levels 1–3 from it, then the metadata and marker;
* **copy** — the same tile read with ``dask.array.from_zarr`` and written with the same codec and
  chunks (level 0 only, no metadata);
* **correct, background estimate** — the same as *correct* with ``--background estimate``.

Each is the best of ``--repeat`` runs. It prints wall times, the ratio correct ÷ copy, MB/s
(uncompressed input bytes per second) and the peak RSS of the process (the one worker runs in it)
during each measurement, for both tile sizes; each size runs in its own process.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import threading
import time

import psutil

TILES = {"128x1024x1024": (128, 1024, 1024), "512x1024x1024": (512, 1024, 1024), "128x2048x2048": (128, 2048, 2048)}
CHUNKS = (64, 256, 256)


class PeakRSS:
    """Samples this process's RSS every 20 ms; :meth:`measure` gives the peak above the start."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self._peak = 0
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._peak = max(self._peak, self._process.memory_info().rss)

    def start(self) -> int:
        base = self._process.memory_info().rss
        self._peak = base
        return base

    @property
    def peak(self) -> int:
        return self._peak


def tile(out: str, name: str, shape: tuple[int, int, int], client) -> tuple[str, str]:
    """The benchmark tile (generated once) and its planted flatfield file."""
    from shadeflow.core.synth_tiles import SynthTileConfig, flatfield_truth_url, write_synthetic_tile

    url = os.path.join(out, "correct-tiles", f"{name}.ome.zarr")
    config = SynthTileConfig(shape=shape, chunks=CHUNKS, seed=0)
    done = url + ".done"  # holds the config the tile was made with
    if not os.path.exists(done) or open(done).read() != repr(config):
        shutil.rmtree(url, ignore_errors=True)
        start = time.perf_counter()
        write_synthetic_tile(url, config, compute=lambda *c: client.compute(list(c), sync=True))
        with open(done, "w") as handle:
            handle.write(repr(config))
        print(f"generated {name} in {time.perf_counter() - start:.0f} s → {url}")
    return url, flatfield_truth_url(url)


def run_correct(url: str, flatfield: str, out: str, client, background: str) -> float:
    from shadeflow.core.corrected_tile import CorrectRequest, plan_tile, run_tile

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    plan = plan_tile(url, CorrectRequest(out=out, flatfield=flatfield, background=background, levels=4))
    run_tile(plan, compute=lambda *c: client.compute(list(c), sync=True), log=lambda m: None)
    return time.perf_counter() - start


def run_copy(url: str, out: str, client) -> float:
    import dask.array as da

    from shadeflow.core.ome_zarr_io import create_image_group, create_level_array, open_image

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    image = open_image(url)
    level = image.levels[0]
    group = create_image_group(os.path.join(out, "copy.zarr"), image.zarr_format, {})
    target = create_level_array(group, "0", level.shape, level.chunks, level.dtype, image.axis_names)
    client.compute(da.store(da.from_zarr(image.array(level)), target, lock=False, compute=False), sync=True)
    return time.perf_counter() - start


def measure(rss: PeakRSS, repeat: int, fn) -> tuple[float, float]:
    """(best seconds, peak RSS of the process in MiB) over ``repeat`` runs."""
    best, peak = float("inf"), 0.0
    for _ in range(repeat):
        rss.start()
        best = min(best, fn())
        peak = max(peak, rss.peak / 2**20)
    return best, peak


def bench_tile(name: str, out: str, repeat: int) -> None:
    """Measure one tile size (run in its own process, so its peak RSS is its own)."""
    from distributed import Client, LocalCluster

    from shadeflow.infra.cluster import local_cluster_kwargs
    from shadeflow.infra.sizing import size_from_settings

    size, _ = size_from_settings()
    rss = PeakRSS()
    scratch = os.path.join(out, f"correct-scratch-{name}")
    with LocalCluster(**local_cluster_kwargs(size)) as cluster, Client(cluster) as client:
        url, flatfield = tile(out, name, TILES[name], client)
        run_copy(url, scratch, client)  # warm the page cache so every measurement reads from memory
        results = {
            "copy": measure(rss, repeat, lambda: run_copy(url, scratch, client)),
            "correct": measure(rss, repeat, lambda: run_correct(url, flatfield, scratch, client, "100")),
            "estimate": measure(rss, repeat, lambda: run_correct(url, flatfield, scratch, client, "estimate")),
        }
    shutil.rmtree(scratch, ignore_errors=True)
    mb = 2 * math.prod(TILES[name]) / 1e6
    (t_copy, m_copy), (t_corr, m_corr), (t_est, m_est) = results["copy"], results["correct"], results["estimate"]
    print(f"tile {name} uint16 ({mb:.0f} MB), chunks {'×'.join(map(str, CHUNKS))}, --levels 4, reference flatfield")
    print(f"  correct (--background 100)      : {t_corr:6.2f} s  {mb / t_corr:5.0f} MB/s  peak RSS {m_corr:5.0f} MiB")
    print(f"  plain zarr copy (level 0 only)  : {t_copy:6.2f} s  {mb / t_copy:5.0f} MB/s  peak RSS {m_copy:5.0f} MiB")
    print(f"  ratio correct ÷ copy            : {t_corr / t_copy:6.2f}  (target ≤ 1.5)")
    print(f"  correct (--background estimate) : {t_est:6.2f} s  {mb / t_est:5.0f} MB/s  peak RSS {m_est:5.0f} MiB  (÷ copy {t_est / t_copy:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-output")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-large", action="store_true", help="only the 128×1024×1024 tile")
    parser.add_argument("--tile", choices=list(TILES), help=argparse.SUPPRESS)  # one size, in a child process
    args = parser.parse_args()
    if args.tile:
        bench_tile(args.tile, args.out, args.repeat)
        return

    from shadeflow.infra.sizing import size_from_settings

    size, source = size_from_settings()
    print(f"cluster: {size.describe()} (memory from {source}); load average {os.getloadavg()[0]:.2f} at start")
    print("peak RSS: the whole process (the Dask worker runs in it), sampled every 20 ms; best of", args.repeat, "runs\n")
    for name in list(TILES)[:1] if args.no_large else list(TILES):
        subprocess.run([sys.executable, __file__, "--tile", name, "--out", args.out, "--repeat", str(args.repeat)], check=True)
        print()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
