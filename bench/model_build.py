"""Model build memory and speed: 20 Vectra-size slide stacks against 5, in one run.

    .venv/bin/python bench/model_build.py [--out bench-output]

Writes (once, then reuses) mean-image outputs for 5 synthetic Vectra slides (1004×1344×35) and
hard-links them as 20 slides, then builds a model from 5 and from 20 slides, each in a fresh process
so each reports its own peak RSS. The build is the model-build job's work without Prefect: slide
stacks loaded and merged along a fixed tree on a local cluster sized as the flows size it, the
flatfield smoothed and normalised, and the version written (with its PDF) to a store.

A stack is three (L, H, W) arrays (sum and sum of squares float64, counts uint32): 0.92 GiB at
Vectra size. Peak memory should stay at a few stacks whatever the number of slides.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

VECTRA = (1004, 1344, 35)
GROUPS = {"dapi": [1, 9], "fitc": [10, 18], "cy3": [19, 25], "texasred": [26, 32], "cy5": [33, 35]}


def write_slide(root: str, slide_id: str, seed: int) -> None:
    """A slide folder with slide.json and AstroPath meanimage files (as if meanimage had run)."""
    from shadeflow.core.io import astropath as astropath_io
    from shadeflow.core.synth.slides import planted_flatfield

    h, w, n = VECTRA
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, slide_id, "meanimage")
    os.makedirs(folder, exist_ok=True)
    meta = {
        "slide_id": slide_id,
        "project": "1",
        "cohort": "1",
        "batch": str(seed),
        "microscope": "vectra",
        "shape": list(VECTRA),
        "dtype": "uint16",
        "layer_groups": GROUPS,
        "dark_current": 8,
    }
    json.dump(meta, open(os.path.join(root, slide_id, "slide.json"), "w"))
    count = rng.integers(400, 600, (n, h, w)).astype(np.uint64)
    mean = (
        planted_flatfield(VECTRA)
        * rng.uniform(8, 15, (n, 1, 1))
        * (1 + 0.05 * rng.standard_normal((n, h, w)))
    )
    std_err = mean * 0.5 / np.sqrt(count)
    astropath_io.write_bin(os.path.join(folder, f"{slide_id}-mean_image.bin"), mean, "float64")
    astropath_io.write_bin(os.path.join(folder, f"{slide_id}-std_err_of_mean_image.bin"), std_err, "float64")
    astropath_io.write_bin(
        os.path.join(folder, f"{slide_id}-sum_images_squared.bin"),
        count * (mean**2 + std_err**2 * count),
        "float64",
    )
    astropath_io.write_bin(os.path.join(folder, f"{slide_id}-mask_stack.bin"), count, "uint64")
    rows = [
        [slide_id, f"{slide_id}_[{i},0].Data.dat", "bulk", "stacking", str(list(range(1, n + 1)))]
        for i in range(500)
    ]
    astropath_io.write_csv(
        os.path.join(folder, "fields_used.csv"),
        ["slide", "file", "location", "use", "stacked_in_layers"],
        rows,
    )


def cohort(out: str) -> str:
    """5 distinct slides, linked as 20 (the files are read 20 times, stored 5 times)."""
    root = os.path.join(out, "model-build-vectra")
    if len(os.listdir(root) if os.path.isdir(root) else []) == 20:
        return root
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    for i in range(5):
        write_slide(root, f"BENCH_{i + 1}", seed=i)
    for i in range(5, 20):
        source = os.path.join(root, f"BENCH_{i % 5 + 1}")
        target = os.path.join(root, f"BENCH_{i + 1}")
        os.makedirs(os.path.join(target, "meanimage"))
        meta = json.load(open(os.path.join(source, "slide.json")))
        meta["slide_id"] = f"BENCH_{i + 1}"
        json.dump(meta, open(os.path.join(target, "slide.json"), "w"))
        for name in os.listdir(os.path.join(source, "meanimage")):
            os.link(
                os.path.join(source, "meanimage", name),
                os.path.join(target, "meanimage", name.replace(f"BENCH_{i % 5 + 1}-", f"BENCH_{i + 1}-")),
            )
    print(f"wrote 5 Vectra slide stacks (linked as 20) in {time.perf_counter() - start:.0f} s → {root}")
    return root


def build(root: str, n_slides: int) -> None:
    """One model build in this process; prints a JSON line with wall time and peak RSS."""
    from distributed import Client, LocalCluster

    from shadeflow.core.io.cohort import find_slides, load_stack
    from shadeflow.core.model.build import merge_stacks, write_model_version
    from shadeflow.core.model.flatfield import build_flatfield
    from shadeflow.core.model.store import staged_version
    from shadeflow.infra.cluster import local_cluster_kwargs
    from shadeflow.infra.sizing import size_from_settings
    from shadeflow.tasks.dask_work import reduce_tree

    refs = find_slides([root], slide_ids=[f"BENCH_{i + 1}" for i in range(n_slides)])
    store = tempfile.mkdtemp(prefix="shadeflow-bench-store-")
    size, _ = size_from_settings()
    start = time.perf_counter()
    with LocalCluster(**local_cluster_kwargs(size)) as cluster, Client(cluster) as client:
        futures = [client.submit(load_stack, ref, pure=False) for ref in refs]
        stack = reduce_tree(client, futures, merge_stacks)
    merged = time.perf_counter()
    model = build_flatfield(stack)
    built = time.perf_counter()
    staged = staged_version(store, "bench")
    with staged:
        write_model_version(staged, store, "bench", model, stack, refs, {"sigma": model.sigma})
    end = time.perf_counter()
    shutil.rmtree(store, ignore_errors=True)
    print(
        json.dumps(
            {
                "slides": n_slides,
                "seconds": end - start,
                "merge": merged - start,
                "flatfield": built - merged,
                "write": end - built,
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench-output")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = cohort(args.out)
    if args.child:
        build(root, args.child)
        return
    results = []
    for n in (5, 20):
        line = (
            subprocess.run(
                [sys.executable, __file__, "--out", args.out, "--child", str(n)],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        results.append(json.loads(line))
    stack_gib = (8 + 8 + 4) * np.prod(VECTRA) / 2**30
    print(f"one Vectra stack (sum, sum of squares, counts): {stack_gib:.2f} GiB")
    for r in results:
        print(
            f"{r['slides']:3d} slides: {r['seconds']:6.1f} s (merge {r['merge']:.1f} s, flatfield "
            f"{r['flatfield']:.1f} s, write {r['write']:.1f} s), peak RSS {r['peak_rss_gib']:.2f} GiB = "
            f"{r['peak_rss_gib'] / stack_gib:.1f} stacks"
        )
    five, twenty = results
    print(
        f"20 vs 5 slides: time ×{twenty['seconds'] / five['seconds']:.2f}, peak memory "
        f"×{twenty['peak_rss_gib'] / five['peak_rss_gib']:.2f}"
    )


if __name__ == "__main__":
    main()
