"""Every script in ``examples/`` runs, offline, and exits with 0.

Each example runs in a subprocess with a temporary output directory as its only
argument. An example that needs extras names their modules in a top-level
``REQUIRES = ("matplotlib", ...)``; it is skipped when one is not installed.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def required_modules(script: Path) -> tuple[str, ...]:
    """The string entries of a top-level ``REQUIRES = (...)`` of the script."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "REQUIRES" for target in node.targets
        ):
            return tuple(ast.literal_eval(node.value))
    return ()


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3


def test_requires_is_read() -> None:
    script = ROOT / "examples" / "compare_pair.py"
    if script.exists():
        assert "matplotlib" in required_modules(script)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    missing = [m for m in required_modules(script) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{script.name} needs {missing}")
    environment = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout}\n{result.stderr}"
