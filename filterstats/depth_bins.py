"""Depth bins and the paper's per-(model, bin) aggregation of layer metrics.

Gavrikov & Keuper (CVPR-W 2022) plot every metric over depth bins: the first conv
depth (``conv_depth == 0``) is a bin of its own (``"first"``), and the other layers are
cut into right-closed deciles of ``conv_depth_norm``, ``(0.0, 0.1]`` ... ``(0.9, 1.0]``
(``pandas.cut(x, numpy.linspace(0, 1, 11))``). The CNN Filter DB instead includes the
lowest edge (``include_lowest=True``: ``[0.0, 0.1]``) and has no separate first bin.

Within each (model, bin) the layers are pooled as in the paper, each metric weighted
by the layer column its row of [`filterstats.metric_table`][filterstats.metric_table]
names:

* sparsity: sparse kernels / kernels (a mean weighted by ``n_filters``);
* diversity: the mean of the layer entropies weighted by the non-sparse kernel counts;
* orthogonality: the mean weighted by ``out_channels``.

Difference from the paper's code (its bug 4): a layer whose entropy is NaN (at most one
non-sparse kernel) is left out of the weighted mean's numerator *and* denominator;
the paper left it out of the numerator only, which pulls the bin towards 0.
``nan_in_denominator=True`` reproduces the paper.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from filterstats import metric_table
from filterstats._tables import MetricAttributes, RowTable
from filterstats._text import fmt, render_table
from filterstats.results import FilterReport, LayerRow

__all__ = [
    "FIRST_BIN",
    "DepthProfile",
    "ProfileRow",
    "aggregate_rows",
    "assign_depth_bins",
    "depth_bin_labels",
    "depth_profile",
]

#: Label of the bin holding the first conv depth (``conv_depth == 0``).
FIRST_BIN = "first"


def _edge_text(value: float) -> str:
    return repr(round(float(value), 6))


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(
            f"`bins` must be a positive integer (number of equal-width bins of the "
            f"normalised depth), got {bins!r}. The paper uses bins=10 (deciles)."
        )
    return int(bins)


def depth_bin_labels(
    bins: int = 10, *, first_bin: bool = True, include_lowest: bool = False
) -> tuple[str, ...]:
    """Labels of the depth bins, in depth order.

    Args:
        bins: Number of equal-width bins of ``conv_depth_norm`` on [0, 1].
        first_bin: Put the first conv depth in its own ``"first"`` bin (paper).
        include_lowest: Close the lowest bin on the left, ``[0.0, 0.1]`` (CNN Filter DB).

    Returns:
        For the paper's defaults: ``("first", "(0.0, 0.1]", ..., "(0.9, 1.0]")``.

    Examples:
        >>> depth_bin_labels(4)
        ('first', '(0.0, 0.25]', '(0.25, 0.5]', '(0.5, 0.75]', '(0.75, 1.0]')
    """
    edges = np.linspace(0.0, 1.0, _check_bins(bins) + 1)
    labels = [f"({_edge_text(lo)}, {_edge_text(hi)}]" for lo, hi in itertools.pairwise(edges)]
    if include_lowest:
        labels[0] = "[" + labels[0][1:]
    return ((FIRST_BIN,) if first_bin else ()) + tuple(labels)


def assign_depth_bins(
    conv_depth: Sequence[int | None] | Iterable[int | None],
    conv_depth_norm: Sequence[float] | Iterable[float],
    *,
    bins: int = 10,
    first_bin: bool = True,
    include_lowest: bool = False,
) -> list[str | None]:
    """Depth bin of each layer, exactly as ``pandas.cut(x, numpy.linspace(0, 1, bins + 1))``.

    A layer at ``conv_depth == 0`` goes to ``"first"`` when ``first_bin``; every other
    layer to the right-closed bin ``(lo, hi]`` holding its ``conv_depth_norm`` (edges
    from ``numpy.linspace``, so the floating-point edges equal the paper's). Depth 0
    lies in no right-closed bin: without ``first_bin`` it gets ``None`` unless
    ``include_lowest``. Unknown depths (``conv_depth < 0`` or NaN) give ``None``.

    Args:
        conv_depth: Conv depth rank per layer (0 = first; ``None`` or negative: unknown).
        conv_depth_norm: Normalised conv depth per layer, in [0, 1].
        bins: Number of equal-width bins.
        first_bin: Give the first conv depth its own bin (paper).
        include_lowest: Close the lowest bin on the left (CNN Filter DB).

    Returns:
        One label (see [`depth_bin_labels`][filterstats.depth_bins.depth_bin_labels])
        or ``None`` per layer.
    """
    edges = np.linspace(0.0, 1.0, _check_bins(bins) + 1)
    labels = depth_bin_labels(bins, first_bin=False, include_lowest=include_lowest)
    ranks = list(conv_depth)
    norms = np.asarray(list(conv_depth_norm), dtype=np.float64)
    if len(ranks) != len(norms):
        raise ValueError(
            f"`conv_depth` and `conv_depth_norm` must have the same length, got "
            f"{len(ranks)} and {len(norms)}."
        )
    # side="left": the index j with edges[j-1] < x <= edges[j], i.e. right-closed bins.
    index = np.searchsorted(edges, norms, side="left") - 1
    result: list[str | None] = []
    for rank, norm, i in zip(ranks, norms, index):
        if rank is None or rank < 0:
            result.append(None)
        elif first_bin and rank == 0:
            result.append(FIRST_BIN)
        elif not math.isfinite(norm) or norm > 1.0:
            result.append(None)
        elif i < 0:  # norm == 0 (or below): only a left-closed lowest bin holds it
            result.append(labels[0] if include_lowest and norm == 0.0 else None)
        else:
            result.append(labels[i])
    return result


@dataclass(frozen=True)
class ProfileRow(MetricAttributes):
    """Aggregated metrics of one model in one depth bin.

    The pooled metric values are in ``metrics`` and read as attributes
    (``row.diversity``).

    Attributes:
        model: Model label.
        bin: Depth bin label.
        bin_index: Position of the bin in depth order.
        n_layers: Measured layers in the bin.
        n_filters: Kernels in the bin.
        n_nonsparse: Non-sparse kernels in the bin.
        out_channels: Output filters in the bin.
        conv_depth_norm: Mean normalised depth of the bin's layers.
        metrics: ``{metric: pooled value}`` for every pooled metric of the table
            (weights: see [`aggregate_rows`][filterstats.depth_bins.aggregate_rows]).
    """

    model: str
    bin: str
    bin_index: int
    n_layers: int
    n_filters: int
    n_nonsparse: int
    out_channels: int
    conv_depth_norm: float
    metrics: Mapping[str, float] = field(default_factory=dict)


def _weighted_mean(values: list[float], weights: list[float], nan_in_denominator: bool) -> float:
    numerator = 0.0
    denominator = 0.0
    for value, weight in zip(values, weights):
        if math.isfinite(value):
            numerator += value * weight
            denominator += weight
        elif nan_in_denominator:
            denominator += weight
    return numerator / denominator if denominator > 0 else math.nan


def aggregate_rows(
    rows: Sequence[LayerRow], *, drop_sparse: bool = True, nan_in_denominator: bool = False
) -> dict[str, float]:
    """Pool the metrics of several layers of one model, weighted as in the paper.

    Each pooled metric of [`filterstats.metric_table`][filterstats.metric_table] is the
    mean of the layer values weighted by the column its row names (``weight``);
    layers with a NaN value are left out of numerator and denominator, unless
    ``nan_in_denominator`` and the metric is one the paper's code counted there.

    Args:
        rows: Measured layers (``status == "ok"``) of one model.
        drop_sparse: Whether the report's definition left sparse kernels out (then
            ``diversity`` is weighted by non-sparse kernels, else by all kernels).
        nan_in_denominator: Count layers with a NaN entropy in the denominator
            (the paper's code; biased towards 0).

    Returns:
        ``{metric: value}`` for every pooled metric the rows hold; NaN when nothing
        counts.
    """
    held = {name for row in rows for name in row.metrics}
    result = {}
    for name in metric_table.aggregated_metrics():
        if name not in held:
            continue
        metric = metric_table.get_metric(name)
        column = metric.weight_column(drop_sparse=drop_sparse)
        result[name] = _weighted_mean(
            [getattr(r, name) for r in rows],
            [float(getattr(r, column) or 0) for r in rows],  # type: ignore[arg-type]
            nan_in_denominator and metric.paper_nan_weight,
        )
    return result


@dataclass(frozen=True, eq=False)
class DepthProfile(RowTable, Sequence[ProfileRow]):
    """Per-(model, depth bin) metrics: the data behind the paper's box plots.

    Attributes:
        rows: One row per model and non-empty bin, models in order, bins in depth order.
        bins: All bin labels in depth order (some may be empty for some models).
        first_bin: Whether the first conv depth has its own bin.
        include_lowest: Whether the lowest bin is closed on the left.
        nan_in_denominator: Whether NaN entropies counted in the weights (paper bug).
    """

    rows: tuple[ProfileRow, ...]
    bins: tuple[str, ...]
    first_bin: bool = True
    include_lowest: bool = False
    nan_in_denominator: bool = False
    _row_type = ProfileRow

    def __getitem__(self, index: int) -> ProfileRow:  # type: ignore[override]
        return self.rows[index]

    @property
    def models(self) -> tuple[str, ...]:
        """Model labels in order."""
        return tuple(dict.fromkeys(row.model for row in self.rows))

    def values(self, metric: str, bin: str) -> list[float]:
        """Values of one metric in one bin, one per model (models without it left out).

        Args:
            metric: A pooled metric of the metric table.
            bin: A bin label.

        Returns:
            The values in model order.
        """
        if metric not in metric_table.aggregated_metrics():
            raise KeyError(
                f"unknown metric {metric!r}; choose from {metric_table.aggregated_metrics()}"
            )
        return [getattr(r, metric) for r in self.rows if r.bin == bin]

    @property
    def metrics(self) -> tuple[str, ...]:
        """Pooled metrics the profile holds, in metric-table order."""
        return tuple(m for m in metric_table.names() if any(m in r.metrics for r in self.rows))

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names of the exported table: the bin columns, then the metrics."""
        return (*_PROFILE_COLUMNS, *self.metrics)

    def to_records(self) -> list[dict[str, Any]]:
        """Rows as flat dicts: the bin columns, then one column per pooled metric.

        Returns:
            One dict per (model, bin).
        """
        names = self.metrics
        return [
            {**{k: getattr(r, k) for k in _PROFILE_COLUMNS},
             **{m: r.metrics.get(m, math.nan) for m in names}}
            for r in self.rows
        ]  # fmt: skip

    def __repr__(self) -> str:
        shown = [
            m for m in metric_table.default_metrics() if any(m in r.metrics for r in self.rows)
        ]
        head = ["model", "bin", "layers", *shown]
        lines = [[r.model, r.bin, str(r.n_layers), *(fmt(getattr(r, m)) for m in shown)]
                 for r in self.rows]  # fmt: skip
        title = f"DepthProfile: {len(self.models)} model(s), {len(self.bins)} bins"
        return render_table(title, head, lines)


def depth_profile(
    report: FilterReport | Sequence[FilterReport],
    *,
    bins: int = 10,
    first_bin: bool = True,
    include_lowest: bool = False,
    nan_in_denominator: bool = False,
) -> DepthProfile:
    """Metrics per model and depth bin, aggregated as in the paper.

    Args:
        report: A [`FilterReport`][filterstats.FilterReport] (one or several models)
            or a sequence of them. A model label given twice is profiled twice (a
            twin shared by several pairs, counted per pair as the paper did).
        bins: Number of equal-width bins of ``conv_depth_norm`` (10: deciles).
        first_bin: Put the first conv depth in its own ``"first"`` bin (paper).
        include_lowest: Close the lowest bin on the left (CNN Filter DB).
        nan_in_denominator: Reproduce the paper's bug 4 (NaN entropies counted in
            the weights).

    Returns:
        A [`DepthProfile`][filterstats.depth_bins.DepthProfile].

    Examples:
        >>> import torch, filterstats as fs
        >>> net = torch.nn.Sequential(*[torch.nn.Conv2d(4, 4, 3) for _ in range(3)])
        >>> [row.bin for row in fs.depth_profile(fs.analyze(net), bins=2)]
        ['first', '(0.0, 0.5]', '(0.5, 1.0]']
    """
    reports = [report] if isinstance(report, FilterReport) else list(report)
    labels = depth_bin_labels(bins, first_bin=first_bin, include_lowest=include_lowest)
    order = {label: i for i, label in enumerate(labels)}
    rows: list[ProfileRow] = []
    for item in reports:
        if not isinstance(item, FilterReport):
            raise TypeError(
                f"`report` must be a FilterReport or a sequence of them, got "
                f"{type(item).__name__}. Run `filterstats.analyze(model)` first."
            )
        drop_sparse = item.params.drop_sparse
        for model in item.models:
            measured = [r for r in item.measured if r.model == model]
            assigned = assign_depth_bins(
                [r.conv_depth for r in measured],
                [r.conv_depth_norm for r in measured],
                bins=bins,
                first_bin=first_bin,
                include_lowest=include_lowest,
            )
            for label in labels:
                members = [r for r, b in zip(measured, assigned) if b == label]
                if not members:
                    continue
                values = aggregate_rows(
                    members, drop_sparse=drop_sparse, nan_in_denominator=nan_in_denominator
                )
                rows.append(
                    ProfileRow(
                        model=model,
                        bin=label,
                        bin_index=order[label],
                        n_layers=len(members),
                        n_filters=sum(r.n_filters or 0 for r in members),
                        n_nonsparse=sum(r.n_nonsparse or 0 for r in members),
                        out_channels=sum(r.out_channels or 0 for r in members),
                        conv_depth_norm=float(np.mean([r.conv_depth_norm for r in members])),
                        metrics=values,
                    )
                )
    return DepthProfile(tuple(rows), labels, first_bin, include_lowest, nan_in_denominator)


_PROFILE_COLUMNS = (
    "model", "bin", "bin_index", "n_layers", "n_filters", "n_nonsparse", "out_channels",
    "conv_depth_norm",
)  # fmt: skip
