"""``filterstats compare``: summary formats and the ``--out`` directory rule."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest
import torch

from filterstats.cli import main
from tests.cli.helpers import one_error_line, run, run_core_only, small_checkpoint


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


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


def test_compare_summary_formats_with_the_core_dependencies_only(tmp_path):
    small_checkpoint(tmp_path / "a.pt", 0)
    small_checkpoint(tmp_path / "b.pt", 1)
    as_json = run_core_only("compare", "a.pt", "b.pt", "--format", "json", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    payload = json.loads(as_json.stdout)
    assert payload["filterstats"]["definition"] == "paper"  # how it was made
    records = payload["rows"]
    assert [r["metric"] for r in records][:3] == ["sparsity", "diversity", "orthogonality"]
    as_csv = run_core_only("compare", "a.pt", "b.pt", "--format", "csv", cwd=tmp_path)
    assert as_csv.returncode == 0, as_csv.stderr
    assert as_csv.stdout.startswith("# filterstats {")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout.split("\n", 1)[1])))
    assert [r["metric"] for r in rows] == [r["metric"] for r in records]
    written = run_core_only("compare", "a.pt", "b.pt", "--out", "cmp", cwd=tmp_path)
    assert written.returncode == 0, written.stderr
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == [
        "layers.csv",
        "report.html",
        "summary.csv",
    ]


def test_pickled_code_is_refused_and_never_run(tmp_path):
    torch.save({"weight": torch.zeros(2, 2, 3, 3), "payload": Exploit()}, tmp_path / "evil.pt")
    result = run("compare", "evil.pt", "evil.pt", "--out", "cmp", cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert "weights_only" in line and "--trust-pickle" in line
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "cmp").exists()  # no partial output directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


# ------------------------------------------------- --out DIR holds one run's files


@pytest.fixture
def pair(tmp_path, monkeypatch):
    small_checkpoint(tmp_path / "a.pt", 0)
    small_checkpoint(tmp_path / "b.pt", 1)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_stale_files_of_an_earlier_run_are_removed(pair, capsys):
    pytest.importorskip("pyarrow")
    assert main(["compare", "a.pt", "b.pt", "--out", "cmp", "--format", "parquet", "-q"]) == 0
    assert "layers.parquet" in {p.name for p in (pair / "cmp").iterdir()}
    (pair / "cmp" / "metrics_by_depth.png").write_bytes(b"an earlier demo run's figure")
    assert main(["compare", "a.pt", "b.pt", "--out", "cmp", "-q"]) == 0
    files = sorted(p.name for p in (pair / "cmp").iterdir())
    assert files == ["layers.csv", "report.html", "summary.csv"]  # only this run's
    assert "wrote cmp/: layers.csv, report.html, summary.csv" in capsys.readouterr().out


def test_a_directory_with_foreign_files_is_refused_before_any_work(pair, capsys, monkeypatch):
    (pair / "cmp").mkdir()
    (pair / "cmp" / "notes.txt").write_text("mine")
    (pair / "cmp" / "summary.csv").write_text("an earlier run's")
    loaded: list[str] = []
    monkeypatch.setattr("filterstats.zoo.specs.load_model", lambda spec, **_: loaded.append(spec))
    assert main(["compare", "a.pt", "b.pt", "--out", "cmp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notes.txt" in err[0] and "did not write" in err[0], err
    assert loaded == []
    assert sorted(p.name for p in (pair / "cmp").iterdir()) == ["notes.txt", "summary.csv"]
    assert (pair / "cmp" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--out", "afile"], "is a file"),
        (["--out", "nodir/cmp"], "does not exist"),
        (["--format", "parquet"], "--format parquet needs --out DIR"),
    ],
)
def test_bad_output_is_refused_before_any_work(pair, capsys, monkeypatch, args, needle):
    (pair / "afile").write_text("x")
    loaded: list[str] = []
    monkeypatch.setattr("filterstats.zoo.specs.load_model", lambda spec, **_: loaded.append(spec))
    assert main(["compare", "a.pt", "b.pt", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert loaded == []


def test_a_failed_run_leaves_the_earlier_output_as_it_was(pair, capsys):
    assert main(["compare", "a.pt", "b.pt", "--out", "cmp", "-q"]) == 0
    before = {p.name: p.read_bytes() for p in (pair / "cmp").iterdir()}
    assert main(["compare", "a.pt", "missing.pt", "--out", "cmp", "-q"]) == 2
    assert {p.name: p.read_bytes() for p in (pair / "cmp").iterdir()} == before
    assert sorted(p.name for p in pair.iterdir()) == ["a.pt", "b.pt", "cmp"]  # no staging left


def test_equal_labels_are_refused_before_any_work(pair, capsys, monkeypatch):
    loaded: list[str] = []
    monkeypatch.setattr("filterstats.zoo.specs.load_model", lambda spec, **_: loaded.append(spec))
    assert main(["compare", "a.pt", "b.pt", "--labels", "x", "x"]) == 2
    assert "--labels must be two different names" in capsys.readouterr().err
    assert loaded == []
