"""Fixtures and helpers of the hardening suite.

Every test here runs with the network blocked, and the run ends with a count of
passed/failed/skipped tests per category (one category per file).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = ("weights", "modules", "files", "side_effects", "determinism", "properties", "cli")


@pytest.fixture(autouse=True)
def _offline(no_network: list[object]) -> list[object]:
    """Every hardening test runs with the network blocked (``no_network`` in tests/conftest.py)."""
    return no_network


def small_net(seed: int = 0) -> nn.Sequential:
    """Two 3x3 convs and a 1x1 conv with a BatchNorm (buffers) in between."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 4, 1),
    )


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m filterstats ARGS`` in a fresh process, in ``cwd``, offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("FILTERSTATS_TEST_NETWORK", None)
    return subprocess.run(
        [sys.executable, "-m", "filterstats", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def listing(*roots: Path) -> set[tuple[str, int]]:
    """Every path under ``roots`` (relative, with its size; 0 for directories)."""
    found: set[tuple[str, int]] = set()
    for root in roots:
        for path in root.rglob("*"):
            size = path.stat().st_size if path.is_file() else 0
            found.add((f"{root.name}/{path.relative_to(root)}", size))
    return found


# ------------------------------------------------------------- per-category summary

_OUTCOMES: dict[str, Counter[str]] = defaultdict(Counter)


def _category(nodeid: str) -> str | None:
    path = nodeid.split("::", 1)[0].replace("\\", "/")
    if "hardening/" not in path:
        return None
    stem = Path(path).stem
    return stem.removeprefix("test_") if stem.startswith("test_") else None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    category = _category(report.nodeid)
    if category is None:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        else:
            outcome = report.outcome
        _OUTCOMES[category][outcome] += 1
    elif report.when == "teardown" and report.failed:
        _OUTCOMES[category]["failed"] += 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _OUTCOMES:
        return
    terminalreporter.section("hardening: tests per category")
    terminalreporter.write_line(
        f"{'category':<14} {'passed':>6} {'failed':>6} {'skipped':>7} {'xfailed':>7}"
    )
    order = [c for c in CATEGORIES if c in _OUTCOMES] + sorted(set(_OUTCOMES) - set(CATEGORIES))
    for category in order:
        counts = _OUTCOMES[category]
        failed = counts["failed"] + counts["xpassed"]
        terminalreporter.write_line(
            f"{category + ':':<14} {counts['passed']:>6} {failed:>6} {counts['skipped']:>7} "
            f"{counts['xfailed']:>7}"
        )


SENTINEL = "filterstats-sentinel"


class Payload:
    """Unpickling this creates a file: the side effect a refused checkpoint must not have."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.path),))
