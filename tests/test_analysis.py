from __future__ import annotations

import math

import pytest
import torch

import filterstats as fs
from tests.conftest import model_fingerprint
from tests.test_extract import Net


def test_analyze_rows_match_metrics_and_list_skips():
    torch.manual_seed(0)
    net = Net()
    report = fs.analyze(net, label="net")
    filters = fs.extract_filters(net)
    metrics = fs.measure(filters)
    assert [r.layer for r in report.measured] == list(filters.names)
    assert [r.layer for r in report.skipped] == ["block.shortcut"]
    assert report.skipped[0].status == "skipped"
    assert "kernel size" in report.skipped[0].reason
    for i, row in enumerate(report.measured):
        assert row.model == "net"
        assert row.sparsity == float(metrics.sparsity[i])
        assert row.diversity == float(metrics.diversity[i])
        assert row.orthogonality == float(metrics.orthogonality[i])
        assert row.n_filters == filters[i].n_filters
    assert report["depthwise"].groups == 16
    assert report.params.definition == "paper"
    assert report.params.depth_method == "fx"
    assert report.params.version == fs.__version__


def test_analyze_accepts_filterset_state_dict_and_definition():
    net = Net()
    by_module = fs.analyze(net, definition="torchconvquality")
    by_state = fs.analyze(net.state_dict(), definition="torchconvquality")
    by_filters = fs.analyze(fs.extract_filters(net), definition="torchconvquality")
    assert by_module.params.strict and not by_module.params.scale_filters
    for a, b, c in zip(by_module.measured, by_state.measured, by_filters.measured):
        assert a.diversity == b.diversity == c.diversity
    with pytest.raises(TypeError, match="`model`"):
        fs.analyze(42)


def test_analyze_does_not_touch_the_model():
    net = Net().train()
    before = model_fingerprint(net)
    fs.analyze(net)
    assert model_fingerprint(net) == before


def test_report_prints_as_a_table():
    text = repr(fs.analyze(Net(), label="net"))
    assert text.splitlines()[0].startswith("FilterReport: net")
    skipped = text.split("\nskipped:\n")[1]
    assert "kernel size (1, 1) is not (3, 3)" in skipped
    assert "block.conv2" in text


@pytest.mark.parametrize("suffix", [".csv", ".json", ".parquet"])
def test_exports_round_trip(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    net = Net()
    report = fs.analyze(net, label="net")
    path = tmp_path / f"report{suffix}"
    getattr(report, f"to_{suffix[1:]}")(path)
    back = fs.read_report(path)
    assert back.rows == report.rows
    assert back.params == report.params
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


def test_to_pandas_has_every_column():
    pd = pytest.importorskip("pandas")
    frame = fs.analyze(Net()).to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(fs.results.COLUMNS)
    assert frame.attrs["filterstats"]["eps"] == 0.01
    assert math.isnan(frame.loc[frame.status == "skipped", "sparsity"].iloc[0])


def test_read_report_rejects_foreign_files(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a filterstats CSV"):
        fs.read_report(path)
    with pytest.raises(ValueError, match="unknown table format"):
        fs.read_report(tmp_path / "x.xlsx")


def test_newer_schema_is_refused(tmp_path):
    report = fs.analyze(Net())
    text = report.to_csv().replace(
        f'"schema_version": {fs.results.SCHEMA_VERSION}', '"schema_version": 99'
    )
    path = tmp_path / "new.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match="schema version 99"):
        fs.read_report(path)


def test_printed_report_golden(golden):
    import filterstats.demo

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.Conv2d(8, 8, 1),
        torch.nn.Conv2d(8, 16, 3, groups=2),
        torch.nn.Conv2d(16, 16, 5),
    )
    golden.check("filter_report", repr(fs.analyze(model, label="tiny")) + "\n")
    robust, normal = filterstats.demo.load_model("robust"), filterstats.demo.load_model("normal")
    both = fs.FilterReport.concat([fs.analyze(robust, label="robust"),
                                   fs.analyze(normal, label="normal")])  # fmt: skip
    golden.check("filter_report_two_models", repr(both) + "\n")
    golden.check("depth_profile_demo", repr(fs.depth_profile(both, bins=4)) + "\n")


def test_reports_show_as_html_with_their_provenance():
    report = fs.analyze(Net(), label="net")
    html = report._repr_html_()
    assert html.count("<table") == 2  # measured, then skipped with reasons
    assert "definition=paper" in html and "kernel=3x3" in html
    assert "kernel size (1, 1) is not (3, 3)" in html
    profile = fs.depth_profile(report)._repr_html_()
    assert "<caption>DepthProfile" in profile
