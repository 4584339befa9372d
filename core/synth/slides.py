"""Synthetic slides with a known flatfield, for demos, tests and benchmarks.

Every field is generated from a seeded model so that each mask and correction has a ground truth:

* **flatfield** — a smooth per-layer illumination F_l (mean 1, ~30 % fall-off at the far corner),
  shared by all slides of a cohort (one microscope);
* **specimen** — a slide-wide tissue map (in µm, consistent between overlapping fields) that thins out
  towards the edge of the scanned area, with holes of empty background; inside tissue a cellular
  texture (in pixels) mixed into the layers by a per-group spectrum;
* **folded (blurred) regions** — ellipses where the specimen is out of focus in every layer;
* **saturated spots** — small discs far above a layer group's saturation cut;
* **acquisition** — per-field, per-group exposure times around a median, a dark current, shot and
  read noise: raw = dark + ET · F · specimen, rounded and clipped to uint16.

The defaults make the demo's cohort. The knobs below draw cohorts with other statistics (for the
accuracy sweep ``bench/meanimage_accuracy.py``); each is off (``None`` / 0) by default, and then the
generator draws exactly the same random numbers as before the knob existed:

* ``tissue_coverage`` — fraction of the scan's interior covered by tissue (default ≈ 93 %);
* ``background_ratio`` — background (autofluorescence) counts above the dark current at the median
  exposure, as a multiple of the dark current (default 0.1 counts/ms whatever the dark current);
* ``low_count_layers`` / ``low_count_signal`` — that many non-DAPI layers whose tissue is only
  ``low_count_signal`` counts above the dark current at the median exposure;
* ``exposure_range`` — per-field, per-group exposure times drawn log-uniformly in (min, max) ms
  (default: each group's base time, × 0.8 or × 1.25 in a quarter of the fields);
* ``tissue_rate`` — each group's tissue brightness drawn log-uniformly in (min, max) counts/ms, once per
  cohort;
* ``grid`` — (columns, rows) of fields, overriding ``fields``;
* ``fold_probability``, ``saturation_probability`` — chance that a field has a fold / saturated spots;
* ``dark_current`` (counts).

The truth (flatfield, and per field the tissue / blur / saturation masks) is saved under
``<out>/synthetic_truth/``.

Two layouts of the same slides (the same pixels): ``"shadeflow"`` (the slide contract: ``<out>/<SlideID>/``
with ``slide.json``, ``fields.csv`` and ``fields/``) and ``"astropath"`` (an AstroPath sample tree, with
``<out>`` as its root: ``sampledef.csv``, ``<SlideID>/im3/xml/`` with ``Parameters.xml``, ``Full.xml`` and
an exposure file per field, and the fields in ``<out>/shardedim3root/<SlideID>/``; see
``shadeflow.core.io.astropath_tree``).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from ..io import astropath as astropath_io
from ..io import astropath_tree, storage
from ..meanimage.geometry import NATIVE_PIXEL_UM
from ..meanimage.masks.parameters import MaskParameters

TRUTH_DIR = "synthetic_truth"
LAYOUTS = ("shadeflow", "astropath")
#: the folder of an AstroPath-layout cohort's fields (its ``shardedim3root``), below ``<out>``
SHARDED_DIR = "shardedim3root"
#: display names and first emission wavelength (nm) of the filters written to an AstroPath ``Full.xml``
FILTER_NAMES = {
    "dapi": ("DAPI", 440),
    "fitc": ("FITC", 520),
    "cy3": ("Cy3", 570),
    "texasred": ("Texas Red", 610),
    "cy5": ("Cy5", 670),
    "opal780": ("Opal 780", 780),
    "opal480": ("Opal 480", 480),
}
VECTRA_FIELD_UM = (1344 * NATIVE_PIXEL_UM, 1004 * NATIVE_PIXEL_UM)
VECTRA_GROUPS = {"dapi": [1, 9], "fitc": [10, 18], "cy3": [19, 25], "texasred": [26, 32], "cy5": [33, 35]}
POLARIS_GROUPS = {
    "dapi": [1, 9],
    "opal780": [10, 11],
    "opal480": [12, 17],
    "cy5": [18, 20],
    "fitc": [21, 29],
    "cy3": [30, 36],
    "texasred": [37, 43],
}
#: median exposure time (ms) and tissue brightness (counts/ms) per group
BASE_EXPOSURE_MS = {
    "dapi": 60.0,
    "fitc": 120.0,
    "cy3": 60.0,
    "texasred": 40.0,
    "cy5": 100.0,
    "opal780": 150.0,
    "opal480": 60.0,
}
TISSUE_BRIGHTNESS = {
    "dapi": 14.0,
    "fitc": 9.0,
    "cy3": 11.0,
    "texasred": 12.0,
    "cy5": 10.0,
    "opal780": 6.0,
    "opal480": 9.0,
}


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. ``shape`` is (H, W, L); fields cover a Vectra field's area whatever their size."""

    slides: int = 3
    fields: int = 48
    shape: tuple[int, int, int] = (251, 336, 10)
    seed: int = 0
    overlap: float = 0.1  # fraction of a field shared with each neighbour
    dark_current: float = 8.0
    corner_falloff: float = 0.3  # flatfield at the farthest corner is this much below its peak
    fold_probability: float = 0.3
    saturation_probability: float = 0.3
    project: int = 1
    cohort: int = 1
    tissue_coverage: float | None = None  # fraction of the scan's interior that is tissue (None: ≈ 0.93)
    # background counts above dark at the median exposure ÷ dark current
    background_ratio: float | None = None
    low_count_layers: int = 0  # non-DAPI layers with only ``low_count_signal`` counts of tissue
    low_count_signal: float = 15.0  # counts above dark of low-count tissue at the median exposure
    exposure_range: tuple[float, float] | None = None  # ms, per field and group, log-uniform
    tissue_rate: tuple[float, float] | None = None  # counts/ms per group, log-uniform, once per cohort
    grid: tuple[int, int] | None = None  # (columns, rows) of fields; overrides ``fields``

    def __post_init__(self) -> None:
        if self.grid is not None:
            columns, rows = (int(v) for v in self.grid)
            if columns < 1 or rows < 1:
                raise ValueError(f"grid must be at least 1×1 fields, got {columns}×{rows}")
            object.__setattr__(self, "grid", (columns, rows))
            object.__setattr__(self, "fields", columns * rows)
        if self.tissue_coverage is not None and not 0.0 < self.tissue_coverage < 1.0:
            raise ValueError(
                f"tissue coverage must be between 0 and 1 (exclusive), got {self.tissue_coverage}"
            )
        for name in ("exposure_range", "tissue_rate"):
            value = getattr(self, name)
            if value is not None:
                low, high = (float(v) for v in value)
                if not 0 < low <= high:
                    raise ValueError(f"{name} must be 0 < min <= max, got {low}, {high}")
                object.__setattr__(self, name, (low, high))
        if self.dark_current < 0:
            raise ValueError(f"dark current must be ≥ 0 counts, got {self.dark_current}")
        if self.background_ratio is not None and self.background_ratio < 0:
            raise ValueError(f"background ratio must be ≥ 0, got {self.background_ratio}")
        for name in ("fold_probability", "saturation_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if self.low_count_layers < 0 or self.low_count_signal <= 0:
            raise ValueError("low-count layers must be ≥ 0 with a positive signal")

    @property
    def columns(self) -> int:
        """Fields per row of the scan."""
        return self.grid[0] if self.grid is not None else max(1, math.ceil(math.sqrt(self.fields * 4 / 3)))

    def median_exposure_ms(self, group: str) -> float:
        """The exposure time a group's fields scatter around (the log-centre of ``exposure_range``)."""
        if self.exposure_range is not None:
            return math.sqrt(self.exposure_range[0] * self.exposure_range[1])
        return BASE_EXPOSURE_MS.get(group, 100.0)

    @property
    def microscope(self) -> str:
        return "polaris" if self.shape[2] == 43 else "vectra"

    @property
    def pixel_um(self) -> float:
        return VECTRA_FIELD_UM[0] / self.shape[1]

    @property
    def field_size_um(self) -> tuple[float, float]:
        return self.shape[1] * self.pixel_um, self.shape[0] * self.pixel_um


def parse_grid(text: str) -> tuple[int, int]:
    """``"12x10"`` (columns × rows of fields) as (12, 10)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--grid: expected COLUMNSxROWS such as 12x10, got {text!r}")
    return int(parts[0]), int(parts[1])


def synthetic_layer_groups(n_layers: int) -> dict[str, list[int]]:
    """Vectra's groups for 35 layers, Polaris's for 43, otherwise Vectra's five filters shrunk
    proportionally."""
    if n_layers == 35:
        return dict(VECTRA_GROUPS)
    if n_layers == 43:
        return dict(POLARIS_GROUPS)
    if n_layers < 1:
        raise ValueError("need at least one layer")
    names, sizes = list(VECTRA_GROUPS), np.array([9, 9, 7, 7, 3], dtype=float)
    share = sizes / sizes.sum() * n_layers
    counts = np.floor(share).astype(int)
    counts[0] = max(counts[0], 1)
    for i in np.argsort(-(share - np.floor(share))):  # largest remainders first
        if counts.sum() >= n_layers:
            break
        counts[i] += 1
    while counts.sum() > n_layers:
        counts[np.argmax(counts)] -= 1
    groups, first = {}, 1
    for name, count in zip(names, counts):
        if count > 0:
            groups[name] = [int(first), int(first + count - 1)]
            first += count
    return groups


def planted_flatfield(shape: tuple[int, int, int], corner_falloff: float = 0.3) -> np.ndarray:
    """The known flatfield, (L, H, W) float64, each layer with mean 1.

    A Gaussian illumination spot whose centre drifts a little with the layer (chromatic shift), scaled
    so the farthest corner is ``corner_falloff`` below the peak.
    """
    h, w, n_layers = shape
    v, u = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    aspect = h / w
    layers = []
    for layer in range(n_layers):
        u0 = 0.52 + 0.04 * math.sin(0.7 * layer)
        v0 = 0.47 + 0.04 * math.cos(0.5 * layer)
        r2 = (u - u0) ** 2 + ((v - v0) * aspect) ** 2
        corner_r2 = max((cu - u0) ** 2 + ((cv - v0) * aspect) ** 2 for cu in (0, 1) for cv in (0, 1))
        width2 = corner_r2 / (-2 * math.log(1 - corner_falloff))
        flat = np.exp(-r2 / (2 * width2))
        layers.append(flat / flat.mean())
    return np.stack(layers)


@dataclass(frozen=True)
class FieldSpec:
    key: str
    file: str
    cx: float
    cy: float
    acquired: str
    exposure_ms: dict[str, float]
    index: int


def field_grid(config: SynthConfig, slide_id: str, slide_index: int) -> list[FieldSpec]:
    """Field centres on a raster of ``fields`` positions (near 4:3), acquired in raster order."""
    rng = np.random.default_rng([config.seed, slide_index, 7])
    fw, fh = config.field_size_um
    step_x, step_y = fw * (1 - config.overlap), fh * (1 - config.overlap)
    columns = config.columns
    start = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC) + dt.timedelta(days=slide_index)
    groups = synthetic_layer_groups(config.shape[2])
    specs = []
    for i in range(config.fields):
        row, col = divmod(i, columns)
        cx, cy = 2000.0 + col * step_x, 1500.0 + row * step_y
        key = f"{slide_id}_[{int(round(cx))},{int(round(cy))}]"
        if config.exposure_range is None:
            exposure = {
                g: BASE_EXPOSURE_MS.get(g, 100.0) * float(rng.choice([1.0] * 6 + [0.8, 1.25])) for g in groups
            }
        else:
            low, high = np.log(config.exposure_range)
            exposure = {g: round(float(np.exp(rng.uniform(low, high))), 2) for g in groups}
        specs.append(
            FieldSpec(
                key,
                f"fields/{key}.Data.dat",
                cx,
                cy,
                (start + dt.timedelta(seconds=20 * i)).isoformat(),
                exposure,
                i,
            )
        )
    return specs


class _TissueMap:
    """Slide-wide tissue density from random Fourier features (µm coordinates), thinning at the scan edge."""

    #: tissue where the density exceeds this (``generate_field``: level = clip(20 · density), tissue > 0.5)
    TISSUE_LEVEL = 0.025

    def __init__(
        self,
        rng: np.random.Generator,
        extent: tuple[float, float, float, float],
        coverage: float | None = None,
    ):
        self.extent = extent
        n = 24
        wavelength = np.concatenate([rng.uniform(250, 600, n // 2), rng.uniform(90, 200, n // 2)])
        angle = rng.uniform(0, 2 * np.pi, n)
        self.kx, self.ky = 2 * np.pi / wavelength * np.cos(angle), 2 * np.pi / wavelength * np.sin(angle)
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.amplitude = np.concatenate([np.full(n // 2, 1.0), np.full(n // 2, 0.5)]) / math.sqrt(n / 2)
        self.offset = 1.2  # mostly tissue (≈ 93 %), holes where the map dips
        if coverage is not None:
            # the offset that makes ``coverage`` of the scan's interior tissue, from the map itself on a 10 µm
            # grid
            x0, x1, y0, y1 = extent
            xs, ys = np.arange(x0, x1, 10.0), np.arange(y0, y1, 10.0)
            values = self._texture(xs[None, :], ys[:, None])
            self.offset = self.TISSUE_LEVEL - float(np.quantile(values, 1.0 - coverage))

    def _texture(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.broadcast_arrays(x, y)
        value = np.zeros(x.shape)
        for kx, ky, phase, amplitude in zip(self.kx, self.ky, self.phase, self.amplitude):
            value += amplitude * np.cos(kx * x + ky * y + phase)
        return value

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        x, y = np.broadcast_arrays(x, y)
        value = self._texture(x, y)
        x0, x1, y0, y1 = self.extent
        edge_distance = np.minimum.reduce([x - x0, x1 - x, y - y0, y1 - y])
        # fading out over ~150 µm at the scan border
        return value + self.offset - 3.5 * np.exp(-np.clip(edge_distance, 0, None) / 150.0)


@dataclass(frozen=True)
class CohortLevels:
    """Signal levels shared by every slide of a cohort (one stain panel on one microscope)."""

    tissue_rate: dict[str, float]  # group → tissue brightness, counts/ms
    background: tuple[float, ...]  # per layer: autofluorescence, counts/ms
    low_count_rate: dict[int, float]  # 0-based layer → its tissue brightness, counts/ms


def cohort_levels(config: SynthConfig, groups: dict[str, list[int]]) -> CohortLevels:
    """The cohort's tissue brightness per group, background per layer and low-count layers (seeded by
    ``config.seed``)."""
    rng = np.random.default_rng([config.seed, 5])
    if config.tissue_rate is None:
        rates = {name: TISSUE_BRIGHTNESS.get(name, 9.0) for name in groups}
    else:
        low, high = np.log(config.tissue_rate)
        rates = {name: float(np.exp(rng.uniform(low, high))) for name in groups}
    background, low_count = [], {}
    for name, (first, last) in groups.items():
        for _ in range(first, last + 1):
            # 0.1 counts/ms by default; else a multiple of the dark current at the group's median exposure
            ratio = config.background_ratio
            background.append(
                0.1 if ratio is None else ratio * config.dark_current / config.median_exposure_ms(name)
            )
    candidates = [
        layer
        for name, (first, last) in groups.items()
        if name.lower() != "dapi"
        for layer in range(first - 1, last)
    ]
    if config.low_count_layers and candidates:
        chosen = rng.choice(candidates, size=min(config.low_count_layers, len(candidates)), replace=False)
        for layer in sorted(int(v) for v in chosen):
            name = next(n for n, (first, last) in groups.items() if first - 1 <= layer < last)
            low_count[layer] = config.low_count_signal / config.median_exposure_ms(name)
    return CohortLevels(rates, tuple(background), low_count)


def _texture(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Log-normal cellular texture with unit mean and ~50 % contrast at a scale of a few pixels."""
    # periodic borders: with reflected ones, edge pixels would get a larger variance, hence a brighter mean
    z = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_px, mode="wrap")
    z /= z.std() + 1e-12
    texture = np.exp(0.55 * z)
    return texture / texture.mean()


def _disc(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float, angle: float
) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    return ((c * dx + s * dy) / rx) ** 2 + ((-s * dx + c * dy) / ry) ** 2 <= 1.0


def generate_field(
    config: SynthConfig,
    slide_index: int,
    spec: FieldSpec,
    tissue_map: _TissueMap,
    flatfield: np.ndarray,
    groups: dict[str, list[int]],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One raw field, (H, W, L) uint16 interleaved, and its truth masks."""
    h, w, n_layers = config.shape
    rng = np.random.default_rng([config.seed, slide_index, spec.index, 11])
    px = config.pixel_um
    fw, fh = config.field_size_um
    # tissue map on a coarse grid (every ~8 µm), upsampled: the map is smooth at that scale
    step = max(1, int(round(8.0 / px)))
    ys, xs = np.arange(0, h + step, step), np.arange(0, w + step, step)
    coarse = tissue_map(
        spec.cx - fw / 2 + (xs[None, :] + 0.5) * px, spec.cy - fh / 2 + (ys[:, None] + 0.5) * px
    )
    density = ndi.zoom(coarse, step, order=1)[:h, :w]
    tissue_level = np.clip(density * 20.0, 0, 1)  # tissue edges a few µm wide
    tissue_level = ndi.gaussian_filter(tissue_level, 1.0)

    yy, xx = np.mgrid[0:h, 0:w] * px  # µm within the field
    folds = np.zeros((h, w), bool)
    if rng.random() < config.fold_probability:
        rx, ry = rng.uniform(70, 120), rng.uniform(55, 90)
        cx, cy = rng.uniform(0.25, 0.75) * fw, rng.uniform(0.25, 0.75) * fh
        folds = _disc(xx, yy, cx, cy, rx, ry, rng.uniform(0, np.pi))
        tissue_level = np.where(folds, 1.0, tissue_level)

    group_names = list(groups)
    stains = [_texture(rng, (h, w), sigma) for sigma in (1.4, 1.0, 1.8)]
    brightness = rng.uniform(0.92, 1.08)
    levels = cohort_levels(config, groups)
    signal = np.empty((n_layers, h, w), np.float32)
    for g, (name, (first, last)) in enumerate(groups.items()):
        base = levels.tissue_rate[name] * brightness
        for layer in range(first - 1, last):
            weight = 0.75 + 0.25 * math.cos(1.3 * (layer - first + 1))  # spectral profile within the group
            if layer in levels.low_count_rate:
                weight = levels.low_count_rate[layer] / levels.tissue_rate[name]
            texture = 0.7 * stains[g % 3] + 0.3 * stains[(g + 1) % 3]
            # background: autofluorescence
            signal[layer] = levels.background[layer] + base * weight * tissue_level * texture
    if folds.any():
        # out of focus in every layer, and somewhat brighter (doubled tissue)
        for layer in range(n_layers):
            blurred = ndi.gaussian_filter(signal[layer], 3.0)
            signal[layer] = np.where(folds, 1.15 * blurred, signal[layer])

    saturation = np.zeros((len(groups), h, w), bool)
    if rng.random() < config.saturation_probability:
        cuts = MaskParameters(microscope=config.microscope)
        for _ in range(int(rng.integers(1, 3))):
            r = rng.uniform(25, 40)  # area above AstroPath's 4,500 px minimum
            cx, cy = rng.uniform(0.1, 0.9) * fw, rng.uniform(0.1, 0.9) * fh
            spot = _disc(xx, yy, cx, cy, r, r, 0.0)
            candidates = np.arange(1, len(groups)) if len(groups) > 1 else np.array([0])
            for g in rng.choice(candidates, size=min(2, candidates.size), replace=False):
                name = group_names[g]
                first, last = groups[name]
                # far above the cut (clipping at 65,535), as real saturated objects are
                signal[first - 1 : last] = np.where(
                    spot, 4.0 * cuts.saturation_cut(name), signal[first - 1 : last]
                )
                saturation[g] |= spot

    exposure = np.array(
        [spec.exposure_ms[name] for name in group_names for _ in range(groups[name][1] - groups[name][0] + 1)]
    )
    expected = exposure[:, None, None] * flatfield.astype(np.float32) * signal
    noisy = expected + rng.standard_normal(expected.shape, dtype=np.float32) * np.sqrt(expected + 4.0)
    raw = np.clip(np.rint(config.dark_current + noisy), 0, 65535).astype(np.uint16)
    # "empty": clearly no tissue (the soft tissue edge counts as neither tissue nor empty)
    truth = {
        "tissue": tissue_level > 0.5,
        "empty": tissue_level < 0.02,
        "blur": folds,
        "saturation": saturation,
    }
    return np.ascontiguousarray(raw.transpose(1, 2, 0)), truth


def write_cohort(out: str, config: SynthConfig, workers: int = 2, layout: str = "shadeflow") -> list[str]:
    """Write ``config.slides`` synthetic slides under ``out`` and their truth; return the slide URLs.

    Parameters
    ----------
    out
        The folder (local or ``s3://``) to write into.
    config
        What to generate.
    workers
        Threads generating fields.
    layout
        ``"shadeflow"``: slide folders ``<out>/<SlideID>/`` (the URLs returned); ``"astropath"``: an
        AstroPath tree with root ``<out>`` and shardedim3root ``<out>/shardedim3root`` (the URLs returned
        are ``<out>/<SlideID>``). The pixels are the same in both.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    out = storage.normalize(out)
    h, w, n_layers = config.shape
    if min(h, w) < 32:
        raise ValueError(f"field shape {h}x{w} is too small (need at least 32 px per side)")
    groups = synthetic_layer_groups(n_layers)
    flatfield = planted_flatfield(config.shape, config.corner_falloff)
    truth_url = storage.join(out, TRUTH_DIR)
    astropath_io.write_bin(storage.join(truth_url, "flatfield.bin"), flatfield, "float64")
    storage.write_text(
        storage.join(truth_url, "truth.json"),
        json.dumps(
            {
                "config": asdict(config),
                "layer_groups": groups,
                "levels": asdict(cohort_levels(config, groups)),
                "flatfield": "flatfield.bin (float64, H x W x L interleaved)",
            },
            indent=2,
        ),
    )
    urls = []
    write = _write_astropath_slide if layout == "astropath" else _write_slide
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for s in range(config.slides):
            slide_id = f"SYN{config.project}_{s + 1}"
            urls.append(write(out, slide_id, s, config, groups, flatfield, pool))
    if layout == "astropath":  # last: the tree is complete
        samples = [
            astropath_tree.SampleDef(
                sample_id=str(s + 1),
                slide_id=f"SYN{config.project}_{s + 1}",
                project=str(config.project),
                cohort=str(config.cohort),
                scan="1",
                batch_id=str(s + 1),
                is_good=True,
            )
            for s in range(config.slides)
        ]
        storage.write_text(
            storage.join(out, astropath_tree.SAMPLEDEF_CSV), astropath_tree.sampledef_csv_text(samples)
        )
    return urls


def _tissue_map(config: SynthConfig, specs: list[FieldSpec], slide_index: int) -> _TissueMap:
    fw, fh = config.field_size_um
    extent = (
        min(s.cx for s in specs) - fw / 2,
        max(s.cx for s in specs) + fw / 2,
        min(s.cy for s in specs) - fh / 2,
        max(s.cy for s in specs) + fh / 2,
    )
    return _TissueMap(np.random.default_rng([config.seed, slide_index, 3]), extent, config.tissue_coverage)


def _write_truth(out: str, slide_id: str, key: str, truth: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.packbits(v, axis=-1) for k, v in truth.items()})
    storage.write_bytes(storage.join(out, TRUTH_DIR, slide_id, f"{key}.npz"), buffer.getvalue())


def _write_astropath_slide(
    out: str,
    slide_id: str,
    slide_index: int,
    config: SynthConfig,
    groups: dict,
    flatfield: np.ndarray,
    pool: ThreadPoolExecutor,
) -> str:
    """One slide as AstroPath keeps it: XML metadata in ``<out>/<SlideID>/im3/xml/``, the fields in
    ``<out>/shardedim3root/<SlideID>/`` (the same pixels as :func:`_write_slide`'s)."""
    specs = field_grid(config, slide_id, slide_index)
    tissue_map = _tissue_map(config, specs, slide_index)
    xml = storage.join(out, slide_id, "im3", "xml")

    def make(spec: FieldSpec) -> None:
        raw, truth = generate_field(config, slide_index, spec, tissue_map, flatfield, groups)
        times = [[spec.exposure_ms[g]] * (last - first + 1) for g, (first, last) in groups.items()]
        storage.write_text(
            storage.join(xml, spec.key + astropath_tree.EXPOSURE_SUFFIX),
            astropath_tree.exposure_xml_text(times),
        )
        storage.write_bytes(
            storage.join(out, SHARDED_DIR, slide_id, spec.key + astropath_tree.DATA_SUFFIX), raw.tobytes()
        )
        _write_truth(out, slide_id, spec.key, truth)

    list(pool.map(make, specs))
    filters = []
    for name, (first, last) in groups.items():
        label, start = FILTER_NAMES.get(name, (name, 500))
        filters.append((label, [start + 10 * i for i in range(last - first + 1)]))
    storage.write_text(
        storage.join(xml, slide_id + astropath_tree.FULL_SUFFIX),
        astropath_tree.full_xml_text(config.dark_current, filters),
    )
    # the pixel size that makes the field size slide.json records (rounded to 0.1 nm), so both layouts
    # describe the same geometry
    um_per_px = round(config.field_size_um[0], 4) / config.shape[1]
    storage.write_text(
        storage.join(xml, slide_id + astropath_tree.PARAMETERS_SUFFIX),
        astropath_tree.parameters_xml_text(config.shape, um_per_px),
    )
    return storage.join(out, slide_id)


def _write_slide(
    out: str,
    slide_id: str,
    slide_index: int,
    config: SynthConfig,
    groups: dict,
    flatfield: np.ndarray,
    pool: ThreadPoolExecutor,
) -> str:
    url = storage.join(out, slide_id)
    specs = field_grid(config, slide_id, slide_index)
    tissue_map = _tissue_map(config, specs, slide_index)

    def make(spec: FieldSpec) -> None:
        raw, truth = generate_field(config, slide_index, spec, tissue_map, flatfield, groups)
        storage.write_bytes(storage.join(url, spec.file), raw.tobytes())
        _write_truth(out, slide_id, spec.key, truth)

    list(pool.map(make, specs))
    meta = {
        "slide_id": slide_id,
        "project": str(config.project),
        "cohort": str(config.cohort),
        "batch": str(slide_index + 1),
        "microscope": config.microscope,
        "shape": list(config.shape),
        "dtype": "uint16",
        "layer_groups": groups,
        "dark_current": config.dark_current,
        "field_size_um": [round(v, 4) for v in config.field_size_um],
    }
    header = ["field", "file", "cx", "cy", "acquired", *[f"exposure_ms_{g}" for g in groups]]
    rows = [
        [s.key, s.file, f"{s.cx:.2f}", f"{s.cy:.2f}", s.acquired, *[f"{s.exposure_ms[g]:g}" for g in groups]]
        for s in specs
    ]
    astropath_io.write_csv(storage.join(url, "fields.csv"), header, rows)
    # last: the slide is complete
    storage.write_text(storage.join(url, "slide.json"), json.dumps(meta, indent=2))
    return url


def read_truth_masks(out: str, slide_id: str, key: str, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The planted tissue, blur and saturation masks of one synthetic field."""
    data = np.load(io.BytesIO(storage.read_bytes(storage.join(out, TRUTH_DIR, slide_id, f"{key}.npz"))))
    return {k: np.unpackbits(data[k], axis=-1, count=shape[1]).astype(bool) for k in data.files}


def read_truth_flatfield(out: str, shape: tuple[int, int, int]) -> np.ndarray:
    """The planted flatfield, (L, H, W)."""
    return astropath_io.read_bin(storage.join(out, TRUTH_DIR, "flatfield.bin"), shape, "float64")
