"""Nothing changes: the model, the file system outside the output path, the network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

import filterstats as fs
from tests.conftest import model_fingerprint
from tests.hardening.conftest import listing, small_net

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _trained_looking() -> nn.Module:
    model = small_net().train()
    model[0].weight.requires_grad_(False)  # a frozen stem
    model[3].register_forward_hook(lambda *args: None)
    model[3].register_forward_pre_hook(lambda *args: None)
    model[5].eval()  # mixed training flags
    return model


def _spectral() -> nn.Module:
    model = small_net()
    parametrizations.spectral_norm(model[0])
    nn.utils.spectral_norm(model[3])  # old style: a pre-hook and u/v buffers
    return model.train()


def _half() -> nn.Module:
    return small_net().half().eval()


def _channels_last_double() -> nn.Module:
    return small_net().double().to(memory_format=torch.channels_last)


def _input(model: nn.Module) -> torch.Tensor:
    return torch.zeros(1, 3, 8, 8, dtype=next(model.parameters()).dtype)


MODELS: dict[str, Callable[[], nn.Module]] = {
    "hooks+frozen+mixed-modes": _trained_looking,
    "spectral-norm-training": _spectral,
    "half": _half,
    "double-channels-last": _channels_last_double,
}

ENTRY_POINTS: dict[str, Callable[[nn.Module, Path], Any]] = {
    "extract_filters": lambda m, out: fs.extract_filters(m, kernel_size=None),
    "sparsity": lambda m, out: fs.sparsity(fs.extract_filters(m)),
    "diversity": lambda m, out: fs.diversity(fs.extract_filters(m), definition="torchconvquality"),
    "orthogonality": lambda m, out: fs.orthogonality(fs.extract_filters(m)),
    "measure": lambda m, out: fs.measure(fs.extract_filters(m)),
    "analyze": lambda m, out: fs.analyze(m, depth="forward", example_inputs=_input(m)),
    "analyze-to-csv": lambda m, out: fs.analyze(m).to_csv(out / "layers.csv"),
    "compare": lambda m, out: fs.compare(m, small_net(seed=1), n_boot=20).summary(),
    "report": lambda m, out: fs.report(
        fs.compare(m, small_net(1), n_boot=20), out / "r.html", figures=False
    ),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("kind", MODELS)
def test_entry_points_leave_the_model_and_the_disk_as_they_were(tmp_path, monkeypatch, kind, entry):
    work = tmp_path / "cwd"
    out = tmp_path / "out"
    work.mkdir()
    out.mkdir()
    monkeypatch.chdir(work)
    model = MODELS[kind]()
    before = model_fingerprint(model)
    files_before = listing(tmp_path)
    ENTRY_POINTS[entry](model, out)
    assert model_fingerprint(model) == before
    new = {path for path, _ in listing(tmp_path) - files_before}
    assert all(path.startswith(f"{tmp_path.name}/out") for path in new), new


def test_report_and_exports_write_only_the_requested_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = fs.analyze(small_net())
    report.to_csv(tmp_path / "a.csv")
    report.to_json(tmp_path / "a.json")
    fs.report(report, tmp_path / "a.html", figures=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "a.html", "a.json"]


def _save(path: Path, seed: int) -> str:
    torch.save(small_net(seed).state_dict(), path)
    return str(path)


def test_scan_writes_only_into_its_store(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    specs = [_save(tmp_path / "a.pt", 0), _save(tmp_path / "b.pt", 1)]
    (tmp_path / "broken.pt").write_bytes(b"")
    before = listing(tmp_path)
    summary = fs.scan([*specs, str(tmp_path / "broken.pt")], tmp_path / "store", workers=1,
                      progress=False)  # fmt: skip
    assert summary is not None
    new = {path for path, _ in listing(tmp_path) - before}
    assert new and all(p.startswith(f"{tmp_path.name}/store") for p in new), new
    frame = fs.open_store(tmp_path / "store")
    assert set(frame["model"]) == set(specs)
    assert list(work.iterdir()) == []


def test_the_network_fixture_blocks_connections(no_network):
    import socket

    with pytest.raises(RuntimeError, match="network access attempted"):
        socket.create_connection(("example.org", 80), timeout=1)
    assert len(no_network) == 1
    no_network.clear()  # the attempt above was the point of this test
