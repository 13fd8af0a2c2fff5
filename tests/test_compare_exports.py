"""Every saved comparison says how it was made; the pair-level test keeps its level."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest

import filterstats as fs
from filterstats._version import __version__
from tests.test_compare import make_net, sparser

statistics = importlib.import_module("filterstats.compare.statistics")

#: What every export must carry.
REQUIRED = ("definition", "eps", "kernel_size", "twins", "bins", "n_pairs", "n_models_a",
            "n_models_b", "seed", "version")  # fmt: skip


@pytest.fixture(scope="module")
def comparison() -> fs.Comparison:
    bases = [make_net(50 + k, depth=5) for k in range(3)]
    robust = [sparser(b, k) for k, b in enumerate(bases)]
    return fs.compare(robust, bases, labels=("robust", "normal"), eps=0.02, bins=4,
                      n_boot=50, seed=7)  # fmt: skip


def _check(provenance: dict, *, bins: int = 4) -> None:
    missing = [key for key in REQUIRED if key not in provenance]
    assert not missing, missing
    assert provenance["definition"] == "paper" and provenance["eps"] == 0.02
    assert provenance["kernel_size"] == "3x3" and provenance["twins"] == "per_pair"
    assert provenance["bins"] == bins and provenance["n_pairs"] == 3
    assert provenance["n_models_a"] == 3 and provenance["n_models_b"] == 3
    assert provenance["seed"] == 7 and provenance["version"] == __version__


@pytest.mark.parametrize("table", ["summary", "by_depth"])
def test_every_export_read_back_carries_the_provenance(tmp_path, comparison, table):
    pd = pytest.importorskip("pandas")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = getattr(comparison, table)()
    # Printed header.
    header = repr(rows).split("\n")[1]
    for key in REQUIRED:
        assert f"{key}=" in header, key
    # CSV: the leading comment line.
    rows.to_csv(tmp_path / "t.csv")
    first = (tmp_path / "t.csv").read_text().split("\n", 1)[0]
    assert first.startswith("# filterstats ")
    _check(json.loads(first[len("# filterstats ") :]))
    frame = pd.read_csv(tmp_path / "t.csv", skiprows=1)
    assert "mean_robust" in frame.columns and "mean_normal" in frame.columns
    assert "mean_a" not in frame.columns
    # JSON.
    rows.to_json(tmp_path / "t.json")
    payload = json.loads((tmp_path / "t.json").read_text())
    _check(payload["filterstats"])
    assert "mean_robust" in payload["rows"][0]
    # Parquet: schema metadata.
    rows.to_parquet(tmp_path / "t.parquet")
    meta = pq.read_schema(tmp_path / "t.parquet").metadata
    _check(json.loads(meta[b"filterstats"]))
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert list(back.columns) == list(rows.columns)
    # pandas.
    _check(rows.to_pandas().attrs["filterstats"])


def test_matched_units_and_html_report_carry_the_provenance(tmp_path, comparison):
    _check(comparison.to_pandas().attrs["filterstats"], bins=4)
    page = fs.report(comparison, tmp_path / "c.html", figures=False).read_text()
    start = page.index('id="provenance"')
    section = page[start : page.index("</table>", start)]
    for key in REQUIRED:
        assert f'<td class="text" style="text-align: left">{key}</td>' in section, key
    assert "Holm" in page and "descriptive" in page
    assert "mean_robust" in page and "mean_a<" not in page


def test_pair_level_test_keeps_its_nominal_level_on_null_comparisons():
    """200 simulated null paired comparisons: 10 pairs of 6 layers each, with a pair
    effect shared by the layers of a pair (layers of one pair are not independent)."""
    rng = np.random.default_rng(2024)
    alpha, n_sim, n_pairs, n_layers = 0.05, 200, 10, 6
    pair_level, layer_level = 0, 0
    pair = np.repeat(np.arange(n_pairs), n_layers)
    unit = [f"conv{i}" for i in range(n_layers)] * n_pairs
    for _ in range(n_sim):
        layer_values = rng.normal(size=n_pairs * n_layers)  # shared by a and b
        pair_effect = np.repeat(rng.normal(scale=0.5, size=n_pairs), n_layers)
        a = layer_values + pair_effect + 0.05 * rng.normal(size=pair.size)
        b = layer_values + 0.05 * rng.normal(size=pair.size)
        got = statistics.infer(pair, [f"r{p}" for p in pair], [f"n{p}" for p in pair], unit,
                               a, b, design="paired", labels=("r", "n"), n_boot=1,
                               confidence=0.95, generator=rng)  # fmt: skip
        pair_level += got["p_value"] <= alpha
        layer_level += got["wilcoxon_p"] <= alpha
    # Exact Wilcoxon with 10 pairs: the largest attainable level <= 0.05 is 0.0488.
    nominal = 0.048828125
    tolerance = 3 * math.sqrt(nominal * (1 - nominal) / n_sim)
    print(f"false positives of {n_sim}: pairs {pair_level}, pooled layers {layer_level}")
    assert abs(pair_level / n_sim - nominal) <= tolerance, pair_level
    # The layers treated as independent would not keep it: this check can fail.
    assert layer_level / n_sim > nominal + tolerance, layer_level


def test_a_comparison_shows_as_html_in_a_notebook(comparison):
    """Jupyter shows the Comparison itself (not only its tables) as HTML."""
    shown = comparison._repr_html_()
    assert shown.startswith("<p><b>Comparison(")
    assert comparison.summary()._repr_html_() in shown  # the headline table, with its caption
    assert "<table" in shown and "summary not computed" not in shown


def test_groups_of_models_show_progress_while_they_are_analysed(monkeypatch):
    """A bar per side while its models are analysed; none for one model; progress=False."""
    matching = importlib.import_module("filterstats.compare.matching")
    shown: list[tuple[str, bool]] = []

    def recording_bar(items, *, total=None, desc="", enabled=True):
        shown.append((desc, enabled))
        yield from items

    monkeypatch.setattr(matching, "progress_bar", recording_bar)
    nets = [make_net(seed) for seed in range(4)]
    fs.compare(nets[:2], nets[2:], n_boot=50)
    assert shown == [("analyse a", True), ("analyse b", True)]
    shown.clear()
    fs.compare(nets[0], nets[1], n_boot=50)
    assert shown == [("analyse a", False), ("analyse b", False)]
    shown.clear()
    fs.compare(nets[:2], nets[2:], n_boot=50, progress=False)
    assert [enabled for _, enabled in shown] == [False, False]
