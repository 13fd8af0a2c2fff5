"""The benchmark scripts run after the README's main install (no test extra)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# `None` in sys.modules makes `import torchconvquality` fail as if it were not installed.
WITHOUT_REFERENCE = """
import runpy, sys
sys.modules["torchconvquality"] = None
sys.argv = ["bench_metrics.py", "--quick", "--models", "small-cnn"]
runpy.run_path("benchmarks/bench_metrics.py", run_name="__main__")
"""


@pytest.mark.slow
def test_bench_metrics_without_torchconvquality_runs_and_says_what_to_install():
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_REFERENCE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("bench_metrics:")]
    assert len(notes) == 1, done.stderr
    assert "pip install 'filterstats[test]'" in notes[0]
    table = [line for line in done.stdout.splitlines() if line.startswith("| small-cnn |")]
    methods = {line.split("|")[2].strip() for line in table}
    assert "filterstats (paper)" in methods and "plain per-layer (float64)" in methods
    assert "torchconvquality.measure_quality" not in methods
