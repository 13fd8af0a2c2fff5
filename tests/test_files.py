"""Atomic writes: the target holds the old content or the new, and no temporary remains."""

from __future__ import annotations

import functools
import importlib.util
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from filterstats._files import atomic_target, atomic_write_text


def test_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    atomic_write_text(target, "new, ünïcode\n")
    assert target.read_text(encoding="utf-8") == "new, ünïcode\n"
    assert list(tmp_path.iterdir()) == [target]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")

    def fail_halfway() -> None:
        with atomic_target(target) as temporary:
            temporary.write_text("half of the new")
            raise RuntimeError("failed after writing half")

    with pytest.raises(RuntimeError, match="half"):
        fail_halfway()
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_concurrent_writers_use_their_own_temporaries(tmp_path):
    target = tmp_path / "out.txt"
    names: list[str] = []
    inside = threading.Barrier(4)

    def write(text: str) -> None:
        with atomic_target(target) as temporary:
            names.append(temporary.name)
            temporary.write_text(text)
            inside.wait(timeout=10)  # all four temporaries exist at once

    threads = [threading.Thread(target=write, args=(str(i) * 100,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(names)) == 4
    assert target.read_text() in {str(i) * 100 for i in range(4)}
    assert list(tmp_path.iterdir()) == [target]


# ------------------------------------------------------- output paths checked up front


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3)
    ).eval()


@functools.cache
def _writers() -> dict[str, Callable[[Path], object]]:
    """Every public writer, given its output path."""
    import filterstats as fs

    a, b = _net(0), _net(1)
    report = fs.analyze(a)
    comparison = fs.compare(a, b)
    summary, by_depth = comparison.summary(), comparison.by_depth()
    spectra = fs.conv_spectra(a, input_size=(3, 8, 8), progress=False)
    profile = fs.depth_profile(report)
    divergence = fs.filter_divergence([a], [b], depth_bins=1)
    writers: dict[str, Callable[[Path], object]] = {
        "report": lambda p: fs.report(report, p, figures=False),
        "report(comparison)": lambda p: fs.report(comparison, p, figures=False),
        "FilterReport.to_csv": report.to_csv,
        "FilterReport.to_json": report.to_json,
        "ComparisonSummary.to_csv": summary.to_csv,
        "ComparisonSummary.to_json": summary.to_json,
        "DepthComparison.to_csv": by_depth.to_csv,
        "DepthComparison.to_json": by_depth.to_json,
        "ConvSpectra.to_csv": spectra.to_csv,
        "ConvSpectra.to_json": spectra.to_json,
        "DepthProfile.to_csv": profile.to_csv,
        "DepthProfile.to_json": profile.to_json,
        "filter_divergence.to_csv": divergence.to_csv,
        "filter_divergence.to_json": divergence.to_json,
    }
    if importlib.util.find_spec("pyarrow") is not None:
        writers["FilterReport.to_parquet"] = report.to_parquet
        writers["ComparisonSummary.to_parquet"] = summary.to_parquet
    if all(importlib.util.find_spec(m) for m in ("h5py", "pandas", "tables")):
        from filterstats.cfdb import write_cfdb

        writers["write_cfdb"] = lambda p: write_cfdb(p, {"a": a})
    return writers


WRITERS = [
    "report", "report(comparison)", "FilterReport.to_csv", "FilterReport.to_json",
    "FilterReport.to_parquet", "ComparisonSummary.to_csv", "ComparisonSummary.to_json",
    "ComparisonSummary.to_parquet", "DepthComparison.to_csv", "DepthComparison.to_json",
    "ConvSpectra.to_csv", "ConvSpectra.to_json", "DepthProfile.to_csv", "DepthProfile.to_json",
    "filter_divergence.to_csv", "filter_divergence.to_json", "write_cfdb",
]  # fmt: skip


@pytest.mark.parametrize("name", WRITERS)
def test_every_writer_names_the_path_and_the_fix_never_a_temporary(name, tmp_path):
    if name not in _writers():
        pytest.skip(f"{name} needs an optional dependency")
    write = _writers()[name]
    folder = tmp_path / "work"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as error:
        write(folder)
    message = str(error.value)
    assert f"{folder} is a directory; give a file name such as {folder}{os.sep}" in message
    assert ".tmp" not in message and "Errno" not in message
    missing = tmp_path / "missing" / "out.csv"
    with pytest.raises(FileNotFoundError, match="does not exist; create it first") as error:
        write(missing)
    assert ".tmp" not in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
    assert list(folder.iterdir()) == []


def test_the_helper_checks_the_directory_before_the_block_runs(tmp_path):
    (tmp_path / "file").write_text("x")
    ran = []
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        with atomic_target(tmp_path / "file" / "out.csv"):
            ran.append(True)
    with pytest.raises(IsADirectoryError, match=r"such as .*report\.html"):
        atomic_write_text(tmp_path, "text", example="report.html")
    assert ran == []
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
