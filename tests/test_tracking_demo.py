"""The demo trainer records filter trajectories without changing what it trains."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import filterstats as fs

ROOT = Path(__file__).resolve().parents[1]


def _train(out: Path, every: int) -> dict:
    command = [sys.executable, "-m", "filterstats.demo.train", "--out", str(out), "--quick",
               "--epochs", "1", "--seeds", "3", "--track-every", str(every)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    return json.loads((out / "metrics.json").read_text())


def test_demo_trainer_records_trajectories_and_the_same_weights(tmp_path):
    pytest.importorskip("sklearn")
    tracked = _train(tmp_path / "tracked", 5)
    plain = _train(tmp_path / "plain", 0)
    assert [m["sha256"] for m in tracked["models"]] == [m["sha256"] for m in plain["models"]]
    assert not list((tmp_path / "plain").glob("*.filters.csv"))
    normal = fs.read_history(tmp_path / "tracked" / "normal_seed3.filters.csv")
    robust = fs.read_history(tmp_path / "tracked" / "robust_seed3.filters.csv")
    assert normal.steps == robust.steps == (0, 5, 10, 15, 20, 25)  # 800 images / 32 = 25 steps
    assert normal.layers == tuple(f"conv{i}" for i in range(1, 6))
    # step 0 is the initialisation, the same for both kinds of a seed
    assert normal.report(0).to_records() != []
    for a, b in zip(normal.report(0).measured, robust.report(0).measured):
        assert a.metrics == b.metrics
    assert normal.params.label == "normal_seed3"
    last = normal.steps[-1]
    assert normal.report(last)["conv1"].diversity != robust.report(last)["conv1"].diversity
