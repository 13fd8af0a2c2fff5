"""The documentation: docstrings of the public API, runnable code blocks, API pages.

- Every public function and class (``filterstats.__all__`` and the ``__all__`` of every
  public submodule) has a Google-style docstring with ``Args:`` when it takes
  arguments and ``Returns:`` when it returns something; public methods too.
- Every ```` ```python ```` block of ``docs/*.md`` and ``README.md`` runs. The blocks of
  one page run in order in one namespace, in a temporary directory. A block right after
  ``<!-- skip-test -->`` is not run (it needs an extra, a file or a GPU; the page says so).
- Every public name has an API page (``::: filterstats.<name>``) and every command-line
  option appears in ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import pkgutil
import re
import typing
import warnings
from pathlib import Path
from types import ModuleType

import pytest

import filterstats

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_MARKER = "<!-- skip-test -->"


# ----------------------------------------------------------------- docstrings


def public_module_names() -> list[str]:
    """``filterstats`` and every submodule without a leading underscore in its path."""
    names = ["filterstats"]
    for info in pkgutil.walk_packages(filterstats.__path__, prefix="filterstats."):
        parts = info.name.split(".")
        if not any(part.startswith("_") for part in parts) and parts[1] != "cli":
            names.append(info.name)
    return names


def import_public(name: str) -> ModuleType | None:
    """Import a public module; ``None`` if it needs an extra that is not installed."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if "pip install 'filterstats[" in str(error):
            return None  # e.g. filterstats.zoo.timm without timm: checked where it is
        raise


def public_modules() -> list[ModuleType]:
    """The importable public modules (those needing an absent extra left out)."""
    return [m for m in map(import_public, public_module_names()) if m is not None]


def public_objects() -> list[tuple[str, object]]:
    """(qualified name, object) of every function and class in some public ``__all__``."""
    seen: dict[int, tuple[str, object]] = {}
    for module in public_modules():
        for name in getattr(module, "__all__", ()):
            try:
                obj = getattr(module, name)  # lazy names load their extra here
            except ModuleNotFoundError as error:
                if "pip install 'filterstats[" in str(error):
                    continue  # e.g. integrations.LightningFilterTracker without lightning
                raise
            if inspect.isfunction(obj) or inspect.isclass(obj):
                seen.setdefault(id(obj), (f"{obj.__module__}.{obj.__qualname__}", obj))
    return sorted(seen.values(), key=lambda item: item[0])


def own_public_methods(cls: type) -> list[tuple[str, object]]:
    """Public methods and properties defined in ``cls`` itself (not inherited)."""
    members = []
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isfunction(member) or isinstance(member, property):
            members.append((f"{cls.__qualname__}.{name}", member))
    return members


def refers_to_documented_base(cls: type, name: str, method: object) -> bool:
    """An override whose docstring says "See ..." and whose base method is documented."""
    if not (inspect.getdoc(method) or "").startswith("See "):
        return False
    for base in cls.__mro__[1:]:
        if name in vars(base):
            return not docstring_problems(f"{base.__qualname__}.{name}", vars(base)[name])
    return False


def takes_arguments(function: object) -> bool:
    parameters = list(inspect.signature(function).parameters.values())  # type: ignore[arg-type]
    if parameters and parameters[0].name in ("self", "cls"):
        parameters = parameters[1:]
    return bool(parameters)


def returns_something(function: object) -> bool:
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # unresolvable annotation: fall back to the raw text
        hints = {"return": inspect.signature(function).return_annotation}  # type: ignore[arg-type]
    annotation = hints.get("return", inspect.Signature.empty)
    return annotation not in (None, type(None), "None", inspect.Signature.empty)


def section(docstring: str, name: str) -> bool:
    return re.search(rf"^\s*{name}:\s*$", docstring, flags=re.MULTILINE) is not None


def docstring_problems(name: str, obj: object) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    if not doc.strip():
        return [f"{name}: no docstring"]
    problems = []
    if isinstance(obj, property):
        return problems  # a property is documented by its summary line
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj) and dataclasses.fields(obj):
            if not section(doc, "Attributes"):
                problems.append(f"{name}: dataclass without an Attributes section")
        for method_name, method in own_public_methods(obj):
            if refers_to_documented_base(obj, method_name.rsplit(".", 1)[1], method):
                continue
            problems += docstring_problems(f"{obj.__module__}.{method_name}", method)
        return problems
    if takes_arguments(obj) and not section(doc, "Args"):
        problems.append(f"{name}: takes arguments but has no Args section")
    if returns_something(obj) and not section(doc, "Returns") and not section(doc, "Yields"):
        problems.append(f"{name}: returns a value but has no Returns section")
    return problems


@pytest.mark.parametrize("name", public_module_names())
def test_public_module_imports(name: str) -> None:
    if import_public(name) is None:
        pytest.skip(f"{name} needs an extra that is not installed")


def test_public_api_is_found() -> None:
    names = {name for name, _ in public_objects()}
    assert "filterstats.metrics.sparsity" in names
    assert "filterstats.results.FilterReport" in names


@pytest.mark.parametrize(("name", "obj"), public_objects(), ids=[n for n, _ in public_objects()])
def test_public_docstring_has_args_and_returns(name: str, obj: object) -> None:
    problems = docstring_problems(name, obj)
    assert not problems, "\n".join(problems)


def test_docstring_check_catches_a_missing_section() -> None:
    def undocumented_args(x: int) -> int:
        """Summary only."""
        return x

    def fine(x: int) -> int:
        """Summary.

        Args:
            x: A number.

        Returns:
            The number.
        """
        return x

    assert len(docstring_problems("f", undocumented_args)) == 2
    assert docstring_problems("g", fine) == []


# ----------------------------------------------------------------- code blocks

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
                    re.DOTALL | re.MULTILINE)  # fmt: skip


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line number, code, skipped) of every ```python block, in order."""
    blocks = []
    for match in _FENCE.finditer(text):
        info = match.group("info").strip().split()
        if not info or info[0] not in ("python", "py"):
            continue
        before = text[: match.start()].rstrip().splitlines()
        skipped = bool(before) and before[-1].strip() == SKIP_MARKER
        indent = match.group("indent")
        body = "\n".join(line[len(indent) :] for line in match.group("body").splitlines())
        blocks.append((text.count("\n", 0, match.start()) + 1, body, skipped))
    return blocks


def pages_with_code() -> list[Path]:
    """Pages of the site and README.md that hold at least one runnable python block."""
    pages = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]
    return [p for p in pages if any(not s for *_, s in python_blocks(p.read_text("utf-8")))]


@pytest.mark.parametrize("page", pages_with_code(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    runnable = [(line, code) for line, code, skipped in blocks if not skipped]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict[str, object] = {"__name__": "__docs__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for line, code in runnable:
            try:
                exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(
                    f"{page.name}, block at line {line} failed: {error!r}"
                ) from error
    try:
        import matplotlib.pyplot as plt

        plt.close("all")
    except ModuleNotFoundError:
        pass


def test_block_extraction_honours_the_skip_marker() -> None:
    text = "a\n\n```python\nx = 1\n```\n\n<!-- skip-test -->\n```python\nraise SystemExit\n```\n"
    assert [(code, skipped) for _, code, skipped in python_blocks(text)] == [
        ("x = 1", False),
        ("raise SystemExit", True),
    ]


# ----------------------------------------------------------------- API pages and CLI


def test_every_public_name_has_an_api_page() -> None:
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented |= set(re.findall(r"^:::\s*(\S+)", page.read_text(), flags=re.MULTILINE))
    missing = [
        f"filterstats.{name}"
        for name in filterstats.__all__
        if name != "__version__" and f"filterstats.{name}" not in documented
    ]
    assert not missing, f"no `::: name` in docs/api/*.md for {missing}"


def cli_options(parser: argparse.ArgumentParser, path: str = "") -> list[tuple[str, str]]:
    """(command path, option) for every option and sub-command of the parser."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                command = f"{path} {name}".strip()
                found.append((command, name))
                found += cli_options(sub, command)
        elif isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        elif action.option_strings:
            found.append((path, max(action.option_strings, key=len)))
    return found


def cli_sections(text: str) -> dict[str, str]:
    """Text under each heading of the form ``filterstats COMMAND``, keyed by COMMAND."""
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        heading = re.match(r"^#+\s+`?filterstats\s+([a-z -]+?)`?\s*$", line)
        if heading:
            current = heading.group(1).strip()
            sections[current] = ""
        elif line.startswith("#"):
            current = None
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def test_cli_reference_lists_every_command_and_option() -> None:
    from filterstats.cli import build_parser

    sections = cli_sections((DOCS / "cli.md").read_text(encoding="utf-8"))
    missing = []
    for command, option in cli_options(build_parser()):
        if not option.startswith("-"):  # a sub-command: needs its own heading
            if command not in sections:
                missing.append(f"a heading `filterstats {command}`")
        elif f"`{option}" not in sections.get(command, ""):
            missing.append(f"{option} under `filterstats {command}`")
    assert not missing, f"docs/cli.md lacks {missing}"


def test_docs_command_installs_the_docs_extra() -> None:
    """The documented build command installs exactly the ``docs`` extra's requirements."""
    text = (DOCS / "index.md").read_text(encoding="utf-8")
    command = text.split("<!-- docs-command -->", 1)[1].split("```bash\n", 1)[1].split("\n")[0]
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    extra = re.search(r"^docs = \[(.*?)\]$", pyproject, flags=re.MULTILINE)
    assert extra is not None, "pyproject.toml has no docs extra"
    wanted = set(re.findall(r'"([^"]+)"', extra.group(1)))
    assert set(re.findall(r"'([^']+)'", command)) == wanted
    assert "mkdocs build --strict" in command


def test_zoo_environment_command_has_the_ci_pins() -> None:
    """docs/zoos.md's zoo-environment command installs what .ci/run_zoo.sh installs."""
    script = (ROOT / ".ci" / "run_zoo.sh").read_text(encoding="utf-8")
    pins = re.findall(r"(torch==\S+|torchvision==\S+|'setuptools<\d+')", script)
    extras = re.search(r"\$root(\[[a-z,]+\])", script)
    assert len(pins) == 3 and extras, "the pins of .ci/run_zoo.sh changed shape"
    page = (DOCS / "zoos.md").read_text(encoding="utf-8")
    command = next(
        line for line in page.splitlines() if line.startswith("python3 -m venv .venv-zoo")
    )
    for needed in (*pins, f"-e '.{extras.group(1)}'"):
        assert needed in command, f"docs/zoos.md's zoo command lacks {needed}"
