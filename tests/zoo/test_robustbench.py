import subprocess
import sys

import pytest
import torch
from torch import nn

import filterstats as fs
from filterstats.checkpoints import CheckpointError

pytestmark = [pytest.mark.zoo, pytest.mark.filterwarnings("ignore::UserWarning")]
pytest.importorskip("pyautoattack")
rb = pytest.importorskip("filterstats.zoo.robustbench")
pytest.importorskip("filterstats.zoo._robustbench_compat").import_robustbench()


def test_compat_makes_a_clean_import_work():
    # A fresh interpreter: robustbench alone fails on `autoattack`; through filterstats it works.
    code = (
        "import sys\n"
        "from filterstats.zoo._robustbench_compat import import_robustbench\n"
        "zoo = import_robustbench()\n"
        "import autoattack, pyautoattack\n"
        "assert autoattack is pyautoattack and sys.modules['autoattack.state'] is pyautoattack.state\n"
        "print(sum(len(m) for d in zoo.model_dicts.values() for m in d.values()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == len(rb.list_models())


def test_list_models_offline_matches_the_registry():
    from filterstats.zoo._robustbench_compat import import_robustbench

    zoo = import_robustbench()
    everything = rb.list_models()
    expected = [
        (name, ds.value, tm.value)
        for ds, by_threat in zoo.model_dicts.items()
        for tm, models in by_threat.items()
        for name in models
    ]
    assert [(m.name, m.dataset, m.threat_model) for m in everything] == expected
    cifar_linf = rb.list_models("cifar10", "Linf")
    assert {m.dataset for m in cifar_linf} == {"cifar10"}
    assert len(cifar_linf) == sum(1 for _, ds, tm in expected if (ds, tm) == ("cifar10", "Linf"))
    carmon = next(m for m in cifar_linf if m.name == "Carmon2019Unlabeled")
    assert "WideResNet" in carmon.architecture and "depth=28" in carmon.architecture
    assert carmon.paper_architecture == "WideResNet-28-10"
    chen = next(m for m in cifar_linf if m.name == "Chen2020Adversarial")
    assert chen.n_checkpoints == 3


def test_every_paper_model_is_in_the_registry():
    from filterstats.zoo.catalog import paper_pairs

    known = {(m.name, m.dataset) for m in rb.list_models(threat_model="Linf")}
    missing = [
        (p.paper_id, p.dataset) for p in paper_pairs() if (p.paper_id, p.dataset) not in known
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("dataset", "threat", "match"),
    [("mnist", "Linf", "`dataset`"), ("cifar10", "L1", "`threat_model`")],
)
def test_bad_arguments(dataset, threat, match):
    with pytest.raises(ValueError, match=match):
        rb.list_models(dataset, threat)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match="did you mean Carmon2019Unlabeled"):
        rb.build_model("Carmon2019Unlabelled", "cifar10", "Linf")


def _random_weights(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor))
    return model


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def _save(state, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


LAYOUTS = {
    "plain": lambda sd: sd,
    "state_dict+module": lambda sd: {
        "state_dict": {f"module.{k}": v for k, v in sd.items()},
        "epoch": 3,
    },
    "model_state_dict": lambda sd: {"model_state_dict": sd},
    "last": lambda sd: {"last": sd, "best": {}},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fake_checkpoint_in_the_zoo_layout(tmp_path, layout):
    name = "Ding2020MMA"  # WRN-28-4, small
    reference = _random_weights(rb.build_model(name, "cifar10", "Linf"), 1)
    path = tmp_path / "cifar10" / "Linf" / f"{name}.pt"
    _save(LAYOUTS[layout](reference.state_dict()), path)
    loaded = rb.load_model(name, "cifar10", "Linf", tmp_path)
    _assert_same_weights(loaded, reference)
    assert not loaded.training
    a, b = fs.extract_filters(loaded), fs.extract_filters(reference)
    assert a.names == b.names
    torch.testing.assert_close(fs.sparsity(a), fs.sparsity(b), rtol=0, atol=0)
    torch.testing.assert_close(fs.orthogonality(a), fs.orthogonality(b), rtol=0, atol=0)
    # the same through a spec
    spec = fs.load_model(f"robustbench:cifar10/Linf/{name}@{tmp_path}")
    _assert_same_weights(spec, reference)


def test_imagenet_wrapper_prefix_either_way(tmp_path):
    name = "Salman2020Do_R18"  # normalize_model(resnet18): keys under "model."
    reference = _random_weights(rb.build_model(name, "imagenet", "Linf"), 2)
    bare = {
        k.removeprefix("model."): v
        for k, v in reference.state_dict().items()
        if k.startswith("model.")
    }
    assert len(bare) >= 60
    _save(bare, tmp_path / "imagenet" / "Linf" / f"{name}.pt")
    loaded = rb.load_model(name, "imagenet", "Linf", tmp_path).state_dict()
    built = rb.build_model(name, "imagenet", "Linf").state_dict()
    for key, value in reference.state_dict().items():
        # normalisation constants are not in the file: they keep the built values
        expected = value if key.startswith("model.") else built[key]
        torch.testing.assert_close(loaded[key], expected, rtol=0, atol=0, msg=key)


def test_ensemble_member_files(tmp_path, monkeypatch):
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    from filterstats.zoo._robustbench_compat import import_robustbench

    class Ensemble(nn.Module):
        def __init__(self):
            super().__init__()
            self.models = nn.ModuleList(
                nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()) for _ in range(2)
            )

        def forward(self, x):
            return sum(m(x) for m in self.models) / 2

    registry = import_robustbench().model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]
    monkeypatch.setitem(registry, "FakeEnsemble", {"model": Ensemble, "gdrive_id": ["a", "b"]})
    reference = _random_weights(Ensemble(), 3)
    base = tmp_path / "cifar10" / "Linf" / "FakeEnsemble.pt"
    with pytest.raises(CheckpointError) as info:
        rb.load_model("FakeEnsemble", "cifar10", "Linf", tmp_path)
    assert f"{base}_m0.pt" in str(info.value) and f"{base}_m1.pt" in str(info.value)
    for i, member in enumerate(reference.models):
        _save(
            {"state_dict": member.state_dict()},
            tmp_path / "cifar10" / "Linf" / f"FakeEnsemble.pt_m{i}.pt",
        )
    _assert_same_weights(rb.load_model("FakeEnsemble", "cifar10", "Linf", tmp_path), reference)


def test_missing_checkpoint_names_the_exact_path(tmp_path):
    with pytest.raises(CheckpointError) as info:
        rb.load_model("Carmon2019Unlabeled", "cifar10", "Linf", tmp_path)
    expected = tmp_path.resolve() / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt"
    assert str(expected) in str(info.value)
    assert "never downloads" in str(info.value)


def test_bad_files_are_named(tmp_path):
    path = tmp_path / "cifar10" / "Linf" / "Ding2020MMA.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"<!DOCTYPE html><html><title>Google Drive</title></html>")
    with pytest.raises(CheckpointError, match="HTML page"):
        rb.load_model("Ding2020MMA", "cifar10", "Linf", tmp_path)
    _save(rb.build_model("Ding2020MMA").state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        rb.load_model("Ding2020MMA", "cifar10", "Linf", tmp_path)


def test_wrong_checkpoint_does_not_fit(tmp_path):
    other = rb.build_model("Andriushchenko2020Understanding")  # PreActResNet-18
    _save(other.state_dict(), tmp_path / "cifar10" / "Linf" / "Ding2020MMA.pt")
    with pytest.raises(CheckpointError, match="does not fit") as caught:
        rb.load_model("Ding2020MMA", "cifar10", "Linf", tmp_path)
    message = str(caught.value)  # counts and the first few keys, never the whole list
    assert "keys missing from the file (" in message and "more)" in message
    assert "\n" not in message and len(message) < 1000


class _Payload:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.target,))


def test_pickled_code_is_refused(tmp_path):
    sentinel = tmp_path / "ran"
    state = dict(rb.build_model("Ding2020MMA").state_dict())
    _save(
        {"state_dict": state, "args": _Payload(sentinel)},
        tmp_path / "cifar10" / "Linf" / "Ding2020MMA.pt",
    )
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        rb.load_model("Ding2020MMA", "cifar10", "Linf", tmp_path)
    assert not sentinel.exists()


def _used_3x3_filters(model):
    filters = fs.extract_filters(model)
    # The paper counted the convolutions of the exported graph; RobustBench's WideResNet
    # builds a `sub_block1` that forward never calls: extraction lists it as skipped.
    assert all(layer.depth is not None for layer in filters)
    return sum(layer.n_filters for layer in filters)


def test_paper_filter_counts_match_extraction():
    from filterstats.zoo.catalog import paper_pairs

    checked, unbuildable = 0, {}
    for pair in paper_pairs():
        try:
            # Shapes are all that count: build without initialising, then allocate.
            with torch.device("meta"):
                model = rb.build_model(pair.paper_id, pair.dataset, "Linf")
            model = model.to_empty(device="cpu")
            # Distinct values: uninitialised memory can repeat, and equal weights count
            # once (the shared-weight rule).
            generator = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.normal_(generator=generator)
        except RuntimeError as error:
            unbuildable[pair.paper_id] = str(error)
            continue
        assert _used_3x3_filters(model) == pair.n_3x3_filters, pair.paper_id
        checked += 1
    assert checked == 71, f"could not build offline: {unbuildable}"
