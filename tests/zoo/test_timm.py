import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import filterstats as fs
from filterstats.checkpoints import CheckpointError

pytestmark = pytest.mark.zoo
timm = pytest.importorskip("timm")
zoo_timm = pytest.importorskip("filterstats.zoo.timm")
from timm.layers import (  # noqa: E402
    Conv2dSame,
    MixedConv2d,
    ScaledStdConv2d,
    ScaledStdConv2dSame,
    StdConv2d,
    StdConv2dSame,
)


def _reference_standardize(weight, eps, gain=None, scale=None):
    # independent formula: (w - mean) / sqrt(var + eps) per output filter, biased variance
    flat = weight.double().reshape(weight.shape[0], -1)
    out = (flat - flat.mean(1, keepdim=True)) / torch.sqrt(
        flat.var(1, unbiased=False, keepdim=True) + eps
    )
    if gain is not None:
        out = out * (gain.double().reshape(-1, 1) * scale)
    return out.reshape(weight.shape).float()


@pytest.mark.parametrize("cls", [StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame])
def test_extracted_filter_is_what_forward_uses(cls):
    torch.manual_seed(0)
    conv = cls(4, 6, 3, stride=1)
    if hasattr(conv, "gain"):
        with torch.no_grad():
            conv.gain.uniform_(0.5, 2.0)
    net = nn.Sequential(conv)
    layer = fs.extract_filters(net)["0"]
    gain = getattr(conv, "gain", None)
    expected = _reference_standardize(
        conv.weight.detach(), conv.eps, gain, getattr(conv, "scale", None)
    )
    torch.testing.assert_close(layer.weight, expected, rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 4, 9, 9)
    # stride 1, odd kernel: "same" padding is symmetric k // 2
    reference = F.conv2d(x, layer.weight, conv.bias, 1, 1)
    torch.testing.assert_close(conv(x), reference, rtol=1e-4, atol=1e-4)
    assert not torch.equal(layer.weight, conv.weight.detach())


def test_same_padding_and_mixed_convs_use_their_stored_weight():
    torch.manual_seed(0)
    same = Conv2dSame(4, 4, 3, stride=2)
    mixed = MixedConv2d(4, 6, [3, 5])
    filters = fs.extract_filters(nn.Sequential(same, mixed), kernel_size=None)
    torch.testing.assert_close(filters["0"].weight, same.weight.detach(), rtol=0, atol=0)
    children = [name for name, m in mixed.named_children()]
    assert {f"1.{c}" for c in children} <= set(filters.names)


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def _conv_modules(model):
    return sum(1 for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd))


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "convnext_atto",
        "efficientnet_b0",
        "regnetx_002",
        "nf_resnet26",
        "resnetv2_50x1_bit",
        "repvgg_a0",
        "mixnet_s",
        "vit_tiny_patch16_224",
    ],
)
def test_census_every_conv_is_found(name):
    model = zoo_timm.create_model(name)
    expected = _conv_modules(model)
    assert expected > 0
    every = fs.extract_filters(model, kernel_size=None)
    assert len(every) + len(every.skipped) == expected
    assert all("shares its weight" in s.reason for s in every.skipped)
    with (
        pytest.warns(fs.FilterStatsWarning)
        if not any(layer.kernel_size == (3, 3) for layer in every)
        else _nothing()
    ):
        only_3x3 = fs.extract_filters(model, kernel_size=(3, 3))
    assert len(only_3x3) + len(only_3x3.skipped) == expected
    assert len(only_3x3) == sum(1 for layer in every if layer.kernel_size == (3, 3))


def test_reparameterized_repvgg_keeps_outputs_and_has_only_3x3_branches():
    torch.manual_seed(0)
    plain = zoo_timm.create_model("repvgg_a0", num_classes=10)
    fused = zoo_timm.create_model("repvgg_a0", num_classes=10, reparameterize=True)
    x = torch.randn(1, 3, 64, 64)
    deployed = timm.utils.reparameterize_model(plain)
    torch.testing.assert_close(deployed(x), plain(x), rtol=1e-3, atol=1e-3)
    before, after = fs.extract_filters(plain), fs.extract_filters(deployed)
    assert len(after.skipped) == 0  # 1x1 branches folded into the 3x3 kernels
    assert len(before.skipped) > 0
    assert len(after) == len(before)
    assert _conv_modules(fused) == _conv_modules(deployed)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_local_checkpoint(tmp_path, suffix):
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", num_classes=7).eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(reference.state_dict(), str(path))
    else:
        torch.save({"state_dict": reference.state_dict()}, path)
    loaded = zoo_timm.create_model("resnet18", num_classes=7, checkpoint=path)
    for (k, a), (_, b) in zip(
        loaded.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    a, b = fs.extract_filters(loaded), fs.extract_filters(reference)
    torch.testing.assert_close(fs.diversity(a), fs.diversity(b), rtol=0, atol=0, equal_nan=True)


def test_timm_spec_with_file(tmp_path):
    reference = timm.create_model("resnet18").eval()
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    loaded = fs.load_model(f"timm:resnet18@{path}")
    torch.testing.assert_close(loaded.fc.weight, reference.fc.weight, rtol=0, atol=0)


def test_checkpoint_that_does_not_fit(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit") as caught:
        zoo_timm.create_model("resnet34", checkpoint=path)
    message = str(caught.value)  # counts and the first few keys, never the whole list
    assert "keys missing from the file (" in message and "more)" in message
    assert "\n" not in message and len(message) < 1000


def test_unknown_model_name_suggests_close_ones():
    with pytest.raises(ValueError, match="has no model 'resnet19'; did you mean resnet18"):
        zoo_timm.create_model("resnet19")


def test_pretrained_from_a_local_hub_cache(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    reference = timm.create_model("resnet18.a1_in1k").eval()
    hub_id = reference.pretrained_cfg["hf_hub_id"]
    repo = tmp_path / ("models--" + hub_id.replace("/", "--"))
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file(reference.state_dict(), str(snapshot / "model.safetensors"))
    loaded = zoo_timm.create_model("resnet18.a1_in1k", pretrained=True, cache_dir=tmp_path)
    for (k, a), (_, b) in zip(
        loaded.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


def test_pretrained_without_cache_never_downloads(tmp_path, no_network):
    with pytest.raises(CheckpointError, match="allow_download=True"):
        zoo_timm.create_model("resnet18.a1_in1k", pretrained=True, cache_dir=tmp_path)
    assert no_network == []


def test_a_lightning_checkpoint_loads_into_its_timm_architecture(tmp_path):
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False)
    lightning = {
        "pytorch-lightning_version": "2.4.0",
        "epoch": 1,
        "global_step": 10,
        "state_dict": {f"model.{key}": value for key, value in net.state_dict().items()},
    }
    path = tmp_path / "lightning.ckpt"
    torch.save(lightning, path)
    model = fs.load_model(f"timm:resnet18@{path}")
    for (name, a), (_, b) in zip(model.state_dict().items(), net.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    from_spec = fs.analyze(f"timm:resnet18@{path}")
    from_file = fs.analyze(str(path))  # the bare checkpoint: the network's own names
    expected = [row.layer for row in fs.analyze(net).measured]
    assert [row.layer for row in from_spec.measured] == expected
    assert sorted(row.layer for row in from_file.measured) == sorted(expected)


@pytest.mark.parametrize(("name", "kinds"), [
    ("efficientnet_b0", {"dense", "depthwise"}),
    ("convnext_atto", {"dense", "depthwise"}),
    ("regnetx_002", {"dense", "grouped"}),
])  # fmt: skip
def test_grouped_and_depthwise_layers_are_tagged(name, kinds):
    model = zoo_timm.create_model(name)
    expected = {
        path: "dense" if m.groups == 1 else "depthwise" if m.in_channels == m.groups else "grouped"
        for path, m in model.named_modules()
        if isinstance(m, nn.modules.conv._ConvNd)
    }
    report = fs.analyze(model, kernel_size=None)
    assert {row.layer: row.kind for row in report.measured} == {
        row.layer: expected[row.layer] for row in report.measured
    }
    assert {row.kind for row in report.measured} == kinds
    # Group-aware orthogonality: defined where a group holds two or more filters.
    for row in report.measured:
        per_group = row.out_channels // row.groups
        assert (per_group < 2) == math.isnan(row.group_orthogonality)
