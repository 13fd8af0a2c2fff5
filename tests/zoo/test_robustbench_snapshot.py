"""`zoo list` without RobustBench: the shipped registry snapshot, and that it is current."""

from __future__ import annotations

import datetime
import importlib.util
import subprocess
import sys
import warnings

import pytest

import filterstats as fs
from filterstats.zoo import robustbench as rb

KEYS = {"name", "dataset", "threat_model", "architecture", "n_checkpoints", "downloadable"}


@pytest.fixture
def without_robustbench(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make RobustBench unimportable, as on a machine without the extra."""
    from filterstats.zoo import _robustbench_compat

    def missing() -> None:
        raise ModuleNotFoundError(
            "robustbench is not installed; pip install 'filterstats[robustbench]'"
        )

    monkeypatch.setattr(_robustbench_compat, "import_robustbench", missing)


def test_snapshot_names_its_version_and_date_and_holds_plain_entries():
    snapshot = rb.read_snapshot()
    assert snapshot["robustbench_version"] == "1.1.1"
    datetime.date.fromisoformat(snapshot["date"])
    models = snapshot["models"]
    assert len(models) > 150
    assert all(set(entry) == KEYS for entry in models)
    assert {entry["dataset"] for entry in models} == set(rb.DATASETS)
    assert {entry["threat_model"] for entry in models} == set(rb.THREAT_MODELS)
    keys = [(entry["name"], entry["dataset"], entry["threat_model"]) for entry in models]
    assert len(set(keys)) == len(keys)


def test_list_models_without_robustbench_reads_the_snapshot_and_says_so(without_robustbench):
    with pytest.warns(
        fs.FilterStatsWarning,
        match=r"snapshot of RobustBench 1\.1\.1's model registry taken \d{4}-\d\d-\d\d",
    ) as caught:
        cifar = rb.list_models("cifar10", "Linf")
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert {m.dataset for m in cifar} == {"cifar10"} and {m.threat_model for m in cifar} == {"Linf"}
    carmon = next(m for m in cifar if m.name == "Carmon2019Unlabeled")
    assert "WideResNet" in carmon.architecture and "depth=28" in carmon.architecture
    assert carmon.paper_architecture == "WideResNet-28-10"
    assert next(m for m in cifar if m.name == "Chen2020Adversarial").n_checkpoints == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.FilterStatsWarning)
        everything = rb.list_models()
    assert len(everything) == len(rb.read_snapshot()["models"])


def test_every_paper_model_is_in_the_snapshot(without_robustbench):
    from filterstats.zoo.catalog import paper_pairs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.FilterStatsWarning)
        known = {(m.name, m.dataset) for m in rb.list_models(threat_model="Linf")}
    assert [
        (p.paper_id, p.dataset) for p in paper_pairs() if (p.paper_id, p.dataset) not in known
    ] == []


# `None` in sys.modules makes `import robustbench` fail as if it were not installed.
CLI_WITHOUT_ROBUSTBENCH = """
import runpy, sys
sys.modules["robustbench"] = None
sys.argv = ["filterstats", "zoo", "list", "--dataset", "cifar10", "--threat-model", "Linf"]
runpy.run_module("filterstats", run_name="__main__")
"""


def test_cli_zoo_list_works_offline_without_robustbench():
    done = subprocess.run(
        [sys.executable, "-c", CLI_WITHOUT_ROBUSTBENCH], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "snapshot of RobustBench 1.1.1" in lines[0] and "Traceback" not in done.stderr
    assert "Carmon2019Unlabeled" in done.stdout and "imagenet" not in done.stdout


@pytest.mark.zoo
@pytest.mark.skipif(importlib.util.find_spec("robustbench") is None, reason="needs robustbench")
def test_installed_robustbench_is_listed_without_a_warning_and_equals_the_snapshot():
    import importlib.metadata

    with warnings.catch_warnings():
        warnings.simplefilter("error", fs.FilterStatsWarning)
        live = rb.list_models()
    snapshot = rb.read_snapshot()
    assert snapshot["robustbench_version"] == importlib.metadata.version("robustbench")
    assert snapshot["models"] == rb.registry_entries(), (
        "the shipped snapshot is out of date: .venv-zoo/bin/python .ci/robustbench_snapshot.py"
    )
    assert len(live) == len(snapshot["models"])
