"""Filter metrics along the saved checkpoints of a run, and two groups of runs compared.

``trajectory`` measures the checkpoints of one run as a tracker would have measured the
weights during training: the same [`FilterHistory`][filterstats.FilterHistory] (the
per-layer metrics of [`analyze`][filterstats.analyze] and the drift from the first
checkpoint). ``compare_trajectories`` asks, per depth bin and metric, from which step on
a robust and a normal run differ beyond their run-to-run variation.

Step numbers of file names (``step=None``): the integer after ``step`` in the file
name (``step=1200``, ``step-1200``, ``step_1200``, ``step1200``; Lightning's
``epoch=3-step=1200.ckpt`` gives 1200); otherwise the last integer in the file name
without its suffix (``ckpt_000300.pt`` gives 300, ``epoch=7.ckpt`` 7); a name without
any integer (the directory is not read) is an error that asks for ``step=``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filterstats import metric_table
from filterstats._checks import NanPolicy
from filterstats._text import fmt, render_table
from filterstats._version import __version__
from filterstats.layers import FilterSet, KernelSelection
from filterstats.metrics import Definition
from filterstats.resolve import ModelInput, extract_filters
from filterstats.tracking import (
    DRIFT_METRICS,
    UNMOVED_COSINE,
    FilterHistory,
    HistoryRow,
    TrackingParams,
    measure_snapshot,
)

__all__ = [
    "TrajectoryComparison",
    "compare_trajectories",
    "step_from_name",
    "trajectory",
]

_STEP = re.compile(r"step[=_-]?(\d+)", re.IGNORECASE)
_INTEGER = re.compile(r"\d+")


def step_from_name(path: str | os.PathLike[str]) -> int:
    """The training step in a checkpoint's file name (rule: see the module docstring).

    Args:
        path: A checkpoint path or spec.

    Returns:
        The step.

    Raises:
        ValueError: The name holds no integer; pass ``step=`` to ``trajectory``.

    Examples:
        >>> step_from_name("runs/a/epoch=3-step=1200.ckpt"), step_from_name("ckpt_0300.pt")
        (1200, 300)
    """
    name = Path(os.fspath(path)).name
    stem = name.split(".", 1)[0] if not name.startswith(".") else name
    found = _STEP.findall(name)
    if found:
        return int(found[-1])
    numbers = _INTEGER.findall(stem)
    if not numbers:
        raise ValueError(
            f"no step in the file name {name!r}: name checkpoints with their step "
            "('ckpt_000300.pt', 'step=300.ckpt') or pass `step=[...]`, one per checkpoint."
        )
    return int(numbers[-1])


def trajectory(
    checkpoints: Sequence[ModelInput],
    step: Sequence[int] | None = None,
    *,
    label: str | None = None,
    kernel_size: KernelSelection = (3, 3),
    eps: float = 0.01,
    definition: Definition = "paper",
    normalize: bool | None = None,
    nan_policy: NanPolicy = "propagate",
    unmoved_cosine: float = UNMOVED_COSINE,
    depth: str = "auto",
    example_inputs: Any = None,
    trust_pickle: bool = False,
    out: str | os.PathLike[str] | None = None,
) -> FilterHistory:
    """The filter metrics of the checkpoints of one run, in step order.

    Every checkpoint goes through [`extract_filters`][filterstats.extract_filters] (paths,
    spec strings, modules, state dicts); all must hold the same measured layers. Drift is
    measured from the checkpoint with the smallest step. One checkpoint is loaded at a
    time (the first one's selected weights are kept for drift).

    Args:
        checkpoints: The run's checkpoints: paths or specs (``"ckpts/step=300.pt"``,
            ``"timm:resnet18@ckpt_300.safetensors"``), modules or state dicts.
        step: One step per checkpoint; ``None``: parsed from the file names
            ([`step_from_name`][filterstats.trajectories.step_from_name]).
        label: Model label of the rows; default the first checkpoint's source.
        kernel_size: As in ``analyze``.
        eps: As in ``analyze``.
        definition: As in ``analyze``.
        normalize: As in ``analyze``.
        nan_policy: As in ``analyze``.
        unmoved_cosine: Cosine from which a filter counts as unmoved.
        depth: As in ``analyze``.
        example_inputs: As in ``analyze``.
        trust_pickle: As in ``analyze``.
        out: A history CSV file (a [`CSVSink`][filterstats.CSVSink]) that each
            checkpoint's rows are appended to as it is measured. Calling again with
            the same file resumes: the steps it holds are read back, not measured
            again (the first checkpoint is always read, for the drift reference).

    Returns:
        A [`FilterHistory`][filterstats.FilterHistory] (``every=0``: steps as given).

    Raises:
        ValueError: No checkpoints, steps missing or repeated, or checkpoints with
            different layers.
    """
    items = list(checkpoints)
    if not items:
        raise ValueError("`checkpoints` is empty: pass the run's checkpoint paths")
    if step is None:
        if not all(isinstance(item, (str, os.PathLike)) for item in items):
            raise ValueError(
                "steps can only be read from file names: pass `step=[...]` for modules or "
                "state dicts"
            )
        steps = [step_from_name(item) for item in items]  # type: ignore[arg-type]
    else:
        steps = [int(s) for s in step]
        if len(steps) != len(items):
            raise ValueError(f"`step` has {len(steps)} values for {len(items)} checkpoints")
    if len(set(steps)) != len(steps):
        repeated = sorted({s for s in steps if steps.count(s) > 1})
        raise ValueError(f"steps {repeated} appear more than once in `checkpoints`")
    order = sorted(range(len(items)), key=lambda i: steps[i])
    options = {"kernel_size": kernel_size, "eps": eps, "definition": definition,
               "normalize": normalize, "nan_policy": nan_policy}  # fmt: skip
    rows: list[HistoryRow] = []
    sink = None
    done: dict[int, list[HistoryRow]] = {}
    if out is not None:
        from filterstats.tracking import CSVSink, read_history

        sink = CSVSink(out)
        if sink.last_step is not None:
            for row in read_history(out):
                done.setdefault(row.step, []).append(row)
    reference: dict[str, Any] = {}
    params: TrackingParams | None = None
    skipped: tuple[Any, ...] = ()
    names: tuple[str, ...] = ()
    for position, i in enumerate(order):
        if position > 0 and steps[i] in done:
            rows.extend(done[steps[i]])  # measured by an earlier call
            continue
        filters: FilterSet = extract_filters(
            items[i], kernel_size=kernel_size, depth=depth, example_inputs=example_inputs,
            trust_pickle=trust_pickle, argument="checkpoints",
        )  # fmt: skip
        item = items[i]
        where = os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"checkpoint #{i}"
        if params is None:
            names = filters.names
            if not names:
                raise ValueError(f"checkpoint {where} has no selected convolution")
            reference = {layer.name: layer.weight.detach().clone() for layer in filters}
            name = label or filters.source or "model"
        elif filters.names != names:
            raise ValueError(
                f"checkpoint {where} holds the layers {list(filters.names)[:6]}, the first "
                f"checkpoint {list(names)[:6]}: a trajectory follows one architecture"
            )
        report, snapshot = measure_snapshot(
            filters, reference, steps[i], label=name, unmoved_cosine=unmoved_cosine,
            options=options,
        )  # fmt: skip
        if params is None:
            skipped = report.skipped
            params = TrackingParams(
                analysis=report.params, every=0, unmoved_cosine=unmoved_cosine,
                reference_step=steps[i], label=name, n_layers=len(names),
            )  # fmt: skip
        if steps[i] in done:
            rows.extend(done[steps[i]])
            continue
        rows.extend(snapshot)
        if sink is not None:
            sink.set_skipped(skipped)
            sink.write(snapshot, [], params)
    if sink is not None:
        sink.close()
    assert params is not None
    return FilterHistory(tuple(rows), params, skipped)


# --------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class TrajectoryComparison:
    """Two groups of runs compared per metric, depth bin and step.

    Attributes:
        rows: One record per (metric, bin, step): ``metric``, ``bin``, ``step``,
            ``difference`` (mean of group a minus mean of group b), ``low``, ``high``
            (its interval), ``n_a``, ``n_b`` (runs).
        diverged: ``{(metric, bin): step}``: the first step from which every later
            interval excludes 0 (``None``: never, or not at the last step).
        confidence: Confidence level of the intervals.
        paired: Whether the runs were paired (run ``i`` of a with run ``i`` of b).
        bins: Depth bins used.
        labels: Names of the two groups.
        provenance: How it was made: the runs' analysis parameters (definition, eps,
            kernel selection), drift threshold, runs per group, intervals, depth bins,
            library version. Printed on the ``how:`` line and carried by every export.
    """

    rows: tuple[Mapping[str, Any], ...]
    diverged: Mapping[tuple[str, str], int | None] = field(default_factory=dict)
    confidence: float = 0.95
    paired: bool = False
    bins: int = 4
    labels: tuple[str, str] = ("a", "b")
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def to_records(self) -> list[dict[str, Any]]:
        """The rows as plain dicts.

        Returns:
            One dict per (metric, bin, step).
        """
        return [dict(r) for r in self.rows]

    def to_pandas(self) -> Any:
        """The rows as a DataFrame (needs ``filterstats[pandas]``), provenance in ``attrs``.

        Returns:
            One row per (metric, bin, step).
        """
        from filterstats._optional import require

        pd = require("pandas", extra="pandas")
        frame = pd.DataFrame(self.to_records())
        frame.attrs["filterstats"] = dict(self.provenance)
        return frame

    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """The rows as CSV, after a ``# filterstats {provenance json}`` first line.

        Args:
            path: Written there (atomically) when given.

        Returns:
            The CSV text.
        """
        import csv
        import io
        import json

        from filterstats._files import atomic_write_text

        out = io.StringIO()
        out.write(f"# filterstats {json.dumps(dict(self.provenance), sort_keys=True)}\n")
        columns = list(self.rows[0]) if self.rows else ["metric", "bin", "step"]
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.to_records())
        text = out.getvalue()
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """``{"filterstats": provenance, "diverged": [...], "rows": [...]}`` as JSON.

        Args:
            path: Written there (atomically) when given.

        Returns:
            The JSON text.
        """
        import json

        from filterstats._files import atomic_write_text
        from filterstats._tables import json_value

        diverged = [{"metric": m, "bin": b, "step": step} for (m, b), step in self.diverged.items()]
        rows = [{k: json_value(v) for k, v in r.items()} for r in self.to_records()]
        text = json.dumps(
            {"filterstats": dict(self.provenance), "diverged": diverged, "rows": rows},
            indent=1, allow_nan=False,
        )  # fmt: skip
        if path is not None:
            atomic_write_text(path, text)
        return text

    def _repr_html_(self) -> str:
        from filterstats._tables import html_table

        records = [{"metric": m, "bin": b, "diverged from step": "never" if s is None else s}
                   for (m, b), s in self.diverged.items()]  # fmt: skip
        caption = " | ".join(repr(self).split("\n", 2)[:2])
        return html_table(records, ["metric", "bin", "diverged from step"], caption=caption)

    def __repr__(self) -> str:
        head = ["metric", "bin", "diverged from step"]
        lines = [
            [metric, label, "never" if step is None else str(step)]
            for (metric, label), step in self.diverged.items()
        ]
        kind = "paired" if self.paired else "Welch"
        title = (
            f"TrajectoryComparison: {self.labels[0]} - {self.labels[1]}, {kind} "
            f"{self.confidence:.0%} t-intervals over runs, {self.bins} depth bins; a bin "
            "diverged from the first step after which every interval excludes 0"
        )
        how = "how: " + ", ".join(f"{k}={v}" for k, v in self.provenance.items())
        return render_table(f"{title}\n{how}" if self.provenance else title, head, lines)

    def table(self, metric: str) -> str:
        """One metric's differences per step and bin, as text.

        Args:
            metric: A compared metric.

        Returns:
            The table.
        """
        head = ["bin", "step", "difference", "low", "high"]
        lines = [
            [r["bin"], str(r["step"]), fmt(r["difference"]), fmt(r["low"]), fmt(r["high"])]
            for r in self.rows
            if r["metric"] == metric
        ]
        return render_table(f"{metric}: {self.labels[0]} - {self.labels[1]}", head, lines)


def _as_runs(runs: FilterHistory | Sequence[FilterHistory], argument: str) -> list[FilterHistory]:
    items = [runs] if isinstance(runs, FilterHistory) else list(runs)
    if not items or not all(isinstance(r, FilterHistory) for r in items):
        raise TypeError(
            f"`{argument}` must be a FilterHistory or a sequence of them (one per run, e.g. "
            "per seed), from FilterTracker.history(), fs.trajectory or fs.read_history"
        )
    return items


def compare_trajectories(
    run_a: FilterHistory | Sequence[FilterHistory],
    run_b: FilterHistory | Sequence[FilterHistory],
    *,
    metrics: Sequence[str] | None = None,
    bins: int = 4,
    confidence: float = 0.95,
    paired: bool = False,
    labels: tuple[str, str] = ("a", "b"),
) -> TrajectoryComparison:
    """Per depth bin: from which step on do two groups of runs differ?

    The unit is the run: each run's metrics are pooled per (step, depth bin) as in
    [`FilterHistory.by_depth_bin`][filterstats.FilterHistory.by_depth_bin]; at every step
    that all runs have, the difference of the group means gets a t-interval over runs
    (Welch's, or over the paired differences with ``paired=True``, e.g. a normal and a
    robust run from the same seed). A bin has *diverged* from the first step after
    which every interval excludes 0. Layers are never the unit, so one run per group
    gives no interval: pass several runs (seeds) per group. The intervals are pointwise
    (not corrected for the number of steps): "stays outside from step s on" is a
    description of the curves, not a test at level ``confidence``.

    Args:
        run_a: The runs of group a (e.g. the robust seeds).
        run_b: The runs of group b (e.g. the normal seeds).
        metrics: Metrics to compare; default the metric table's default ones and the
            drift columns.
        bins: Depth bins (equal-width bins of the normalised depth, the first conv
            depth in its own bin).
        confidence: Confidence level of each interval.
        paired: Pair run ``i`` of a with run ``i`` of b (same length needed).
        labels: Names of the groups in the printed table.

    Returns:
        A [`TrajectoryComparison`][filterstats.trajectories.TrajectoryComparison].

    Raises:
        ValueError: Fewer than two runs per group, unpaired lengths, or no common step.
    """
    from scipy import stats

    a_runs, b_runs = _as_runs(run_a, "run_a"), _as_runs(run_b, "run_b")
    if len(a_runs) < 2 or len(b_runs) < 2:
        raise ValueError(
            f"an interval over runs needs at least two runs per group, got {len(a_runs)} "
            f"and {len(b_runs)}: pass the histories of several seeds (layers of one run "
            "are not independent samples)"
        )
    if paired and len(a_runs) != len(b_runs):
        raise ValueError(
            f"`paired` needs as many runs in a as in b: {len(a_runs)} vs {len(b_runs)}"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}")
    all_runs = [*a_runs, *b_runs]
    common = set(all_runs[0].steps)
    for run in all_runs[1:]:
        common &= set(run.steps)
    if not common:
        raise ValueError("the runs share no step: record them with the same `every`")
    steps = sorted(common)
    held = set.intersection(*(set(run.metrics) for run in all_runs))
    wanted = list(metrics) if metrics is not None else [
        m for m in (*metric_table.default_metrics(), *DRIFT_METRICS) if m in held
    ]  # fmt: skip
    for name in wanted:
        if name not in held:
            raise KeyError(f"metric {name!r} is not in every run; held: {sorted(held)}")

    def pooled(run: FilterHistory) -> dict[tuple[int, str], Mapping[str, Any]]:
        return {(r["step"], r["bin"]): r for r in run.by_depth_bin(bins=bins)}

    a_pooled, b_pooled = [pooled(r) for r in a_runs], [pooled(r) for r in b_runs]
    bin_order: dict[str, int] = {}
    for table in (*a_pooled, *b_pooled):
        for (_, label), record in table.items():
            bin_order[label] = record["bin_index"]
    rows: list[dict[str, Any]] = []
    diverged: dict[tuple[str, str], int | None] = {}
    for metric in wanted:
        for label in sorted(bin_order, key=bin_order.__getitem__):
            outside: list[tuple[int, bool]] = []
            for step in steps:
                a = [t[(step, label)][metric] for t in a_pooled if (step, label) in t]
                b = [t[(step, label)][metric] for t in b_pooled if (step, label) in t]
                difference, low, high = _interval(a, b, confidence, paired, stats)
                rows.append({"metric": metric, "bin": label, "step": step,
                             "difference": difference, "low": low, "high": high,
                             "n_a": len(a), "n_b": len(b)})  # fmt: skip
                outside.append((step, math.isfinite(low) and (low > 0 or high < 0)))
            first: int | None = None
            for step, out in reversed(outside):
                if not out:
                    break
                first = step
            diverged[(metric, label)] = first
    run_params = all_runs[0].params
    analysis = run_params.analysis
    provenance = {
        "definition": analysis.definition, "eps": analysis.eps,
        "kernel_size": analysis.kernel_size, "unmoved_cosine": run_params.unmoved_cosine,
        "labels": f"{labels[0]} - {labels[1]}", "n_runs_a": len(a_runs),
        "n_runs_b": len(b_runs), "unit": "run",
        "interval": f"{'paired' if paired else 'Welch'} t, {confidence:.0%}",
        "bins": bins, "steps": len(steps), "version": __version__,
    }  # fmt: skip
    differing = sorted({
        f"{k}={getattr(run.params.analysis, k)}" for run in all_runs
        for k in ("definition", "eps", "kernel_size")
        if getattr(run.params.analysis, k) != getattr(analysis, k)
    })  # fmt: skip
    if differing:
        raise ValueError(
            "the runs were measured with different parameters "
            f"(first run: definition={analysis.definition}, eps={analysis.eps}, "
            f"kernel_size={analysis.kernel_size}; others: {', '.join(differing)}): track "
            "them alike before comparing"
        )
    return TrajectoryComparison(tuple(rows), diverged, confidence, paired, bins, labels, provenance)


def _interval(
    a: Sequence[float], b: Sequence[float], confidence: float, paired: bool, stats: Any
) -> tuple[float, float, float]:
    """Difference of means and its t-interval (NaN when it cannot be formed)."""
    nan = (math.nan, math.nan, math.nan)
    a = [v for v in a if math.isfinite(v)] if not paired else list(a)
    b = [v for v in b if math.isfinite(v)] if not paired else list(b)
    if paired:
        pairs = [x - y for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
        if len(pairs) < 2:
            return nan
        mean = sum(pairs) / len(pairs)
        var = sum((d - mean) ** 2 for d in pairs) / (len(pairs) - 1)
        se, df = math.sqrt(var / len(pairs)), float(len(pairs) - 1)
    else:
        if len(a) < 2 or len(b) < 2:
            return nan
        mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
        var_a = sum((v - mean_a) ** 2 for v in a) / (len(a) - 1)
        var_b = sum((v - mean_b) ** 2 for v in b) / (len(b) - 1)
        mean = mean_a - mean_b
        sa, sb = var_a / len(a), var_b / len(b)
        se = math.sqrt(sa + sb)
        denominator = (sa**2 / (len(a) - 1) if sa else 0.0) + (sb**2 / (len(b) - 1) if sb else 0.0)
        df = (sa + sb) ** 2 / denominator if denominator > 0 else math.inf
    if se == 0:
        return mean, mean, mean
    t = float(stats.t.ppf(0.5 + confidence / 2, df))
    return mean, mean - t * se, mean + t * se
