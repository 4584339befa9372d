"""Slides across roots and their mean-image outputs, as models, comparisons and applied tests use them.

A slide's stack is read from its AstroPath files (``<SID>-mean_image.bin``, ``-sum_images_squared.bin``,
``-mask_stack.bin``, ``fields_used.csv``) with the shape and layer groups from ``slide.json``, so mean
images made by AstroPath's own tools can be combined too. Sizes are checked: a truncated or corrupt
file is an error naming it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from ..failpoints import reached
from ..meanimage.outputs import output_url
from ..model.models_csv import ModelError, check_version_name, read_models_csv, select_version
from ..stack import FieldLogRow, MeanImageStack
from . import astropath as astropath_io
from . import storage
from .astropath_tree import AstroPathSource, open_slide, read_sampledef, sample_layout, select_samples
from .output_folders import MANIFEST, WRITING
from .slide import SLIDE_JSON, Slide


@dataclass(frozen=True)
class SlideRef:
    """A slide with a mean-image output: where it is and what shape it has (nothing loaded yet)."""

    root: str
    slide_id: str
    url: str
    project: str
    cohort: str
    batch: str
    microscope: str
    shape: tuple[int, int, int]  # (H, W, L)
    layer_groups: tuple[tuple[str, int, int], ...]
    #: the AstroPath cohort the slide is a sample of (its ``url`` is then ``<root>/<SlideID>/im3``)
    source: AstroPathSource | None = None

    def load_slide(self, check_files: bool = True) -> Slide:
        """The slide itself (``slide.json`` and ``fields.csv``, or the AstroPath sample's metadata)."""
        return open_slide(self.slide_id if self.source else self.url, self.source, check_files=check_files)

    @property
    def meanimage_url(self) -> str:
        # deferred: meanimage_outputs pulls in the mask modules (scipy.signal, ~0.7 s), which the
        # command line's checks of slides and roots must not wait for

        return output_url(self.url)

    def file(self, name: str) -> str:
        return storage.join(self.meanimage_url, name)


def _slide_folders(root: str) -> list[str]:
    fs, path = storage.filesystem(root)
    if not fs.isdir(path):
        problem = "is not a folder" if fs.exists(path) else "does not exist"
        raise ModelError(f"--root {root}: {problem}; give a folder holding slide folders")
    names = []
    for entry in fs.ls(path, detail=True):
        if entry["type"] == "directory":
            name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
            if not name.startswith(".") and fs.exists(f"{entry['name'].rstrip('/')}/{SLIDE_JSON}"):
                names.append(name)
    return sorted(names)


def find_samples(
    source: AstroPathSource, slide_ids: list[str] | None = None, pattern: str | None = None
) -> list[SlideRef]:
    """An AstroPath cohort's samples: those named in ``slide_ids`` (each listed and good in
    ``sampledef.csv``), or every good one whose SlideID matches ``pattern`` from its start."""
    if slide_ids is not None:
        samples = select_samples(source.root, slide_ids)
    else:
        regex = re.compile(pattern or ".*")
        samples = [s for s in read_sampledef(source.root) if s.is_good and regex.match(s.slide_id)]
    refs = []
    for sample in samples:
        shape, groups = sample_layout(source, sample.slide_id)
        refs.append(
            SlideRef(
                root=storage.normalize(source.root),
                slide_id=sample.slide_id,
                url=source.slide_url(sample.slide_id),
                project=sample.project,
                cohort=sample.cohort,
                batch=sample.batch_id,
                microscope="polaris" if shape[2] == 43 else "vectra",
                shape=shape,
                layer_groups=tuple((g.name, g.first, g.last) for g in groups),
                source=source,
            )
        )
    return refs


def find_slides(
    roots: list[str],
    slide_ids: list[str] | None = None,
    pattern: str | None = None,
    source: AstroPathSource | None = None,
) -> list[SlideRef]:
    """Slides under ``roots``: those named in ``slide_ids`` (each must exist exactly once), or all whose
    SlideID matches ``pattern`` from its start (AstroPath's ``--sampleregex``). With an AstroPath
    ``source``, its samples instead (:func:`find_samples`)."""
    if source is not None:
        return find_samples(source, slide_ids, pattern)
    roots = [storage.normalize(r) for r in roots]
    where: dict[str, list[str]] = {}
    for root in roots:
        for name in _slide_folders(root):
            where.setdefault(name, []).append(root)
    if slide_ids is not None:
        wanted = list(slide_ids)
    else:
        regex = re.compile(pattern or ".*")
        wanted = sorted(name for name in where if regex.match(name))
    refs = []
    for slide_id in wanted:
        found = where.get(slide_id, [])
        if not found:
            raise ModelError(
                f"slide {slide_id} not found under {', '.join(roots)} (no {slide_id}/{SLIDE_JSON})"
            )
        if len(found) > 1:
            raise ModelError(
                f"slide {slide_id} is in more than one root: {', '.join(found)}; SlideIDs must be unique "
                "across roots"
            )
        refs.append(_slide_ref(found[0], slide_id))
    return refs


def _slide_ref(root: str, slide_id: str) -> SlideRef:
    url = storage.join(root, slide_id)
    meta = json.loads(storage.read_text(storage.join(url, SLIDE_JSON)))
    groups = tuple((str(name), int(b[0]), int(b[1])) for name, b in meta["layer_groups"].items())
    return SlideRef(
        root=root,
        slide_id=slide_id,
        url=url,
        project=str(meta.get("project", "")),
        cohort=str(meta.get("cohort", "")),
        batch=str(meta.get("batch", "")),
        microscope=str(meta.get("microscope", "")),
        shape=tuple(int(v) for v in meta["shape"]),
        layer_groups=groups,
    )


def slides_with_meanimages(
    roots: list[str],
    slide_ids: list[str] | None = None,
    pattern: str | None = None,
    source: AstroPathSource | None = None,
) -> list[SlideRef]:
    """The slides :func:`find_slides` selects, each with a usable mean image, all of one shape and
    layer groups; an error naming the roots when none match. Reads only listings and small files."""
    refs = find_slides(roots, slide_ids=slide_ids, pattern=pattern, source=source)
    if not refs:
        where = source.root if source else ", ".join(roots)
        raise ModelError(f"no slides under {where} match {pattern or '.*'!r}")
    for ref in refs:
        check_meanimage(ref)
    check_compatible(refs)
    return refs


def model_slides(
    version: str, models_csv: str, roots: list[str], source: AstroPathSource | None = None
) -> list[SlideRef]:
    """The slides the models CSV lists for ``version``, each found once under the roots (or listed in
    an AstroPath ``source``'s ``sampledef.csv``) with a usable mean image (what ``model build`` checks
    before it reads anything in bulk)."""
    check_version_name(version)
    entries = select_version(read_models_csv(models_csv), version, models_csv)
    return slides_with_meanimages(roots, slide_ids=[e.slide_id for e in entries], source=source)


def meanimage_files(ref: SlideRef) -> list[str]:
    sid = ref.slide_id
    return [
        f"{sid}-mean_image.bin",
        f"{sid}-std_err_of_mean_image.bin",
        f"{sid}-sum_images_squared.bin",
        f"{sid}-mask_stack.bin",
        "fields_used.csv",
    ]


def check_meanimage(ref: SlideRef) -> None:
    """A usable mean-image output exists; otherwise an error naming the slide and what is missing."""
    folder = ref.meanimage_url
    present = storage.file_sizes(folder)
    made_by_shadeflow = any(name.startswith(f"{ref.slide_id}-meanimage.zarr/") for name in present)
    if made_by_shadeflow and (MANIFEST not in present or WRITING in present):
        raise ModelError(
            f"slide {ref.slide_id}: the mean image in {folder} is incomplete (no {MANIFEST}, or still being "
            "written); rerun meanimage"
        )
    missing = [name for name in meanimage_files(ref) if name not in present]
    if missing:
        what = "no meanimage output" if not present else f"missing {', '.join(missing)}"
        raise ModelError(
            f"slide {ref.slide_id}: {what} in {folder}; run `shadeflow meanimage {_meanimage_args(ref)}` "
            "first"
        )
    expected = int(np.prod(ref.shape)) * 8  # float64 images and the uint64 mask stack
    for name in meanimage_files(ref)[:4]:
        if present[name] != expected:
            h, w, l = ref.shape
            raise ModelError(
                f"slide {ref.slide_id}: {storage.join(folder, name)} has {present[name]} bytes, expected "
                f"{expected} "
                f"for {h}x{w}x{l} (truncated or corrupt?)"
            )


def _meanimage_args(ref: SlideRef) -> str:
    if ref.source is None:
        return ref.url
    sharded = f" --shardedim3root {ref.source.shardedim3root}" if ref.source.shardedim3root else ""
    return f"--astropath {ref.source.root}{sharded} {ref.slide_id}"


def check_compatible(refs: list[SlideRef]) -> None:
    """All slides share one field shape and one set of layer groups."""
    if not refs:
        raise ModelError("no slides selected")
    first = refs[0]
    for ref in refs[1:]:
        if ref.shape != first.shape:
            raise ModelError(
                f"slides {first.slide_id} and {ref.slide_id} have different shapes {first.shape} and "
                f"{ref.shape}"
            )
        if ref.layer_groups != first.layer_groups:
            raise ModelError(f"slides {first.slide_id} and {ref.slide_id} have different layer groups")


def _layer_list(text: str) -> tuple[int, ...]:
    """``"[1, 2, 5]"`` (how fields_used.csv writes the layers a field was stacked in) as a tuple. Not
    ``ast.literal_eval``: Python 3.11's parser is not thread-safe (concurrent parses on Dask's worker
    threads fail with "AST constructor recursion depth mismatch", CPython gh-106905)."""
    inner = (text or "").strip()
    if not (inner.startswith("[") and inner.endswith("]")) and not (
        inner.startswith("(") and inner.endswith(")")
    ):
        if inner:
            raise ValueError(f"stacked_in_layers {text!r} is not a list of layers")
        return ()
    return tuple(int(v) for v in inner[1:-1].split(",") if v.strip())


def read_field_log(ref: SlideRef) -> list[FieldLogRow]:
    rows = astropath_io.read_csv(ref.file("fields_used.csv"))
    try:
        return [
            FieldLogRow(
                r["slide"],
                r["file"],
                r["location"],
                r["use"],
                _layer_list(r["stacked_in_layers"]),
            )
            for r in rows
        ]
    except (KeyError, ValueError) as exc:
        raise ModelError(
            f"slide {ref.slide_id}: {ref.file('fields_used.csv')} is not a fields_used table ({exc})"
        ) from None


def load_mean_image(ref: SlideRef) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The slide's mean image, its standard error and mask stack, (L, H, W) each."""
    check_meanimage(ref)
    sid = ref.slide_id
    try:
        mean = astropath_io.read_bin(ref.file(f"{sid}-mean_image.bin"), ref.shape, "float64")
        std_err = astropath_io.read_bin(ref.file(f"{sid}-std_err_of_mean_image.bin"), ref.shape, "float64")
        count = astropath_io.read_bin(ref.file(f"{sid}-mask_stack.bin"), ref.shape, "uint64")
    except astropath_io.BinFormatError as exc:
        raise ModelError(f"slide {sid}: {exc}") from None
    return mean, std_err, count


def load_stack(ref: SlideRef) -> MeanImageStack:
    """The slide's mean-image stack, rebuilt from its AstroPath files (S = N · mean, SS, N)."""
    check_meanimage(ref)
    reached("load-stack")
    sid = ref.slide_id
    try:
        mean = astropath_io.read_bin(ref.file(f"{sid}-mean_image.bin"), ref.shape, "float64")
        count = astropath_io.read_bin(ref.file(f"{sid}-mask_stack.bin"), ref.shape, "uint64").astype(
            np.uint32
        )
        total = mean * count
        del mean
        sum_sq = astropath_io.read_bin(ref.file(f"{sid}-sum_images_squared.bin"), ref.shape, "float64")
    except astropath_io.BinFormatError as exc:
        raise ModelError(f"slide {sid}: {exc}") from None
    fields = read_field_log(ref)
    n_images = np.zeros(ref.shape[2], np.int64)
    for row in fields:
        for layer in row.stacked_in_layers:
            n_images[layer - 1] += 1
    return MeanImageStack(
        sum=total,
        sum_sq=sum_sq,
        count=count,
        n_images=n_images,
        fields=[r for r in fields if r.use == "stacking"],
    )


def read_stacked_metadata(ref: SlideRef) -> list[dict[str, str]]:
    """The slide's ``metadata_summary_stacked_images.csv`` rows (empty if absent)."""
    url = ref.file(f"{ref.slide_id}-metadata_summary_stacked_images.csv")
    return astropath_io.read_csv(url) if storage.exists(url) else []
