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
    assert rows[0] == list(frame.columns)
    assert len(rows) - 1 == len(frame)
    for cells, (_, record) in zip(rows[1:], frame.iterrows()):
        for cell, value in zip(cells, record):
            if isinstance(value, float):
                expected = float("nan") if cell == "nan" else float(cell)
                assert (math.isnan(value) and math.isnan(expected)) or value == pytest.approx(
                    expected, rel=1e-5, abs=1e-12
                )
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
    assert_table_matches(tables["layers"], report.to_pandas())
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
