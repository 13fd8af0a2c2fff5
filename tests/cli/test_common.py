"""What the commands share: messages, hints, the ``--out`` directory rule, model loading."""

from __future__ import annotations

import ast
import types
import warnings
from pathlib import Path

import pytest

from filterstats.cli import _common, main
from filterstats.cli._common import (
    CLI_HINTS,
    OutputDirectory,
    UserError,
    cli_text,
    kernel_size,
)

PACKAGE = Path(_common.__file__).resolve().parents[1]


# ------------------------------------------------- messages


def test_cli_text_is_one_line_without_temporary_names():
    message = (
        "cannot write /data/out/.layers.csv.4242.0a1b2c3d.tmp:\n  disk full\n"
        "and /data/.cmp.77.deadbeef.tmp/report.html, /s/manifest/.x.json.0123abcd.tmp"
    )
    assert cli_text(OSError(message)) == (
        "cannot write /data/out/layers.csv: disk full and /data/cmp/report.html, /s/manifest/x.json"
    )


def test_cli_text_unwraps_a_key_error():
    assert cli_text(KeyError("no such metric 'x'")) == "no such metric 'x'"


def library_strings() -> list[str]:
    """Every string literal of the library outside the CLI (f-string fields as ``{}``).

    Python joins adjacent literals into one node, so a message split over source lines
    is one string here.
    """
    texts = []
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.append(node.value)
            elif isinstance(node, ast.JoinedStr):
                texts.append(
                    "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
                )
    return texts


@pytest.mark.parametrize(("python", "command_line"), CLI_HINTS)
def test_every_python_hint_still_exists_in_the_library(python, command_line):
    """A hint reworded in the library must be reworded here too, or the CLI shows it raw."""
    assert any(python in text for text in library_strings())
    assert cli_text(f"fix:{python}") == f"fix:{command_line}"


def test_the_checkpoint_hint_names_the_option():
    from filterstats.checkpoints import CheckpointError

    refused = CheckpointError(
        "x.pt needs pickled code ... opt in explicitly with `trust_pickle=True` "
        "(CLI: --trust-pickle); it can run arbitrary code."
    )
    assert "opt in explicitly with --trust-pickle; it can" in cli_text(refused)


def test_third_party_deprecations_are_hidden_and_own_warnings_shown(monkeypatch, capsys):
    from filterstats._warnings import FilterStatsWarning

    def noisy(args):
        other = types.ModuleType("otherpackage")
        exec(
            "import warnings\n"
            "def f():\n"
            "    warnings.warn('old api', FutureWarning)\n"
            "    warnings.warn('going away', DeprecationWarning)\n",
            other.__dict__,
        )
        other.f()
        warnings.warn("a dead layer\nsecond line", FilterStatsWarning, stacklevel=1)
        return 0

    monkeypatch.setattr("filterstats.cli.zoo.run_paper", noisy)  # the parser is built per call
    assert main(["zoo", "paper"]) == 0
    err = capsys.readouterr().err
    assert err == "filterstats: warning: a dead layer second line\n"


def test_logged_warnings_share_the_warning_format(monkeypatch, capsys):
    """A logged warning (library logger) and a Python warning print in one form."""
    import logging

    from filterstats._warnings import FilterStatsWarning

    def both(args):
        logging.getLogger("filterstats.scanning.runner").warning("%d duplicate specs ignored", 2)
        warnings.warn("a dead layer", FilterStatsWarning, stacklevel=1)
        logging.getLogger("filterstats.cli.zoo").info("a progress line")
        return 0

    monkeypatch.setattr("filterstats.cli.zoo.run_paper", both)
    assert main(["zoo", "paper"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "filterstats: warning: 2 duplicate specs ignored",
        "filterstats: warning: a dead layer",
        "a progress line",
    ]


def test_kernel_size_parsing():
    import argparse

    assert kernel_size("3") == (3, 3)
    assert kernel_size("1x3") == (1, 3)
    assert kernel_size("all") is None
    with pytest.raises(argparse.ArgumentTypeError, match="positive"):
        kernel_size("0")


# ------------------------------------------------- the --out directory rule


def _files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_output_directory_replaces_an_earlier_runs_files_only(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    for name in ("layers.csv", "layers.parquet", "metrics_by_depth1.png"):
        (target / name).write_text("old")
    out = OutputDirectory(target)
    with out as staging:
        (staging / "layers.csv").write_text("new")
        (staging / "summary.csv").write_text("new")
    assert _files(target) == {"layers.csv": "new", "summary.csv": "new"}
    assert out.written == ["layers.csv", "summary.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left


@pytest.mark.parametrize("foreign", ["notes.txt", "layers.csv.bak", "subdir"])
def test_output_directory_with_foreign_entries_is_refused_and_untouched(tmp_path, foreign):
    target = tmp_path / "out"
    target.mkdir()
    (target / "summary.csv").write_text("old")
    if foreign == "subdir":
        (target / foreign).mkdir()
    else:
        (target / foreign).write_text("mine")
    with pytest.raises(UserError, match=f"did not write \\({foreign}\\)"):
        OutputDirectory(target)
    assert (target / "summary.csv").read_text() == "old"


def test_foreign_files_appearing_during_the_run_are_refused_at_the_end(tmp_path):
    target = tmp_path / "out"
    out = OutputDirectory(target)
    staging = out.__enter__()
    (staging / "layers.csv").write_text("new")
    target.mkdir()
    (target / "notes.txt").write_text("written meanwhile")
    with pytest.raises(UserError, match="notes.txt"):
        out.__exit__(None, None, None)
    assert _files(target) == {"notes.txt": "written meanwhile"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_block_leaves_the_directory_as_it_was(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "summary.csv").write_text("old")

    def failing_run():
        with OutputDirectory(target) as staging:
            (staging / "summary.csv").write_text("half")
            raise RuntimeError("the analysis failed")

    with pytest.raises(RuntimeError):
        failing_run()
    assert _files(target) == {"summary.csv": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_directory_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        OutputDirectory(tmp_path / "out")
