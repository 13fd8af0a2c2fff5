"""``pca_basis`` and ``filter_divergence`` over specs: the same result, one model at a time."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import filterstats as fs
import filterstats.demo as demo
import filterstats.zoo.specs as specs
from filterstats import distribution


def net(seed: int, shift: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), *[nn.Conv2d(8, 8, 3) for _ in range(4)])
    with torch.no_grad():
        for conv in model:
            conv.weight[:, :1] = 0.0  # some sparse kernels
            conv.weight[:, :, 1, 1] += shift
    return model


class CountingLoader:
    """Loads ``count:SEED[:SHIFT]`` specs and counts how many loaded models are alive.

    What the library holds of a model is its ``FilterSet`` (its layers hold the
    weights), so the loader returns one, as ``load_model`` does for ONNX files, and
    tracks its layers: a model is alive while any of its layers is.
    """

    def __init__(self, real):
        self.real = real
        self.alive: set[int] = set()
        self.loads = 0
        self.most_alive = 0

    def __call__(self, spec, *, trust_pickle=False):
        if not str(spec).startswith("count:"):
            return self.real(spec, trust_pickle=trust_pickle)
        gc.collect()  # only what is still referenced counts
        self.loads += 1
        _, seed, *shift = str(spec).split(":")
        filters = fs.extract_filters(net(int(seed), float(shift[0]) if shift else 0.0),
                                     kernel_size=None)  # fmt: skip
        token = self.loads
        self.alive.add(token)
        remaining = {"n": len(filters.layers)}

        def gone() -> None:
            remaining["n"] -= 1
            if remaining["n"] == 0:
                self.alive.discard(token)

        for layer in filters.layers:
            weakref.finalize(layer, gone)
        self.most_alive = max(self.most_alive, len(self.alive))
        return filters


@pytest.fixture
def loader(monkeypatch):
    counting = CountingLoader(specs.load_model)
    monkeypatch.setattr(specs, "load_model", counting)
    return counting


def test_divergence_over_specs_equals_over_models_one_model_at_a_time(loader):
    spec_a = [f"count:{s}:0.2" for s in range(3)]
    spec_b = [f"count:{10 + s}" for s in range(3)]
    streamed = fs.filter_divergence(spec_a, spec_b, depth_bins=4, n_null=20)
    assert loader.most_alive == 1 and loader.loads == 3 * 6  # basis, range, histograms
    models_a = [net(s, 0.2) for s in range(3)]
    models_b = [net(10 + s) for s in range(3)]
    loaded = fs.filter_divergence(models_a, models_b, depth_bins=4, n_null=20)
    assert streamed.to_records() == loaded.to_records()
    assert streamed.value_range == loaded.value_range
    torch.testing.assert_close(streamed.basis.components, loaded.basis.components)
    # With the basis and the range given, each spec is read once.
    loader.loads = 0
    again = fs.filter_divergence(spec_a, spec_b, depth_bins=4, n_null=20, basis=loaded.basis,
                                 value_range=loaded.value_range)  # fmt: skip
    assert loader.loads == 6 and again.to_records() == loaded.to_records()


def test_pca_basis_over_specs_equals_over_models(loader):
    streamed = fs.pca_basis([f"count:{s}" for s in range(4)])
    assert loader.most_alive == 1 and loader.loads == 4
    loaded = fs.pca_basis([net(s) for s in range(4)])
    assert streamed.n_filters == loaded.n_filters
    torch.testing.assert_close(streamed.explained_variance_ratio, loaded.explained_variance_ratio)
    torch.testing.assert_close(streamed.components, loaded.components)
    # A spec listed twice counts once, as an object listed twice does.
    assert (
        fs.pca_basis(["count:0", "count:0", "count:1"]).n_filters
        == fs.pca_basis([f"count:{s}" for s in range(2)]).n_filters
    )


def test_the_counter_sees_models_held_together(loader):
    """The loader can fail: a function that keeps every model is seen doing so."""
    distribution.scaled_kernels([f"count:{s}" for s in range(3)])  # returns every kernel: keeps all
    assert loader.most_alive >= 2


def test_twins_shared_by_specs_count_per_pair(loader):
    a = ["count:1:0.2", "count:2:0.2", "count:3:0.2"]
    b = ["count:7", "count:7", "count:8"]
    result = fs.filter_divergence(a, b, depth_bins=2, n_null=10)
    assert loader.most_alive == 1
    assert result.n_models == (3, 3) and result.n_distinct_models == (3, 2)
    objects = [net(7), net(8)]
    direct = fs.filter_divergence([net(1, 0.2), net(2, 0.2), net(3, 0.2)],
                                  [objects[0], objects[0], objects[1]], depth_bins=2,
                                  n_null=10)  # fmt: skip
    assert result.to_records() == direct.to_records()


def test_demo_specs_equal_demo_models():
    spec_a = [f"demo:robust@{s}" for s in range(2)]
    spec_b = [f"demo:normal@{s}" for s in range(2)]
    streamed = fs.filter_divergence(spec_a, spec_b, depth_bins=4, n_null=20)
    models = fs.filter_divergence(
        [demo.load_model("robust", seed=s) for s in range(2)],
        [demo.load_model("normal", seed=s) for s in range(2)],
        depth_bins=4,
        n_null=20,
    )
    assert streamed.to_records() == models.to_records()
    np.testing.assert_array_equal(
        fs.pca_basis(spec_a).explained_variance_ratio.numpy(),
        fs.pca_basis(
            [demo.load_model("robust", seed=s) for s in range(2)]
        ).explained_variance_ratio.numpy(),
    )


def test_divergence_and_basis_stream_a_scan_store(tmp_path):
    pytest.importorskip("pyarrow")
    from filterstats.scanning import Store, scan
    from tests.scan_helpers import build_model, module_loader

    specs_ = [f"net:{i}" for i in range(4)]
    scan(specs_, tmp_path / "store", workers=1, loader=module_loader, raw_filters=True,
         raw_dtype="float32", progress=False)  # fmt: skip
    store = Store(tmp_path / "store")
    paths = store.filter_paths(["net:2", "net:0"])
    assert [p.suffix for p in paths] == [".parquet", ".parquet"]
    from_store = fs.filter_divergence(paths, store.filter_paths(["net:1", "net:3"]), n_null=10)
    direct = fs.filter_divergence([build_model(2), build_model(0)],
                                  [build_model(1), build_model(3)], n_null=10)  # fmt: skip
    assert from_store.to_records() == direct.to_records()
    assert from_store.value_range == direct.value_range
    torch.testing.assert_close(
        fs.pca_basis(store.filter_paths()).components,
        fs.pca_basis([build_model(i) for i in range(4)]).components,
    )
    filters = fs.extract_filters(str(paths[0]))
    assert filters.names == fs.extract_filters(build_model(2)).names
    with pytest.raises(ValueError, match="no ok entry"):
        store.filter_paths(["net:9"])
