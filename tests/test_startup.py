"""Start-up: ``import filterstats`` and the command line load no optional or heavy module.

Checked with ``python -X importtime`` in fresh processes. torch itself imports tqdm
(``torch.hub``) when it is installed, so a module counts against filterstats only if
``import torch`` alone does not import it. The time this saves is measured by
``benchmarks/bench_startup.py``, never asserted here.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "filterstats"

#: Imported only inside the functions that need them.
HEAVY = ("scipy.stats", "pandas", "pyarrow", "matplotlib", "tqdm", "onnx", "timm",
         "robustbench", "torchvision", "h5py", "ray", "submitit", "safetensors")  # fmt: skip


def imported_modules(*python_args: str) -> set[str]:
    """Every module a fresh ``python -X importtime ARGS`` imports."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *python_args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.fixture(scope="module")
def torch_modules() -> set[str]:
    return imported_modules("-c", "import torch")


@pytest.mark.parametrize(
    "python_args",
    [("-c", "import filterstats"), ("-m", "filterstats", "--version")],
    ids=["import filterstats", "filterstats --version"],
)
def test_start_up_imports_nothing_heavy_beyond_torch(torch_modules, python_args):
    modules = imported_modules(*python_args)
    assert "filterstats" in modules
    assert heavy(modules - torch_modules) == []
    assert "scipy.stats" not in modules  # about a second on its own


def test_the_check_sees_a_heavy_import(torch_modules):
    """The check can fail: a module that imports scipy.stats is caught."""
    modules = imported_modules("-c", "import filterstats, scipy.stats")
    assert "scipy.stats" in heavy(modules - torch_modules)


def _root_imports(path: Path) -> list[str]:
    """``import filterstats`` / ``from filterstats import NAME`` (NAME not a submodule)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name == "filterstats"]
        elif isinstance(node, ast.ImportFrom) and node.module == "filterstats" and not node.level:
            for alias in node.names:
                submodule = PACKAGE / alias.name
                if not (submodule.with_suffix(".py").is_file() or submodule.is_dir()):
                    found.append(f"from filterstats import {alias.name}")
    return [f"{path.relative_to(ROOT)}:{item}" for item in found]


def test_no_module_imports_the_package_root():
    modules = [p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"]
    assert len(modules) > 40
    found = [item for path in modules for item in _root_imports(path)]
    assert found == []


def test_the_root_import_check_can_fail(tmp_path):
    sample = PACKAGE / "_sample_for_the_test.py"
    try:
        sample.write_text(
            "def f():\n    import filterstats\n    from filterstats import __version__\n"
        )
        assert [item.split(":", 1)[1] for item in _root_imports(sample)] == [
            "import filterstats",
            "from filterstats import __version__",
        ]
    finally:
        sample.unlink()


def test_the_version_has_one_source():
    from filterstats import __version__
    from filterstats._version import __version__ as version

    assert __version__ is version
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'version = { attr = "filterstats._version.__version__" }' in pyproject
    assert '\nversion = "' not in pyproject  # no second, hand-kept copy
