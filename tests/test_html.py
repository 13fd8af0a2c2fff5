from __future__ import annotations

import math
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
import torch
from torch import nn

import filterstats as fs

pd = pytest.importorskip("pandas")


def make_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), *[nn.Conv2d(8, 8, 3) for _ in range(4)])


class Tables(HTMLParser):
    """Every ``<table id=...>`` as a list of rows of cell texts (header first)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: str | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "id" in attrs:
            self.current = attrs["id"]
            self.tables[self.current] = []
        elif tag == "tr" and self.current:
            self.tables[self.current].append([])
        elif tag in ("td", "th") and self.current:
            self.cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self.current = None
        elif tag in ("td", "th") and self.cell is not None:
            self.tables[self.current][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def parse(text: str) -> dict[str, list[list[str]]]:
    parser = Tables()
    parser.feed(text)
    return parser.tables


def assert_table_matches(rows: list[list[str]], frame) -> None:
    """The HTML table shows columns of ``frame`` (a subset, in its own order), same rows.

    Numbers are shown with 4 significant digits.
    """
    header = rows[0]
    assert set(header) <= set(frame.columns), set(header) - set(frame.columns)
    assert len(rows) - 1 == len(frame)
    for cells, (_, record) in zip(rows[1:], frame[header].iterrows()):
        for cell, value in zip(cells, record):
            if isinstance(value, float):
                expected = float("nan") if cell == "nan" else float(cell)
                assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(
                    expected, rel=5e-4, abs=1e-12
                )
            elif value is None or value is pd.NA:
                assert cell == ""
            else:
                assert cell == str(value)


@pytest.fixture(scope="module")
def comparison():
    return fs.compare([make_net(0), make_net(1)], [make_net(2), make_net(3)], n_boot=50)


def test_report_of_a_filter_report(tmp_path):
    report = fs.analyze(make_net(0), label="net")
    path = fs.report(report, tmp_path / "r.html", figures=False)
    text = path.read_text()
    tables = parse(text)
    frame = report.to_pandas()
    assert_table_matches(tables["layers"], frame[frame["status"] == "ok"].reset_index(drop=True))
    assert_table_matches(tables["depth-profile"], fs.depth_profile(report).to_pandas())
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # written atomically


def test_comparison_report_is_self_contained(tmp_path, comparison):
    pytest.importorskip("matplotlib")
    path = fs.report(comparison, tmp_path / "c.html")
    text = path.read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    tables = parse(text)
    assert_table_matches(tables["summary"], comparison.summary().to_pandas())
    by_depth = comparison.by_depth().to_pandas()
    assert_table_matches(tables["by-depth"], by_depth[by_depth["n"] > 0].reset_index(drop=True))


def test_report_rejects_other_objects(tmp_path):
    with pytest.raises(TypeError, match="`obj`"):
        fs.report(42, tmp_path / "x.html")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_opens_in_headless_chromium(tmp_path, comparison):
    pytest.importorskip("matplotlib")
    page = fs.report(comparison, tmp_path / "c.html").read_text()
    # Test-only probe: record image sizes and script errors into the DOM after load.
    probe = (
        "<script>window.onerror=function(m){document.body.dataset.error=m};"
        "window.addEventListener('load',function(){document.body.dataset.images="
        "Array.from(document.images).map(function(i){return i.naturalWidth}).join(',')})"
        "</script></body>"
    )
    (tmp_path / "probe.html").write_text(page.replace("</body>", probe))
    command = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000", "--dump-dom", (tmp_path / "probe.html").as_uri(),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert "data-error" not in dom
    widths = re.search(r'data-images="([^"]*)"', dom)
    assert widths, "the page did not finish loading"
    assert all(int(w) > 100 for w in widths.group(1).split(","))  # every figure decoded
    tables = parse(dom)
    assert_table_matches(tables["summary"], comparison.summary().to_pandas())
    by_depth = comparison.by_depth().to_pandas()
    assert_table_matches(tables["by-depth"], by_depth[by_depth["n"] > 0].reset_index(drop=True))


def _chromium(tmp_path, page: str, width: int) -> str:
    command = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={width},900", "--virtual-time-budget=5000", "--dump-dom", page,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
@pytest.mark.parametrize("kind", ["report", "comparison"])
def test_the_report_fits_a_laptop_screen(tmp_path, comparison, kind):
    """At 1400 px: no horizontal page scrollbar, and the metric columns are in view."""
    pytest.importorskip("matplotlib")
    wide = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 8, 5)
    )
    target = (
        fs.analyze(wide, label="a-model-with-a-rather-long-label")
        if kind == "report"
        else comparison
    )
    page = fs.report(target, tmp_path / "r.html").read_text()
    # Test-only probe: measure the layout after load and write it into the DOM.
    probe = (
        "<script>window.addEventListener('load',function(){"
        "var d=document.documentElement, out={page:d.scrollWidth, view:d.clientWidth, cols:[]};"
        "document.querySelectorAll('table.data th').forEach(function(th){"
        "if(['sparsity','diversity','orthogonality'].indexOf(th.textContent)>=0){"
        "var r=th.getBoundingClientRect(); out.cols.push([th.textContent, r.right]);}});"
        "document.body.dataset.layout=JSON.stringify(out);})</script></body>"
    )
    (tmp_path / "probe.html").write_text(page.replace("</body>", probe))
    dom = _chromium(tmp_path, (tmp_path / "probe.html").as_uri(), 1400)
    found = re.search(r'data-layout="([^"]*)"', dom)
    assert found, "the page did not finish loading"
    import html as html_module
    import json

    layout = json.loads(html_module.unescape(found.group(1)))
    assert layout["page"] <= layout["view"], layout  # no horizontal scrollbar
    if kind == "report":
        assert layout["cols"], "no metric column found"
        assert all(right <= layout["view"] for _, right in layout["cols"]), layout
        tables = parse(dom)
        assert "skipped" in tables and tables["skipped"][0][-1] == "reason"


def test_comparison_report_lists_every_skipped_convolution(tmp_path):
    """Layers not analysed in the compared models are listed with their reason."""

    def net(seed: int) -> nn.Sequential:
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3),
                             nn.Conv2d(8, 4, 5))  # fmt: skip

    comparison = fs.compare(net(0), net(1), n_boot=50, labels=("x", "y"))
    text = fs.report(comparison, tmp_path / "c.html", figures=False).read_text()
    rows = parse(text)["skipped"]
    header, body = rows[0], rows[1:]
    assert header[:3] == ["group", "model", "layer"] and header[-1] == "reason"
    assert sorted((r[0], r[2]) for r in body) == [("x", "1"), ("x", "3"), ("y", "1"), ("y", "3")]
    assert all("kernel size" in r[-1] for r in body)
    clean = fs.compare(make_net(0), make_net(1), n_boot=50)
    assert "skipped" not in parse(fs.report(clean, tmp_path / "d.html", figures=False).read_text())


def test_text_columns_are_left_aligned_numbers_right():
    """Names and reasons read left to right, headers over them too; numbers stay right."""
    from filterstats._tables import html_table

    out = html_table([{"layer": "conv1", "value": 0.5}, {"layer": "conv2", "value": None}],
                     ["layer", "value"])  # fmt: skip
    assert '<th style="text-align: left">layer</th><th>value</th>' in out
    assert '<td class="text" style="text-align: left">conv1</td><td class="num">0.5</td>' in out
