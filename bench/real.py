"""Real image stacks: shadeflow estimate against BaSiC's reference profiles and a smoothed median.

Every stack in ../shared/data/real-stacks/ (BaSiC's public data sets: whole-slide brain tiles, a
brightfield and a fluorescence timelapse), in both modes (flatfield only, and ``--darkfield``), through
the estimator's Dask path (``estimate_shading_dask``, what ``shadeflow estimate`` runs on its cluster).

* **Held-out residual shading.** Fit on the first half of the frames, correct the second half as
  (I − D)/S, take the per-pixel median of the corrected frames, Gaussian-smooth it (σ = 5 % of the
  width), and report its std/mean in % over the image less a 5 % border; then the other way round;
  the mean of the two. The same for no correction, for BaSiC's reference profiles (resized bilinearly
  to the image shape; BaSiC saw every frame, both halves) and for a smoothed (σ = 1 % of the width)
  per-pixel median of the training half. And, when ``make bench-basicpy`` has installed BaSiCPy,
  for BaSiCPy fitted on the same training half (column BaSiC½: BaSiC under our held-out conditions).
* **Planted shading on real content.** The stack times a known shading P (an off-centre radial
  fall-off to 0.8 at the far corner, cut by a circular aperture whose edge is a logistic of scale 1.2 %
  of the longer side down to 0.25 outside), plus, in darkfield mode, a known offset; the original and
  the planted stack are fitted and the ratio of the two flatfields, normalised to mean 1, is compared
  with P (relative RMS over the whole image).
* **Fit time** of one fit on all frames, best of ``--repeats``, and the peak memory of the process
  above what it held before the fit.

Targets (issue 10): every fit succeeds; held-out residual ≤ 1.1 × BaSiC reference's; planted
shading recovered to ≤ 1 %. Run: ``.venv/bin/python bench/real.py`` (``--quick``: held-out only).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
from scipy import ndimage as ndi
from skimage.transform import resize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "real-stacks"))


def stacks(folder: str) -> list[str]:
    return sorted(
        f[: -len(".npz")]
        for f in os.listdir(folder)
        if f.endswith(".npz") and not f.endswith(".basic-reference.npz")
    )


METHOD = "auto"


def fit(images: np.ndarray, darkfield: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """shadeflow's estimate of (S, D) through the Dask path, with its notes."""
    import dask
    import dask.array as da

    from shadeflow.core.estimate.chunked import estimate_shading_dask
    from shadeflow.core.estimate.estimator import EstimateSettings

    with dask.config.set(scheduler="threads"):
        result = estimate_shading_dask(
            da.from_array(images, chunks=(64, -1, -1)), darkfield, settings=EstimateSettings(method=METHOD)
        )
    return result.flatfield.astype(np.float64), result.darkfield.astype(np.float64), list(result.notes)


def residual_shading(test: np.ndarray, flat: np.ndarray, dark: np.ndarray | float) -> float:
    """% std/mean of the smoothed per-pixel median of (I − D)/S, less a 5 % border (module docstring)."""
    corrected = (test.astype(np.float64) - dark) / flat
    median = np.median(corrected, axis=0)
    h, w = median.shape
    smooth = ndi.gaussian_filter(median, 0.05 * w, mode="nearest")
    by, bx = round(0.05 * h), round(0.05 * w)
    inner = smooth[by : h - by, bx : w - bx]
    return 100 * float(inner.std() / inner.mean())


def held_out(images: np.ndarray, method) -> float:
    """Mean of the two held-out residuals (fit on one half, measure on the other)."""
    half = len(images) // 2
    first, second = images[:half], images[half:]
    return float(
        np.mean(
            [residual_shading(test, *method(train)[:2]) for train, test in ((first, second), (second, first))]
        )
    )


def planted_shading(shape: tuple[int, int]) -> np.ndarray:
    """The known shading P of the module docstring, mean 1."""
    h, w = shape
    y, x = np.mgrid[:h, :w]
    side = max(h, w)
    r = np.hypot((x + 0.5 - 0.55 * w) / side, (y + 0.5 - 0.45 * h) / side)
    falloff = 1 - 0.8 * r**2
    aperture = 0.25 + 0.75 / (1 + np.exp(-(0.47 * min(h, w) / side - r) / 0.012))
    shading = falloff * aperture
    return shading / shading.mean()


def planted_error(images: np.ndarray, darkfield: bool, flat: np.ndarray) -> float:
    """% relative RMS of (S_planted / S_original, mean 1) against the planted shading."""
    shading = planted_shading(images.shape[1:])
    offset = (100.0 if images.dtype.itemsize > 1 else 10.0) if darkfield else 0.0
    planted = images.astype(np.float32) * shading.astype(np.float32) + np.float32(offset)
    planted_flat, _, _ = fit(planted, darkfield)
    ratio = planted_flat / flat
    ratio /= ratio.mean()
    return 100 * float(np.sqrt(np.mean((ratio - shading) ** 2)))


def reference(name: str, shape: tuple[int, int], darkfield: bool) -> tuple[np.ndarray, np.ndarray]:
    """BaSiC's profiles, resized (bilinear) to the image shape."""
    ref = np.load(os.path.join(DATA, f"{name}.basic-reference.npz"))
    flat, dark = (
        (ref["flatfield"], ref["darkfield"])
        if darkfield
        else (ref["flatfield_flatonly"], ref["darkfield_flatonly"])
    )

    def to_shape(a):
        return resize(a.astype(np.float64), shape, order=1, mode="edge", anti_aliasing=False)

    return to_shape(flat), to_shape(dark)


def median_reference(train: np.ndarray) -> tuple[np.ndarray, float]:
    m = ndi.gaussian_filter(
        np.median(train.astype(np.float64), axis=0), 0.01 * train.shape[2], mode="nearest"
    )
    return m / m.mean(), 0.0


BASICPY = os.path.join(ROOT, "bench-output", "basicpy-venv", "bin", "python")
BASICPY_FIT = r"""
import sys, numpy as np, torch
torch.set_num_threads(2)
from basicpy import BaSiC
images, darkfield, out = np.load(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
model = BaSiC(get_darkfield=darkfield)
model.fit(images)
np.savez(
    out,
    flatfield=np.asarray(model.flatfield, np.float64),
    darkfield=np.asarray(model.darkfield, np.float64),
)
"""


def basicpy_fit(train: np.ndarray, darkfield: bool) -> tuple[np.ndarray, np.ndarray]:
    """BaSiCPy (its default settings, ± darkfield) fitted on ``train`` in its own interpreter (make
    bench-basicpy): BaSiC under the same held-out conditions as ours, profiles resized to the image."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        stack, out = os.path.join(folder, "train.npy"), os.path.join(folder, "fit.npz")
        np.save(stack, train)
        subprocess.run(
            [BASICPY, "-c", BASICPY_FIT, stack, "1" if darkfield else "0", out],
            check=True,
            capture_output=True,
            timeout=900,
        )
        fitted = np.load(out)
        shape = train.shape[1:]
        return (
            resize(fitted["flatfield"], shape, order=1, mode="edge", anti_aliasing=False),
            resize(fitted["darkfield"], shape, order=1, mode="edge", anti_aliasing=False),
        )


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run(name: str, darkfield: bool, repeats: int, quick: bool) -> dict:
    images = np.load(os.path.join(DATA, f"{name}.npz"))["images"]
    shape = images.shape[1:]
    row = {
        "stack": name,
        "frames": int(images.shape[0]),
        "shape": list(shape),
        "dtype": str(images.dtype),
        "mode": "darkfield" if darkfield else "flat",
    }
    try:
        before = peak_rss_gib()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            flat, dark, notes = fit(images, darkfield)
            times.append(time.perf_counter() - started)
        row.update(
            fit_s=min(times),
            peak_gib=max(0.0, peak_rss_gib() - before),
            notes=notes,
            flat_min=float(flat.min()),
            flat_max=float(flat.max()),
            dark_mean=float(np.mean(dark)),
        )
        row["held_out"] = held_out(images, lambda train: fit(train, darkfield))
        row["planted_pct"] = None if quick else planted_error(images, darkfield, flat)
        row["failure"] = None
    except Exception as exc:  # a refused fit is a result here: it is reported, and it fails the target
        row.update(
            failure=f"{type(exc).__name__}: {exc}",
            held_out=float("inf"),
            planted_pct=float("inf"),
            fit_s=None,
            peak_gib=None,
            notes=[],
        )
    row["held_out_none"] = held_out(images, lambda train: (np.ones(shape), 0.0))
    row["held_out_basic"] = held_out(images, lambda train: reference(name, shape, darkfield))
    row["held_out_median"] = held_out(images, median_reference)
    row["held_out_basicpy_half"] = (
        held_out(images, lambda train: basicpy_fit(train, darkfield)) if os.path.exists(BASICPY) else None
    )
    row["ratio_to_basic"] = row["held_out"] / row["held_out_basic"]
    row["meets"] = bool(
        row["failure"] is None and row["ratio_to_basic"] <= 1.1 and (quick or row["planted_pct"] <= 1.0)
    )
    return row


def line(row: dict) -> str:
    planted = "—" if row["planted_pct"] is None else f"{row['planted_pct']:.3f}"
    fit_s = "—" if row["fit_s"] is None else f"{row['fit_s']:.2f}"
    half = "—" if row["held_out_basicpy_half"] is None else f"{row['held_out_basicpy_half']:.3f}"
    return (
        f"{row['stack']:22} {row['mode']:9} {row['held_out']:8.3f} {row['held_out_basic']:8.3f} "
        f"{row['ratio_to_basic']:6.2f} "
        f"{row['held_out_median']:8.3f} {row['held_out_none']:8.3f} {half:>8} {planted:>8} {fit_s:>6} "
        f"{'yes' if row['meets'] else 'NO':>5}  "
        f"{row['failure'] or '; '.join(row['notes'])}"
    )


def main() -> int:
    global METHOD, DATA
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DATA, help="folder of <name>.npz and <name>.basic-reference.npz")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed fits per stack and mode (best reported)"
    )
    parser.add_argument("--quick", action="store_true", help="held-out residuals only (no planted shading)")
    parser.add_argument(
        "--method",
        default="auto",
        choices=("auto", "floor", "surface", "lines"),
        help="the estimator's method",
    )
    parser.add_argument(
        "--out", default=None, help="folder for results.json (default bench-output/real-<method>)"
    )
    args = parser.parse_args()
    METHOD, DATA = args.method, args.data  # every reader below takes the stacks and references from --data
    names = stacks(args.data)
    print(f"real stacks in {args.data}: {', '.join(names)}; method {METHOD}; load {os.getloadavg()[0]:.2f}")
    print(
        f"{'stack':22} {'mode':9} {'held-out':>8} {'BaSiC':>8} {'ratio':>6} {'median':>8} {'none':>8} "
        f"{'BaSiC½':>8} {'planted':>8} {'fit s':>6} {'meets':>5}  notes"
    )
    rows = []
    for name in names:
        for darkfield in (False, True):
            rows.append(run(name, darkfield, args.repeats, args.quick))
            print(line(rows[-1]), flush=True)
    met = sum(r["meets"] for r in rows)
    print(
        f"targets (held-out ≤ 1.1 × BaSiC reference, planted ≤ 1 %, fit succeeds) met on {met} of "
        f"{len(rows)} stack-modes"
    )
    out = args.out or os.path.join(ROOT, "bench-output", f"real-{METHOD}")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as fh:
        json.dump(rows, fh, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
