"""What ``model compare`` will compare and where it writes, checked before anything is read in bulk.

Planning reads only listings and small files (``slide.json``, the existing comparison table, the
models CSV), so the command line runs it before Prefect or a cluster starts and the flow's first
task runs it again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..io import storage
from ..io.astropath_tree import AstroPathSource
from ..io.cohort import SlideRef, find_slides
from . import compare
from .models_csv import ModelError, check_version_name, read_models_csv


@dataclass
class ComparisonPlan:
    """What a run compares and where it writes, validated before any mean image is read."""

    roots: list[str]
    pattern: str | None
    workdir: str
    table: compare.ComparisonTable
    candidates: list[SlideRef]  # found under the roots or named in the table; not yet checked
    skipped: dict[str, str]  # SlideID → why it is left out
    band: tuple[float, float]
    min_images_stacked: int
    store_as: str | None
    models_csv: str | None
    from_table: int = 0  # candidates found only through the table

    @property
    def table_url(self) -> str:
        return storage.join(self.workdir, compare.TABLE_NAME)


def check_pattern(pattern: str | None) -> re.Pattern:
    """The ``--slides`` regular expression, compiled; a clear error if it is not one."""
    try:
        return re.compile(pattern or ".*")
    except re.error as exc:
        raise ModelError(f"--slides {pattern!r} is not a valid regular expression: {exc}") from None


def slides_regex(slide_ids: list[str]) -> str:
    """A ``--slides`` expression selecting exactly these SlideIDs (it is matched from the start)."""
    return "(" + "|".join(re.escape(s) for s in slide_ids) + ")$"


def check_store_request(store_as: str | None, models_csv: str | None) -> None:
    """``--store-as`` and ``--models-csv`` come together, the version is a safe name and is new."""
    if bool(store_as) != bool(models_csv):
        given, missing = ("--store-as", "--models-csv") if store_as else ("--models-csv", "--store-as")
        raise ModelError(
            f"{given} needs {missing}: give both to append the compared slides to a models CSV as a new "
            "version, or neither"
        )
    if not store_as:
        return
    check_version_name(store_as)
    if storage.exists(models_csv):
        present = {e.version for e in read_models_csv(models_csv)}
        if store_as in present:
            raise ModelError(
                f"models CSV {models_csv} already has version {store_as!r}; choose another name (nothing "
                "was compared or written)"
            )


def make_plan(
    roots: list[str],
    pattern: str | None = None,
    workdir: str | None = None,
    band: tuple[float, float] = compare.DEFAULT_BAND,
    min_images_stacked: int = 1,
    store_as: str | None = None,
    models_csv: str | None = None,
    source: AstroPathSource | None = None,
) -> ComparisonPlan:
    """Validate a comparison request and find its candidate slides (reads only small files). With an
    AstroPath ``source`` the candidates are its good samples and ``roots`` is its root."""
    if source is not None:
        roots = [source.root]
    if not roots:
        raise ModelError("no --root given: name at least one folder holding slides")
    roots = [storage.normalize(r) for r in roots]
    pattern = pattern or None
    regex = check_pattern(pattern)
    low, high = (float(v) for v in band)
    if not (0 < low < high):
        raise ModelError(f"--band {low:g} {high:g}: expected 0 < LOW < HIGH")
    models_csv = storage.normalize(models_csv) if models_csv else None
    check_store_request(store_as or None, models_csv)
    workdir = storage.normalize(workdir) if workdir else storage.join(roots[0], compare.WORKDIR_NAME)
    table = compare.ComparisonTable.read(storage.join(workdir, compare.TABLE_NAME))

    found = find_slides(roots, pattern=pattern, source=source)
    known = {r.slide_id for r in found}
    skipped: dict[str, str] = {}
    from_table: list[SlideRef] = []
    for root, slide_id in table.slides():  # AstroPath: slides already compared that match are included
        if slide_id in known or not regex.match(slide_id):
            continue
        known.add(slide_id)
        try:
            if source is not None and storage.normalize(root) == roots[0]:
                from_table.extend(find_slides([], slide_ids=[slide_id], source=source))
            else:
                from_table.extend(find_slides([root], slide_ids=[slide_id]))
        except ModelError as exc:
            skipped[slide_id] = f"named in {table.url} but cannot be read: {exc}"
    if not found and not from_table:
        what = (
            f"matches --slides {pattern!r} (matched from the start of the SlideID)"
            if pattern
            else "was found"
        )
        raise ModelError(
            f"no slide under {', '.join(roots)} {what}"
            + (f"; {'; '.join(f'{k}: {v}' for k, v in skipped.items())}" if skipped else "")
        )
    return ComparisonPlan(
        roots=roots,
        pattern=pattern,
        workdir=workdir,
        table=table,
        candidates=found + from_table,
        skipped=skipped,
        band=(low, high),
        min_images_stacked=int(min_images_stacked),
        store_as=store_as or None,
        models_csv=models_csv,
        from_table=len(from_table),
    )
