"""``compare``: two models (or two groups of models) side by side, with statistics.

The paper (Gavrikov & Keuper, CVPR-W 2022) compares 71 adversarially robust models
with normally trained twins of the same architecture through box plots per depth bin;
it reports no test or interval. This module adds them:

* layers of each pair are matched by name when both models have the same layers
  (``match="name"``), otherwise by depth bin (``match="depth"``: the paper's per-bin
  aggregates are compared);
* per metric: mean and median difference (``a - b``), a paired Wilcoxon signed-rank test
  over the matched units and one over the pairs, a Mann-Whitney U test between the
  groups, effect sizes (rank-biserial, Cliff's delta) and a seeded bootstrap interval;
* per depth bin: the same, and which bins differ most.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import numpy as np
from torch import Tensor, nn

from filterstats import metric_table
from filterstats._checks import check_choice
from filterstats._optional import require
from filterstats._stats import bootstrap_mean_ci, mann_whitney, paired_wilcoxon
from filterstats._tables import RowTable
from filterstats._text import fmt, render_table
from filterstats.depth_bins import (
    DepthProfile,
    aggregate_rows,
    assign_depth_bins,
    depth_bin_labels,
    depth_profile,
)
from filterstats.layers import FilterSet
from filterstats.results import FilterReport

__all__ = [
    "Comparison",
    "ComparisonSummary",
    "DepthComparison",
    "DepthDifference",
    "MatchRow",
    "MetricDifference",
    "compare",
]

logger = logging.getLogger(__name__)

Match = Literal["auto", "name", "depth"]
Twins = Literal["per_pair", "unique"]
Unit = Literal["auto", "pair", "layer"]

#: The metrics compared by default: those the metric table marks ``default``.
DEFAULT_METRICS = metric_table.default_metrics()


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class MatchRow:
    """One metric of one matched unit (a layer, or a depth bin) of one pair.

    Attributes:
        pair: Index of the pair.
        model_a: Label of the model of group ``a``.
        model_b: Label of the model of group ``b``.
        unit: Layer name (``match="name"``) or depth bin label (``match="depth"``).
        conv_depth: Conv depth rank of the layer (-1 for bins).
        conv_depth_norm: Normalised depth (of ``a``'s layer; mean for bins).
        metric: Metric name.
        a: Value in model ``a``.
        b: Value in model ``b``.
    """

    pair: int
    model_a: str
    model_b: str
    unit: str
    conv_depth: int
    conv_depth_norm: float
    metric: str
    a: float
    b: float

    @property
    def difference(self) -> float:
        """``a - b``."""
        return self.a - self.b


@dataclass(frozen=True)
class MetricDifference:
    """Group difference of one metric (``a - b``).

    Attributes:
        metric: Metric name.
        n_pairs: Model pairs.
        n_units: Matched units (layers or bins) with a finite difference.
        mean_a: Mean over the matched units of group ``a``.
        mean_b: Mean over the matched units of group ``b``.
        mean_diff: Mean of the unit differences.
        median_diff: Median of the unit differences.
        ci_low: Lower bootstrap bound of ``mean_diff``.
        ci_high: Upper bootstrap bound of ``mean_diff``.
        wilcoxon_p: Paired Wilcoxon signed-rank p-value over the matched units.
        rank_biserial: Matched-pairs rank-biserial correlation of the units, [-1, 1].
        pair_wilcoxon_p: Paired Wilcoxon p-value over the pairs' model-level values
            (NaN for one pair).
        mannwhitney_p: Mann-Whitney U p-value between the groups' model-level values.
        cliffs_delta: Cliff's delta of the model-level values, [-1, 1].
    """

    metric: str
    n_pairs: int
    n_units: int
    mean_a: float
    mean_b: float
    mean_diff: float
    median_diff: float
    ci_low: float
    ci_high: float
    wilcoxon_p: float
    rank_biserial: float
    pair_wilcoxon_p: float
    mannwhitney_p: float
    cliffs_delta: float


@dataclass(frozen=True)
class DepthDifference:
    """Difference of one metric in one depth bin (``a - b``).

    Attributes:
        metric: Metric name.
        bin: Depth bin label.
        bin_index: Position of the bin in depth order.
        n: Units (pairs or layers) in the bin with both values.
        mean_a: Mean of group ``a``'s values.
        mean_b: Mean of group ``b``'s values.
        mean_diff: Mean difference.
        median_diff: Median difference.
        ci_low: Lower bootstrap bound of ``mean_diff``.
        ci_high: Upper bootstrap bound of ``mean_diff``.
        wilcoxon_p: Paired Wilcoxon signed-rank p-value.
        rank_biserial: Matched-pairs rank-biserial correlation.
    """

    metric: str
    bin: str
    bin_index: int
    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    median_diff: float
    ci_low: float
    ci_high: float
    wilcoxon_p: float
    rank_biserial: float


@dataclass(frozen=True, eq=False, repr=False)
class ComparisonSummary(RowTable):
    """Per-metric differences between the groups; prints as a table.

    Attributes:
        rows: One [`MetricDifference`][filterstats.compare.MetricDifference] per metric.
        labels: Group labels ``(a, b)``; differences are ``a - b``.
        match: ``"name"`` (matched layers) or ``"depth"`` (matched depth bins).
        confidence: Coverage of the bootstrap intervals.
    """

    rows: tuple[MetricDifference, ...]
    labels: tuple[str, str]
    match: str
    confidence: float
    _row_type = MetricDifference

    def __getitem__(self, metric: str | int) -> MetricDifference:
        if isinstance(metric, int):
            return self.rows[metric]
        for row in self.rows:
            if row.metric == metric:
                return row
        raise KeyError(f"no metric {metric!r}; have {[r.metric for r in self.rows]}")

    def __repr__(self) -> str:
        a, b = self.labels
        head = ["metric", f"mean {a}", f"mean {b}", "diff", f"{self.confidence:.0%} CI",
                "median", "p (units)", "p (pairs)", "p (MWU)", "r_rb", "units"]  # fmt: skip
        lines = [
            [r.metric, fmt(r.mean_a), fmt(r.mean_b), fmt(r.mean_diff),
             f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]", fmt(r.median_diff), fmt(r.wilcoxon_p),
             fmt(r.pair_wilcoxon_p), fmt(r.mannwhitney_p), fmt(r.rank_biserial, 2),
             str(r.n_units)]
            for r in self.rows
        ]  # fmt: skip
        unit = "layers" if self.match == "name" else "depth bins"
        n_pairs = self.rows[0].n_pairs if self.rows else 0
        title = (
            f"Comparison {a} - {b}: {n_pairs} pair(s), units = matched {unit}; "
            "Wilcoxon signed-rank (units, pairs), Mann-Whitney U (groups), "
            "rank-biserial r"
        )
        return render_table(title, head, lines)


@dataclass(frozen=True, eq=False, repr=False)
class DepthComparison(RowTable):
    """Per-depth-bin differences between the groups; prints as a table.

    Attributes:
        rows: One [`DepthDifference`][filterstats.compare.DepthDifference] per metric
            and bin.
        labels: Group labels ``(a, b)``.
        bins: Bin labels in depth order.
        unit: ``"pair"`` (per-pair aggregates, the paper's) or ``"layer"`` (matched
            layers).
        confidence: Coverage of the bootstrap intervals.
    """

    rows: tuple[DepthDifference, ...]
    labels: tuple[str, str]
    bins: tuple[str, ...]
    unit: str
    confidence: float
    _row_type = DepthDifference

    def __getitem__(self, index: int) -> DepthDifference:
        return self.rows[index]

    def metric(self, metric: str) -> tuple[DepthDifference, ...]:
        """Rows of one metric, in depth order.

        Args:
            metric: A compared metric, e.g. ``"diversity"``.

        Returns:
            The rows of that metric, first bin first.
        """
        return tuple(r for r in self.rows if r.metric == metric)

    def most_different(self, metric: str, k: int = 3) -> tuple[str, ...]:
        """The ``k`` bins with the largest absolute mean difference of a metric.

        Args:
            metric: Metric name.
            k: How many bins.

        Returns:
            Bin labels, largest difference first; bins without data are left out.
        """
        rows = [r for r in self.metric(metric) if math.isfinite(r.mean_diff)]
        rows.sort(key=lambda r: (-abs(r.mean_diff), r.bin_index))
        return tuple(r.bin for r in rows[:k])

    def __repr__(self) -> str:
        a, b = self.labels
        head = ["metric", "bin", "n", f"mean {a}", f"mean {b}", "diff",
                f"{self.confidence:.0%} CI", "p", "r_rb"]  # fmt: skip
        lines = [
            [r.metric, r.bin, str(r.n), fmt(r.mean_a), fmt(r.mean_b), fmt(r.mean_diff),
             f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]", fmt(r.wilcoxon_p),
             fmt(r.rank_biserial, 2)]
            for r in self.rows
        ]  # fmt: skip
        title = f"By depth {a} - {b} (units = {self.unit}s; Wilcoxon signed-rank per bin)"
        return render_table(title, head, lines)


# ----------------------------------------------------------------------- comparison


@dataclass(frozen=True, eq=False, repr=False)
class Comparison:
    """Two groups of models, matched pair by pair; differences are ``a - b``.

    Create with [`compare`][filterstats.compare]. All statistics are computed on
    demand, deterministically from ``seed``.

    Attributes:
        labels: Group labels ``(a, b)``.
        reports_a: One report per position of group ``a`` (repeated for a model
            given several times).
        reports_b: The same for group ``b``.
        pairs: ``(index in a, index in b)`` per pair.
        match: ``"name"`` or ``"depth"``: how layers were matched.
        matched: Every matched unit and metric, as
            [`MatchRow`][filterstats.compare.MatchRow].
        unmatched: Units without a partner, described as text.
        metrics: Metrics compared.
        twins: ``"per_pair"`` (a model shared by k pairs counts k times in group-level
            statistics, as in the paper) or ``"unique"`` (once).
        bins: Depth bins (deciles: 10).
        first_bin: First conv depth in its own bin.
        include_lowest: Lowest bin closed on the left (CNN Filter DB).
        nan_in_denominator: Paper bug 4 reproduced in the aggregation.
        n_boot: Bootstrap resamples.
        confidence: Interval coverage.
        seed: Seed of the bootstrap generator.
    """

    labels: tuple[str, str]
    reports_a: tuple[FilterReport, ...]
    reports_b: tuple[FilterReport, ...]
    pairs: tuple[tuple[int, int], ...]
    match: str
    matched: tuple[MatchRow, ...]
    unmatched: tuple[str, ...]
    metrics: tuple[str, ...]
    twins: str = "per_pair"
    bins: int = 10
    first_bin: bool = True
    include_lowest: bool = False
    nan_in_denominator: bool = False
    n_boot: int = 2000
    confidence: float = 0.95
    seed: int = 0

    # ------------------------------------------------------------------ groups
    def group(self, which: int | str, *, twins: Twins | None = None) -> tuple[FilterReport, ...]:
        """Reports of one group for group-level statistics.

        Args:
            which: 0 / 1 or a group label.
            twins: Override of ``self.twins``.

        Returns:
            ``"per_pair"``: one report per pair (a shared model repeated);
            ``"unique"``: each model once, in order.
        """
        side = self._side(which)
        twins = twins or self.twins  # type: ignore[assignment]
        check_choice("twins", twins, ("per_pair", "unique"))
        reports = self.reports_a if side == 0 else self.reports_b
        chosen = [reports[pair[side]] for pair in self.pairs]
        if twins == "unique":
            chosen = list({r.models[0]: r for r in chosen}.values())
        return tuple(chosen)

    def _side(self, which: int | str) -> int:
        if which in (0, 1):
            return int(which)
        if which in self.labels:
            return self.labels.index(str(which))
        raise ValueError(f"`which` must be 0, 1 or one of {self.labels}, got {which!r}.")

    def profiles(
        self, *, bins: int | None = None, twins: Twins | None = None
    ) -> tuple[DepthProfile, DepthProfile]:
        """Per-(model, bin) aggregates of both groups: the paper's box-plot data.

        Args:
            bins: Number of bins (default: the comparison's).
            twins: ``"per_pair"`` or ``"unique"`` (default: the comparison's).

        Returns:
            ``(profile of a, profile of b)``.
        """
        options = self._bin_options(bins)
        return (
            depth_profile(list(self.group(0, twins=twins)), **options),
            depth_profile(list(self.group(1, twins=twins)), **options),
        )

    def _bin_options(self, bins: int | None) -> dict[str, Any]:
        return {
            "bins": self.bins if bins is None else bins,
            "first_bin": self.first_bin,
            "include_lowest": self.include_lowest,
            "nan_in_denominator": self.nan_in_denominator,
        }

    def _model_value(self, report: FilterReport, metric: str) -> float:
        values = aggregate_rows(
            report.measured,
            drop_sparse=report.params.drop_sparse,
            nan_in_denominator=self.nan_in_denominator,
        )
        return values[metric]

    def _generator(self, seed: int | np.random.Generator | None) -> np.random.Generator:
        if isinstance(seed, np.random.Generator):
            return seed
        return np.random.default_rng(self.seed if seed is None else seed)

    # ------------------------------------------------------------------ summary
    def summary(
        self,
        *,
        n_boot: int | None = None,
        confidence: float | None = None,
        seed: int | np.random.Generator | None = None,
    ) -> ComparisonSummary:
        """Per-metric differences, tests, effect sizes and bootstrap intervals.

        Units are the matched layers (or depth bins). The bootstrap resamples whole
        pairs when there are at least two pairs (layers of one pair are not
        independent), single units otherwise.

        Args:
            n_boot: Bootstrap resamples (default: the comparison's).
            confidence: Interval coverage (default: the comparison's).
            seed: Seed or generator (default: the comparison's seed).

        Returns:
            A [`ComparisonSummary`][filterstats.compare.ComparisonSummary].
        """
        n_boot, confidence = self._boot_options(n_boot, confidence)
        generator = self._generator(seed)
        rows = []
        for metric in self.metrics:
            units = [m for m in self.matched if m.metric == metric]
            a = np.array([u.a for u in units], dtype=np.float64)
            b = np.array([u.b for u in units], dtype=np.float64)
            keep = np.isfinite(a) & np.isfinite(b)
            a, b = a[keep], b[keep]
            pair_ids = np.array([u.pair for u in units], dtype=np.int64)[keep]
            stats = _paired_statistics(
                a,
                b,
                pair_ids if len(self.pairs) >= 2 else None,
                n_boot=n_boot,
                confidence=confidence,
                generator=generator,
            )
            per_pair_a = np.array(
                [self._model_value(self.reports_a[i], metric) for i, _ in self.pairs]
            )
            per_pair_b = np.array(
                [self._model_value(self.reports_b[j], metric) for _, j in self.pairs]
            )
            pair_test = (
                paired_wilcoxon(per_pair_a - per_pair_b).pvalue
                if len(self.pairs) >= 2
                else math.nan
            )
            group_a = [self._model_value(r, metric) for r in self.group(0)]
            group_b = [self._model_value(r, metric) for r in self.group(1)]
            mwu_p, delta = mann_whitney(np.array(group_a), np.array(group_b))
            rows.append(
                MetricDifference(
                    metric=metric,
                    n_pairs=len(self.pairs),
                    n_units=int(a.size),
                    **stats,
                    pair_wilcoxon_p=pair_test,
                    mannwhitney_p=mwu_p,
                    cliffs_delta=delta,
                )
            )
        return ComparisonSummary(tuple(rows), self.labels, self.match, confidence)

    def _boot_options(self, n_boot: int | None, confidence: float | None) -> tuple[int, float]:
        n_boot = self.n_boot if n_boot is None else n_boot
        confidence = self.confidence if confidence is None else confidence
        _check_boot(n_boot, confidence)
        return n_boot, confidence

    # ----------------------------------------------------------------- by depth
    def by_depth(
        self,
        bins: int | None = None,
        *,
        unit: Unit = "auto",
        n_boot: int | None = None,
        confidence: float | None = None,
        seed: int | np.random.Generator | None = None,
    ) -> DepthComparison:
        """Differences per depth bin, with bootstrap intervals and Wilcoxon tests.

        Args:
            bins: Number of bins of the normalised depth (default: the comparison's;
                the first conv depth keeps its own bin unless ``first_bin=False`` was
                given to ``compare``).
            unit: ``"pair"``: one difference per pair and bin, of the paper's
                weighted per-(model, bin) aggregates; ``"layer"``: one per matched
                layer (needs ``match="name"``); ``"auto"``: ``"pair"`` with two or
                more pairs, else ``"layer"`` when layers were matched by name.
            n_boot: Bootstrap resamples.
            confidence: Interval coverage.
            seed: Seed or generator.

        Returns:
            A [`DepthComparison`][filterstats.compare.DepthComparison].
        """
        check_choice("unit", unit, ("auto", "pair", "layer"))
        if unit == "auto":
            unit = "pair" if len(self.pairs) >= 2 or self.match != "name" else "layer"
        if unit == "layer" and self.match != "name":
            raise ValueError(
                "`unit='layer'` needs layers matched by name, but this comparison matched "
                "by depth (different architectures). Use unit='pair'."
            )
        n_boot, confidence = self._boot_options(n_boot, confidence)
        generator = self._generator(seed)
        options = self._bin_options(bins)
        labels = depth_bin_labels(
            options["bins"], first_bin=self.first_bin, include_lowest=self.include_lowest
        )
        # (metric, bin) -> list of (cluster, a, b)
        cells: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
        if unit == "pair":
            for p, (i, j) in enumerate(self.pairs):
                prof_a = {r.bin: r for r in depth_profile(self.reports_a[i], **options)}
                prof_b = {r.bin: r for r in depth_profile(self.reports_b[j], **options)}
                for label in labels:
                    if label in prof_a and label in prof_b:
                        for metric in self.metrics:
                            cells.setdefault((metric, label), []).append(
                                (p, getattr(prof_a[label], metric), getattr(prof_b[label], metric))
                            )
        else:
            assigned = assign_depth_bins(
                [m.conv_depth for m in self.matched],
                [m.conv_depth_norm for m in self.matched],
                bins=options["bins"],
                first_bin=self.first_bin,
                include_lowest=self.include_lowest,
            )
            for row, bin_label in zip(self.matched, assigned):
                if bin_label is not None:
                    cells.setdefault((row.metric, bin_label), []).append((row.pair, row.a, row.b))
        rows = []
        for metric in self.metrics:
            for index, label in enumerate(labels):
                cell = cells.get((metric, label), [])
                clusters = np.array([c[0] for c in cell], dtype=np.int64)
                a = np.array([c[1] for c in cell], dtype=np.float64)
                b = np.array([c[2] for c in cell], dtype=np.float64)
                keep = np.isfinite(a) & np.isfinite(b)
                a, b, clusters = a[keep], b[keep], clusters[keep]
                cluster = unit == "layer" and np.unique(clusters).size >= 2
                stats = _paired_statistics(
                    a,
                    b,
                    clusters if cluster else None,
                    n_boot=n_boot,
                    confidence=confidence,
                    generator=generator,
                )
                rows.append(
                    DepthDifference(
                        metric=metric, bin=label, bin_index=index, n=int(a.size), **stats
                    )
                )
        return DepthComparison(tuple(rows), self.labels, labels, unit, confidence)

    def most_different(
        self, metric: str = "diversity", k: int = 3, *, bins: int | None = None
    ) -> tuple[str, ...]:
        """The depth bins where a metric differs most between the groups.

        Args:
            metric: Metric name.
            k: How many bins.
            bins: Number of bins (default: the comparison's).

        Returns:
            Bin labels, largest absolute mean difference first.
        """
        return self.by_depth(bins, n_boot=1).most_different(metric, k)

    # --------------------------------------------------------------- exports
    def to_records(self) -> list[dict[str, Any]]:
        """The matched units as plain dicts (one per unit and metric).

        Returns:
            One dict per matched unit and metric, with its ``difference``.
        """
        return [{**asdict(row), "difference": row.difference} for row in self.matched]

    def to_pandas(self) -> Any:
        """The matched units as a long pandas DataFrame (needs ``filterstats[pandas]``).

        Returns:
            A DataFrame, one row per matched unit and metric.
        """
        pd = require("pandas", extra="pandas")
        columns = [f.name for f in fields(MatchRow)] + ["difference"]
        return pd.DataFrame(self.to_records(), columns=columns)

    def plot(self, metrics: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """Metric versus depth for both groups (needs ``filterstats[plot]``).

        Args:
            metrics: Metrics to draw, one panel each (default: the compared ones).
            **kwargs: Passed to
                [`plot_comparison`][filterstats.plotting.plot_comparison].

        Returns:
            A matplotlib ``Figure``.
        """
        from filterstats.plotting import plot_comparison

        return plot_comparison(self, metrics=metrics, **kwargs)

    def __repr__(self) -> str:
        lines = [
            f"Comparison({self.labels[0]}: {len(self.reports_a)} model(s), {self.labels[1]}: "
            f"{len(self.reports_b)} model(s), {len(self.pairs)} pair(s), matched by "
            f"{self.match}, twins counted {self.twins.replace('_', ' ')})"
        ]
        if self.unmatched:
            lines.append(f"unmatched: {'; '.join(self.unmatched[:5])}"
                         + (" ..." if len(self.unmatched) > 5 else ""))  # fmt: skip
        lines.append(repr(self.summary()))
        return "\n".join(lines)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _paired_statistics(
    a: np.ndarray,
    b: np.ndarray,
    clusters: np.ndarray | None,
    *,
    n_boot: int,
    confidence: float,
    generator: np.random.Generator,
) -> dict[str, float]:
    """Means of both sides, the mean/median of ``a - b``, its bootstrap CI, Wilcoxon."""
    d = a - b
    test = paired_wilcoxon(d)
    low, high = bootstrap_mean_ci(
        d, clusters, n_boot=n_boot, confidence=confidence, generator=generator
    )
    return {
        "mean_a": _mean(a),
        "mean_b": _mean(b),
        "mean_diff": _mean(d),
        "median_diff": float(np.median(d)) if d.size else math.nan,
        "ci_low": low,
        "ci_high": high,
        "wilcoxon_p": test.pvalue,
        "rank_biserial": test.rank_biserial,
    }


def _check_boot(n_boot: int, confidence: float) -> None:
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"`n_boot` must be a positive integer, got {n_boot!r}.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must lie in (0, 1), e.g. 0.95, got {confidence!r}.")


# ------------------------------------------------------------------------- inputs


def _relabel(report: FilterReport, label: str) -> FilterReport:
    if report.models == (label,):
        return report
    baseline = None if report.baseline is None else report.baseline.relabel(label)
    rows = tuple(replace(r, model=label) for r in report.rows)
    return FilterReport(rows, report.params, baseline=baseline)


def _resolve_group(group: Any, name: str, analyze_kwargs: Mapping[str, Any]) -> list[FilterReport]:
    from filterstats.analysis import analyze

    items = list(group) if isinstance(group, (list, tuple)) else [group]
    if not items:
        raise ValueError(f"group {name!r} is empty: pass at least one model or report.")
    many = len(items) > 1
    cache: dict[int, list[FilterReport]] = {}  # one analysis per object, however often listed
    reports: list[FilterReport] = []
    for i, item in enumerate(items):
        if id(item) not in cache:
            if isinstance(item, FilterReport):
                cache[id(item)] = _split(item)
            elif isinstance(item, (nn.Module, FilterSet, Mapping, Tensor, str, os.PathLike)):
                label = f"{name}[{i}]" if many else name
                cache[id(item)] = [analyze(item, label=label, **analyze_kwargs)]
            else:
                raise TypeError(
                    f"`{name}` items must be models (anything extract_filters takes: modules, "
                    f"state dicts, paths or spec strings, FilterSets), FilterReports or lists "
                    f"of them, got {type(item).__name__} at position {i}."
                )
        reports.extend(cache[id(item)])
    return reports


def _split(report: FilterReport) -> list[FilterReport]:
    models = report.models
    if len(models) <= 1:
        return [report]
    base = report.baseline
    return [
        FilterReport(tuple(r for r in report.rows if r.model == m), report.params,
                     baseline=None if base is None else base.for_model(m))
        for m in models
    ]  # fmt: skip


def _uniquify(groups: list[list[FilterReport]]) -> list[list[FilterReport]]:
    """Different reports with the same label get ``#2``, ``#3``...; a repeated one keeps it."""
    owner: dict[str, int] = {}
    renamed: dict[int, FilterReport] = {}
    result = []
    for reports in groups:
        out = []
        for report in reports:
            if id(report) in renamed:
                out.append(renamed[id(report)])
                continue
            label = report.models[0] if report.models else "model"
            new, n = label, 1
            while new in owner and owner[new] != id(report):
                n += 1
                new = f"{label}#{n}"
            owner[new] = id(report)
            renamed[id(report)] = _relabel(report, new)
            out.append(renamed[id(report)])
        result.append(out)
    return result


def _resolve_pairs(
    pairs: Sequence[tuple[int | str, int | str]] | None,
    a: list[FilterReport],
    b: list[FilterReport],
) -> tuple[tuple[int, int], ...]:
    if pairs is None:
        if len(a) == len(b):
            return tuple((i, i) for i in range(len(a)))
        if len(b) == 1:
            return tuple((i, 0) for i in range(len(a)))
        if len(a) == 1:
            return tuple((0, j) for j in range(len(b)))
        raise ValueError(
            f"groups of {len(a)} and {len(b)} models cannot be paired automatically; pass "
            "`pairs=[(index_in_a, index_in_b), ...]` (indices or model labels)."
        )
    names_a = [r.models[0] for r in a]
    names_b = [r.models[0] for r in b]
    resolved = []
    for k, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"`pairs[{k}]` must be (a, b), got {pair!r}.")
        i = _index(pair[0], names_a, "a", k)
        j = _index(pair[1], names_b, "b", k)
        resolved.append((i, j))
    if not resolved:
        raise ValueError("`pairs` is empty: give at least one (a, b) pair.")
    return tuple(resolved)


def _index(key: int | str, names: list[str], side: str, k: int) -> int:
    if isinstance(key, str):
        if key not in names:
            raise ValueError(f"`pairs[{k}]`: no model {key!r} in group {side}; have {names}.")
        return names.index(key)
    if not 0 <= int(key) < len(names):
        raise ValueError(
            f"`pairs[{k}]`: index {key} out of range for group {side} of {len(names)} models."
        )
    return int(key)


def _signature(report: FilterReport) -> frozenset[tuple[Any, ...]]:
    """Layer names and weight shapes: what every door knows (groups: not state dicts)."""
    return frozenset(
        (r.layer, r.out_channels, (r.in_channels or 0) // (r.groups or 1), r.kernel_size)
        for r in report.measured
    )


def _match_by_name(
    p: int, ra: FilterReport, rb: FilterReport, metrics: Sequence[str]
) -> tuple[list[MatchRow], list[str]]:
    a_rows = {r.layer: r for r in ra.measured}
    b_rows = {r.layer: r for r in rb.measured}
    label_a, label_b = ra.models[0], rb.models[0]
    rows = []
    for name, row_a in a_rows.items():
        row_b = b_rows.get(name)
        if row_b is None:
            continue
        for metric in metrics:
            rows.append(
                MatchRow(p, label_a, label_b, name,
                         -1 if row_a.conv_depth is None else row_a.conv_depth,
                         row_a.conv_depth_norm, metric, getattr(row_a, metric),
                         getattr(row_b, metric))
            )  # fmt: skip
    missing = [f"pair {p}: {n} only in {label_a}" for n in a_rows if n not in b_rows]
    missing += [f"pair {p}: {n} only in {label_b}" for n in b_rows if n not in a_rows]
    return rows, missing


def _match_by_depth(
    p: int, ra: FilterReport, rb: FilterReport, metrics: Sequence[str], options: dict[str, Any]
) -> tuple[list[MatchRow], list[str]]:
    prof_a = {r.bin: r for r in depth_profile(ra, **options)}
    prof_b = {r.bin: r for r in depth_profile(rb, **options)}
    label_a, label_b = ra.models[0], rb.models[0]
    rows = []
    for label, row_a in prof_a.items():
        row_b = prof_b.get(label)
        if row_b is None:
            continue
        depth = 0.5 * (row_a.conv_depth_norm + row_b.conv_depth_norm)
        conv_depth = 0 if label == "first" else -1
        for metric in metrics:
            rows.append(
                MatchRow(p, label_a, label_b, label, conv_depth, depth, metric,
                         getattr(row_a, metric), getattr(row_b, metric))
            )  # fmt: skip
    missing = [f"pair {p}: bin {b} only in {label_a}" for b in prof_a if b not in prof_b]
    missing += [f"pair {p}: bin {b} only in {label_b}" for b in prof_b if b not in prof_a]
    return rows, missing


def compare(
    a: Any,
    b: Any,
    *,
    labels: tuple[str, str] = ("robust", "normal"),
    pairs: Sequence[tuple[int | str, int | str]] | None = None,
    match: Match = "auto",
    metrics: Sequence[str] = DEFAULT_METRICS,
    twins: Twins = "per_pair",
    bins: int = 10,
    first_bin: bool = True,
    include_lowest: bool = False,
    nan_in_denominator: bool = False,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    **analyze_kwargs: Any,
) -> Comparison:
    """Compare the filters of two models, or of two groups of models.

    Each side is a model, a [`FilterSet`][filterstats.FilterSet], a
    [`FilterReport`][filterstats.FilterReport] (one model, or several concatenated),
    or a list of these. Models are analysed with
    [`analyze`][filterstats.analyze] (``**analyze_kwargs`` go there). The same
    object listed several times (a normal twin shared by several robust models) is
    analysed once.

    Args:
        a: First group (the paper's robust models). Differences are ``a - b``.
        b: Second group (the normally trained twins).
        labels: Names of the two groups.
        pairs: ``(a, b)`` pairs as indices or model labels. Default: position by
            position for groups of equal size, or everything against a single model.
        match: ``"name"``: match layers by module path (same architecture);
            ``"depth"``: match depth bins (the paper's aggregates); ``"auto"``: by
            name when every pair has identical layers (names and shapes), else by
            depth. The choice is logged and stored in ``Comparison.match``.
        metrics: Columns to compare: pooled metrics of
            [`filterstats.metric_table`][filterstats.metric_table] (default: the
            paper's three).
        twins: ``"per_pair"``: a model in several pairs counts once per pair in the
            group-level statistics and profiles (the paper); ``"unique"``: once.
        bins: Number of normalised-depth bins (10: the paper's deciles).
        first_bin: Give the first conv depth its own bin (paper).
        include_lowest: Close the lowest bin on the left (CNN Filter DB).
        nan_in_denominator: Reproduce the paper's bug 4 in the aggregation.
        n_boot: Bootstrap resamples for the intervals.
        confidence: Interval coverage.
        seed: Seed of the bootstrap generator: results are deterministic.
        **analyze_kwargs: Options for ``analyze`` (``eps``, ``definition``, ...).

    Returns:
        A [`Comparison`][filterstats.Comparison]: ``.summary()``, ``.by_depth()``,
        ``.plot()``, ``.to_pandas()``.

    Examples:
        >>> import torch, filterstats as fs
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> make = lambda: torch.nn.Sequential(*[torch.nn.Conv2d(8, 8, 3) for _ in range(4)])
        >>> cmp = fs.compare(make(), make())
        >>> cmp.match, len(cmp.pairs)
        ('name', 1)
    """
    check_choice("match", match, ("auto", "name", "depth"))
    check_choice("twins", twins, ("per_pair", "unique"))
    _check_boot(n_boot, confidence)
    pooled = metric_table.aggregated_metrics()
    unknown = [m for m in metrics if m not in pooled]
    if unknown or not metrics:
        raise ValueError(f"`metrics` must be a non-empty subset of {pooled}, got {metrics!r}.")
    if len(labels) != 2 or labels[0] == labels[1]:
        raise ValueError(f"`labels` must be two different names, got {labels!r}.")
    group_a = _resolve_group(a, labels[0], analyze_kwargs)
    group_b = _resolve_group(b, labels[1], analyze_kwargs)
    group_a, group_b = _uniquify([group_a, group_b])
    resolved = _resolve_pairs(pairs, group_a, group_b)
    same = all(_signature(group_a[i]) == _signature(group_b[j]) for i, j in resolved)
    used = match if match != "auto" else ("name" if same else "depth")
    logger.info("compare: layers matched by %s (%d pairs)", used, len(resolved))
    options = {"bins": bins, "first_bin": first_bin, "include_lowest": include_lowest,
               "nan_in_denominator": nan_in_denominator}  # fmt: skip
    matched: list[MatchRow] = []
    unmatched: list[str] = []
    for p, (i, j) in enumerate(resolved):
        if used == "name":
            rows, missing = _match_by_name(p, group_a[i], group_b[j], metrics)
            if not rows:
                raise ValueError(
                    f"pair {p} ({group_a[i].models[0]}, {group_b[j].models[0]}) has no layer "
                    "name in common; use match='depth' for different architectures."
                )
        else:
            rows, missing = _match_by_depth(p, group_a[i], group_b[j], metrics, options)
        matched.extend(rows)
        unmatched.extend(missing)
    return Comparison(
        labels=(str(labels[0]), str(labels[1])),
        reports_a=tuple(group_a),
        reports_b=tuple(group_b),
        pairs=resolved,
        match=used,
        matched=tuple(matched),
        unmatched=tuple(unmatched),
        metrics=tuple(metrics),
        twins=twins,
        bins=bins,
        first_bin=first_bin,
        include_lowest=include_lowest,
        nan_in_denominator=nan_in_denominator,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
    )
