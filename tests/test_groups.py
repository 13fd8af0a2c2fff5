"""Group-aware orthogonality, the ``kind`` tag and the normalised-entropy warning."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import filterstats as fs
from filterstats.layers import ConvLayer, layer_kind

from . import reference


def group_orthogonality_reference(weight, groups: int, keep=None) -> float:
    """1 - sum of |cos| over ordered pairs within each group / their number (loops)."""
    w = np.asarray(weight, dtype=np.float64)
    rows = w.reshape(w.shape[0], -1)
    per_group = len(rows) // groups
    total, pairs = 0.0, 0
    for g in range(groups):
        members = [i for i in range(g * per_group, (g + 1) * per_group)
                   if keep is None or keep[i]]  # fmt: skip
        units = {}
        for i in members:
            norm = math.sqrt(sum(v * v for v in rows[i]))
            units[i] = rows[i] / norm if norm > 0 else rows[i] * 0.0
        for i, j in itertools.permutations(members, 2):
            total += abs(float(np.dot(units[i], units[j])))
            pairs += 1
    return math.nan if pairs == 0 else 1.0 - total / pairs


def as_layer(weight: torch.Tensor, groups: int) -> ConvLayer:
    return ConvLayer(
        name="conv", module_type="Conv2d", weight=weight,
        in_channels=weight.shape[1] * groups, out_channels=weight.shape[0], groups=groups,
        kernel_size=tuple(weight.shape[2:]),
    )  # fmt: skip


def test_orthogonal_within_groups_identical_across_groups():
    # 4 groups of 9 filters; each group is the same orthonormal basis of R^9.
    basis = torch.eye(9, dtype=torch.float64).reshape(9, 1, 3, 3)
    weight = basis.repeat(4, 1, 1, 1)
    result = fs.measure([as_layer(weight, 4)])
    assert float(result.group_orthogonality[0]) == pytest.approx(1.0, abs=1e-12)
    expected = reference.orthogonality(weight)
    assert expected < 1.0
    assert float(result.orthogonality[0]) == pytest.approx(expected, abs=1e-12)
    # A bare tensor knows no groups: a dense layer, both values the reference one.
    bare = fs.measure(weight)
    assert float(bare.group_orthogonality[0]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("shape", "groups"),
    [((32, 4, 3, 3), 4), ((12, 3, 3, 3), 2), ((300, 2, 3, 3), 2), ((16, 1, 5, 5), 8)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_group_orthogonality_matches_reference(shape, groups, seed):
    weight = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    weight[1] = 0.0  # a zero filter counts as orthogonal to every other
    result = fs.measure([as_layer(weight, groups)])
    expected = group_orthogonality_reference(weight, groups)
    assert float(result.group_orthogonality[0]) == pytest.approx(expected, abs=1e-10)
    assert float(result.orthogonality[0]) == pytest.approx(
        reference.orthogonality(weight), abs=1e-10
    )


def test_degenerate_groups():
    depthwise = torch.randn(8, 1, 3, 3, dtype=torch.float64)
    zero = torch.zeros(8, 2, 3, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.FilterStatsWarning)
        result = fs.measure([as_layer(depthwise, 8), as_layer(zero, 2)])
    assert math.isnan(float(result.group_orthogonality[0]))  # one filter per group: no pairs
    assert math.isnan(float(result.group_orthogonality[1]))  # all zeros
    unknown = ConvLayer("c", "Conv2d", depthwise, 8, 8, groups=None)
    assert math.isnan(float(fs.measure([unknown]).group_orthogonality[0]))


def test_omit_leaves_out_the_filters_holding_nan():
    weight = torch.randn(
        12, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)
    )
    weight[2, 0, 1, 1] = math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.FilterStatsWarning)
        result = fs.measure([as_layer(weight, 3)], nan_policy="omit")
    keep = [i != 2 for i in range(12)]
    expected = group_orthogonality_reference(weight.nan_to_num(0.0), 3, keep)
    assert float(result.group_orthogonality[0]) == pytest.approx(expected, abs=1e-10)


def test_kind_of_layers():
    assert layer_kind(1, 16) == "dense"
    assert layer_kind(16, 16) == "depthwise"
    assert layer_kind(4, 16) == "grouped"
    assert layer_kind(None, 16) == ""


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dense = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(32, 64, 3, padding=1, groups=32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise(self.grouped(self.dense(x)))


def test_kind_reaches_report_exports_compare_and_plots(tmp_path):
    torch.manual_seed(0)
    a, b = Mixed(), Mixed()
    report = fs.analyze(a, label="a")
    assert [row.kind for row in report.measured] == ["dense", "grouped", "depthwise"]
    assert report["depthwise"].group_orthogonality < 1.0  # 2 filters per group: defined
    path = tmp_path / "r.csv"
    report.to_csv(path)
    assert [row.kind for row in fs.read_report(path).measured] == ["dense", "grouped", "depthwise"]
    comparison = fs.compare(a, b, metrics=["orthogonality", "group_orthogonality"])
    kinds = {r["unit"]: r["kind"] for r in comparison.to_records()}
    assert kinds == {"dense": "dense", "grouped": "grouped", "depthwise": "depthwise"}
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from filterstats import plotting

    ax = plotting.plot_metric_vs_depth(report, "group_orthogonality")
    labels = [line.get_label() for line in ax.get_lines()]
    assert "grouped / depthwise" in labels
    figure = comparison.plot(["group_orthogonality"])
    assert figure.axes[0].get_lines()[0].get_color() == plotting._B_COLOR


def test_state_dict_kind_is_unknown():
    report = fs.analyze(Mixed().state_dict())
    assert {row.kind for row in report.measured} == {""}
    assert all(math.isnan(row.group_orthogonality) for row in report.measured)


def test_version_2_tables_read_back_with_kind_derived(tmp_path):
    report = fs.analyze(Mixed(), label="m")
    text = report.to_csv()
    header, columns, *body = text.splitlines()
    names = columns.split(",")
    drop = names.index("kind")
    old = [",".join(v for k, v in enumerate(line.split(",")) if k != drop)
           for line in [columns, *body]]  # fmt: skip
    path = tmp_path / "old.csv"
    path.write_text(
        "\n".join([header.replace('"schema_version": 3', '"schema_version": 2'), *old]) + "\n"
    )
    back = fs.read_report(path)
    assert [row.kind for row in back.measured] == ["dense", "grouped", "depthwise"]
    assert back.params.schema_version == 2


def test_normalised_entropy_above_one_warns_and_names_groups():
    torch.manual_seed(1)
    conv = nn.Conv2d(32, 32, 3, groups=32)
    with pytest.warns(fs.FilterStatsWarning, match=r"exceeds 1.*groups=32"):
        value = fs.diversity(
            fs.extract_filters(conv)[0], definition="torchconvquality", normalize=True
        )
    assert float(value) > 1.0
    with pytest.warns(fs.FilterStatsWarning, match=r"grouped/depthwise"):
        fs.analyze(conv, definition="torchconvquality", normalize=True)
    dense = nn.Conv2d(32, 64, 3)
    with torch.no_grad():  # kernels on 3 of 9 directions: entropy well below the bound
        dense.weight[..., 1:, :] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", fs.FilterStatsWarning)
        fs.analyze(dense, definition="torchconvquality", normalize=True)


def test_html_report_has_kind_and_the_new_columns(tmp_path):
    report = fs.analyze(Mixed(), label="m")
    page = fs.report(report, tmp_path / "r.html", figures=False).read_text(encoding="utf-8")
    for text in (">kind</th>", "depthwise", "grouped", "group_orthogonality", "freq_high"):
        assert text in page, text


def test_transposed_grouped_conv_groups_its_output_filters():
    torch.manual_seed(2)
    conv = nn.ConvTranspose2d(8, 12, 3, groups=2)
    weight = conv.weight.detach().double()
    # Output channel o of group o // 6 sees inputs 4 (o // 6) .. 4 (o // 6) + 3.
    filters = torch.stack([weight[(o // 6) * 4 : (o // 6) * 4 + 4, o % 6] for o in range(12)])
    report = fs.analyze(conv)
    assert report.measured[0].kind == "grouped"
    expected = group_orthogonality_reference(filters, 2)
    assert report.measured[0].group_orthogonality == pytest.approx(expected, abs=1e-6)


def test_compare_takes_the_new_columns():
    torch.manual_seed(5)
    comparison = fs.compare(Mixed(), Mixed(), metrics=["freq_high", "group_orthogonality"])
    summary = comparison.summary()
    assert {row.metric for row in summary} == {"freq_high", "group_orthogonality"}
