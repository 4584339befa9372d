"""Ground-truth benchmark of ``shadeflow estimate`` against BaSiCPy, side by side in one run.

    .venv/bin/python bench/estimate.py                 # all stacks; BaSiCPy if its venv exists
    .venv/bin/python bench/estimate.py --quick         # two small stacks, no BaSiCPy (a smoke run)
    .venv/bin/python bench/estimate.py --basicpy-python /path/to/python --basicpy-repeats 3
    .venv/bin/python bench/estimate.py --sweep [--cases 60] [--first-seed 0] [--only KIND] [--processes 1]

Stacks come from ``shadeflow.core.synth.stacks`` — the recipe of ``reference/basicpy.md`` §3 (a
planted flatfield with ≈45 % corner fall-off, darkfield 100 + 6u + 4v, per-frame brightness
U(0.85, 1.15), Poisson + read noise, uint16) — in three scenes (tissue ≈75 % covered, sparse ≈15 %,
mostly empty ≈2 %), at 512² and 1024², 50–1000 frames, with and without darkfield, and with 2 %
outlier frames (closed shutter, a large bright object, 40× over-exposure).

Method. Each stack is generated once (seeded), saved to a temporary ``.npy``, and every method fits
it in a *fresh subprocess* with the data already in RAM: only the fit is timed (best and median of
``--repeats``), and peak memory is the process's peak RSS during the fit (VmHWM, reset through
``/proc/self/clear_refs`` just before it) — stack and libraries included. Metrics: flatfield
relative RMS and max error (r = (F̂/mean F̂)/F), darkfield RMS error (counts; 0 is the truth without
darkfield), and the uniform-target CV: a noise-free uniform slide U = 300·F + D corrected as
(U − D̂)/F̂ (std/mean; the uncorrected CV is ≈ 9 %). The machine's load average is printed with each
stack: other processes share these 2 cores.

BaSiCPy (basicpy 2.0.0) needs ``scipy<1.13`` and so ``numpy<2``, which conflicts with this project's
pins; it runs in its own interpreter. Set it up once with ``make bench-basicpy`` (≈ 2 minutes), which does

    python3 -m venv bench-output/basicpy-venv
    bench-output/basicpy-venv/bin/pip install torch==2.13.0 basicpy==2.0.0 gradient-free-optimizers==1.8.1

(``gradient-free-optimizers==1.8.1``: newer releases break hyperactive's import, which basicpy uses
for ``autotune_hillclimbing``; plain ``fit`` is unaffected.) Without ``--basicpy-python`` the bench
uses ``bench-output/basicpy-venv/bin/python`` when it exists. BaSiC settings, as in basicpy.md:
``dark+sort`` (get_darkfield, sort_intensity: its best on tissue, the reference of the targets),
``dark`` (get_darkfield: its best on sparse), and ``dflt`` for stacks without darkfield. Ratios are
against the best BaSiC setting of each stack (by flatfield error) and, for time, against ``dark+sort``.

Two stacks leave the recipe: a darkfield with a curved 15-count corner glow (``glow``), where the
estimator's least-curvature darkfield prior is wrong; ``shadeflow dd4`` is the remedy a user would
apply there (``--darkfield-degree 4``).

Targets (issue 6): flatfield ≤ 0.5 % relative RMS on the 200×1024² tissue stack with darkfield, in
≤ 1/10 of BaSiC's best setting's fit time.

``--sweep`` (issue 10, item 3) leaves the recipe: seeds ``--first-seed`` … ``+ --cases − 1`` each draw
a random case from ``shadeflow.core.synth.sweep`` (scene, shading, darkfield, drift, frames, size,
brightness, noise, outliers; see that module), which is generated in memory and fitted in this process
by :func:`fit_case` (``estimate_shading`` with default settings, darkfield on when the case has one;
swap the method there). Metrics: flatfield error = relative RMS of (Ŝ/mean Ŝ)/(S/mean S) − 1 over the
whole frame (``estimate_grid.relative_rms``); darkfield error = RMS(D̂ − D) in counts and as % of the
case's mean signal above the darkfield. A refused fit (``EstimateError``) or a crash is a failure
(error ∞). ``--only KIND`` keeps the cases of those seeds whose scene, shading, darkfield, drift or
dtype is KIND. Targets: median ≤ 0.5 %, worst ≤ 1.5 % flatfield error. Output: one line per case, a
summary with per-kind medians and worsts, and ``results.json`` / ``results.md`` in ``--out`` (default
``bench-output/estimate-sweep``). ``--processes 2`` fits two cases at a time (times then include the
contention). The exit code is 0 whatever the errors: this is a benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BASICPY = os.path.join(ROOT, "bench-output", "basicpy-venv", "bin", "python")

HELPER = r"""
import json, sys, time
import numpy as np

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass

def peak_rss():
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0

method, stack_path, out_path = sys.argv[1], sys.argv[2], sys.argv[3]
repeats, options = int(sys.argv[4]), json.loads(sys.argv[5])
stack = np.load(stack_path)
if method == "shadeflow":
    from shadeflow.core.estimate.estimator import EstimateSettings, estimate_shading
    settings = EstimateSettings(darkfield_degree=options.get("darkfield_degree", 2))
    def fit():
        result = estimate_shading(stack, darkfield=options["darkfield"], settings=settings)
        return result.flatfield, result.darkfield
else:
    import torch
    torch.set_num_threads(2)
    from basicpy import BaSiC
    def fit():
        model = BaSiC(**options)
        model.fit(stack)
        return model.flatfield, model.darkfield
times, peaks = [], []
for _ in range(repeats):
    reset_peak()
    started = time.perf_counter()
    flat, dark = fit()
    times.append(time.perf_counter() - started)
    peaks.append(peak_rss())
np.savez(
    out_path,
    flatfield=np.asarray(flat, np.float64),
    darkfield=np.asarray(dark, np.float64),
    times=np.array(times),
    peaks=np.array(peaks),
)
"""


@dataclass(frozen=True)
class Case:
    kind: str
    size: int
    n: int
    darkfield: bool = True
    outliers: float = 0.0
    shape: str = "ramp"  # darkfield shape: "glow" adds a curved corner glow (outside the recipe)


FULL = [
    Case("tissue", 1024, 200),  # the target
    Case("tissue", 1024, 200, outliers=0.02),
    Case("sparse", 1024, 200),
    Case("tissue", 1024, 200, darkfield=False),
    Case("tissue", 512, 200),
    Case("sparse", 512, 200),
    Case("empty", 512, 200),
    Case("tissue", 512, 200, outliers=0.02),
    Case("sparse", 512, 200, darkfield=False),
    Case("tissue", 512, 50),
    Case("sparse", 512, 50),
    Case("sparse", 512, 1000),
    Case("sparse", 512, 200, shape="glow"),  # a curved darkfield: where the least-curvature prior is wrong
    Case("tissue", 512, 200, shape="glow"),
]
QUICK = [Case("sparse", 256, 60), Case("tissue", 256, 60, darkfield=False)]

BASIC_SETTINGS = {
    "dark+sort": {"get_darkfield": True, "sort_intensity": True},
    "dark": {"get_darkfield": True},
    "dflt": {},
}


def metrics(
    flat: np.ndarray, dark: np.ndarray, truth_flat: np.ndarray, truth_dark: np.ndarray
) -> dict[str, float]:
    r = (flat / flat.mean()) / (truth_flat / truth_flat.mean())
    uniform = 300.0 * truth_flat + truth_dark
    corrected = (uniform - dark) / flat
    return {
        "ff_rms": float(np.sqrt(np.mean((r - 1) ** 2))) * 100,
        "ff_max": float(np.abs(r - 1).max()) * 100,
        "df_rms": float(np.sqrt(np.mean((dark - truth_dark) ** 2))),
        "ucv": float(corrected.std() / corrected.mean()) * 100,
    }


def run_method(
    python: str, method: str, stack_path: str, repeats: int, options: dict, workdir: str, timeout: float
) -> dict | None:
    helper = os.path.join(workdir, "fit_helper.py")
    if not os.path.exists(helper):
        with open(helper, "w") as handle:
            handle.write(HELPER)
    out = os.path.join(workdir, f"{method}-{abs(hash(json.dumps(options, sort_keys=True)))}.npz")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    try:
        done = subprocess.run(
            [python, helper, method, stack_path, out, str(repeats), json.dumps(options)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        print(f"    {method} {options}: timed out after {timeout:.0f} s", flush=True)
        return None
    if done.returncode != 0:
        print(f"    {method} {options}: failed\n{done.stderr[-2000:]}", flush=True)
        return None
    data = np.load(out)
    result = {
        "flatfield": data["flatfield"],
        "darkfield": data["darkfield"],
        "times": data["times"].tolist(),
        "peak_gib": float(data["peaks"].max()) / 2**30,
    }
    os.remove(out)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two small stacks, no BaSiCPy")
    parser.add_argument(
        "--repeats", type=int, default=3, help="fits per shadeflow measurement (best and median reported)"
    )
    parser.add_argument(
        "--basicpy-python",
        default=None,
        help="interpreter with basicpy installed (default: bench-output/basicpy-venv/bin/python if present)",
    )
    parser.add_argument(
        "--basicpy-repeats",
        type=int,
        default=1,
        help="fits per BaSiCPy measurement (each takes seconds to minutes)",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="run only stacks whose label contains this text (--sweep: cases of this kind)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for results.json and results.md (default bench-output/estimate, or estimate-sweep)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="randomised synthetic sweep (core.synth.sweep) instead of the recipe stacks",
    )
    parser.add_argument("--cases", type=int, default=60, help="--sweep: number of seeds")
    parser.add_argument("--first-seed", type=int, default=0, help="--sweep: first seed")
    parser.add_argument("--processes", type=int, default=1, help="--sweep: cases fitted at a time")
    parser.add_argument(
        "--method", default=None, help="--sweep: the estimator's method (default: the estimator's default)"
    )
    args = parser.parse_args()
    if args.sweep:
        if args.method is not None:
            os.environ["SHADEFLOW_SWEEP_METHOD"] = args.method  # read by fit_case in every worker process
        return sweep(
            args.first_seed,
            args.cases,
            args.only,
            args.out or os.path.join(ROOT, "bench-output", "estimate-sweep"),
            args.processes,
        )
    args.out = args.out or os.path.join(ROOT, "bench-output", "estimate")

    from shadeflow.core.synth.stacks import StackConfig, generate_stack

    basic_python = (
        None
        if args.quick
        else (args.basicpy_python or (DEFAULT_BASICPY if os.path.exists(DEFAULT_BASICPY) else None))
    )
    if basic_python is None and not args.quick:
        print(
            "BaSiCPy: no interpreter (see the docstring for its setup); comparing against "
            "reference/basicpy.md's figures only",
            flush=True,
        )
    cases = QUICK if args.quick else FULL
    if args.only:
        cases = [
            c
            for c in cases
            if args.only
            in StackConfig(c.kind, c.size, c.n, c.darkfield, c.outliers, darkfield_shape=c.shape).label
        ]
    os.makedirs(args.out, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="shadeflow-bench-estimate-") as workdir:
        for case in cases:
            config = StackConfig(
                kind=case.kind,
                size=case.size,
                n=case.n,
                darkfield=case.darkfield,
                outlier_fraction=case.outliers,
                darkfield_shape=case.shape,
            )
            started = time.perf_counter()
            stack, truth = generate_stack(config, workers=2)
            path = os.path.join(workdir, "stack.npy")
            np.save(path, stack)
            del stack
            load = os.getloadavg()[0]
            print(
                f"{config.label}: generated in {time.perf_counter() - started:.0f} s; load {load:.2f}",
                flush=True,
            )
            methods = [
                ("shadeflow", "shadeflow", sys.executable, {"darkfield": case.darkfield}, args.repeats)
            ]
            if case.shape == "glow":  # the documented remedy: a more flexible darkfield polynomial
                methods.append(
                    (
                        "shadeflow dd4",
                        "shadeflow",
                        sys.executable,
                        {"darkfield": True, "darkfield_degree": 4},
                        args.repeats,
                    )
                )
            if basic_python:
                names = ["dark+sort", "dark"] if case.darkfield else ["dflt"]
                methods += [
                    (f"BaSiC {n}", "basicpy", basic_python, BASIC_SETTINGS[n], args.basicpy_repeats)
                    for n in names
                ]
            for label, method, python, options, repeats in methods:
                timeout = 1800 if case.n >= 1000 else 600
                result = run_method(python, method, path, repeats, options, workdir, timeout)
                if result is None:
                    continue
                row = {
                    "stack": config.label,
                    "method": label,
                    **metrics(
                        result["flatfield"], result["darkfield"], truth["flatfield"], truth["darkfield"]
                    ),
                }
                row.update(
                    fit_best=min(result["times"]),
                    fit_median=float(np.median(result["times"])),
                    peak_gib=result["peak_gib"],
                    load=os.getloadavg()[0],
                )
                rows.append(row)
                print(
                    f"    {label:16s} FF {row['ff_rms']:6.3f} % [max {row['ff_max']:5.2f}]  D rms "
                    f"{row['df_rms']:7.2f}  uCV {row['ucv']:5.2f} %  fit {row['fit_best']:7.3f} s (median "
                    f"{row['fit_median']:.3f})  peak {row['peak_gib']:.2f} GiB  load {row['load']:.2f}",
                    flush=True,
                )
    table = markdown(rows)
    print("\n" + table)
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump(rows, handle, indent=2)
    with open(os.path.join(args.out, "results.md"), "w") as handle:
        handle.write(table + "\n")
    return 0


def markdown(rows: list[dict]) -> str:
    """One line per stack and method; BaSiC ratios against the best BaSiC setting of the stack."""
    lines = [
        "| stack | method | FF rms % [max] | D rms (counts) | uniform CV % | fit s best (median) | peak GiB "
        "| FF ratio BaSiC/ours | time ratio BaSiC/ours | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stack in dict.fromkeys(r["stack"] for r in rows):
        group = [r for r in rows if r["stack"] == stack]
        ours = next((r for r in group if r["method"] == "shadeflow"), None)
        basic = [r for r in group if r["method"].startswith("BaSiC")]
        best = min(basic, key=lambda r: r["ff_rms"]) if basic else None
        reference = next((r for r in basic if r["method"] == "BaSiC dark+sort"), best)
        for r in group:
            ff_ratio = time_ratio = ""
            if r is ours and best is not None:
                ff_ratio = (
                    f"{best['ff_rms'] / max(ours['ff_rms'], 1e-9):.1f}× "
                    f"({best['method'].removeprefix('BaSiC ')})"
                )
                time_ratio = (
                    f"{reference['fit_best'] / max(ours['fit_best'], 1e-9):.0f}× "
                    f"({reference['method'].removeprefix('BaSiC ')})"
                )
            lines.append(
                f"| {stack} | {r['method']} | {r['ff_rms']:.3f} [{r['ff_max']:.2f}] | {r['df_rms']:.2f} | "
                f"{r['ucv']:.2f} | {r['fit_best']:.3f} ({r['fit_median']:.3f}) | {r['peak_gib']:.2f} | "
                f"{ff_ratio} | {time_ratio} | {r['load']:.2f} |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# --sweep: randomised synthetic cases (core.synth.sweep)

SWEEP_TARGETS = {"median": 0.5, "worst": 1.5}  # flatfield relative RMS, %


def fit_case(images: np.ndarray, darkfield: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The method under test: flatfield, darkfield and notes of ``images``. Swap the method here."""
    from shadeflow.core.estimate.estimator import EstimateSettings, estimate_shading

    method = os.environ.get("SHADEFLOW_SWEEP_METHOD")
    result = estimate_shading(
        images, darkfield=darkfield, settings=EstimateSettings(method=method) if method else None
    )
    return result.flatfield, result.darkfield, list(result.notes)


def sweep_case(seed: int) -> dict:
    """Generate, fit and score the case of ``seed``; a refused or crashed fit is a failure (error ∞)."""
    from shadeflow.core.estimate.grid import EstimateError, relative_rms
    from shadeflow.core.synth.sweep import draw_case, generate

    case = draw_case(seed)
    started = time.perf_counter()
    images, truth = generate(case)
    generated = time.perf_counter() - started
    row = {
        "seed": seed,
        "scene": case.scene,
        "shading": case.shading,
        "darkfield": case.darkfield,
        "drift": case.drift,
        "n": case.n,
        "height": case.height,
        "width": case.width,
        "mean_counts": round(case.mean_counts, 2),
        "outliers_pct": round(100 * len(truth.outliers) / case.n, 2),
        "dtype": case.dtype,
        "saturated_pct": round(100 * truth.saturated_fraction, 3),
        "generate_s": round(generated, 3),
        "ff_pct": None,
        "dark_counts": None,
        "dark_pct": None,
        "fit_s": None,
        "failure": None,
        "notes": [],
    }
    started = time.perf_counter()
    try:
        flat, dark, row["notes"] = fit_case(images, case.has_darkfield)
    except EstimateError as exc:
        row["failure"] = f"refused: {exc}"
    except Exception as exc:  # noqa: BLE001 — a crash is a failure of this case, not of the sweep
        row["failure"] = f"crashed: {type(exc).__name__}: {exc}"
    row["fit_s"] = round(time.perf_counter() - started, 3)
    if row["failure"] is None:
        ff = relative_rms(np.asarray(flat, np.float64), truth.flatfield)
        if not np.isfinite(ff):
            row["failure"] = "non-finite flatfield"
        else:
            row["ff_pct"] = 100 * ff
            if case.has_darkfield:
                row["dark_counts"] = float(
                    np.sqrt(np.mean((np.asarray(dark, np.float64) - truth.darkfield) ** 2))
                )
                row["dark_pct"] = 100 * row["dark_counts"] / case.mean_counts
    return row


def sweep_cases(first: int, count: int, only: str | None) -> list:
    """The cases of seeds first … first + count − 1, those of kind ``only`` if given."""
    from shadeflow.core.synth.sweep import draw_case

    cases = [draw_case(seed) for seed in range(first, first + count)]
    return [c for c in cases if only is None or only in (c.scene, c.shading, c.darkfield, c.drift, c.dtype)]


SWEEP_HEADER = (
    f"{'seed':>4} {'scene':11} {'shading':9} {'dark':8} {'N':>4} {'H×W':>7} {'counts':>7} {'out%':>4} "
    f"{'drift':8} "
    f"{'FF %':>6} {'D cnt':>6} {'D %':>6} {'fit s':>5} {'gen s':>5}  notes"
)


def sweep_line(row: dict) -> str:
    ff = "inf" if row["failure"] else f"{row['ff_pct']:.3f}"
    d_counts = "—" if row["dark_counts"] is None else f"{row['dark_counts']:.2f}"
    d_pct = "—" if row["dark_pct"] is None else f"{row['dark_pct']:.2f}"
    size = f"{row['height']}×{row['width']}"
    return (
        f"{row['seed']:>4} {row['scene']:11} {row['shading']:9} {row['darkfield']:8} {row['n']:>4} {size:>7} "
        f"{row['mean_counts']:>7.0f} {row['outliers_pct']:>4.1f} {row['drift']:8} "
        f"{ff:>6} {d_counts:>6} {d_pct:>6} {row['fit_s']:>5.2f} {row['generate_s']:>5.2f}  {sweep_notes(row)}"
    )


def sweep_notes(row: dict) -> str:
    parts = [row["failure"]] if row["failure"] else []
    if row["dtype"] != "uint16":
        parts.append(row["dtype"])
    if row["saturated_pct"] >= 0.01:
        parts.append(f"sat {row['saturated_pct']:.2f} %")
    parts += row["notes"]
    return "; ".join(parts)


def summarise(rows: list[dict]) -> dict:
    """Median and worst errors (failures count as ∞ in the flatfield figures), overall and per kind."""

    def stats(group: list[dict]) -> dict:
        ff = np.array([np.inf if r["failure"] else r["ff_pct"] for r in group])
        dark = [r for r in group if r["dark_counts"] is not None]
        return {
            "cases": len(group),
            "failures": sum(1 for r in group if r["failure"]),
            "ff_median": float(np.median(ff)) if len(ff) else None,
            "ff_worst": float(ff.max()) if len(ff) else None,
            "dark_cases": len(dark),
            "dark_median_counts": float(np.median([r["dark_counts"] for r in dark])) if dark else None,
            "dark_worst_counts": max(r["dark_counts"] for r in dark) if dark else None,
            "dark_median_pct": float(np.median([r["dark_pct"] for r in dark])) if dark else None,
            "dark_worst_pct": max(r["dark_pct"] for r in dark) if dark else None,
        }

    summary = {"all": stats(rows), "per_kind": {}}
    for key in ("scene", "shading", "darkfield", "drift"):
        kinds = dict.fromkeys(sorted(r[key] for r in rows))
        summary["per_kind"][key] = {kind: stats([r for r in rows if r[key] == kind]) for kind in kinds}
    wrong = [r for r in rows if not r["failure"] and r["ff_pct"] > SWEEP_TARGETS["worst"]]
    summary["unwarned_wrong"] = [r["seed"] for r in wrong if not warned(r)]
    summary["warned_wrong"] = [r["seed"] for r in wrong if warned(r)]
    summary["warned_right"] = [
        r["seed"] for r in rows if not r["failure"] and r["ff_pct"] <= SWEEP_TARGETS["worst"] and warned(r)
    ]
    overall = summary["all"]
    summary["targets"] = {
        "median_pct": SWEEP_TARGETS["median"],
        "worst_pct": SWEEP_TARGETS["worst"],
        "median_met": overall["ff_median"] is not None and overall["ff_median"] <= SWEEP_TARGETS["median"],
        "worst_met": overall["ff_worst"] is not None and overall["ff_worst"] <= SWEEP_TARGETS["worst"],
    }
    return summary


#: notes that warn the answer may be off (not converged, poorly determined, darkfield not identifiable)
WARNINGS = ("check it", "not identifiable")


def warned(row: dict) -> bool:
    """The answer came with a note that it may be off."""
    return any(w in n for n in row["notes"] for w in WARNINGS)


def _pct(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else ("inf" if not np.isfinite(value) else f"{value:.{digits}f}")


def sweep_summary_text(summary: dict) -> str:
    """The summary as markdown tables (printed and written to results.md)."""
    a, t = summary["all"], summary["targets"]
    verdict = {True: "met", False: "MISSED"}
    lines = [
        "| cases | failures | FF median % | FF worst % | D median counts (% of signal) "
        "| D worst counts (% of signal) |",
        "|---|---|---|---|---|---|",
        f"| {a['cases']} | {a['failures']} "
        f"| {_pct(a['ff_median'])} (target ≤ {t['median_pct']}: {verdict[t['median_met']]}) "
        f"| {_pct(a['ff_worst'])} (target ≤ {t['worst_pct']}: {verdict[t['worst_met']]}) "
        f"| {_pct(a['dark_median_counts'], 2)} ({_pct(a['dark_median_pct'], 2)}) "
        f"| {_pct(a['dark_worst_counts'], 2)} ({_pct(a['dark_worst_pct'], 2)}) |",
        "",
        "| kind | | cases | failures | FF median % | FF worst % | D median counts | D worst counts "
        "| D worst % of signal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines[3:3] = [
        "",
        f"Answers more than {SWEEP_TARGETS['worst']} % off: {len(summary['unwarned_wrong'])} without a "
        f"warning note (seeds {summary['unwarned_wrong']}), {len(summary['warned_wrong'])} with one "
        f"(seeds {summary['warned_wrong']}); answers within it that carry a warning: "
        f"{len(summary['warned_right'])} (seeds {summary['warned_right']}).",
    ]
    for key, groups in summary["per_kind"].items():
        for kind, s in groups.items():
            lines.append(
                f"| {key} | {kind} | {s['cases']} | {s['failures']} | {_pct(s['ff_median'])} | "
                f"{_pct(s['ff_worst'])} "
                f"| {_pct(s['dark_median_counts'], 2)} | {_pct(s['dark_worst_counts'], 2)} "
                f"| {_pct(s['dark_worst_pct'], 2)} |"
            )
    return "\n".join(lines)


def sweep_table(rows: list[dict]) -> str:
    lines = [
        "| seed | scene | shading | darkfield | N | H×W | mean counts | outliers % | drift | FF % | D counts "
        "| D % of signal | fit s | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ff = "inf" if r["failure"] else _pct(r["ff_pct"])
        notes = sweep_notes(r).replace("|", "/")
        lines.append(
            f"| {r['seed']} | {r['scene']} | {r['shading']} | {r['darkfield']} | {r['n']} "
            f"| {r['height']}×{r['width']} | {r['mean_counts']:.0f} | {r['outliers_pct']:.1f} | "
            f"{r['drift']} | {ff} "
            f"| {_pct(r['dark_counts'], 2)} | {_pct(r['dark_pct'], 2)} | {r['fit_s']:.2f} | {notes} |"
        )
    return "\n".join(lines)


def sweep(first: int, count: int, only: str | None, out: str, processes: int) -> int:
    """Run the sweep (module description); always returns 0."""
    from concurrent.futures import ProcessPoolExecutor

    from shadeflow.core.synth import sweep as synth_sweep

    kinds = (
        synth_sweep.SCENES
        + synth_sweep.SHADINGS
        + synth_sweep.DARKFIELDS
        + synth_sweep.DRIFTS
        + synth_sweep.DTYPES
    )
    if only is not None and only not in kinds:
        print(f"--only {only!r}: not a kind of the sweep ({', '.join(kinds)})", file=sys.stderr)
        return 0
    seeds = [c.seed for c in sweep_cases(first, count, only)]
    print(
        f"sweep: {len(seeds)} cases, method {os.environ.get('SHADEFLOW_SWEEP_METHOD', 'default')} (seeds "
        f"{first}–{first + count - 1}{', ' + only if only else ''}); "
        "FF = flatfield relative RMS %, D = darkfield RMS error in counts and in % of the mean signal "
        "above it; "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print(SWEEP_HEADER, flush=True)
    started = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(processes) if processes > 1 else nullcontext() as pool:
        for row in pool.map(sweep_case, seeds) if pool else map(sweep_case, seeds):
            rows.append(row)
            print(sweep_line(row), flush=True)
    runtime = time.perf_counter() - started
    summary = summarise(rows) if rows else {}
    text = sweep_summary_text(summary) if rows else "no cases"
    print(f"\n{text}\n\ntotal {runtime:.0f} s ({len(rows)} cases, {processes} process(es))", flush=True)
    os.makedirs(out, exist_ok=True)
    record = {
        "first_seed": first,
        "cases": count,
        "only": only,
        "processes": processes,
        "runtime_s": round(runtime, 1),
        "rows": rows,
        "summary": summary,
    }
    with open(os.path.join(out, "results.json"), "w") as handle:
        json.dump(record, handle, indent=2)
    with open(os.path.join(out, "results.md"), "w") as handle:
        title = f"seeds {first}–{first + count - 1}{' (' + only + ')' if only else ''}, {runtime:.0f} s"
        handle.write(
            f"# Estimator sweep: {title}\n\nFF: flatfield relative RMS %. "
            f"D: RMS(D̂ − D) in counts, and in % of the mean signal above the darkfield.\n\n"
            f"{text}\n\n{sweep_table(rows)}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
