"""Hostile and broken files through load_state_dict, load_model specs and architecture loaders."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

import filterstats as fs
from filterstats.checkpoints import CheckpointError
from tests.hardening.conftest import SENTINEL, Payload, small_net


def _good(path: Path) -> Path:
    torch.save(small_net().state_dict(), path)
    return path


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Each broken file with a regex its error message must match."""
    data = _good(tmp_path / "good.pt").read_bytes()
    files: dict[str, tuple[Path, str]] = {}

    def write(name: str, content: bytes, match: str) -> None:
        path = tmp_path / name
        path.write_bytes(content)
        files[name] = (path, match)

    write("truncated.pt", data[: len(data) // 2], "truncated or corrupt")
    write("cut_tail.pt", data[:-20], "truncated or corrupt")
    flipped = bytearray(data)
    weight_bytes = small_net().state_dict()["3.weight"].numpy().tobytes()
    offset = data.index(weight_bytes[:64]) + 128  # inside the second conv's weight
    flipped[offset : offset + 64] = bytes(64)
    write("corrupt_tensor.pt", bytes(flipped), "corrupt.*CRC")
    write("empty.pt", b"", "empty")
    write("garbage.pt", os.urandom(256) + b"x", "not a checkpoint")
    write("page.pt", b"<!DOCTYPE html><html>quota exceeded</html>", "HTML page")
    torch.save(
        small_net().state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False
    )
    legacy = (tmp_path / "legacy.pt").read_bytes()
    write("legacy_truncated.pt", legacy[: len(legacy) // 2], "truncated or corrupt|cut off")
    (tmp_path / "folder.pt").mkdir()
    files["folder.pt"] = (tmp_path / "folder.pt", "is a directory")
    files["missing.pt"] = (tmp_path / "missing.pt", "not found")
    safetensors = pytest.importorskip("safetensors.torch")
    safetensors.save_file(small_net().state_dict(), str(tmp_path / "good.safetensors"))
    blob = (tmp_path / "good.safetensors").read_bytes()
    write("truncated.safetensors", blob[: len(blob) // 2], "truncated or corrupt")
    return files


BAD = ["truncated.pt", "cut_tail.pt", "corrupt_tensor.pt", "empty.pt", "garbage.pt", "page.pt",
       "legacy_truncated.pt", "folder.pt", "missing.pt", "truncated.safetensors"]  # fmt: skip


@pytest.mark.parametrize("name", BAD)
@pytest.mark.parametrize("entry", ["load_state_dict", "load_model", "analyze"])
def test_broken_files_give_one_clear_checkpoint_error(tmp_path, entry, name):
    path, match = _bad_files(tmp_path)[name]
    load = {"load_state_dict": fs.load_state_dict, "load_model": fs.load_model,
            "analyze": fs.analyze}[entry]  # fmt: skip
    with pytest.raises(CheckpointError, match=match) as caught:
        load(str(path))
    assert path.name in str(caught.value)


def test_checkpoint_saved_without_crcs_still_loads(tmp_path):
    config = pytest.importorskip("torch.utils.serialization").config
    config.save.compute_crc32 = False  # torch then writes 0 for every member's CRC
    try:
        path = _good(tmp_path / "nocrc.pt")
    finally:
        config.save.compute_crc32 = True
    assert set(fs.load_state_dict(path)) == set(small_net().state_dict())


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("entry", ["load_state_dict", "load_model", "analyze"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, entry, legacy):
    sentinel = tmp_path / SENTINEL
    path = tmp_path / "evil.pt"
    payload = {"state_dict": small_net().state_dict(), "extra": Payload(sentinel)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    load = {"load_state_dict": fs.load_state_dict, "load_model": fs.load_model,
            "analyze": fs.analyze}[entry]  # fmt: skip
    with pytest.raises(CheckpointError, match="weights_only") as caught:
        load(str(path))
    assert "trust_pickle=True" in str(caught.value)
    assert not sentinel.exists()


def test_a_bare_pickle_with_code_is_refused(tmp_path):
    sentinel = tmp_path / SENTINEL
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps(Payload(sentinel), protocol=2))
    with pytest.raises(CheckpointError, match="weights_only"):
        fs.load_state_dict(path)
    assert not sentinel.exists()


def test_a_whole_pickled_module_is_refused_without_opt_in(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(small_net(), path)
    with pytest.raises(CheckpointError, match="weights_only"):
        fs.load_state_dict(path)
    state = fs.load_state_dict(path, trust_pickle=True)  # the explicit opt-in
    assert set(state) == set(small_net().state_dict())


@pytest.mark.parametrize("content", [{"epoch": 3}, torch.ones(3), [torch.ones(3)]],
                         ids=["no-tensors", "bare-tensor", "list"])  # fmt: skip
def test_files_without_a_state_dict_say_what_they_hold(tmp_path, content):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        fs.load_state_dict(path)


def test_directory_with_a_checkpoint_suffix_through_a_spec(tmp_path):
    (tmp_path / "weights.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="is a directory"):
        fs.load_model(str(tmp_path / "weights.safetensors"))


# ------------------------------------------------------- wrong architecture


def test_wrong_architecture_lists_the_missing_keys(tmp_path):
    robustbench = pytest.importorskip("filterstats.zoo.robustbench")
    path = tmp_path / "other.pt"
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3))
    torch.save(other.state_dict(), path)  # same first layers, the last conv missing
    with pytest.raises(CheckpointError, match="does not fit") as caught:
        robustbench._load_into(small_net(), path, trust_pickle=False)
    assert "'5.weight'" in str(caught.value) and "'5.bias'" in str(caught.value)


def test_wrong_architecture_with_other_shapes_lists_keys_and_mismatches(tmp_path):
    robustbench = pytest.importorskip("filterstats.zoo.robustbench")
    path = tmp_path / "other.pt"
    state = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)).state_dict()
    state["head.weight"] = torch.zeros(10, 4)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not fit") as caught:
        robustbench._load_into(small_net(), path, trust_pickle=False)
    message = str(caught.value)
    assert (
        "4 tensors of another shape ('0.weight': file (4, 3, 3, 3), model (8, 3, 3, 3)" in message
    )
    assert "7 keys missing from the file ('1.running_mean', " in message  # counted, first few
    assert "1 unexpected key in the file ('head.weight')" in message


def test_wrong_shapes_for_the_architecture_name_the_layer(tmp_path):
    robustbench = pytest.importorskip("filterstats.zoo.robustbench")
    path = tmp_path / "wide.pt"
    wide = small_net().state_dict()
    wide["0.weight"] = torch.zeros(8, 5, 3, 3)
    torch.save(wide, path)
    with pytest.raises(CheckpointError, match=r"0\.weight"):
        robustbench._load_into(small_net(), path, trust_pickle=False)


def test_unexpected_keys_are_listed_in_a_warning(tmp_path, caplog):
    robustbench = pytest.importorskip("filterstats.zoo.robustbench")
    path = tmp_path / "extra.pt"
    state = small_net().state_dict()
    state["head.weight"] = torch.zeros(10, 4)
    torch.save(state, path)
    model = small_net(seed=1)
    robustbench._load_into(model, path, trust_pickle=False)
    assert "head.weight" in caplog.text
    assert torch.equal(model[0].weight, state["0.weight"])
