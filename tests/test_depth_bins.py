from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import filterstats as fs
from filterstats.results import FilterReport, LayerRow

PAPER_BINS = [
    "first", "(0.0, 0.1]", "(0.1, 0.2]", "(0.2, 0.3]", "(0.3, 0.4]", "(0.4, 0.5]",
    "(0.5, 0.6]", "(0.6, 0.7]", "(0.7, 0.8]", "(0.8, 0.9]", "(0.9, 1.0]",
]  # fmt: skip


def test_labels_are_the_papers():
    assert list(fs.depth_bin_labels()) == PAPER_BINS
    assert fs.depth_bin_labels(10, first_bin=False, include_lowest=True)[0] == "[0.0, 0.1]"


def test_hand_computed_bins():
    depth = [0, 1, 2, 3, 5, 7, 9, 10, 4, 6]
    norm = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0, 0.15, 0.61]
    expected = ["first", "(0.0, 0.1]", "(0.1, 0.2]", "(0.2, 0.3]", "(0.4, 0.5]", "(0.6, 0.7]",
                "(0.8, 0.9]", "(0.9, 1.0]", "(0.1, 0.2]", "(0.6, 0.7]"]  # fmt: skip
    assert fs.assign_depth_bins(depth, norm) == expected
    # Without the first bin, depth 0 lies in no right-closed bin...
    assert fs.assign_depth_bins([0, 1], [0.0, 0.05], first_bin=False) == [None, "(0.0, 0.1]"]
    # ...unless the lowest edge is included (CNN Filter DB).
    cfdb = fs.assign_depth_bins([0, 1], [0.0, 0.05], first_bin=False, include_lowest=True)
    assert cfdb == ["[0.0, 0.1]", "[0.0, 0.1]"]
    assert fs.assign_depth_bins([-1, 2], [math.nan, 0.4], bins=2) == [None, "(0.0, 0.5]"]


def test_bins_equal_pandas_cut():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    norm = np.concatenate([rng.random(300), np.arange(1, 31) / 30, np.arange(1, 11) / 10])
    ours = fs.assign_depth_bins(np.ones(len(norm), int), norm)
    cut = pd.cut(norm, np.linspace(0, 1, 11))
    theirs = [f"({iv.left:.1f}, {iv.right:.1f}]" for iv in cut]
    assert ours == theirs


def _row(layer, depth, norm, n_filters, n_nonsparse, sparsity, diversity, out, ortho):
    values = {
        "sparsity": sparsity,
        "diversity": diversity,
        "diversity_clean": diversity,
        "entropy_raw": diversity,
        "orthogonality": ortho,
    }
    return LayerRow(model="m", layer=layer, module_type="Conv2d", conv_depth=depth,
                    conv_depth_norm=norm, n_filters=n_filters, n_nonsparse=n_nonsparse,
                    out_channels=out, metrics=values)  # fmt: skip


def test_aggregation_weights_and_nan_entropy():
    rows = (
        _row("a", 0, 0.0, 27, 20, 7 / 27, 0.5, 9, 0.7),
        _row("b", 9, 0.95, 100, 60, 0.4, 0.8, 10, 0.9),
        _row("c", 10, 1.0, 300, 150, 0.5, 0.6, 30, 0.95),
        _row("d", 10, 1.0, 50, 1, 0.98, math.nan, 5, 0.5),
    )
    report = FilterReport(rows)
    profile = fs.depth_profile(report)
    assert [r.bin for r in profile] == ["first", "(0.9, 1.0]"]
    last = profile[1]
    assert last.n_layers == 3 and last.n_filters == 450 and last.out_channels == 45
    assert last.sparsity == pytest.approx((40 + 150 + 49) / 450)
    assert last.diversity == pytest.approx((0.8 * 60 + 0.6 * 150) / (60 + 150))
    assert last.orthogonality == pytest.approx((0.9 * 10 + 0.95 * 30 + 0.5 * 5) / 45)
    paper = fs.depth_profile(report, nan_in_denominator=True)[1]
    assert paper.diversity == pytest.approx((0.8 * 60 + 0.6 * 150) / (60 + 150 + 1))
    assert profile[0].sparsity == pytest.approx(7 / 27)


def test_profile_of_an_analyzed_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(*[torch.nn.Conv2d(4, 4, 3) for _ in range(11)])
    profile = fs.depth_profile(fs.analyze(net, label="net"))
    assert [r.bin for r in profile] == PAPER_BINS
    assert all(r.n_layers == 1 for r in profile)
    with pytest.raises(ValueError, match="`bins`"):
        fs.depth_profile(fs.analyze(net), bins=0)
