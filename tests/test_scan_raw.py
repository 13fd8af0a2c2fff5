from __future__ import annotations

import io

import numpy as np
import pytest
import torch

pd = pytest.importorskip("pandas")
pq = pytest.importorskip("pyarrow.parquet")

import filterstats as fs  # noqa: E402
from filterstats.scanning import open_filters, scan  # noqa: E402
from filterstats.scanning.raw import filter_columns, write_filters  # noqa: E402
from tests.scan_helpers import build_model, module_loader, write_checkpoints  # noqa: E402


def expected_rows(model, label, dtype):
    """Independent reference: a plain loop over every kernel."""
    rows = []
    for layer in fs.extract_filters(model):
        weight = layer.weight.detach().to(dtype)
        for out_index in range(weight.shape[0]):
            for in_index in range(weight.shape[1]):
                values = weight[out_index, in_index].reshape(-1).tolist()
                rows.append((label, layer.name, layer.conv_depth, out_index, in_index, *values))
    return rows


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("float16", torch.float16), ("float32", torch.float32)]
)
def test_raw_filters_hold_every_kernel_with_its_layer(tmp_path, dtype, torch_dtype):
    specs = [f"net:{i}" for i in range(2)]
    scan(
        specs,
        tmp_path / "store",
        workers=1,
        loader=module_loader,
        raw_filters=True,
        raw_dtype=dtype,
        progress=False,
    )
    frame = open_filters(tmp_path / "store")
    assert frame["w0"].dtype == np.dtype(dtype)
    columns = ["model", "layer", "conv_depth", "out_index", "in_index", *filter_columns((3, 3))]
    got = [
        tuple(row)
        for row in frame[columns].astype({"model": str, "layer": str}).itertuples(index=False)
    ]
    want = [
        row
        for i, spec in enumerate(specs)
        for row in expected_rows(build_model(i), spec, torch_dtype)
    ]
    assert len(got) == len(want)
    assert [g[:5] for g in got] == [w[:5] for w in want]
    np.testing.assert_array_equal(
        np.array([g[5:] for g in got], dtype=np.float64),
        np.array([w[5:] for w in want], dtype=np.float64),
    )
    norms = frame.groupby("layer", sort=False)["conv_depth_norm"].first()
    layers = fs.extract_filters(build_model(0))
    assert norms.loc[layers[-1].name] == pytest.approx(layers[-1].conv_depth_norm)
    # a selection of models and columns
    only = open_filters(tmp_path / "store", models=[specs[1]], columns=["model", "w4"])
    assert list(only.columns) == ["model", "w4"]
    assert set(only["model"]) == {specs[1]}


def test_raw_filters_are_written_in_bounded_row_groups():
    layers = fs.extract_filters(build_model(1))
    buffer = io.BytesIO()
    total = write_filters(buffer, layers, model="m", kernel_size=(3, 3), row_group_rows=50)
    meta = pq.ParquetFile(io.BytesIO(buffer.getvalue())).metadata
    assert total == layers.n_filters == meta.num_rows
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert meta.num_row_groups > 1 and max(sizes) <= 50 and sum(sizes) == total


def test_raw_filters_rerun_adds_them_to_a_store_without(tmp_path):
    specs = write_checkpoints(tmp_path / "ckpts", 2)
    scan(specs, tmp_path / "store", workers=1, progress=False)
    with pytest.raises(ValueError, match="raw_filters=True"):
        open_filters(tmp_path / "store")
    again = scan(specs, tmp_path / "store", workers=1, raw_filters=True, progress=False)
    assert again.succeeded == tuple(specs)  # no raw kernels stored yet: scanned again
    assert scan(specs, tmp_path / "store", workers=1, progress=False).skipped == tuple(specs)
    frame = open_filters(tmp_path / "store", columns=["model"])
    n_filters = sum(fs.extract_filters(build_model(i)).n_filters for i in range(2))
    assert len(frame) == n_filters


def test_raw_filters_need_one_kernel_size(tmp_path):
    with pytest.raises(ValueError, match="one kernel size"):
        scan(
            ["net:0"], tmp_path / "store", loader=module_loader, raw_filters=True, kernel_size=None
        )
    layers = fs.extract_filters(build_model(0), kernel_size=None)
    with pytest.raises(ValueError, match="one kernel size"):
        write_filters(io.BytesIO(), layers, model="m", kernel_size=(3, 3))
