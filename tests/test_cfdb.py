"""CNN Filter DB files: round trips, the authors' own layout, and bad files.

The authors' file is emulated as their pipeline writes it: ``onnxzoo2filterdb``'s
``extract_filters.py`` stores ``f["filters"] = na`` (an ``(N, 3, 3)`` float64 array)
with h5py, then ``generate_filter_db.ipynb`` indexes the layer table by
``[model_id, conv_depth, conv_depth_norm, layer_id]``, renames ``depth`` to
``layer_depth``, writes ``filter_ids`` as ``"start:end-1"``, joins the model table on
``model_id`` and saves it with ``to_hdf(path, "meta")`` (pandas' fixed format).
"""

from __future__ import annotations

import math
import pickle
import sys

import numpy as np
import pytest
import torch
from torch import nn

pd = pytest.importorskip("pandas")
h5py = pytest.importorskip("h5py")
pytest.importorskip("tables")

import filterstats as fs  # noqa: E402
from filterstats import cfdb  # noqa: E402
from filterstats.scanning import scan  # noqa: E402
from tests.scan_helpers import build_model, module_loader  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::pandas.errors.PerformanceWarning")


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "net_a": nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3, groups=2)),
        "net_b": nn.Sequential(nn.Conv2d(3, 6, 3), nn.Conv2d(6, 6, 1), nn.Conv2d(6, 12, 3)),
        "net_c": nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=4)),
    }


MODEL_META = {
    "net_a": {"Training-Dataset": "cifar10", "Robust": True, "Task": "Classification"},
    "net_b": {"Training-Dataset": "cifar10", "Robust": math.nan, "Task": "Classification"},
    "net_c": {"Training-Dataset": "imagenet", "Robust": True, "Task": "Classification"},
}


def write_as_the_authors_do(path, models: dict[str, nn.Module]) -> None:
    """The CNN Filter DB / RobustnessThroughTheLens pipeline, emulated (see module doc)."""
    infos, kernels, start = [], [], 0
    for model_id, model in enumerate(models.values()):
        for layer_id, layer in enumerate(fs.extract_filters(model)):
            weight = layer.weight.detach().numpy()
            rows = weight.reshape(-1, 3, 3).astype(np.float64)  # np.zeros default dtype
            infos.append(
                [start, start + len(rows), model_id, layer_id, layer.depth,
                 layer.conv_depth, layer.conv_depth_norm, weight.shape[1], weight.shape[0]]
            )  # fmt: skip
            kernels.append(rows)
            start += len(rows)
    with h5py.File(path, "a") as f:
        f["filters"] = np.concatenate(kernels)
    info = pd.DataFrame(
        infos,
        columns=["filter_id_start", "filter_id_end", "model", "layer_id", "depth",
                 "conv_depth", "conv_depth_norm", "in_channels", "out_channels"],
    ).rename(columns={"model": "model_id"}).set_index("model_id")  # fmt: skip
    meta = pd.DataFrame(
        [
            {"model": f"{name}_13", "path": f"/zoo/{name}.onnx", "producer": "pytorch 1.11",
             "op_set": 13, "Conv": 3, "(3, 3) filters": 0, "depth": 9, "Name": name,
             "Paper": None, **MODEL_META[name]}
            for name in models
        ]
    )  # fmt: skip
    meta.index.name = "model_id"
    table = info.set_index([info.index, "conv_depth", "conv_depth_norm", "layer_id"]).rename(
        columns={"depth": "layer_depth"}
    )
    table["filter_ids"] = (
        table["filter_id_start"].apply(str) + ":" + (table["filter_id_end"] - 1).apply(str)
    )
    del table["filter_id_start"]
    del table["filter_id_end"]
    table = table.join(meta, on=["model_id"])
    table.to_hdf(path, key="meta")


def read_as_the_authors_do(path) -> tuple[np.ndarray, object]:
    """main.ipynb of CNN-Filter-DB: the kernels and the meta table with filter id lists."""
    with h5py.File(path, "r") as f:
        kernels = f["filters"][...].reshape(-1, 9)
    meta = pd.read_hdf(path, "meta")
    meta["filter_ids"] = meta["filter_ids"].apply(
        lambda s: list(np.arange(int(s.split(":")[0]), 1 + int(s.split(":")[1])))
    )
    return kernels, meta


# ------------------------------------------------------------- the authors' file


def test_reads_a_file_written_as_the_authors_write_it(tmp_path):
    models = _models()
    path = tmp_path / "dataset.h5"
    write_as_the_authors_do(path, models)
    db = cfdb.read_cfdb(path)
    assert db.models == ("net_a_13", "net_b_13", "net_c_13")
    assert db.kernel_size == (3, 3) and len(db) == 6
    assert {"Training-Dataset", "Robust", "filter_ids", *cfdb.INDEX} <= set(db.columns)
    for filterset, model in zip(db.filtersets(), models.values()):
        reference = fs.extract_filters(model)
        assert [layer.name for layer in filterset] == ["layer0", "layer1"]
        for layer, expected in zip(filterset, reference):
            torch.testing.assert_close(layer.weight, expected.weight, rtol=0, atol=0)
            assert layer.conv_depth == expected.conv_depth
            assert layer.conv_depth_norm == pytest.approx(expected.conv_depth_norm)
            assert layer.depth == expected.depth
    # the meta table as pandas reads it, value for value
    frame = pd.read_hdf(path, "meta").reset_index()
    for column in ("filter_ids", "Training-Dataset", "in_channels", "layer_depth"):
        assert list(db.meta[column]) == frame[column].tolist()
    assert math.isnan(db.meta["Robust"][2]) and db.meta["Robust"][0] is True


def test_groups_of_the_authors_file_feed_divergence_and_pca(tmp_path):
    models = _models()
    path = tmp_path / "dataset.h5"
    write_as_the_authors_do(path, models)
    groups = cfdb.read_cfdb(path).groups("Training-Dataset")
    assert list(groups) == ["cifar10", "imagenet"]
    assert [s.source for s in groups["cifar10"]] == ["net_a_13", "net_b_13"]
    direct = fs.filter_divergence(
        [fs.extract_filters(models["net_a"]), fs.extract_filters(models["net_b"])],
        [fs.extract_filters(models["net_c"])],
        labels=("cifar10", "imagenet"),
    )
    from_file = groups.divergence("cifar10", "imagenet")
    assert from_file.to_records() == direct.to_records()
    torch.testing.assert_close(
        fs.pca_basis(list(groups["cifar10"])).explained_variance_ratio,
        fs.pca_basis(
            [fs.extract_filters(models[n]) for n in ("net_a", "net_b")]
        ).explained_variance_ratio,
    )


def test_groups_by_layer_columns_and_missing_values(tmp_path):
    path = tmp_path / "dataset.h5"
    write_as_the_authors_do(path, _models())
    db = cfdb.read_cfdb(path)
    robust = db.groups("Robust")
    assert list(robust) == [True]  # net_b's NaN is a missing value: left out
    assert [s.source for s in robust[True]] == ["net_a_13", "net_c_13"]
    first = db.groups("conv_depth", where={"conv_depth": 0})
    assert list(first) == [0] and all(len(s) == 1 for s in first[0])
    both = db.groups(["Training-Dataset", "conv_depth"])
    # net_b has a 1x1 convolution between its 3x3 ones: its second is at conv depth 2
    assert list(both) == [
        ("cifar10", 0),
        ("cifar10", 1),
        ("cifar10", 2),
        ("imagenet", 0),
        ("imagenet", 1),
    ]
    assert [s.source for s in both[("cifar10", 2)]] == ["net_b_13"]
    assert db.rows({"Training-Dataset": ["imagenet"], "conv_depth": lambda d: d > 0}).tolist() == [
        5
    ]
    with pytest.raises(KeyError, match="no column 'Dataset'"):
        db.groups("Dataset")
    with pytest.raises(KeyError, match="no group 'mnist'"):
        db.groups("Training-Dataset")["mnist"]


# ------------------------------------------------------------------ round trips


def test_round_trip_of_filtersets_with_meta(tmp_path):
    models = _models()
    path = tmp_path / "mine.h5"
    db = cfdb.write_cfdb(
        path, models, meta={k: {"Robust": v["Robust"] is True} for k, v in MODEL_META.items()}
    )
    assert db.models == tuple(models)
    assert db.provenance["kernel_size"] == [3, 3] and db.provenance["version"] == fs.__version__
    for filterset, model in zip(db.filtersets(), models.values()):
        reference = fs.extract_filters(model)
        assert filterset.names == reference.names  # module paths (the 1x1 layer left out)
        for layer, expected in zip(filterset, reference):
            assert torch.equal(layer.weight, expected.weight)
            assert (layer.conv_depth, layer.conv_depth_norm, layer.depth) == (
                expected.conv_depth, expected.conv_depth_norm, expected.depth,
            )  # fmt: skip
    assert list(db.groups("Robust")) == [True, False]
    # the authors' notebook reads our file
    kernels, meta = read_as_the_authors_do(path)
    assert list(meta.index.names) == list(cfdb.INDEX)
    assert meta["(3, 3) filters"].tolist()[0] == sum(
        layer.n_filters for layer in fs.extract_filters(models["net_a"])
    )
    for (_, row), layer in zip(
        meta.iterrows(), [x for m in models.values() for x in fs.extract_filters(m)]
    ):
        np.testing.assert_array_equal(kernels[row["filter_ids"]], layer.kernel_matrix.numpy())
        assert row["out_channels"] == layer.weight.shape[0]
        assert row["in_channels"] == layer.weight.shape[1]  # per group, as the authors store it
    with h5py.File(path, "r") as f:  # the README's name is the same dataset
        assert f["filter"].id == f["filters"].id and f["filters"].dtype == np.float32


@pytest.mark.parametrize(
    ("raw_dtype", "torch_dtype"), [("float32", torch.float32), ("float16", torch.float16)]
)
def test_round_trip_of_a_scan_store(tmp_path, raw_dtype, torch_dtype):
    specs = ["net:0", "net:1"]
    scan(specs, tmp_path / "store", workers=1, loader=module_loader, raw_filters=True,
         raw_dtype=raw_dtype, progress=False)  # fmt: skip
    db = cfdb.write_cfdb(
        tmp_path / "store.h5", tmp_path / "store", meta={"net:1": {"Robust": True}}
    )
    assert db.models == tuple(specs)
    assert db.values("Robust") == (True,)  # net:0 has none: missing
    for filterset, index in zip(db.filtersets(), (0, 1)):
        reference = fs.extract_filters(build_model(index))
        assert filterset.names == reference.names
        for layer, expected in zip(filterset, reference):
            assert torch.equal(layer.weight, expected.weight.to(torch_dtype).float())
            assert layer.conv_depth == expected.conv_depth
            assert layer.conv_depth_norm == pytest.approx(expected.conv_depth_norm, abs=1e-7)
    only = cfdb.write_cfdb(tmp_path / "one.h5", tmp_path / "store", models=["net:1"])
    assert only.models == ("net:1",)


def test_store_without_raw_filters_is_refused(tmp_path):
    scan(["net:0"], tmp_path / "store", workers=1, loader=module_loader, progress=False)
    with pytest.raises(ValueError, match="raw_filters=True"):
        cfdb.write_cfdb(tmp_path / "x.h5", tmp_path / "store")
    assert not (tmp_path / "x.h5").exists()


# ------------------------------------------------------------------ bad files


def _benign(path) -> None:
    cfdb.write_cfdb(path, {"net": _models()["net_a"]}, meta={"net": {"Task": "Classification"}})


def _single_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "dataset.h5"
    path.write_text("<html>a failed download</html>")
    with pytest.raises(cfdb.FilterDBError, match="not an HDF5 file") as error:
        cfdb.read_cfdb(path)
    _single_line(error)
    with pytest.raises(FileNotFoundError, match="no CNN Filter DB file"):
        cfdb.read_cfdb(tmp_path / "absent.h5")


def test_missing_parts(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f["something"] = np.zeros(3)
    with pytest.raises(cfdb.FilterDBError, match="no /filters") as error:
        cfdb.read_cfdb(path)
    _single_line(error)
    with h5py.File(path, "a") as f:
        f["filter"] = np.zeros((4, 9), np.float32)  # the README's name alone is enough
    with pytest.raises(cfdb.FilterDBError, match="no /meta") as error:
        cfdb.read_cfdb(path)
    _single_line(error)
    with h5py.File(path, "a") as f:
        f.create_group("meta")
    with pytest.raises(cfdb.FilterDBError, match="not a DataFrame") as error:
        cfdb.read_cfdb(path)


def test_table_format_needs_trust(tmp_path):
    path = tmp_path / "table.h5"
    with h5py.File(path, "w") as f:
        f["filters"] = np.zeros((4, 9), np.float32)
    frame = pd.DataFrame({"filter_ids": ["0:3"], "out_channels": [2], "model": ["m"]})
    frame.to_hdf(path, key="meta", format="table")
    with pytest.raises(cfdb.FilterDBError, match="format='table'.*trust_pickle=True"):
        cfdb.read_cfdb(path)
    db = cfdb.read_cfdb(path, trust_pickle=True)
    assert db.models == ("m",) and db.filterset("m")[0].weight.shape == (2, 2, 3, 3)


@pytest.mark.parametrize(("ids", "match"), [("0:999", "outside"), ("a-b", "not 'first:last'")])
def test_filter_ids_that_do_not_fit(tmp_path, ids, match):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["filters"] = np.zeros((16, 3, 3))
    pd.DataFrame({"filter_ids": [ids], "out_channels": [4], "model": ["m"]}).to_hdf(
        path, key="meta"
    )
    with pytest.raises(cfdb.FilterDBError, match=match) as error:
        cfdb.read_cfdb(path)
    _single_line(error)


class _Sentinel:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_pickle_in_the_meta_table_is_refused(tmp_path):
    path = tmp_path / "crafted.h5"
    _benign(path)
    sentinel = tmp_path / "code-ran"
    payload = np.frombuffer(
        pickle.dumps(np.array([_Sentinel(str(sentinel))], dtype=object)), np.uint8
    )
    with h5py.File(path, "a") as f:
        block = next(
            f["meta"][name] for name in f["meta"] if name.endswith("_values")
            and f["meta"][name].attrs.get("CLASS") == b"VLARRAY"
        )  # fmt: skip
        block[0] = payload
    with pytest.raises(
        cfdb.FilterDBError, match=r"refused to load io\.open.*trust_pickle"
    ) as error:
        cfdb.read_cfdb(path)
    _single_line(error)
    assert not sentinel.exists()
    # What the safe reader prevents: pandas runs the crafted pickle (explicit opt-in only).
    try:
        cfdb.read_cfdb(path, trust_pickle=True)
    except Exception:
        pass
    assert sentinel.exists()


def test_a_pickled_object_that_is_not_a_plain_value_is_refused(tmp_path):
    path = tmp_path / "complex.h5"
    with h5py.File(path, "w") as f:
        f["filters"] = np.zeros((4, 9), np.float32)
    frame = pd.DataFrame({"filter_ids": ["0:3"], "out_channels": [2], "model": ["m"], "z": [1j]})
    frame["z"] = frame["z"].astype(object)
    frame.to_hdf(path, key="meta")
    with pytest.raises(cfdb.FilterDBError, match="trust_pickle=True"):
        cfdb.read_cfdb(path)


# ------------------------------------------------------------------ writing errors


def test_writing_refuses_to_overwrite_and_leaves_nothing_half_written(tmp_path):
    path = tmp_path / "mine.h5"
    _benign(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _benign(path)
    with pytest.raises(TypeError, match=r"`meta\['net'\]\['when'\]`"):
        cfdb.write_cfdb(
            path, {"net": _models()["net_a"]}, meta={"net": {"when": object()}}, overwrite=True
        )
    with (
        pytest.warns(fs.FilterStatsWarning),
        pytest.raises(ValueError, match="no \\(3, 3\\) kernels"),
    ):
        cfdb.write_cfdb(path, {"net": nn.Conv2d(3, 3, 1)}, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.h5"]
    cfdb.write_cfdb(path, {"other": _models()["net_c"]}, overwrite=True)
    assert cfdb.read_cfdb(path).models == ("other",)


def test_bad_sources(tmp_path):
    with pytest.raises(TypeError, match="`source`"):
        cfdb.write_cfdb(tmp_path / "x.h5", [nn.Conv2d(3, 3, 3)])
    with pytest.raises(ValueError, match="`models`"):
        cfdb.write_cfdb(tmp_path / "x.h5", {"a": nn.Conv2d(3, 3, 3)}, models=["b"])


def test_missing_extra_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ModuleNotFoundError, match=r"filterstats\[cfdb\]"):
        cfdb.read_cfdb(tmp_path / "x.h5")


def test_pickles_of_older_numpy_and_protocol_2_are_read(tmp_path):
    """The authors wrote their file under numpy 1 (numpy.core), maybe at protocol 2."""
    path = tmp_path / "old.h5"
    _benign(path)
    before = cfdb.read_cfdb(path).meta
    with h5py.File(path, "a") as f:
        for name in f["meta"]:
            node = f["meta"][name]
            if name.endswith("_values") and node.attrs.get("CLASS") == b"VLARRAY":
                values = pickle.loads(node[0].tobytes())  # our own benign file
                old = pickle.dumps(values, protocol=2)
                for new_name, old_name in ((b"numpy._core.", b"numpy.core."),):
                    old = old.replace(new_name, old_name)
                assert b"numpy.core.multiarray" in old
                node[0] = np.frombuffer(old, np.uint8)
    after = cfdb.read_cfdb(path).meta
    assert list(after) == list(before)
    for column in before:
        assert list(after[column]) == list(before[column]), column
