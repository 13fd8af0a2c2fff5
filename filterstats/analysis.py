"""``analyze``: one call from a model to its per-layer filter statistics."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

import torch

from filterstats import metric_table
from filterstats._checks import NanPolicy, check_choice
from filterstats._version import __version__
from filterstats._warnings import FilterStatsWarning
from filterstats.layers import (
    ConvLayer,
    FilterSet,
    KernelSelection,
    SkippedLayer,
    layer_kind,
    selection_text,
)
from filterstats.metrics import Definition, measure
from filterstats.resolve import ModelInput, extract_filters
from filterstats.results import AnalysisParams, FilterReport, LayerRow

if TYPE_CHECKING:
    from filterstats.spectra import ConvSpectra

__all__ = ["analyze"]

#: Metric columns that ``analyze(..., spectra=True)`` takes from the spectra.
SPECTRAL_COLUMNS = ("spectral_norm", "stable_rank", "condition_number")


def _kernel_text(kernel: tuple[int, ...] | None) -> str:
    return "x".join(str(k) for k in kernel) if kernel else ""


def _meta(layer: ConvLayer | SkippedLayer) -> dict[str, Any]:
    """The metadata columns of a layer (measured or skipped), ``None`` where unknown."""
    return {
        "module_type": layer.module_type,
        "depth": layer.depth,
        "conv_depth": layer.conv_depth,
        "conv_depth_norm": math.nan if layer.conv_depth_norm is None else layer.conv_depth_norm,
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "groups": layer.groups,
        "kind": layer_kind(layer.groups, layer.in_channels),
        "kernel_size": _kernel_text(layer.kernel_size),
    }


def analyze(
    model: ModelInput,
    *,
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
    baseline: str | None = None,
    baseline_seeds: int | Sequence[int] = 10,
    spectra: bool = False,
    input_size: Sequence[int] | None = None,
    spectra_options: Mapping[str, Any] | None = None,
) -> FilterReport:
    """Per-layer sparsity, diversity and orthogonality of a model, as a table.

    Resolves the model with [`extract_filters`][filterstats.extract_filters] (the
    one way in: modules, state dicts, checkpoint files, ONNX files, spec strings,
    ``FilterSet``) and measures all selected layers in one batched pass
    ([`measure`][filterstats.measure]). Skipped convolutions appear as rows with
    ``status="skipped"``, their reason and what is known of them. The report's
    columns are the metrics of [`filterstats.metric_table`][filterstats.metric_table].

    Args:
        model: A module, a state dict, a [`FilterSet`][filterstats.FilterSet], or a
            path / model spec such as ``"demo:robust"`` or ``"path/to/checkpoint.pt"``.
        label: Model label for the ``model`` column; defaults to the model's source
            (class name, file name or spec).
        kernel_size: Kernel size to select (``(3, 3)``: the paper), or ``None`` (all).
            The report records the selection that was applied.
        eps: Sparsity threshold, fraction of each layer's largest |weight|.
        definition: ``"paper"`` or ``"torchconvquality"``.
        normalize: Divide diversity by torchconvquality's threshold function.
        nan_policy: ``"propagate"``, ``"raise"`` or ``"omit"`` for NaN/inf weights.
        example_inputs: Input for a forward pass when the model does not trace.
        depth: How to get depths: ``"auto"``, ``"fx"``, ``"forward"``, ``"registration"``.
        device: Compute on this device (weights are copied there); default: where
            the weights are. The model itself is never moved.
        trust_pickle: Allow checkpoint files that need pickled code (can run code).
        baseline: ``"init"``: also score every metric against the same architecture
            re-initialised ``baseline_seeds`` times with each convolution's
            ``reset_parameters`` (``report.baseline``, see
            [`filterstats.baseline`][filterstats.baseline]); needs an ``nn.Module`` or a
            spec that builds one. ``None``: no baseline.
        baseline_seeds: Number of re-initialisations ``k >= 2`` (seeds ``0 .. k-1``),
            or the seeds themselves.
        spectra: Also compute every convolution's spectrum as an operator at its
            input size ([`conv_spectra`][filterstats.spectra.conv_spectra]) and add
            the metric columns ``spectral_norm``, ``stable_rank`` and
            ``condition_number`` to the measured rows (NaN for a layer whose spectrum
            was skipped); the whole spectra table (method, bounds, skipped layers
            with reasons) is ``report.spectra``. Needs an ``nn.Module`` (or a spec
            that builds one) and ``input_size``.
        input_size: One model input without the batch, e.g. ``(3, 32, 32)``; needed
            with ``spectra=True``.
        spectra_options: More options for ``conv_spectra`` (``padding``, ``tol``,
            ``singular_values=True`` for condition numbers, ``dtype``, ...).

    Returns:
        A frozen [`FilterReport`][filterstats.FilterReport]; print it for a table,
        ``.to_pandas()`` for a DataFrame, ``.to_csv(path)`` to save. With a baseline,
        ``report.baseline`` holds the z-scores and the exports add the columns
        ``<metric>_init_mean``, ``_init_std``, ``_init_diff`` and ``_init_z``.

    Examples:
        >>> import torch, filterstats as fs
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Conv2d(16, 16, 3))
        >>> report = fs.analyze(net, label="tiny")
        >>> [row.layer for row in report]
        ['0', '1']
    """
    from filterstats import baseline as baselines

    check_choice("baseline", baseline, baselines.BASELINES)
    seeds = baselines.check_seeds(baseline_seeds) if baseline is not None else ()
    module = None
    if baseline is not None:
        # Before any measuring: a model without an architecture fails at once. A spec is
        # loaded once, here, and its name stays the label.
        module = baselines.require_architecture(model, trust_pickle=trust_pickle)
        if isinstance(model, (str, os.PathLike)):
            label = label or os.fspath(model)
    if spectra and input_size is None:
        raise ValueError(
            "`spectra=True` needs `input_size`, one model input without the batch, e.g. "
            "input_size=(3, 32, 32): the operator of a convolution depends on its input size."
        )
    if not isinstance(spectra, bool):
        raise TypeError(f"`spectra` must be True or False, got {spectra!r}.")
    filters: FilterSet = extract_filters(
        model if module is None else module, kernel_size=kernel_size,
        example_inputs=example_inputs, depth=depth, trust_pickle=trust_pickle,
    )  # fmt: skip
    name = label or filters.source or "model"
    layers = list(filters)
    # ConvLayers, not bare weights: warnings and nan_policy="raise" errors name the layers.
    inputs = [layer if device is None else replace(layer, weight=layer.weight.to(device))
              for layer in layers]  # fmt: skip
    metrics = measure(inputs, eps=eps, definition=definition, normalize=normalize,
                      nan_policy=nan_policy)  # fmt: skip
    computed = [m for m in metric_table.names() if m in metrics.metrics]
    keys = ["n_nonsparse", *computed]
    # One host transfer for every column (float64 all).
    columns: dict[str, list[float]] = {key: [] for key in keys}
    if layers:
        values = [metrics.n_nonsparse, *(metrics.metrics[m] for m in computed)]
        stacked = torch.stack([value.to(torch.float64) for value in values]).cpu()
        columns = dict(zip(keys, stacked.tolist()))
    rows = [
        LayerRow(
            model=name,
            layer=layer.name,
            **_meta(layer),
            n_filters=layer.n_filters,
            n_nonsparse=int(columns["n_nonsparse"][i]),
            shared_with=";".join(layer.shared_with),
            # One NaN object (as read_report gives): rows with NaN values compare equal.
            metrics={m: math.nan if math.isnan(v := columns[m][i]) else v for m in computed},
        )
        for i, layer in enumerate(layers)
    ]
    rows += [
        LayerRow(model=name, layer=s.name, status="skipped", reason=s.reason, **_meta(s))
        for s in filters.skipped
    ]
    settings = metrics.settings
    params = AnalysisParams(
        eps=metrics.eps,
        kernel_size=selection_text(filters.kernel_size),
        definition=definition,
        scale_filters=settings.scale_filters,
        drop_sparse=settings.drop_sparse,
        normalize=settings.normalize,
        strict=settings.strict,
        nan_policy=nan_policy,
        depth_method=filters.depth_method,
        version=__version__,
    )
    spectrum = None
    if spectra:
        assert input_size is not None
        spectrum = _spectra_of(model if module is None else module, input_size, spectra_options,
                               device=device, example_inputs=example_inputs)  # fmt: skip
        rows = _with_spectra(rows, spectrum)
        params = replace(params, spectra=json.dumps(asdict(spectrum.params), sort_keys=True))
    found = None
    if module is not None:
        found = baselines.compute_baseline(
            module, filters, {m: columns[m] for m in computed}, model=name, seeds=seeds,
            params=params, device=device,
            measure_options={"eps": eps, "definition": definition, "normalize": normalize,
                             "nan_policy": nan_policy},
        )  # fmt: skip
    return FilterReport(tuple(rows), params, baseline=found, spectra=spectrum)


def _spectra_of(
    model: Any,
    input_size: Sequence[int],
    options: Mapping[str, Any] | None,
    *,
    device: str | torch.device | None,
    example_inputs: Any = None,
) -> ConvSpectra:
    from filterstats.spectra import conv_spectra

    kwargs: dict[str, Any] = {"progress": False, "device": device}
    if isinstance(example_inputs, torch.Tensor):  # the same input for depths and the shape pass
        kwargs["example_inputs"] = example_inputs
    kwargs.update(options or {})
    for key in ("model", "input_size"):
        if key in kwargs:
            raise ValueError(f"`spectra_options` must not hold {key!r}; pass it to analyze.")
    return conv_spectra(model, input_size=tuple(input_size), **kwargs)


def _with_spectra(rows: list[LayerRow], spectrum: ConvSpectra) -> list[LayerRow]:
    """The measured rows with the spectral metric columns; skipped spectra warned of."""
    by_name = {row.layer: row for row in spectrum.rows}
    missing: list[str] = []
    out = []
    for row in rows:
        if row.status != "ok":
            out.append(row)
            continue
        found = by_name.get(row.layer)
        if found is None or found.status != "ok":
            reason = found.reason if found is not None else "no spectrum row"
            missing.append(f"{row.layer} ({reason})")
            values = dict.fromkeys(SPECTRAL_COLUMNS, math.nan)
        else:
            values = {name: float(getattr(found, name)) for name in SPECTRAL_COLUMNS}
        out.append(replace(row, metrics={**row.metrics, **values}))
    if missing:
        warnings.warn(
            f"spectra of {len(missing)} measured layer(s) were skipped, their spectral "
            f"columns are NaN: {'; '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
            "(all listed in report.spectra.skipped).",
            FilterStatsWarning,
            stacklevel=3,
        )
    return out
