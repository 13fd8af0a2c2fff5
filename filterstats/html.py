"""``report``: one self-contained HTML page for a FilterReport or a Comparison.

Tables are HTML tables (``<table class="data" id="...">``, numbers with 6 significant
digits, a header row of column names); figures are embedded as base64 PNG. The page
loads nothing from the network: no external CSS, script, font or image. The file is
written atomically (a temporary file next to the target, then renamed).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from filterstats._files import atomic_write_text, check_output_file
from filterstats._tables import html_table
from filterstats._text import plural
from filterstats.compare import Comparison
from filterstats.results import FilterReport

__all__ = ["report"]

logger = logging.getLogger(__name__)

_CSS = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; color: #222; margin: 0 auto; padding: 1em 2em;
       max-width: 1400px; line-height: 1.35; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; } h3 { font-size: 1.05em; }
div.scroll { overflow-x: auto; max-width: 100%; margin: 0.5em 0; }
table.data { border-collapse: collapse; font-size: 0.85em; }
table.data caption { caption-side: top; text-align: left; color: #666; padding: 2px 0; }
table.data th, table.data td { border: 1px solid #ccc; padding: 2px 6px; text-align: right;
                               white-space: nowrap; font-variant-numeric: tabular-nums; }
table.data th { background: #f0f0f0; position: sticky; top: 0; }
table.data td.text { text-align: left; }
table.data td.wrap { white-space: normal; min-width: 24em; max-width: 48em; text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
p.meta { color: #666; font-size: 0.85em; }
@media print { div.scroll { overflow: visible; } table.data { font-size: 0.7em; }
               table.data th { position: static; } }
"""


def _table(
    table_id: str,
    records: Sequence[dict[str, Any]],
    columns: Sequence[str],
    *,
    wrap: Sequence[str] = (),
) -> str:
    """One data table in its own horizontally scrolling box (the page never scrolls sideways).

    Numbers have 4 significant digits; the columns in ``wrap`` (skip reasons) wrap.
    """
    table = html_table(records, columns, table_id=table_id, max_rows=None, wrap=wrap)
    return f'<div class="scroll">{table}</div>'


def _figure(fig: Any, caption: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _figures_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        logger.warning("matplotlib is not installed: the HTML report has tables only; "
                       "pip install 'filterstats[plot]' for figures")  # fmt: skip
        return False
    return True


def _records_of(result: Any) -> tuple[list[dict[str, Any]], list[str]]:
    records = result.to_records()
    columns = list(records[0]) if records else []
    return records, columns


def _layer_columns(report: FilterReport) -> list[str]:
    """The layers table: what identifies a layer, then its metrics, then the rest."""
    lead = ["model"] if len(report.models) > 1 else []
    ident = ["layer", "module_type", "kind", "kernel_size", "in_channels", "out_channels",
             "groups", "conv_depth_norm"]  # fmt: skip
    present = set(report.columns)
    return [c for c in [*lead, *ident, *report.metrics, "n_filters", "n_nonsparse", "shared_with"]
            if c in present]  # fmt: skip


def _report_sections(obj: FilterReport, figures: bool) -> list[str]:
    from filterstats.depth_bins import depth_profile
    from filterstats.metric_table import default_metrics

    records = obj.to_records()
    params = ", ".join(f"{k}={v}" for k, v in asdict(obj.params).items())
    parts = [
        f'<p class="meta">{plural(len(obj.measured), "layer")} measured, '
        f"{len(obj.skipped)} skipped; "
        f"parameters: {html.escape(params)}</p>",
        "<h2>Layers</h2>",
        _table("layers", [r for r in records if r["status"] == "ok"], _layer_columns(obj)),
    ]
    if obj.skipped:
        columns = [c for c in _layer_columns(obj) if c not in obj.metrics
                   and c not in ("n_filters", "n_nonsparse", "shared_with")]  # fmt: skip
        parts += [
            "<h2>Skipped convolutions</h2>",
            _table("skipped", [r for r in records if r["status"] != "ok"], [*columns, "reason"],
                   wrap=("reason",)),
        ]  # fmt: skip
    if obj.baseline is not None:
        base = obj.baseline
        provenance = base.provenance()
        parts += [
            "<h2>Initialisation baseline</h2>",
            f'<p class="meta">{html.escape(base.title)}</p>',
            _table("baseline", base.to_records(), base.columns),
        ]
        if provenance["skipped"]:
            skipped = [{"layer": s.layer, "reason": s.reason} for s in base.skipped]
            parts.append(_table("baseline-skipped", skipped, ["layer", "reason"],
                                wrap=("reason",)))  # fmt: skip
    profile = depth_profile(obj)
    # Bins and metrics first, counts after: the metrics stay in view on a laptop screen.
    columns = ["model", "bin", "n_layers", *profile.metrics, "n_filters", "n_nonsparse",
               "out_channels", "conv_depth_norm"]  # fmt: skip
    parts += ["<h2>Depth profile</h2>", _table("depth-profile", profile.to_records(), columns)]
    if figures and obj.measured:
        from matplotlib.figure import Figure

        from filterstats.plotting import plot_metric_vs_depth

        shown = [m for m in default_metrics() if m in obj.metrics]
        fig = Figure(figsize=(5 * len(shown), 3.6), layout="constrained")
        axes = fig.subplots(1, len(shown), squeeze=False)[0]
        for ax, metric in zip(axes, shown):
            plot_metric_vs_depth(obj, metric, ax=ax)
        parts += ["<h2>Figures</h2>", _figure(fig, "metrics versus normalised depth")]
    return parts


def _provenance_records(provenance: Any) -> list[dict[str, Any]]:
    return [
        {"parameter": key, "value": ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v}
        for key, v in provenance.items()
    ]


def _inference_note(summary: Any) -> str:
    n_pairs = summary.rows[0].n_pairs if summary.rows else 0
    if n_pairs < 2:
        return (
            "One pair: no inference across models is possible; intervals and tests over "
            "pairs are not available (nan), the columns over units are descriptive."
        )
    over = "model pairs" if summary.design == "paired" else "models"
    return (
        f"Headline columns (mean_diff to signs) are inference over {over}; p_holm is "
        "Holm-adjusted over the rows of the table. Columns unit_*, median_diff, "
        "wilcoxon_p and rank_biserial pool the layers of all pairs and are descriptive."
    )


def _depth_units(depth: Any) -> str:
    return "models" if depth.design == "unpaired" and depth.unit == "pair" else f"{depth.unit}s"


def _skipped_of_models(obj: Comparison) -> list[str]:
    """Every convolution of the compared models that was not analysed, with its reason."""
    reports = {id(r): (side, r) for side, group in zip(obj.labels, (obj.reports_a, obj.reports_b))
               for r in group}  # fmt: skip
    records = [
        {"group": side, **record}
        for side, report in reports.values()
        for record in report.to_records()
        if record["status"] != "ok"
    ]
    if not records:
        return []
    ident = ["group", "model", "layer", "module_type", "kernel_size", "in_channels",
             "out_channels", "groups", "conv_depth_norm", "reason"]  # fmt: skip
    columns = [c for c in ident if c in records[0]]
    return [
        "<h2>Skipped convolutions</h2>",
        f'<p class="meta">{len(records)} convolution(s) of the compared models not analysed, '
        "with the reason.</p>",
        _table("skipped", records, columns, wrap=("reason",)),
    ]


def _comparison_sections(obj: Comparison, figures: bool, divergence: Any) -> list[str]:
    summary = obj.summary()
    depth = obj.by_depth()
    a, b = obj.labels
    parts = [
        f'<p class="meta">{html.escape(a)}: {len(obj.reports_a)} model(s); '
        f"{html.escape(b)}: {len(obj.reports_b)} model(s); {len(obj.pairs)} pair(s); "
        f"layers matched by {obj.match}; twins counted {obj.twins.replace('_', ' ')}; "
        f"differences are {html.escape(a)} - {html.escape(b)}; bootstrap "
        f"{obj.n_boot} resamples, seed {obj.seed}.</p>",
        "<h2>How this comparison was made</h2>",
        _table("provenance", _provenance_records(summary.provenance), ["parameter", "value"]),
        "<h2>Summary</h2>",
        f'<p class="meta">{html.escape(_inference_note(summary))}</p>',
        _table("summary", *_records_of(summary)),
        f"<h2>By depth (units: {_depth_units(depth)})</h2>",
    ]
    records, columns = _records_of(depth)
    filled = [r for r in records if r.get("n", 1)]
    if len(filled) < len(records):
        empty = sorted({str(r["bin"]) for r in records if not r.get("n", 1)})
        parts.append(
            f'<p class="meta">Depth bins without layers in these models, left out: '
            f"{html.escape(', '.join(empty))}.</p>"
        )
    parts.append(_table("by-depth", filled, columns))
    if obj.definition_check is not None:
        check = obj.definition_check
        parts += [
            "<h2>Direction under both definitions</h2>",
            f'<p class="meta">Sign differs between the definitions: '
            f"{html.escape(check.flagged_text())}.</p>",
            _table("definitions", *_records_of(check)),
        ]
    if divergence is not None:
        made = getattr(divergence, "_title", lambda: "")()  # how it was made, with its null
        note = getattr(divergence, "p_value_note", "")
        parts += ["<h2>Distribution shift by depth</h2>",
                  f'<p class="meta">{html.escape(made)}. {html.escape(note)}</p>',
                  _table("divergence", *_records_of(divergence))]  # fmt: skip
    if obj.unmatched:
        items = "".join(f"<li>{html.escape(u)}</li>" for u in obj.unmatched)
        parts += ["<h2>Unmatched units</h2>", f"<ul>{items}</ul>"]
    parts += _skipped_of_models(obj)
    if figures:
        from filterstats.plotting import plot_divergence

        parts += ["<h2>Figures</h2>", _figure(obj.plot(), "metrics versus depth")]
        if divergence is not None:
            parts.append(_figure(plot_divergence(divergence).figure, "distribution shift"))
    parts += ["<h2>Matched units</h2>", _table("matched", *_records_of(obj))]
    return parts


def report(
    obj: FilterReport | Comparison,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    figures: bool = True,
    divergence: Any = None,
) -> Path:
    """Write one self-contained HTML page with the tables and figures of a result.

    Args:
        obj: A [`FilterReport`][filterstats.FilterReport] (layer table, depth profile,
            metrics over depth) or a [`Comparison`][filterstats.Comparison] (summary,
            by-depth table, figures, matched units).
        path: The ``.html`` file to write (replaced atomically).
        title: Page title; default from the object.
        figures: Embed figures (needs ``filterstats[plot]``; skipped with a logged
            warning when matplotlib is missing).
        divergence: Optional result of
            [`filter_divergence`][filterstats.filter_divergence] to include.

    Returns:
        The path written.

    Examples:
        >>> import torch, filterstats as fs, tempfile, pathlib
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3))
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "report.html"
        >>> fs.report(fs.analyze(net), out, figures=False).exists()
        True
    """
    check_output_file(path, example="report.html")  # before any work
    figures = figures and _figures_available()
    if isinstance(obj, Comparison):
        heading = title or f"filterstats comparison: {obj.labels[0]} vs {obj.labels[1]}"
        parts = _comparison_sections(obj, figures, divergence)
    elif isinstance(obj, FilterReport):
        heading = title or f"filterstats report: {', '.join(obj.models) or 'empty'}"
        parts = _report_sections(obj, figures)
    else:
        raise TypeError(
            f"`obj` must be a FilterReport or a Comparison, got {type(obj).__name__}. "
            "Use `filterstats.analyze(model)` or `filterstats.compare(a, b)` first."
        )
    from filterstats._version import __version__

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(heading)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(heading)}</h1>"
        f'<p class="meta">filterstats {__version__}, {stamp}</p>'
        + "\n".join(parts)
        + "</body></html>\n"
    )
    atomic_write_text(path, page, example="report.html")
    return Path(path)
