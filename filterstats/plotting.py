"""Figures of the paper, with matplotlib (``pip install 'filterstats[plot]'``).

Every function takes an optional ``ax`` (or ``fig`` for multi-panel figures), returns
the Axes or Figure it drew on, and never calls ``show``. Without ``ax`` a new
``matplotlib.figure.Figure`` is created without pyplot, so nothing depends on the
backend or leaks into pyplot's state; save it with ``fig.savefig("x.png")`` (PNG, SVG,
PDF).

Colours follow the paper: normal (group b) blue ``C0``, robust (group a) orange
``C1``; filters in a cyan-white-orange map on a symmetric scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from filterstats._optional import require
from filterstats.metric_table import get_metric
from filterstats.metric_table import names as metric_names

if TYPE_CHECKING:
    from filterstats.compare import Comparison
    from filterstats.depth_bins import DepthProfile
    from filterstats.distribution import DivergenceByDepth, FirstLayerResponse, PCABasis
    from filterstats.results import FilterReport
    from filterstats.spectra import ConvSpectra

__all__ = [
    "plot_comparison",
    "plot_cumulative_variance",
    "plot_depth_boxes",
    "plot_divergence",
    "plot_filters",
    "plot_first_layer_response",
    "plot_metric_grid",
    "plot_metric_vs_depth",
    "plot_pca_basis",
    "plot_rgb_filters",
    "plot_ridge",
    "plot_singular_values",
    "plot_spectral_norm_by_depth",
]


def _title(metric: str) -> str:
    """A metric's axis title, from the metric table (the name itself when unknown)."""
    return get_metric(metric).title if metric in metric_names() else metric


_A_COLOR, _B_COLOR = "C1", "C0"  # robust orange, normal blue, as in the paper


def _mpl() -> Any:
    return require("matplotlib", extra="plot")


def _new_axes(ax: Any, figsize: tuple[float, float]) -> Any:
    if ax is not None:
        return ax
    _mpl()
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained").add_subplot()


def _new_figure(fig: Any, figsize: tuple[float, float]) -> Any:
    if fig is not None:
        return fig
    _mpl()
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _cyan_orange() -> Any:
    colors = require("matplotlib.colors", extra="plot")
    return colors.LinearSegmentedColormap.from_list("CyanOrange", ["C0", "white", "C1"])


# ------------------------------------------------------------------- depth boxes


def plot_depth_boxes(
    profiles: Sequence[DepthProfile] | Comparison,
    metric: str = "diversity",
    *,
    labels: Sequence[str] | None = None,
    ax: Any = None,
) -> Any:
    """Box plots of a metric per depth bin, one box per group, means marked.

    Boxes run over models (the paper's figure): median, quartiles, 1.5 IQR whiskers,
    fliers, and the mean as a black dot.

    Args:
        profiles: [`DepthProfile`][filterstats.depth_bins.DepthProfile] per group (e.g.
            ``(normal, robust)``), or a [`Comparison`][filterstats.Comparison] (drawn
            as ``b`` then ``a``, i.e. normal then robust, as in the paper).
        metric: Metric to draw.
        labels: Group names (default: from the comparison, or ``group 0``...).
        ax: Axes to draw on.

    Returns:
        The Axes.
    """
    colors = [_B_COLOR, _A_COLOR, "C2", "C3", "C4"]
    if hasattr(profiles, "profiles"):
        prof_a, prof_b = profiles.profiles()
        groups = [prof_b, prof_a]
        labels = labels or [profiles.labels[1], profiles.labels[0]]  # type: ignore[union-attr]
    else:
        groups = list(profiles)
        labels = labels or [f"group {i}" for i in range(len(groups))]
    ax = _new_axes(ax, (8, 3.5))
    bins = groups[0].bins if groups else ()
    used = [b for b in bins if any(g.values(metric, b) for g in groups)]
    n = len(groups)
    width = 0.8 / max(n, 1)
    for g, (profile, label) in enumerate(zip(groups, labels)):
        data = [np.asarray(profile.values(metric, b), dtype=float) for b in used]
        data = [d[np.isfinite(d)] for d in data]
        positions = [i + (g - (n - 1) / 2) * width for i in range(len(used))]
        keep = [i for i, d in enumerate(data) if d.size]
        if not keep:
            continue
        boxes = ax.boxplot(
            [data[i] for i in keep],
            positions=[positions[i] for i in keep],
            widths=width * 0.9,
            patch_artist=True,
            showmeans=True,
            meanprops={"marker": "o", "markerfacecolor": "black", "markeredgecolor": "black",
                       "markersize": 3},
            medianprops={"color": "black"},
            flierprops={"marker": ".", "markersize": 3},
            manage_ticks=False,
        )  # fmt: skip
        for patch in boxes["boxes"]:
            patch.set_facecolor(colors[g % len(colors)])
        ax.plot([], [], color=colors[g % len(colors)], linewidth=6, label=label)
    ax.set_xticks(range(len(used)), used, rotation=22.5)
    ax.set_xlim(-0.6, len(used) - 0.4)
    ax.set_xlabel("convolution depth decile")
    ax.set_ylabel(_title(metric))
    ax.grid(axis="y", alpha=0.4)
    ax.legend(loc="best", fontsize="small")
    return ax


def plot_metric_grid(
    comparisons: Mapping[str, Comparison],
    metrics: Sequence[str] = ("sparsity", "diversity", "orthogonality"),
    *,
    fig: Any = None,
) -> Any:
    """The paper's grid: metrics (rows) x data sets (columns) of depth box plots.

    Args:
        comparisons: ``{data set name: Comparison}`` (robust vs normal per data set).
        metrics: One row per metric.
        fig: Figure to draw on.

    Returns:
        The Figure.
    """
    names = list(comparisons)
    fig = _new_figure(fig, (5.5 * len(names), 3.2 * len(metrics)))
    axes = fig.subplots(len(metrics), len(names), squeeze=False)
    for col, name in enumerate(names):
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            plot_depth_boxes(comparisons[name], metric, ax=ax)
            if row == 0:
                ax.set_title(name)
            if col > 0:
                ax.set_ylabel("")
            if row < len(metrics) - 1:
                ax.set_xlabel("")
    return fig


# --------------------------------------------------------------- metric vs depth


def plot_metric_vs_depth(
    reports: FilterReport | Sequence[FilterReport],
    metric: str = "diversity",
    *,
    labels: Sequence[str] | None = None,
    ax: Any = None,
    colors: Sequence[str] | None = None,
) -> Any:
    """A metric against normalised depth, one line per model (e.g. one pair).

    Grouped and depthwise layers (the report's ``kind``) are drawn as open markers,
    with one legend entry: their filters see only part of the inputs, so their
    values are not those of a dense layer at that depth.

    Args:
        reports: One or more [`FilterReport`][filterstats.FilterReport]s; each model in
            them is a line.
        metric: Column to draw.
        labels: Line labels (default: model labels).
        ax: Axes to draw on.
        colors: Line colours, one per model (default: matplotlib's cycle).

    Returns:
        The Axes.
    """
    from filterstats.results import FilterReport

    items = [reports] if isinstance(reports, FilterReport) else list(reports)
    ax = _new_axes(ax, (6, 3.5))
    k = 0
    marked = False
    for report in items:
        for model in report.models:
            rows = [r for r in report.measured if r.model == model]
            x = np.array([r.conv_depth_norm for r in rows], dtype=float)
            y = np.array([getattr(r, metric) for r in rows], dtype=float)
            order = np.argsort(x, kind="stable")
            label = labels[k] if labels and k < len(labels) else model
            color = colors[k] if colors and k < len(colors) else f"C{k % 10}"
            ax.plot(x[order], y[order], marker="o", markersize=3, label=label, color=color)
            grouped = np.array([r.kind in ("grouped", "depthwise") for r in rows], dtype=bool)
            if grouped.any():
                ax.plot(x[grouped], y[grouped], linestyle="none", marker="o", markersize=6,
                        markerfacecolor="white", color=color,
                        label=None if marked else "grouped / depthwise")  # fmt: skip
                marked = True
            k += 1
    ax.set_xlabel("normalised conv depth")
    ax.set_ylabel(_title(metric))
    ax.set_xlim(-0.03, 1.03)
    ax.grid(alpha=0.4)
    ax.legend(fontsize="small")
    return ax


def plot_comparison(
    comparison: Comparison, metrics: Sequence[str] | None = None, *, fig: Any = None
) -> Any:
    """Each metric versus depth for both groups, one panel per metric.

    One pair: lines of both models over normalised depth. Several pairs: the
    paper's box plots per depth bin.

    Args:
        comparison: A [`Comparison`][filterstats.Comparison].
        metrics: Metrics to draw (default: the compared ones).
        fig: Figure to draw on.

    Returns:
        The Figure.
    """
    metrics = list(metrics or comparison.metrics)
    fig = _new_figure(fig, (5.0 * len(metrics), 3.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        if len(comparison.pairs) == 1:
            i, j = comparison.pairs[0]
            plot_metric_vs_depth([comparison.reports_b[j], comparison.reports_a[i]], metric,
                                 ax=ax, colors=(_B_COLOR, _A_COLOR))  # fmt: skip
        else:
            plot_depth_boxes(comparison, metric, ax=ax)
        ax.set_title(_title(metric))
    return fig


# ------------------------------------------------------------------------- PCA


def plot_pca_basis(basis: PCABasis, *, ax: Any = None) -> Any:
    """The basis filters side by side, each labelled with its explained-variance ratio.

    Args:
        basis: A [`PCABasis`][filterstats.distribution.PCABasis].
        ax: Axes to draw on (one image holds all filters).

    Returns:
        The Axes.
    """
    filters = basis.basis_filters.numpy()
    if filters.ndim != 3:
        raise ValueError(f"`basis` must be of 2-D kernels, got kernel size {basis.kernel_size}.")
    k, height, width = filters.shape
    ax = _new_axes(ax, (1.1 * k, 1.6))
    scale = float(np.abs(filters).max()) or 1.0
    mosaic = np.full((height, k * (width + 1) - 1), np.nan)
    for i, f in enumerate(filters):
        mosaic[:, i * (width + 1) : i * (width + 1) + width] = f
    image = ax.imshow(mosaic, cmap=_cyan_orange(), vmin=-scale, vmax=scale)
    centers = [i * (width + 1) + (width - 1) / 2 for i in range(k)]
    evr = basis.explained_variance_ratio.tolist()
    ax.set_xticks(centers, [f"{r:.2f}" for r in evr])
    ax.set_yticks([])
    for i, c in enumerate(centers):
        ax.text(c, -0.8, f"$v_{i}$", ha="center", va="bottom")
    ax.set_frame_on(False)
    ax.figure.colorbar(image, ax=ax, fraction=0.02)
    return ax


def plot_cumulative_variance(
    bases: PCABasis | Sequence[PCABasis] | Mapping[str, PCABasis], *, ax: Any = None
) -> Any:
    """Cumulative explained variance over the principal components.

    Args:
        bases: One basis, several, or ``{label: basis}``.
        ax: Axes to draw on.

    Returns:
        The Axes.
    """
    if isinstance(bases, Mapping):
        items = list(bases.items())
    else:
        seq = [bases] if hasattr(bases, "explained_variance_ratio") else list(bases)
        items = [(b.label or f"basis {i}", b) for i, b in enumerate(seq)]  # type: ignore[misc,union-attr]
    ax = _new_axes(ax, (6, 3.5))
    for i, (label, basis) in enumerate(items):
        values = basis.cumulative.numpy()
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label,
                color=f"C{i % 10}")  # fmt: skip
    ax.set_xlabel("principal components")
    ax.set_ylabel("cumulative share of explained variance")
    ax.grid(alpha=0.4)
    ax.legend(fontsize="small")
    return ax


def plot_ridge(
    coefficients: Mapping[str, Tensor | np.ndarray],
    *,
    components: int | None = None,
    max_points: int = 20000,
    seed: int = 0,
    ax: Any = None,
) -> Any:
    """Ridge plot of coefficient densities: one row per component, one curve per group.

    Densities are Gaussian kernel density estimates (Silverman's bandwidth) on a
    seeded subsample of at most ``max_points`` values per curve.

    Args:
        coefficients: ``{group label: (N, K) coefficients}`` (see
            [`filter_coefficients`][filterstats.distribution.filter_coefficients]).
        components: How many components (rows) to draw; default all.
        max_points: Subsample size per curve.
        seed: Seed of the subsample.
        ax: Axes to draw on.

    Returns:
        The Axes.
    """
    from scipy.stats import gaussian_kde

    arrays = {
        k: np.asarray(torch.as_tensor(v, dtype=torch.float64)) for k, v in coefficients.items()
    }
    width = min(a.shape[1] for a in arrays.values())
    rows = width if components is None else min(components, width)
    finite = np.concatenate([a[:, :rows].ravel() for a in arrays.values()])
    finite = finite[np.isfinite(finite)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (-1.0, 1.0)
    grid = np.linspace(low, high, 256)
    generator = np.random.default_rng(seed)
    ax = _new_axes(ax, (6, 0.7 * rows + 1))
    for g, (label, values) in enumerate(arrays.items()):
        color = (_A_COLOR, _B_COLOR)[g] if g < 2 else f"C{g}"
        for c in range(rows):
            column = values[:, c][np.isfinite(values[:, c])]
            if column.size > max_points:
                column = generator.choice(column, max_points, replace=False)
            offset = rows - 1 - c
            if column.size < 2 or np.ptp(column) == 0:
                continue
            density = gaussian_kde(column, bw_method="silverman")(grid)
            density = 0.9 * density / density.max()
            ax.fill_between(grid, offset, offset + density, color=color, alpha=0.45,
                            label=label if c == 0 else None)  # fmt: skip
    ax.set_yticks(range(rows), [f"$c_{{{rows - 1 - i}}}$" for i in range(rows)])
    ax.set_xlim(low, high)
    ax.set_xlabel("coefficient")
    ax.legend(fontsize="small", loc="upper right")
    return ax


def plot_divergence(
    divergences: DivergenceByDepth | Mapping[str, DivergenceByDepth], *, ax: Any = None
) -> Any:
    """Distribution shift per depth bin as bars (one series per data set).

    Bins without data (NaN) get no bar and an ``n/a`` mark, never a 0 bar.

    Args:
        divergences: One result of
            [`filter_divergence`][filterstats.filter_divergence] or ``{name: result}``.
        ax: Axes to draw on.

    Returns:
        The Axes.
    """
    items = list(divergences.items()) if isinstance(divergences, Mapping) else [("", divergences)]
    ax = _new_axes(ax, (8, 3.5))
    bins = [r.bin for r in items[0][1].by_depth]
    n = len(items)
    width = 0.8 / n
    for s, (name, result) in enumerate(items):
        values = [result[b].divergence if b in [r.bin for r in result.by_depth] else math.nan
                  for b in bins]  # fmt: skip
        x = np.arange(len(bins)) + (s - (n - 1) / 2) * width
        heights = np.nan_to_num(values, nan=0.0)
        bars = ax.bar(x, heights, width, label=name or None, color=f"C{s % 10}", zorder=3)
        for bar, value in zip(bars, values):
            if math.isnan(value):
                bar.set_visible(False)
                ax.text(bar.get_x() + bar.get_width() / 2, 0, "n/a", ha="center", va="bottom",
                        fontsize="x-small", rotation=90)  # fmt: skip
    ax.set_xticks(range(len(bins)), bins, rotation=22.5)
    ax.set_xlabel("convolution depth decile")
    ax.set_ylabel("weighted symmetric KL divergence")
    ax.grid(axis="y", alpha=0.4, zorder=0)
    if any(name for name, _ in items):
        ax.legend(fontsize="small")
    return ax


# ----------------------------------------------------------------------- filters


def _layer_weights(source: Any, kernel_size: Any) -> list[tuple[str, Tensor]]:
    """``(name, weight)`` of every selected layer: the model goes through the one resolver."""
    from filterstats.resolve import extract_filters

    filters = extract_filters(source, kernel_size=kernel_size, argument="source")
    return [(layer.name, layer.weight.detach()) for layer in filters]


def plot_filters(
    source: Any,
    *,
    n_filters: int = 32,
    max_layers: int | None = None,
    kernel_size: Any = (3, 3),
    ax: Any = None,
) -> Any:
    """Filter grid: one row per layer with its first ``n_filters`` 2-D kernels.

    Each row is divided by the largest |value| of its shown kernels, so all rows share
    one symmetric colour scale [-1, 1] (cyan-white-orange, as in the paper).

    Args:
        source: Anything [`extract_filters`][filterstats.extract_filters] takes: a
            model, a state dict, a path or spec string, a
            [`FilterSet`][filterstats.FilterSet] or one weight tensor.
        n_filters: Kernels per row (the paper: 32).
        max_layers: Rows to draw at most (default: all).
        kernel_size: Kernel size of the layers drawn (``None``: every 2-D size).
        ax: Axes to draw on (one image).

    Returns:
        The Axes.
    """
    layers = _layer_weights(source, kernel_size)[:max_layers]
    if not layers:
        raise ValueError("no layer to draw: the source has no selected convolution.")
    kernels = []
    for _, weight in layers:
        rows = weight.reshape(-1, *weight.shape[2:]).to(torch.float64)[:n_filters].cpu().numpy()
        if rows.ndim != 3:
            raise ValueError(f"`plot_filters` draws 2-D kernels, got weight {tuple(weight.shape)}.")
        scale = np.abs(rows).max()
        kernels.append(rows / scale if scale > 0 else rows)
    height = max(k.shape[1] for k in kernels)
    width = max(k.shape[2] for k in kernels)
    mosaic = np.full((len(kernels) * (height + 1) - 1, n_filters * (width + 1) - 1), np.nan)
    for r, block in enumerate(kernels):
        for c, kernel in enumerate(block):
            top, left = r * (height + 1), c * (width + 1)
            mosaic[top : top + kernel.shape[0], left : left + kernel.shape[1]] = kernel
    ax = _new_axes(ax, (0.3 * n_filters + 1.5, 0.3 * len(kernels) + 0.8))
    image = ax.imshow(mosaic, cmap=_cyan_orange(), vmin=-1, vmax=1, interpolation="nearest")
    ax.set_yticks([r * (height + 1) + (height - 1) / 2 for r in range(len(layers))],
                  [name for name, _ in layers], fontsize="x-small")  # fmt: skip
    ax.set_xticks([])
    ax.set_frame_on(False)
    ax.figure.colorbar(image, ax=ax, fraction=0.02)
    return ax


def plot_rgb_filters(source: Any, *, n_filters: int = 32, ax: Any = None) -> Any:
    """A 3-channel (RGB input) layer's filters as colour images.

    Each filter ``(3, kH, kW)`` is shown as ``0.5 + w / (2 max|W|)`` with one shared
    ``max|W|`` over the shown filters (grey = 0).

    Args:
        source: A weight ``(C_out, 3, kH, kW)``, or anything
            [`extract_filters`][filterstats.extract_filters] takes (its first layer
            with 3 input channels is used).
        n_filters: Filters to show.
        ax: Axes to draw on.

    Returns:
        The Axes.
    """
    layers = _layer_weights(source, None)
    candidates = [(n, w) for n, w in layers if w.ndim == 4 and w.shape[1] == 3]
    if not candidates:
        raise ValueError("no layer with 3 input channels (RGB) to draw.")
    name, weight = candidates[0]
    filters = weight[:n_filters].to(torch.float64).cpu().numpy()
    scale = np.abs(filters).max() or 1.0
    images = 0.5 + filters.transpose(0, 2, 3, 1) / (2 * scale)
    k, height, width, _ = images.shape
    mosaic = np.ones((height, k * (width + 1) - 1, 3))
    for i, image in enumerate(images):
        mosaic[:, i * (width + 1) : i * (width + 1) + width] = image
    ax = _new_axes(ax, (0.35 * k + 1, 1.2))
    ax.imshow(np.clip(mosaic, 0, 1), interpolation="nearest")
    ax.set_title(f"{name}: first {k} filters (RGB)", fontsize="small")
    ax.set_axis_off()
    return ax


def plot_first_layer_response(
    response: FirstLayerResponse, *, channel: int = 0, index: int = 0, fig: Any = None
) -> Any:
    """Response maps of one channel: input, perturbed input, and their difference.

    Args:
        response: A [`FirstLayerResponse`][filterstats.distribution.FirstLayerResponse].
        channel: Output channel of the convolution.
        index: Sample of the batch.
        fig: Figure to draw on.

    Returns:
        The Figure.
    """
    fig = _new_figure(fig, (9, 3.2))
    axes = fig.subplots(1, 3)
    maps = [response.clean, response.perturbed, response.difference]
    titles = ["input", "perturbed input", "difference"]
    shared = float(max(maps[0][index, channel].abs().max(), maps[1][index, channel].abs().max()))
    for ax, data, title in zip(axes, maps, titles):
        image = data[index, channel].numpy()
        if title == "difference":
            limit = float(np.abs(image).max()) or 1.0
            shown = ax.imshow(image, cmap=_cyan_orange(), vmin=-limit, vmax=limit)
        else:
            shown = ax.imshow(image, cmap="gray", vmin=0 if response.activation == "relu" else
                              -shared, vmax=shared or 1.0)  # fmt: skip
        ax.set_title(f"{title} ({response.layer}, ch {channel})", fontsize="small")
        ax.set_axis_off()
        fig.colorbar(shown, ax=ax, fraction=0.046)
    return fig


# ----------------------------------------------------------------------- spectra


def plot_singular_values(
    spectra: ConvSpectra, layer: str, *, surrogate: bool = False, ax: Any = None
) -> Any:
    """All singular values of one layer's operator, largest first, on a log scale.

    The x axis is the rank divided by the number of singular values (0 to 1), so
    layers of different sizes share an axis; the spectral norm is the left end.

    Args:
        spectra: From [`conv_spectra`][filterstats.spectra.conv_spectra].
        layer: Layer name, as in the table.
        surrogate: For a ``bound-*`` layer, draw the bounding circular operator's
            singular values (see ``ConvSpectra.singular_values``).
        ax: Axes to draw on.

    Returns:
        The Axes.
    """
    values = spectra.singular_values(layer, surrogate=surrogate).numpy()
    ax = _new_axes(ax, (5, 3.5))
    rank = (np.arange(values.size) + 0.5) / max(values.size, 1)
    positive = values > 0
    ax.plot(rank[positive], values[positive], color="C0", linewidth=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("rank / number of singular values")
    ax.set_ylabel("singular value")
    row = spectra[layer]
    note = " (bounding circular operator)" if surrogate and row.method.startswith("bound") else ""
    ax.set_title(f"{layer}: {row.input_size}, {row.method}{note}", fontsize="small")
    ax.grid(alpha=0.4, which="both")
    return ax


def plot_spectral_norm_by_depth(
    spectra: ConvSpectra | Sequence[ConvSpectra],
    *,
    labels: Sequence[str] | None = None,
    lower: bool = True,
    ax: Any = None,
) -> Any:
    """Each layer's spectral norm against its normalised conv depth, one line per model.

    Upper bounds are drawn as lines with markers; where a certified lower bound exists,
    the band between it and the bound is shaded. Layers without a known depth are
    placed by their order.

    Args:
        spectra: One [`ConvSpectra`][filterstats.spectra.ConvSpectra] or several
            (e.g. a normal and a robust model: blue and orange, as in the paper).
        labels: Line labels (default: each model's class name).
        lower: Shade the band down to ``spectral_norm_lower``.
        ax: Axes to draw on.

    Returns:
        The Axes.
    """
    from filterstats.spectra import ConvSpectra

    items: list[ConvSpectra] = [spectra] if isinstance(spectra, ConvSpectra) else list(spectra)
    names = list(labels) if labels is not None else [s.params.source or "model" for s in items]
    ax = _new_axes(ax, (6, 3.5))
    for index, (item, label) in enumerate(zip(items, names)):
        rows = item.computed
        depth = np.array([r.conv_depth_norm for r in rows], dtype=float)
        if not np.isfinite(depth).all():
            depth = np.linspace(0.0, 1.0, len(rows)) if len(rows) > 1 else np.zeros(len(rows))
        order = np.argsort(depth, kind="stable")
        depth = depth[order]
        upper = np.array([rows[i].spectral_norm for i in order], dtype=float)
        low = np.array([rows[i].spectral_norm_lower for i in order], dtype=float)
        color = f"C{index}"
        ax.plot(depth, upper, marker="o", markersize=3, linewidth=1, color=color, label=label)
        if lower and np.isfinite(low).any():
            ax.fill_between(depth, np.where(np.isfinite(low), low, upper), upper,
                            color=color, alpha=0.25, linewidth=0)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("normalised convolution depth")
    ax.set_ylabel("spectral norm (Lipschitz constant)")
    ax.grid(alpha=0.4, which="both")
    if len(items) > 1 or labels is not None:
        ax.legend(loc="best", fontsize="small")
    ax.set_xlim(-0.02, 1.02 if any(len(i.computed) for i in items) else 1.0)
    return ax
