"""``filterstats demo``: the shipped pair, with and without the optional extras."""

from __future__ import annotations

import filterstats as fs
from tests.cli.helpers import run, run_core_only


def test_demo_writes_table_summary_and_report(tmp_path):
    result = run("demo", "--out", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "FilterReport: robust-seed0" in result.stdout
    assert "Comparison robust - normal" in result.stdout
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["layers.csv", "metrics_by_depth.png", "report.html", "summary.csv"]
    report = fs.read_report(tmp_path / "out" / "layers.csv")
    assert len(report.models) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing else written


def test_demo_runs_with_the_core_dependencies_only(tmp_path):
    result = run_core_only("demo", "--out", "out", "--seed", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pip install 'filterstats[plot]'" in result.stderr  # says what is missing
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["layers.csv", "report.html", "summary.csv"]  # no figure without matplotlib
    assert f"wrote out/: {', '.join(files)}" in result.stdout  # names only what it wrote
    how, header = (tmp_path / "out" / "summary.csv").read_text().splitlines()[:2]
    assert how.startswith("# filterstats {") and '"n_pairs": 1' in how
    assert header.startswith("metric,n_pairs,n_units,mean_robust,mean_normal,mean_diff")
