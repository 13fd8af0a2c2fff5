import os
import re
import sys
import types
import zipfile

import pytest
import torch
from torch import nn

import filterstats
import filterstats as fs
from filterstats.checkpoints import (
    CheckpointError,
    _pickled_class,
    load_state_dict,
    to_state_dict,
)


def small_state():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    return net.state_dict()


def assert_same(loaded, expected):
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_exported_from_the_package():
    assert filterstats.CheckpointError is CheckpointError
    assert issubclass(CheckpointError, ValueError)


def test_plain_state_dict_round_trip(tmp_path):
    state = small_state()
    path = tmp_path / "net.pt"
    torch.save(state, path)
    assert_same(load_state_dict(path), state)


def test_legacy_non_zip_format(tmp_path):
    state = small_state()
    path = tmp_path / "net.pth"
    torch.save(state, path, _use_new_zipfile_serialization=False)
    assert_same(load_state_dict(str(path)), state)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "last"])
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod.", "_orig_mod.module."])
def test_training_checkpoints_are_unwrapped(tmp_path, key, prefix):
    state = small_state()
    wrapped = {key: {prefix + name: value for name, value in state.items()}, "epoch": 7, "opt": {}}
    path = tmp_path / "ckpt.ckpt"
    torch.save(wrapped, path)
    assert_same(load_state_dict(path), state)


def test_non_tensor_entries_are_dropped():
    state = {"conv.weight": torch.ones(2, 1, 3, 3), "_metadata": {"x": 1}, "step": 3}
    assert list(to_state_dict(state)) == ["conv.weight"]


def test_colliding_prefixes_are_an_error():
    state = {"module.w": torch.ones(1), "w": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="collide"):
        to_state_dict(state)


def test_no_tensors_is_an_error(tmp_path):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "state_dict": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_state_dict(path)


def test_missing_file_names_the_exact_path(tmp_path):
    path = tmp_path / "sub" / "model.pt"
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    assert str(path.resolve()) in str(info.value)
    assert "not found" in str(info.value)


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        load_state_dict(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_state_dict(path)


@pytest.mark.parametrize(
    "page",
    [
        b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>",
        b"\n  <html><body>Too many users have viewed or downloaded this file</body></html>",
    ],
)
def test_html_page_from_a_failed_download(tmp_path, page):
    path = tmp_path / "Carmon2019Unlabeled.pt"
    path.write_bytes(page)
    with pytest.raises(CheckpointError, match="HTML page, not a checkpoint"):
        load_state_dict(path)


def test_truncated_zip(tmp_path):
    path = tmp_path / "net.pt"
    torch.save(small_state(), path)
    data = path.read_bytes()
    assert zipfile.is_zipfile(path)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_state_dict(path)


def test_unknown_bytes(tmp_path):
    path = tmp_path / "net.bin"
    path.write_bytes(b"GGUF\x00\x01binary model of another kind" * 4)
    with pytest.raises(CheckpointError, match="not a checkpoint filterstats can read"):
        load_state_dict(path)


class _Malicious:
    def __init__(self, sentinel):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.mkdir, (self.sentinel,))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"conv.weight": torch.ones(1), "payload": _Malicious(sentinel)}, path)
    assert not sentinel.exists()
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert "weights_only" in message
    assert "trust_pickle=True" in message
    assert "mkdir" in message  # names what was refused
    assert not sentinel.exists()
    # The explicit opt-in runs the pickle: proof that the refusal above was not vacuous.
    load_state_dict(path, trust_pickle=True)
    assert sentinel.exists()


def test_pickled_module_needs_the_opt_in(tmp_path):
    path = tmp_path / "whole_model.pt"
    net = nn.Conv2d(1, 2, 3)
    torch.save(net, path)
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        load_state_dict(path)
    assert_same(load_state_dict(path, trust_pickle=True), net.state_dict())


def test_safetensors_round_trip_and_truncation(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = {k: v.contiguous() for k, v in small_state().items() if v.dim() > 0}
    path = tmp_path / "net.safetensors"
    safetensors_torch.save_file(state, str(path))
    loaded = load_state_dict(path)
    assert set(loaded) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(CheckpointError):
        load_state_dict(path)


# ------------------------------------------------- pickled classes that are gone


def test_pickled_class_names_the_class_torch_could_not_import(tmp_path, monkeypatch):
    module = types.ModuleType("vanished_models")
    exec(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(1, 1, 3)\n",
        module.__dict__,
    )
    module.Net.__module__ = "vanished_models"
    monkeypatch.setitem(sys.modules, "vanished_models", module)
    torch.save(module.Net(), tmp_path / "net.pt")
    monkeypatch.delitem(sys.modules, "vanished_models")
    with pytest.raises(ModuleNotFoundError) as missing_module:
        torch.load(tmp_path / "net.pt", weights_only=False)
    assert _pickled_class(missing_module.value) == "vanished_models.Net"
    monkeypatch.setitem(sys.modules, "vanished_models", types.ModuleType("vanished_models"))
    with pytest.raises(AttributeError) as missing_name:
        torch.load(tmp_path / "net.pt", weights_only=False)
    assert _pickled_class(missing_name.value) == "vanished_models.Net"


def test_other_import_errors_are_not_pickled_classes():
    with pytest.raises(ModuleNotFoundError) as caught:
        import filterstats_no_such_module  # noqa: F401
    assert _pickled_class(caught.value) is None
    assert _pickled_class(AttributeError("'NoneType' object has no attribute 'x'")) is None


def test_a_trusted_pickle_of_a_missing_class_is_one_clear_error(tmp_path, monkeypatch):
    module = types.ModuleType("vanished_models2")
    exec(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(1, 1, 3)\n",
        module.__dict__,
    )
    module.Net.__module__ = "vanished_models2"
    monkeypatch.setitem(sys.modules, "vanished_models2", module)
    torch.save(module.Net(), tmp_path / "net.pt")
    monkeypatch.delitem(sys.modules, "vanished_models2")
    with pytest.raises(CheckpointError, match=r"class vanished_models2\.Net.*importable"):
        fs.analyze(tmp_path / "net.pt", trust_pickle=True)


def test_an_attribute_error_of_a_bug_is_not_taken_for_a_missing_class(tmp_path, monkeypatch):
    torch.save({"w": torch.ones(1)}, tmp_path / "x.pt")

    def broken(*args, **kwargs):
        raise AttributeError("'NoneType' object has no attribute 'weight'")

    monkeypatch.setattr(torch, "load", broken)
    with pytest.raises(AttributeError, match="NoneType"):
        fs.checkpoints.read_checkpoint(tmp_path / "x.pt", trust_pickle=True)


@pytest.mark.parametrize(
    ("content", "found"),
    [
        ({"a": "b"}, r"a dict with no tensors \(1 key: 'a'; values: str\)"),
        ({}, r"a dict with no tensors \(empty\)"),
        (
            {f"k{i}": i for i in range(7)},
            r"a dict with no tensors \(7 keys: 'k0', 'k1', 'k2', 'k3', 'k4' and 2 more; values: int\)",
        ),
    ],
)
def test_a_mapping_without_tensors_says_what_was_found_and_what_is_expected(content, found):
    with pytest.raises(CheckpointError) as caught:
        fs.analyze(content)
    message = str(caught.value)
    assert re.match(rf"`model` holds no state dict: {found}\. Expected a state dict", message)
    assert "the state dict holds" not in message and "model.state_dict()" in message


def test_a_safetensors_file_cut_inside_its_header_says_so(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    good = tmp_path / "good.safetensors"
    safetensors_torch.save_file({"conv.weight": torch.randn(8, 4, 3, 3)}, str(good))
    blob = good.read_bytes()
    for cut in (9, 12, 40):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt safetensors file") as e:
            load_state_dict(path)
        assert "neither a torch.save" not in str(e.value) and str(path) in str(e.value)
