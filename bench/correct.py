"""Tile correction throughput and memory against a plain zarr copy of the same tile.

    .venv/bin/python bench/correct.py [--repeat 3] [--out bench-output] [--no-large]

Generates (once, then reuses) a synthetic 128×1024×1024 uint16 OME-Zarr tile (chunks 64×256×256,
blosc-zstd) with a planted flatfield, and two 4× larger ones: 4× the planes (512×1024×1024) and 4×
the plane area (128×2048×2048). On the cluster the flows would get on this machine it measures:

* **correct** — exactly what the ``correct`` flow's tile task runs (``plan_tile`` + ``run_tile``):
  reference flatfield file, ``--background 100``, ``--levels 4``; one Dask graph reads each chunk
  once, corrects it, writes level 0 and builds levels 1–3 from it, then the metadata and marker;
* **plain copy** — the same tile read with ``dask.array.from_zarr`` and written to a zarr array
  with the same codec and chunks and zarr's defaults otherwise (level 0 only, no metadata);
* **copy with the output's array settings** — the same, but every chunk written without zarr's
  empty-chunk check, as the corrected levels are (shows how much of the margin that setting buys);
* **correct, background estimate** — the same as *correct* with ``--background estimate``.

Times are the best of ``--repeat`` runs, interleaved in one process (so a busy moment does not hit
one kind only), after one warm-up copy (inputs are read from the page cache). Peak RSS is measured
separately: one run of each kind in a fresh process (the one Dask worker runs in it), sampled every
20 ms, minus the process's RSS once the cluster is up — so it is what the run itself needs. MB/s is
uncompressed input bytes per second.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import psutil

TILES = {
    "128x1024x1024": (128, 1024, 1024),
    "512x1024x1024": (512, 1024, 1024),
    "128x2048x2048": (128, 2048, 2048),
}
CHUNKS = (64, 256, 256)
KINDS = ("correct", "copy", "copy_every", "estimate")


class PeakRSS:
    """Samples this process's RSS every 20 ms from a background thread."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.02)

    def now(self) -> int:
        return self._process.memory_info().rss


def tile(out: str, name: str, shape: tuple[int, int, int], client) -> tuple[str, str]:
    """The benchmark tile (generated once) and its planted flatfield file."""
    from shadeflow.core.synth.tiles import SynthTileConfig, flatfield_truth_url, write_synthetic_tile

    url = os.path.join(out, "correct-tiles", f"{name}.ome.zarr")
    config = SynthTileConfig(shape=shape, chunks=CHUNKS, seed=0)
    done = url + ".done"  # holds the config the tile was made with
    if not os.path.exists(done) or pathlib.Path(done).read_text() != repr(config):
        shutil.rmtree(url, ignore_errors=True)
        start = time.perf_counter()
        write_synthetic_tile(url, config, compute=lambda *c: client.compute(list(c), sync=True))
        with open(done, "w") as handle:
            handle.write(repr(config))
        print(f"generated {name} in {time.perf_counter() - start:.0f} s → {url}", file=sys.stderr)
    return url, flatfield_truth_url(url)


def run_correct(url: str, flatfield: str, out: str, client, background: str) -> float:
    from shadeflow.core.correct.tile import CorrectRequest, plan_tile, run_tile

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    plan = plan_tile(url, CorrectRequest(out=out, flatfield=flatfield, background=background, levels=4))
    run_tile(plan, compute=lambda *c: client.compute(list(c), sync=True), log=lambda m: None)
    return time.perf_counter() - start


def run_copy(url: str, out: str, client, every_chunk: bool = False) -> float:
    """Level 0 read and written with the output's codec and chunks: with zarr's defaults (a plain
    copy), or with the corrected output's array settings (every chunk written, no empty-chunk check)."""
    import dask.array as da
    import zarr

    from shadeflow.core.io.omezarr import blosc_zstd, create_image_group, create_level_array, open_image

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    image = open_image(url)
    level = image.levels[0]
    if every_chunk:
        group = create_image_group(os.path.join(out, "copy.zarr"), image.zarr_format, {})
        target = create_level_array(group, "0", level.shape, level.chunks, level.dtype, image.axis_names)
    else:
        target = zarr.create_array(
            os.path.join(out, "copy.zarr"),
            shape=level.shape,
            chunks=level.chunks,
            dtype=level.dtype,
            compressors=blosc_zstd(image.zarr_format),
            zarr_format=image.zarr_format,
            fill_value=0,
        )
    client.compute(da.store(da.from_zarr(image.array(level)), target, lock=False, compute=False), sync=True)
    return time.perf_counter() - start


def runner(kind: str, url: str, flatfield: str, scratch: str, client):
    return {
        "correct": lambda: run_correct(url, flatfield, scratch, client, "100"),
        "copy": lambda: run_copy(url, scratch, client),
        "copy_every": lambda: run_copy(url, scratch, client, every_chunk=True),
        "estimate": lambda: run_correct(url, flatfield, scratch, client, "estimate"),
    }[kind]


def child(name: str, out: str, repeat: int, memory_of: str | None) -> dict:
    """Times of every kind (``memory_of`` None), or the peak RSS of one run of ``memory_of``."""
    from distributed import Client, LocalCluster

    from shadeflow.infra.cluster import local_cluster_kwargs
    from shadeflow.infra.sizing import size_from_settings

    size, _ = size_from_settings()
    scratch = os.path.join(out, f"correct-scratch-{name}")
    with LocalCluster(**local_cluster_kwargs(size)) as cluster, Client(cluster) as client:
        url, flatfield = tile(out, name, TILES[name], client)
        if memory_of:
            rss = PeakRSS()
            base = rss.now()
            rss.peak = base
            runner(memory_of, url, flatfield, scratch, client)()
            result = {"peak_mib": (rss.peak - base) / 2**20}
        else:
            run_copy(url, scratch, client)  # warm the page cache so every measurement reads from memory
            best = {kind: float("inf") for kind in KINDS}
            for _ in range(repeat):
                for kind in KINDS:
                    best[kind] = min(best[kind], runner(kind, url, flatfield, scratch, client)())
            result = best
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def run_child(name: str, out: str, repeat: int, memory_of: str | None = None) -> dict:
    command = [sys.executable, __file__, "--tile", name, "--out", out, "--repeat", str(repeat)] + (
        ["--memory-of", memory_of] if memory_of else []
    )
    done = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(name: str, times: dict, peaks: dict) -> None:
    mb = 2 * math.prod(TILES[name]) / 1e6
    t = times
    print(
        f"tile {name} uint16 ({mb:.0f} MB), chunks {'×'.join(map(str, CHUNKS))}, --levels 4, reference "
        "flatfield"
    )
    rows = (
        ("correct (--background 100)", "correct", ""),
        ("plain zarr copy (level 0)", "copy", ""),
        (
            "copy, output's array settings",
            "copy_every",
            f"  (correct ÷ this {t['correct'] / t['copy_every']:.2f})",
        ),
        ("correct (--background estimate)", "estimate", f"  (÷ plain copy {t['estimate'] / t['copy']:.2f})"),
    )
    for label, kind, extra in rows:
        print(
            f"  {label:33s}: {t[kind]:6.2f} s  {mb / t[kind]:5.0f} MB/s  peak RSS +{peaks[kind]:4.0f} "
            f"MiB{extra}"
        )
    print(f"  {'ratio correct ÷ plain copy':33s}: {t['correct'] / t['copy']:6.2f}  (target ≤ 1.25)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench-output")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-large", action="store_true", help="only the 128×1024×1024 tile")
    parser.add_argument("--tile", choices=list(TILES), help=argparse.SUPPRESS)  # child process: one size
    # child process: one run's memory
    parser.add_argument("--memory-of", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tile:
        print(json.dumps(child(args.tile, args.out, args.repeat, args.memory_of)))
        return

    from shadeflow.infra.sizing import size_from_settings

    size, source = size_from_settings()
    print(
        f"cluster: {size.describe()} (memory from {source}); load average {os.getloadavg()[0]:.2f} at start\n"
    )
    for name in list(TILES)[:1] if args.no_large else list(TILES):
        times = run_child(name, args.out, args.repeat)
        peaks = {kind: run_child(name, args.out, 1, kind)["peak_mib"] for kind in KINDS}
        report(name, times, peaks)
        print()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
