"""Synthetic image stacks with a known flatfield and darkfield: the ground truth of ``shadeflow estimate``.

The recipe is the one our BaSiCPy benchmark used (``reference/basicpy.md`` §3), so figures are
comparable; with u, v = (pixel + 0.5) / size:

* **flatfield** F = exp(−((u − 0.56)² + (v − 0.45)²) / 2σ²), σ set so the farthest corner is 0.55 of
  the peak, normalised to mean 1 (range ≈ 0.65–1.18);
* **darkfield** D = 100 + 6u + 4v counts (camera offset plus a small ramp), or 0 without darkfield;
  ``darkfield_shape="glow"`` adds a curved 15-count amplifier glow in one corner (not in the recipe: it
  shows where a least-curvature darkfield prior stops being right);
* **specimen** T_n = b_n · (100 + tissue + cells), b_n ~ U(0.85, 1.15) (per-frame brightness, the
  "baseline"); tissue = m · A · max(0, 1 + d·h) with m = logistic((g − thr) / 0.15), g and h
  unit-std periodic Gaussian-filtered white noise (h at σ = W/150); cells are Gaussian spots
  (σ = W/340) at uniform positions with log-normal peaks (median 800, σ_ln 0.5). Per kind:

  ========  ===============================  ======  ========  ===  ===  =====
  kind      g                                thr     coverage  A    d    cells
  ========  ===============================  ======  ========  ===  ===  =====
  sparse    σ = W/30                         1.04    ≈ 15 %    300  0.4  150
  tissue    0.8·g(W/10) + 0.45·g(W/40)       −0.67   ≈ 75 %    600  0.5  600
  empty     σ = W/30                         2.05    ≈ 2 %     300  0.4  15
  ========  ===============================  ======  ========  ===  ===  =====

* **images** I_n = Poisson(T_n · F) + D + N(0, 3²), rounded and clipped to uint16.

Optional departures from the model, each with its truth recorded: **outlier frames** (a seeded
``outlier_fraction`` of the frames, cycling through a closed shutter — darkfield and noise only —,
a large out-of-focus bright object, and a 40× over-exposure that saturates most of the frame) and
**saturated spots** (in ``saturated_fraction`` of the frames, one to three discs at 65,535).

Every frame is generated from its own seed (``SeedSequence([20240601, scene, size, n, seed])``
spawned per frame), so a stack is the same whatever the order or parallelism of generation.
"""

from __future__ import annotations

import functools
import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from scipy import fft

from ..io import storage

KINDS = ("tissue", "sparse", "empty")
#: scene numbers in the seed (basicpy.md: 1 sparse, 2 tissue)
SCENES = {"sparse": 1, "tissue": 2, "empty": 3}
OUTLIER_KINDS = ("dark", "object", "overexposed")
DARKFIELD_SHAPES = ("ramp", "glow")
TRUTH_DIR = "truth"
STACK_NAME = "stack.zarr"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class StackConfig:
    """What to generate: ``n`` frames of ``size``×``size`` of one ``kind``."""

    kind: str = "tissue"
    size: int = 512
    n: int = 200
    darkfield: bool = True
    outlier_fraction: float = 0.0
    saturated_fraction: float = 0.0
    seed: int = 0
    darkfield_shape: str = "ramp"  # "ramp" (the recipe) or "glow" (plus a curved corner glow)

    def __post_init__(self) -> None:
        if self.darkfield_shape not in DARKFIELD_SHAPES:
            raise ValueError(
                f"darkfield_shape {self.darkfield_shape!r} is not one of {', '.join(DARKFIELD_SHAPES)}"
            )
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.size < 16:
            raise ValueError(f"size {self.size} is too small (at least 16 px)")
        if self.n < 1:
            raise ValueError(f"n {self.n} must be at least 1")
        for name in ("outlier_fraction", "saturated_fraction"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} {value} must be between 0 and 1")

    @property
    def label(self) -> str:
        """E.g. ``tissue-1024-n200-dark-out2`` (used in benchmark tables and file names)."""
        parts = [
            self.kind,
            str(self.size),
            f"n{self.n}",
            ("glow" if self.darkfield_shape == "glow" else "dark") if self.darkfield else "nodark",
        ]
        if self.outlier_fraction:
            parts.append(f"out{round(100 * self.outlier_fraction):g}")
        if self.saturated_fraction:
            parts.append(f"sat{round(100 * self.saturated_fraction):g}")
        return "-".join(parts)


def _uv(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = (np.arange(size) + 0.5) / size
    v, u = np.meshgrid(centres, centres, indexing="ij")  # v down the rows (y), u along x
    return u, v


def truth_flatfield(size: int) -> np.ndarray:
    """F (size×size, float64, mean 1): a Gaussian spot at (0.56, 0.45) whose farthest corner is 0.55 of its
    peak."""
    u, v = _uv(size)
    u0, v0 = 0.56, 0.45
    corner_r2 = max((cu - u0) ** 2 + (cv - v0) ** 2 for cu in (0, 1) for cv in (0, 1))
    two_sigma2 = corner_r2 / -math.log(0.55)
    flat = np.exp(-((u - u0) ** 2 + (v - v0) ** 2) / two_sigma2)
    return flat / flat.mean()


def truth_darkfield(size: int, on: bool = True, shape: str = "ramp") -> np.ndarray:
    """D (size×size, float64): 100 + 6u + 4v counts, or zeros; ``glow`` adds a curved amplifier glow of
    15 counts at the (1, 1) corner, 15·exp(−((u − 1)² + (v − 1)²) / 2·0.3²) — not a plane."""
    u, v = _uv(size)
    if not on:
        return np.zeros((size, size))
    dark = 100.0 + 6.0 * u + 4.0 * v
    if shape == "glow":
        dark = dark + 15.0 * np.exp(-((u - 1) ** 2 + (v - 1) ** 2) / (2 * 0.3**2))
    return dark


@functools.lru_cache(maxsize=16)
def _gaussian_transfer(shape: int | tuple[int, int], sigma: float) -> np.ndarray:
    """The rfft2 transfer function of a unit-gain Gaussian of ``sigma`` px on an (H, W) (or size×size)
    grid."""
    h, w = (shape, shape) if isinstance(shape, int) else shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.exp(-2 * (math.pi * sigma) ** 2 * (fy**2 + fx**2)).astype(np.float32)


def gaussian_filter_periodic(images: np.ndarray, sigma: float) -> np.ndarray:
    """Images (…, H, W) filtered by a unit-gain Gaussian of ``sigma`` px with periodic borders (in the Fourier
    domain)."""
    shape = images.shape[-2:]
    spectrum = fft.rfft2(images, workers=1)
    spectrum *= _gaussian_transfer(shape, float(sigma))
    return fft.irfft2(spectrum, s=shape, workers=1)


def smooth_noise(rng: np.random.Generator, shape: int | tuple[int, ...], sigma: float) -> np.ndarray:
    """Unit-std periodic white noise filtered by a Gaussian of ``sigma`` px (in the Fourier domain).

    ``shape`` is a size (a square), (H, W) or (n, H, W); each image is scaled to unit std on its own.
    """
    shape = (shape, shape) if isinstance(shape, int) else tuple(shape)
    out = gaussian_filter_periodic(rng.standard_normal(shape, dtype=np.float32), sigma)
    return out / (out.std(axis=(-2, -1), keepdims=True) + 1e-12)


_smooth_noise = smooth_noise  # the name this module's recipe uses


def _cells(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """Gaussian spots (σ = W/340) at uniform positions with log-normal peaks (median 800, σ_ln 0.5)."""
    sigma = size / 340
    out = np.zeros((size, size), np.float32)
    if count == 0:
        return out
    ys, xs = rng.uniform(0, size, count), rng.uniform(0, size, count)
    peaks = 800.0 * np.exp(0.5 * rng.standard_normal(count))
    half = int(math.ceil(4 * sigma))
    offsets = np.arange(-half, half + 1)
    for y, x, peak in zip(ys, xs, peaks):
        iy, ix = int(y), int(x)
        gy = np.exp(-((iy + offsets + 0.5 - y) ** 2) / (2 * sigma**2))
        gx = np.exp(-((ix + offsets + 0.5 - x) ** 2) / (2 * sigma**2))
        rows, cols = (iy + offsets) % size, (ix + offsets) % size  # periodic, like the tissue
        out[np.ix_(rows, cols)] += (peak * gy[:, None] * gx[None, :]).astype(np.float32)
    return out


def specimen(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """100 + tissue + cells (before the frame's brightness b_n), float32."""
    w = size
    if kind == "tissue":
        g = 0.8 * _smooth_noise(rng, w, w / 10) + 0.45 * _smooth_noise(rng, w, w / 40)
        g /= g.std() + 1e-12
        thr, amplitude, depth, n_cells = -0.67, 600.0, 0.5, 600
    else:
        g = _smooth_noise(rng, w, w / 30)
        thr, amplitude, depth, n_cells = (
            (1.04, 300.0, 0.4, 150) if kind == "sparse" else (2.05, 300.0, 0.4, 15)
        )
    h = _smooth_noise(rng, w, w / 150)
    m = 1.0 / (1.0 + np.exp(-(g - np.float32(thr)) / np.float32(0.15)))
    tissue = m * amplitude * np.maximum(0.0, 1.0 + depth * h)
    return (100.0 + tissue + _cells(rng, w, n_cells)).astype(np.float32)


def _seed_sequence(config: StackConfig) -> np.random.SeedSequence:
    return np.random.SeedSequence([20240601, SCENES[config.kind], config.size, config.n, config.seed])


def plan_frames(config: StackConfig) -> dict:
    """Per-frame truth decided before any pixel: brightness b_n, outlier frames and their kind, saturated
    frames."""
    rng = np.random.default_rng(_seed_sequence(config).spawn(1)[0])
    brightness = rng.uniform(0.85, 1.15, config.n)
    n_out = int(round(config.outlier_fraction * config.n))
    outliers = sorted(int(i) for i in rng.choice(config.n, n_out, replace=False)) if n_out else []
    kinds = {i: OUTLIER_KINDS[k % len(OUTLIER_KINDS)] for k, i in enumerate(outliers)}
    n_sat = int(round(config.saturated_fraction * config.n))
    saturated = sorted(int(i) for i in rng.choice(config.n, n_sat, replace=False)) if n_sat else []
    return {"brightness": brightness, "outliers": kinds, "saturated": saturated}


def generate_frame(
    config: StackConfig, index: int, plan: dict, flatfield: np.ndarray, darkfield: np.ndarray
) -> np.ndarray:
    """Frame ``index`` of the stack, uint16 (size, size)."""
    seq = _seed_sequence(config)
    rng = np.random.default_rng(np.random.SeedSequence(seq.entropy, spawn_key=(1, index)))
    w = config.size
    light = plan["brightness"][index] * specimen(config.kind, rng, w)
    outlier = plan["outliers"].get(index)
    if outlier == "dark":
        light = np.zeros_like(light)
    elif outlier == "object":  # a large out-of-focus bright object (a bubble, debris)
        u, v = _uv(w)
        cu, cv = rng.uniform(0.2, 0.8, 2)
        light = light + 2000.0 * np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * 0.12**2)).astype(np.float32)
    elif outlier == "overexposed":
        light = 40.0 * light
    expected = light * flatfield.astype(np.float32)
    counts = rng.poisson(expected).astype(np.float32)
    image = counts + darkfield.astype(np.float32) + rng.normal(0.0, 3.0, (w, w)).astype(np.float32)
    if index in plan["saturated"]:
        u, v = _uv(w)
        for _ in range(int(rng.integers(1, 4))):
            cu, cv = rng.uniform(0.05, 0.95, 2)
            image[(u - cu) ** 2 + (v - cv) ** 2 <= (1 / 50) ** 2] = 65535.0
    return np.clip(np.rint(image), 0, 65535).astype(np.uint16)


def generate_stack(config: StackConfig, workers: int = 2) -> tuple[np.ndarray, dict]:
    """The whole stack (n, size, size) uint16 in memory, and its truth (see :func:`stack_truth`)."""
    flatfield, darkfield = (
        truth_flatfield(config.size),
        truth_darkfield(config.size, config.darkfield, config.darkfield_shape),
    )
    plan = plan_frames(config)
    stack = np.empty((config.n, config.size, config.size), np.uint16)

    def make(i: int) -> None:
        stack[i] = generate_frame(config, i, plan, flatfield, darkfield)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(pool.map(make, range(config.n)))
    return stack, stack_truth(config, plan, flatfield, darkfield)


def stack_truth(config: StackConfig, plan: dict, flatfield: np.ndarray, darkfield: np.ndarray) -> dict:
    return {
        "config": asdict(config),
        "flatfield": flatfield,
        "darkfield": darkfield,
        "brightness": plan["brightness"],
        "outliers": {int(k): v for k, v in plan["outliers"].items()},
        "saturated": list(plan["saturated"]),
    }


def write_stack(out: str, config: StackConfig, fmt: str = "zarr", workers: int = 2) -> dict:
    """Write a stack under ``out`` — ``stack.zarr`` (an (n, size, size) uint16 array, one chunk per frame)
    or ``images/frame_NNNNN.tif`` — and its truth under ``out/truth/`` (``flatfield.npy``,
    ``darkfield.npy``, ``truth.json``). Returns where everything is."""
    if fmt not in ("zarr", "tiff"):
        raise ValueError(f"format {fmt!r} is not 'zarr' or 'tiff'")
    out = storage.normalize(out)
    stack, truth = generate_stack(config, workers)
    if fmt == "zarr":
        import zarr

        images = storage.join(out, STACK_NAME)
        array = zarr.create_array(
            store=images,
            shape=stack.shape,
            chunks=(1, config.size, config.size),
            dtype=stack.dtype,
            overwrite=True,
            storage_options=storage.storage_options(out) or None,
        )
        array[...] = stack
    else:
        import tifffile

        images = storage.join(out, IMAGES_DIR)
        for i, frame in enumerate(stack):
            buffer = io.BytesIO()
            tifffile.imwrite(buffer, frame)
            storage.write_bytes(storage.join(images, f"frame_{i:05d}.tif"), buffer.getvalue())
    folder = storage.join(out, TRUTH_DIR)
    for name in ("flatfield", "darkfield"):
        buffer = io.BytesIO()
        np.save(buffer, truth[name])
        storage.write_bytes(storage.join(folder, f"{name}.npy"), buffer.getvalue())
    meta = {
        "config": truth["config"],
        "images": images,
        "format": fmt,
        "brightness": [round(float(b), 6) for b in truth["brightness"]],
        "outlier_frames": {str(k): v for k, v in truth["outliers"].items()},
        "saturated_frames": truth["saturated"],
        "flatfield": "flatfield.npy (float64, mean 1)",
        "darkfield": "darkfield.npy (float64, counts)",
        "recipe": "reference/basicpy.md §3 (shadeflow.core.synth.stacks)",
    }
    storage.write_text(storage.join(folder, "truth.json"), json.dumps(meta, indent=2))
    return {
        "images": images,
        "truth": folder,
        "flatfield": storage.join(folder, "flatfield.npy"),
        "darkfield": storage.join(folder, "darkfield.npy"),
    }


def read_truth(out: str) -> dict:
    """The truth written by :func:`write_stack`: flatfield and darkfield arrays plus ``truth.json``."""
    folder = storage.join(storage.normalize(out), TRUTH_DIR)
    meta = json.loads(storage.read_text(storage.join(folder, "truth.json")))
    for name in ("flatfield", "darkfield"):
        meta[name] = np.load(io.BytesIO(storage.read_bytes(storage.join(folder, f"{name}.npy"))))
    return meta
