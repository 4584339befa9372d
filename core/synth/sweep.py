"""Randomised synthetic stacks for the shading estimator: a seeded sweep with exact ground truth.

Where ``core.synth.stacks`` is one recipe, this module draws a different stack from every seed, so that
accuracy is judged across scenes, shadings, darkfields, frame counts, brightness, outliers and drift
rather than on one case (issue 10, item 3).

Methods. A case is drawn from its seed alone (:func:`draw_case`). The four kinds — scene, shading,
darkfield and baseline drift — are stratified: consecutive seeds are grouped in blocks as long as the
list of kinds, and each block takes a seeded permutation of that list, so any run of seeds covers every
kind about equally often while the combinations stay random. The remaining parameters are drawn
independently: frames N log-uniform in 20–1000; frame width and height in 96–384 px (square or up to
±0.4 in log aspect), shrunk so that N·H·W stays below 40 M pixels; the mean signal above the darkfield
log-uniform in 5–30,000 counts; read noise σ uniform in 1–5 counts; outlier frames in 60 % of the cases,
a fraction uniform in 0.5–5 %; float32 instead of uint16 output in about one case in eight.

Geometry is isotropic: positions are measured in units of the frame's longer side L, from pixel
centres. The shading S is (i) a radial Gaussian fall-off centred within ±3 % of the middle, its
farthest corner at 0.5–0.9 of the peak; (ii) the same off-centre, displaced by 0.1–0.3 L; (iii) a tilted
plane whose extreme values over the frame have a ratio of 0.5–0.9, times a mild radial curvature of
±10 % at the farthest corner; or (iv) a radial fall-off times a sharp aperture — a circle whose edge
crosses the frame, or a straight edge leaving 10–30 % of the frame outside — whose edge is a logistic of
scale 1–3 % of the frame width and whose outside level is 0.05–0.4 of the inside. S is scaled to mean 1.
The darkfield D is zero, a flat camera offset of 50–500 counts, that offset plus a linear ramp rising by
2–20 % of it across the frame, or the offset plus a Gaussian amplifier glow of 5–50 counts (σ 0.15–0.4 L)
centred near a corner or the middle of an edge.

Specimens P_n are relative to a background of 1 and differ in every frame (independent fields of view);
textures are unit-variance periodic Gaussian-filtered white noise (``synth_stacks.smooth_noise``), and
"cells" are masks where a texture exceeds the quantile that gives the drawn coverage, softened by a
logistic; nuclei and debris are Gaussian spots at uniform positions with log-normal peaks. Scenes:
*sparse* fluorescent cells (3–20 % coverage, 3–30× the background) on a dark background; *tissue*
(50–85 % coverage, 1–8×, textured); *confluent* (a textured layer everywhere at 2–10×, never below
0.2 of that, plus nuclei: no background anywhere); *brightfield* transmission T (background 1,
absorbing cells covering 10–60 % that remove 20–70 % of the light, dark debris, bright halos up to
+30 % around the cells); and *mostly empty* (1–20 small spots per frame).

Each frame's baseline is B_n = level · b_n with b_n constant ± a jitter of 1–15 %, an exponential
bleaching decay to 30–90 % of the first frame, or 1–4 random level changes, each segment at
×0.5–2 of the first (all with ≤ 1 % jitter). The level is set so that the mean expected signal of
the regular frames, S·B_n·P_n, equals the drawn mean counts. Outlier frames cycle through a closed
shutter (B = 0: darkfield and read noise only), a large out-of-focus bright blob (2–10× the frame's
mean, σ 0.1–0.25 L), an over-exposure whose mean reaches 1–3× the uint16 range, and a frame of another
channel (another scene at 0.2–5× the level). Images are

    I_n = Poisson(S · B_n · P_n) + D + N(0, σ²),

rounded and clipped to uint16 (so the bright end saturates), or kept as float32. The truth returned is
exactly what was planted: S, D, B_n (0 for the shutter, including the outlier factors) and which frames
are outliers; on request the specimens P_n too, from which the noise-free images follow exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import fft
from scipy.special import expit, ndtri

from .stacks import gaussian_filter_periodic, smooth_noise

SCENES = ("sparse", "tissue", "confluent", "brightfield", "empty")
SHADINGS = ("radial", "offcentre", "tilted", "aperture")
DARKFIELDS = ("none", "flat", "gradient", "glow")
DRIFTS = ("constant", "bleach", "steps")
OUTLIER_KINDS = ("shutter", "blob", "overexposed", "channel")
DTYPES = ("uint16", "float32")

FRAMES = (20, 1000)
SIZES = (96, 384)
MAX_PIXELS = 40_000_000
COUNTS = (5.0, 30_000.0)
READ_NOISE = (1.0, 5.0)
MAX_OUTLIERS = 0.05
UINT16_MAX = 65535.0

#: pixels generated at a time (bounds the temporaries, whatever the frame count)
CHUNK_PIXELS = 2_000_000
# independent random streams derived from a case seed
_DRAW, _PIXELS, _STRATA = 1, 2, 3


@dataclass(frozen=True)
class SweepCase:
    """Everything drawn for one case; :func:`generate` turns it into images and truth.

    The ``*_params`` mappings hold the parameters of the chosen kind (see the module description);
    ``mean_counts`` is the mean expected signal above the darkfield over the regular frames.
    """

    seed: int
    scene: str
    shading: str
    darkfield: str
    drift: str
    n: int
    height: int
    width: int
    mean_counts: float
    read_noise: float
    outlier_fraction: float
    dtype: str = "uint16"
    scene_params: Mapping[str, float] = field(default_factory=dict)
    shading_params: Mapping[str, float] = field(default_factory=dict)
    darkfield_params: Mapping[str, float] = field(default_factory=dict)
    drift_params: Mapping[str, float] = field(default_factory=dict)
    shot_noise: bool = True  # False with read_noise 0 gives the noise-free images

    def __post_init__(self) -> None:
        for name, kinds in (
            ("scene", SCENES),
            ("shading", SHADINGS),
            ("darkfield", DARKFIELDS),
            ("drift", DRIFTS),
            ("dtype", DTYPES),
        ):
            if getattr(self, name) not in kinds:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {', '.join(kinds)}")
        if self.n < 1 or min(self.height, self.width) < 16:
            raise ValueError(
                f"a case needs a frame of at least 16×16 px, got {self.n} of {self.height}×{self.width}"
            )
        if not (self.mean_counts > 0 and self.read_noise >= 0 and 0 <= self.outlier_fraction <= 1):
            raise ValueError(
                "mean_counts must be positive, read_noise non-negative, outlier_fraction in [0, 1]"
            )

    @property
    def has_darkfield(self) -> bool:
        return self.darkfield != "none"

    @property
    def outlier_count(self) -> int:
        """Outlier frames: the fraction of N rounded down, so that the share never exceeds the drawn one."""
        return int(math.floor(self.outlier_fraction * self.n + 1e-9))

    @property
    def label(self) -> str:
        """E.g. ``7-tissue-aperture-glow-bleach``."""
        return f"{self.seed}-{self.scene}-{self.shading}-{self.darkfield}-{self.drift}"


@dataclass
class SweepTruth:
    """What :func:`generate` planted."""

    flatfield: np.ndarray  # (H, W) float64, mean 1
    darkfield: np.ndarray  # (H, W) float64 counts (zeros for "none")
    baseline: np.ndarray  # (N,) float64: B_n, the background's counts at S = 1 (outlier factors included)
    outliers: dict[int, str]  # frame → outlier kind
    saturated_fraction: float  # share of output pixels at the uint16 maximum
    specimen: np.ndarray | None = None  # (N, H, W) float32 P_n, when asked for

    def expected_images(self) -> np.ndarray:
        """S·B_n·P_n + D in float64: the noise-free images (needs the specimen)."""
        if self.specimen is None:
            raise ValueError("generate(case, keep_specimen=True) keeps the specimen this needs")
        return self.flatfield * self.baseline[:, None, None] * self.specimen + self.darkfield


# ---------------------------------------------------------------------------------------------
# drawing a case


def _stratum(seed: int, dimension: int, kinds: tuple[str, ...]) -> str:
    """Kind of ``seed`` along one dimension: each block of len(kinds) seeds is a seeded permutation of
    kinds."""
    block, position = divmod(seed, len(kinds))
    order = np.random.default_rng([_STRATA, dimension, block]).permutation(len(kinds))
    return kinds[int(order[position])]


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def draw_case(
    seed: int,
    *,
    scene: str | None = None,
    shading: str | None = None,
    darkfield: str | None = None,
    drift: str | None = None,
    **fixed,
) -> SweepCase:
    """The case of ``seed`` (module description).

    Parameters
    ----------
    seed : int
        Non-negative; the only source of randomness.
    scene, shading, darkfield, drift : str, optional
        Fix a kind instead of taking the seed's stratum; its parameters are then drawn for that kind.
    **fixed
        Other fields of :class:`SweepCase` (``n``, ``height``, ``width``, ``mean_counts``, ``dtype``,
        ``outlier_fraction``, ``read_noise``, ``shot_noise``, …) that replace the drawn values.

    Returns
    -------
    SweepCase
    """
    if seed < 0:
        raise ValueError(f"seed {seed} must be non-negative")
    rng = np.random.default_rng([_DRAW, seed])
    scene = scene or _stratum(seed, 0, SCENES)
    shading = shading or _stratum(seed, 1, SHADINGS)
    darkfield = darkfield or _stratum(seed, 2, DARKFIELDS)
    drift = drift or _stratum(seed, 3, DRIFTS)
    n = int(round(_log_uniform(rng, *FRAMES)))
    height, width = _frame_size(rng, n)
    case = SweepCase(
        seed=seed,
        scene=scene,
        shading=shading,
        darkfield=darkfield,
        drift=drift,
        n=n,
        height=height,
        width=width,
        mean_counts=_log_uniform(rng, *COUNTS),
        read_noise=float(rng.uniform(*READ_NOISE)),
        outlier_fraction=float(rng.uniform(0.005, MAX_OUTLIERS)) if rng.random() < 0.6 else 0.0,
        dtype="float32" if rng.random() < 0.125 else "uint16",
        scene_params=draw_scene_params(scene, rng),
        shading_params=_SHADING_PARAMS[shading](rng),
        darkfield_params=_DARKFIELD_PARAMS[darkfield](rng),
        drift_params=_DRIFT_PARAMS[drift](rng),
    )
    return replace(case, **fixed) if fixed else case


def _frame_size(rng: np.random.Generator, n: int) -> tuple[int, int]:
    """Width uniform in SIZES, height equal or at a log aspect of ±0.4; both shrunk to keep N·H·W ≤
    MAX_PIXELS."""
    width = int(rng.integers(SIZES[0], SIZES[1] + 1))
    aspect = 1.0 if rng.random() < 0.4 else math.exp(rng.uniform(-0.4, 0.4))
    height = int(np.clip(round(width * aspect), *SIZES))
    shrink = min(1.0, math.sqrt(MAX_PIXELS / (n * height * width)))
    return max(SIZES[0], int(height * shrink)), max(SIZES[0], int(width * shrink))


def draw_scene_params(scene: str, rng: np.random.Generator) -> dict[str, float]:
    """Parameters of a scene (module description); also used for the specimen of an other-channel outlier."""
    if scene == "sparse":
        return {
            "coverage": rng.uniform(0.03, 0.2),
            "contrast": _log_uniform(rng, 3, 30),
            "depth": rng.uniform(0.2, 0.5),
        }
    if scene == "tissue":
        return {
            "coverage": rng.uniform(0.5, 0.85),
            "contrast": _log_uniform(rng, 1, 8),
            "depth": rng.uniform(0.3, 0.7),
        }
    if scene == "confluent":
        return {
            "contrast": _log_uniform(rng, 2, 10),
            "floor": rng.uniform(0.2, 0.5),
            "depth": rng.uniform(0.3, 0.6),
        }
    if scene == "brightfield":
        return {
            "coverage": rng.uniform(0.1, 0.6),
            "absorption": rng.uniform(0.2, 0.7),
            "halo": rng.uniform(0.0, 0.3),
        }
    return {"spots": rng.uniform(1, 20), "contrast": _log_uniform(rng, 3, 30)}  # empty


def _radial_params(rng: np.random.Generator, offset: tuple[float, float]) -> dict[str, float]:
    angle, distance = rng.uniform(0, 2 * math.pi), rng.uniform(*offset)
    return {
        "centre_x": distance * math.cos(angle),
        "centre_y": distance * math.sin(angle),
        "corner": rng.uniform(0.5, 0.9),
    }


def _aperture_params(rng: np.random.Generator) -> dict[str, float]:
    params = _radial_params(rng, (0.0, 0.03))
    # edge_width: the logistic's scale, as a share of the frame width
    params.update(
        edge_width=rng.uniform(0.01, 0.03), outside=rng.uniform(0.05, 0.4), circular=float(rng.random() < 0.5)
    )
    # a circle crossing the frame: radius 0.55–0.9 of the centre's farthest-corner distance
    if params["circular"]:
        params.update(
            aperture_x=rng.uniform(-0.1, 0.1),
            aperture_y=rng.uniform(-0.1, 0.1),
            radius=rng.uniform(0.55, 0.9),
        )
    else:  # a straight edge near one side (± 10°), leaving 10–30 % of the frame's extent outside
        side = int(rng.integers(4))
        params.update(
            angle=side * math.pi / 2 + rng.uniform(-0.17, 0.17), outside_share=rng.uniform(0.1, 0.3)
        )
    return params


_SHADING_PARAMS: dict[str, Callable[[np.random.Generator], dict[str, float]]] = {
    "radial": lambda rng: _radial_params(rng, (0.0, 0.03)),
    "offcentre": lambda rng: _radial_params(rng, (0.1, 0.3)),
    "tilted": lambda rng: {
        "angle": rng.uniform(0, 2 * math.pi),
        "ratio": rng.uniform(0.5, 0.9),
        "curvature": rng.uniform(-0.1, 0.1),
    },
    "aperture": _aperture_params,
}


def _glow_params(rng: np.random.Generator) -> dict[str, float]:
    anchor_x, anchor_y = [(0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0), (0.5, 1), (0, 0.5), (1, 0.5)][
        int(rng.integers(8))
    ]
    return {
        "offset": rng.uniform(50, 500),
        "amplitude": rng.uniform(5, 50),
        "sigma": rng.uniform(0.15, 0.4),
        "u": anchor_x + rng.uniform(-0.05, 0.05),
        "v": anchor_y + rng.uniform(-0.05, 0.05),
    }


_DARKFIELD_PARAMS: dict[str, Callable[[np.random.Generator], dict[str, float]]] = {
    "none": lambda rng: {},
    "flat": lambda rng: {"offset": rng.uniform(50, 500)},
    "gradient": lambda rng: {
        "offset": rng.uniform(50, 500),
        "ramp": rng.uniform(0.02, 0.2),
        "angle": rng.uniform(0, 2 * math.pi),
    },
    "glow": _glow_params,
}

_DRIFT_PARAMS: dict[str, Callable[[np.random.Generator], dict[str, float]]] = {
    "constant": lambda rng: {"jitter": rng.uniform(0.01, 0.15)},
    "bleach": lambda rng: {"end": rng.uniform(0.3, 0.9), "jitter": rng.uniform(0.0, 0.01)},
    "steps": lambda rng: {"changes": float(rng.integers(1, 5)), "jitter": rng.uniform(0.0, 0.01)},
}


# ---------------------------------------------------------------------------------------------
# fields


def frame_coordinates(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y as (H, 1), x as (1, W)) from the frame centre, in units of the longer
    side."""
    h, w = shape
    length = max(h, w)
    y = ((np.arange(h) + 0.5) - h / 2) / length
    x = ((np.arange(w) + 0.5) - w / 2) / length
    return y[:, None], x[None, :]


def _corners(shape: tuple[int, int]) -> np.ndarray:
    """(4, 2) frame corners (y, x) in the units of :func:`frame_coordinates`."""
    h, w = shape
    hy, hx = h / 2 / max(h, w), w / 2 / max(h, w)
    return np.array([(sy * hy, sx * hx) for sy in (-1, 1) for sx in (-1, 1)])


def radial_falloff(shape: tuple[int, int], centre_y: float, centre_x: float, corner: float) -> np.ndarray:
    """exp(−ρ²/2σ²) about (centre_y, centre_x); σ puts the farthest frame corner at ``corner`` of the peak."""
    y, x = frame_coordinates(shape)
    rho2 = (y - centre_y) ** 2 + (x - centre_x) ** 2
    far2 = float((((_corners(shape) - (centre_y, centre_x)) ** 2).sum(axis=1)).max())
    return np.exp(rho2 / far2 * math.log(corner))


def _along(shape: tuple[int, int], angle: float) -> tuple[np.ndarray, float, float]:
    """The coordinate along direction ``angle`` and its range over the frame."""
    y, x = frame_coordinates(shape)
    t_corners = _corners(shape) @ np.array([math.sin(angle), math.cos(angle)])
    return x * math.cos(angle) + y * math.sin(angle), float(t_corners.min()), float(t_corners.max())


def tilted(shape: tuple[int, int], angle: float, ratio: float, curvature: float) -> np.ndarray:
    """A plane along ``angle`` (smallest/largest over the frame: ``ratio``) times 1 −
    curvature·(ρ/ρ_corner)²."""
    t, low, high = _along(shape, angle)
    half = (high - low) / 2
    slope = (1 - ratio) / (1 + ratio) / half
    y, x = frame_coordinates(shape)
    rho2 = (y**2 + x**2) / float((_corners(shape) ** 2).sum(axis=1).max())
    return (1 + slope * (t - (low + high) / 2)) * (1 - curvature * rho2)


def aperture(shape: tuple[int, int], params: Mapping[str, float]) -> np.ndarray:
    """outside + (1 − outside)·logistic(distance inside the edge / (edge_width·W)): a circle or a straight
    edge."""
    scale = params["edge_width"] * shape[1] / max(shape)  # logistic scale, in units of the longer side
    if params["circular"]:
        y, x = frame_coordinates(shape)
        cy, cx = params["aperture_y"], params["aperture_x"]
        far = math.sqrt(float((((_corners(shape) - (cy, cx)) ** 2).sum(axis=1)).max()))
        inside = params["radius"] * far - np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
    else:
        t, low, high = _along(shape, params["angle"])
        inside = (high - params["outside_share"] * (high - low)) - t
    level = params["outside"]
    return level + (1 - level) * expit(inside / scale)


def shading_field(case: SweepCase) -> np.ndarray:
    """The planted flatfield S of ``case``, (H, W) float64, mean 1."""
    shape, p = (case.height, case.width), case.shading_params
    if case.shading == "tilted":
        flat = tilted(shape, p["angle"], p["ratio"], p["curvature"])
    else:
        flat = radial_falloff(shape, p["centre_y"], p["centre_x"], p["corner"])
        if case.shading == "aperture":
            flat = flat * aperture(shape, p)
    return flat / flat.mean()


def darkfield_field(case: SweepCase) -> np.ndarray:
    """The planted darkfield D of ``case``, (H, W) float64 counts."""
    shape, p = (case.height, case.width), case.darkfield_params
    if case.darkfield == "none":
        return np.zeros(shape)
    dark = np.full(shape, p["offset"])
    if case.darkfield == "gradient":
        t, low, high = _along(shape, p["angle"])
        dark = dark + p["ramp"] * p["offset"] * (t - low) / (high - low)
    elif case.darkfield == "glow":
        y, x = frame_coordinates(shape)
        length = max(shape)
        gy, gx = (p["v"] - 0.5) * shape[0] / length, (p["u"] - 0.5) * shape[1] / length
        dark = dark + p["amplitude"] * np.exp(-((y - gy) ** 2 + (x - gx) ** 2) / (2 * p["sigma"] ** 2))
    return dark


def baseline_drift(case: SweepCase, rng: np.random.Generator) -> np.ndarray:
    """b_n (N,), relative to the first frame's level (before jitter)."""
    n, p = case.n, case.drift_params
    jitter = 1 + rng.uniform(-p["jitter"], p["jitter"], n)
    if case.drift == "constant":
        return jitter
    if case.drift == "bleach":
        return p["end"] ** (np.arange(n) / max(n - 1, 1)) * jitter
    changes = (
        np.sort(rng.choice(np.arange(1, n), min(int(p["changes"]), n - 1), replace=False)) if n > 1 else []
    )
    levels = np.exp(rng.uniform(math.log(0.5), math.log(2.0), len(changes)))
    segment = np.searchsorted(changes, np.arange(n), side="right")  # 0 before the first change
    return np.concatenate([[1.0], levels])[segment] * jitter


# ---------------------------------------------------------------------------------------------
# specimens: (n, H, W) float32, background 1


def cell_mask(texture: np.ndarray, coverage: float, softness: float = 0.15) -> np.ndarray:
    """logistic((texture − q)/softness), q the unit-normal quantile leaving ``coverage`` above it."""
    return expit((texture - np.float32(ndtri(1 - coverage))) / np.float32(softness))


def spots(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    per_frame: float,
    sigma: float,
    peak: float,
    spread: float = 0.5,
) -> np.ndarray:
    """Gaussian spots of ``sigma`` px, Poisson(per_frame) per image at uniform positions, log-normal peaks
    (median ``peak``, σ_ln ``spread``): impulses filtered by a unit-gain Gaussian, so each spot keeps its
    weight."""
    out = np.zeros(shape, np.float32)
    counts = rng.poisson(per_frame, shape[0])
    total = int(counts.sum())
    where = (
        np.repeat(np.arange(shape[0]), counts),
        rng.integers(0, shape[1], total),
        rng.integers(0, shape[2], total),
    )
    weights = peak * np.exp(spread * rng.standard_normal(total)) * 2 * math.pi * sigma**2
    np.add.at(out, where, weights.astype(np.float32))
    return gaussian_filter_periodic(out, sigma)


Scene = Callable[[np.random.Generator, tuple[int, int, int], float, Mapping[str, float]], np.ndarray]


def _sparse(
    rng: np.random.Generator, shape: tuple[int, int, int], length: float, p: Mapping[str, float]
) -> np.ndarray:
    """1 + contrast · cells · texture + nuclei: cells where a texture of σ = L/30 tops the coverage
    quantile."""
    cells = cell_mask(smooth_noise(rng, shape, length / 30), p["coverage"])
    texture = np.maximum(0, 1 + p["depth"] * smooth_noise(rng, shape, max(length / 150, 0.7)))
    area = shape[1] * shape[2] / length**2
    nuclei = spots(rng, shape, 300 * p["coverage"] * area, max(length / 250, 1.0), p["contrast"])
    return 1 + p["contrast"] * cells * texture + nuclei


def _tissue(
    rng: np.random.Generator, shape: tuple[int, int, int], length: float, p: Mapping[str, float]
) -> np.ndarray:
    """1 + contrast · tissue · texture + nuclei: tissue from textures of σ = L/10 and L/40 (synth_stacks'
    recipe)."""
    g = 0.8 * smooth_noise(rng, shape, length / 10) + 0.45 * smooth_noise(rng, shape, length / 40)
    tissue = cell_mask(g / g.std(axis=(-2, -1), keepdims=True), p["coverage"])
    texture = np.maximum(0, 1 + p["depth"] * smooth_noise(rng, shape, max(length / 150, 0.7)))
    area = shape[1] * shape[2] / length**2
    nuclei = spots(rng, shape, 600 * p["coverage"] * area, max(length / 300, 1.0), p["contrast"])
    return 1 + p["contrast"] * tissue * texture + nuclei


def _confluent(
    rng: np.random.Generator, shape: tuple[int, int, int], length: float, p: Mapping[str, float]
) -> np.ndarray:
    """1 + contrast · layer · texture + nuclei, the layer in [floor, 1] everywhere: never the bare
    background."""
    layer = p["floor"] + (1 - p["floor"]) * expit(smooth_noise(rng, shape, length / 20) / np.float32(0.7))
    texture = np.maximum(0.3, 1 + p["depth"] * smooth_noise(rng, shape, max(length / 150, 0.7)))
    area = shape[1] * shape[2] / length**2
    nuclei = spots(rng, shape, 500 * area, max(length / 300, 1.0), p["contrast"])
    return 1 + p["contrast"] * layer * texture + nuclei


def _brightfield(
    rng: np.random.Generator, shape: tuple[int, int, int], length: float, p: Mapping[str, float]
) -> np.ndarray:
    """Transmission 1 − absorption · cells · texture − debris + halo · rings, at least 0.02."""
    cells = cell_mask(smooth_noise(rng, shape, length / 25), p["coverage"], 0.12)
    texture = np.maximum(0, 1 + 0.4 * smooth_noise(rng, shape, max(length / 150, 0.7)))
    # ≤ 1 just outside each cell
    halo = 2 * np.maximum(0, gaussian_filter_periodic(cells, length / 80) - cells)
    area = shape[1] * shape[2] / length**2
    debris = spots(rng, shape, 30 * area, max(length / 200, 1.0), 0.3)
    transmission = 1 - p["absorption"] * cells * texture - debris + p["halo"] * halo
    return np.maximum(transmission, np.float32(0.02))


def _empty(
    rng: np.random.Generator, shape: tuple[int, int, int], length: float, p: Mapping[str, float]
) -> np.ndarray:
    """1 + a few spots (``spots`` per L² of frame)."""
    return 1 + spots(
        rng, shape, p["spots"] * shape[1] * shape[2] / length**2, max(length / 150, 1.0), p["contrast"]
    )


_SCENES: dict[str, Scene] = {
    "sparse": _sparse,
    "tissue": _tissue,
    "confluent": _confluent,
    "brightfield": _brightfield,
    "empty": _empty,
}


def specimen(
    scene: str, params: Mapping[str, float], rng: np.random.Generator, n: int, shape: tuple[int, int]
) -> np.ndarray:
    """P for ``n`` independent fields of view of ``scene``, (n, H, W) float32, relative to a background of 1.

    Drawn on the next larger grid that FFTs fast (a frame of 383 px would otherwise take a slow prime-size
    transform) and cropped: the textures are stationary, so the crop changes nothing but their periodicity.
    """
    grid = (n, fft.next_fast_len(shape[0], real=True), fft.next_fast_len(shape[1], real=True))
    out = _SCENES[scene](rng, grid, float(max(shape)), params)[:, : shape[0], : shape[1]]
    return np.ascontiguousarray(out, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# images


def plan_outliers(case: SweepCase, rng: np.random.Generator) -> dict[int, str]:
    """Which frames are outliers, and of which kind (the kinds cycle from a random start)."""
    count = case.outlier_count
    if count == 0:
        return {}
    frames = np.sort(rng.choice(case.n, count, replace=False))
    start = int(rng.integers(len(OUTLIER_KINDS)))
    return {int(f): OUTLIER_KINDS[(start + k) % len(OUTLIER_KINDS)] for k, f in enumerate(frames)}


def _make_outlier(
    kind: str, case: SweepCase, rng: np.random.Generator, frame: np.ndarray, flat: np.ndarray, level: float
) -> tuple[np.ndarray, float]:
    """An outlier frame's specimen and baseline factor, from a regular frame and its baseline ``level``."""
    shape = (case.height, case.width)
    if kind == "shutter":
        return frame, 0.0
    if kind == "blob":
        y, x = frame_coordinates(shape)
        cy, cx = rng.uniform(-0.3, 0.3, 2)
        sigma = rng.uniform(0.1, 0.25)
        blob = rng.uniform(2, 10) * frame.mean() * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
        return (frame + blob).astype(np.float32), 1.0
    if kind == "overexposed":  # the frame's mean light reaches 1–3× the uint16 range
        return frame, rng.uniform(1, 3) * UINT16_MAX / max(level * float((flat * frame).mean()), 1e-9)
    other = SCENES[(SCENES.index(case.scene) + int(rng.integers(1, len(SCENES)))) % len(SCENES)]
    return specimen(other, draw_scene_params(other, rng), rng, 1, shape)[0], _log_uniform(rng, 0.2, 5)


def _chunks(case: SweepCase) -> list[slice]:
    step = max(1, CHUNK_PIXELS // (case.height * case.width))
    return [slice(i, min(case.n, i + step)) for i in range(0, case.n, step)]


def generate(case: SweepCase, keep_specimen: bool = False) -> tuple[np.ndarray, SweepTruth]:
    """The images of ``case`` and their truth (module description).

    Two passes over frame chunks: the first draws the specimens and measures the mean signal they would
    give at unit level, which fixes the level; the second adds the outliers, shot noise, darkfield and
    read noise. Every draw comes from one generator seeded by the case seed, in frame order.

    Parameters
    ----------
    case : SweepCase
    keep_specimen : bool
        Also return the specimens P_n in the truth ((N, H, W) float32: one more copy of the stack).

    Returns
    -------
    images : ndarray
        (N, H, W), ``case.dtype``: uint16 rounded and clipped, or float32 as generated.
    truth : SweepTruth
    """
    rng = np.random.default_rng([_PIXELS, case.seed])
    shape = (case.height, case.width)
    flat, dark = shading_field(case), darkfield_field(case)
    drift = baseline_drift(case, rng)
    outliers = plan_outliers(case, rng)
    regular = np.ones(case.n, bool)
    regular[list(outliers)] = False
    if not regular.any():  # only when a caller asks for 100 % outliers: scale by all frames
        regular[:] = True
    flat32 = flat.astype(np.float32)
    light = np.empty((case.n, *shape), np.float32)
    unit_signal = np.empty(case.n)  # mean of S·P_n
    for part in _chunks(case):
        light[part] = specimen(case.scene, case.scene_params, rng, part.stop - part.start, shape)
        unit_signal[part] = (light[part] * flat32).mean(axis=(1, 2), dtype=np.float64)
    level = case.mean_counts / float(np.mean(drift[regular] * unit_signal[regular]))
    baseline = level * drift
    for i, kind in outliers.items():
        light[i], factor = _make_outlier(kind, case, rng, light[i], flat, baseline[i])
        baseline[i] *= factor
    kept = light.copy() if keep_specimen else None
    images = light if case.dtype == "float32" else np.empty(light.shape, np.uint16)
    dark32 = dark.astype(np.float32)
    for part in _chunks(case):
        expected = light[part] * flat32 * baseline[part, None, None].astype(np.float32)
        counts = rng.poisson(expected).astype(np.float32) if case.shot_noise else expected
        counts += dark32
        if case.read_noise:
            counts += np.float32(case.read_noise) * rng.standard_normal(counts.shape, dtype=np.float32)
        images[part] = counts if case.dtype == "float32" else np.clip(np.rint(counts), 0, UINT16_MAX)
    saturated = float((images == UINT16_MAX).mean()) if case.dtype == "uint16" else 0.0
    return images, SweepTruth(flat, dark, baseline, outliers, saturated, kept)
