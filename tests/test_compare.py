from __future__ import annotations

import copy
import importlib
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import filterstats as fs
from tests.conftest import model_fingerprint

LAST_BINS = {"(0.8, 0.9]", "(0.9, 1.0]"}


def make_net(seed: int, depth: int = 11, width: int = 8) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, width, 3)] + [nn.Conv2d(width, width, 3) for _ in range(depth - 1)]
    return nn.Sequential(*layers)


def sparser(net: nn.Sequential, seed: int) -> nn.Sequential:
    """Zero 30% of the kernels of every layer, 80% in the last two."""
    out = copy.deepcopy(net)
    generator = torch.Generator().manual_seed(seed)
    convs = list(out)
    with torch.no_grad():
        for i, conv in enumerate(convs):
            share = 0.8 if i >= len(convs) - 2 else 0.3
            mask = torch.rand(conv.weight.shape[:2], generator=generator) < share
            conv.weight[mask] = 0.0
    return out


def orthogonal(net: nn.Sequential) -> nn.Sequential:
    out = copy.deepcopy(net)
    with torch.no_grad():
        for conv in out:
            rows = conv.weight.reshape(conv.weight.shape[0], -1)
            q, _ = torch.linalg.qr(rows.T)  # orthonormal columns
            conv.weight.copy_(q.T.reshape(conv.weight.shape))
    return out


def test_sparser_model_is_significantly_sparser_most_in_the_last_bins():
    base = make_net(0)
    cmp = fs.compare(sparser(base, 1), base, n_boot=500)
    assert cmp.match == "name"
    row = cmp.summary()["sparsity"]
    assert row.mean_diff > 0.2 and row.median_diff > 0
    # One pair: no interval or test across models; the layer-level ones are descriptive.
    assert math.isnan(row.ci_low) and math.isnan(row.p_value)
    assert row.signs == "a > b in 1 of 1 pair"
    assert row.unit_ci_low > 0
    assert row.wilcoxon_p < 0.01 and row.rank_biserial == 1.0
    # Independent check of the paired test on the per-layer columns.
    a = np.array(fs.analyze(sparser(base, 1)).column("sparsity"))
    b = np.array(fs.analyze(base).column("sparsity"))
    d = a - b
    method = "exact" if np.unique(np.abs(d)).size == d.size else "asymptotic"
    assert row.wilcoxon_p == pytest.approx(stats.wilcoxon(d, method=method).pvalue)
    # One pair: nothing is ranked, and the ranking says why.
    with pytest.warns(fs.FilterStatsWarning, match="interval across models"):
        ranking = cmp.most_different("sparsity", k=2)
    assert ranking == () and "one pair" in ranking.reason
    text = repr(cmp.summary())
    assert "no inference across models is possible" in text
    assert "a > b" in text  # per-layer signs


def test_orthogonal_model_is_more_orthogonal():
    base = make_net(3)
    cmp = fs.compare(orthogonal(base), base, n_boot=500)
    row = cmp.summary()["orthogonality"]
    assert row.mean_a == pytest.approx(1.0, abs=1e-6)
    assert row.mean_diff > 0.05 and row.unit_ci_low > 0
    assert row.wilcoxon_p < 0.01


def test_identical_models_give_zero_differences_and_no_significance():
    base = make_net(5)
    cmp = fs.compare(base, copy.deepcopy(base), n_boot=200)
    for row in cmp.summary():
        assert row.mean_diff == 0 and row.median_diff == 0
        assert row.unit_ci_low == 0 and row.unit_ci_high == 0
        assert row.wilcoxon_p == 1.0 and row.mannwhitney_p == 1.0
    for row in cmp.by_depth():
        assert row.mean_diff == 0 and not row.wilcoxon_p < 0.05


def test_groups_of_pairs_per_bin_and_group_tests():
    bases = [make_net(10 + k) for k in range(6)]
    robust = [sparser(b, k) for k, b in enumerate(bases)]
    cmp = fs.compare(robust, bases, n_boot=500)
    assert len(cmp.pairs) == 6
    summary = cmp.summary()["sparsity"]
    assert summary.pair_wilcoxon_p == pytest.approx(2 / 2**6)
    assert summary.mannwhitney_p < 0.01 and summary.cliffs_delta == 1.0
    depth = cmp.by_depth()
    assert depth.unit == "pair"
    for row in depth.metric("sparsity"):
        assert row.n == 6 and row.mean_diff > 0 and row.wilcoxon_p < 0.05
    assert set(depth.most_different("sparsity", k=2)) == LAST_BINS
    assert set(cmp.most_different("sparsity", k=2)) == LAST_BINS
    assert summary.signs == "a > b in 6 of 6 pairs"
    assert summary.p_value == summary.pair_wilcoxon_p and summary.ci_low > 0


def test_shared_twin_counted_per_pair_or_once():
    twin, other = make_net(20), make_net(21)
    robust = [sparser(twin, 1), sparser(twin, 2), sparser(other, 3)]
    cmp = fs.compare(robust, [twin, twin, other], n_boot=100)
    assert cmp.reports_b[0] is cmp.reports_b[1]  # analysed once
    # A shared twin: the unit of inference is the model, each counted once.
    assert cmp.design == "unpaired" and cmp.summary().provenance["design"] == "unpaired"
    row = cmp.summary()["sparsity"]
    assert row.n_compared == 3 * 2 and row.signs.endswith("of 6 model pairings")
    assert row.p_value == row.mannwhitney_p
    assert len(cmp.group(1)) == 3
    assert len(cmp.group(1, twins="unique")) == 2
    unique = fs.compare(robust, [twin, twin, other], twins="unique", n_boot=100)
    assert len(unique.profiles()[1].models) == 2
    assert len(cmp.profiles()[1].rows) == 3 * len(unique.profiles()[1].rows) / 2


def test_different_architectures_are_matched_by_depth():
    cmp = fs.compare(make_net(0, depth=11), make_net(1, depth=6), n_boot=100)
    assert cmp.match == "depth"
    units = {m.unit for m in cmp.matched}
    assert units == {"first", "(0.1, 0.2]", "(0.3, 0.4]", "(0.5, 0.6]", "(0.7, 0.8]", "(0.9, 1.0]"}
    assert any("only in a" in u for u in cmp.unmatched)
    with pytest.raises(ValueError, match="no layer name in common|unit='layer'"):
        cmp.by_depth(unit="layer")


def test_deterministic_and_read_only():
    base = make_net(7)
    robust = sparser(base, 0)
    before = model_fingerprint(base), model_fingerprint(robust)
    first = fs.compare(robust, base, seed=3).summary()
    second = fs.compare(robust, base, seed=3).summary()
    assert first.rows == second.rows
    assert (model_fingerprint(base), model_fingerprint(robust)) == before


def test_reports_as_inputs_table_and_errors():
    base = make_net(8)
    a, b = fs.analyze(sparser(base, 0), label="r"), fs.analyze(base, label="n")
    cmp = fs.compare(a, b, n_boot=100)
    text = repr(cmp)
    assert "matched by name" in text and "sparsity" in text and "p (units)" in text
    pd = pytest.importorskip("pandas")
    frame = cmp.summary().to_pandas()
    assert isinstance(frame, pd.DataFrame) and list(frame.metric) == list(cmp.metrics)
    long = cmp.to_pandas()
    assert len(long) == 11 * 3 and (long.difference == long.a - long.b).all()
    with pytest.raises(ValueError, match="`match`"):
        fs.compare(a, b, match="shape")
    with pytest.raises(ValueError, match="pairs="):
        fs.compare([a, a], [b, b, b])
    with pytest.raises(TypeError, match="position 0"):
        fs.compare([42], b)


@pytest.mark.parametrize("table", ["summary", "by_depth"])
def test_tables_export_csv_and_json_without_pandas_matching_pandas(tmp_path, table):
    import io
    import json
    import math

    pd = pytest.importorskip("pandas")
    a, b = make_net(1), make_net(2)
    rows = getattr(fs.compare(sparser(a, 0), b, n_boot=50), table)()
    records = rows.to_records()
    has_nan = any(isinstance(v, float) and math.isnan(v) for r in records for v in r.values())
    assert has_nan or table == "summary"  # by_depth's one-layer bins have NaN tests
    # CSV: what pandas writes and reads back, NaN as "nan"
    text = rows.to_csv(tmp_path / "table.csv")
    assert (tmp_path / "table.csv").read_text() == text
    assert [name for name in tmp_path.iterdir()] == [tmp_path / "table.csv"]  # no temp left
    assert text.startswith("# filterstats {")
    read = pd.read_csv(io.StringIO(text), skiprows=1)
    expected = rows.to_pandas()
    assert list(read.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(read, expected, check_dtype=False, rtol=0, atol=0)
    # JSON: how it was made and a list of records, NaN as null
    loaded = json.loads(rows.to_json())["rows"]
    assert len(loaded) == len(records)
    for got, want in zip(loaded, records):
        assert list(got) == list(want)
        for key, value in want.items():
            if isinstance(value, float) and math.isnan(value):
                assert got[key] is None
            else:
                assert got[key] == value


def test_reports_measured_differently_are_compared_with_one_warning():
    import warnings

    base = make_net(8, depth=3)
    net = nn.Sequential(*base, nn.Conv2d(8, 8, 1))
    three = fs.analyze(net, label="a", kernel_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an int and its tuple are one selection
        same = fs.compare(three, fs.analyze(net, label="b", kernel_size=(3, 3)), n_boot=50)
    assert same.provenance["kernel_size"] == "3x3"
    every = fs.analyze(net, label="b", kernel_size=None)
    with pytest.warns(fs.FilterStatsWarning, match=r"different kernel_size \(3x3, all\)"):
        mixed = fs.compare(three, every, n_boot=50)
    assert mixed.provenance["kernel_size"] == "mixed: 3x3, all"
    other_eps = fs.analyze(net, label="b", kernel_size=3, eps=0.1)
    with pytest.warns(fs.FilterStatsWarning, match=r"different eps \(0.01, 0.1\)"):
        fs.compare(three, other_eps, n_boot=50)


def test_printing_never_runs_a_bootstrap(monkeypatch):
    import importlib

    # `filterstats.compare` is the function; the package's modules by their full name.
    stats_module = importlib.import_module("filterstats._stats")
    statistics = importlib.import_module("filterstats.compare.statistics")

    cmp = fs.compare([sparser(make_net(s), s) for s in (1, 2)], [make_net(s) for s in (1, 2)])

    def fail(*args, **kwargs):
        raise AssertionError("a bootstrap ran while printing")

    monkeypatch.setattr(statistics, "bootstrap_mean_ci", fail)
    monkeypatch.setattr(stats_module, "bootstrap_mean_ci", fail)
    text = repr(cmp) + repr(cmp.summary()) + repr(cmp.by_depth())
    assert "sparsity" in text
    assert cmp.summary() is cmp.default_summary and cmp.by_depth() is cmp.default_depth
    with pytest.raises(AssertionError, match="bootstrap ran"):
        cmp.summary(n_boot=10)  # other options compute anew


def test_compare_package_has_no_import_circle():
    """compare's modules import neither plotting nor html at module level, and plotting
    imports compare only for type checking (or inside functions)."""
    import ast
    from pathlib import Path

    root = Path(fs.__file__).parent

    def top_level_imports(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        found = set()
        for node in tree.body:  # module level only; `if TYPE_CHECKING:` blocks are skipped
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        return found

    for path in sorted((root / "compare").glob("*.py")):
        imports = top_level_imports(path)
        assert not imports & {"filterstats.plotting", "filterstats.html"}, path.name
    assert not any(
        m.startswith("filterstats.compare") for m in top_level_imports(root / "plotting.py")
    )


def test_most_different_ranks_only_bins_whose_interval_excludes_zero_and_flags_ties():
    from dataclasses import replace

    bases = [make_net(30 + k) for k in range(4)]
    same = fs.compare(bases, [copy.deepcopy(b) for b in bases], n_boot=200)
    depth = same.by_depth()
    assert all(r.mean_diff == 0 for r in depth if r.n)
    with pytest.warns(fs.FilterStatsWarning, match="excludes 0"):
        ranking = depth.most_different("sparsity")
    assert ranking == () and "interval excludes 0" in ranking.reason
    # Two bins with exactly the same difference and intervals excluding 0: flagged.
    rows = list(depth.rows)
    for index in (3, 5):
        rows[index] = replace(rows[index], mean_diff=0.1, ci_low=0.05, ci_high=0.2)
    tied = replace(depth, rows=tuple(rows))
    with pytest.warns(fs.FilterStatsWarning, match="tied"):
        ranking = tied.most_different(rows[3].metric, k=1)
    assert len(ranking) == 1 and ranking.ties == ((rows[3].bin, rows[5].bin),)
    with pytest.raises(ValueError, match="`metric`"):
        depth.most_different("nope")


def test_holm_adjusted_p_values_per_bin():
    from filterstats._stats import holm

    bases = [make_net(40 + k) for k in range(6)]
    cmp = fs.compare([sparser(b, k) for k, b in enumerate(bases)], bases, n_boot=100)
    depth = cmp.by_depth()
    np.testing.assert_array_equal(
        [r.p_holm for r in depth], holm([r.p_value for r in depth]), strict=True
    )
    summary = cmp.summary()
    np.testing.assert_array_equal([r.p_holm for r in summary], holm([r.p_value for r in summary]))
    assert "p Holm" in repr(depth) and "p Holm" in repr(summary)


def test_both_definitions_flags_the_metrics_and_bins_whose_sign_differs():
    base = make_net(3, depth=4)
    scaled = copy.deepcopy(base)
    with torch.no_grad():  # half the kernels x8 (exact in floating point)
        for conv in scaled:
            conv.weight[: conv.weight.shape[0] // 2] *= 8.0
    cmp = fs.compare(scaled, base, both_definitions=True, bins=2, n_boot=50)
    check = cmp.definition_check
    assert check is not None and cmp.summary().provenance["both_definitions"] is True
    # The paper scales each kernel by its own max |w|: diversity unchanged, exactly;
    # torchconvquality's does not: the scaled half changes it.
    rows = {(r.metric, r.bin): r for r in check}
    assert rows["diversity", "all"].diff_paper == 0.0
    assert rows["diversity", "all"].diff_torchconvquality < 0
    assert {r.metric for r in check.flagged} == {"diversity"}
    assert len(check.flagged) == 4  # all depths and the three bins
    # The values are those of the two comparisons made separately.
    tcq = fs.compare(scaled, base, definition="torchconvquality", bins=2, n_boot=50)
    assert cmp.summary().provenance["definition"] == "paper"
    for r in check:
        if r.bin == "all":
            assert r.diff_paper == cmp.summary()[r.metric].mean_diff
            assert r.diff_torchconvquality == tcq.summary()[r.metric].mean_diff
    assert "DIFFERS" in repr(cmp) and "sign differs: diversity" in repr(check)
    with pytest.raises(ValueError, match="both_definitions"):
        fs.compare(fs.analyze(scaled), base, both_definitions=True)


def test_the_definition_check_gives_rounding_noise_no_direction():
    """Differences of opposite sign but within SIGN_TOLERANCE of 0 are not flagged."""
    results = importlib.import_module("filterstats.compare.results")
    tol = results.SIGN_TOLERANCE
    noise = results._definition_row("diversity", "all", 3.05e-06, -4.8e-07)
    assert (noise.sign_paper, noise.sign_torchconvquality, noise.differs) == (0, 0, False)
    real = results._definition_row("diversity", "all", 10 * tol, -10 * tol)
    assert (real.sign_paper, real.sign_torchconvquality, real.differs) == (1, -1, True)
    one_sided = results._definition_row("diversity", "all", 0.0, -10 * tol)
    assert one_sided.differs  # no change under one definition, a clear one under the other


def test_an_unpaired_comparison_does_not_call_its_units_pairs():
    nets = [make_net(seed, depth=4) for seed in range(3)]
    cmp = fs.compare(nets[:2], nets[2:], n_boot=50, labels=("x", "y"))
    assert cmp.summary().design == "unpaired"
    title = repr(cmp.summary()).splitlines()[0]
    assert title == "Comparison x - y: unpaired, 2 and 1 model, units = matched layers"
    depth_title = repr(cmp.by_depth()).splitlines()[0]
    assert depth_title == "By depth x - y: unpaired, 2 and 1 model, units = models"
