"""``make demo``: the whole chain on a synthetic cohort, ending with a report a newcomer can read."""

from __future__ import annotations

import os
import time

import numpy as np
import zarr
from rich.console import Console
from rich.table import Table

from ..core.estimate.grid import relative_rms as flatfield_rms
from ..core.estimate.outputs import read_estimate
from ..core.io import astropath as astropath_io
from ..core.io import storage
from ..core.meanimage.outputs import read_mean_image_stack
from ..core.model.store import read_model
from ..core.smoothing import flatfield_sigma, gaussian_smooth, masked_smooth, relative_rms
from ..core.synth.slides import TRUTH_DIR, SynthConfig, read_truth_flatfield, write_cohort
from ..core.synth.stacks import StackConfig, read_truth, write_stack
from ..core.synth.tiles import SynthTileConfig, write_synthetic_tile
from ..infra.cluster import check_settings, task_runner
from .correct import CorrectParameters, correct
from .estimate import EstimateParameters, estimate
from .meanimage import MeanImageParameters, meanimage
from .model import AppliedTestParameters, ModelBuildParameters, applied_test, model_build
from .run import run_with_progress

DEMO_CONFIG = SynthConfig(slides=3, fields=64, seed=2026)
DEMO_VERSION = "demo-v1"


def mean_image_accuracy(slide_url: str, truth: np.ndarray) -> np.ndarray:
    """Per-layer relative RMS between a slide's smoothed mean image and the known flatfield."""
    stack, _ = read_mean_image_stack(slide_url)
    h, w = stack.shape[1:]
    smoothed = masked_smooth(stack.mean(), stack.count, flatfield_sigma(h, w))
    return relative_rms(smoothed, truth, where=stack.count > 0)


def tile_shading(url: str, background: float, planes: slice) -> np.ndarray:
    """Per channel: relative RMS of the smoothed mean of a tile's sample planes (0 = no shading)."""

    level0 = zarr.open_group(url, mode="r")["0"]  # (c, z, y, x)
    mean_planes = np.asarray(level0[:, planes], dtype=np.float64).mean(axis=1) - background
    smoothed = gaussian_smooth(mean_planes, sigma=8)
    return np.array([np.sqrt(np.mean((layer / layer.mean() - 1) ** 2)) for layer in smoothed])


def _percent(values: np.ndarray) -> str:
    return f"{100 * np.nanmedian(values):.2f} % (worst layer {100 * np.nanmax(values):.2f} %)"


def outputs_in_reading_order(
    out: str, cohort: str, slide_ids: list[str], store: str, tested: str, tiles_out: str, estimated: str
) -> list[tuple[str, str]]:
    """Every output of the demo, in the order of the chain, with full paths (PDFs where a step has them)."""

    def pdfs(folder: str) -> list[str]:  # a slide's three in the order AstroPath makes them
        fs, path = storage.filesystem(folder)
        steps = ("thresholding", "masking", "meanimage")
        return sorted(
            fs.glob(f"{path}/**/*.pdf"),
            key=lambda p: ([s in p for s in steps].index(True) if any(s in p for s in steps) else 9, p),
        )

    items = [("synthetic cohort (slides with their known flatfield)", cohort)]
    for sid in slide_ids:
        folder = storage.join(cohort, sid, "meanimage")
        items.append((f"mean image {sid}", folder))
        items += [(f"  {storage.basename(p)}", p) for p in pdfs(folder)]
    items.append((f"model {DEMO_VERSION} (model store)", store))
    items += [(f"  {storage.basename(p)}", p) for p in pdfs(store)]
    items.append(("applied test", tested))
    items += [(f"  {storage.basename(p)}", p) for p in pdfs(tested)]
    items.append(("corrected OME-Zarr tiles", tiles_out))
    items.append(("estimate: flatfield.tiff, darkfield.tiff, estimate.zarr", estimated))
    return [(label, os.path.abspath(url) if not storage.is_remote(url) else url) for label, url in items]


def report_markdown(rows: list[tuple[str, str]], outputs: list[tuple[str, str]]) -> str:
    """demo-output/REPORT.md: the results against the truth, then every output in reading order."""
    lines = [
        "# shadeflow demo",
        "",
        "## Results against the known (planted) shading",
        "",
        "| step | result |",
    ]
    lines += [
        "|---|---|",
        *[f"| {step} | {result} |" for step, result in rows],
        "",
        "## Outputs, in reading order",
        "",
    ]
    lines += [f"{'  ' if label.startswith('  ') else ''}- {label.strip()}: `{url}`" for label, url in outputs]
    return "\n".join(lines) + "\n"


def run_demo(out: str) -> dict:

    console = Console(width=110)
    out = storage.normalize(out)
    cohort = storage.join(out, "cohort")
    store = storage.join(out, "models")
    console.rule("[bold]shadeflow demo")
    c = DEMO_CONFIG
    console.print(
        f"[bold]1. Synthetic cohort[/]: {c.slides} slides × {c.fields} fields of {c.shape[0]}×{c.shape[1]} "
        f"px, {c.shape[2]} layers, "
        "with a planted flatfield (≈30 % corner fall-off), tissue with holes, folds, saturated spots, "
        "varied exposure times and a dark current."
    )
    storage.remove(out)  # the demo always starts from the same seeded data
    start = time.monotonic()
    slides = write_cohort(cohort, c, workers=os.cpu_count() or 2)
    console.print(f"   written to {cohort} in {time.monotonic() - start:.1f} s")
    console.print(f"   local Dask cluster per run: {check_settings().describe()}; Prefect's ephemeral API")

    console.print("[bold]2. meanimage[/]: thresholds, masks and the masked mean image of every slide")
    reports = run_with_progress(
        meanimage, {"params": MeanImageParameters(slides=slides)}, task_runner(), "fields"
    )
    truth = read_truth_flatfield(cohort, c.shape)

    models_csv = storage.join(store, "AstroPathFlatfieldModels.csv")
    astropath_io.write_csv(
        models_csv,
        ["version", "Project", "Cohort", "BatchID", "SlideID"],
        [[DEMO_VERSION, c.project, c.cohort, i + 1, storage.basename(url)] for i, url in enumerate(slides)],
    )
    console.print(
        f"[bold]3. model build[/]: version {DEMO_VERSION} from all {c.slides} slides (listed in {models_csv})"
    )
    run_with_progress(
        model_build,
        {
            "params": ModelBuildParameters(
                version=DEMO_VERSION, models_csv=models_csv, roots=[cohort], store=store
            )
        },
        task_runner(),
        "slides",
    )
    model = read_model(store, DEMO_VERSION)
    model_error = relative_rms(model.flatfield, truth)

    tested = storage.join(out, "applied-test")
    console.print(
        "[bold]4. applied test[/]: flatfield from one half of each slide's fields, applied to the other half"
    )
    applied = run_with_progress(
        applied_test,
        {"params": AppliedTestParameters(roots=[cohort], out=tested, seed=1)},
        task_runner(),
        "fields",
    )
    change = applied["summary"]["change_percent"]

    tiles_in, tiles_out = storage.join(out, "tiles"), storage.join(out, "corrected-tiles")
    h, w, _ = c.shape
    tile_config = dict(shape=(2, 40, h, w), axes="czyx", chunks=(1, 20, h, w), background=100.0)
    tiles = [storage.join(tiles_in, f"tile_{i}.ome.zarr") for i in range(2)]
    for i, url in enumerate(tiles):  # shaded like the cohort's layers 1–2 (the same microscope)
        write_synthetic_tile(url, SynthTileConfig(**tile_config, seed=i))
    console.print(
        f"[bold]5. correct[/]: {len(tiles)} OME-Zarr tiles (2 channels × 40 planes) with model "
        f"{DEMO_VERSION}, layers 1 and 2"
    )
    run_with_progress(
        correct,
        {
            "params": CorrectParameters(
                tiles=tiles,
                out=tiles_out,
                model=DEMO_VERSION,
                store=store,
                channel_map="0=1,1=2",
                background="100",
                levels=3,
            )
        },
        task_runner(),
        "chunks",
    )
    sample = slice(8, 32)  # planes with sample (the synthetic tiles have background-only planes at both ends)
    before = np.concatenate([tile_shading(url, 100.0, sample) for url in tiles])
    after = np.concatenate(
        [tile_shading(storage.join(tiles_out, storage.basename(url)), 0.0, sample) for url in tiles]
    )

    stack_config = StackConfig(kind="tissue", size=256, n=100, darkfield=True, outlier_fraction=0.02, seed=2)
    stack_dir, estimated = storage.join(out, "stack"), storage.join(out, "estimate")
    written = write_stack(stack_dir, stack_config, fmt="zarr", workers=os.cpu_count() or 2)
    console.print(
        f"[bold]6. estimate[/]: no model — flatfield and darkfield from {stack_config.n} tissue frames "
        "themselves (2 % outlier frames)"
    )
    run_with_progress(
        estimate,
        {"params": EstimateParameters(images=[written["images"]], out=estimated, darkfield=True)},
        task_runner(),
        "frames",
    )
    found, planted = read_estimate(estimated), read_truth(stack_dir)
    estimate_error = flatfield_rms(found["flatfield"][0].astype(np.float64), planted["flatfield"])
    dark_error = float(np.sqrt(np.mean((found["darkfield"][0] - planted["darkfield"]) ** 2)))

    table = Table(title="Results against the known (planted) shading", show_lines=False)
    table.add_column("step")
    table.add_column("result")
    rows = []  # (step, result), also written to REPORT.md
    for report in reports:
        errors = mean_image_accuracy(storage.join(cohort, report["slide_id"]), truth)
        rows.append(
            (
                f"mean image {report['slide_id']}",
                f"{report['stacked_fields']}/{report['bulk_fields']} bulk fields stacked, "
                f"{report['flagged_fields']} fields with blur/saturation; "
                f"smoothed mean image vs truth: {_percent(errors)} relative RMS",
            )
        )
    rows.append(
        (
            f"model {DEMO_VERSION}",
            f"flatfield vs truth: {_percent(model_error)} relative RMS; range "
            f"{model.flatfield.min():.3f}–{model.flatfield.max():.3f}",
        )
    )
    rows.append(
        (
            "applied test",
            f"illumination variation (std of smoothed mean-relative intensity) {change['mean_std']:+.1f} % "
            f"(central 64 %: {change['mean_central_std']:+.1f} %)",
        )
    )
    rows.append(
        (
            "corrected tiles",
            f"shading of the smoothed mean plane: {100 * before.mean():.1f} % before → "
            f"{100 * after.mean():.2f} % after (relative RMS)",
        )
    )
    rows.append(
        (
            "estimate (no model)",
            f"flatfield vs truth: {100 * estimate_error:.2f} % relative RMS; darkfield within "
            f"{dark_error:.1f} counts RMS (of ≈{planted['darkfield'].mean():.0f})",
        )
    )
    for row in rows:
        table.add_row(*row)
    console.print(table)
    outputs = outputs_in_reading_order(
        out, cohort, [r["slide_id"] for r in reports], store, tested, tiles_out, estimated
    )
    report_url = storage.join(out, "REPORT.md")
    storage.write_text(report_url, report_markdown(rows, outputs))
    # full paths, one per line: a table cell would cut them at the terminal's width
    print("\nOutputs, in reading order:")
    for label, url in outputs:
        print(f"  {label}: {url}")
    print(f"This report with every output: {report_url}")
    console.print(
        "How to read this: a flatfield is the microscope's uneven illumination. Each slide's mean image "
        "(masked\n"
        "tissue only, in counts/ms) already has its shape; the model combines slides and smooths them, and "
        "is\n"
        "compared with the shading planted in the synthetic data. The applied test divides held-out fields "
        "by a\n"
        "flatfield made from the other fields: a large negative change means the illumination became flat.\n"
        "Then the model corrects OME-Zarr tiles from the same (synthetic) microscope, chunk by chunk. "
        "Without a\n"
        "model, `shadeflow estimate` finds the flatfield and darkfield from a stack of images themselves.\n"
        "Outputs use AstroPath's file names; PDFs summarise each step. Known truth: "
        f"{storage.join(cohort, TRUTH_DIR)}."
    )
    return {  # the report's figures, as numbers (relative RMS as fractions)
        "mean_images": {
            r["slide_id"]: float(
                np.nanmedian(mean_image_accuracy(storage.join(cohort, r["slide_id"]), truth))
            )
            for r in reports
        },
        "model": float(np.nanmedian(model_error)),
        "applied_test_change_percent": float(change["mean_std"]),
        "tiles_before": float(before.mean()),
        "tiles_after": float(after.mean()),
        "estimate_flatfield": estimate_error,
        "estimate_darkfield_counts": dark_error,
    }
