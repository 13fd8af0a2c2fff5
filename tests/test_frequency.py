"""The filter-frequency profile against a plain per-kernel ``scipy.fft.dctn`` loop."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.fft
import torch

import filterstats as fs
from filterstats import kernels

from .test_metrics import make_weight


def band_of(index: tuple[int, ...], size: tuple[int, ...]) -> str:
    """The documented split, written out: DC; every axis below half Nyquist; the rest."""
    if all(u == 0 for u in index):
        return "dc"
    if all(2 * u < k for u, k in zip(index, size)):
        return "low"
    return "high"


def reference_profile(weight, eps: float = 0.01, drop_sparse: bool = True):
    """Energy per frequency and band shares, one kernel at a time (float64)."""
    w = np.asarray(weight, dtype=np.float64)
    size = w.shape[2:]
    layer_max = np.abs(w).max()
    energy = np.zeros(size)
    for out in range(w.shape[0]):
        for inp in range(w.shape[1]):
            kernel = w[out, inp]
            if drop_sparse and (layer_max == 0 or np.abs(kernel).max() <= eps * layer_max):
                continue
            coefficients = scipy.fft.dctn(kernel, norm="ortho")
            energy += coefficients**2
    total = energy.sum()
    shares = {"dc": 0.0, "low": 0.0, "high": 0.0}
    for index in np.ndindex(*size):
        shares[band_of(index, size)] += energy[index]
    if total == 0:
        return energy, {band: math.nan for band in shares}
    return energy, {band: value / total for band, value in shares.items()}


SHAPES = [(16, 3, 3, 3), (32, 16, 3, 3), (7, 5, 3, 3), (12, 4, 5, 5), (6, 3, 7, 7), (5, 4, 1, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("definition", ["paper", "torchconvquality"])
def test_profile_matches_per_kernel_dctn_loop(shape, seed, definition):
    weight = make_weight(shape, seed)
    result = fs.measure([weight], definition=definition)
    energy, shares = reference_profile(weight, drop_sparse=definition == "paper")
    np.testing.assert_allclose(result.frequency_energy[0].numpy(), energy, rtol=1e-10, atol=1e-12)
    for band in ("dc", "low", "high"):
        assert float(result.metrics[f"freq_{band}"][0]) == pytest.approx(shares[band], abs=1e-12)
    alone = fs.frequency_profile(weight, definition=definition)
    np.testing.assert_allclose(alone.numpy(), energy, rtol=1e-10, atol=1e-12)


def test_constant_kernel_is_all_dc():
    weight = torch.full((8, 4, 3, 3), -0.7, dtype=torch.float64)
    result = fs.measure(weight)
    assert float(result.freq_dc[0]) == pytest.approx(1.0, abs=1e-14)
    assert float(result.freq_low[0]) == pytest.approx(0.0, abs=1e-14)
    assert float(result.freq_high[0]) == pytest.approx(0.0, abs=1e-14)


def checkerboard(k: int) -> np.ndarray:
    return (-1.0) ** np.add.outer(np.arange(k), np.arange(k))


@pytest.mark.parametrize("k", [2])
def test_checkerboard_kernel_is_all_high(k):
    # (For k >= 4 a +-1 checkerboard is not a DCT-II basis vector: it leaks into lower
    # indices; 2x2 and the centred 3x3 below are exact.)
    weight = torch.tensor(np.broadcast_to(checkerboard(k), (6, 2, k, k)).copy())
    result = fs.measure(weight)
    assert float(result.freq_high[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(result.freq_dc[0]) == pytest.approx(0.0, abs=1e-12)


def test_odd_checkerboard_holds_its_mean_as_dc_and_nothing_low():
    # 3x3 +-1 checkerboard: mean 1/9, so DC holds 1/81 of the energy; without its mean,
    # all of it is high frequency ((0,1), (1,0), (1,1) see none of it).
    board = checkerboard(3)
    raw = fs.measure(torch.tensor(np.broadcast_to(board, (6, 2, 3, 3)).copy()))
    assert float(raw.freq_dc[0]) == pytest.approx(1 / 81, abs=1e-12)
    assert float(raw.freq_low[0]) == pytest.approx(0.0, abs=1e-12)
    centred = torch.tensor(np.broadcast_to(board - board.mean(), (6, 2, 3, 3)).copy())
    assert float(fs.measure(centred).freq_high[0]) == pytest.approx(1.0, abs=1e-12)


def test_parseval_to_1e_12_in_float64():
    weight = torch.randn(
        64, 32, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    energy = fs.frequency_profile(weight, drop_sparse=False)
    assert abs(float(energy.sum()) - float((weight**2).sum())) <= 1e-12 * float((weight**2).sum())
    basis = kernels.dct_basis((3, 3))
    assert torch.allclose(basis @ basis.T, torch.eye(9, dtype=torch.float64), atol=1e-15)


def test_bands_of_any_square_kernel_follow_the_documented_rule():
    for k in range(1, 9):
        bands = kernels.frequency_bands((k, k)).reshape(k, k)
        for u in range(k):
            for v in range(k):
                expected = {"dc": 0, "low": 1, "high": 2}[band_of((u, v), (k, k))]
                assert int(bands[u, v]) == expected
    assert kernels.frequency_bands((3, 3)).reshape(3, 3).tolist() == [
        [0, 1, 2], [1, 1, 2], [2, 2, 2]
    ]  # fmt: skip


def test_all_zero_layer_is_nan_with_a_warning():
    weight = torch.zeros(4, 3, 3, 3)
    with pytest.warns(fs.FilterStatsWarning, match="all zeros"):
        result = fs.measure([weight, torch.randn(4, 3, 3, 3)])
    assert math.isnan(float(result.freq_dc[0])) and math.isnan(float(result.freq_high[0]))
    assert not math.isnan(float(result.freq_high[1]))
    assert torch.isnan(result.frequency_energy[0]).all()
    assert not torch.isnan(result.frequency_energy[1]).any()
    with pytest.warns(fs.FilterStatsWarning, match="frequency profile"):
        energy = fs.frequency_profile(weight)
    assert torch.isnan(energy).all()


def test_sparse_kernels_follow_the_definition():
    weight = make_weight((16, 8, 3, 3), 5, sparse_share=0.5)
    paper = fs.frequency_profile(weight)
    kept = fs.frequency_profile(weight, definition="torchconvquality")
    assert float(kept.sum()) > float(paper.sum())  # the sparse kernels' (small) energy


def test_nan_policy_omit_leaves_out_the_kernels():
    weight = make_weight((8, 4, 3, 3), 2)
    broken = weight.clone()
    broken[1, 2, 0, 0] = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.FilterStatsWarning)
        omitted = fs.measure(broken, nan_policy="omit")
        propagated = fs.measure(broken)
    assert math.isnan(float(propagated.freq_dc[0]))
    clean = broken.clone()
    clean[1, 2] = 0.0  # a zero kernel is sparse: dropped like the omitted one
    expected = fs.measure(clean)
    assert float(omitted.freq_high[0]) == pytest.approx(float(expected.freq_high[0]), abs=1e-12)


def test_float32_and_float64_agree():
    weight = make_weight((32, 16, 3, 3), 7)
    a = fs.measure(weight).freq_high
    b = fs.measure(weight.float()).freq_high
    assert float(a[0]) == pytest.approx(float(b[0]), abs=1e-6)


def test_frequency_off_leaves_the_other_metrics_unchanged():
    weights = [make_weight(shape, 1) for shape in SHAPES]
    on = fs.measure(weights)
    off = fs.measure(weights, frequency=False)
    assert "freq_dc" not in off.metrics and off.frequency_energy == ()
    for name, values in off.metrics.items():
        assert torch.equal(values.nan_to_num(-1.0), on.metrics[name].nan_to_num(-1.0)), name


def test_columns_reach_analyze_and_depth_profile():
    report = fs.analyze(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3)))
    assert {"freq_dc", "freq_low", "freq_high"} <= set(report.metrics)
    row = report.measured[0]
    assert row.freq_dc + row.freq_low + row.freq_high == pytest.approx(1.0, abs=1e-12)
    profile = fs.depth_profile(report)
    assert all(0.0 <= r.freq_high <= 1.0 for r in profile)
