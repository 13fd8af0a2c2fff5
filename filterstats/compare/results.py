"""Result objects of a comparison: matched rows, per-metric and per-bin tables, ``Comparison``.

They hold results and print them; the statistics come from
[`filterstats.compare.statistics`][filterstats.compare.statistics], computed once by
[`compare`][filterstats.compare] (a ``repr`` never runs a bootstrap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np

from filterstats._checks import check_choice
from filterstats._optional import require
from filterstats._stats import mann_whitney, paired_wilcoxon
from filterstats._tables import RowTable
from filterstats._text import fmt, render_table
from filterstats.compare.statistics import check_boot, paired_statistics
from filterstats.depth_bins import (
    DepthProfile,
    aggregate_rows,
    assign_depth_bins,
    depth_bin_labels,
    depth_profile,
)
from filterstats.results import FilterReport

__all__ = [
    "Comparison",
    "ComparisonSummary",
    "DepthComparison",
    "DepthDifference",
    "MatchRow",
    "MetricDifference",
    "Twins",
    "Unit",
]

Twins = Literal["per_pair", "unique"]
Unit = Literal["auto", "pair", "layer"]


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
        default_summary: The summary with the comparison's own options, computed once by
            [`compare`][filterstats.compare] (``summary()`` returns it, ``repr`` prints it).
        default_depth: The depth table with the comparison's own options, computed once.
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
    default_summary: ComparisonSummary | None = None
    default_depth: DepthComparison | None = None

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
        defaults = (n_boot, confidence, seed) == (None, None, None)
        if defaults and self.default_summary is not None:
            return self.default_summary
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
            stats = paired_statistics(
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
        check_boot(n_boot, confidence)
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
        defaults = (bins, unit, n_boot, confidence, seed) == (None, "auto", None, None, None)
        if defaults and self.default_depth is not None:
            return self.default_depth
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
                stats = paired_statistics(
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
        if self.default_summary is None:
            lines.append("summary not computed: call .summary()")
        else:
            lines.append(repr(self.default_summary))
        return "\n".join(lines)
