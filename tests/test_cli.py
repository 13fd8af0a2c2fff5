"""The command line, run as a user runs it: a subprocess."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import filterstats as fs

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    return subprocess.run(
        [sys.executable, "-m", "filterstats", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def small_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    torch.save(net.state_dict(), path)
    return path


@pytest.mark.parametrize("command", [[], ["analyze"], ["compare"], ["demo"], ["zoo"], ["scan"]])
def test_help_everywhere(tmp_path, command):
    result = run(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "usage: filterstats" in result.stdout


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


#: Run ``filterstats`` as if only the core dependencies were installed.
BLOCK_EXTRAS = (
    "import sys\n"
    "for name in ('pandas', 'pyarrow', 'matplotlib', 'tqdm'): sys.modules[name] = None\n"
    "from filterstats.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def run_core_only(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", BLOCK_EXTRAS, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_runs_with_the_core_dependencies_only(tmp_path):
    result = run_core_only("demo", "--out", "out", "--seed", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pip install 'filterstats[plot]'" in result.stderr  # says what is missing
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["layers.csv", "report.html", "summary.csv"]  # no figure without matplotlib
    assert f"wrote out/: {', '.join(files)}" in result.stdout  # names only what it wrote
    header = (tmp_path / "out" / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("metric,n_pairs,n_units,mean_a,mean_b,mean_diff")


def test_compare_summary_formats_with_the_core_dependencies_only(tmp_path):
    small_checkpoint(tmp_path / "a.pt", 0)
    small_checkpoint(tmp_path / "b.pt", 1)
    as_json = run_core_only("compare", "a.pt", "b.pt", "--format", "json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    records = json.loads(as_json.stdout)
    assert [r["metric"] for r in records][:3] == ["sparsity", "diversity", "orthogonality"]
    as_csv = run_core_only("compare", "a.pt", "b.pt", "--format", "csv", cwd=tmp_path)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["metric"] for r in rows] == [r["metric"] for r in records]
    written = run_core_only("compare", "a.pt", "b.pt", "--out", "cmp", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == [
        "layers.csv",
        "report.html",
        "summary.csv",
    ]


def test_analyze_checkpoint_formats_round_trip(tmp_path):
    checkpoint = small_checkpoint(tmp_path / "model.pt", 0)
    result = run("analyze", "model.pt", "--format", "csv", "--out", "model.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = fs.read_report(tmp_path / "model.csv")
    direct = fs.analyze(torch.load(checkpoint, weights_only=True), label="model.pt")
    assert [r.diversity for r in written.measured] == [r.diversity for r in direct.measured]
    table = run("analyze", "model.pt", "--kernel-size", "all", cwd=tmp_path)
    assert table.returncode == 0
    assert table.stdout.startswith("FilterReport: model.pt")


def test_compare_writes_into_out_dir(tmp_path):
    small_checkpoint(tmp_path / "a.pt", 0)
    small_checkpoint(tmp_path / "b.pt", 1)
    result = run(
        "compare", "a.pt", "b.pt", "--labels", "robust", "normal", "--out", "cmp", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert {"layers.csv", "summary.csv", "report.html"} <= {
        p.name for p in (tmp_path / "cmp").iterdir()
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.pt", "missing.pt"),
        ("nonsense:thing", "nonsense"),
        ("empty.pt", "empty"),
        ("page.pt", "HTML"),
        ("adir.pt", "directory"),
    ],
)
def test_bad_specs_give_one_line_and_exit_2(tmp_path, spec, message):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "page.pt").write_text("<!DOCTYPE html><html><body>quota exceeded</body></html>")
    (tmp_path / "adir.pt").mkdir()
    result = run("analyze", spec, "--out", "never.csv", "--format", "csv", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("filterstats: error:")
    assert message.lower() in result.stderr.lower()
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "never.csv").exists()


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickled_code_is_refused_and_never_run(tmp_path):
    torch.save({"weight": torch.zeros(2, 2, 3, 3), "payload": Exploit()}, tmp_path / "evil.pt")
    result = run("compare", "evil.pt", "evil.pt", "--out", "cmp", cwd=tmp_path)
    assert result.returncode == 2
    assert "weights_only" in result.stderr
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "cmp").exists()  # no partial output directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


def test_bad_option_is_a_usage_error(tmp_path):
    result = run("analyze", "demo:robust", "--kernel-size", "big", cwd=tmp_path)
    assert result.returncode == 2
    assert "kernel size" in result.stderr


def test_trust_pickle_is_an_explicit_opt_in(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    torch.save(net, tmp_path / "whole.pt")  # a pickled module, not a state dict
    refused = run("analyze", "whole.pt", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--trust-pickle" in refused.stderr
    trusted = run("analyze", "whole.pt", "--trust-pickle", cwd=tmp_path)
    assert trusted.returncode == 0, trusted.stderr
    assert "FilterReport: whole.pt" in trusted.stdout
