"""Building blocks shared by shadeflow's PDF reports (matplotlib's object-oriented API only).

Reports are written from worker threads, and pyplot's global figure registry is not thread-safe, so
pages are ``Figure`` objects written with ``PdfPages``. Every PDF names what made it — subject,
shadeflow version, date and parameters — in its metadata and in a header on its first page.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from .io import storage
from .io.output_folders import shadeflow_version
from .io.slide import LayerGroup
from .morphology import bin_mean

A4 = (8.27, 11.69)  # inches, portrait
MAX_PANEL_PX = 300  # long side of a plotted image
LAYERS_PER_PAGE = 5
FIRST_PAGE_ROWS = 50  # table rows below the first page's header
# around each tile: title above, ramp below, gap beside
TILE_TITLE_IN, TILE_RAMP_IN, TILE_GAP_IN = 0.2, 0.22, 0.15
EDGE_COLOUR, BULK_COLOUR = "#e08214", "#3572b0"  # edge and bulk fields, or "before" and "after"
PAGE_ROWS = 70  # table rows on a continuation page


@dataclass(frozen=True)
class ReportHeader:
    """What made a cohort-level report (a model version, an applied test): PDF metadata and page-1 header."""

    subject: str  # e.g. "flatfield model 2024-01"
    version: str  # shadeflow's
    created: str
    parameters_json: str
    context: str

    @classmethod
    def of(cls, subject: str, parameters: dict, context: str) -> ReportHeader:
        return cls(
            subject=subject,
            version=shadeflow_version(),
            created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            parameters_json=json.dumps(parameters, default=str, sort_keys=True),
            context=context,
        )

    def metadata(self, title: str) -> dict[str, str]:
        return {
            "Title": f"{self.subject} {title}",
            "Subject": f"{title} of {self.subject}, made by shadeflow {self.version} on {self.created}",
            "Keywords": f"shadeflow {self.version}; {self.subject}; parameters {self.parameters_json}",
            "Creator": f"shadeflow {self.version}",
        }

    def draw(self, fig: Figure, title: str, lines: Sequence[str] = ()) -> float:
        """Title and provenance at the top of a first page, the parameters as a two-column table of
        name and value; returns the figure fraction where it ends."""
        fig.text(0.06, 0.975, f"{self.subject} — {title}", fontsize=13, weight="bold", va="top")
        rows = parameter_rows(json.loads(self.parameters_json))
        width = max((len(name) for name, _ in rows), default=0)
        table = [f"  {name.ljust(width)}  {value}" for name, value in rows]
        text = [
            f"shadeflow {self.version}, created {self.created}",
            self.context,
            "parameters:",
            *table,
            *lines,
        ]
        fig.text(0.06, 0.950, "\n".join(text), fontsize=6.5, va="top", family="monospace", linespacing=1.4)
        line = 6.5 * 1.4 / 72 / fig.get_size_inches()[1]  # one text line, as a figure fraction
        return 0.950 - len(text) * line - 0.015


#: characters of a value shown on a report's first page (A4 at 6.5 pt monospace holds about 125)
PARAMETER_VALUE_CHARS = 95
#: parameters shown on a first page; the full set is always in the PDF's metadata
PARAMETER_ROWS = 14


def parameter_rows(parameters: dict) -> list[tuple[str, str]]:
    """Parameters as (name, value) rows that fit a page: nested settings flattened to ``a.b``, a list
    shown as its first items and a count, a long value cut at its start (a path's end says most)."""
    rows: list[tuple[str, str]] = []

    def add(name: str, value) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                add(f"{name}.{key}" if name else str(key), value[key])
            return
        if isinstance(value, (list, tuple)):  # as many items as fit, then how many more
            items = [str(v) for v in value]
            n = len(items)
            while n > 1 and len(", ".join(items[:n])) + 12 > PARAMETER_VALUE_CHARS:
                n -= 1
            shown = ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if n < len(items) else "")
        else:
            shown = "—" if value is None else str(value)
        if len(shown) > PARAMETER_VALUE_CHARS:
            shown = "…" + shown[-(PARAMETER_VALUE_CHARS - 1) :]
        rows.append((name, shown))

    add("", parameters)
    if len(rows) > PARAMETER_ROWS:
        rows = rows[: PARAMETER_ROWS - 1] + [
            ("…", f"{len(rows) - PARAMETER_ROWS + 1} more in this PDF's Keywords metadata")
        ]
    return rows


def write_pdf(url: str, metadata: dict[str, str], pages: Iterable[Figure]) -> None:
    """Render pages one at a time into memory, then write the PDF in one call (works on S3 too)."""
    buffer = io.BytesIO()
    with PdfPages(buffer, metadata=metadata) as pdf:
        for fig in pages:
            pdf.savefig(fig)
    storage.write_bytes(url, buffer.getvalue())


def downsample(image: np.ndarray, max_px: int = MAX_PANEL_PX) -> np.ndarray:
    """Block mean over the last two axes so the long side is at most ``max_px`` (float32)."""
    return bin_mean(image, math.ceil(max(image.shape[-2:]) / max_px))


def colour_limits(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Robust display range: percentiles of the non-zero pixels (zero = nothing stacked); never empty."""
    values = image[image != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    return (lo, hi) if hi > lo else (lo, lo + max(abs(lo), 1.0) * 1e-3)


def preview_png(image: np.ndarray, title: str, width_px: int = 256) -> bytes:
    """A small PNG of a profile (a flatfield, a darkfield) with its colour bar, for a run's artifact."""
    image = downsample(np.asarray(image, dtype=np.float64), width_px)
    lo, hi = colour_limits(image)
    height_px = width_px * 0.85 * image.shape[0] / image.shape[1] + 40
    fig = Figure(figsize=(width_px / 100, max(height_px, 120) / 100), dpi=100)
    ax = fig.add_axes((0.03, 0.04, 0.72, 0.84))
    shown = ax.imshow(image, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    colorbar = fig.colorbar(shown, cax=fig.add_axes((0.78, 0.1, 0.04, 0.72)))
    colorbar.ax.tick_params(labelsize=6)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def markdown_image(alt: str, png: bytes) -> str:
    """A PNG inlined in a markdown artifact (the Prefect UI shows it; nothing to host)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


@dataclass(frozen=True)
class Tile:
    """One image of a mosaic, coloured by ``cmap`` between ``limits``, with a labelled colour ramp unless
    categorical."""

    image: np.ndarray  # 2-D
    title: str
    cmap: Colormap
    limits: tuple[float, float]
    ramp: bool = True


def mosaic_scale(
    fig: Figure, rect: tuple[float, float, float, float], shape: tuple[int, int], n_tiles: int, n_cols: int
) -> float:
    """Inches per tile pixel when ``n_tiles`` tiles of ``shape`` fill ``rect``, ``n_cols`` to a row."""
    fig_w, fig_h = fig.get_size_inches()
    n_rows = math.ceil(n_tiles / n_cols)
    return min(
        (rect[2] * fig_w / n_cols - TILE_GAP_IN) / shape[1],
        (rect[3] * fig_h / n_rows - TILE_TITLE_IN - TILE_RAMP_IN) / shape[0],
    )


def mosaic(fig: Figure, rect: tuple[float, float, float, float], tiles: Sequence[Tile], n_cols: int) -> None:
    """Equal-shaped tiles, ``n_cols`` to a row, drawn as one RGB image in one axes within ``rect`` (figure
    fraction).

    A page of many images thus costs one axes instead of dozens: axes dominate matplotlib's rendering time.
    The image is embedded unresampled (``interpolation="none"``), so its pixels are the tiles' pixels.
    """
    th, tw = tiles[0].image.shape
    n_rows = math.ceil(len(tiles) / n_cols)
    fig_w, fig_h = fig.get_size_inches()
    left, bottom, width, height = rect
    inch = mosaic_scale(fig, rect, (th, tw), len(tiles), n_cols)
    gap, title, ramp = (round(v / inch) for v in (TILE_GAP_IN, TILE_TITLE_IN, TILE_RAMP_IN))
    cell_h, cell_w = th + title + ramp, tw + gap
    canvas = np.full((n_rows * cell_h, n_cols * cell_w, 3), 255, np.uint8)
    ax_h, ax_w = canvas.shape[0] * inch / fig_h, canvas.shape[1] * inch / fig_w
    # centred, from the top
    ax = fig.add_axes((left + (width - ax_w) / 2, bottom + height - ax_h, ax_w, ax_h))
    for i, tile in enumerate(tiles):
        y, x = (i // n_cols) * cell_h + title, (i % n_cols) * cell_w + gap // 2
        lo, hi = tile.limits
        canvas[y : y + th, x : x + tw] = tile.cmap(np.clip((tile.image - lo) / (hi - lo), 0, 1), bytes=True)[
            ..., :3
        ]
        ax.text(x, y - 0.15 * title, tile.title, fontsize=6, va="bottom")
        if tile.ramp:
            y0, x0, x1 = y + th + round(0.3 * ramp), x + tw // 4, x + 3 * tw // 4
            y1 = y0 + max(1, round(0.35 * ramp))
            canvas[y0:y1, x0:x1] = tile.cmap(np.linspace(0, 1, x1 - x0), bytes=True)[:, :3]
            ax.text(x0 - 0.02 * tw, (y0 + y1) / 2, f"{lo:.3g}", fontsize=5.5, ha="right", va="center")
            ax.text(x1 + 0.02 * tw, (y0 + y1) / 2, f"{hi:.3g}", fontsize=5.5, ha="left", va="center")
    ax.imshow(canvas, interpolation="none")
    ax.set_axis_off()


def pages_of(items: Sequence, per_page: int) -> Iterator[Sequence]:
    for start in range(0, len(items), per_page):
        yield items[start : start + per_page]


def group_separators(ax: Axes, groups: Sequence[LayerGroup]) -> None:
    """Dotted lines between layer groups, with the group names along the top."""
    for group in groups[:-1]:
        ax.axvline(group.last + 0.5, color="0.6", linestyle=":", linewidth=0.8)
    for group in groups:
        ax.text(
            (group.first + group.last) / 2,
            1.01,
            group.name,
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=6,
        )


def table(
    ax: Axes, rows: Sequence[Sequence], header: Sequence[str], fontsize: float, row_in: float = 0.135
) -> None:
    """A table from the top of ``ax`` down, ``row_in`` inches a row (shrunk to fit ``ax``)."""
    height_in = ax.get_position().height * ax.get_figure().get_size_inches()[1]
    fraction = min(1.0, (len(rows) + 1) * row_in / height_in)
    table = ax.table(cellText=rows, colLabels=header, cellLoc="center", bbox=(0, 1 - fraction, 1, fraction))
    table.auto_set_font_size(False)
    table.set_fontsize(fontsize)


def as_layer_groups(layer_groups: dict[str, Sequence[int]]) -> tuple[LayerGroup, ...]:
    """``{name: [first, last]}`` (1-based, inclusive) as :class:`LayerGroup` objects, in order."""
    return tuple(LayerGroup(name, int(first), int(last)) for name, (first, last) in layer_groups.items())


def table_pages(rows: Sequence, first: int = FIRST_PAGE_ROWS, rest: int = PAGE_ROWS) -> list[Sequence]:
    """``rows`` split into a first page of ``first`` rows and further pages of ``rest`` (at least one
    page)."""
    pages = [rows[:first]]
    pages += [rows[start : start + rest] for start in range(first, len(rows), rest)]
    return pages
