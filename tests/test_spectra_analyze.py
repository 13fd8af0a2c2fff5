"""analyze(..., spectra=True): the operator spectra next to the paper's metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import filterstats as fs
from filterstats import FilterStatsWarning
from filterstats.spectra import ConvSpectra, conv_spectra


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1),
        nn.Conv2d(12, 12, 1),
        nn.Conv2d(12, 12, 3, padding=1),
    )


def test_spectral_columns_equal_the_spectra_of_each_layer() -> None:
    net = _net(0)
    report = fs.analyze(net, input_size=(3, 8, 8), spectra=True)
    alone = conv_spectra(net, input_size=(3, 8, 8), progress=False)
    assert isinstance(report.spectra, ConvSpectra)
    measured = [row for row in report if row.status == "ok"]
    assert [row.layer for row in measured] == ["0", "2", "4", "6"]
    for row in measured:
        reference = alone[row.layer]
        assert row.spectral_norm == pytest.approx(reference.spectral_norm, rel=1e-12)
        assert row.stable_rank == pytest.approx(reference.stable_rank, rel=1e-12)
        assert math.isnan(row.condition_number)  # norms only: no sigma_min
        # The paper's metrics are unchanged by the option.
        plain = fs.analyze(net)[row.layer]
        assert row.diversity == plain.diversity and row.sparsity == plain.sparsity
    # The 1x1 layer is not one of the paper's 3x3 layers: skipped in the report, but in
    # the spectra table with its own row.
    assert report["5"].status == "skipped"
    assert report.spectra["5"].status == "ok"
    params = json.loads(report.params.spectra)
    assert params["input_size"] == "3x8x8" and params["norm_method"] == "certificate"


def test_singular_values_give_condition_numbers() -> None:
    net = _net(1)
    report = fs.analyze(net, input_size=(3, 8, 8), spectra=True,
                        spectra_options={"padding": "circular", "singular_values": True})  # fmt: skip
    for row in report:
        if row.status != "ok":
            continue
        values = report.spectra.singular_values(row.layer).numpy()  # type: ignore[union-attr]
        assert row.spectral_norm == pytest.approx(values[0], rel=1e-12)
        expected = values[0] / values[-1] if values[-1] > 0 else math.inf
        assert row.condition_number == pytest.approx(expected, rel=1e-9)


def test_without_the_option_nothing_changes() -> None:
    report = fs.analyze(_net(0))
    assert report.spectra is None and report.params.spectra == ""
    assert "spectral_norm" not in report.metrics
    assert "spectral_norm" not in fs.results.COLUMNS


def test_spectra_need_an_input_size_and_a_module() -> None:
    with pytest.raises(ValueError, match="input_size"):
        fs.analyze(_net(0), spectra=True)
    with pytest.raises(TypeError):
        fs.analyze(_net(0).state_dict(), input_size=(3, 8, 8), spectra=True)
    with pytest.raises(ValueError, match="spectra_options"):
        fs.analyze(_net(0), input_size=(3, 8, 8), spectra=True,
                   spectra_options={"input_size": (3, 4, 4)})  # fmt: skip


class _Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Conv2d(3, 4, 3, padding=1)
        self.unused = nn.Conv2d(4, 4, 3, padding=1)  # never called: no input size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_a_layer_without_input_size_is_listed_with_its_reason() -> None:
    with pytest.warns(FilterStatsWarning, match="unused"):
        report = fs.analyze(_Unused(), input_size=(3, 8, 8), spectra=True, depth="registration")
    assert report["unused"].status == "ok"  # its paper metrics are measured
    assert math.isnan(report["unused"].spectral_norm)
    assert not math.isnan(report["used"].spectral_norm)
    skipped = {row.layer: row.reason for row in report.spectra.skipped}  # type: ignore[union-attr]
    assert "never called" in skipped["unused"]


def test_depth_profile_pools_the_spectral_norm_by_out_channels() -> None:
    report = fs.analyze(_net(0), input_size=(3, 8, 8), spectra=True)
    profile = fs.depth_profile(report, bins=1, first_bin=False, include_lowest=True)
    assert "spectral_norm" in profile.metrics
    assert "condition_number" not in profile.metrics  # not pooled (infinite values)
    rows = [row for row in report if row.status == "ok"]
    weights = np.array([row.out_channels for row in rows], dtype=float)
    values = np.array([row.spectral_norm for row in rows])
    expected = float((weights * values).sum() / weights.sum())
    assert profile[0].spectral_norm == pytest.approx(expected, rel=1e-12)


def test_compare_robust_and_normal_spectral_norm_by_depth() -> None:
    comparison = fs.compare(_net(0), _net(1), labels=("robust", "normal"),
                            metrics=("spectral_norm", "diversity"), n_boot=50,
                            spectra=True, input_size=(3, 8, 8))  # fmt: skip
    summary = comparison.summary()
    assert {row.metric for row in summary} == {"spectral_norm", "diversity"}
    by_depth = comparison.by_depth()
    assert any(row.metric == "spectral_norm" for row in by_depth)


def test_exports_carry_the_spectral_columns(tmp_path: Path) -> None:
    report = fs.analyze(_net(0), input_size=(3, 8, 8), spectra=True)
    path = tmp_path / "report.csv"
    report.to_csv(path)
    back = fs.read_report(path)
    assert back.params == report.params
    for a, b in zip(report, back):
        x, y = a.spectral_norm, b.spectral_norm
        assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-12)


def test_plots_of_spectral_columns() -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from filterstats import plotting

    robust = fs.analyze(_net(0), label="robust", input_size=(3, 8, 8), spectra=True)
    normal = fs.analyze(_net(1), label="normal", input_size=(3, 8, 8), spectra=True)
    ax = plotting.plot_metric_vs_depth([robust, normal], "spectral_norm")
    assert ax.get_ylabel() == "spectral norm" or "spectral" in ax.get_title() + ax.get_ylabel()
    ax = plotting.plot_spectral_norm_by_depth([robust.spectra, normal.spectra])  # type: ignore[list-item]
    assert len(ax.lines) >= 2
    ax = plotting.plot_singular_values(robust.spectra, "2")  # type: ignore[arg-type]
    assert ax is not None
