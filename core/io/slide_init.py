"""The slide contract for a folder of multi-page TIFF fields: ``shadeflow slides init``.

A lab without AstroPath has a folder of fields, one multi-page TIFF each (a page per layer), and
perhaps a table of stage positions. This writes the folder's ``slide.json`` and ``fields.csv`` so
that ``shadeflow meanimage`` reads the TIFFs in place; the TIFFs themselves are only read.

- **Shape and dtype** come from the TIFFs; every field must match the first.
- **Positions** (field centres in µm) come from a CSV (``file,cx,cy``, optional
  ``exposure_ms_<group>`` columns) or from a grid the user gives: the fields, in file-name order, fill
  rows of ``columns`` fields, one field size apart less the overlap.
- **Exposure times** are optional: without them every field counts as exposed 1 ms, so the mean image
  is in counts rather than counts/ms.
- **Acquisition order** (AstroPath numbers fields by it) is the table's row order, or the file-name
  order for a grid.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from dataclasses import dataclass

from . import astropath as astropath_io
from . import storage
from .slide import FIELDS_CSV, SLIDE_JSON, SlideError

TIFF_SUFFIXES = (".tif", ".tiff")
#: the acquisition times written: the fields' order, one second apart (the TIFFs carry no reliable time)
ORDER_EPOCH = dt.datetime(2000, 1, 1)


@dataclass(frozen=True)
class TiffField:
    """One field file: its name in the folder and the (layers, height, width) and dtype it holds."""

    file: str
    shape: tuple[int, int, int]
    dtype: str


def tiff_fields(folder: str) -> list[TiffField]:
    """The multi-page TIFFs directly in ``folder``, in file-name order, with their page shape (headers
    only). Every field must hold the same number of pages of the same size and dtype as the first."""
    import tifffile

    fs, path = storage.filesystem(folder)
    if not fs.isdir(path):
        raise SlideError(f"slide folder {folder}: does not exist or is not a folder")
    names = sorted(
        p.rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if p.lower().endswith(TIFF_SUFFIXES)
    )
    if not names:
        raise SlideError(f"slide folder {folder}: holds no .tif/.tiff fields")
    fields = []
    for name in names:
        try:
            with fs.open(f"{path}/{name}", "rb") as handle, tifffile.TiffFile(handle) as tif:
                pages = tif.series[0]
                shape = tuple(int(v) for v in pages.shape)
                dtype = str(pages.dtype)
        except Exception as exc:  # tifffile raises several types for damaged files
            raise SlideError(f"slide folder {folder}: field {name} is not a readable TIFF ({exc})") from exc
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3:
            raise SlideError(f"slide folder {folder}: field {name} holds {shape}, expected pages of (H, W)")
        fields.append(TiffField(name, shape, dtype))
    first = fields[0]
    for field in fields[1:]:
        if (field.shape, field.dtype) != (first.shape, first.dtype):
            raise SlideError(
                f"slide folder {folder}: field {field.file} holds {field.shape} {field.dtype}, but "
                f"{first.file} holds {first.shape} {first.dtype}; every field must match"
            )
    return fields


def grid_positions(n: int, columns: int, step_um: tuple[float, float]) -> list[tuple[float, float]]:
    """Centres of ``n`` fields filling rows of ``columns``, left to right then top to bottom."""
    if columns < 1:
        raise SlideError(f"--grid {columns}: needs at least one column")
    return [((i % columns + 0.5) * step_um[0], (i // columns + 0.5) * step_um[1]) for i in range(n)]


def read_positions(csv_url: str, files: list[str]) -> list[dict[str, str]]:
    """The rows of a positions CSV (``file,cx,cy`` and optional ``exposure_ms_<group>``), one per field
    file of the folder, in the table's order."""
    text = storage.read_text(csv_url)
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("file", "cx", "cy") if c not in (reader.fieldnames or [])]
    if missing:
        raise SlideError(f"--positions {csv_url}: missing column(s) {', '.join(missing)}")
    rows = list(reader)
    listed = [r["file"].strip() for r in rows]
    unknown = sorted(set(listed) - set(files))
    if unknown:
        raise SlideError(f"--positions {csv_url}: file {unknown[0]} is not a TIFF field of the folder")
    absent = sorted(set(files) - set(listed))
    if absent:
        raise SlideError(f"--positions {csv_url}: no row for field {absent[0]}")
    for number, row in enumerate(rows, start=1):
        for column in ("cx", "cy"):
            try:
                float(row[column])
            except (TypeError, ValueError):
                raise SlideError(
                    f"--positions {csv_url} row {number} (file {row['file']}): {column} {row[column]!r} "
                    "is not a number"
                ) from None
    return rows


def _exposure(row: dict[str, str], column: str, default: float, where: str) -> float:
    text = (row.get(column) or "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise SlideError(
            f"--positions {where} (file {row['file']}): {column} {text!r} is not a number"
        ) from None


def parse_layer_groups(text: str | None, n_layers: int) -> dict[str, list[int]]:
    """``"dapi=1-1,fitc=2-4"`` → ordered groups; none given: one group of every layer."""
    if not text:
        return {"all": [1, n_layers]}
    groups: dict[str, list[int]] = {}
    for part in text.split(","):
        match = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*=\s*(\d+)\s*-\s*(\d+)\s*", part)
        if not match:
            raise SlideError(f"--layer-groups {text!r}: {part.strip()!r} is not NAME=FIRST-LAST")
        groups[match.group(1)] = [int(match.group(2)), int(match.group(3))]
    return groups


def init_slide(
    folder: str,
    *,
    positions: str | None = None,
    grid_columns: int | None = None,
    overlap: float = 0.1,
    pixel_size_um: float = 0.4976,
    layer_groups: str | None = None,
    exposure_ms: float = 1.0,
    dark_current: float = 0.0,
    microscope: str = "vectra",
    overwrite: bool = False,
) -> dict:
    """Write ``slide.json`` and ``fields.csv`` for a folder of TIFF fields; return what slide.json holds.

    Exactly one of ``positions`` (a CSV) and ``grid_columns`` places the fields. An existing contract
    is replaced only with ``overwrite``. The result is checked by reading it back as a slide.
    """
    from .slide import load_slide

    folder = storage.normalize(folder).rstrip("/")
    if (positions is None) == (grid_columns is None):
        raise SlideError("give the fields' positions: --positions CSV or --grid COLUMNS (one of them)")
    if not 0 <= overlap < 1:
        raise SlideError(f"--overlap {overlap}: must be at least 0 and below 1")
    existing = [n for n in (SLIDE_JSON, FIELDS_CSV) if storage.exists(storage.join(folder, n))]
    if existing and not overwrite:
        raise SlideError(f"slide folder {folder}: already has {' and '.join(existing)}; use --overwrite")
    fields = tiff_fields(folder)
    n_layers, height, width = fields[0].shape
    groups = parse_layer_groups(layer_groups, n_layers)
    size_um = (width * pixel_size_um, height * pixel_size_um)
    exposure_columns = [f"exposure_ms_{g}" for g in groups]
    if positions is not None:
        rows = read_positions(positions, [f.file for f in fields])
        table = [
            [
                r["file"].strip(),
                float(r["cx"]),
                float(r["cy"]),
                [_exposure(r, c, exposure_ms, positions) for c in exposure_columns],
            ]
            for r in rows
        ]
    else:
        step = (size_um[0] * (1 - overlap), size_um[1] * (1 - overlap))
        table = [
            [f.file, cx, cy, [exposure_ms] * len(groups)]
            for f, (cx, cy) in zip(fields, grid_positions(len(fields), grid_columns, step))
        ]
    slide_id = storage.basename(folder)
    header = ["field", "file", "cx", "cy", "acquired", *exposure_columns]
    csv_rows = [
        [
            re.sub(r"[^A-Za-z0-9_.-]+", "_", file.rsplit(".", 1)[0]),
            file,
            f"{cx:.2f}",
            f"{cy:.2f}",
            (ORDER_EPOCH + dt.timedelta(seconds=i)).isoformat(),
            *[f"{float(e):g}" for e in exposures],
        ]
        for i, (file, cx, cy, exposures) in enumerate(table)
    ]
    meta = {
        "slide_id": slide_id,
        "project": "1",
        "cohort": "1",
        "batch": "1",
        "microscope": microscope,
        "shape": [height, width, n_layers],
        "dtype": fields[0].dtype,
        "layer_groups": groups,
        "dark_current": dark_current,
        "field_size_um": [round(v, 4) for v in size_um],
    }
    astropath_io.write_csv(storage.join(folder, FIELDS_CSV), header, csv_rows)
    storage.write_text(storage.join(folder, SLIDE_JSON), json.dumps(meta, indent=2))  # last: complete
    try:
        load_slide(folder)  # what was written reads back as a slide (groups, exposures, keys…)
    except Exception:
        for name in (SLIDE_JSON, FIELDS_CSV):  # nothing half-made stays behind
            storage.remove(storage.join(folder, name))
        raise
    return meta
