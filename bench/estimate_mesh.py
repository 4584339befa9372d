"""``shadeflow estimate --background mesh`` against the default on synthetic star fields (issue 13, item 3).

    .venv/bin/python bench/estimate_mesh.py                 # every case (a few minutes on 2 cores)
    .venv/bin/python bench/estimate_mesh.py --cases 1,4,10  # some of them (1-based)
    .venv/bin/python bench/estimate_mesh.py --no-maps       # without the rejected "maps" design

Stacks come from ``shadeflow.core.synth.starfield``: frames Poisson(S·(sky_i + stars_i)) + D + read noise,
sky_i spread ±30 % around the case's sky level, stars with power-law fluxes (200–2·10⁵ counts), a
σ = 1.5 px core and a 6 px halo holding 10 % of the light, each frame a different field. Cases vary the
star density (1–30 per 1000 px²: sparse to crowded), the sky (30–1000 counts), the shading (radial
fall-off, off-centre, tilted, an aperture with a sharp circular or straight edge) and whether a darkfield
is estimated; each is seeded by its number.

Each stack is fitted in this process three ways, with the estimator's defaults otherwise (``auto``):

- ``default``: the frames as they are (``--background none``);
- ``mesh``: ``--background mesh`` — stars found above each frame's photutils Background2D are left out,
  the shading is fitted from the raw sky pixels;
- ``maps``: the rejected design — each frame replaced by its Background2D map (the same box) and those
  maps fitted as the frames. Shown for the record of why ``mesh`` does not do that.

Metric: flatfield relative RMS error over the whole frame, √mean((Ŝ/mean Ŝ)/(S/mean S) − 1)²
(``core.estimate.grid.relative_rms``); ``refused`` when the estimator refuses the fit. Times are the fit
(mesh backgrounds included) in seconds, on a machine other processes share. Output: the table on stdout,
and ``results.json`` / ``results.md`` in ``--out`` (default ``bench-output/estimate-mesh``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from shadeflow.core.estimate.estimator import EstimateSettings, estimate_shading
from shadeflow.core.estimate.grid import EstimateError, relative_rms
from shadeflow.core.estimate.mesh_background import mesh_background, mesh_box
from shadeflow.core.synth.starfield import StarField, star_field_stack
from shadeflow.core.synth.sweep import aperture, radial_falloff, tilted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Case:
    label: str
    density: float  # stars per 1000 px²
    sky: float
    shading: str  # radial, offcentre, tilted, aperture-circle, aperture-edge
    size: int = 256
    frames: int = 24
    darkfield: bool = False


CASES = [
    Case("sparse", 1, 200, "radial"),
    Case("sparse", 1, 200, "tilted"),
    Case("sparse, faint sky", 2, 30, "offcentre"),
    Case("medium", 5, 200, "radial"),
    Case("medium, faint sky", 5, 30, "radial"),
    Case("medium, bright sky", 5, 1000, "tilted"),
    Case("medium, 512²", 5, 200, "offcentre", size=512, frames=32),
    Case("dense", 15, 100, "radial"),
    Case("crowded", 30, 100, "radial"),
    Case("crowded, faint sky", 30, 30, "tilted"),
    Case("sparse, aperture", 2, 200, "aperture-circle"),
    Case("medium, aperture, faint", 5, 30, "aperture-circle"),
    Case("dense, straight edge", 15, 100, "aperture-edge"),
    Case("medium + darkfield", 5, 200, "radial", frames=32, darkfield=True),
    Case("dense + darkfield", 15, 100, "tilted", frames=32, darkfield=True),
]


def planted(case: Case) -> tuple[np.ndarray, np.ndarray | float]:
    """The case's flatfield (mean 1) and darkfield."""
    shape = (case.size, case.size)
    if case.shading == "radial":
        flat = radial_falloff(shape, 0.02, -0.01, 0.6)
    elif case.shading == "offcentre":
        flat = radial_falloff(shape, 0.2, 0.12, 0.5)
    elif case.shading == "tilted":
        flat = tilted(shape, 0.7, 0.7, 0.05)
    elif case.shading == "aperture-circle":
        edge = dict(
            edge_width=0.01, outside=0.2, circular=1.0, aperture_x=0.03, aperture_y=-0.02, radius=0.75
        )
        flat = radial_falloff(shape, 0.0, 0.0, 0.7) * aperture(shape, edge)
    else:  # a straight edge near one side, 20 % of the frame outside
        edge = dict(edge_width=0.01, outside=0.3, circular=0.0, angle=0.1, outside_share=0.2)
        flat = radial_falloff(shape, 0.0, 0.0, 0.7) * aperture(shape, edge)
    dark = 100.0 + 30 * np.linspace(-1, 1, case.size)[None, :] if case.darkfield else 0.0
    return flat / flat.mean(), dark


def fit(frames: np.ndarray, darkfield: bool, background: str) -> tuple[np.ndarray | None, float]:
    started = time.perf_counter()
    try:
        result = estimate_shading(frames, darkfield, settings=EstimateSettings(background=background))
    except EstimateError:
        return None, time.perf_counter() - started
    return result.flatfield, time.perf_counter() - started


def fit_maps(frames: np.ndarray, darkfield: bool) -> tuple[np.ndarray | None, float]:
    """The rejected design: the Background2D maps fitted as the frames."""
    started = time.perf_counter()
    box = mesh_box(frames.shape[1:])
    maps = np.stack([mesh_background(frame, box)[0] for frame in frames]).astype(np.float32)
    flat, _ = fit(maps, darkfield, "none")
    return flat, time.perf_counter() - started


def run_case(number: int, case: Case, maps: bool) -> dict:
    flat, dark = planted(case)
    field = StarField(frames=case.frames, shape=(case.size, case.size), density=case.density, sky=case.sky)
    frames, _ = star_field_stack(field.__class__(**{**asdict(field), "seed": number}), flat, dark)
    row = {"case": number, **asdict(case)}
    runs = {"default": lambda: fit(frames, case.darkfield, "none")}
    runs["mesh"] = lambda: fit(frames, case.darkfield, "mesh")
    if maps:
        runs["maps"] = lambda: fit_maps(frames, case.darkfield)
    for name, run in runs.items():
        found, seconds = run()
        row[name] = None if found is None else relative_rms(found, flat) * 100
        row[f"{name}_s"] = seconds
    return row


def cell(value: float | None) -> str:
    return "refused" if value is None else f"{value:.3f} %"


def table(rows: list[dict], maps: bool) -> list[str]:
    names = ["default", "mesh"] + (["maps"] if maps else [])
    head = ["#", "case", "stars/1000 px²", "sky", "shading", "size", "frames", "darkfield"] + [
        f"{n} error" for n in names
    ]
    head += [f"{n} s" for n in names] + ["mesh/default"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = f"{r['mesh'] / r['default']:.2f}" if r["mesh"] is not None and r["default"] else "—"
        cells = [r["case"], r["label"], r["density"], r["sky"], r["shading"], f"{r['size']}²", r["frames"]]
        cells += ["yes" if r["darkfield"] else "no"] + [cell(r[n]) for n in names]
        cells += [f"{r[f'{n}_s']:.1f}" for n in names] + [ratio]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=None, help="comma-separated case numbers (1-based); default all")
    parser.add_argument("--no-maps", action="store_true", help="skip the rejected maps-as-frames design")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench-output", "estimate-mesh"))
    args = parser.parse_args()
    chosen = [int(c) for c in args.cases.split(",")] if args.cases else list(range(1, len(CASES) + 1))
    maps = not args.no_maps
    warnings.simplefilter("ignore")  # photutils' and numpy's warnings on masked boxes: not the point here
    rows = []
    for number in chosen:
        row = run_case(number, CASES[number - 1], maps)
        rows.append(row)
        print(
            f"{number:2d} {row['label']:26s} default {cell(row['default']):>9s}  mesh {cell(row['mesh']):>9s}"
            + (f"  maps {cell(row['maps']):>9s}" if maps else ""),
            flush=True,
        )
    lines = table(rows, maps)
    wins = sum(
        1 for r in rows if r["mesh"] is not None and r["default"] is not None and r["mesh"] < r["default"]
    )
    summary = f"mesh below default on {wins} of {len(rows)} cases"
    print("\n" + "\n".join(lines) + "\n\n" + summary)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(rows, handle, indent=1)
    with open(os.path.join(args.out, "results.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n\n" + summary + "\n")


if __name__ == "__main__":
    main()
