"""The three PDF summaries of a slide's mean image: AstroPath's report set (reference spec §2.8).

* ``<SID>-thresholding_summary.pdf`` — where the edge fields are and how each layer's background
  threshold came out of them;
* ``<SID>-masking_summary.pdf`` — what masking flagged, with example sheets of flagged and random fields;
* ``<SID>-meanimage_summary.pdf`` — every layer of the mean image, its standard error and mask stack.

AstroPath typeset these with pdflatex from PNGs; here matplotlib writes each PDF directly, through its
object-oriented API only (``Figure`` + ``PdfPages``): reports are written from worker threads, and
pyplot's global figure registry is not thread-safe. Images are block-averaged to at most
``MAX_PANEL_PX`` pixels on their long side, so a 35-layer Vectra slide gives small PDFs, fast.
Every PDF names what made it: slide, shadeflow version, date and parameters, in its metadata and
in a header on its first page.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import PatchCollection
from matplotlib.colors import ListedColormap, to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import NullLocator

from ..io import storage
from ..io.output_folders import StagedOutput
from ..io.slide import Field, LayerGroup, Slide
from ..report_pages import (
    A4,
    BULK_COLOUR,
    EDGE_COLOUR,
    LAYERS_PER_PAGE,
    MAX_PANEL_PX,
    ReportHeader,
    Tile,
    colour_limits,
    downsample,
    group_separators,
    mosaic,
    mosaic_scale,
    pages_of,
    table,
    write_pdf,
)
from ..stack import mean_and_std_err
from .geometry import field_size_um
from .masks.combined import unpack_tissue_mask
from .pipeline import (
    MASK_DIR,
    FieldSummary,
    MeanImageResult,
    read_corrected_layers,
    read_mask_file,
)

MAX_HISTOGRAM_BINS = 200  # pixel histograms are re-binned to at most this many bars
N_TOP_EXAMPLES = 10  # per reason (blur, saturation), as AstroPath
N_EXAMPLES = 20

BACKGROUND_COLOUR, TISSUE_COLOUR = "#9e9e9e", "#2e8b57"
# mask categories of the example sheets, in category order 0..3
MASK_CATEGORIES = {"background": "#202020", "tissue": "#5aae61", "blurred": "#f4a736", "saturated": "#d7191c"}
MASK_CMAP = ListedColormap(list(MASK_CATEGORIES.values()))
FLAG_COLOURS = {
    "not flagged": "#b8c9dc",
    "blurred": "#f4a736",
    "saturated": "#d7191c",
    "blurred and saturated": "#7b3294",
}


def _provenance(result: MeanImageResult, parameters: dict) -> ReportHeader:
    """What made the reports: the slide, its fields and masking grid, the parameters."""
    plan, slide = result.plan, result.plan.slide
    h, w, l = slide.shape
    masking = "masking skipped" if plan.skip_masking else f"masks on a {plan.grid.binning}x binned grid"
    context = (
        f"project {slide.project}, cohort {slide.cohort}, batch {slide.batch}, {slide.microscope} "
        f"{h}x{w}x{l}; "
        f"{len(slide.fields)} fields ({len(plan.edge_fields)} edge, {len(plan.bulk_fields)} bulk); {masking}"
    )
    return ReportHeader.of(slide.slide_id, parameters, context)


def write_reports(
    out: StagedOutput,
    result: MeanImageResult,
    parameters: dict,
    seed: int = 0,
    mean_and_error: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Write the thresholding, masking and mean-image summaries of one slide into ``out``.

    Parameters
    ----------
    out
        The slide's staged ``meanimage/`` output; the mask files are read from its ``image_masking/``.
    parameters
        The run's parameters, recorded in every PDF.
    seed
        Seed of the random example fields of the masking summary.
    mean_and_error
        The stack's mean image and standard error (``mean_and_std_err``), when the caller has them.
    """
    provenance = _provenance(result, parameters)
    preview = StackPreview.of(result, mean_and_error)
    sid = result.slide_id
    write_pdf(
        out.url(f"{sid}-thresholding_summary.pdf"),
        provenance.metadata("thresholding summary"),
        _thresholding_pages(result, provenance),
    )
    write_pdf(
        out.url(f"{sid}-masking_summary.pdf"),
        provenance.metadata("masking summary"),
        _masking_pages(out, result, preview, provenance, seed),
    )
    write_pdf(
        out.url(f"{sid}-meanimage_summary.pdf"),
        provenance.metadata("mean image summary"),
        _meanimage_pages(result, preview, provenance),
    )


# --- images -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StackPreview:
    """The mean-image stack reduced to what the reports show: downsampled layers and per-layer statistics.

    Made once, a layer at a time, so the full-resolution mean and standard error are never held whole.
    """

    mean: np.ndarray  # (L, h, w) downsampled, counts/ms
    std_err: np.ndarray  # (L, h, w) downsampled
    count: np.ndarray  # (L, h, w) downsampled mask stack
    layer_mean: np.ndarray  # (L,) mean over all pixels (picks each group's brightest layer)
    stacked_mean: np.ndarray  # (L,) mean, min, max over stacked pixels; NaN where nothing was stacked
    stacked_min: np.ndarray
    stacked_max: np.ndarray
    count_max: np.ndarray  # (L,)

    @classmethod
    def of(
        cls, result: MeanImageResult, mean_and_error: tuple[np.ndarray, np.ndarray] | None = None
    ) -> StackPreview:
        """The preview of ``result``'s stack; ``mean_and_error`` are its mean and standard error if the
        caller has them (else they are computed here, a layer at a time)."""
        stack = result.stack
        n_layers = stack.shape[0]
        means, errors = [], []
        layer_mean = np.zeros(n_layers)
        stats = np.full((3, n_layers), np.nan)
        for layer, count in enumerate(stack.count):
            if count.any():
                # a layer at a time gives stack.mean() and stack.std_err() (pixels never stacked are 0 either
                # way) without holding both whole at once
                if mean_and_error is None:
                    mean, std_err = mean_and_std_err(stack.sum[layer], stack.sum_sq[layer], count)
                else:
                    mean, std_err = mean_and_error[0][layer], mean_and_error[1][layer]
                values = mean[count > 0]
                stats[:, layer] = values.mean(), values.min(), values.max()
            else:
                mean = std_err = np.zeros(count.shape)
            means.append(downsample(mean))
            errors.append(downsample(std_err))
            layer_mean[layer] = mean.mean()
        return cls(
            mean=np.stack(means),
            std_err=np.stack(errors),
            count=downsample(stack.count),
            layer_mean=layer_mean,
            stacked_mean=stats[0],
            stacked_min=stats[1],
            stacked_max=stats[2],
            count_max=stack.count.max(axis=(1, 2)),
        )

    def brightest_layers(self, groups: Sequence[LayerGroup]) -> list[int]:
        """0-based layer with the highest mean in each group (AstroPath shows those in its sheets)."""
        return [group.first - 1 + int(np.argmax(self.layer_mean[group.index])) for group in groups]


def _no_data(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=7, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _group_name(layer: int, groups: Sequence[LayerGroup]) -> str:
    """Name of the group of a 0-based layer."""
    return next(g.name for g in groups if g.first <= layer + 1 <= g.last)


def _layer_label(layer: int, groups: Sequence[LayerGroup]) -> str:
    return f"layer {layer + 1} ({_group_name(layer, groups)})"


# --- field maps -------------------------------------------------------------------------------


def _field_map(ax: Axes, slide: Slide, colours: Sequence, legend: dict[str, str], title: str) -> None:
    """The slide's fields as rectangles at their stage positions (µm), y downwards as in the scan."""
    w, h = field_size_um(slide)
    cx = np.array([f.cx for f in slide.fields])
    cy = np.array([f.cy for f in slide.fields])
    rects = [Rectangle((x - w / 2, y - h / 2), w, h) for x, y in zip(cx, cy)]
    ax.add_collection(PatchCollection(rects, facecolors=colours, edgecolors="white", linewidths=0.3))
    ax.set_xlim(cx.min() - w, cx.max() + w)
    ax.set_ylim(cy.max() + h, cy.min() - h)
    ax.set_aspect("equal")
    ax.set_anchor("N")
    ax.set_xlabel("x (µm)", fontsize=7)
    ax.set_ylabel("y (µm)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=8)
    ax.legend(
        handles=[Patch(color=c, label=name) for name, c in legend.items()],
        fontsize=6,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
    )


# --- thresholding summary ---------------------------------------------------------------------


def nonzero_percentiles(field_thresholds: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """Per-layer percentiles of the non-zero field thresholds, (len(percentiles), L); NaN for a layer without
    any.

    Zero means "no threshold found" in a field and is left out, as in the slide threshold (their median).
    """
    result = np.full((len(percentiles), field_thresholds.shape[1]), np.nan)
    for layer, column in enumerate(field_thresholds.T):
        values = column[column > 0]
        if values.size:
            result[:, layer] = np.percentile(values, percentiles)
    return result


def _thresholding_pages(result: MeanImageResult, provenance: ReportHeader) -> Iterator[Figure]:
    plan, t = result.plan, result.thresholds
    slide, groups = plan.slide, plan.slide.layer_groups
    fig = Figure(figsize=A4)
    provenance.draw(
        fig,
        "background thresholds",
        [
            f"{len(t.fields)} edge fields threshold the background; slide threshold T per layer = median of "
            "their non-zero thresholds.",
            "Per layer below: the edge fields' thresholds, and all their pixels' smoothed counts split at T "
            "(background ≤ T < tissue).",
        ],
    )
    grid = fig.add_gridspec(
        3, 1, top=0.84, bottom=0.05, left=0.1, right=0.78, hspace=0.4, height_ratios=[1.4, 1, 1]
    )
    colours = [BULK_COLOUR if b else EDGE_COLOUR for b in plan.bulk]
    _field_map(
        fig.add_subplot(grid[0]),
        slide,
        colours,
        {"edge (thresholding)": EDGE_COLOUR, "bulk (stacking)": BULK_COLOUR},
        "fields",
    )
    # a slide without edge fields (all bulk, masking skipped) has no histograms: its ThresholdResult holds a
    # plain 0
    histograms = t.histogram if np.ndim(t.histogram) == 2 else np.zeros((slide.n_layers, 1), np.int64)
    layers = np.arange(1, slide.n_layers + 1)
    p10, p90 = nonzero_percentiles(t.field_thresholds, (10, 90))
    for row, (scale, unit) in enumerate(
        ((np.ones(slide.n_layers), "counts"), (1 / plan.exposure_ms, "counts/ms"))
    ):
        ax = fig.add_subplot(grid[row + 1])
        ax.vlines(
            layers,
            p10 * scale,
            p90 * scale,
            color=EDGE_COLOUR,
            linewidth=4,
            alpha=0.7,
            label="edge fields,\n10th-90th percentile",
        )
        ax.plot(
            layers,
            t.thresholds * scale,
            "_",
            color="black",
            markersize=9,
            markeredgewidth=1.5,
            label="slide threshold T",
        )
        ax.set_xlim(0.5, slide.n_layers + 0.5)
        ax.set_xlabel("layer", fontsize=7)
        ax.set_ylabel(f"threshold ({unit})", fontsize=7)
        ax.tick_params(labelsize=6)
        group_separators(ax, groups)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    yield fig

    legend = [
        Patch(color=EDGE_COLOUR, label="edge fields"),
        Line2D([], [], color="black", linestyle="--", linewidth=0.8, label="slide threshold T"),
        Patch(color=BACKGROUND_COLOUR, label="pixels ≤ T (background)"),
        Patch(color=TISSUE_COLOUR, label="pixels > T (tissue)"),
    ]
    for page_layers in pages_of(range(slide.n_layers), LAYERS_PER_PAGE):
        fig = Figure(figsize=A4)
        # one per page: legends are slow to draw
        fig.legend(handles=legend, loc="upper center", ncols=4, fontsize=7, frameon=False)
        axes = fig.subplots(
            LAYERS_PER_PAGE,
            2,
            squeeze=False,
            gridspec_kw=dict(top=0.93, bottom=0.05, left=0.08, right=0.97, hspace=0.5, wspace=0.25),
        )
        for (left, right), layer in zip(axes, page_layers):
            label, threshold = _layer_label(layer, groups), int(t.thresholds[layer])
            _threshold_histogram(
                left,
                t.field_thresholds[:, layer],
                threshold,
                f"{label}: edge-field thresholds, T = {threshold}",
            )
            _pixel_histogram(
                right, histograms[layer], threshold, f"{label}: edge-field pixels, T = {threshold}"
            )
        for left, right in axes[len(page_layers) :]:
            left.set_visible(False)
            right.set_visible(False)
        yield fig


def _threshold_histogram(ax: Axes, values: np.ndarray, threshold: int, title: str) -> None:
    # y=1.0 is where matplotlib puts a title over an axes with bottom ticks anyway; giving it skips the
    # auto-placement, which lays out the y ticks once more per axes (a tenth of this summary's drawing)
    ax.set_title(title, fontsize=7, y=1.0)
    if values.size == 0:
        _no_data(ax, "no edge fields")
        return
    lo, hi = int(values.min()), int(values.max())
    ax.hist(values, bins=np.linspace(lo - 0.5, hi + 0.5, min(hi - lo + 1, 40) + 1), color=EDGE_COLOUR)
    ax.axvline(threshold, color="black", linestyle="--", linewidth=0.8)
    ax.set_xlabel("field threshold (counts)", fontsize=6)
    ax.set_ylabel("fields", fontsize=6)
    ax.tick_params(labelsize=6)


def histogram_range(histogram: np.ndarray, threshold: int, fraction: float = 0.999) -> int:
    """End (exclusive) of the values to plot: where ``fraction`` of the counts lie below, and past T."""
    cumulative = np.cumsum(histogram)
    end = int(np.searchsorted(cumulative, fraction * cumulative[-1])) + 1
    return min(max(end, threshold + 2), histogram.size)


def log_bins(end: int, split: int, n: int = MAX_HISTOGRAM_BINS) -> np.ndarray:
    """Integer bin edges from 0 to ``end``, about evenly spaced in log(count), with ``split`` among them."""
    spaced = np.round(np.geomspace(1, end, n)).astype(np.int64)
    return np.unique(np.concatenate([[0, split, end], spaced]))


def _pixel_histogram(ax: Axes, histogram: np.ndarray, threshold: int, title: str) -> None:
    """The summed histogram of smoothed counts, background (≤ T) and tissue (> T) in two colours.

    Log-log: background sits at a few counts and tissue at hundreds or thousands, so on a linear axis
    the background peak is a sliver. Bins widen with the count and show pixels per count value.
    """
    ax.set_title(title, fontsize=7, y=1.0)  # a fixed height, as in _threshold_histogram
    if histogram.sum() == 0:
        _no_data(ax, "no edge-field pixels")
        return
    end = histogram_range(histogram, threshold)
    split = min(threshold + 1, end)
    edges = log_bins(end, split)
    density = np.add.reduceat(histogram[:end], edges[:-1]) / np.diff(edges)
    k = int(np.searchsorted(edges, split))
    for part, colour in ((slice(0, k), BACKGROUND_COLOUR), (slice(k, None), TISSUE_COLOUR)):
        if density[part].size:
            ax.stairs(
                density[part],
                edges[part.start : (part.stop or len(edges) - 1) + 1] - 0.5,
                fill=True,
                color=colour,
            )
    ax.set_xscale("symlog", linthresh=1, linscale=0.3)
    ax.set_yscale("log", nonpositive="clip")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_locator(NullLocator())  # minor log ticks cost a quarter of the page's drawing time
    first = int(np.argmax(histogram > 0))
    ax.set_xlim(0.8 * first if first else -0.5, end - 0.5)
    ax.set_ylim(bottom=0.5 * density[density > 0].min())
    ax.set_xlabel("smoothed counts", fontsize=6)
    ax.set_ylabel("pixels per count value", fontsize=6)
    ax.tick_params(labelsize=6)


# --- masking summary --------------------------------------------------------------------------


def _saturated(summary: FieldSummary) -> int:
    return sum(summary.saturated_pixels)


def top_flagged(summaries: Sequence[FieldSummary], n_top: int = N_TOP_EXAMPLES) -> list[str]:
    """Keys of the ``n_top`` fields with most blurred pixels, then of the ``n_top`` with most saturated
    pixels (flagged fields only; a field in both lists appears once; ties go to the earlier field)."""
    blurred = sorted((s for s in summaries if s.blur_pixels > 0), key=lambda s: (-s.blur_pixels, s.n))
    saturated = sorted((s for s in summaries if _saturated(s) > 0), key=lambda s: (-_saturated(s), s.n))
    return list(dict.fromkeys(s.key for s in blurred[:n_top] + saturated[:n_top]))


def example_fields(
    summaries: Sequence[FieldSummary], n_top: int = N_TOP_EXAMPLES, total: int = N_EXAMPLES, seed: int = 0
) -> list[str]:
    """Keys of the fields shown on example sheets: :func:`top_flagged` first, topped up to ``total`` with
    other fields drawn at random. AstroPath's draw was unseeded; this one is reproducible from ``seed``.
    """
    chosen = top_flagged(summaries, n_top)
    taken = set(chosen)
    rest = [s.key for s in summaries if s.key not in taken]
    n_random = min(max(total - len(chosen), 0), len(rest))
    drawn = np.random.default_rng(seed).choice(len(rest), size=n_random, replace=False)
    return chosen + [rest[i] for i in sorted(drawn)]


def _flag(summary: FieldSummary) -> str:
    blurred, saturated = summary.blur_pixels > 0, _saturated(summary) > 0
    return {
        (False, False): "not flagged",
        (True, False): "blurred",
        (False, True): "saturated",
        (True, True): "blurred and saturated",
    }[blurred, saturated]


def _masking_pages(
    out: StagedOutput, result: MeanImageResult, preview: StackPreview, provenance: ReportHeader, seed: int
) -> Iterator[Figure]:
    plan, summaries = result.plan, result.summaries
    slide, groups = plan.slide, plan.slide.layer_groups
    top = top_flagged(summaries)
    examples = example_fields(summaries, seed=seed)
    n_random = len(examples) - len(top)
    fig = Figure(figsize=A4)
    provenance.draw(
        fig,
        "masking",
        [
            f"Example sheets: the {len(top)} flagged fields with most blurred or saturated pixels (top "
            f"{N_TOP_EXAMPLES} of each),"
            if top
            else "No field was flagged for blur or saturation, so there are no flagged example sheets;",
            f"then {n_random} fields drawn at random with numpy default_rng(seed={seed}): AstroPath's draw "
            "was unseeded, this one is reproducible."
            if n_random
            else "no other fields to draw at random.",
        ],
    )
    by_key = {s.key: s for s in summaries}
    colours = [
        FLAG_COLOURS[_flag(by_key[f.key])] if bulk else _pale(FLAG_COLOURS[_flag(by_key[f.key])])
        for f, bulk in zip(slide.fields, plan.bulk)
    ]
    legend = {**FLAG_COLOURS, "pale: edge field": _pale(FLAG_COLOURS["not flagged"])}
    # room on the right for the legend
    _field_map(fig.add_axes((0.1, 0.53, 0.62, 0.31)), slide, colours, legend, "what masking flagged")
    grid = fig.add_gridspec(
        2, 2, top=0.46, bottom=0.03, left=0.1, right=0.95, hspace=0.35, wspace=0.35, height_ratios=[1, 1.3]
    )
    _flag_counts(fig.add_subplot(grid[0, 0]), summaries, groups)
    _tissue_fractions(fig.add_subplot(grid[0, 1]), summaries)
    _example_table(fig.add_subplot(grid[1, :]), [by_key[k] for k in examples], set(top), groups)
    yield fig

    fields = {f.key: f for f in slide.fields}
    brightest = preview.brightest_layers(groups)
    for rank, key in enumerate(examples, start=1):
        reason = "flagged" if key in top else f"random draw, seed {seed}"
        yield _example_sheet(
            out, result, by_key[key], fields[key], brightest, f"example {rank}/{len(examples)} ({reason})"
        )


def _pale(colour: str) -> tuple[float, float, float]:
    """``colour`` mixed with white: opaque, so overlapping fields do not darken each other."""
    return tuple(0.45 * c + 0.55 for c in to_rgba(colour)[:3])


def _flag_counts(ax: Axes, summaries: Sequence[FieldSummary], groups: Sequence[LayerGroup]) -> None:
    """Fields flagged for blur and for saturation in each layer group, with the flagged pixel totals."""
    names = ["blur"] + [f"sat. {g.name}" for g in groups]
    pixels = np.array([[s.blur_pixels, *s.saturated_pixels] for s in summaries]).reshape(
        len(summaries), len(names)
    )
    fields = (pixels > 0).sum(axis=0)
    bars = ax.bar(
        range(len(names)), fields, color=[FLAG_COLOURS["blurred"]] + [FLAG_COLOURS["saturated"]] * len(groups)
    )
    ax.bar_label(bars, labels=[f"{p / 1e6:.2g} Mpx" if p else "" for p in pixels.sum(axis=0)], fontsize=5)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=6)
    ax.set_ylabel("fields flagged", fontsize=7)
    ax.set_ylim(0, max(1, fields.max()) * 1.2)
    ax.tick_params(labelsize=6)
    ax.set_title(f"flagged fields (of {len(summaries)})", fontsize=8)


def _tissue_fractions(ax: Axes, summaries: Sequence[FieldSummary]) -> None:
    bins = np.linspace(0, 1, 21)
    for bulk, colour, label in ((False, EDGE_COLOUR, "edge"), (True, BULK_COLOUR, "bulk")):
        ax.hist(
            [s.tissue_fraction for s in summaries if s.bulk == bulk],
            bins=bins,
            color=colour,
            alpha=0.7,
            label=label,
        )
    ax.set_xlabel("tissue fraction", fontsize=7)
    ax.set_ylabel("fields", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6)
    ax.set_title("tissue fraction per field", fontsize=8)


def _example_table(
    ax: Axes, examples: Sequence[FieldSummary], top: set[str], groups: Sequence[LayerGroup]
) -> None:
    ax.axis("off")
    ax.set_title("example fields", fontsize=8)
    rows = [
        [
            s.n,
            s.key,
            "bulk" if s.bulk else "edge",
            f"{s.tissue_fraction:.0%}",
            s.blur_pixels,
            _saturated(s),
            ", ".join(g.name for g, p in zip(groups, s.saturated_pixels) if p) or "-",
            "flagged" if s.key in top else "random",
        ]
        for s in examples
    ]
    table(
        ax,
        rows,
        ["n", "field", "location", "tissue", "blurred px", "saturated px", "saturated groups", "shown as"],
        5.5,
    )


def mask_categories(out: StagedOutput, key: str, shape: tuple[int, int], n_groups: int) -> np.ndarray | None:
    """A field's masks per layer group, (G, H, W) uint8: 0 background, 1 tissue, 2 blurred, 3 saturated.

    From the full label mask when masking flagged the field, else the tissue mask; ``None`` without mask
    files.
    """
    full_url = out.url(MASK_DIR, f"{key}_full_mask.bin")
    if storage.exists(full_url):
        labels = read_mask_file(full_url, shape, n_groups)
        last_blur = max(int(labels[..., 0].max()), 1)  # blur labels are 2..b in every plane, saturation > b
        planes = np.moveaxis(labels[..., 1:], -1, 0)
        categories = np.minimum(planes, 2).astype(np.uint8)
        categories[planes > last_blur] = 3
        return categories
    tissue_url = out.url(MASK_DIR, f"{key}_tissue_mask.bin")
    if storage.exists(tissue_url):
        tissue = unpack_tissue_mask(storage.read_bytes(tissue_url), shape).astype(np.uint8)
        return np.broadcast_to(tissue, (n_groups, *shape))
    return None


def _example_sheet(
    out: StagedOutput,
    result: MeanImageResult,
    summary: FieldSummary,
    field: Field,
    brightest: Sequence[int],
    subtitle: str,
) -> Figure:
    """One field: the brightest layer of each group (counts) beside that group's masks."""
    slide = result.plan.slide
    groups = slide.layer_groups
    # only the layers shown: a sheet needs 5 of a Vectra field's 35
    layers = downsample(read_corrected_layers(result.plan, field, brightest))
    categories = mask_categories(out, summary.key, (slide.height, slide.width), len(groups))
    # the factor of ``downsample``; masks are sampled, not averaged
    step = math.ceil(max(slide.height, slide.width) / MAX_PANEL_PX)
    tiles = []
    for g, (group, layer) in enumerate(zip(groups, brightest)):
        tiles.append(
            Tile(layers[g], _layer_label(layer, groups), colormaps["gray"], colour_limits(layers[g]))
        )
        if categories is not None:
            tiles.append(
                Tile(
                    categories[g, ::step, ::step],
                    f"{group.name} masks",
                    MASK_CMAP,
                    (-0.5, len(MASK_CATEGORIES) - 0.5),
                    ramp=False,
                )
            )

    fig = Figure(figsize=A4)
    fig.text(
        0.06, 0.975, f"field {summary.n} {summary.key} — {subtitle}", fontsize=10, weight="bold", va="top"
    )
    saturated = ", ".join(f"{g.name} {p}" for g, p in zip(groups, summary.saturated_pixels) if p) or "none"
    fig.text(
        0.06,
        0.955,
        f"{'bulk' if summary.bulk else 'edge'} field, tissue {summary.tissue_fraction:.0%}, blurred "
        f"{summary.blur_pixels} px, "
        f"saturated px: {saturated}; stacked in {summary.stacked_layers} layers.\n"
        + (
            "The brightest layer of each group (counts), beside the group's masks."
            if categories is not None
            else "The brightest layer of each group (counts); no mask files (masking skipped)."
        ),
        fontsize=7,
        va="top",
        linespacing=1.5,
    )
    if categories is not None:
        fig.legend(
            handles=[Patch(color=c, label=n) for n, c in MASK_CATEGORIES.items()],
            loc="upper right",
            ncols=4,
            fontsize=6,
            bbox_to_anchor=(0.95, 0.925),
        )
    rect = (0.05, 0.02, 0.9, 0.88)
    per_group = 2 if categories is not None else 1
    # the larger tiles
    n_cols = max(
        (per_group, 2 * per_group), key=lambda n: mosaic_scale(fig, rect, layers.shape[1:], len(tiles), n)
    )
    mosaic(fig, rect, tiles, n_cols)
    return fig


# --- mean image summary -----------------------------------------------------------------------


def _meanimage_pages(
    result: MeanImageResult, preview: StackPreview, provenance: ReportHeader
) -> Iterator[Figure]:
    slide, stack = result.plan.slide, result.stack
    groups = slide.layer_groups
    header = ["layer", "group", "images", "mean", "min", "max", "max mask stack"]
    rows = [
        [
            layer + 1,
            _group_name(layer, groups),
            int(stack.n_images[layer]),
            *(
                f"{v:.4g}" if np.isfinite(v) else "-"
                for v in (preview.stacked_mean[layer], preview.stacked_min[layer], preview.stacked_max[layer])
            ),
            int(preview.count_max[layer]),
        ]
        for layer in range(slide.n_layers)
    ]
    for page, page_rows in enumerate(pages_of(rows, 45)):
        fig = Figure(figsize=A4)
        if page == 0:
            provenance.draw(
                fig,
                "mean image",
                [
                    "Mean image and standard error in counts/ms; mask stack = fields stacked per pixel.",
                    "Statistics over stacked pixels (mask stack > 0); '-' where a layer has none. Images "
                    "are block means for display.",
                ],
            )
            _layer_statistics(fig.add_axes((0.1, 0.64, 0.8, 0.2)), preview, groups)
        ax = fig.add_axes((0.08, 0.03, 0.84, 0.55 if page == 0 else 0.94))
        ax.axis("off")
        table(ax, page_rows, header, 6)
        yield fig

    for page_layers in pages_of(range(slide.n_layers), LAYERS_PER_PAGE):  # one row of three images per layer
        tiles = []
        for layer in page_layers:
            label = _layer_label(layer, groups)
            tiles += [
                Tile(
                    preview.mean[layer],
                    f"{label}: mean (counts/ms)",
                    colormaps["viridis"],
                    colour_limits(preview.mean[layer]),
                ),
                Tile(
                    preview.std_err[layer],
                    f"{label}: standard error",
                    colormaps["magma"],
                    colour_limits(preview.std_err[layer]),
                ),
                Tile(
                    preview.count[layer],
                    f"{label}: mask stack",
                    colormaps["cividis"],
                    (0.0, max(float(preview.count_max[layer]), 1.0)),
                ),
            ]
        fig = Figure(figsize=A4)
        mosaic(fig, (0.04, 0.03, 0.92, 0.94), tiles, 3)
        yield fig


def _layer_statistics(ax: Axes, preview: StackPreview, groups: Sequence[LayerGroup]) -> None:
    """Per layer: the mean over stacked pixels and the range from min to max."""
    layers = np.arange(1, preview.stacked_mean.size + 1)
    ax.vlines(
        layers,
        preview.stacked_min,
        preview.stacked_max,
        color=BULK_COLOUR,
        linewidth=3,
        alpha=0.5,
        label="min-max",
    )
    ax.plot(layers, preview.stacked_mean, "o", color="black", markersize=3, label="mean")
    ax.set_xlim(0.5, layers.size + 0.5)
    ax.set_xlabel("layer", fontsize=7)
    ax.set_ylabel("mean image (counts/ms)", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.legend(fontsize=6, loc="upper right")
    group_separators(ax, groups)
