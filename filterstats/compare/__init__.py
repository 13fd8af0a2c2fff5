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
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

from filterstats import metric_table
from filterstats._checks import check_choice
from filterstats.compare.matching import (
    match_by_depth,
    match_by_name,
    resolve_group,
    resolve_pairs,
    signature,
    uniquify,
)
from filterstats.compare.results import (
    Comparison,
    ComparisonSummary,
    DefinitionCheck,
    DefinitionSign,
    DepthComparison,
    DepthDifference,
    MatchRow,
    MetricDifference,
    Ranking,
    Twins,
    Unit,
    definition_check,
)
from filterstats.compare.statistics import check_boot
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
    "compare",
]

logger = logging.getLogger(__name__)

Match = Literal["auto", "name", "depth"]

#: The metrics compared by default: those the metric table marks ``default``.
DEFAULT_METRICS = metric_table.default_metrics()

#: The two definitions of the metrics (see ``analyze``'s ``definition``).
DEFINITIONS = ("paper", "torchconvquality")

__all__ += ["DEFAULT_METRICS", "Match", "Twins", "Unit"]


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
    both_definitions: bool = False,
    progress: bool = True,
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
        both_definitions: Also measure every model under the other definition
            (``"paper"`` and ``"torchconvquality"``) and report, per metric and depth
            bin, the direction of the difference under both, flagging those whose sign
            differs (``Comparison.definition_check``). The statistics of the comparison
            stay those of ``definition`` (``"paper"`` unless given). Needs models, not
            FilterReports.
        progress: Show a progress bar on stderr while the models are analysed (needs
            tqdm; shown only when a side has more than one model to analyse).
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
    check_boot(n_boot, confidence)
    pooled = metric_table.aggregated_metrics()
    unknown = [m for m in metrics if m not in pooled]
    if unknown or not metrics:
        raise ValueError(f"`metrics` must be a non-empty subset of {pooled}, got {metrics!r}.")
    if len(labels) != 2 or labels[0] == labels[1]:
        raise ValueError(f"`labels` must be two different names, got {labels!r}.")
    definition = analyze_kwargs.get("definition", "paper")
    if both_definitions:
        check_choice("definition", definition, DEFINITIONS)
        for name, side in (("a", a), ("b", b)):
            items = list(side) if isinstance(side, (list, tuple)) else [side]
            if any(isinstance(item, FilterReport) for item in items):
                raise ValueError(
                    f"`both_definitions=True` measures every model under both definitions, "
                    f"but `{name}` holds FilterReports (already measured under one). Pass "
                    "the models (modules, state dicts, paths or specs) instead."
                )
    settings = {"labels": labels, "pairs": pairs, "match": match, "metrics": metrics,
                "twins": twins, "bins": bins, "first_bin": first_bin,
                "include_lowest": include_lowest, "nan_in_denominator": nan_in_denominator,
                "n_boot": n_boot, "confidence": confidence, "seed": seed,
                "progress": progress}  # fmt: skip
    comparison = _assemble(a, b, analyze_kwargs, settings)
    if not both_definitions:
        return comparison
    other = next(d for d in DEFINITIONS if d != definition)
    alternate = _assemble(a, b, {**analyze_kwargs, "definition": other}, settings)
    check = definition_check(
        {definition: comparison, other: alternate}, order=("paper", "torchconvquality")
    )
    flagged = {"both_definitions": True, "definitions_differ": check.flagged_text()}
    summary = comparison.summary()  # the stored ones: no new bootstrap
    depth = comparison.by_depth()
    return replace(
        comparison,
        definition_check=check,
        default_summary=replace(summary, provenance={**summary.provenance, **flagged}),
        default_depth=replace(depth, provenance={**depth.provenance, **flagged}),
    )


def _assemble(
    a: Any, b: Any, analyze_kwargs: Mapping[str, Any], settings: Mapping[str, Any]
) -> Comparison:
    """Analyse, pair and match both sides; compute the summary and depth table once."""
    labels, pairs, match, metrics = (settings[k] for k in ("labels", "pairs", "match", "metrics"))
    bins, first_bin = settings["bins"], settings["first_bin"]
    include_lowest, nan_in_denominator = settings["include_lowest"], settings["nan_in_denominator"]
    group_a = resolve_group(a, labels[0], analyze_kwargs, progress=settings["progress"])
    group_b = resolve_group(b, labels[1], analyze_kwargs, progress=settings["progress"])
    group_a, group_b = uniquify([group_a, group_b])
    resolved = resolve_pairs(pairs, group_a, group_b)
    same = all(signature(group_a[i]) == signature(group_b[j]) for i, j in resolved)
    used = match if match != "auto" else ("name" if same else "depth")
    logger.info("compare: layers matched by %s (%d pairs)", used, len(resolved))
    options = {"bins": bins, "first_bin": first_bin, "include_lowest": include_lowest,
               "nan_in_denominator": nan_in_denominator}  # fmt: skip
    matched: list[MatchRow] = []
    unmatched: list[str] = []
    for p, (i, j) in enumerate(resolved):
        if used == "name":
            rows, missing = match_by_name(p, group_a[i], group_b[j], metrics)
            if not rows:
                raise ValueError(
                    f"pair {p} ({group_a[i].models[0]}, {group_b[j].models[0]}) has no layer "
                    "name in common; use match='depth' for different architectures."
                )
        else:
            rows, missing = match_by_depth(p, group_a[i], group_b[j], metrics, options)
        matched.extend(rows)
        unmatched.extend(missing)
    comparison = Comparison(
        labels=(str(labels[0]), str(labels[1])),
        reports_a=tuple(group_a),
        reports_b=tuple(group_b),
        pairs=resolved,
        match=used,
        matched=tuple(matched),
        unmatched=tuple(unmatched),
        metrics=tuple(metrics),
        twins=settings["twins"],
        bins=bins,
        first_bin=first_bin,
        include_lowest=include_lowest,
        nan_in_denominator=nan_in_denominator,
        n_boot=settings["n_boot"],
        confidence=settings["confidence"],
        seed=settings["seed"],
    )
    # Computed once here, so that printing never runs a bootstrap.
    return replace(
        comparison, default_summary=comparison.summary(), default_depth=comparison.by_depth()
    )
