"""Masking parameters: AstroPath's values per microscope, and the grid the masks are computed on.

Lengths and areas below are AstroPath's, in native pixels (0.4976 µm). Masks are computed on a
*working grid*: the field binned by ``binning`` (masks are morphological at scales of ≥ 9 native px,
so a 4× grid changes boundaries by at most ~2 µm while making morphology ~25× cheaper). A slide with
larger pixels than native scales every length by ``scale`` and every area by ``scale²``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MicroscopeCuts:
    """Per-microscope cut values (AstroPath ``image_masking/config.py``)."""

    fold_cuts: dict[str, tuple[float, float]]  # group → (nlv cut, nlv_mean cut); missing → default
    fold_default: tuple[float, float] | None
    fold_flag_cut_large: int  # flag_cut for groups of ≥ 9 layers
    dust_cut: tuple[float, float]
    saturation_cuts: dict[str, float]  # group → counts/ms
    presmooth_sigma: float  # σ before the Laplacian (Vectra 1 px, Polaris none)


VECTRA = MicroscopeCuts(
    fold_cuts={},
    fold_default=(0.0035, 0.0030),
    fold_flag_cut_large=3,
    dust_cut=(0.00085, 0.00065),
    saturation_cuts={"dapi": 100, "fitc": 100, "cy3": 250, "texasred": 400, "cy5": 150},
    presmooth_sigma=1.0,
)

POLARIS = MicroscopeCuts(
    fold_cuts={
        "dapi": (0.100, 0.085),
        "opal780": (0.0, 0.0),
        "opal480": (0.06, 0.05),
        "cy5": (0.06, 0.05),
        "fitc": (0.10, 0.085),
        "cy3": (0.08, 0.07),
        "texasred": (0.08, 0.07),
    },
    fold_default=None,
    fold_flag_cut_large=1,
    dust_cut=(0.025, 0.01875),
    saturation_cuts={
        "dapi": 100,
        "opal780": 50,
        "opal480": 250,
        "cy5": 250,
        "fitc": 150,
        "cy3": 100,
        "texasred": 100,
    },
    presmooth_sigma=0.0,
)

MICROSCOPES = {"vectra": VECTRA, "polaris": POLARIS}


@dataclass(frozen=True)
class MaskParameters:
    """AstroPath's masking constants (native pixels) plus the microscope's cut values."""

    microscope: str = "vectra"
    smoothing_sigma: float = 5.0  # tissue and saturation smoothing
    layer_morph: float = 9.0  # per-layer close/open (tissue), open/close (sharpness)
    tissue_min_size: float = 2500.0
    tissue_final_morph: float = 18.0
    dapi_vote_weight: int = 10
    undecided_fraction: float = 0.6
    nlv_window: float = 45.0
    nlv_mean_window: float = 15.0
    sharp_erode: float = 15.0
    fold_min_pixels: float = 30000.0
    fold_min_size: float = 3000.0
    dust_min_pixels: float = 30000.0
    dust_min_size: float = 20000.0
    dust_outside_fold_fraction: float = 0.25
    saturation_morph: float = 18.0
    saturation_min_size: float = 1000.0
    saturation_min_pixels: float = 4500.0
    #: a field's layer group is stacked when at least this fraction of its pixels is kept; 0 (default):
    #: when any is. AstroPath: 0.8 (see ``shadeflow.core.stack.CountAccumulator.add`` for why not here)
    min_pixel_fraction: float = 0.0
    #: stacked pixels lie further than this from anything the mask excludes (4 × ``smoothing_sigma``, the
    #: smoothing kernel's reach; see ``shadeflow.core.meanimage.masks.combined.stacking_masks``); 0:
    #: AstroPath's masks as they are
    stacking_guard: float = 20.0
    saturation_cut_overrides: dict[str, float] = field(default_factory=dict)

    @property
    def cuts(self) -> MicroscopeCuts:
        try:
            return MICROSCOPES[self.microscope]
        except KeyError:
            raise ValueError(
                f"unknown microscope {self.microscope!r}: expected one of {sorted(MICROSCOPES)}"
            ) from None

    def fold_cut(self, group: str) -> tuple[float, float]:
        cuts = self.cuts
        if group.lower() in cuts.fold_cuts:
            return cuts.fold_cuts[group.lower()]
        if cuts.fold_default is not None:
            return cuts.fold_default
        raise ValueError(f"no blur cut for layer group {group!r} on a {self.microscope} microscope")

    def fold_flag_cut(self, n_layers: int) -> int:
        """Largest number of sharp layers at which a group still counts as blurred."""
        if n_layers < 6:
            return 0
        if n_layers < 9:
            return 1
        return self.cuts.fold_flag_cut_large

    def saturation_cut(self, group: str) -> float:
        name = group.lower()
        if name in self.saturation_cut_overrides:
            return self.saturation_cut_overrides[name]
        if name in self.cuts.saturation_cuts:
            return self.cuts.saturation_cuts[name]
        raise ValueError(f"no saturation cut for layer group {group!r} on a {self.microscope} microscope")


@dataclass(frozen=True)
class WorkingGrid:
    """The grid masks are computed on: the field binned by ``binning``, at ``scale`` × native pixel size."""

    scale: float = 1.0
    binning: int = 1

    @classmethod
    def auto(cls, scale: float, binning: int | None = None) -> WorkingGrid:
        """Default binning: the largest of 4, 2, 1 that keeps the grid at ≥ ¼ of native resolution."""
        if binning is None:
            binning = next(b for b in (4, 2, 1) if scale / b >= 0.25 or b == 1)
        return cls(scale=scale, binning=binning)

    @property
    def factor(self) -> float:
        """Working-grid pixels per native pixel."""
        return self.scale / self.binning

    def length(self, native_px: float) -> float:
        return native_px * self.factor

    def area(self, native_px: float) -> float:
        return native_px * self.factor**2

    def data_length(self, native_px: float) -> float:
        """A length in native pixels as pixels of the slide's own (full-resolution) images."""
        return native_px * self.scale

    def sigma(self, native_sigma: float) -> float:
        """Gaussian σ on the working grid that, after block-averaging, matches σ at native resolution.

        A b×b block mean already blurs by a variance of (b² − 1)/12 data pixels², so it is subtracted.
        """
        data_sigma = native_sigma * self.scale
        residual = data_sigma**2 - (self.binning**2 - 1) / 12
        return math.sqrt(max(residual, 0.0)) / self.binning
