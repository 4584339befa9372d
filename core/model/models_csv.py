"""The models CSV: which slides make which flatfield version (AstroPath's
``AstroPathFlatfieldModels.csv``)."""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

from ..errors import InputError
from ..io import storage

COLUMNS = ("version", "Project", "Cohort", "BatchID", "SlideID")
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ModelError(InputError):
    """A models CSV, model version or model store that cannot be used. The message names what is wrong."""


@dataclass(frozen=True)
class ModelEntry:
    """One row: a slide that belongs to a model version."""

    row: int  # 1-based data row
    version: str
    project: str
    cohort: str
    batch: str
    slide_id: str


def check_version_name(version: str) -> str:
    """A version name must be a safe file name: letters, digits, ``.``, ``_``, ``-``; no path separators."""
    if not _SAFE_VERSION.match(version or "") or version in (".", ".."):
        raise ModelError(
            f"model version {version!r} is not a safe file name: use up to 64 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit"
        )
    return version


def read_models_csv(url: str) -> list[ModelEntry]:
    """All rows of a models CSV, checked for the required columns."""
    if not storage.exists(url):
        raise ModelError(f"models CSV {url}: does not exist")
    reader = csv.DictReader(io.StringIO(storage.read_text(url)))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ModelError(
            f"models CSV {url} is missing column(s) {', '.join(missing)} (expected {','.join(COLUMNS)})"
        )
    entries = []
    for row_number, row in enumerate(reader, start=1):
        values = {c: (row[c] or "").strip() for c in COLUMNS}
        if not values["version"] or not values["SlideID"]:
            raise ModelError(f"models CSV {url} row {row_number}: empty version or SlideID")
        entries.append(
            ModelEntry(
                row_number,
                values["version"],
                values["Project"],
                values["Cohort"],
                values["BatchID"],
                values["SlideID"],
            )
        )
    return entries


def select_version(entries: list[ModelEntry], version: str, url: str) -> list[ModelEntry]:
    """The rows of ``version``; an error listing the versions present if there are none."""
    selected = [e for e in entries if e.version == version]
    if not selected:
        present = sorted({e.version for e in entries})
        raise ModelError(
            f"models CSV {url} has no rows for version {version!r}; versions present: "
            f"{', '.join(present) or 'none'}"
        )
    seen: dict[str, int] = {}
    for entry in selected:
        if entry.slide_id in seen:
            raise ModelError(
                f"models CSV {url}: slide {entry.slide_id} is listed twice for version {version!r} (rows "
                f"{seen[entry.slide_id]} and {entry.row})"
            )
        seen[entry.slide_id] = entry.row
    return selected


def append_version(url: str, version: str, slides: list[tuple[str, str, str, str]]) -> int:
    """Append ``(Project, Cohort, BatchID, SlideID)`` rows for a new ``version``; refused if it exists.

    The file is created with a header if it does not exist, and rewritten whole (never half-appended).
    """
    check_version_name(version)
    existing = read_models_csv(url) if storage.exists(url) else []
    if any(e.version == version for e in existing):
        raise ModelError(f"models CSV {url} already has version {version!r}; choose another name")
    text = storage.read_text(url) if existing or storage.exists(url) else ""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if not text.strip():
        writer.writerow(COLUMNS)
    elif not text.endswith("\n"):
        buffer.write("\n")
    for project, cohort, batch, slide_id in slides:
        writer.writerow([version, project, cohort, batch, slide_id])
    storage.write_text(url, text + buffer.getvalue())
    return len(slides)
