"""Mean image, model and applied test on randomised synthetic cohorts, against the planted flatfield
and an informed oracle.

    .venv/bin/python bench/meanimage_accuracy.py [--cohorts 22] [--seed 0] [--jobs 2] [--out bench-output]
                                                 [--only NAME…] [--keep]

Cohorts are drawn, seeded, across the knobs of ``shadeflow synth slides`` (tissue coverage 20–95 %,
background 0.05–4 × the dark current, dark current 1–40 counts, low-count layers, exposure ranges up
to 20:1, tissue rates, grid size, fold and saturation density); the first is fixed: the outside
check's cohort (3 slides of 256×320×8 fields on a 12×10 grid, dark current 4 counts, tissue rates
8–70 counts/ms, exposure times 4–80 ms varying per field, folds, saturated spots).

Each cohort runs the core functions the meanimage, model-build and applied-test flows run, one slide
after another in one process (no Prefect, no cluster; see
``shadeflow.core.synth.oracle``), and the oracle: the same bulk fields, read and exposure-normalised by
the same function, every planted tissue pixel (minus planted saturated spots) stacked, the same
applied-test split, smoothed and normalised the same way. Per cohort it prints

* mean image: relative RMS of each slide's smoothed mean image vs the planted flatfield (median over
  layers, worst slide), the oracle's, and the ratio (the largest of the slides' pipeline ÷ oracle);
* model: relative RMS of the flatfield of all slides (median over layers), the oracle's, the ratio;
* applied test: % of the illumination variation removed, and the oracle's;
* PASS when both ratios are ≤ 1.3 and the applied reduction ≥ the oracle's − 5 points.

Results go to ``<out>/meanimage-accuracy/results.{json,csv}`` and ``summary.txt``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402 — after the thread limits above, which must precede numpy

from shadeflow.core.synth.slides import SynthConfig, write_cohort  # noqa: E402 — imports numpy: after the limits too

MEAN_IMAGE_RATIO = 1.3
MODEL_RATIO = 1.3
APPLIED_MARGIN = 5.0

#: the outside check's cohort (issue 10)
OUTSIDE_CHECK = SynthConfig(
    slides=3,
    shape=(256, 320, 8),
    grid=(12, 10),
    dark_current=4.0,
    tissue_rate=(8.0, 70.0),
    exposure_range=(4.0, 80.0),
    seed=10,
)


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(math.log(low), math.log(high))))


def draw_cohort(seed: int) -> SynthConfig:
    """One cohort drawn across the knob ranges (seeded)."""
    rng = np.random.default_rng([seed, 2026])
    height = int(rng.choice([192, 224, 256]))
    width = int(round(height * 4 / 3 / 8) * 8)
    layers = int(rng.choice([5, 6, 8, 10]))
    columns, rows = int(rng.integers(7, 12)), int(rng.integers(6, 10))
    slides = 3 if columns * rows <= 64 else 2
    exposure_low = _log_uniform(rng, 2.0, 60.0)
    exposure = (round(exposure_low, 2), round(exposure_low * _log_uniform(rng, 1.0, 20.0), 2))
    median_exposure = math.sqrt(exposure[0] * exposure[1])
    # tissue at least ~20 counts above dark at the median exposure (dimmer layers are the low-count knob's)
    rate_low = max(_log_uniform(rng, 1.0, 20.0), 20.0 / median_exposure)
    rate = (round(rate_low, 3), round(rate_low * _log_uniform(rng, 1.0, 8.0), 3))
    return SynthConfig(
        slides=slides,
        shape=(height, width, layers),
        grid=(columns, rows),
        seed=seed,
        tissue_coverage=round(float(rng.uniform(0.2, 0.95)), 3),
        dark_current=round(_log_uniform(rng, 1.0, 40.0), 1),
        background_ratio=round(_log_uniform(rng, 0.05, 4.0), 3),
        low_count_layers=int(rng.integers(0, 3)),
        low_count_signal=round(float(rng.uniform(8.0, 40.0)), 1),
        exposure_range=exposure,
        tissue_rate=rate,
        fold_probability=round(float(rng.uniform(0.0, 0.8)), 2),
        saturation_probability=round(float(rng.uniform(0.0, 0.8)), 2),
    )


def cohorts(n: int, seed: int) -> dict[str, SynthConfig]:
    out = {"outside-check": OUTSIDE_CHECK}
    for i in range(n - 1):
        out[f"c{i + 1:02d}"] = draw_cohort(seed * 1000 + i + 1)
    return out


def describe(config: SynthConfig) -> str:
    h, w, l = config.shape
    c, r = config.grid
    cov = "default" if config.tissue_coverage is None else f"{config.tissue_coverage:.0%}"
    bg = "0.1/ms" if config.background_ratio is None else f"{config.background_ratio:.2g}×dark"
    return (
        f"{config.slides}×{c}×{r} fields {h}×{w}×{l}, coverage {cov}, dark {config.dark_current:g}, bg {bg}, "
        f"ET {config.exposure_range[0]:g}–{config.exposure_range[1]:g} ms, rate "
        f"{config.tissue_rate[0]:.3g}–{config.tissue_rate[1]:.3g}/ms, "
        f"low-count {config.low_count_layers}×{config.low_count_signal:g}, folds "
        f"{config.fold_probability:g}, sat {config.saturation_probability:g}"
    )


def _ratio(pipeline: float, oracle: float) -> float:
    """pipeline ÷ oracle; inf when the pipeline made nothing (whatever the oracle did)."""
    if not math.isfinite(pipeline):
        return math.inf
    return pipeline / oracle if oracle > 0 and math.isfinite(oracle) else math.nan


def _gap(result: dict) -> float:
    """Applied-test reduction minus the oracle's (−inf when the pipeline's test failed)."""
    gap = result["applied"]["pipeline"] - result["applied"]["oracle"]
    return gap if math.isfinite(gap) else -math.inf


def run_cohort(name: str, config: SynthConfig, workdir: str, keep: bool) -> dict:
    """Generate one cohort, run both arms, return its figures (and delete its data unless ``keep``)."""
    from shadeflow.core.synth.oracle import run_arm

    root = os.path.join(workdir, name)
    shutil.rmtree(root, ignore_errors=True)
    start = time.perf_counter()
    urls = write_cohort(root, config, workers=1)
    generated = time.perf_counter() - start
    try:
        pipeline = run_arm(root, urls, oracle=False)
        ran = time.perf_counter() - start - generated
        oracle = run_arm(root, urls, oracle=True)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    per_slide_pipe = np.array(
        [np.nanmedian(r) if np.isfinite(r).any() else np.inf for r in pipeline.mean_image]
    )
    per_slide_oracle = np.array(
        [np.nanmedian(r) if np.isfinite(r).any() else np.inf for r in oracle.mean_image]
    )
    mean_ratio = max(_ratio(a, b) for a, b in zip(per_slide_pipe, per_slide_oracle))
    model_ratio = _ratio(pipeline.model_figure(), oracle.model_figure())
    passed = {
        "mean_image": bool(mean_ratio <= MEAN_IMAGE_RATIO),
        "model": bool(model_ratio <= MODEL_RATIO),
        "applied": bool(pipeline.applied_reduction >= oracle.applied_reduction - APPLIED_MARGIN),
    }
    return {
        "name": name,
        "config": asdict(config),
        "description": describe(config),
        "mean_image": {
            "pipeline_median": float(np.nanmedian(pipeline.mean_image)),
            "pipeline_worst_slide": float(per_slide_pipe.max()),
            "pipeline_worst_layer": float(np.nanmax(pipeline.mean_image))
            if np.isfinite(pipeline.mean_image).any()
            else math.inf,
            "oracle_median": float(np.nanmedian(oracle.mean_image)),
            "oracle_worst_slide": float(per_slide_oracle.max()),
            "oracle_worst_layer": float(np.nanmax(oracle.mean_image))
            if np.isfinite(oracle.mean_image).any()
            else math.inf,
            "ratio": mean_ratio,
            "per_slide_layer_pipeline": pipeline.mean_image.tolist(),
            "per_slide_layer_oracle": oracle.mean_image.tolist(),
        },
        "model": {
            "pipeline": pipeline.model_figure(),
            "oracle": oracle.model_figure(),
            "ratio": model_ratio,
            "per_layer_pipeline": pipeline.model.tolist(),
            "per_layer_oracle": oracle.model.tolist(),
        },
        "applied": {"pipeline": pipeline.applied_reduction, "oracle": oracle.applied_reduction},
        "stacked_fields": {
            "pipeline": pipeline.stacked_fields.tolist(),
            "oracle": oracle.stacked_fields.tolist(),
        },
        "failures": pipeline.failures + [f"oracle: {f}" for f in oracle.failures],
        "passed": passed,
        "pass": all(passed.values()),
        "seconds": {"generate": generated, "pipeline": ran, "total": time.perf_counter() - start},
    }


def _pct(value: float) -> str:
    return f"{100 * value:5.2f}" if math.isfinite(value) else "  inf"


def format_row(r: dict) -> str:
    m, d, a = r["mean_image"], r["model"], r["applied"]
    flags = "".join("." if ok else "x" for ok in r["passed"].values())
    return (
        f"{r['name']:<14} mean {_pct(m['pipeline_worst_slide'])}% vs {_pct(m['oracle_worst_slide'])}% "
        f"×{m['ratio']:.2f} "
        f"(worst layer {_pct(m['pipeline_worst_layer'])} vs {_pct(m['oracle_worst_layer'])}) | "
        f"model {_pct(d['pipeline'])}% vs {_pct(d['oracle'])}% ×{d['ratio']:.2f} | "
        f"applied {a['pipeline']:5.1f}% vs {a['oracle']:5.1f}% | {'PASS' if r['pass'] else 'FAIL'} {flags} "
        f"| {r['seconds']['total']:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cohorts",
        type=int,
        default=22,
        help="cohorts including the fixed outside-check one (≥ 20 for the issue's target)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the cohort draw")
    parser.add_argument("--jobs", type=int, default=2, help="cohorts run in parallel (processes)")
    parser.add_argument("--out", default="bench-output")
    parser.add_argument("--only", nargs="*", help="run only these cohort names")
    parser.add_argument("--keep", action="store_true", help="keep the generated cohorts and their outputs")
    args = parser.parse_args(argv)

    out = os.path.join(args.out, "meanimage-accuracy")
    workdir = os.path.join(out, "cohorts")
    os.makedirs(workdir, exist_ok=True)
    todo = cohorts(args.cohorts, args.seed)
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only}
    for name, config in todo.items():
        print(f"{name:<14} {describe(config)}", flush=True)
    print(flush=True)
    start = time.perf_counter()
    results = []
    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        futures = {
            name: pool.submit(run_cohort, name, config, workdir, args.keep) for name, config in todo.items()
        }
        for future in futures.values():
            result = future.result()
            results.append(result)
            print(format_row(result), flush=True)
            for failure in result["failures"]:
                print(f"{'':<14}   ! {failure}", flush=True)
    elapsed = time.perf_counter() - start

    n_pass = sum(r["pass"] for r in results)
    worst_mean = max(results, key=lambda r: np.nan_to_num(r["mean_image"]["ratio"], nan=np.inf))
    worst_model = max(results, key=lambda r: np.nan_to_num(r["model"]["ratio"], nan=np.inf))
    worst_applied = min(results, key=_gap)
    summary = [
        f"{n_pass}/{len(results)} cohorts PASS (targets: mean-image and model error ≤ {MEAN_IMAGE_RATIO} × "
        f"oracle, applied reduction ≥ oracle − {APPLIED_MARGIN:g} points)",
        f"worst mean-image ratio ×{worst_mean['mean_image']['ratio']:.2f} ({worst_mean['name']}), "
        f"worst model ratio ×{worst_model['model']['ratio']:.2f} ({worst_model['name']}), "
        f"worst applied gap {_gap(worst_applied):+.1f} points ({worst_applied['name']})",
        f"wall time {elapsed:.0f} s with {args.jobs} job(s)",
    ]
    print()
    for line in summary:
        print(line)
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump({"seed": args.seed, "results": results, "summary": summary}, handle, indent=1)
    with open(os.path.join(out, "results.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "cohort",
                "mean_image_pipeline",
                "mean_image_oracle",
                "mean_image_ratio",
                "model_pipeline",
                "model_oracle",
                "model_ratio",
                "applied_pipeline",
                "applied_oracle",
                "pass",
                "description",
            ]
        )
        for r in results:
            m, d, a = r["mean_image"], r["model"], r["applied"]
            writer.writerow(
                [
                    r["name"],
                    m["pipeline_worst_slide"],
                    m["oracle_worst_slide"],
                    m["ratio"],
                    d["pipeline"],
                    d["oracle"],
                    d["ratio"],
                    a["pipeline"],
                    a["oracle"],
                    r["pass"],
                    r["description"],
                ]
            )
    with open(os.path.join(out, "summary.txt"), "w") as handle:
        handle.write("\n".join([format_row(r) for r in results] + [""] + summary) + "\n")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if n_pass == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
