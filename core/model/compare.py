"""Comparing slides' mean images pairwise (AstroPath's ``meanimagecomparison``, reference spec §3).

The question is whether two slides were lit by the same flatfield, so that their mean images may be
combined into one model. Each slide's mean image is divided by its own per-layer average (its
brightness is the specimen's, not the microscope's), and the two are compared pixel by pixel in
units of their combined standard error:

    d = (m1 − m2) / √(σ1² + σ2²)

If the slides share a flatfield, d is noise of unit variance and its standard deviation over the
field is ≈ 1; a different shading adds structure and the value grows. The values of all pairs form
a slide × slide matrix per layer, kept in ``meanimagecomparison_table.csv`` (AstroPath's columns) and
extended incrementally as slides are added.

Everything here is plain numpy (and networkx for the suggested set); the job runs one pair per Dask
task (``shadeflow.tasks.model_compare``).
"""

from __future__ import annotations

import csv
import io
import math
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..io import storage
from ..io.cohort import SlideRef, load_mean_image
from .models_csv import ModelError

TABLE_NAME = "meanimagecomparison_table.csv"
TABLE_COLUMNS = (
    "root_dir_1",
    "slide_ID_1",
    "root_dir_2",
    "slide_ID_2",
    "layer_n",
    "delta_over_sigma_std_dev",
)
WORKDIR_NAME = "meanimagecomparison"
DEFAULT_BAND = (0.85, 1.15)

#: A slide as the table names it: (root, SlideID).
SlideKey = tuple[str, str]
#: An unordered pair of slides, stored in sorted order.
PairKey = tuple[SlideKey, SlideKey]


# --- the statistic ------------------------------------------------------------------------------


def inverse_variance_means(mean: np.ndarray, std_err: np.ndarray) -> np.ndarray:
    """Per-layer inverse-variance-weighted mean of an (L, H, W) mean image.

    Weights are 1/σ²; pixels with σ = 0 (nothing stacked, or a single image) get weight 0. A layer
    with no weight at all gives NaN.

    Parameters
    ----------
    mean, std_err : ndarray, shape (L, H, W)
        A mean image and its standard error.

    Returns
    -------
    ndarray, shape (L,)

    Examples
    --------
    >>> inverse_variance_means(np.array([[[1.0, 3.0]]]), np.array([[[1.0, 0.0]]]))
    array([1.])
    """
    out = np.full(mean.shape[0], np.nan)
    for layer in range(mean.shape[0]):
        sigma = std_err[layer]
        weight = np.zeros(sigma.shape)
        positive = sigma > 0
        weight[positive] = 1.0 / np.square(sigma[positive])
        total = weight.sum()
        if total > 0 and np.isfinite(total):
            out[layer] = float((weight * mean[layer]).sum() / total)
    return out


@dataclass(frozen=True)
class NormalisedMeanImage:
    """A slide's mean image and standard error divided by the layer's weighted mean, with its coverage."""

    mean: np.ndarray  # (L, H, W) float64
    std_err: np.ndarray  # (L, H, W) float64
    covered: np.ndarray  # (L, H, W) bool: at least one image stacked in the pixel

    @property
    def nbytes(self) -> int:
        return self.mean.nbytes + self.std_err.nbytes + self.covered.nbytes


def normalise_mean_image(mean: np.ndarray, std_err: np.ndarray, count: np.ndarray) -> NormalisedMeanImage:
    """Divide each layer of ``mean`` and ``std_err`` by its inverse-variance-weighted mean (in place).

    The arrays passed in are reused, so a Vectra slide costs its two float64 stacks and a boolean
    coverage mask, nothing more. Layers without a usable weight become NaN (and compare as NaN).
    """
    scale = inverse_variance_means(mean, std_err)
    mean = np.asarray(mean, dtype=np.float64)
    std_err = np.asarray(std_err, dtype=np.float64)
    for layer, s in enumerate(scale):
        if np.isfinite(s) and s != 0:
            mean[layer] /= s
            std_err[layer] /= s
        else:
            mean[layer] = np.nan
            std_err[layer] = np.nan
    return NormalisedMeanImage(mean=mean, std_err=std_err, covered=np.asarray(count) > 0)


def delta_over_sigma(m1: np.ndarray, s1: np.ndarray, m2: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """d = (m1 − m2) / √(σ1² + σ2²), elementwise; 0/0 gives NaN and x/0 gives ±inf (no warnings)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (m1 - m2) / np.sqrt(np.square(s1) + np.square(s2))


def layer_statistic(
    m1: np.ndarray, s1: np.ndarray, c1: np.ndarray, m2: np.ndarray, s2: np.ndarray, c2: np.ndarray
) -> float:
    """Standard deviation of δ/σ over the pixels both slides cover (one layer).

    Pixels count when both slides stacked at least one image there (``c1 & c2``) and d is finite.
    AstroPath kept pixels with ``d != 0`` instead: a pixel neither slide covered has m = σ = 0, so
    d = 0/0 = NaN, which passes ``!= 0`` and turned the whole value into NaN (spec §9). A pixel
    covered by one slide only compares a mean with an empty one and says nothing about shading, so it
    is left out too; so are pixels where both σ are 0 (a single image each), whose d is ±inf or NaN.
    Fewer than two usable pixels give NaN. The std is the population std (ddof = 0), as AstroPath's.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(1, 0.1, (2, 64, 64)); s = np.full((64, 64), 0.1); c = np.ones((64, 64), bool)
    >>> round(layer_statistic(a, s, c, b, s, c), 1)
    1.0
    """
    d = delta_over_sigma(m1, s1, m2, s2)
    use = np.asarray(c1, bool) & np.asarray(c2, bool) & np.isfinite(d)
    if np.count_nonzero(use) < 2:
        return math.nan
    return float(np.std(d[use]))


def pair_statistics(a: NormalisedMeanImage, b: NormalisedMeanImage) -> np.ndarray:
    """The δ/σ standard deviation of every layer for two normalised mean images, shape (L,).

    Symmetric in ``a`` and ``b``. A value near 1 means the two mean images agree within their errors;
    computed a layer at a time so the temporaries stay at one layer's size.
    """
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"mean images of different shapes {a.mean.shape} and {b.mean.shape}")
    return np.array(
        [
            layer_statistic(a.mean[l], a.std_err[l], a.covered[l], b.mean[l], b.std_err[l], b.covered[l])
            for l in range(a.mean.shape[0])
        ]
    )


def unusable_reason(
    mean: np.ndarray, std_err: np.ndarray, count: np.ndarray, min_images_stacked: int = 1
) -> str | None:
    """Why a slide's mean image cannot be compared, or None if it can (AstroPath's skip rules).

    A slide is skipped when some pixel of some layer has fewer than ``min_images_stacked`` images
    (the minimum of the whole mask stack, as AstroPath), when its mean image is constant, or when
    its standard error is 0 everywhere; also when the mean image holds NaN or infinite values.
    """
    fewest = int(count.min()) if count.size else 0
    if fewest < min_images_stacked:
        return (
            f"fewest images stacked in a pixel is {fewest}, below --min-images-stacked {min_images_stacked}"
        )
    if not np.isfinite(mean).all() or not np.isfinite(std_err).all():
        return "mean image or standard error has NaN or infinite values"
    if mean.size == 0 or float(mean.max()) == float(mean.min()):
        return "mean image is constant"
    if not std_err.any():
        return "standard error is 0 everywhere"
    return None


def check_slide(ref: SlideRef, min_images_stacked: int = 1) -> str | None:
    """Read a slide's mean image and say why it cannot be compared (None if it can).

    Missing, truncated or corrupt mean-image files are a reason too (the text of the ModelError).
    """
    try:
        mean, std_err, count = load_mean_image(ref)
    except ModelError as exc:
        return str(exc)
    return unusable_reason(mean, std_err, count, min_images_stacked)


def load_normalised(ref: SlideRef) -> NormalisedMeanImage:
    """A slide's normalised mean image, read from its ``meanimage/`` folder."""
    mean, std_err, count = load_mean_image(ref)
    return normalise_mean_image(mean, std_err, count)


# --- a small cache of normalised slides per worker process ---------------------------------------

V = TypeVar("V")


class LRUCache:
    """A thread-safe least-recently-used cache that loads each missing key once.

    Pair tasks on one worker share it: comparing slide A with B, C, D… reads A once. Threads asking
    for a key being loaded wait for that load instead of reading the slide a second time.
    """

    def __init__(self, maxsize: int):
        self.maxsize = max(1, int(maxsize))
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return self._items[key]
            try:
                value = load()
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self.misses += 1
                self._items[key] = value
                self._items.move_to_end(key)
                while len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
            return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


#: Normalised slides kept per worker process. A Vectra slide is ~0.8 GB here (two float64 stacks
#: and a mask), so three slides — the two of a pair and the next one — is the budget.
SLIDE_CACHE_SLIDES = 3
_SLIDE_CACHE = LRUCache(SLIDE_CACHE_SLIDES)


def cached_normalised(ref: SlideRef, token: str) -> NormalisedMeanImage:
    """:func:`load_normalised` through this process's cache, keyed by run ``token`` and slide URL.

    The token (one per comparison run) keeps a long-lived worker from serving a slide read by an
    earlier run whose files have since changed.
    """
    return _SLIDE_CACHE.get((token, ref.url), lambda: load_normalised(ref))


def compare_pair(ref1: SlideRef, ref2: SlideRef, token: str) -> np.ndarray:
    """Per-layer δ/σ standard deviations of two slides, reading them through the process cache."""
    a = cached_normalised(ref1, token)
    b = cached_normalised(ref2, token)
    cached_normalised(ref1, token)  # touch the first slide again: pairs run row by row, it is reused next
    return pair_statistics(a, b)


# --- the incremental table ----------------------------------------------------------------------


def slide_key(ref: SlideRef) -> SlideKey:
    return (ref.root, ref.slide_id)


def pair_key(a: SlideKey, b: SlideKey) -> PairKey:
    """The unordered pair, in a canonical order (the matrix is symmetric)."""
    return (a, b) if a <= b else (b, a)


def _format_value(value: float) -> str:
    return "nan" if not np.isfinite(value) else repr(float(value))


class ComparisonTable:
    """The rows of ``meanimagecomparison_table.csv``: per pair of slides and layer, the δ/σ std.

    Rows read from an existing table are written back as they were (including pairs of slides outside
    the current run, and either order of a pair, as AstroPath reads both); pairs computed now are
    appended, one row per layer. A pair that was incomplete (a layer missing) and is computed again
    replaces its old rows. :meth:`text` is always the whole table.
    """

    def __init__(self, url: str | None = None):
        self.url = url
        self._read: list[tuple[PairKey, list[str]]] = []  # rows of the existing file, as read
        self._values: dict[PairKey, dict[int, float]] = {}
        self._new: OrderedDict[PairKey, dict[int, float]] = OrderedDict()

    @classmethod
    def read(cls, url: str) -> ComparisonTable:
        """The table at ``url``; empty if there is none; a clear error if it is not such a table."""
        table = cls(url)
        if not storage.exists(url):
            return table
        reader = csv.DictReader(io.StringIO(storage.read_text(url)))
        missing = [c for c in TABLE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ModelError(
                f"comparison table {url} is missing column(s) {', '.join(missing)} (expected "
                f"{','.join(TABLE_COLUMNS)})"
            )
        for number, row in enumerate(reader, start=1):
            try:
                layer = int(row["layer_n"])
                value = float(row["delta_over_sigma_std_dev"])
            except (TypeError, ValueError):
                raise ModelError(
                    f"comparison table {url} row {number}: layer_n and delta_over_sigma_std_dev must be "
                    "numbers"
                ) from None
            if layer < 1 or not row["slide_ID_1"] or not row["slide_ID_2"]:
                raise ModelError(f"comparison table {url} row {number}: empty SlideID or layer_n < 1")
            key = pair_key(
                (storage.normalize(row["root_dir_1"]), row["slide_ID_1"]),
                (storage.normalize(row["root_dir_2"]), row["slide_ID_2"]),
            )
            table._values.setdefault(key, {})[layer] = value
            table._read.append((key, [row[c] for c in TABLE_COLUMNS]))
        return table

    def slides(self) -> list[SlideKey]:
        """Every slide named in the table, sorted."""
        return sorted({s for pair in self._values for s in pair})

    def values(self, a: SlideKey, b: SlideKey, n_layers: int) -> np.ndarray | None:
        """The pair's per-layer values if the table has every layer 1…``n_layers``, else None."""
        found = self._values.get(pair_key(a, b))
        if found is None or any(layer not in found for layer in range(1, n_layers + 1)):
            return None
        return np.array([found[layer] for layer in range(1, n_layers + 1)])

    def set(self, a: SlideKey, b: SlideKey, values: Sequence[float]) -> None:
        """Record (or replace) a pair's per-layer values."""
        key = pair_key(a, b)
        layers = {layer: float(v) for layer, v in enumerate(values, start=1)}
        self._values[key] = layers
        self._new[key] = layers

    def __len__(self) -> int:
        """Number of rows :meth:`text` writes."""
        return sum(1 for key, _ in self._read if key not in self._new) + sum(
            len(v) for v in self._new.values()
        )

    def text(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(TABLE_COLUMNS)
        writer.writerows(row for key, row in self._read if key not in self._new)
        for (a, b), layers in self._new.items():
            for layer in sorted(layers):
                writer.writerow([a[0], a[1], b[0], b[1], layer, _format_value(layers[layer])])
        return buffer.getvalue()


# --- matrices, ordering and the suggested set ---------------------------------------------------


def _natural(text: str) -> list[tuple[int, Any]]:
    """Sort key that orders embedded numbers numerically (``SYN1_2`` before ``SYN1_10``)."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", text) if t]


def sort_slides(refs: Iterable[SlideRef]) -> list[SlideRef]:
    """Slides by Project, Cohort, Batch, then SlideID (the order of the plots' rows and columns)."""
    return sorted(
        refs,
        key=lambda r: (
            _natural(r.project),
            _natural(r.cohort),
            _natural(r.batch),
            _natural(r.slide_id),
            r.root,
        ),
    )


def pair_matrix(n_slides: int, n_layers: int, values: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """A symmetric (n, n, L) matrix from per-pair values keyed by slide index; NaN on the diagonal."""
    matrix = np.full((n_slides, n_slides, n_layers), np.nan)
    for (i, j), v in values.items():
        matrix[i, j] = v
        matrix[j, i] = v
    return matrix


def layer_average(matrix: np.ndarray, first: int = 1, last: int | None = None) -> np.ndarray:
    """Average over layers ``first``…``last`` (1-based, inclusive) of an (n, n, L) matrix, ignoring NaN.

    A cell with no finite value in those layers (the diagonal, or a pair all of whose layers are
    NaN) stays NaN.
    """
    last = matrix.shape[2] if last is None else last
    block = matrix[:, :, first - 1 : last]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells are expected
        return np.nanmean(block, axis=2)


def in_band(value: float, band: tuple[float, float]) -> bool:
    return bool(np.isfinite(value) and band[0] <= value <= band[1])


def compatibility_graph(slide_ids: Sequence[str], average: np.ndarray, band: tuple[float, float]):
    """Slides as nodes, an edge where the pair's layer-averaged value lies within ``band``."""
    import networkx as nx

    graph = nx.Graph()
    graph.add_nodes_from(slide_ids)
    for i in range(len(slide_ids)):
        for j in range(i + 1, len(slide_ids)):
            if in_band(average[i, j], band):
                graph.add_edge(slide_ids[i], slide_ids[j])
    return graph


def suggest_compatible_set(
    slide_ids: Sequence[str], average: np.ndarray, band: tuple[float, float] = DEFAULT_BAND
) -> list[str]:
    """The largest set of slides whose pairwise layer-averaged values all lie within ``band``.

    A maximum clique of :func:`compatibility_graph`. Of several maximum cliques the lexicographically
    smallest sorted list of SlideIDs is returned, so the answer does not depend on the order the
    slides were found in: slides are tried in sorted order, each kept if a maximum clique still
    contains the slides kept so far and it (a maximum-clique search on their common neighbours).

    Examples
    --------
    >>> avg = np.array([[np.nan, 1.0, 3.0], [1.0, np.nan, 3.0], [3.0, 3.0, np.nan]])
    >>> suggest_compatible_set(["A", "B", "C"], avg)
    ['A', 'B']
    """
    from networkx.algorithms.clique import max_weight_clique

    graph = compatibility_graph(slide_ids, average, band)
    if graph.number_of_nodes() == 0:
        return []
    _, size = max_weight_clique(graph, weight=None)
    chosen: list[str] = []
    candidates = set(graph.nodes)
    for node in sorted(graph.nodes):
        if node not in candidates:
            continue
        rest = candidates & set(graph[node])
        needed = size - len(chosen) - 1
        if needed > 0:
            if len(rest) < needed or max_weight_clique(graph.subgraph(rest), weight=None)[1] < needed:
                continue
        chosen.append(node)
        candidates = rest
        if len(chosen) == size:
            break
    return chosen
