"""Where training started: every metric against the same architecture re-initialised.

A metric value means little without its starting point: freshly initialised 3x3
convolutions already have variance entropies near their maximum and orthogonalities
near 0.95, and training lowers both, for normal and robust models alike.
``fs.analyze(model, baseline="init", baseline_seeds=k)`` therefore re-initialises the
model's convolutions ``k`` times with their own ``reset_parameters`` and reports each
metric also as a difference and a z-score against those ``k`` values, per layer:

``init_mean = mean_s m_s``, ``init_std = sqrt(sum_s (m_s - init_mean)^2 / (k - 1))``,
``diff = value - init_mean``, ``z = diff / init_std``,

where ``m_s`` is the layer's metric after re-initialisation with seed ``s``. A metric
that does not vary at initialisation (``init_std = 0``, e.g. sparsity, which is 0 for
every seed) has ``z = +-inf`` when the model differs from it and NaN when it does not.

How the re-initialisation is done, so that a reader can repeat it: for each seed ``s``,
the CPU generator is seeded with ``s`` and every measured convolution's
``reset_parameters()`` is called, in layer order, on a CPU copy of that convolution.
For a network built of ``nn.Conv*`` that creates its convolutions first, this is what
``torch.manual_seed(s); Net()`` gives. The user's model, its device, mode, hooks and
the global random state are never touched (the copies are made with ``copy.deepcopy``
and re-initialised inside ``torch.random.fork_rng``). Architectures whose constructor
applies its own initialisation (timm's and torchvision's ResNets use
``kaiming_normal_(mode="fan_out")``) are compared with PyTorch's default
initialisation of each module, not with that one.

A convolution without ``reset_parameters`` (quantised and TorchScript convolutions,
custom classes), or whose ``reset_parameters`` does not change its effective weight
(a parametrised weight), is listed in ``InitBaseline.skipped`` with the reason.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from filterstats import metric_table
from filterstats._tables import RowTable, html_table
from filterstats._text import fmt, plural, render_table
from filterstats.layers import ConvLayer, KernelSelection

if TYPE_CHECKING:
    from filterstats._checks import NanPolicy
    from filterstats.layers import FilterSet
    from filterstats.metrics import Definition
    from filterstats.resolve import ModelInput
    from filterstats.results import AnalysisParams

__all__ = [
    "BASELINES",
    "BASELINE_SUFFIXES",
    "BaselineRow",
    "BaselineSkip",
    "InitBaseline",
    "init_baseline",
]

#: Values of ``analyze(..., baseline=...)``: ``None`` (none) or ``"init"``.
BASELINES: tuple[str | None, ...] = (None, "init")

#: Column suffixes a report with a baseline adds per metric in its exports:
#: ``diversity_init_mean``, ``diversity_init_std``, ``diversity_init_diff``,
#: ``diversity_init_z``.
BASELINE_SUFFIXES: tuple[str, ...] = ("_init_mean", "_init_std", "_init_diff", "_init_z")
_FIELDS = ("init_mean", "init_std", "diff", "z")

#: Degrees of freedom removed in the standard deviation over seeds.
STD_DDOF = 1

#: Seeds used when ``baseline_seeds`` is not given.
DEFAULT_SEEDS = 10


@dataclass(frozen=True)
class BaselineRow:
    """One metric of one layer against its re-initialisations.

    Attributes:
        model: Model label.
        layer: Layer name, as in the report.
        metric: Metric name (a column of the metric table).
        value: The model's value.
        init_mean: Mean over the ``n_seeds`` re-initialisations.
        init_std: Standard deviation over them (``ddof=1``).
        diff: ``value - init_mean``.
        z: ``diff / init_std`` (``+-inf`` where ``init_std`` is 0 and ``diff`` is not,
            NaN where both are 0).
        n_seeds: Number of re-initialisations.
    """

    model: str
    layer: str
    metric: str
    value: float
    init_mean: float
    init_std: float
    diff: float
    z: float
    n_seeds: int


@dataclass(frozen=True)
class BaselineSkip:
    """A measured layer left out of the baseline, and why.

    Attributes:
        model: Model label.
        layer: Layer name.
        reason: Why it could not be re-initialised.
    """

    model: str
    layer: str
    reason: str


@dataclass(frozen=True, eq=False)
class InitBaseline(RowTable):
    """Every metric of every layer against the same layers re-initialised ``k`` times.

    A long table: one [`BaselineRow`][filterstats.baseline.BaselineRow] per layer and
    metric. Made by ``fs.analyze(model, baseline="init")`` (held as
    ``FilterReport.baseline``) or [`init_baseline`][filterstats.init_baseline].

    Attributes:
        rows: Layer-metric rows, layers in report order, metrics in table order.
        skipped: Measured layers that could not be re-initialised, with the reason.
        seeds: Seeds of the re-initialisations.
        params: How the metrics were computed (the report's parameters).
        method: ``"reset_parameters"``: how the layers were re-initialised.
    """

    rows: tuple[BaselineRow, ...]
    skipped: tuple[BaselineSkip, ...] = ()
    seeds: tuple[int, ...] = ()
    params: AnalysisParams | None = None
    method: str = "reset_parameters"
    _row_type = BaselineRow

    def __iter__(self) -> Iterator[BaselineRow]:
        return iter(self.rows)

    @property
    def n_seeds(self) -> int:
        """Number of re-initialisations."""
        return len(self.seeds)

    @property
    def metrics(self) -> tuple[str, ...]:
        """Metrics the baseline holds, in metric-table order."""
        return metric_table.in_table_order(row.metric for row in self.rows)

    @property
    def layers(self) -> tuple[str, ...]:
        """Layers in the baseline (``model/layer`` when several models), in order."""
        multi = len({row.model for row in self.rows}) > 1
        return tuple(dict.fromkeys(f"{r.model}/{r.layer}" if multi else r.layer for r in self.rows))

    def get(self, layer: str, metric: str, *, model: str | None = None) -> BaselineRow:
        """The row of one layer and metric.

        Args:
            layer: Layer name.
            metric: Metric name.
            model: Model label, when the baseline holds several models.

        Returns:
            The row.

        Raises:
            KeyError: No such row; the message says what is held.
        """
        for row in self.rows:
            if row.layer == layer and row.metric == metric and model in (None, row.model):
                return row
        raise KeyError(
            f"no baseline row for layer {layer!r} and metric {metric!r}; layers: "
            f"{list(self.layers)[:8]}, metrics: {list(self.metrics)}"
        )

    def values(self, metric: str, field: str = "z") -> list[float]:
        """One field of one metric for every layer, in layer order (for plots, arrays).

        Args:
            metric: Metric name.
            field: ``"value"``, ``"init_mean"``, ``"init_std"``, ``"diff"`` or ``"z"``.

        Returns:
            One value per layer of ``layers``.

        Raises:
            KeyError: Unknown metric or field.
        """
        if field not in ("value", *_FIELDS):
            raise KeyError(f"unknown field {field!r}; fields: value, {', '.join(_FIELDS)}")
        if metric not in self.metrics:
            raise KeyError(f"no metric {metric!r} in the baseline; metrics: {list(self.metrics)}")
        return [float(getattr(row, field)) for row in self.rows if row.metric == metric]

    def provenance(self) -> dict[str, Any]:
        """How the baseline was made: method, seeds, ``ddof``, skipped layers.

        Returns:
            A JSON-ready dict (stored in every export).
        """
        return {
            "baseline": "init",
            "method": self.method,
            "seeds": list(self.seeds),
            "n_seeds": self.n_seeds,
            "std_ddof": STD_DDOF,
            "skipped": [[s.model, s.layer, s.reason] for s in self.skipped],
        }

    def _header(self) -> dict[str, Any]:
        params = {} if self.params is None else asdict(self.params)
        return {**params, "baseline": self.provenance()}

    def _export_provenance(self) -> dict[str, Any]:
        return self._header()

    # ---------------------------------------------------------------- display
    @property
    def title(self) -> str:
        """One line: which model, how many layers and seeds, what z is."""
        models = ", ".join(dict.fromkeys(row.model for row in self.rows)) or "empty"
        n_layers = len(self.layers)
        return (
            f"InitBaseline: {models} — {plural(n_layers, 'layer')} against {self.n_seeds} "
            f"re-initialisations ({self.method}, seeds {_seeds_text(self.seeds)}), "
            f"{len(self.skipped)} skipped; z = (value - init mean) / init std (ddof={STD_DDOF})"
        )

    def table(self) -> str:
        """The baseline as text: per layer, each default metric, its init mean ± std and z.

        Returns:
            The table, then the skipped layers with their reasons.
        """
        shown = [m for m in metric_table.default_metrics() if m in self.metrics]
        multi = len({row.model for row in self.rows}) > 1
        head = [*(["model"] if multi else []), "layer"]
        for metric in shown:
            head += [metric, f"{metric} init", "z"]
        by_layer: dict[tuple[str, str], dict[str, BaselineRow]] = {}
        for row in self.rows:
            by_layer.setdefault((row.model, row.layer), {})[row.metric] = row
        lines = []
        for (model, layer), values in by_layer.items():
            cells = [*([model] if multi else []), layer]
            for metric in shown:
                digits = metric_table.get_metric(metric).digits
                entry = values.get(metric)
                if entry is None:
                    cells += ["", "", ""]
                    continue
                init = f"{fmt(entry.init_mean, digits)} ± {fmt(entry.init_std, digits)}"
                cells += [fmt(entry.value, digits), init, _z_text(entry.z)]
            lines.append(cells)
        parts = [render_table(self.title, head, lines)]
        if self.skipped:
            skip_lines = [[*([s.model] if multi else []), s.layer, s.reason] for s in self.skipped]
            skip_head = [*(["model"] if multi else []), "layer", "reason"]
            parts.append(render_table("not in the baseline:", skip_head, skip_lines))
        return "\n".join(parts)

    def __repr__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        """The long table as HTML, how it was made as the caption; skipped layers after."""
        parts = [html_table(self.to_records(), self.columns, caption=self.title)]
        if self.skipped:
            records = [asdict(s) for s in self.skipped]
            parts.append(
                html_table(records, ["model", "layer", "reason"], caption="not in the baseline",
                           wrap=("reason",))
            )  # fmt: skip
        return "".join(parts)

    # ---------------------------------------------------------------- wide form
    def columns_for(self, metrics: Sequence[str]) -> list[str]:
        """The wide columns a report adds for ``metrics``: ``<metric>_init_mean`` etc.

        Args:
            metrics: Metric names.

        Returns:
            Four columns per metric held here, in ``BASELINE_SUFFIXES`` order.
        """
        held = set(self.metrics)
        return [f"{m}{suffix}" for m in metrics if m in held for suffix in BASELINE_SUFFIXES]

    def wide(self, model: str, layer: str) -> dict[str, float]:
        """The wide columns of one report row (NaN for a layer not in the baseline).

        Args:
            model: The row's model label.
            layer: The row's layer name.

        Returns:
            ``{"<metric>_init_mean": ..., ...}`` for every metric held here.
        """
        index = self._index()
        values: dict[str, float] = {}
        for metric in self.metrics:
            row = index.get((model, layer, metric))
            for suffix, name in zip(BASELINE_SUFFIXES, _FIELDS, strict=True):
                values[f"{metric}{suffix}"] = math.nan if row is None else getattr(row, name)
        return values

    def _index(self) -> dict[tuple[str, str, str], BaselineRow]:
        cached: dict[tuple[str, str, str], BaselineRow] | None = self.__dict__.get("_cache")
        if cached is None:
            cached = {(r.model, r.layer, r.metric): r for r in self.rows}
            object.__setattr__(self, "_cache", cached)
        return cached

    def relabel(self, label: str) -> InitBaseline:
        """The same baseline with every row's model label replaced.

        Args:
            label: The new model label.

        Returns:
            A new baseline.
        """
        return replace(
            self,
            rows=tuple(replace(row, model=label) for row in self.rows),
            skipped=tuple(replace(skip, model=label) for skip in self.skipped),
        )

    def for_model(self, model: str) -> InitBaseline:
        """The rows and skipped layers of one model.

        Args:
            model: A model label.

        Returns:
            A new baseline holding that model only.
        """
        return replace(
            self,
            rows=tuple(row for row in self.rows if row.model == model),
            skipped=tuple(skip for skip in self.skipped if skip.model == model),
        )

    @classmethod
    def concat(cls, baselines: Sequence[InitBaseline]) -> InitBaseline:
        """Join the baselines of several models (seeds and parameters of the first).

        Args:
            baselines: Baselines to join.

        Returns:
            One baseline with all rows and skipped layers.
        """
        first = baselines[0]
        return cls(
            tuple(row for b in baselines for row in b.rows),
            tuple(skip for b in baselines for skip in b.skipped),
            first.seeds,
            first.params,
            first.method,
        )

    @classmethod
    def from_wide(
        cls,
        records: Sequence[Mapping[str, Any]],
        provenance: Mapping[str, Any],
        params: AnalysisParams | None,
    ) -> InitBaseline:
        """Rebuild a baseline from the wide columns of a report's export.

        Args:
            records: The report's rows (with ``model``, ``layer``, ``status``, the metric
                columns and the baseline columns), values already converted.
            provenance: The ``"baseline"`` entry of the export's parameters.
            params: The report's parameters.

        Returns:
            The baseline the report was written with.
        """
        seeds = tuple(int(s) for s in provenance.get("seeds", ()))
        rows = []
        for record in records:
            if record.get("status") != "ok":
                continue
            for key in record:
                if not key.endswith(BASELINE_SUFFIXES[0]):
                    continue
                metric = key[: -len(BASELINE_SUFFIXES[0])]
                got = [_number(record.get(f"{metric}{suffix}")) for suffix in BASELINE_SUFFIXES]
                if math.isnan(got[0]):
                    continue  # a layer not in the baseline
                # z from diff and std: JSON holds no inf (a std of 0 gives z = +-inf).
                mean, std, diff = got[:3]
                rows.append(BaselineRow(str(record["model"]), str(record["layer"]), metric,
                                        _number(record.get(metric)), mean, std, diff,
                                        _z(diff, std), len(seeds)))  # fmt: skip
        skipped = tuple(BaselineSkip(*map(str, item)) for item in provenance.get("skipped", ()))
        return cls(tuple(rows), skipped, seeds, params, str(provenance.get("method", "")))


def _number(value: Any) -> float:
    if value in (None, "", "nan"):
        return math.nan
    return float(value)


def _z_text(z: float) -> str:
    if math.isinf(z):
        return "inf" if z > 0 else "-inf"
    return "nan" if math.isnan(z) else f"{z:.1f}"


def _seeds_text(seeds: Sequence[int]) -> str:
    if not seeds:
        return "none"
    if list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(str(s) for s in seeds)


# ------------------------------------------------------------------ computing


def check_seeds(seeds: int | Sequence[int], *, argument: str = "baseline_seeds") -> tuple[int, ...]:
    """The seeds of a baseline: ``k`` gives ``0 .. k-1``; at least two, distinct.

    Args:
        seeds: A count ``k >= 2`` or a sequence of distinct ints.
        argument: Name of the argument in error messages.

    Returns:
        The seeds.

    Raises:
        ValueError: Fewer than two seeds, repeated or negative seeds, or not ints.
    """
    if isinstance(seeds, bool):
        raise TypeError(f"`{argument}` must be an int k >= 2 or a sequence of ints, got a bool.")
    if isinstance(seeds, int):
        if seeds < 2:
            raise ValueError(
                f"`{argument}` must be at least 2 (a standard deviation needs two "
                f"re-initialisations), got {seeds}; e.g. {argument}={DEFAULT_SEEDS}."
            )
        return tuple(range(seeds))
    values = tuple(seeds)
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in values):
        raise ValueError(f"`{argument}` must hold non-negative ints, got {values!r}.")
    if len(values) < 2 or len(set(values)) != len(values):
        raise ValueError(f"`{argument}` must hold at least two distinct seeds, got {values!r}.")
    return values


def require_architecture(model: Any, *, trust_pickle: bool = False) -> nn.Module:
    """The module to re-initialise, or one clear error when ``model`` has no architecture.

    Args:
        model: What was passed to ``analyze``.
        trust_pickle: As in ``extract_filters``.

    Returns:
        The module (a spec such as ``"demo:robust"`` or ``"timm:resnet18"`` is loaded).

    Raises:
        TypeError: ``model`` holds weights only (a state dict, checkpoint or ONNX
            file, a ``FilterSet``, a tensor); the message names the fix.
    """
    from filterstats.resolve import runnable_module

    try:
        return runnable_module(model, argument="model", trust_pickle=trust_pickle)
    except TypeError as error:
        held = os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
        raise TypeError(
            f"`baseline='init'` re-initialises the architecture, and `model` ({held}) holds "
            "weights only: build the network, load the weights into it "
            "(net.load_state_dict(state)) and pass the nn.Module as `model`, or use a spec "
            "that builds one ('demo:robust', 'timm:resnet18@weights.safetensors')."
        ) from error


def _conv_of(module: nn.Module) -> dict[str, nn.Module]:
    from filterstats.extract import conv_modules

    _, conv_names = conv_modules(module)
    return {name: conv for conv, names in conv_names.items() for name in names}


def _reinitialised(conv: nn.Module, seed: int) -> torch.Tensor:
    """The effective weight of ``conv`` after ``reset_parameters`` with CPU seed ``seed``."""
    torch.default_generator.manual_seed(seed)
    conv.reset_parameters()  # type: ignore[operator]
    return _effective_weight(conv).clone()


def _copies(
    module: nn.Module, layers: Sequence[ConvLayer], model: str
) -> tuple[list[tuple[ConvLayer, nn.Module]], list[BaselineSkip]]:
    """A CPU copy of every measured convolution that re-initialises, and the others."""
    convs = _conv_of(module)
    kept: list[tuple[ConvLayer, nn.Module]] = []
    skipped: list[BaselineSkip] = []
    with torch.random.fork_rng(devices=[]):
        for layer in layers:
            conv = convs.get(layer.name)
            reset = getattr(conv, "reset_parameters", None)
            if conv is None or not callable(reset):
                kind = type(conv).__name__ if conv is not None else layer.module_type
                skipped.append(BaselineSkip(model, layer.name, f"{kind} has no reset_parameters"))
                continue
            try:
                twin = copy.deepcopy(conv).to("cpu")
                first, second = _reinitialised(twin, 0), _reinitialised(twin, 1)
            except Exception as error:  # any failure is this layer's reason, listed
                reason = f"re-initialising {type(conv).__name__} failed ({error})"
                skipped.append(BaselineSkip(model, layer.name, reason))
                continue
            if first.shape != layer.weight.shape or torch.equal(first, second):
                reason = (
                    f"{type(conv).__name__}.reset_parameters does not change its effective "
                    "weight: the same for two seeds (a parametrised, constant or custom weight)"
                )
                skipped.append(BaselineSkip(model, layer.name, reason))
                continue
            kept.append((layer, twin))
    return kept, skipped


def compute_baseline(
    module: nn.Module,
    filters: FilterSet,
    values: Mapping[str, Sequence[float]],
    *,
    model: str,
    seeds: Sequence[int],
    params: AnalysisParams,
    measure_options: Mapping[str, Any],
    device: str | torch.device | None = None,
) -> InitBaseline:
    """The baseline of the measured layers of ``filters`` (see the module docstring).

    Args:
        module: The model's module (never changed: its convolutions are copied).
        filters: The measured layers, as ``analyze`` selected them.
        values: The model's values, ``{metric: [one per layer of filters]}``.
        model: Model label.
        seeds: Seeds of the re-initialisations.
        params: The report's parameters.
        measure_options: Keyword arguments for ``measure`` (eps, definition, ...).
        device: Where to compute the metrics; default: where each layer's weights are.

    Returns:
        The baseline.
    """
    from filterstats.metrics import measure

    layers = list(filters)
    kept, skipped = _copies(module, layers, model)
    position = {layer.name: i for i, layer in enumerate(layers)}
    computed = [m for m in values if values[m]]
    samples = np.full((len(seeds), len(computed), len(kept)), math.nan)
    if kept:
        with torch.random.fork_rng(devices=[]):
            for s, seed in enumerate(seeds):
                torch.default_generator.manual_seed(seed)
                inputs = []
                for layer, twin in kept:
                    twin.reset_parameters()  # type: ignore[operator]
                    weight = _effective_weight(twin)
                    target = device if device is not None else layer.weight.device
                    inputs.append(replace(layer, weight=weight.to(target)))
                result = measure(inputs, **measure_options)
                stacked = torch.stack([result.metrics[m].to(torch.float64) for m in computed])
                samples[s] = stacked.cpu().numpy()  # one host transfer per seed
    mean = samples.mean(axis=0)
    std = samples.std(axis=0, ddof=STD_DDOF)
    rows = []
    for j, (layer, _) in enumerate(kept):
        for c, metric in enumerate(computed):
            value = float(values[metric][position[layer.name]])
            diff = value - float(mean[c, j])
            rows.append(BaselineRow(model, layer.name, metric, value, float(mean[c, j]),
                                    float(std[c, j]), diff, _z(diff, float(std[c, j])),
                                    len(seeds)))  # fmt: skip
    return InitBaseline(tuple(rows), tuple(skipped), tuple(seeds), params)


def _effective_weight(conv: nn.Module) -> torch.Tensor:
    """The weight of one convolution as every table reads it (through the one resolver)."""
    from filterstats.resolve import extract_filters

    return extract_filters(conv, kernel_size=None, depth="registration").layers[0].weight


def _z(diff: float, std: float) -> float:
    if std > 0:
        return diff / std
    if math.isnan(std) or math.isnan(diff):
        return math.nan
    return math.nan if diff == 0 else math.copysign(math.inf, diff)


def init_baseline(
    model: ModelInput,
    *,
    seeds: int | Sequence[int] = DEFAULT_SEEDS,
    label: str | None = None,
    kernel_size: KernelSelection = (3, 3),
    eps: float = 0.01,
    definition: Definition = "paper",
    normalize: bool | None = None,
    nan_policy: NanPolicy = "propagate",
    example_inputs: Any = None,
    depth: str = "auto",
    device: str | torch.device | None = None,
    trust_pickle: bool = False,
) -> InitBaseline:
    """Every metric of a model against the same architecture re-initialised ``seeds`` times.

    The same as ``fs.analyze(model, baseline="init", baseline_seeds=seeds).baseline``
    (see [`filterstats.baseline`][filterstats.baseline] for what is computed).

    Args:
        model: An ``nn.Module``, or a spec that builds one (``"demo:robust"``,
            ``"timm:resnet18@weights.safetensors"``); state dicts, checkpoint and ONNX
            files hold no architecture and are refused.
        seeds: Number of re-initialisations ``k >= 2`` (seeds ``0 .. k-1``) or the seeds.
        label: Model label; default: the model's source.
        kernel_size: Kernel size to select, as in ``analyze``.
        eps: Sparsity threshold, as in ``analyze``.
        definition: ``"paper"`` or ``"torchconvquality"``.
        normalize: As in ``analyze``.
        nan_policy: As in ``analyze``.
        example_inputs: As in ``analyze``.
        depth: As in ``analyze``.
        device: As in ``analyze``.
        trust_pickle: As in ``analyze``.

    Returns:
        An [`InitBaseline`][filterstats.baseline.InitBaseline]: one row per layer and
        metric with the value, init mean and std, difference and z-score.

    Examples:
        >>> import torch, filterstats as fs
        >>> base = fs.init_baseline(fs.demo.load_model("robust"), seeds=4)
        >>> row = base.get("conv3", "orthogonality")
        >>> row.value < row.init_mean, row.z < -3
        (True, True)
    """
    from filterstats.analysis import analyze

    report = analyze(
        model, label=label, kernel_size=kernel_size, eps=eps, definition=definition,
        normalize=normalize, nan_policy=nan_policy, example_inputs=example_inputs,
        depth=depth, device=device, trust_pickle=trust_pickle, baseline="init",
        baseline_seeds=seeds,
    )  # fmt: skip
    assert report.baseline is not None
    return report.baseline
