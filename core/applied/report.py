"""Plots and the PDF summary of an applied flatfield test (reference spec §5).

The four PNGs keep AstroPath's names:

* ``smoothed_mean_image_pixel_intensities[_central_region].png`` — per layer, the 5th–95th percentile
  range and the mean of the smoothed, mean-relative intensity of the held-out mean image, before and
  after correction;
* ``illumination_variation_reduction[_central_region].png`` — per layer, the spread (5th–95th
  percentile range) and standard deviation before and after, and their % change.

``applied_flatfield_summary.pdf`` starts with what was tested (slides, fields in each half, seed, σ,
parameters) and AstroPath's two tables, then the four plots, then every layer of the test flatfield
and of the smoothed mean-relative image before and after correction on one colour scale.

The numbers plotted and tabulated come from small pure functions (:func:`intensity_series`,
:func:`reduction_series`, :func:`summary_table`, :func:`change_table`), which agree with
:meth:`~shadeflow.core.applied.evaluation.AppliedTestResult.summary`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..illumination import central
from ..io import storage
from ..io.slide import LayerGroup
from ..model.report import CENTRAL_LABEL
from ..report_pages import (
    A4,
    LAYERS_PER_PAGE,
    ReportHeader,
    Tile,
    as_layer_groups,
    colour_limits,
    downsample,
    group_separators,
    mosaic,
    pages_of,
    table,
    table_pages,
    write_pdf,
)
from .evaluation import AppliedTestResult, LayerMetrics, Split

PRE_COLOUR, POST_COLOUR = "#d95f02", "#1b9e77"  # before / after correction
PLOT_SIZE = (8.27, 5.6)  # inches: a PNG, and a page of the PDF
PLOT_DPI = 150
PLOTS = {
    "smoothed_mean_image_pixel_intensities.png": ("intensities", False),
    "smoothed_mean_image_pixel_intensities_central_region.png": ("intensities", True),
    "illumination_variation_reduction.png": ("reduction", False),
    "illumination_variation_reduction_central_region.png": ("reduction", True),
}
SPLIT_TABLE_HEADER = ["slide", "flatfield half: drawn", "stacked", "corrected half: drawn", "stacked"]
LAYER_TABLE_HEADER = [
    "layer", "spread pre", "spread post", "spread %", "std pre", "std post", "std %",
    "c.spread pre", "c.spread post", "c.spread %", "c.std pre", "c.std post", "c.std %",
]  # fmt: skip
LAYER_TABLE_ROWS = 45


def _region(central_region: bool) -> str:
    return CENTRAL_LABEL if central_region else "whole image"


# --- plotted and tabulated numbers --------------------------------------------------------------


def intensity_series(result: AppliedTestResult, central_region: bool = False) -> dict[str, np.ndarray]:
    """Per layer, 5th/95th percentile and mean of the smoothed mean-relative intensity, before and after.

    Keys: ``layer`` (1-based) and ``{pre,post}_{p5,p95,mean}``; percentiles from ``result.metrics``, means
    of ``result.smoothed_pre`` / ``smoothed_post`` (over the central region if ``central_region``).
    """
    suffix = "_central" if central_region else ""
    series: dict[str, np.ndarray] = {"layer": np.array([m.layer for m in result.metrics])}
    for when, images in (("pre", result.smoothed_pre), ("post", result.smoothed_post)):
        variations = [getattr(m, f"{when}{suffix}") for m in result.metrics]
        series[f"{when}_p5"] = np.array([v.p5 for v in variations])
        series[f"{when}_p95"] = np.array([v.p95 for v in variations])
        series[f"{when}_mean"] = np.array(
            [float((central(layer) if central_region else layer).mean()) for layer in images]
        )
    return series


def reduction_series(result: AppliedTestResult, central_region: bool = False) -> dict[str, np.ndarray]:
    """Per layer, spread and std before and after correction and their % change.

    Keys: ``layer``, ``{pre,post}_{spread,std}``, ``{spread,std}_change_percent`` (100·(post − pre)/pre:
    negative is a reduction; NaN where pre is 0).
    """
    suffix = "_central" if central_region else ""
    series: dict[str, np.ndarray] = {"layer": np.array([m.layer for m in result.metrics])}
    for when in ("pre", "post"):
        variations = [getattr(m, f"{when}{suffix}") for m in result.metrics]
        series[f"{when}_spread"] = np.array([v.spread for v in variations])
        series[f"{when}_std"] = np.array([v.std for v in variations])
    for what in ("spread", "std"):
        series[f"{what}_change_percent"] = np.array(
            [LayerMetrics.change(a, b) for a, b in zip(series[f"pre_{what}"], series[f"post_{what}"])]
        )
    return series


def summary_table(result: AppliedTestResult) -> tuple[list[str], list[list]]:
    """AstroPath's table: max and min mean-relative intensity over layers, spread and std averaged over
    layers; columns before/after × whole/central. Values are floats (the whole-image ones and all
    averages are those of ``result.summary()``; the central extremes are computed here)."""
    summary = result.summary()
    central_extremes = {}
    for when, images in (("pre", result.smoothed_pre), ("post", result.smoothed_post)):
        centres = [central(layer) for layer in images]
        central_extremes[when] = (max(float(c.max()) for c in centres), min(float(c.min()) for c in centres))
    rows = [
        [
            "max relative intensity",
            *(summary[w]["max_relative_intensity"] for w in ("pre", "post")),
            *(central_extremes[w][0] for w in ("pre", "post")),
        ],
        [
            "min relative intensity",
            *(summary[w]["min_relative_intensity"] for w in ("pre", "post")),
            *(central_extremes[w][1] for w in ("pre", "post")),
        ],
        [
            "mean spread (p5-p95)",
            *(summary[w]["mean_spread"] for w in ("pre", "post")),
            *(summary[w]["mean_central_spread"] for w in ("pre", "post")),
        ],
        [
            "mean std",
            *(summary[w]["mean_std"] for w in ("pre", "post")),
            *(summary[w]["mean_central_std"] for w in ("pre", "post")),
        ],
    ]
    header = [
        "",
        "whole image, before",
        "whole image, after",
        f"{CENTRAL_LABEL}, before",
        f"{CENTRAL_LABEL}, after",
    ]
    return header, rows


def change_table(result: AppliedTestResult) -> tuple[list[str], list[list]]:
    """AstroPath's second table: % change, 100·(post − pre)/pre, of the mean spread and mean std."""
    change = result.summary()["change_percent"]
    header = ["% change after correction", "whole image", CENTRAL_LABEL]
    rows = [
        ["mean spread (p5-p95)", change["mean_spread"], change["mean_central_spread"]],
        ["mean std", change["mean_std"], change["mean_central_std"]],
    ]
    return header, rows


def split_rows(splits: Sequence[Split], result: AppliedTestResult) -> list[list]:
    """Per slide: fields drawn into each half and how many of them were stacked in at least one layer."""
    stacked: dict[tuple[str, str], int] = {}
    for half, stack in (("flatfield", result.flatfield_stack), ("corrected", result.corrected_stack)):
        for row in stack.fields:
            if row.stacked_in_layers:
                stacked[half, row.slide] = stacked.get((half, row.slide), 0) + 1
    return [
        [
            s.slide_id,
            len(s.flatfield),
            stacked.get(("flatfield", s.slide_id), 0),
            len(s.corrected),
            stacked.get(("corrected", s.slide_id), 0),
        ]
        for s in splits
    ]


def layer_rows(result: AppliedTestResult) -> list[list]:
    whole, middle = reduction_series(result), reduction_series(result, central_region=True)
    rows = []
    for i, layer in enumerate(whole["layer"]):
        values = []
        for series in (whole, middle):
            values += [series["pre_spread"][i], series["post_spread"][i], series["spread_change_percent"][i]]
            values += [series["pre_std"][i], series["post_std"][i], series["std_change_percent"][i]]
        rows.append([int(layer), *(_fmt(v, percent=(k % 3 == 2)) for k, v in enumerate(values))])
    return rows


def _fmt(value: float, percent: bool = False) -> str:
    if not np.isfinite(value):
        return "-"
    return f"{value:+.1f} %" if percent else f"{value:.4f}"


# --- plots ----------------------------------------------------------------------------------------


def _layer_axis(ax: Axes, layers: np.ndarray, groups: Sequence[LayerGroup], ylabel: str) -> None:
    ax.set_xlim(0.5, len(layers) + 0.5)
    ax.set_xlabel("layer", fontsize=7)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.tick_params(labelsize=6)
    if groups:
        group_separators(ax, groups)


def intensities_figure(
    result: AppliedTestResult, central_region: bool, groups: Sequence[LayerGroup] = ()
) -> Figure:
    """Per layer: 5th–95th percentile range (bar) and mean (dot) before and after correction."""
    s = intensity_series(result, central_region)
    fig = Figure(figsize=PLOT_SIZE)
    ax = fig.add_axes((0.09, 0.2, 0.86, 0.66))
    for when, colour, offset, label in (
        ("pre", PRE_COLOUR, -0.15, "before correction"),
        ("post", POST_COLOUR, 0.15, "after correction"),
    ):
        x = s["layer"] + offset
        ax.vlines(
            x,
            s[f"{when}_p5"],
            s[f"{when}_p95"],
            color=colour,
            linewidth=4,
            alpha=0.6,
            label=f"{label}: 5th-95th percentile",
        )
        ax.plot(
            x,
            s[f"{when}_mean"],
            "o",
            color=colour,
            markersize=3,
            markeredgecolor="black",
            markeredgewidth=0.4,
            label=f"{label}: mean",
        )
    ax.axhline(1.0, color="0.5", linewidth=0.6)
    _layer_axis(ax, s["layer"], groups, "smoothed mean-relative intensity")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncols=2, frameon=False)
    fig.suptitle(f"Smoothed mean image pixel intensities ({_region(central_region)})", fontsize=10, y=0.97)
    return fig


def reduction_figure(
    result: AppliedTestResult, central_region: bool, groups: Sequence[LayerGroup] = ()
) -> Figure:
    """Per layer: spread and std before and after correction (top) and their % change (bottom)."""
    s = reduction_series(result, central_region)
    layers = s["layer"]
    fig = Figure(figsize=PLOT_SIZE)
    top = fig.add_axes((0.09, 0.52, 0.68, 0.34))
    for when, colour, label in (("pre", PRE_COLOUR, "before"), ("post", POST_COLOUR, "after")):
        top.plot(
            layers,
            s[f"{when}_spread"],
            "-o",
            color=colour,
            markersize=2.5,
            linewidth=1,
            label=f"spread (p5-p95), {label}",
        )
        top.plot(
            layers, s[f"{when}_std"], "--s", color=colour, markersize=2.5, linewidth=1, label=f"std, {label}"
        )
    top.set_ylim(bottom=0)
    _layer_axis(top, layers, groups, "mean-relative intensity")
    top.set_xlabel("")
    top.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))

    bottom = fig.add_axes((0.09, 0.1, 0.68, 0.34), sharex=top)
    mean_change = {
        what: np.nanmean(s[f"{what}_change_percent"])
        if np.isfinite(s[f"{what}_change_percent"]).any()
        else np.nan
        for what in ("spread", "std")
    }
    bottom.bar(
        layers - 0.2,
        s["spread_change_percent"],
        width=0.4,
        color="#7570b3",
        label=f"spread (mean {_fmt(mean_change['spread'], True)})",
    )
    bottom.bar(
        layers + 0.2,
        s["std_change_percent"],
        width=0.4,
        color="#e7298a",
        label=f"std (mean {_fmt(mean_change['std'], True)})",
    )
    bottom.axhline(0, color="black", linewidth=0.6)
    _layer_axis(bottom, layers, (), "% change after correction")
    bottom.set_title("mean = average of the layers' % changes", fontsize=6, loc="left")
    bottom.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"Illumination variation reduction ({_region(central_region)})", fontsize=10, y=0.97)
    return fig


def _figure(
    kind: str, result: AppliedTestResult, central_region: bool, groups: Sequence[LayerGroup]
) -> Figure:
    return (intensities_figure if kind == "intensities" else reduction_figure)(result, central_region, groups)


def write_applied_test_plots(
    folder_url: str, result: AppliedTestResult, layer_groups: dict[str, list[int]] | None = None
) -> list[str]:
    """Write AstroPath's four applied-test PNGs into ``folder_url``; returns their file names.

    ``layer_groups`` (``{name: [first, last]}``, optional) marks the groups on the layer axis.
    """
    groups = as_layer_groups(layer_groups) if layer_groups else ()
    names = []
    for name, (kind, central_region) in PLOTS.items():
        buffer = io.BytesIO()
        _figure(kind, result, central_region, groups).savefig(buffer, format="png", dpi=PLOT_DPI)
        storage.write_bytes(storage.join(folder_url, name), buffer.getvalue())
        names.append(name)
    return names


# --- the PDF ------------------------------------------------------------------------------------


def write_applied_test_summary(
    url: str,
    result: AppliedTestResult,
    splits: list[Split],
    parameters: dict,
    layer_groups: dict[str, list[int]] | None = None,
) -> None:
    """Write ``applied_flatfield_summary.pdf`` to ``url``.

    Parameters
    ----------
    splits
        Each slide's split of its bulk fields into the flatfield and corrected halves.
    parameters
        The run's parameters (its ``seed`` is shown on the first page), recorded in the PDF.
    layer_groups
        Optional ``{name: [first, last]}``: marks layer groups in the plots and labels the images.
    """
    n_layers, h, w = result.mean.shape
    flatfield = result.flatfield
    drawn = sum(len(s.flatfield) for s in splits), sum(len(s.corrected) for s in splits)
    header = ReportHeader.of(
        "applied flatfield test",
        parameters,
        f"{len(splits)} slides; {drawn[0]} fields drawn for the test flatfield, {drawn[1]} for the "
        "corrected mean image; "
        f"seed {parameters.get('seed', 'not recorded')}; {n_layers} layers of {h}x{w} px; sigma "
        f"{flatfield.sigma:g} px, {flatfield.border} borders",
    )
    groups = as_layer_groups(layer_groups) if layer_groups else ()
    write_pdf(url, header.metadata("applied_flatfield_summary"), _pages(header, result, splits, groups))


def _values_table(ax: Axes, header: list[str], rows: list[list], percent: bool = False) -> None:
    table(ax, [[name, *(_fmt(v, percent) for v in values)] for name, *values in rows], header, 7, row_in=0.2)


def _pages(
    header: ReportHeader, result: AppliedTestResult, splits: Sequence[Split], groups: Sequence[LayerGroup]
) -> Iterator[Figure]:
    slide_pages = table_pages(split_rows(splits, result), first=35)
    fig = Figure(figsize=A4)
    top = header.draw(
        fig,
        "applied flatfield summary",
        [
            "Each slide's bulk fields split in two seeded halves: one builds a test flatfield F, the "
            "other's mean image is divided by F.",
            "Metrics: the mean image smoothed (Gaussian, same sigma), divided by its layer mean; "
            "percentiles and std per layer.",
        ],
    )
    fig.text(
        0.06,
        top,
        "Illumination variation before and after correction (averages over layers)",
        fontsize=9,
        weight="bold",
        va="top",
    )
    table_header, rows = summary_table(result)
    _values_table(_axes(fig, top - 0.02, 0.12), table_header, rows)
    top -= 0.16
    fig.text(0.06, top, "Change after correction (negative: flatter)", fontsize=9, weight="bold", va="top")
    table_header, rows = change_table(result)
    _values_table(_axes(fig, top - 0.02, 0.065), table_header, rows, percent=True)
    top -= 0.11
    fig.text(
        0.06,
        top,
        f"Fields per slide ({len(splits)} slides; stacked = in at least one layer)",
        fontsize=9,
        weight="bold",
        va="top",
    )
    if slide_pages[0]:
        table(_axes(fig, top - 0.02, top - 0.05), slide_pages[0], SPLIT_TABLE_HEADER, 6)
    yield fig
    for rows in slide_pages[1:]:
        fig = Figure(figsize=A4)
        table(_axes(fig, 0.97, 0.94), rows, SPLIT_TABLE_HEADER, 6)
        yield fig

    for page, rows in enumerate(pages_of(layer_rows(result), LAYER_TABLE_ROWS)):
        fig = Figure(figsize=A4)
        if page == 0:
            fig.text(0.06, 0.975, "Illumination variation per layer", fontsize=11, weight="bold", va="top")
            fig.text(
                0.06, 0.95, "spread = 95th - 5th percentile of the smoothed mean-relative intensity; c. = "
                            f"{CENTRAL_LABEL}; % = change after correction",
                fontsize=7, va="top",
            )  # fmt: skip
        table(_axes(fig, 0.93, 0.9), rows, LAYER_TABLE_HEADER, 5)
        yield fig

    for kind, central_region in PLOTS.values():
        yield _figure(kind, result, central_region, groups)

    yield from _layer_pages(result, groups)


def _axes(fig: Figure, top: float, height: float) -> Axes:
    ax = fig.add_axes((0.06, top - height, 0.88, height))
    ax.axis("off")
    return ax


def _layer_pages(result: AppliedTestResult, groups: Sequence[LayerGroup]) -> Iterator[Figure]:
    """One row per layer: the test flatfield, and the smoothed mean-relative image before and after
    correction on one colour scale centred on 1 (so what correction flattened shows as fading colour)."""
    group_of = {layer: g.name for g in groups for layer in range(g.first, g.last + 1)}
    diverging = colormaps["RdBu_r"]
    empty = set(result.flatfield.empty_layers)
    for page_layers in pages_of(range(result.mean.shape[0]), LAYERS_PER_PAGE):
        tiles = []
        for layer in page_layers:
            label = f"layer {layer + 1}" + (f" ({group_of[layer + 1]})" if layer + 1 in group_of else "")
            flat = downsample(result.flatfield.flatfield[layer])
            pre, post = downsample(result.smoothed_pre[layer]), downsample(result.smoothed_post[layer])
            limits = shared_limits(pre, post)
            note = " (nothing stacked: F = 1)" if layer + 1 in empty else ""
            tiles += [
                Tile(flat, f"{label}: test flatfield F{note}", colormaps["viridis"], colour_limits(flat)),
                Tile(pre, f"{label}: before correction", diverging, limits),
                Tile(post, f"{label}: after correction", diverging, limits),
            ]
        fig = Figure(figsize=A4)
        mosaic(fig, (0.04, 0.03, 0.92, 0.94), tiles, 3)
        yield fig


def shared_limits(*images: np.ndarray) -> tuple[float, float]:
    """One colour range for mean-relative images, symmetric about 1, wide enough for each one's robust
    range."""
    half = max(max(abs(lo - 1.0), abs(hi - 1.0)) for lo, hi in (colour_limits(image) for image in images))
    half = max(half, 1e-3)
    return 1.0 - half, 1.0 + half
