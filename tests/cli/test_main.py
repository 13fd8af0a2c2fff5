"""The ``filterstats`` entry point: help, version, the package's layout."""

from __future__ import annotations

import pytest

from filterstats._version import __version__
from filterstats.cli import build_parser, main
from tests.cli.helpers import run

#: Help output depends on the terminal width; fixed for the golden files.
FIXED_WIDTH = {"COLUMNS": "80", "NO_COLOR": "1", "PYTHON_COLORS": "0"}


@pytest.mark.parametrize("command", [[], ["analyze"], ["compare"], ["demo"], ["zoo"], ["scan"]])
def test_help_everywhere(tmp_path, command):
    result = run(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "usage: filterstats" in result.stdout


def test_version_comes_from_the_version_module(tmp_path):
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"filterstats {__version__}\n"


def test_every_command_has_one_module_with_add_parser_and_run():
    from filterstats import cli

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert sorted(commands) == ["analyze", "compare", "demo", "scan", "zoo"]
    for name, sub in commands.items():
        module = getattr(cli, name)
        assert callable(module.add_parser)
        runner = sub.get_default("run")
        assert runner is None or runner.__module__ == f"filterstats.cli.{name}"


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "args"), [("help", ["--help"]), ("analyze_help", ["analyze", "--help"])]
)
def test_help_matches_its_golden_file(tmp_path, golden, name, args):
    result = run(*args, cwd=tmp_path, env=FIXED_WIDTH)
    assert result.returncode == 0, result.stderr
    # Python 3.10 calls the options section "optional arguments"; later versions "options".
    golden.check(name, result.stdout.replace("optional arguments:", "options:"))
