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
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filterstats.compare import Comparison
from filterstats.results import FilterReport

__all__ = ["report"]

logger = logging.getLogger(__name__)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
table.data { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
table.data th, table.data td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
table.data th { background: #f0f0f0; }
table.data td.text { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; }
p.meta { color: #666; font-size: 0.85em; }
"""


def _cell(value: Any) -> tuple[str, str]:
    if isinstance(value, bool):
        return str(value), "text"
    if isinstance(value, int):
        return str(value), "num"
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else f"{value:.6g}"), "num"
    return html.escape(str(value)), "text"


def _table(table_id: str, records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for record in records:
        cells = []
        for column in columns:
            text, kind = _cell(record.get(column, ""))
            cells.append(f'<td class="{kind}">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table class="data" id="{html.escape(table_id)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


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


def _report_sections(obj: FilterReport, figures: bool) -> list[str]:
    from filterstats.depth_bins import depth_profile
    from filterstats.results import COLUMNS

    parts = [
        f'<p class="meta">{len(obj.measured)} layers measured, {len(obj.skipped)} skipped; '
        f"parameters: {html.escape(str(obj.params))}</p>",
        "<h2>Layers</h2>",
        _table("layers", obj.to_records(), COLUMNS),
    ]
    profile = depth_profile(obj)
    records, columns = _records_of(profile)
    parts += ["<h2>Depth profile</h2>", _table("depth-profile", records, columns)]
    if figures and obj.measured:
        from matplotlib.figure import Figure

        from filterstats.plotting import plot_metric_vs_depth

        fig = Figure(figsize=(15, 3.6), layout="constrained")
        axes = fig.subplots(1, 3)
        for ax, metric in zip(axes, ("sparsity", "diversity", "orthogonality")):
            plot_metric_vs_depth(obj, metric, ax=ax)
        parts += ["<h2>Figures</h2>", _figure(fig, "metrics versus normalised depth")]
    return parts


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
        "<h2>Summary</h2>",
        _table("summary", *_records_of(summary)),
        f"<h2>By depth (units: {depth.unit}s)</h2>",
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
    if divergence is not None:
        parts += ["<h2>Distribution shift by depth</h2>",
                  _table("divergence", *_records_of(divergence))]  # fmt: skip
    if obj.unmatched:
        items = "".join(f"<li>{html.escape(u)}</li>" for u in obj.unmatched)
        parts += ["<h2>Unmatched units</h2>", f"<ul>{items}</ul>"]
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
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    try:
        temporary.write_text(page, encoding="utf-8")
        temporary.replace(target)
    finally:
        if temporary.exists():
            temporary.unlink()
    return target
