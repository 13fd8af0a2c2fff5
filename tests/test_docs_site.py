"""The built documentation site, opened in headless Chromium, offline.

Every page is served from a local HTTP server (nothing else is reachable) and its DOM is
read after the scripts ran. Checks: every formula is typeset by the vendored MathJax
(no ``\\(``, ``\\[`` or ``$$`` left in the text, no TeX error), every table row has the
header's number of cells, and no page loads anything from another host or misses a
file. A source check finds table rows whose cell count differs from their header (a
``|`` inside a formula splits a cell; Python-Markdown then drops the extra cells
silently).

Needs a built site or mkdocs (``.ci/docs.sh`` makes the docs environment and runs this
with ``FILTERSTATS_SITE`` set to the site it built) and Chromium (Debian's
``chromium``; ``.ci/run`` installs it); skips otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)  # fmt: skip
#: Text that only an unrendered formula leaves in a page (arithmatex's delimiters).
UNRENDERED = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$")
#: Elements whose text is code or MathJax's own output, not prose.
NOT_PROSE = {"code", "pre", "script", "style", "mjx-container", "textarea", "kbd", "svg"}


def _chromium() -> str | None:
    for name in (os.environ.get("FILTERSTATS_CHROMIUM"), "chromium", "chromium-browser"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _mkdocs() -> str | None:
    for candidate in (
        os.environ.get("FILTERSTATS_MKDOCS"),
        str(ROOT / ".venv-docs" / "bin" / "mkdocs"),
        shutil.which("mkdocs"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


# ---------------------------------------------------------------- the DOM


class PageReader(HTMLParser):
    """Prose text, formulas and table rows of a page's DOM."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.prose: list[str] = []
        self.formulas = 0  # arithmatex elements
        self.typeset = 0  # arithmatex elements holding an mjx-container
        self.tex_errors = 0
        self.undrawn = 0  # typeset formulas with characters the browser did not draw
        self.undrawn_examples: list[str] = []  # class and ::before content of one such char
        self.tables: list[list[int]] = []  # cells per row, per table
        self._math_depth: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        if tag in {"br", "img", "hr", "input", "meta", "link", "wbr", "source"}:
            return
        self.stack.append(tag)
        if "arithmatex" in classes:
            self.formulas += 1
            self._math_depth.append(len(self.stack))
        if tag == "mjx-container":
            values = dict(attrs)
            chars, drawn = values.get("data-chars"), values.get("data-drawn")
            if chars is not None and drawn is not None and int(drawn) < int(chars):
                self.undrawn += 1
                self.undrawn_examples.append(values.get("data-undrawn-class") or "")
        if tag == "mjx-container" and self._math_depth:
            self.typeset += 1
            self._math_depth.pop()
        if tag == "mjx-merror":
            self.tex_errors += 1
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append(0)
        elif tag in {"td", "th"} and self.tables and self.tables[-1]:
            self.tables[-1][-1] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in self.stack:
            while self.stack and self.stack.pop() != tag:
                pass
        while self._math_depth and self._math_depth[-1] > len(self.stack):
            self._math_depth.pop()  # an arithmatex element closed without MathJax output

    def handle_data(self, data: str) -> None:
        if not NOT_PROSE.intersection(self.stack):
            self.prose.append(data)


def read_page(dom: str) -> PageReader:
    reader = PageReader()
    reader.feed(dom)
    return reader


def unrendered(reader: PageReader) -> list[str]:
    text = " ".join(reader.prose)
    return [text[max(0, m.start() - 40) : m.end() + 40] for m in UNRENDERED.finditer(text)]


def test_reader_finds_unrendered_math_and_broken_rows() -> None:
    """The checks themselves can fail: a page as it looks without MathJax."""
    raw = read_page(
        '<p>a <span class="arithmatex">\\(x^2\\)</span></p>'
        "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td></tr></table>"
        "<pre><code>$$ in code is fine</code></pre>"
    )
    assert raw.formulas == 1 and raw.typeset == 0
    assert unrendered(raw) and "in code" not in " ".join(unrendered(raw))
    assert raw.tables == [[2, 1]]
    done = read_page(
        '<p><span class="arithmatex"><mjx-container><mjx-math></mjx-math></mjx-container>'
        "</span></p>"
    )
    assert (done.formulas, done.typeset, unrendered(done)) == (1, 1, [])
    blank = read_page('<mjx-container data-chars="3" data-drawn="0"></mjx-container>')
    drawn = read_page('<mjx-container data-chars="3" data-drawn="3"></mjx-container>')
    assert (blank.undrawn, drawn.undrawn) == (1, 0)


# ---------------------------------------------------------------- sources


def table_rows(text: str) -> Iterator[tuple[int, int, int]]:
    """(line number, cells, header cells) of every body row of every Markdown table."""
    header: int | None = None
    in_fence = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        stripped = line.strip()
        if in_fence or not stripped.startswith("|"):
            header = None
            continue
        cells = count_cells(stripped)
        if header is None:
            header = cells
        elif not re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*\|?", stripped):
            yield number, cells, header


def count_cells(row: str) -> int:
    """Cells of a table row as Python-Markdown splits it: ``|`` outside code spans, unescaped."""
    inner = row.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    cells, in_code, escaped = 1, False, False
    for char in inner:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "`":
            in_code = not in_code
        elif char == "|" and not in_code:
            cells += 1
    return cells


def test_count_cells_follows_python_markdown() -> None:
    assert count_cells("| a | `x | y` | b \\| c |") == 3
    assert count_cells("| largest \\(|w|\\) |") == 3  # the bug this guards against


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: p.name)
def test_every_table_row_has_the_header_cells(page: Path) -> None:
    broken = [
        f"{page.relative_to(ROOT)}:{number}: {cells} cells, header {header}"
        for number, cells, header in table_rows(page.read_text(encoding="utf-8"))
        if cells != header
    ]
    assert not broken, "\n".join(broken)


# ---------------------------------------------------------------- the site


#: Served at /__driver__.html: loads every page in an iframe, one after the other, waits
#: until MathJax has typeset it (its startup promise settles and stays the same), and
#: posts the page's DOM back to the server. One browser start for the whole site.
DRIVER = """<!doctype html><html><body><iframe id="page" style="width:1400px;height:900px">
</iframe><script>
const pages = PAGES;
const frame = document.getElementById("page");
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));
function load(url) {
  return new Promise((done) => { frame.onload = () => done(); frame.src = url; });
}
async function typeset(win) {
  for (let waited = 0; waited < 10000; waited += 50) {
    const jax = win.MathJax;
    if (jax && jax.startup && jax.startup.promise) {
      const promise = jax.startup.promise;
      await promise.catch(() => null);
      await sleep(50);
      if (jax.startup.promise === promise) return;
    } else {
      await sleep(50);
    }
  }
}
const INVISIBLE = ["mjx-c2061", "mjx-c2062", "mjx-c2063", "mjx-c2064", "mjx-c200B"];
function markGlyphs(win) {
  // CHTML draws each character of a formula as the ::before content of an mjx-c element,
  // from the font's style sheet: count the characters that really have something drawn.
  for (const formula of win.document.querySelectorAll("mjx-container")) {
    // (the invisible operators U+2061-U+2064 and U+200B have nothing to draw)
    const chars = [...formula.querySelectorAll("mjx-c")].filter(
      (c) => !INVISIBLE.some((name) => c.classList.contains(name)));
    let drawn = 0;
    for (const c of chars) {
      const content = win.getComputedStyle(c, "::before").content;
      if ((content && content !== "none" && content !== "normal" && content !== '""')
          || c.textContent.length > 0) drawn += 1;
      else formula.setAttribute("data-undrawn-class", c.className + "|" + content);
    }
    formula.setAttribute("data-chars", String(chars.length));
    formula.setAttribute("data-drawn", String(drawn));
  }
}
(async () => {
  for (const url of pages) {
    await load(url);
    await typeset(frame.contentWindow);
    markGlyphs(frame.contentWindow);
    await fetch("/__dom__?page=" + encodeURIComponent(url),
                {method: "POST", body: frame.contentDocument.documentElement.outerHTML});
  }
  document.body.dataset.done = "yes";
})();
</script></body></html>"""


class _SiteHandler(http.server.SimpleHTTPRequestHandler):
    """The site's files, the driver page, and a POST endpoint for the pages' DOMs."""

    requests: list[tuple[str, int]]
    doms: dict[str, str]
    driver: bytes

    def log_message(self, format: str, *args: object) -> None:
        pass

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.requests.append((self.path, int(code)))

    def do_GET(self) -> None:
        if self.path != "/__driver__.html":
            super().do_GET()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.driver)))
        self.end_headers()
        self.wfile.write(self.driver)

    def do_POST(self) -> None:
        page = urllib.parse.unquote(self.path.partition("?page=")[2])
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.doms[page] = body.decode("utf-8")
        self.send_response(204)
        self.end_headers()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = os.environ.get("FILTERSTATS_SITE")
    if built:
        return Path(built)
    mkdocs = _mkdocs()
    if mkdocs is None:
        pytest.skip("no docs environment: .ci/docs.sh creates .venv-docs and runs this test")
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--site-dir", str(target)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return target


def pages(site: Path) -> list[str]:
    """URL paths of every page of the site (``/``, ``/metrics/``, ...)."""
    found = []
    for path in site.rglob("index.html"):
        relative = path.parent.relative_to(site)
        found.append("/" if relative == Path() else f"/{relative.as_posix()}/")
    return sorted(found)


@dataclasses.dataclass
class Visit:
    """What the browser saw: each page's DOM after MathJax, and every request served."""

    doms: dict[str, str]
    requests: list[tuple[str, int]]
    pages: list[str]


@pytest.fixture(scope="module")
def visit(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Visit:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    result = Visit({}, [], pages(site))
    driver = DRIVER.replace("PAGES", json.dumps(result.pages)).encode()
    attributes = {"requests": result.requests, "doms": result.doms, "driver": driver}
    handler = type("Handler", (_SiteHandler,), attributes)
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(site))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    profile = tmp_path_factory.mktemp("profile")
    url = f"http://127.0.0.1:{httpd.server_address[1]}/__driver__.html"
    command = [
        chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
        f"--virtual-time-budget={600_000}", "--dump-dom", url,
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'data-done="yes"' in done.stdout, f"the driver did not finish: {done.stderr[-2000:]}"
    return result


@pytest.mark.slow
def test_every_page_was_opened(visit: Visit) -> None:
    assert "/metrics/" in visit.pages and "/" in visit.pages
    assert sorted(visit.doms) == visit.pages


@pytest.mark.slow
def test_built_pages_render_every_formula_and_table_offline(visit: Visit) -> None:
    problems = []
    readers = {page: read_page(dom) for page, dom in visit.doms.items()}
    for page, reader in readers.items():
        if reader.typeset != reader.formulas:
            problems.append(f"{page}: {reader.formulas - reader.typeset} formulas not typeset")
        problems += [f"{page}: unrendered {snippet!r}" for snippet in unrendered(reader)]
        if reader.tex_errors:
            problems.append(f"{page}: {reader.tex_errors} TeX errors")
        if reader.undrawn:
            problems.append(
                f"{page}: {reader.undrawn} formulas typeset but not drawn (no glyphs), "
                f"e.g. {reader.undrawn_examples[:3]}"
            )
        for number, rows in enumerate(reader.tables):
            if len(set(rows)) > 1:
                problems.append(f"{page}: table {number} has rows of {sorted(set(rows))} cells")
    assert not problems, "\n".join(problems)
    assert sum(r.formulas for r in readers.values()) > 50  # the metrics pages have many


def source_formulas(text: str) -> int:
    """Formulas of a Markdown page as arithmatex finds them (code left out)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    text = re.sub(r"`[^`\n]*`", "", text)
    patterns = (r"\\\((.+?)\\\)", r"\\\[(.+?)\\\]", r"\$\$(.+?)\$\$")
    return sum(len(re.findall(pattern, text, flags=re.DOTALL)) for pattern in patterns)


def test_source_formulas_counts_what_arithmatex_finds() -> None:
    assert source_formulas("a \\(x\\) and\n\\[\ny\n\\]\n`\\(code\\)`\n```\n$$z$$\n```\n") == 2


@pytest.mark.slow
def test_every_formula_of_a_page_reaches_the_browser(visit: Visit) -> None:
    """A formula lost on the way (a ``|`` inside it split a table cell) is caught here."""
    lost = []
    for page in sorted(DOCS.glob("*.md")):
        url = "/" if page.stem == "index" else f"/{page.stem}/"
        expected = source_formulas(page.read_text(encoding="utf-8"))
        found = read_page(visit.doms[url]).formulas
        if found != expected:
            lost.append(f"{page.name}: {expected} formulas in the source, {found} on the page")
    assert not lost, "\n".join(lost)


@pytest.mark.slow
def test_pages_find_every_file_they_ask_for(visit: Visit) -> None:
    # (the browser asks for /favicon.ico on its own; the site declares its icon elsewhere)
    missing = sorted({p for p, code in visit.requests if code >= 400 and p != "/favicon.ico"})
    assert not missing, f"files the pages asked for and the site lacks: {missing}"
    assert any("tex-chtml" in path for path, _ in visit.requests), "MathJax was not loaded"
    fonts = {Path(urllib.parse.urlparse(p).path).name for p, _ in visit.requests if ".woff" in p}
    assert fonts - {"MathJax_Zero.woff"}, f"only {sorted(fonts)} loaded: no glyph was drawn"


def test_built_pages_load_nothing_from_other_hosts(site: Path) -> None:
    external = re.compile(r'<(?:script|link|img)\b[^>]*(?:src|href)="(?:https?:)?//[^"]+"')
    offenders = [
        f"{path.relative_to(site)}: {match.group(0)[:120]}"
        for path in site.rglob("*.html")
        for match in external.finditer(path.read_text(encoding="utf-8"))
        if 'rel="canonical"' not in match.group(0) and "<a " not in match.group(0)
    ]
    assert not offenders, "\n".join(offenders[:20])
