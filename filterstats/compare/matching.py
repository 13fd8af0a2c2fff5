"""Inputs and matching of a comparison: groups of reports, pairs, matched layers or bins."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from filterstats._progress import progress_bar
from filterstats.compare.results import MatchRow
from filterstats.depth_bins import depth_profile
from filterstats.layers import FilterSet
from filterstats.results import FilterReport

__all__ = [
    "match_by_depth",
    "match_by_name",
    "resolve_group",
    "resolve_pairs",
    "signature",
    "uniquify",
]


def _relabel(report: FilterReport, label: str) -> FilterReport:
    if report.models == (label,):
        return report
    baseline = None if report.baseline is None else report.baseline.relabel(label)
    rows = tuple(replace(r, model=label) for r in report.rows)
    return FilterReport(rows, report.params, baseline=baseline)


def resolve_group(
    group: Any, name: str, analyze_kwargs: Mapping[str, Any], *, progress: bool = False
) -> list[FilterReport]:
    """The reports of one side: models analysed once each, multi-model reports split.

    Args:
        group: A model, a FilterReport, or a list of them.
        name: The group's label (models are labelled ``name`` or ``name[i]``).
        analyze_kwargs: Options for ``analyze``.
        progress: A progress bar on stderr over the models to analyse (when more than one).

    Returns:
        One report per position (an object listed twice is analysed once).
    """
    from filterstats.analysis import analyze

    items = list(group) if isinstance(group, (list, tuple)) else [group]
    if not items:
        raise ValueError(f"group {name!r} is empty: pass at least one model or report.")
    many = len(items) > 1
    cache: dict[int, list[FilterReport]] = {}  # one analysis per object, however often listed
    reports: list[FilterReport] = []
    to_analyse = len({id(item) for item in items if not isinstance(item, FilterReport)})
    bar = progress_bar(
        enumerate(items), total=len(items), desc=f"analyse {name}",
        enabled=progress and to_analyse > 1,
    )  # fmt: skip
    for i, item in bar:
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


def uniquify(groups: list[list[FilterReport]]) -> list[list[FilterReport]]:
    """Different reports with the same label get ``#2``, ``#3``...; a repeated one keeps it.

    Args:
        groups: The reports of both groups.

    Returns:
        The same reports, relabelled where labels clash.
    """
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


def resolve_pairs(
    pairs: Sequence[tuple[int | str, int | str]] | None,
    a: list[FilterReport],
    b: list[FilterReport],
) -> tuple[tuple[int, int], ...]:
    """``pairs`` as ``(index in a, index in b)``; the default pairing when ``None``.

    Args:
        pairs: ``(a, b)`` pairs as indices or model labels, or ``None``.
        a: Reports of group ``a``.
        b: Reports of group ``b``.

    Returns:
        The pairs as index tuples.
    """
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


def signature(report: FilterReport) -> frozenset[tuple[Any, ...]]:
    """Layer names and weight shapes: what every door knows (groups: not state dicts).

    Args:
        report: One model's report.

    Returns:
        The set of ``(layer, out_channels, in_channels per group, kernel_size)``.
    """
    return frozenset(
        (r.layer, r.out_channels, (r.in_channels or 0) // (r.groups or 1), r.kernel_size)
        for r in report.measured
    )


def match_by_name(
    p: int, ra: FilterReport, rb: FilterReport, metrics: Sequence[str]
) -> tuple[list[MatchRow], list[str]]:
    """Matched layers (same module path) of pair ``p``, and the unmatched ones as text.

    Args:
        p: Index of the pair.
        ra: Report of the ``a`` model.
        rb: Report of the ``b`` model.
        metrics: Metrics to match.

    Returns:
        ``(matched rows, unmatched layers as text)``.
    """
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
                         getattr(row_b, metric), row_a.kind)
            )  # fmt: skip
    missing = [f"pair {p}: {n} only in {label_a}" for n in a_rows if n not in b_rows]
    missing += [f"pair {p}: {n} only in {label_b}" for n in b_rows if n not in a_rows]
    return rows, missing


def match_by_depth(
    p: int, ra: FilterReport, rb: FilterReport, metrics: Sequence[str], options: dict[str, Any]
) -> tuple[list[MatchRow], list[str]]:
    """Matched depth bins of pair ``p``, and the unmatched ones as text.

    Args:
        p: Index of the pair.
        ra: Report of the ``a`` model.
        rb: Report of the ``b`` model.
        metrics: Metrics to match.
        options: Depth-bin options of ``depth_profile``.

    Returns:
        ``(matched rows, unmatched bins as text)``.
    """
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
