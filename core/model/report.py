"""The PDF summary of a flatfield model version and the per-group previews of its flow artifact.

``flatfield_summary_<V>.pdf`` is AstroPath's model report (reference spec §4): what the model was built
from, how much each layer of the flatfield F varies (5th/95th percentile and standard deviation, whole
image and central 64 %, layer groups marked), AstroPath's statistics table, and every layer of F, its
uncertainty δF and the mask stack.

As in :mod:`shadeflow.core.meanimage.report`, matplotlib's object-oriented API writes the PDF directly
(reports are written from worker threads; pyplot is not thread-safe), images are block means of at most
``MAX_PANEL_PX`` pixels, and a page of images is one axes. The PDF names its model version, the
shadeflow version, the date and the parameters, in its metadata and on its first page.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..illumination import CENTRAL_CLIP, central
from ..io.slide import LayerGroup
from ..report_pages import (
    A4,
    BULK_COLOUR,
    EDGE_COLOUR,
    LAYERS_PER_PAGE,
    ReportHeader,
    Tile,
    as_layer_groups,
    colour_limits,
    downsample,
    group_separators,
    mosaic,
    pages_of,
    preview_png,
    table,
    table_pages,
    write_pdf,
)
from ..stack import MeanImageStack
from .flatfield import Flatfield
from .flatfield_statistics import LayerStatistics, summary_statistics

LAYER_TABLE_ROWS = 45  # per-layer statistics rows per page
PREVIEW_WIDTH_PX = 256  # width of the artifact previews
CENTRAL_LABEL = f"central {(1 - 2 * CENTRAL_CLIP) ** 2:.0%}"
EMPTY_COLOUR = "0.85"


def layer_groups_of(statistics: Sequence[LayerStatistics]) -> tuple[LayerGroup, ...]:
    """The layer groups as runs of consecutive layers with the same group name in ``statistics``."""
    groups: list[LayerGroup] = []
    for row in statistics:
        if groups and groups[-1].name == row.group and groups[-1].last == row.layer - 1:
            groups[-1] = LayerGroup(row.group, groups[-1].first, row.layer)
        else:
            groups.append(LayerGroup(row.group, row.layer, row.layer))
    return tuple(groups)


def layer_label(layer: int, group: str) -> str:
    """``layer 7 (fitc)`` for a 1-based layer."""
    return f"layer {layer} ({group})" if group else f"layer {layer}"


# --- tables -------------------------------------------------------------------------------------


def statistics_table(
    model: Flatfield, statistics: Sequence[LayerStatistics]
) -> tuple[list[str], list[list[str]]]:
    """AstroPath's flatfield statistics table: header and rows (max, min, mean spread, mean std).

    Columns: whole image, central region. The spread is the 5th–95th percentile range; "mean" is over
    layers. Layers with nothing stacked (F = 1) are left out, as in
    :func:`~shadeflow.core.model.flatfield_statistics.summary_statistics`, which gives the whole-image
    numbers.
    """
    summary = summary_statistics(list(statistics))
    used = [r.layer - 1 for r in statistics if r.n_images > 0] or [r.layer - 1 for r in statistics]
    centres = [central(model.flatfield[layer]) for layer in used]
    central_max = max(float(c.max()) for c in centres)
    central_min = min(float(c.min()) for c in centres)
    rows = [
        ["max F", summary["max"], central_max],
        ["min F", summary["min"], central_min],
        ["mean spread (p5-p95)", summary["mean_spread"], summary["mean_central_spread"]],
        ["mean std", summary["mean_std"], summary["mean_central_std"]],
    ]
    return ["", "whole image", CENTRAL_LABEL], [
        [name, f"{whole:.4f}", f"{middle:.4f}"] for name, whole, middle in rows
    ]


LAYER_TABLE_HEADER = [
    "layer", "group", "images", "min", "max", "p5", "p95", "spread", "std",
    "c. p5", "c. p95", "c. spread", "c. std",
]  # fmt: skip


def layer_table_rows(statistics: Sequence[LayerStatistics]) -> list[list]:
    """One row per layer of :data:`LAYER_TABLE_HEADER`."""
    return [
        [
            r.layer,
            r.group,
            r.n_images,
            *(
                f"{v:.4f}"
                for v in (
                    r.minimum,
                    r.maximum,
                    r.p5,
                    r.p95,
                    r.spread,
                    r.std,
                    r.central_p5,
                    r.central_p95,
                    r.central_spread,
                    r.central_std,
                )
            ),
        ]
        for r in statistics
    ]


SLIDE_TABLE_HEADER = ["slide", "project", "cohort", "batch", "fields stacked", "root"]


def slide_table_rows(slides: Sequence[dict]) -> list[list]:
    return [
        [
            s.get("slide_id", ""),
            s.get("project", ""),
            s.get("cohort", ""),
            s.get("batch", ""),
            s.get("fields_stacked", ""),
            _shorten(str(s.get("root", "")), 60),
        ]
        for s in slides
    ]


def _shorten(text: str, n: int) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1) :]


def _table_axes(fig: Figure, top: float, bottom: float = 0.03) -> Axes:
    ax = fig.add_axes((0.06, bottom, 0.88, top - bottom))
    ax.axis("off")
    return ax


# --- the model summary --------------------------------------------------------------------------


def write_model_summary(
    url: str,
    version: str,
    model: Flatfield,
    stack: MeanImageStack,
    statistics: list[LayerStatistics],
    slides: list[dict],
    parameters: dict,
) -> None:
    """Write ``flatfield_summary_<version>.pdf`` to ``url``.

    Parameters
    ----------
    model
        The flatfield F and its uncertainty δF, (L, H, W).
    stack
        The merged mean-image stack the model was built from (its mask stack is shown).
    statistics
        Per-layer statistics of F (:func:`~shadeflow.core.model.build.layer_statistics`).
    slides
        One dict per slide: ``slide_id``, ``root``, ``project``, ``cohort``, ``batch``, ``fields_stacked``.
    parameters
        The run's parameters, recorded in the PDF.
    """
    n_layers, h, w = model.flatfield.shape
    fields = sum(int(s.get("fields_stacked", 0)) for s in slides)
    empty = ", ".join(str(v) for v in model.empty_layers) or "none"
    header = ReportHeader.of(
        f"flatfield model {version}",
        parameters,
        f"{len(slides)} slides, {fields} fields stacked; {n_layers} layers of {h}x{w} px; "
        f"smoothing sigma {model.sigma:g} px, {model.border} borders; empty layers (F = 1): {empty}",
    )
    write_pdf(
        url,
        header.metadata(f"flatfield_summary_{version}"),
        _model_pages(header, model, stack, statistics, slides),
    )


def _model_pages(
    header: ReportHeader,
    model: Flatfield,
    stack: MeanImageStack,
    statistics: list[LayerStatistics],
    slides: list[dict],
) -> Iterator[Figure]:
    groups = layer_groups_of(statistics)
    for page, rows in enumerate(table_pages(slide_table_rows(slides))):
        fig = Figure(figsize=A4)
        top = 0.97
        if page == 0:
            top = header.draw(
                fig,
                "flatfield summary",
                [
                    "F = smoothed mean image / its inverse-variance weighted mean, per layer; dF its "
                    "propagated uncertainty.",
                    "Pages: slides; variation of F per layer and the statistics table; per-layer "
                    "statistics; F, dF and mask stack per layer.",
                ],
            )
            fig.text(0.06, top, f"slides ({len(slides)})", fontsize=9, weight="bold", va="top")
            top -= 0.02
        if rows:
            table(_table_axes(fig, top), rows, SLIDE_TABLE_HEADER, 6)
        yield fig

    fig = Figure(figsize=A4)
    fig.text(0.06, 0.975, "Variation of the flatfield per layer", fontsize=11, weight="bold", va="top")
    fig.text(
        0.06,
        0.95,
        f"5th and 95th percentiles and standard deviation of F over the whole image and its {CENTRAL_LABEL} "
        f"({CENTRAL_CLIP:.0%} clipped from each side).\nDotted lines separate layer groups; grey layers had "
        "nothing stacked (F = 1).",
        fontsize=7,
        va="top",
        linespacing=1.5,
    )
    _percentile_plot(fig.add_axes((0.1, 0.61, 0.68, 0.27)), statistics, groups)
    _std_plot(fig.add_axes((0.1, 0.27, 0.68, 0.26)), statistics, groups)
    fig.text(
        0.06,
        0.2,
        "Statistics of F (AstroPath's table; layers with nothing stacked left out)",
        fontsize=9,
        weight="bold",
        va="top",
    )
    table_header, rows = statistics_table(model, statistics)
    ax = fig.add_axes((0.1, 0.05, 0.8, 0.13))
    ax.axis("off")
    table(ax, rows, table_header, 7, row_in=0.2)
    yield fig

    rows = layer_table_rows(statistics)
    for page, page_rows in enumerate(pages_of(rows, LAYER_TABLE_ROWS)):
        fig = Figure(figsize=A4)
        if page == 0:
            fig.text(0.06, 0.975, "Statistics of F per layer", fontsize=11, weight="bold", va="top")
            fig.text(
                0.06,
                0.95,
                f"images = fields stacked; spread = 95th - 5th percentile (p95 - p5); c. = {CENTRAL_LABEL}",
                fontsize=7,
                va="top",
            )
        table(_table_axes(fig, 0.93), page_rows, LAYER_TABLE_HEADER, 5.5)
        yield fig

    yield from _layer_pages(model, stack, statistics)


def _empty_layers(ax: Axes, statistics: Sequence[LayerStatistics]) -> None:
    for r in statistics:
        if r.n_images == 0:
            ax.axvspan(r.layer - 0.5, r.layer + 0.5, color=EMPTY_COLOUR, linewidth=0)


def _layer_axis(
    ax: Axes, statistics: Sequence[LayerStatistics], groups: Sequence[LayerGroup], ylabel: str
) -> None:
    ax.set_xlim(0.5, len(statistics) + 0.5)
    ax.set_xlabel("layer", fontsize=7)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    _empty_layers(ax, statistics)
    group_separators(ax, groups)


def _plotted(statistics: Sequence[LayerStatistics], attr: str) -> np.ndarray:
    """A statistic per layer, NaN (a gap in the line) where nothing was stacked (F = 1 says nothing)."""
    return np.array([getattr(r, attr) if r.n_images > 0 else np.nan for r in statistics])


def _percentile_plot(ax: Axes, statistics: Sequence[LayerStatistics], groups: Sequence[LayerGroup]) -> None:
    layers = np.array([r.layer for r in statistics])
    for attr, colour, label in (("", BULK_COLOUR, "whole image"), ("central_", EDGE_COLOUR, CENTRAL_LABEL)):
        p5, p95 = _plotted(statistics, f"{attr}p5"), _plotted(statistics, f"{attr}p95")
        ax.plot(
            layers, p95, "-o", color=colour, markersize=2.5, linewidth=1, label=f"{label}: 95th percentile"
        )
        ax.plot(
            layers, p5, "--s", color=colour, markersize=2.5, linewidth=1, label=f"{label}: 5th percentile"
        )
    ax.axhline(1.0, color="0.5", linewidth=0.6)
    _layer_axis(ax, statistics, groups, "flatfield F")


def _std_plot(ax: Axes, statistics: Sequence[LayerStatistics], groups: Sequence[LayerGroup]) -> None:
    layers = np.array([r.layer for r in statistics])
    ax.plot(
        layers,
        _plotted(statistics, "std"),
        "-o",
        color=BULK_COLOUR,
        markersize=2.5,
        linewidth=1,
        label="whole image",
    )
    ax.plot(
        layers,
        _plotted(statistics, "central_std"),
        "-o",
        color=EDGE_COLOUR,
        markersize=2.5,
        linewidth=1,
        label=CENTRAL_LABEL,
    )
    ax.set_ylim(bottom=0)
    _layer_axis(ax, statistics, groups, "standard deviation of F")


def _layer_pages(
    model: Flatfield, stack: MeanImageStack, statistics: Sequence[LayerStatistics]
) -> Iterator[Figure]:
    """One row per layer, ``LAYERS_PER_PAGE`` to a page: F, δF and the mask stack (downsampled a layer at a
    time)."""
    groups = {r.layer: r.group for r in statistics}
    empty = set(model.empty_layers)
    for page_layers in pages_of(range(model.flatfield.shape[0]), LAYERS_PER_PAGE):
        tiles = []
        for layer in page_layers:
            label = layer_label(layer + 1, groups.get(layer + 1, ""))
            note = " (nothing stacked: F = 1)" if layer + 1 in empty else ""
            flat, error, count = (
                downsample(a[layer]) for a in (model.flatfield, model.uncertainty, stack.count)
            )
            tiles += [
                Tile(flat, f"{label}: F{note}", colormaps["viridis"], colour_limits(flat)),
                Tile(error, f"{label}: dF", colormaps["magma"], colour_limits(error)),
                Tile(
                    count,
                    f"{label}: mask stack",
                    colormaps["cividis"],
                    (0.0, max(float(stack.count[layer].max()), 1.0)),
                ),
            ]
        fig = Figure(figsize=A4)
        mosaic(fig, (0.04, 0.03, 0.92, 0.94), tiles, 3)
        yield fig


# --- previews for the flow artifact -------------------------------------------------------------


def layer_means(stack: MeanImageStack) -> np.ndarray:
    """Per layer, the mean over all pixels of sum / max(count, 1): 0 where nothing was stacked."""
    return np.array(
        [(stack.sum[layer] / np.maximum(stack.count[layer], 1)).mean() for layer in range(stack.shape[0])]
    )


def brightest_layers(stack: MeanImageStack, layer_groups: dict[str, list[int]]) -> dict[str, int]:
    """The 1-based layer with the highest :func:`layer_means` in each group (the first on ties)."""
    means = layer_means(stack)
    return {
        group.name: group.first + int(np.argmax(means[group.index]))
        for group in as_layer_groups(layer_groups)
    }


def brightest_layer_images(
    model: Flatfield, stack: MeanImageStack, layer_groups: dict[str, list[int]]
) -> dict[str, bytes]:
    """A PNG per layer group of the flatfield of the group's brightest layer, for a markdown artifact.

    Each is ``PREVIEW_WIDTH_PX`` pixels wide, titled ``"<group> layer <n>"``, with a colour bar.
    """
    images = {}
    for name, layer in brightest_layers(stack, layer_groups).items():
        images[name] = preview_png(model.flatfield[layer - 1], f"{name} layer {layer}", PREVIEW_WIDTH_PX)
    return images
