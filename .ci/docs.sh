#!/usr/bin/env bash
# Build the documentation strictly, in its own virtual environment.
#
# Usage: .ci/docs.sh [DOCS_VENV [PYTHON]]
#   DOCS_VENV  where to create (or reuse) the docs environment; default .venv-docs.
#              mkdocs reads the sources statically, so it needs no torch.
#   PYTHON     optional: an interpreter with filterstats[test] installed; then the docs
#              test (docstrings, every code block) and the examples run too. README's
#              test command already runs them as part of the whole test suite.
#
# The built site is then opened in headless Chromium (tests/test_docs_site.py: every
# formula typeset by the vendored MathJax, no broken table, nothing fetched from another
# host) with DOCS_TEST_PYTHON, or PYTHON, an interpreter with filterstats[test]; the
# browser part skips when Chromium is absent (Debian: apt-get install chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
docs_venv=${1:-.venv-docs}
py=${2:-}
export MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1 NO_MKDOCS_2_WARNING=1

if [ ! -x "$docs_venv/bin/mkdocs" ]; then
  python3 -m venv "$docs_venv"
  # The requirements of the `docs` extra (tests/test_docs.py keeps docs/index.md's build
  # command equal to them); installing the extra itself would pull in torch.
  "$docs_venv/bin/pip" install -q 'mkdocs-material>=9.5' 'mkdocstrings[python]>=0.24' 'ruff>=0.5'
fi
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
"$docs_venv/bin/mkdocs" build --strict --site-dir "$site"

test_py=${DOCS_TEST_PYTHON:-$py}
if [ -n "$test_py" ]; then
  FILTERSTATS_SITE="$site" "$test_py" -m pytest -q -rs -p no:cacheprovider tests/test_docs_site.py
fi

if [ -n "$py" ]; then
  "$py" -m pytest -q -p no:cacheprovider tests/test_docs.py tests/test_examples.py
fi
