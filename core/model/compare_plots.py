"""Slide × slide grids of the δ/σ comparison (AstroPath's meanimagecomparison plots, spec §3).

One grid averaged over all layers and one per layer group, each a PNG and a page of
``meanimagecomparison.pdf``. Colours span the compatibility band (default 0.85–1.15), so a block of
compatible slides reads as one even colour and an outlier as a dark-red row and column. Lines
separate Projects (thick), Cohorts and Batches (thin) of the sorted slides. Matplotlib's
object-oriented API only (``Figure``, ``PdfPages``): flows call this from worker threads and pyplot's
global state is not thread-safe.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from ..io import storage

UNDER_COLOUR = "#08306b"  # below the band: dark blue
OVER_COLOUR = "#a50026"  # above the band (incompatible shading): dark red
#: Above this many slides the values are no longer printed in the cells (they would not be legible).
MAX_PRINTED_SLIDES = 60


@dataclass(frozen=True)
class GridPage:
    """One grid: a title, the (n, n) matrix and the name of its PNG."""

    name: str  # file stem, e.g. "meanimagecomparison_average"
    title: str
    matrix: np.ndarray


def separators(labels: Sequence[tuple[str, str, str]]) -> list[tuple[float, str]]:
    """Where (between slide i and i + 1, at i + 0.5) the Project, Cohort or Batch changes, and which.

    ``labels`` are (project, cohort, batch) per slide in plot order. The coarsest change wins.

    Examples
    --------
    >>> separators([("1", "1", "1"), ("1", "1", "2"), ("2", "1", "1")])
    [(0.5, 'batch'), (1.5, 'project')]
    """
    out = []
    for i in range(len(labels) - 1):
        (p1, c1, b1), (p2, c2, b2) = labels[i], labels[i + 1]
        kind = "project" if p1 != p2 else "cohort" if c1 != c2 else "batch" if b1 != b2 else None
        if kind:
            out.append((i + 0.5, kind))
    return out


_LINE = {"project": 2.4, "cohort": 1.4, "batch": 0.7}


def grid_figure(
    matrix: np.ndarray,
    slide_ids: Sequence[str],
    labels: Sequence[tuple[str, str, str]],
    band: tuple[float, float],
    title: str,
    subtitle: str = "",
) -> Figure:
    """A slide × slide grid of ``matrix`` coloured over ``band``, values printed, groups separated.

    NaN cells (the diagonal and pairs without a value) are left blank.
    """
    n = len(slide_ids)
    side = min(40.0, max(5.5, 0.5 * n + 3.0))
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.add_subplot()
    # inside the band a perceptually uniform scale; outside it two colours viridis never uses; blank = no
    # value
    cmap = colormaps["viridis"].with_extremes(bad="white", under=UNDER_COLOUR, over=OVER_COLOUR)
    shown = np.ma.masked_invalid(matrix)
    image = ax.imshow(shown, cmap=cmap, vmin=band[0], vmax=band[1], interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="std. dev. of δ/σ (1 = compatible)", extend="both")
    ticks = np.arange(n)
    font = max(3.0, min(9.0, 160.0 / max(n, 1)))
    ax.set_xticks(ticks, labels=slide_ids, rotation=90, fontsize=font)
    ax.set_yticks(ticks, labels=slide_ids, fontsize=font)
    if n <= MAX_PRINTED_SLIDES:
        digits = 3 if n <= 30 else 2  # enough to tell 1.149 (in the band) from 1.151 (out)
        dark_below = band[0] + 0.55 * (band[1] - band[0])  # viridis is dark below about here
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                if np.isfinite(value):
                    dark = value < dark_below or value > band[1]
                    ax.text(
                        j,
                        i,
                        f"{value:.{digits}f}",
                        ha="center",
                        va="center",
                        fontsize=font * 0.85,
                        color="white" if dark else "black",
                    )
    for position, kind in separators(labels):
        ax.axhline(position, color="black", linewidth=_LINE[kind])
        ax.axvline(position, color="black", linewidth=_LINE[kind])
    ax.set_title(f"{title}\n{subtitle}" if subtitle else title, fontsize=10)
    return fig


def png_bytes(fig: Figure, metadata: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata=metadata or {})
    return buffer.getvalue()


def write_grids(
    workdir: str,
    pages: Sequence[GridPage],
    slide_ids: Sequence[str],
    labels: Sequence[tuple[str, str, str]],
    band: tuple[float, float],
    subtitle: str,
    pdf_name: str,
    metadata: dict[str, str],
) -> tuple[list[str], str]:
    """Write each page as ``<workdir>/<name>.png`` and all of them as one PDF; return the URLs.

    Every file is rendered in memory and written in one call (atomic locally, one object on S3).
    """
    pngs = []
    buffer = io.BytesIO()
    with PdfPages(
        buffer,
        metadata={
            k: v for k, v in metadata.items() if k in ("Title", "Author", "Subject", "Keywords", "Creator")
        },
    ) as pdf:
        for page in pages:
            fig = grid_figure(page.matrix, slide_ids, labels, band, page.title, subtitle)
            url = storage.join(workdir, f"{page.name}.png")
            storage.write_bytes(
                url,
                png_bytes(
                    fig,
                    {
                        "Title": page.title,
                        "Description": metadata.get("Subject", ""),
                        "Software": metadata.get("Creator", ""),
                    },
                ),
            )
            pngs.append(url)
            pdf.savefig(fig)
    pdf_url = storage.join(workdir, pdf_name)
    storage.write_bytes(pdf_url, buffer.getvalue())
    return pngs, pdf_url
