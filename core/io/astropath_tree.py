"""AstroPath sample trees, read where they are: ``sampledef.csv``, the XML metadata and the raw fields.

An AstroPath cohort has a root folder ``ROOT`` holding ``sampledef.csv`` (one row per slide) and a folder
per slide, and a second root ``SHARDEDIM3ROOT`` (AstroPath's ``root2``) holding the fields shredded from
the ``.im3`` files::

    ROOT/sampledef.csv                         SampleID,SlideID,Project,Cohort,Scan,BatchID,isGood
    ROOT/<SlideID>/im3/xml/<SlideID>.Parameters.xml
    ROOT/<SlideID>/im3/xml/<SlideID>.Full.xml
    ROOT/<SlideID>/im3/xml/<SlideID>_[cx,cy].SpectralBasisInfo.Exposure.xml   (one per field)
    SHARDEDIM3ROOT/<SlideID>/<SlideID>_[cx,cy].Data.dat                        (one per field)

The XML files are looked for in ``ROOT/<SlideID>/im3/xml/`` first, then beside the ``.Data.dat`` files
(where AstroPath's shredding writes them). :func:`load_sample` turns one slide into the slide contract's
:class:`~.slide.Slide` — the same object ``slide.json`` + ``fields.csv`` make — whose field files are the
``.Data.dat`` files, read in place (never copied), and whose folder is ``ROOT/<SlideID>/im3``, so the
mean image goes where AstroPath puts it, ``ROOT/<SlideID>/im3/meanimage/``.

What is read from where:

* **shape** — ``Parameters.xml``'s ``Shape`` (width, height, layers) and ``MillimetersPerPixel``
  (the field size in µm);
* **dark current** — ``Full.xml``'s ``DarkCurrent`` entry (the first ``D`` element of that name; the mean
  when it holds one value per layer), or the ``Mean`` of its ``DarkCurrentSettings`` (where AstroPath's
  documentation puts it; ``<SlideID>.full.xml``, as AstroPath's shredding names the file, is read too);
* **layer groups** — ``Full.xml``'s ``Filter`` groups in document order, each with a ``Name`` and the
  ``Wavelengths`` of its layers (one per layer); names are lower-cased without spaces or punctuation
  ("Texas Red" → ``texasred``, "Opal 780" → ``opal780``). Without filters in ``Full.xml``, the groups
  are the exposure files' filters with AstroPath's own names for its 35- and 43-layer panels;
* **exposure times** — each field's ``.SpectralBasisInfo.Exposure.xml`` (or, as AstroPath's shredding
  names it, ``.SpectralBasisInfo.Exposure.Protocol.DarkCurrentSettings.xml``): one ``Exposure`` element
  per filter, holding the exposure time (ms) of each of its layers;
* **field centres** — the ``[cx,cy]`` (µm) in the file names;
* **fields' order** — raster order (by ``cy``, then ``cx``), as the microscope scans; the field's
  ``acquired`` time is its ``.Data.dat`` file's modification time (the shredded tree keeps no
  acquisition times).

Every problem is a :class:`~.slide.SlideError` naming the slide, and the field or file at fault.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from . import storage
from .slide import Field, LayerGroup, Slide, SlideError, _unsafe_key, check_field_files, load_slide

SAMPLEDEF_CSV = "sampledef.csv"
SAMPLEDEF_COLUMNS = ("SampleID", "SlideID", "Project", "Cohort", "Scan", "BatchID", "isGood")
DATA_SUFFIX = ".Data.dat"
EXPOSURE_SUFFIX = ".SpectralBasisInfo.Exposure.xml"
#: the name AstroPath's shredding (``flatw``) gives the same per-field file; either is read
EXPOSURE_SUFFIXES = (EXPOSURE_SUFFIX, ".SpectralBasisInfo.Exposure.Protocol.DarkCurrentSettings.xml")
PARAMETERS_SUFFIX = ".Parameters.xml"
FULL_SUFFIX = ".Full.xml"
#: AstroPath's shredding writes ``<SlideID>.full.xml``; its Python reads ``<SlideID>.Full.xml``
FULL_SUFFIXES = (FULL_SUFFIX, ".full.xml")
#: AstroPath's broadband filters of its 35- (Vectra) and 43-layer (Polaris) panels, used when ``Full.xml``
#: names no filters (AstroPath itself assumes these)
STANDARD_FILTERS = {
    35: (("dapi", 9), ("fitc", 9), ("cy3", 7), ("texasred", 7), ("cy5", 3)),
    43: (
        ("dapi", 9),
        ("opal780", 2),
        ("opal480", 6),
        ("cy5", 3),
        ("fitc", 9),
        ("cy3", 7),
        ("texasred", 7),
    ),
}
_FIELD_NAME = re.compile(r"^(?P<slide>.+)_\[(?P<cx>-?\d+(?:\.\d+)?),(?P<cy>-?\d+(?:\.\d+)?)\]$")


@dataclass(frozen=True)
class SampleDef:
    """One row of ``sampledef.csv``."""

    sample_id: str
    slide_id: str
    project: str
    cohort: str
    scan: str
    batch_id: str
    is_good: bool


@dataclass(frozen=True)
class AstroPathSource:
    """Where an AstroPath cohort is: ``root`` (with ``sampledef.csv``), ``shardedim3root`` (the
    ``.Data.dat`` fields) and, optionally, another root for the outputs (``out``: outputs go to
    ``<out>/<SlideID>/im3/meanimage/`` instead of ``<root>/<SlideID>/im3/meanimage/``)."""

    root: str
    shardedim3root: str | None = None
    out: str | None = None

    def slide_url(self, slide_id: str) -> str:
        """The slide's folder as the slide contract sees it (its outputs go below it)."""
        return storage.join(storage.normalize(self.out or self.root), slide_id, "im3")

    def data_url(self, slide_id: str) -> str:
        """The folder of the slide's ``.Data.dat`` fields."""
        if self.shardedim3root is None:
            raise SlideError(
                f"slide {slide_id}: its fields are read from --shardedim3root, which was not given"
            )
        return storage.join(storage.normalize(self.shardedim3root), slide_id)

    def xml_folders(self, slide_id: str) -> list[str]:
        """Where the slide's XML metadata may be, in the order they are looked in."""
        own = storage.join(storage.normalize(self.root), slide_id, "im3", "xml")
        return [own] if self.shardedim3root is None else [own, self.data_url(slide_id)]


# ---------------------------------------------------------------------------------------------------
# sampledef.csv


def read_sampledef(root: str) -> list[SampleDef]:
    """The rows of ``<root>/sampledef.csv``.

    Parameters
    ----------
    root
        The cohort's root folder, a local path or ``s3://`` URL.

    Raises
    ------
    SlideError
        The file is missing, lacks a column, or lists a SlideID twice.
    """
    url = storage.join(storage.normalize(root), SAMPLEDEF_CSV)
    if not storage.exists(url):
        raise SlideError(f"--astropath {storage.normalize(root)}: no {SAMPLEDEF_CSV}; give an AstroPath root")
    reader = csv.DictReader(io.StringIO(storage.read_text(url).lstrip("\ufeff")))
    columns = [c.strip() for c in reader.fieldnames or []]
    missing = [c for c in ("SlideID", "Project", "Cohort", "BatchID") if c not in columns]
    if missing:
        raise SlideError(f"{url}: missing column(s) {', '.join(missing)}")
    samples, seen = [], set()
    for number, raw in enumerate(reader, start=1):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        slide_id = row["SlideID"]
        if not slide_id:
            raise SlideError(f"{url} row {number}: empty SlideID")
        if _unsafe_key(slide_id):
            raise SlideError(
                f"{url} row {number}: SlideID {slide_id!r} must be a plain name (it names folders): no '/', "
                "'\\', '..' or control characters"
            )
        if slide_id in seen:
            raise SlideError(f"{url} row {number}: SlideID {slide_id} is listed twice")
        seen.add(slide_id)
        good = row.get("isGood", "1") or "1"
        samples.append(
            SampleDef(
                sample_id=row.get("SampleID", ""),
                slide_id=slide_id,
                project=row["Project"],
                cohort=row["Cohort"],
                scan=row.get("Scan", ""),
                batch_id=row["BatchID"],
                is_good=good not in ("0", "False", "false"),
            )
        )
    return samples


def select_samples(root: str, slide_ids: Sequence[str] | None = None) -> list[SampleDef]:
    """The samples ``sampledef.csv`` lists: those named (each must be listed and good), or every good one.

    Raises
    ------
    SlideError
        A named SlideID is not in ``sampledef.csv`` or is marked ``isGood`` 0; no good samples at all.
    """
    samples = read_sampledef(root)
    by_id = {s.slide_id: s for s in samples}
    where = storage.join(storage.normalize(root), SAMPLEDEF_CSV)
    if not slide_ids:
        chosen = [s for s in samples if s.is_good]
        if not chosen:
            raise SlideError(f"{where}: lists no good samples (isGood 1)")
        return chosen
    chosen = []
    for slide_id in slide_ids:
        if slide_id not in by_id:
            raise SlideError(f"slide {slide_id}: not listed in {where}")
        if not by_id[slide_id].is_good:
            raise SlideError(f"slide {slide_id}: marked isGood 0 in {where}")
        chosen.append(by_id[slide_id])
    return chosen


def sample_ids(source: AstroPathSource, slide_ids: Sequence[str] | None = None) -> list[str]:
    """The SlideIDs a run works on: those named (checked against ``sampledef.csv``), or every good sample."""
    return [s.slide_id for s in select_samples(source.root, slide_ids)]


# ---------------------------------------------------------------------------------------------------
# the XML metadata


def _parse_xml(text: str, what: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError as exc:
        raise SlideError(f"{what}: not valid XML ({exc})") from None


def _named(root: ET.Element, tag: str, name: str) -> list[ET.Element]:
    """Elements ``<tag name="name">`` anywhere below ``root`` (names compared case-insensitively)."""
    return [e for e in root.iter(tag) if (e.get("name") or "").lower() == name.lower()]


def _numbers(element: ET.Element, what: str) -> list[float]:
    try:
        values = [float(v) for v in (element.text or "").split()]
    except ValueError:
        raise SlideError(f"{what}: {(element.text or '').strip()[:60]!r} is not a list of numbers") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise SlideError(f"{what}: {(element.text or '').strip()[:60]!r} is not a list of finite numbers")
    return values


def parse_parameters_xml(text: str, what: str) -> tuple[tuple[int, int, int], float]:
    """``(H, W, L)`` and the pixel size in µm from a ``Parameters.xml``.

    Parameters
    ----------
    text
        The file's text.
    what
        How errors name the file (``slide <id>: <path>``).
    """
    root = _parse_xml(text, what)
    shape = _named(root, "D", "Shape")
    scale = _named(root, "D", "MillimetersPerPixel")
    if not shape or not scale:
        missing = " and ".join(
            n for n, found in (("Shape", shape), ("MillimetersPerPixel", scale)) if not found
        )
        raise SlideError(f"{what}: no {missing} entry")
    values = _numbers(shape[0], f"{what}: Shape")
    if len(values) != 3 or not all(v == int(v) and v > 0 for v in values):
        raise SlideError(f"{what}: Shape must be three positive whole numbers (width height layers)")
    width, height, layers = (int(v) for v in values)
    (mm_per_pixel, *_) = _numbers(scale[0], f"{what}: MillimetersPerPixel")
    if mm_per_pixel <= 0:
        raise SlideError(f"{what}: MillimetersPerPixel must be positive, got {mm_per_pixel:g}")
    return (height, width, layers), mm_per_pixel * 1000.0


def filter_key(name: str) -> str:
    """A filter's name as a layer-group name: lower case, letters and digits only (``Texas Red`` →
    ``texasred``)."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def parse_full_xml(text: str, what: str) -> tuple[float, list[tuple[str, int]]]:
    """The dark current (counts) and the filters (name, number of layers) from a ``Full.xml``.

    The filters are empty when the file names none (:func:`load_sample` then uses the exposure files').
    """
    root = _parse_xml(text, what)
    dark = _named(root, "D", "DarkCurrent") or [
        mean for settings in root.iter() if (settings.get("name") or "").lower() == "darkcurrentsettings"
        for mean in _named(settings, "D", "Mean")
    ]  # fmt: skip
    if not dark:
        raise SlideError(f"{what}: no dark current (a DarkCurrent entry, or DarkCurrentSettings with a Mean)")
    values = _numbers(dark[0], f"{what}: DarkCurrent")
    dark_current = sum(values) / len(values)
    if dark_current < 0:
        raise SlideError(f"{what}: DarkCurrent must be ≥ 0 counts, got {dark_current:g}")
    filters = []
    for group in _named(root, "G", "Filter"):
        names = [d for d in group.findall("D") if (d.get("name") or "").lower() == "name"]
        waves = [d for d in group.findall("D") if (d.get("name") or "").lower() == "wavelengths"]
        if not names or not waves:
            raise SlideError(f"{what}: a Filter entry without a Name and Wavelengths")
        label = (names[0].text or "").strip()
        key = filter_key(label)
        if not key:
            raise SlideError(f"{what}: a Filter with an empty Name")
        filters.append((key, len(_numbers(waves[0], f"{what}: Filter {label} Wavelengths"))))
    return dark_current, filters


def parse_exposure_xml(text: str, what: str) -> list[list[float]]:
    """Exposure times (ms) of one field: one list per filter, one time per layer of the filter."""
    root = _parse_xml(text, what)
    filters = []
    for element in _named(root, "D", "Exposure"):
        times = _numbers(element, f"{what}: Exposure")
        size = element.get("size")
        if size is not None and size.strip().isdigit() and int(size) != len(times):
            raise SlideError(f"{what}: an Exposure entry holds {len(times)} times but says size {size}")
        if any(t <= 0 for t in times):
            raise SlideError(f"{what}: exposure times must be positive")
        filters.append(times)
    if not filters:
        raise SlideError(f"{what}: no Exposure entries")
    return filters


def field_centre(name: str) -> tuple[str, float, float] | None:
    """``(slide, cx, cy)`` from a field's name ``<SlideID>_[cx,cy]`` (µm), or None if it is not one."""
    match = _FIELD_NAME.match(name)
    if not match:
        return None
    return match["slide"], float(match["cx"]), float(match["cy"])


# ---------------------------------------------------------------------------------------------------
# one slide


def _find_xml(
    source: AstroPathSource, slide_id: str, names: str | Sequence[str], listings: dict[str, dict[str, int]]
) -> str | None:
    """The first of ``names`` (alternative names of one file) in the slide's XML folders."""
    names = (names,) if isinstance(names, str) else tuple(names)
    for folder in source.xml_folders(slide_id):
        for name in names:
            if name in listings[folder]:
                return storage.join(folder, name)
    return None


def _require_xml(source: AstroPathSource, slide_id: str, suffixes: Sequence[str], listings) -> str:
    found = _find_xml(source, slide_id, [slide_id + suffix for suffix in suffixes], listings)
    if found is None:
        folders = " or ".join(source.xml_folders(slide_id))
        raise SlideError(f"slide {slide_id}: {slide_id}{suffixes[0]} not found in {folders}")
    return found


def sample_layout(
    source: AstroPathSource, slide_id: str
) -> tuple[tuple[int, int, int], tuple[LayerGroup, ...]]:
    """A sample's field shape ``(H, W, L)`` and layer groups, from its XML metadata only (the fields are
    not listed; without filters in ``Full.xml``, one exposure file gives the filters' sizes)."""
    listings = {folder: _top_level(folder) for folder in source.xml_folders(slide_id)}
    params_url = _require_xml(source, slide_id, (PARAMETERS_SUFFIX,), listings)
    full_url = _require_xml(source, slide_id, FULL_SUFFIXES, listings)
    shape, _ = parse_parameters_xml(storage.read_text(params_url), f"slide {slide_id}: {params_url}")
    _, filters = parse_full_xml(storage.read_text(full_url), f"slide {slide_id}: {full_url}")
    sizes = [n for _, n in filters]
    if not filters:
        exposure = next(
            (
                storage.join(folder, name)
                for folder, names in listings.items()
                for name in sorted(names)
                if name.startswith(slide_id + "_[") and name.endswith(EXPOSURE_SUFFIXES)
            ),
            None,
        )
        if exposure is None:
            raise SlideError(
                f"slide {slide_id}: {full_url} names no filters, and there are no exposure files"
            )
        sizes = [
            len(t) for t in parse_exposure_xml(storage.read_text(exposure), f"slide {slide_id}: {exposure}")
        ]
    return shape, _groups(slide_id, shape[2], filters, sizes, full_url)


def _groups(
    slide_id: str, n_layers: int, filters: list[tuple[str, int]], exposure_sizes: list[int], full_url: str
) -> tuple[LayerGroup, ...]:
    if not filters:
        standard = STANDARD_FILTERS.get(n_layers)
        if standard is None or [n for _, n in standard] != exposure_sizes:
            raise SlideError(
                f"slide {slide_id}: {full_url} names no filters (Filter entries with Name and Wavelengths), "
                f"and {n_layers} layers in filters of {exposure_sizes} are not AstroPath's standard panel"
            )
        filters = list(standard)
    if sum(n for _, n in filters) != n_layers:
        raise SlideError(
            f"slide {slide_id}: {full_url} lists filters of {sum(n for _, n in filters)} layers in all, but "
            f"Parameters.xml says {n_layers} layers"
        )
    groups, first = [], 1
    for name, size in filters:
        groups.append(LayerGroup(name, first, first + size - 1))
        first += size
    if len({g.name for g in groups}) != len(groups):
        raise SlideError(f"slide {slide_id}: {full_url} names a filter twice: {[g.name for g in groups]}")
    return tuple(groups)


def load_sample(source: AstroPathSource, slide_id: str, check_files: bool = True) -> Slide:
    """One AstroPath slide as the slide contract's :class:`~.slide.Slide`, its fields the ``.Data.dat``
    files where they are.

    Parameters
    ----------
    source
        The cohort's roots.
    slide_id
        The slide; it must be listed (and good) in ``sampledef.csv``.
    check_files
        Also check that every ``.Data.dat`` has the size the shape implies (one listing).

    Raises
    ------
    SlideError
        Naming the slide, and the field or file at fault: a missing ``Parameters.xml`` or ``Full.xml``, a
        field without its exposure file or whose exposure file has the wrong number of filters or layers,
        a ``.Data.dat`` of the wrong size, no fields.
    """
    (sample,) = select_samples(source.root, [slide_id])
    data_url = source.data_url(slide_id)
    folders = {data_url, *source.xml_folders(slide_id)}
    listings = {folder: _top_level(folder) for folder in folders}
    if not listings[data_url]:
        raise SlideError(f"slide {slide_id}: no fields — {data_url} is missing or empty")
    params_url = _require_xml(source, slide_id, (PARAMETERS_SUFFIX,), listings)
    full_url = _require_xml(source, slide_id, FULL_SUFFIXES, listings)
    shape, um_per_px = parse_parameters_xml(storage.read_text(params_url), f"slide {slide_id}: {params_url}")
    dark_current, filters = parse_full_xml(storage.read_text(full_url), f"slide {slide_id}: {full_url}")
    h, w, n_layers = shape

    names = sorted(n for n in listings[data_url] if n.endswith(DATA_SUFFIX))
    if not names:
        raise SlideError(f"slide {slide_id}: no {DATA_SUFFIX} fields in {data_url}")
    found = []
    for name in names:
        key = name[: -len(DATA_SUFFIX)]
        parsed = field_centre(key)
        if parsed is None or parsed[0] != slide_id:
            raise SlideError(
                f"slide {slide_id}: field file {name} in {data_url} is not named "
                f"{slide_id}_[cx,cy]{DATA_SUFFIX}"
            )
        found.append((parsed[2], parsed[1], key, name))
    found.sort()  # raster order: by cy, then cx

    groups = None
    fields = []
    for n, (cy, cx, key, name) in enumerate(found, start=1):
        exposure_name = key + EXPOSURE_SUFFIX
        exposure_url = _find_xml(source, slide_id, [key + suffix for suffix in EXPOSURE_SUFFIXES], listings)
        if exposure_url is None:
            raise SlideError(
                f"slide {slide_id}: field {key}: no exposure file {exposure_name} in "
                f"{' or '.join(source.xml_folders(slide_id))}"
            )
        where = f"slide {slide_id}: field {key}: {exposure_url}"
        per_filter = parse_exposure_xml(storage.read_text(exposure_url), where)
        sizes = [len(t) for t in per_filter]
        if sum(sizes) != n_layers:
            raise SlideError(
                f"{where}: exposure times for {sum(sizes)} layers in {len(sizes)} filters, expected "
                f"{n_layers} layers (Parameters.xml)"
            )
        if groups is None:
            groups = _groups(slide_id, n_layers, filters, sizes, full_url)
        if sizes != [g.size for g in groups]:
            raise SlideError(
                f"{where}: filters of {sizes} layers, expected {[g.size for g in groups]} (the slide's "
                "filters)"
            )
        exposure = []
        for group, times in zip(groups, per_filter):
            if max(times) - min(times) > 1e-6 * max(times):
                raise SlideError(
                    f"{where}: the layers of filter {group.name} have different exposure times {times}"
                )
            exposure.append(times[0])
        fields.append(
            Field(
                n=n,
                row=n,
                key=key,
                file=name,
                cx=cx,
                cy=cy,
                acquired=listings[data_url][name][1],
                exposure_ms=tuple(exposure),
            )
        )
    slide = Slide(
        url=source.slide_url(slide_id),
        slide_id=slide_id,
        project=sample.project,
        cohort=sample.cohort,
        batch=sample.batch_id,
        microscope="polaris" if n_layers == 43 else "vectra",
        shape=shape,
        dtype="uint16",
        layer_groups=groups,
        dark_current=dark_current,
        field_size_um=(w * um_per_px, h * um_per_px),
        fields=tuple(fields),
        fields_url=data_url,
    )
    if check_files:
        check_field_files(slide)
    return slide


def _top_level(url: str) -> dict[str, tuple[int, dt.datetime]]:
    """Files directly in the folder ``url``: name → (size, modification time, UTC); empty if it is missing."""
    fs, path = storage.filesystem(url)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    out = {}
    for entry in entries:
        if entry.get("type") != "file":
            continue
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        out[name] = (int(entry.get("size") or 0), _modified(entry))
    return out


def _modified(entry: dict) -> dt.datetime:
    value = entry.get("mtime", entry.get("LastModified", entry.get("last_modified")))
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, tz=dt.UTC)
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def open_slide(name: str, source: AstroPathSource | None = None, check_files: bool = True) -> Slide:
    """A slide by its folder (slide contract) or, given an AstroPath ``source``, by its SlideID."""
    if source is None:
        return load_slide(name, check_files=check_files)
    return load_sample(source, name, check_files=check_files)


# ---------------------------------------------------------------------------------------------------
# writing a tree (synthetic data, tests)


def parameters_xml_text(shape: tuple[int, int, int], um_per_px: float) -> str:
    """A ``Parameters.xml`` for fields of ``shape`` (H, W, L) and pixels of ``um_per_px`` µm."""
    h, w, n_layers = shape
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<IM3Fragment>\n'
        f'  <D name="Shape" type="unsigned int" size="3">{w} {h} {n_layers}</D>\n'
        f'  <D name="MillimetersPerPixel" type="double">{um_per_px / 1000.0!r}</D>\n'
        "</IM3Fragment>\n"
    )


def full_xml_text(dark_current: float, filters: Sequence[tuple[str, Sequence[float]]]) -> str:
    """A ``Full.xml`` holding what shadeflow reads: the dark current and the filters (display name,
    wavelength of each layer in nm)."""
    lines = ['<?xml version="1.0" encoding="utf-8"?>', "<IM3>", '  <G name="SpectralBasisInfo">']
    for name, waves in filters:
        values = " ".join(f"{v:g}" for v in waves)
        lines += [
            '    <G name="Filter">',
            f'      <D name="Name" type="string">{name}</D>',
            f'      <D name="Wavelengths" type="double" size="{len(waves)}">{values}</D>',
            "    </G>",
        ]
    lines += [
        "  </G>",
        '  <G name="DarkCurrentSettings">',
        f'    <D name="Mean" type="double">{dark_current!r}</D>',
        "  </G>",
        "</IM3>",
    ]
    return "\n".join(lines) + "\n"


def exposure_xml_text(per_filter: Sequence[Sequence[float]]) -> str:
    """A field's ``.SpectralBasisInfo.Exposure.xml``: one ``Exposure`` per filter, a time (ms) per layer."""
    body = "".join(
        f'  <D name="Exposure" type="double" size="{len(t)}">{" ".join(f"{v:g}" for v in t)}</D>\n'
        for t in per_filter
    )
    return f'<?xml version="1.0" encoding="utf-8"?>\n<IM3Fragment>\n{body}</IM3Fragment>\n'


def sampledef_csv_text(samples: Sequence[SampleDef]) -> str:
    """``sampledef.csv`` with AstroPath's columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SAMPLEDEF_COLUMNS)
    for s in samples:
        writer.writerow([s.sample_id, s.slide_id, s.project, s.cohort, s.scan, s.batch_id, int(s.is_good)])
    return buffer.getvalue()
