import pytest
import torch
from torch import nn

import filterstats
import filterstats as fs
from filterstats.zoo.specs import ModelSpec, load_model, parse_spec


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("timm:resnet18", ModelSpec("timm", "resnet18")),
        (
            "timm:resnet18.a1_in1k@w/r18.safetensors",
            ModelSpec("timm", "resnet18.a1_in1k", "w/r18.safetensors"),
        ),
        ("timm:repvgg_a0@random", ModelSpec("timm", "repvgg_a0", "random")),
        (
            "robustbench:cifar10/Linf/Carmon2019Unlabeled",
            ModelSpec("robustbench", "Carmon2019Unlabeled", "", "cifar10", "Linf"),
        ),
        (
            "robustbench:imagenet/Linf/Salman2020Do_R18@data/models",
            ModelSpec("robustbench", "Salman2020Do_R18", "data/models", "imagenet", "Linf"),
        ),
        ("demo:robust@3", ModelSpec("demo", "robust", "3")),
        ("demo:normal", ModelSpec("demo", "normal")),
        ("nets/model.pt", ModelSpec("state_dict", "nets/model.pt")),
        ("model.SAFETENSORS", ModelSpec("state_dict", "model.SAFETENSORS")),
        ("m@v2.onnx", ModelSpec("onnx", "m@v2.onnx")),
    ],
)
def test_parse(spec, expected):
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("hf:bert-base", "unknown model spec scheme 'hf'"),
        ("robustbench:cifar10/Carmon2019Unlabeled", "DATASET/THREAT/NAME"),
        ("demo:medium", "demo:normal or demo:robust"),
        ("demo:robust@x", "non-negative integer"),
        ("timm:", "has no name"),
        ("model.h5", "cannot tell what"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_spec(spec)


def test_existing_path_with_colon_is_a_path(tmp_path):
    path = tmp_path / "run:3.pt"
    torch.save({"w": torch.ones(1)}, path)
    assert parse_spec(str(path)).scheme == "state_dict"


def test_state_dict_file(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    path = tmp_path / "net.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    state = filterstats.load_model(str(path))
    assert set(state) == set(net.state_dict())
    torch.testing.assert_close(state["2.weight"], net[2].weight.detach())


def test_missing_file_error(tmp_path):
    with pytest.raises(filterstats.CheckpointError, match="not found"):
        load_model(str(tmp_path / "absent.safetensors"))


def test_onnx_file(tmp_path):
    pytest.importorskip("onnx")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False)
    everything = load_model(str(path))
    assert everything.names == ("0", "2")
    only_3x3 = fs.extract_filters(str(path))
    assert only_3x3.names == ("0",)
    assert [s.name for s in only_3x3.skipped] == ["2"]


def test_demo_spec_is_delegated():
    demo = pytest.importorskip("filterstats.demo")
    model = load_model("demo:robust@1")
    reference = demo.load_model("robust", 1)
    for (name, a), (_, b) in zip(
        model.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
