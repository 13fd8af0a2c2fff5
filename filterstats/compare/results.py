"""Result objects of a comparison: matched rows, per-metric and per-bin tables, ``Comparison``.

They hold results and print them; the statistics come from
[`filterstats.compare.statistics`][filterstats.compare.statistics], computed once by
[`compare`][filterstats.compare] (a ``repr`` never runs a bootstrap).
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np

from filterstats._checks import check_choice
from filterstats._optional import require
from filterstats._stats import holm
from filterstats._tables import RowTable, html_table
from filterstats._text import fmt, plural, render_table
from filterstats._warnings import FilterStatsWarning
from filterstats.compare.statistics import check_boot, infer, nan_clean
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
    "DefinitionCheck",
    "DefinitionSign",
    "DepthComparison",
    "DepthDifference",
    "MatchRow",
    "MetricDifference",
    "Ranking",
    "Twins",
    "Unit",
    "definition_check",
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
        kind: The layer's kind in ``a`` (``"dense"``, ``"grouped"``, ``"depthwise"``;
            empty when unknown and for depth bins).
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
    kind: str = ""

    @property
    def difference(self) -> float:
        """``a - b``."""
        return self.a - self.b


@dataclass(frozen=True)
class MetricDifference:
    """Group difference of one metric (``a - b``), over all depths.

    The headline fields (``mean_diff`` to ``signs``) are inference over model pairs
    (or models); the ``unit_*``, ``median_diff``, ``wilcoxon_p`` and
    ``rank_biserial`` fields pool the layers of all pairs and are descriptive.

    Attributes:
        metric: Metric name.
        n_pairs: Model pairs with data.
        n_units: Matched units (layers or bins) with both values, over all pairs.
        mean_a: Mean of group ``a``: over pairs of each pair's mean (paired), or over
            the models of ``a`` of each model's mean (unpaired).
        mean_b: The same for group ``b``.
        mean_diff: Headline difference: mean over pairs of the pair-level mean
            difference (paired), or ``mean_a - mean_b`` over models (unpaired).
        ci_low: Lower bound of the hierarchical bootstrap interval of ``mean_diff``
            (resample pairs or models, then units within them); NaN with one pair.
        ci_high: Upper bound.
        p_value: Headline test: two-sided Wilcoxon signed-rank over the pair-level
            differences (paired) or Mann-Whitney U over the model values (unpaired);
            NaN with one pair.
        p_holm: ``p_value`` Holm-adjusted over every test of the table.
        n_positive: Pairs (paired) or model pairings (unpaired) with ``a > b``.
        n_negative: Those with ``a < b``.
        n_compared: Pairs or model pairings compared.
        signs: The sign count as text, e.g. ``"robust > normal in 5 of 5 pairs"``.
        unit_mean_diff: Descriptive: mean of the pooled unit differences.
        median_diff: Descriptive: median of the pooled unit differences.
        unit_ci_low: Descriptive: bootstrap interval of ``unit_mean_diff`` resampling
            single units (they are not independent: no inference).
        unit_ci_high: Upper bound.
        wilcoxon_p: Descriptive: Wilcoxon signed-rank over the pooled units.
        rank_biserial: Descriptive: matched-pairs rank-biserial correlation of the
            units, [-1, 1].
        pair_wilcoxon_p: Wilcoxon signed-rank over the pair-level differences (NaN
            for one pair).
        mannwhitney_p: Mann-Whitney U between the model values of the groups.
        cliffs_delta: Cliff's delta of the model values, [-1, 1].
    """

    metric: str
    n_pairs: int
    n_units: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float
    n_positive: int
    n_negative: int
    n_compared: int
    signs: str
    unit_mean_diff: float
    median_diff: float
    unit_ci_low: float
    unit_ci_high: float
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
        n: Units (per-pair bin aggregates, or layers) in the bin with both values.
        n_pairs: Model pairs with data.
        n_units: Matched units (layers or bins) with both values, over all pairs.
        mean_a: Mean of group ``a``: over pairs of each pair's mean (paired), or over
            the models of ``a`` of each model's mean (unpaired).
        mean_b: The same for group ``b``.
        mean_diff: Headline difference: mean over pairs of the pair-level mean
            difference (paired), or ``mean_a - mean_b`` over models (unpaired).
        ci_low: Lower bound of the hierarchical bootstrap interval of ``mean_diff``
            (resample pairs or models, then units within them); NaN with one pair.
        ci_high: Upper bound.
        p_value: Headline test: two-sided Wilcoxon signed-rank over the pair-level
            differences (paired) or Mann-Whitney U over the model values (unpaired);
            NaN with one pair.
        p_holm: ``p_value`` Holm-adjusted over every test of the table.
        n_positive: Pairs (paired) or model pairings (unpaired) with ``a > b``.
        n_negative: Those with ``a < b``.
        n_compared: Pairs or model pairings compared.
        signs: The sign count as text, e.g. ``"robust > normal in 5 of 5 pairs"``.
        unit_mean_diff: Descriptive: mean of the pooled unit differences.
        median_diff: Descriptive: median of the pooled unit differences.
        unit_ci_low: Descriptive: bootstrap interval of ``unit_mean_diff`` resampling
            single units (they are not independent: no inference).
        unit_ci_high: Upper bound.
        wilcoxon_p: Descriptive: Wilcoxon signed-rank over the pooled units.
        rank_biserial: Descriptive: matched-pairs rank-biserial correlation of the
            units, [-1, 1].
        pair_wilcoxon_p: Wilcoxon signed-rank over the pair-level differences (NaN
            for one pair).
        mannwhitney_p: Mann-Whitney U between the model values of the groups.
        cliffs_delta: Cliff's delta of the model values, [-1, 1].
    """

    metric: str
    bin: str
    bin_index: int
    n: int
    n_pairs: int
    n_units: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    p_holm: float
    n_positive: int
    n_negative: int
    n_compared: int
    signs: str
    unit_mean_diff: float
    median_diff: float
    unit_ci_low: float
    unit_ci_high: float
    wilcoxon_p: float
    rank_biserial: float
    pair_wilcoxon_p: float
    mannwhitney_p: float
    cliffs_delta: float


class Ranking(tuple):  # type: ignore[type-arg]
    """Bin labels, largest absolute difference first, with why and which are tied.

    A plain tuple of bin labels (``set(ranking)``, ``ranking[0]``) with two attributes:
    ``reason`` (why bins were left out, or why none is ranked) and ``ties`` (groups of
    ranked bins with exactly the same absolute difference, whose order is arbitrary).
    """

    reason: str
    ties: tuple[tuple[str, ...], ...]

    def __new__(
        cls, labels: Sequence[str], reason: str = "", ties: Sequence[tuple[str, ...]] = ()
    ) -> Ranking:
        """Build from the labels, the reason and the tied groups."""
        self = super().__new__(cls, labels)
        self.reason = reason
        self.ties = tuple(ties)
        return self


def _provenance_line(provenance: Mapping[str, Any]) -> str:
    keys = ("definition", "eps", "kernel_size", "twins", "bins", "match", "design",
            "n_pairs", "n_models_a", "n_models_b", "n_boot", "seed", "multiplicity",
            "version")  # fmt: skip
    return "how: " + ", ".join(f"{k}={provenance[k]}" for k in keys if k in provenance)


class _ProvenanceTable(RowTable):
    """Exports that carry how the table was made (``provenance``) and group labels.

    CSV: a leading ``# filterstats {json}`` comment line (read with ``skiprows=1`` or
    ``comment="#"``); JSON: ``{"filterstats": provenance, "rows": [...]}``; pandas:
    ``frame.attrs["filterstats"]``; Parquet: the schema metadata key ``filterstats``.
    The columns ``mean_a``/``mean_b`` are named after the groups (``mean_robust``).
    """

    labels: tuple[str, str]
    provenance: Mapping[str, Any]

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names of the exported table, in order (group labels for the means)."""
        names = [f.name for f in fields(self._row_type)]
        renamed = self._renamed(names)
        return tuple(renamed.get(n, n) for n in names)

    def _renamed(self, names: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for field_name, label in zip(("mean_a", "mean_b"), self.labels):
            new = f"mean_{label}"
            if new in names or new in out.values():
                new = f"{field_name}_{label}"
            out[field_name] = new
        return out

    def to_records(self) -> list[dict[str, Any]]:
        """Rows as plain dicts, the means named after the groups (``mean_robust``).

        Returns:
            One dict per row, keys in column order.
        """
        records = [asdict(row) for row in self.rows]
        if not records:
            return records
        renamed = self._renamed(list(records[0]))
        return [{renamed.get(k, k): v for k, v in r.items()} for r in records]

    def _export_provenance(self) -> dict[str, Any]:
        return _jsonable(self.provenance)

    def _repr_html_(self) -> str:
        """The table as HTML; its title and provenance as the caption."""
        caption = " | ".join(repr(self).split("\n", 2)[:2])
        return html_table(self.to_records(), self.columns, caption=caption)


def _jsonable(provenance: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in provenance.items()}


def _headline_lines(rows: Sequence[Any], first: Sequence[list[str]]) -> list[list[str]]:
    return [
        [*cells, fmt(r.mean_a), fmt(r.mean_b), fmt(r.mean_diff),
         f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]", fmt(r.p_value), fmt(r.p_holm), r.signs]
        for cells, r in zip(first, rows)
    ]  # fmt: skip


def _headline_head(labels: tuple[str, str], confidence: float, design: str) -> list[str]:
    a, b = labels
    over = "pairs" if design == "paired" else "models"
    return [f"mean {a}", f"mean {b}", "diff", f"{confidence:.0%} CI ({over})", f"p ({over})",
            "p Holm", "sign count"]  # fmt: skip


def _note(text: str) -> str:
    return f"\nnote: {text}" if text else ""


def _headline_title(design: str, n_pairs: int) -> str:
    if design == "paired":
        return (
            f"unit of inference: model pair ({n_pairs}); interval: hierarchical bootstrap "
            "(pairs, then units); test: Wilcoxon signed-rank of pair mean differences "
            f"(smallest attainable p with {plural(n_pairs, 'pair')}: {2 / 2**n_pairs:.4g})"
        )
    return (
        "unit of inference: model (unpaired); interval: hierarchical bootstrap (models, "
        "then units); test: Mann-Whitney U of model means"
    )


def _one_pair_note(labels: tuple[str, str]) -> str:
    return (
        f"One pair: no inference across models is possible (a {labels[0]} and a "
        f"{labels[1]} model); the differences and signs below describe these two models only."
    )


@dataclass(frozen=True, eq=False, repr=False)
class ComparisonSummary(_ProvenanceTable):
    """Per-metric differences between the groups; prints as a table.

    Printed: the headline (over pairs or models) first, then the descriptive statistics
    over pooled layers; with one pair, a note that no inference across models is
    possible and the per-unit differences with their signs.

    Attributes:
        rows: One [`MetricDifference`][filterstats.compare.MetricDifference] per metric.
        labels: Group labels ``(a, b)``; differences are ``a - b``.
        match: ``"name"`` (matched layers) or ``"depth"`` (matched depth bins).
        confidence: Coverage of the bootstrap intervals.
        design: ``"paired"`` or ``"unpaired"``.
        provenance: How it was made (definition, eps, kernel selection, twins, bins,
            pairs and models, bootstrap, seed, library version).
        per_unit: With one pair: its matched units (every metric), else empty.
    """

    rows: tuple[MetricDifference, ...]
    labels: tuple[str, str]
    match: str
    confidence: float
    design: str = "paired"
    provenance: Mapping[str, Any] = field(default_factory=dict)
    per_unit: tuple[MatchRow, ...] = ()
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
        unit = "layers" if self.match == "name" else "depth bins"
        n_pairs = self.rows[0].n_pairs if self.rows else 0
        design = _design_text(self.design, n_pairs, self.provenance)
        title = f"Comparison {a} - {b}: {design}, units = matched {unit}"
        parts = [title, _provenance_line(self.provenance)]
        if n_pairs >= 2:
            parts.append(
                render_table(
                    _headline_title(self.design, n_pairs)
                    + _note(
                        _few_pairs_note(self.design, n_pairs, self.confidence, self.provenance)
                    ),
                    ["metric", *_headline_head(self.labels, self.confidence, self.design)],
                    _headline_lines(self.rows, [[r.metric] for r in self.rows]),
                )
            )
        else:
            parts.append(_one_pair_note(self.labels))
        head = ["metric", "units", "mean diff", "median", f"{self.confidence:.0%} CI (units)",
                "p (units)", "r_rb"]  # fmt: skip
        lines = [
            [r.metric, str(r.n_units), fmt(r.unit_mean_diff), fmt(r.median_diff),
             f"[{fmt(r.unit_ci_low)}, {fmt(r.unit_ci_high)}]", fmt(r.wilcoxon_p),
             fmt(r.rank_biserial, 2)]
            for r in self.rows
        ]  # fmt: skip
        parts.append(
            render_table(
                f"descriptive, {unit} of all pairs pooled (not independent: no inference); "
                "Wilcoxon signed-rank, rank-biserial r",
                head,
                lines,
            )
        )
        if self.per_unit:
            lines = [
                [u.metric, u.unit, fmt(u.a), fmt(u.b), fmt(u.difference),
                 _sign(u.difference, self.labels)]
                for u in self.per_unit
            ]  # fmt: skip
            parts.append(
                render_table(
                    f"per-{unit[:-1]} differences {a} - {b} (descriptive)",
                    ["metric", "unit", a, b, "diff", "sign"],
                    lines,
                )
            )
        return "\n".join(parts)


def _sign(difference: float, labels: tuple[str, str]) -> str:
    if not math.isfinite(difference):
        return ""
    if difference > 0:
        return f"{labels[0]} > {labels[1]}"
    if difference < 0:
        return f"{labels[0]} < {labels[1]}"
    return "="


@dataclass(frozen=True, eq=False, repr=False)
class DepthComparison(_ProvenanceTable):
    """Per-depth-bin differences between the groups; prints as a table.

    Printed: the headline per bin (over pairs or models, Holm-adjusted p over every
    metric and bin of the table) first; with layers as units, the descriptive
    statistics over pooled layers after it.

    Attributes:
        rows: One [`DepthDifference`][filterstats.compare.DepthDifference] per metric
            and bin.
        labels: Group labels ``(a, b)``.
        bins: Bin labels in depth order.
        unit: ``"pair"`` (per-pair aggregates, the paper's) or ``"layer"`` (matched
            layers).
        confidence: Coverage of the bootstrap intervals.
        design: ``"paired"`` or ``"unpaired"``.
        provenance: How it was made.
    """

    rows: tuple[DepthDifference, ...]
    labels: tuple[str, str]
    bins: tuple[str, ...]
    unit: str
    confidence: float
    design: str = "paired"
    provenance: Mapping[str, Any] = field(default_factory=dict)
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

    def most_different(self, metric: str, k: int = 3) -> Ranking:
        """The ``k`` bins with the largest absolute mean difference whose interval excludes 0.

        Only bins whose headline interval (over pairs or models) excludes 0 are ranked:
        with one pair there is no such interval and nothing is ranked. Bins with exactly
        the same absolute difference are reported in ``ties`` (their order is by depth
        and means nothing). An empty ranking, or a tie, warns with the reason.

        Args:
            metric: Metric name.
            k: How many bins.

        Returns:
            A [`Ranking`][filterstats.compare.results.Ranking]: bin labels, largest
            difference first, with ``reason`` and ``ties``.
        """
        if metric not in {r.metric for r in self.rows}:
            raise ValueError(
                f"`metric` must be one of the compared metrics "
                f"{sorted({r.metric for r in self.rows})}, got {metric!r}."
            )
        rows = self.metric(metric)
        with_ci = [r for r in rows if math.isfinite(r.ci_low) and math.isfinite(r.ci_high)]
        level = f"{self.confidence:.0%}"
        if not with_ci:
            reason = (
                "no bin has an interval across models (one pair, or too few models): "
                "nothing can be ranked"
            )
            return _warn_ranking(Ranking((), reason))
        chosen = [r for r in with_ci if r.ci_low > 0 or r.ci_high < 0]
        if not chosen:
            reason = f"no bin's {level} interval excludes 0: nothing is ranked"
            return _warn_ranking(Ranking((), reason))
        chosen.sort(key=lambda r: (-abs(r.mean_diff), r.bin_index))
        left_out = len(rows) - len(chosen)
        reason = (
            f"{left_out} bin(s) left out: interval includes 0 or not available" if left_out else ""
        )
        groups: dict[float, list[str]] = {}
        for r in chosen:
            groups.setdefault(abs(r.mean_diff), []).append(r.bin)
        shown = chosen[:k]
        ties = tuple(
            tuple(labels)
            for value, labels in groups.items()
            if len(labels) > 1 and any(abs(r.mean_diff) == value for r in shown)
        )
        few = _few_pairs_note(
            self.design, max(r.n_pairs for r in rows), self.confidence, self.provenance
        )
        if few:
            reason = "; ".join(x for x in (reason, few) if x)
        ranking = Ranking(tuple(r.bin for r in shown), reason, ties)
        if ties or few:
            return _warn_ranking(ranking)
        return ranking

    def __repr__(self) -> str:
        a, b = self.labels
        n_pairs = max((r.n_pairs for r in self.rows), default=0)
        design = _design_text(self.design, n_pairs, self.provenance)
        units = "models" if self.design == "unpaired" and self.unit == "pair" else f"{self.unit}s"
        title = f"By depth {a} - {b}: {design}, units = {units}"
        parts = [title, _provenance_line(self.provenance)]
        shown = [r for r in self.rows if r.n]
        few = _few_pairs_note(self.design, n_pairs, self.confidence, self.provenance)
        if n_pairs >= 2:
            parts.append(
                render_table(
                    _headline_title(self.design, n_pairs)
                    + "; p Holm over every row"
                    + _note(few),
                    ["metric", "bin", "n", *_headline_head(self.labels, self.confidence,
                                                           self.design)],
                    _headline_lines(shown, [[r.metric, r.bin, str(r.n)] for r in shown]),
                )
            )  # fmt: skip
        else:
            parts.append(_one_pair_note(self.labels))
            lines = [
                [r.metric, r.bin, str(r.n), fmt(r.mean_a), fmt(r.mean_b), fmt(r.mean_diff),
                 _sign(r.mean_diff, self.labels)]
                for r in self.rows
                if r.n
            ]  # fmt: skip
            parts.append(
                render_table(
                    "per-bin mean differences (descriptive)",
                    ["metric", "bin", "layers", f"mean {a}", f"mean {b}", "diff", "sign"],
                    lines,
                )
            )
        if self.unit == "layer" and n_pairs >= 2:
            lines = [
                [r.metric, r.bin, str(r.n_units), fmt(r.median_diff),
                 f"[{fmt(r.unit_ci_low)}, {fmt(r.unit_ci_high)}]", fmt(r.wilcoxon_p),
                 fmt(r.rank_biserial, 2)]
                for r in shown
            ]  # fmt: skip
            parts.append(
                render_table(
                    "descriptive, layers of all pairs pooled (not independent: no inference)",
                    ["metric", "bin", "layers", "median", f"{self.confidence:.0%} CI (layers)",
                     "p (layers)", "r_rb"],
                    lines,
                )
            )  # fmt: skip
        empty = [r.bin for r in self.rows if r.metric == self.rows[0].metric and not r.n]
        if empty:
            parts.append(f"bins without layers: {', '.join(empty)}")
        return "\n".join(parts)


def _design_text(design: str, n_pairs: int, provenance: Mapping[str, Any]) -> str:
    """``3 pairs``, or for unpaired groups ``unpaired, 2 and 1 model`` (no pairs are used)."""
    if design == "paired":
        return plural(n_pairs, "pair")
    n_a, n_b = provenance.get("n_models_a", 0), provenance.get("n_models_b", 0)
    return f"unpaired, {n_a} and {plural(n_b, 'model')}"


def _few_pairs_note(
    design: str, n_pairs: int, confidence: float, provenance: Mapping[str, Any]
) -> str:
    """Text when no test over the pairs (or models) can reach ``p < 1 - confidence``."""
    alpha = 1.0 - confidence
    if design == "paired":
        smallest = 2.0 / 2**n_pairs
        units = plural(n_pairs, "pair")
    else:
        n_a, n_b = provenance.get("n_models_a", 0), provenance.get("n_models_b", 0)
        smallest = 2.0 / math.comb(n_a + n_b, n_a) if n_a and n_b else 1.0
        units = f"{n_a} and {plural(n_b, 'model')}"
    if n_pairs < 2 or smallest <= alpha:
        return ""
    return (
        f"with {units} no test reaches p < {alpha:.2g} (smallest attainable p = "
        f"{smallest:.4g}) and bootstrap intervals over so few units are too narrow: "
        "read intervals and ranking as descriptive"
    )


def _warn_ranking(ranking: Ranking) -> Ranking:
    message = ranking.reason
    if ranking.ties:
        tied = "; ".join(", ".join(group) for group in ranking.ties)
        message = f"tied bins (same absolute difference, order arbitrary): {tied}; {message}"
    warnings.warn(f"most_different: {message}", FilterStatsWarning, stacklevel=3)
    return ranking


@dataclass(frozen=True)
class DefinitionSign:
    """The direction of one metric (over all depths, or in one bin) under both definitions.

    Attributes:
        metric: Metric name.
        bin: Depth bin label, or ``"all"`` for the summary over all depths.
        diff_paper: Headline ``mean_diff`` (``a - b``) under the paper's definition.
        diff_torchconvquality: The same under torchconvquality's definition.
        sign_paper: Sign of ``diff_paper``: 1, -1 or 0 (0 also for NaN, and for a
            difference within ``SIGN_TOLERANCE`` of 0: rounding-level noise has no
            direction).
        sign_torchconvquality: Sign of ``diff_torchconvquality``.
        differs: The signs differ: the direction depends on the definition.
    """

    metric: str
    bin: str
    diff_paper: float
    diff_torchconvquality: float
    sign_paper: int
    sign_torchconvquality: int
    differs: bool


@dataclass(frozen=True, eq=False, repr=False)
class DefinitionCheck(_ProvenanceTable):
    """Direction of every metric and bin under both definitions; prints as a table.

    Attributes:
        rows: One [`DefinitionSign`][filterstats.compare.DefinitionSign] per metric,
            over all depths (``bin="all"``) and per depth bin with data.
        labels: Group labels ``(a, b)``.
        provenance: How the comparison was made (its own definition's).
    """

    rows: tuple[DefinitionSign, ...]
    labels: tuple[str, str]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    _row_type = DefinitionSign

    @property
    def flagged(self) -> tuple[DefinitionSign, ...]:
        """Rows whose direction differs between the definitions."""
        return tuple(r for r in self.rows if r.differs)

    def flagged_text(self) -> str:
        """The flagged metrics and bins as text.

        Returns:
            ``"diversity; diversity in (0.4, 0.5]"``, or ``"none"``.
        """
        items = [r.metric if r.bin == "all" else f"{r.metric} in {r.bin}" for r in self.flagged]
        return "; ".join(items) or "none"

    def __repr__(self) -> str:
        a, b = self.labels
        title = (
            f"Direction of {a} - {b} under both definitions (paper, torchconvquality); "
            f"sign differs: {self.flagged_text()}"
        )
        lines = [
            [r.metric, r.bin, fmt(r.diff_paper), fmt(r.diff_torchconvquality),
             _sign(r.diff_paper, self.labels), _sign(r.diff_torchconvquality, self.labels),
             "DIFFERS" if r.differs else ""]
            for r in self.rows
        ]  # fmt: skip
        head = ["metric", "bin", "diff paper", "diff tcq", "paper", "torchconvquality", ""]
        return "\n".join([title, _provenance_line(self.provenance), render_table(
            "bins: 'all' is the summary over all depths", head, lines)])  # fmt: skip


#: Differences with ``|mean_diff| <= SIGN_TOLERANCE`` count as no direction (sign 0) in
#: the definition check. The metrics the definition changes lie in [0, 1] or
#: [0, log10(k*k)], so 1e-4 is far below any difference worth reporting and far above
#: rounding noise; metrics the definition does not change get one sign either way.
SIGN_TOLERANCE = 1e-4


def _signum(value: float) -> int:
    if not math.isfinite(value) or abs(value) <= SIGN_TOLERANCE:
        return 0
    return 1 if value > 0 else -1


def definition_check(
    comparisons: Mapping[str, Comparison], *, order: Sequence[str]
) -> DefinitionCheck:
    """Compare the directions of two comparisons that differ only in the definition.

    Args:
        comparisons: ``{"paper": ..., "torchconvquality": ...}``, both with their
            summary and depth table computed.
        order: The definitions in column order (``("paper", "torchconvquality")``).

    Returns:
        A [`DefinitionCheck`][filterstats.compare.DefinitionCheck].
    """
    first, second = (comparisons[name] for name in order)
    rows = [
        _definition_row(x.metric, "all", x.mean_diff, y.mean_diff)
        for x, y in zip(first.summary().rows, second.summary().rows)
    ]
    rows += [
        _definition_row(u.metric, u.bin, u.mean_diff, v.mean_diff)
        for u, v in zip(first.by_depth().rows, second.by_depth().rows)
        if u.n or v.n
    ]
    provenance = comparisons[next(iter(comparisons))].provenance
    return DefinitionCheck(tuple(rows), first.labels, provenance)


def _definition_row(metric: str, label: str, x: float, y: float) -> DefinitionSign:
    return DefinitionSign(metric, label, x, y, _signum(x), _signum(y), _signum(x) != _signum(y))


# ----------------------------------------------------------------------- comparison


@dataclass(frozen=True, eq=False, repr=False)
class Comparison:
    """Two groups of models, matched pair by pair; differences are ``a - b``.

    Create with [`compare`][filterstats.compare], which computes the summary and the
    depth table once (``default_summary``, ``default_depth``); other options
    (``summary(n_boot=...)``) compute anew, deterministically from ``seed``.

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
        definition_check: With ``compare(..., both_definitions=True)``: the direction of
            every metric and bin under both definitions, and which differ.
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
    definition_check: DefinitionCheck | None = None

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

    @property
    def design(self) -> str:
        """``"paired"`` when every model is in exactly one pair, else ``"unpaired"``.

        Paired: the unit of inference is the model pair. Unpaired (a model shared by
        several pairs, or every model against one): the unit is the model, each model
        counted once in the inference whatever ``twins`` says (``twins`` applies to
        ``profiles()``, ``group()`` and the plots).
        """
        firsts = [i for i, _ in self.pairs]
        seconds = [j for _, j in self.pairs]
        models_a = [self.reports_a[i].models[0] for i in firsts]
        models_b = [self.reports_b[j].models[0] for j in seconds]
        one_to_one = len(set(models_a)) == len(models_a) and len(set(models_b)) == len(models_b)
        return "paired" if one_to_one else "unpaired"

    @property
    def provenance(self) -> dict[str, Any]:
        """How the comparison was made: every saved table of it carries this.

        Returns:
            ``definition``, ``eps``, ``kernel_size`` (the selection applied), ``twins``,
            ``bins``, ``first_bin``, ``include_lowest``, ``match``, ``design``,
            ``labels``, ``n_pairs``, ``n_models_a``, ``n_models_b``, ``n_boot``,
            ``confidence``, ``seed``, ``bootstrap``, ``multiplicity`` and ``version``
            (filterstats). A parameter that differs between the reports is listed as
            ``"mixed: x, y"``.
        """
        from filterstats._version import __version__

        reports = [*self.reports_a, *self.reports_b]

        def param(name: str) -> Any:
            values = sorted({str(getattr(r.params, name)) for r in reports})
            if len(values) == 1:
                return getattr(reports[0].params, name)
            return "mixed: " + ", ".join(values)

        return {
            "definition": param("definition"),
            "eps": param("eps"),
            "kernel_size": param("kernel_size"),
            "twins": self.twins,
            "bins": self.bins,
            "first_bin": self.first_bin,
            "include_lowest": self.include_lowest,
            "match": self.match,
            "design": self.design,
            "labels": list(self.labels),
            "n_pairs": len(self.pairs),
            "n_models_a": len({r.models[0] for r in self.reports_a}),
            "n_models_b": len({r.models[0] for r in self.reports_b}),
            "n_boot": self.n_boot,
            "confidence": self.confidence,
            "seed": self.seed,
            "bootstrap": "hierarchical: pairs (or models), then units within them",
            "multiplicity": "holm",
            "version": __version__,
            **(
                {"both_definitions": True,
                 "definitions_differ": self.definition_check.flagged_text()}
                if self.definition_check is not None
                else {}
            ),
        }  # fmt: skip

    def _provenance(self, n_boot: int, confidence: float, seed: Any) -> dict[str, Any]:
        out = self.provenance
        out.update(n_boot=n_boot, confidence=confidence)
        if not isinstance(seed, np.random.Generator):
            out["seed"] = self.seed if seed is None else seed
        else:
            out["seed"] = "generator"
        return out

    def _infer(
        self,
        entries: Sequence[tuple[int, str, float, float]],
        *,
        n_boot: int,
        confidence: float,
        generator: np.random.Generator,
    ) -> dict[str, Any]:
        """Statistics of ``(pair, unit, a, b)`` entries."""
        pair = np.array([e[0] for e in entries], dtype=np.int64)
        models_a = [self.reports_a[self.pairs[e[0]][0]].models[0] for e in entries]
        models_b = [self.reports_b[self.pairs[e[0]][1]].models[0] for e in entries]
        return infer(
            pair,
            models_a,
            models_b,
            [e[1] for e in entries],
            np.array([e[2] for e in entries], dtype=np.float64),
            np.array([e[3] for e in entries], dtype=np.float64),
            design=self.design,  # type: ignore[arg-type]
            labels=self.labels,
            n_boot=n_boot,
            confidence=confidence,
            generator=generator,
        )

    # ------------------------------------------------------------------ summary
    def summary(
        self,
        *,
        n_boot: int | None = None,
        confidence: float | None = None,
        seed: int | np.random.Generator | None = None,
    ) -> ComparisonSummary:
        """Per-metric differences: inference over pairs (or models), then descriptive.

        The headline per metric: the mean over pairs of the pair-level mean difference
        (each pair's mean over its matched layers or bins), its hierarchical bootstrap
        interval (resample pairs, then units within them), the Wilcoxon signed-rank
        test of the pair-level differences with Holm-adjusted p-values over the
        metrics, and the sign count (``"robust > normal in 5 of 5 pairs"``). For
        unpaired groups the unit is the model (see ``design``). Statistics over the
        pooled layers stay available as descriptive fields. With one pair there is no
        interval or test across models (NaN) and the summary holds the per-unit
        differences (``per_unit``).

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
        results = []
        for metric in self.metrics:
            entries = [(m.pair, m.unit, m.a, m.b) for m in self.matched if m.metric == metric]
            results.append(
                self._infer(entries, n_boot=n_boot, confidence=confidence, generator=generator)
            )
        adjusted = holm([r["p_value"] for r in results])
        rows = tuple(
            MetricDifference(metric=metric, **{**r, "p_holm": nan_clean(p)})
            for metric, r, p in zip(self.metrics, results, adjusted)
        )
        return ComparisonSummary(
            rows,
            self.labels,
            self.match,
            confidence,
            design=self.design,
            provenance=self._provenance(n_boot, confidence, seed),
            per_unit=self.matched if len(self.pairs) == 1 else (),
        )

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
        """Differences per depth bin: inference over pairs (or models), Holm-adjusted.

        Per metric and bin the same headline as [`summary`][filterstats.Comparison.summary]
        (pair-level differences, hierarchical bootstrap, Wilcoxon over pairs, sign
        count); ``p_holm`` adjusts over every metric and bin of the table (Holm:
        family-wise error, valid under any dependence between bins).

        Args:
            bins: Number of bins of the normalised depth (default: the comparison's;
                the first conv depth keeps its own bin unless ``first_bin=False`` was
                given to ``compare``).
            unit: ``"pair"``: one difference per pair and bin, of the paper's
                weighted per-(model, bin) aggregates; ``"layer"``: one per matched
                layer (needs ``match="name"``; a pair's difference is the mean over
                its layers in the bin); ``"auto"``: ``"pair"`` with two or more
                pairs, else ``"layer"`` when layers were matched by name.
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
        # (metric, bin) -> list of (pair, unit, a, b)
        cells: dict[tuple[str, str], list[tuple[int, str, float, float]]] = {}
        if unit == "pair":
            for p, (i, j) in enumerate(self.pairs):
                prof_a = {r.bin: r for r in depth_profile(self.reports_a[i], **options)}
                prof_b = {r.bin: r for r in depth_profile(self.reports_b[j], **options)}
                for label in labels:
                    if label in prof_a and label in prof_b:
                        for metric in self.metrics:
                            cells.setdefault((metric, label), []).append(
                                (p, label, getattr(prof_a[label], metric),
                                 getattr(prof_b[label], metric))
                            )  # fmt: skip
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
                    cells.setdefault((row.metric, bin_label), []).append(
                        (row.pair, row.unit, row.a, row.b)
                    )
        keys, results = [], []
        for metric in self.metrics:
            for index, label in enumerate(labels):
                cell = cells.get((metric, label), [])
                keys.append((metric, label, index))
                results.append(
                    self._infer(cell, n_boot=n_boot, confidence=confidence, generator=generator)
                )
        adjusted = holm([r["p_value"] for r in results])
        rows = tuple(
            DepthDifference(
                metric=metric, bin=label, bin_index=index, n=r["n_units"],
                **{**r, "p_holm": nan_clean(p)},
            )
            for (metric, label, index), r, p in zip(keys, results, adjusted)
        )  # fmt: skip
        return DepthComparison(
            rows,
            self.labels,
            labels,
            unit,
            confidence,
            design=self.design,
            provenance={**self._provenance(n_boot, confidence, seed), "bins": options["bins"],
                        "unit": unit},
        )  # fmt: skip

    def most_different(
        self, metric: str = "diversity", k: int = 3, *, bins: int | None = None
    ) -> Ranking:
        """The depth bins where a metric differs most, among those whose interval excludes 0.

        Args:
            metric: Metric name.
            k: How many bins.
            bins: Number of bins (default: the comparison's).

        Returns:
            A [`Ranking`][filterstats.compare.results.Ranking] (see
            [`DepthComparison.most_different`][filterstats.compare.DepthComparison.most_different]).
        """
        return self.by_depth(bins).most_different(metric, k)

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
            A DataFrame, one row per matched unit and metric; how the comparison
            was made in ``frame.attrs["filterstats"]``.
        """
        pd = require("pandas", extra="pandas")
        columns = [f.name for f in fields(MatchRow)] + ["difference"]
        frame = pd.DataFrame(self.to_records(), columns=columns)
        frame.attrs["filterstats"] = _jsonable(self.provenance)
        return frame

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
        if self.definition_check is not None:
            lines.append(repr(self.definition_check))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """In a notebook: what was compared, then the summary (and the definition check)."""
        head = html.escape(repr(self).split("\n", 1)[0])
        parts = [f"<p><b>{head}</b></p>"]
        if self.unmatched:
            parts.append(f"<p>unmatched: {html.escape('; '.join(self.unmatched))}</p>")
        if self.default_summary is None:
            parts.append("<p>summary not computed: call <code>.summary()</code></p>")
        else:
            parts.append(self.default_summary._repr_html_())
        if self.definition_check is not None:
            parts.append(self.definition_check._repr_html_())
        return "\n".join(parts)
