"""Each job's parameters, declared once: names, types, defaults, bounds and help.

The Prefect UI renders these models as the run forms; the command line's options are made from them
(:mod:`shadeflow.flows.cli_options`), and the core's inputs are taken from them by name
(``EstimateParameters.settings``, ``CorrectParameters.request``). A field's ``cli`` entry says how the
command line shows it when that is not ``--field-name``: ``"argument"`` (positional) or an option name
(``"--root"``, repeatable for a list).

Light on purpose: the command line imports this module for ``--help``, so it imports pydantic and
nothing heavy; the core modules that validate or convert are imported where they are used.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from ..core.io import storage

if TYPE_CHECKING:
    from ..core.correct.tile import CorrectRequest
    from ..core.estimate.estimator import EstimateSettings
    from ..core.io.astropath_tree import AstroPathSource

#: the command line shows the field as a positional argument
ARGUMENT = {"cli": "argument"}
#: a list of root folders, given on the command line as a repeatable ``--root``
ROOTS = {"cli": "--root"}
#: AstroPath's default of the comparison band of ``model compare`` (δ/σ std. dev.)
DEFAULT_BAND = (0.85, 1.15)

Border = Literal["linear", "replicate"]
BORDER_HELP = (
    "Smoothing at the field borders: 'linear' fits the slope (less bias), 'replicate' is AstroPath's"
)


#: AstroPath's cohort root, given instead of ``--root`` folders of slide folders
ASTROPATH_HELP = (
    "AstroPath root (sampledef.csv, <SlideID>/im3/meanimage/) instead of --root: its good samples"
)
SHARDED_HELP = "AstroPath root of the raw fields, <shardedim3root>/<SlideID>/*.Data.dat"


def _empty_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _roots_or_astropath(
    roots: list[str], astropath: str | None, shardedim3root: str | None, fields_needed: bool
) -> None:
    """A cohort is given either as ``--root`` folders or as an AstroPath root (with its
    ``--shardedim3root`` where the job reads the fields), not both."""
    if roots and astropath:
        raise ValueError("give --root folders or --astropath, not both")
    if not roots and not astropath:
        raise ValueError("give at least one --root folder holding slides, or --astropath ROOT")
    if shardedim3root and not astropath:
        raise ValueError("--shardedim3root is for AstroPath cohorts: give --astropath too")
    if fields_needed and astropath and not shardedim3root:
        raise ValueError("--astropath needs --shardedim3root here: the fields are read again")


def _source(astropath: str | None, shardedim3root: str | None) -> AstroPathSource | None:
    if astropath is None:
        return None
    from ..core.io.astropath_tree import AstroPathSource

    return AstroPathSource(astropath, shardedim3root)


class MeanImageParameters(BaseModel):
    """Per-slide masked mean images, written to <slide>/meanimage/ (AstroPath samples:
    <root>/<SlideID>/im3/meanimage/)."""

    slides: list[str] = Field(
        [],
        json_schema_extra=ARGUMENT,
        description="Slide folders, local paths or s3:// URLs, each with slide.json and fields.csv; with "
        "--astropath: SlideIDs (empty: every good sample of sampledef.csv)",
    )
    astropath: str | None = Field(
        None,
        description="AstroPath root (with sampledef.csv and <SlideID>/im3/xml/): read its samples where they "
        "are; needs --shardedim3root",
    )
    shardedim3root: str | None = Field(
        None, description="AstroPath root of the raw fields, <shardedim3root>/<SlideID>/*.Data.dat"
    )
    out: str | None = Field(
        None,
        description="With --astropath: root for the outputs, <out>/<SlideID>/im3/meanimage/ (default: the "
        "AstroPath root)",
    )
    mask_binning: Literal[1, 2, 4, 8] | None = Field(
        None,
        description="Block size of the grid masks are computed on; empty: 4 for native-resolution fields, "
        "less for coarser ones",
    )
    skip_masking: bool = Field(
        False, description="Stack every pixel of every bulk field, without thresholds or masks"
    )
    overwrite: bool = Field(
        False,
        description="Replace existing complete outputs made with other parameters; files in meanimage/ that "
        "shadeflow did not write are kept",
    )
    seed: int = Field(0, ge=0, description="Seed for the random example fields in the masking summary")

    @field_validator("astropath", "shardedim3root", "out", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return _empty_to_none(value)

    @model_validator(mode="after")
    def _consistent(self) -> MeanImageParameters:
        if (self.astropath is None) != (self.shardedim3root is None):
            given, missing = (
                ("--astropath", "--shardedim3root") if self.astropath else ("--shardedim3root", "--astropath")
            )
            raise ValueError(f"{given} needs {missing}: an AstroPath cohort is read from both roots")
        if self.out is not None and self.astropath is None:
            raise ValueError(
                "--out is for AstroPath samples (--astropath); a slide folder's mean image goes into it"
            )
        if self.astropath is None and not self.slides:
            raise ValueError("give at least one slide folder (or --astropath ROOT --shardedim3root R)")
        return self

    def source(self) -> AstroPathSource | None:
        """The AstroPath cohort the slides are SlideIDs of, or None for slide folders."""
        if self.astropath is None:
            return None
        from ..core.io.astropath_tree import AstroPathSource

        return AstroPathSource(self.astropath, self.shardedim3root, self.out)

    def recorded(self) -> dict:
        """The parameters recorded with (and compared against) each output."""
        return {
            "mask_binning": self.mask_binning,
            "skip_masking": self.skip_masking,
            "seed": self.seed,
            "method": _meanimage_method(),
        }


class ModelBuildParameters(BaseModel):
    """A flatfield model version built from the slides the models CSV lists for it."""

    version: str = Field(
        description="Model version to build: the models CSV rows with this version select the slides"
    )
    models_csv: str = Field(
        description="Models CSV (version,Project,Cohort,BatchID,SlideID), local path or s3:// URL"
    )
    roots: list[str] = Field(
        [],
        json_schema_extra=ROOTS,
        description="Folders holding the slides (each slide is <root>/<SlideID>/ with a meanimage/ output)",
    )
    astropath: str | None = Field(None, description=ASTROPATH_HELP + " the models CSV names")
    shardedim3root: str | None = Field(None, description=SHARDED_HELP + " (not needed to build a model)")
    store: str | None = Field(None, description="Model store; default: the folder of the models CSV")
    sigma: float | None = Field(
        None,
        gt=0,
        description="Smoothing σ in pixels; default 100 px for 1004×1344 fields, scaled with the field size",
    )
    border: Border = Field("linear", description=BORDER_HELP)
    overwrite: bool = Field(
        False,
        description="Replace the version if it exists (versions are otherwise immutable) or a .bin or "
        "folder of it shadeflow did not write; other files are kept",
    )

    @field_validator("astropath", "shardedim3root", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return _empty_to_none(value)

    @model_validator(mode="after")
    def _one_cohort(self) -> ModelBuildParameters:
        _roots_or_astropath(self.roots, self.astropath, self.shardedim3root, fields_needed=False)
        return self

    def source(self) -> AstroPathSource | None:
        """The AstroPath cohort the slides are samples of, or None for --root folders."""
        return _source(self.astropath, self.shardedim3root)

    def resolved_store(self) -> str:
        return (
            storage.normalize(self.store)
            if self.store
            else storage.parent(storage.normalize(self.models_csv))
        )


class ModelCompareParameters(BaseModel):
    """Slides' mean images compared pairwise (δ/σ), and a compatible set suggested."""

    roots: list[str] = Field(
        [],
        json_schema_extra=ROOTS,
        description="Folders (local paths or s3:// URLs) holding slide folders with meanimage/ outputs",
    )
    astropath: str | None = Field(None, description=ASTROPATH_HELP + " matching --slides")
    shardedim3root: str | None = Field(None, description=SHARDED_HELP + " (not needed to compare)")
    slides: str | None = Field(
        None,
        description="Regular expression matched from the start of each SlideID (AstroPath's --sampleregex); "
        "empty: every slide",
    )
    workdir: str | None = Field(
        None,
        description="Folder for meanimagecomparison_table.csv and the plots; empty: <first "
        "root>/meanimagecomparison",
    )
    band_low: float = Field(
        DEFAULT_BAND[0],
        gt=0,
        description="Lower end of the compatible band of the δ/σ std. dev. (and of the plots' colour scale)",
    )
    band_high: float = Field(
        DEFAULT_BAND[1],
        gt=0,
        description="Upper end of the compatible band of the δ/σ std. dev. (and of the plots' colour scale)",
    )
    min_images_stacked: int = Field(
        1, ge=0, description="Skip slides with fewer images than this stacked in some pixel"
    )
    store_as: str | None = Field(
        None,
        description="Append the compared slides to the models CSV as this new version (needs models_csv)",
    )
    models_csv: str | None = Field(
        None, description="Models CSV (version,Project,Cohort,BatchID,SlideID) to append the version to"
    )

    @field_validator(
        "slides", "workdir", "store_as", "models_csv", "astropath", "shardedim3root", mode="before"
    )
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("store_as")
    @classmethod
    def _safe_version(cls, value: str | None) -> str | None:
        from ..core.model.models_csv import check_version_name

        return check_version_name(value) if value is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> ModelCompareParameters:
        _roots_or_astropath(self.roots, self.astropath, self.shardedim3root, fields_needed=False)
        if not self.band_low < self.band_high:
            raise ValueError(
                f"band {self.band_low:g}–{self.band_high:g}: the low end must be below the high end"
            )
        if (self.store_as is None) != (self.models_csv is None):
            given, missing = (
                ("--store-as", "--models-csv") if self.store_as else ("--models-csv", "--store-as")
            )
            raise ValueError(
                f"{given} needs {missing}: give both to append the compared slides to a models CSV, or "
                "neither"
            )
        return self

    @property
    def band(self) -> tuple[float, float]:
        return (self.band_low, self.band_high)

    def source(self) -> AstroPathSource | None:
        """The AstroPath cohort the slides are samples of, or None for --root folders."""
        return _source(self.astropath, self.shardedim3root)


class AppliedTestParameters(BaseModel):
    """A flatfield tested on held-out fields: built from one half of each slide, applied to the other."""

    roots: list[str] = Field(
        [],
        json_schema_extra=ROOTS,
        description="Folders holding the slides, each with a meanimage/ output",
    )
    astropath: str | None = Field(
        None, description=ASTROPATH_HELP + " matching --slides; needs --shardedim3root"
    )
    shardedim3root: str | None = Field(None, description=SHARDED_HELP)
    out: str = Field(description="Folder for the test's outputs, local path or s3:// URL")
    slides: str | None = Field(
        None, description="Regular expression the SlideIDs must match from their start; default all slides"
    )
    seed: int = Field(0, ge=0, description="Seed of the split of each slide's bulk fields into two halves")
    sigma: float | None = Field(
        None, gt=0, description="Smoothing σ in pixels; default 100 px for 1004×1344 fields, scaled"
    )
    border: Border = Field("linear", description=BORDER_HELP)
    overwrite: bool = Field(False, description="Replace a complete earlier test in the output folder")

    @field_validator("astropath", "shardedim3root", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return _empty_to_none(value)

    @model_validator(mode="after")
    def _one_cohort(self) -> AppliedTestParameters:
        _roots_or_astropath(self.roots, self.astropath, self.shardedim3root, fields_needed=True)
        return self

    def source(self) -> AstroPathSource | None:
        """The AstroPath cohort the slides are samples of, or None for --root folders."""
        return _source(self.astropath, self.shardedim3root)


class CorrectParameters(BaseModel):
    """OME-Zarr tiles (or TIFF stacks) flatfield-corrected and written with a multiscale pyramid."""

    tiles: list[str] = Field(
        min_length=1,
        json_schema_extra=ARGUMENT,
        description="OME-Zarr tiles (image groups), local paths or s3:// URLs; NGFF 0.4 on zarr v2 or 0.5 "
        "on zarr v3. Or local TIFF / OME-TIFF files (.tif, .tiff), written as OME-TIFF",
    )
    out: str = Field(
        description="Folder (or s3:// prefix) for the corrected tiles: each is written to <out>/<tile name> "
        "(a TIFF tile to <out>/<name>.ome.tif, a local folder)"
    )
    model: str | None = Field(
        None, description="Flatfield model version (built by `model build`) to apply; needs `store`"
    )
    store: str | None = Field(None, description="Model store holding `model`")
    layer: int | None = Field(None, ge=1, description="Model layer (1-based) applied to every channel")
    channel_map: str | None = Field(
        None,
        description="Model layer per channel: CHANNEL=LAYER pairs, e.g. '0=5,1=12' or '0=dapi,1=fitc' (a "
        "group's middle layer)",
    )
    flatfield: str | None = Field(
        None,
        description="Flatfield file instead of a model: TIFF, .npy or zarr; one (Y, X) field or one per "
        "channel",
    )
    method: Literal["estimate"] | None = Field(
        None, description="'estimate': estimate the flatfield from each tile's own planes"
    )
    background: str = Field(
        "estimate",
        description="'estimate' (from the quietest slices), 'none', a value in counts, or one value per "
        "channel ('100,120')",
    )
    darkfield: str | None = Field(
        None, description="Darkfield image(s) to subtract instead of `background`: TIFF, .npy or zarr"
    )
    level: str = Field(
        "0",
        description="Resolution level of the input to correct: index (0 = full resolution) or dataset path",
    )
    levels: int = Field(
        4,
        ge=1,
        le=16,
        description="Pyramid levels to write (each halves y and x, and z where the voxel size allows; "
        "OME-TIFF outputs: SubIFDs halving y and x only)",
    )
    zarr_format: Literal[2, 3] | None = Field(
        None,
        description="Zarr format of the output (2 → NGFF 0.4, 3 → NGFF 0.5); empty: as the input. Not for "
        "TIFF tiles",
    )
    repair_flatfield: bool = Field(
        False,
        description="Replace zero, negative or non-finite flatfield pixels by their neighbourhood instead "
        "of failing",
    )
    overwrite: bool = Field(
        False,
        description="Replace complete outputs made with other parameters (and folders that are not "
        "shadeflow outputs)",
    )
    allow_missing_chunks: bool = Field(
        False,
        description="Read chunks absent from a tile as its fill value instead of refusing the tile (zarr "
        "omits chunks holding only the fill value)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> CorrectParameters:
        for tile in self.tiles:  # credentials in a URL would be echoed and recorded with the run
            storage.refuse_credentials_in_url(tile, "tile")
        self.request().check()  # exactly one flatfield source, --model with --store, layers only for a model…
        return self

    def request(self) -> CorrectRequest:
        """The plain request the core code works from: every field but the tiles, by name."""
        from ..core.correct.tile import CorrectRequest

        return CorrectRequest(**self.model_dump(exclude={"tiles"}))


class EstimateParameters(BaseModel):
    """Flatfield (and darkfield) estimated from the images themselves; no model needed."""

    images: list[str] = Field(
        min_length=1,
        json_schema_extra=ARGUMENT,
        description="TIFF files or folders of TIFFs, one zarr array, or slide folders (local paths or s3:// "
        "URLs); together one stack",
    )
    out: str = Field(
        description="Folder (or s3:// prefix) for flatfield.tiff, darkfield.tiff and estimate.zarr"
    )
    darkfield: bool = Field(
        False, description="Estimate a darkfield too (else none, or a slide's dark current)"
    )
    camera_offset: float | None = Field(
        None,
        ge=0,
        description="Counts every pixel reads without light (the camera's offset, from dark frames or its "
        "specification): subtracted as a known flat darkfield instead of estimating one (not with "
        "--darkfield); replaces a slide's recorded dark current",
    )
    channels: int = Field(
        1,
        ge=1,
        le=64,
        description="Channels interleaved in the pages of each TIFF (page k: frame k // C, channel k % C)",
    )
    component: str | None = Field(None, description="Array inside a zarr group (e.g. 'raw' or '0')")
    dataset: str | None = Field(
        None,
        description="HDF5: the dataset holding the frames, e.g. /entry/data/data (found by itself when the "
        "file holds one image dataset)",
    )
    method: Literal["auto", "floor", "surface", "lines"] = Field(
        "auto",
        description="floor: smooth polynomials (fast); surface: free surfaces whose smoothness is chosen by "
        "cross-validation (follows sharp aperture edges; slower); lines: per-pixel quantile lines over the "
        "frames (no dark background needed; frames must show varied positions); auto: floor, and where the "
        "polynomial fit is refused surface (flatfield only) or lines (with --darkfield)",
    )
    degree: int = Field(6, ge=1, le=12, description="floor: total degree of the flatfield's polynomial")
    darkfield_degree: int | None = Field(
        None,
        ge=0,
        le=12,
        description="floor: total degree of the darkfield's polynomial (default: chosen from 0–4 by "
        "cross-validation over the frames; 2 unless another degree predicts held-out frames clearly better)",
    )
    smoothness: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="surface: smoothing length of the flatfield in pixels (default: chosen by "
        "cross-validation over the frames)",
    )
    order_statistics: bool = Field(
        False,
        description="surface: separate flatfield and darkfield by each pixel's order statistics (assumes "
        "the specimen is spread evenly; for stacks whose levels do not vary)",
    )
    background: Literal["none", "mesh"] = Field(
        "none",
        description="mesh: for star fields and other images of sparse bright sources on a sky — each frame's "
        "SExtractor-style mesh background (photutils Background2D) finds the stars, which are left out, and "
        "the shading is fitted from the sky between them (on synthetic star fields about half the default's "
        "error; no gain at a sharp aperture edge; slower); none: the frames as they are",
    )
    mesh_box: int | None = Field(
        None,
        ge=4,
        le=4096,
        description="mesh: side of the background boxes in pixels, several times a star's size (default: 1/8 "
        "of the images' shorter side, 16–128)",
    )
    max_frames: int = Field(
        1000,
        ge=16,
        description="Frames of the robust fit (a seeded sample when there are more); every frame enters the "
        "final pass",
    )
    seed: int = Field(0, ge=0, description="Seed of the frame sample")
    overwrite: bool = Field(
        False, description="Replace a complete output made with other parameters or inputs"
    )

    @model_validator(mode="after")
    def _one_darkfield(self) -> EstimateParameters:
        if self.darkfield and self.camera_offset is not None:
            raise ValueError(
                "--camera-offset gives the darkfield, --darkfield estimates it: use one (a known offset is "
                "the better-determined answer)"
            )
        return self

    def settings(self) -> EstimateSettings:
        """The estimator's settings: the fields it shares with these parameters, by name (the rest keep
        the estimator's own defaults)."""
        from ..core.estimate.estimator import EstimateSettings

        shared = {f.name for f in fields(EstimateSettings)} & set(type(self).model_fields)
        values = {name: getattr(self, name) for name in shared}
        if self.darkfield_degree is not None:
            values["darkfield_degree"] = min(self.darkfield_degree, self.degree)
        return EstimateSettings(**values)

    def recorded(self) -> dict:
        """The parameters recorded with (and compared against) the output."""
        return {
            "darkfield": self.darkfield,
            "camera_offset": self.camera_offset,
            "channels": self.channels,
            "component": self.component,
            "dataset": self.dataset,
            "method": self.method,
            "degree": self.degree,
            "darkfield_degree": self.darkfield_degree,
            "smoothness": self.smoothness,
            "order_statistics": self.order_statistics,
            "background": self.background,
            "mesh_box": self.mesh_box,
            "max_frames": self.max_frames,
            "seed": self.seed,
            "settings": asdict(self.settings()),
        }


def _meanimage_method() -> str:
    from ..core.meanimage.pipeline import MEANIMAGE_METHOD

    return MEANIMAGE_METHOD


#: every job's parameters, by the command that runs it
JOBS: dict[str, type[BaseModel]] = {
    "meanimage": MeanImageParameters,
    "model build": ModelBuildParameters,
    "model compare": ModelCompareParameters,
    "applied-test": AppliedTestParameters,
    "correct": CorrectParameters,
    "estimate": EstimateParameters,
}
