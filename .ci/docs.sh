#!/usr/bin/env bash
# Build the documentation strictly and run every example.
#
# Usage: .ci/docs.sh PYTHON [DOCS_VENV]
#   PYTHON     the interpreter of the test environment (filterstats installed, with
#              the [test] extra), e.g. .venv/bin/python; runs the examples and the docs test
#   DOCS_VENV  where to create the docs environment (default: .venv-docs); mkdocs reads
#              the sources statically, so it needs no torch
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:?usage: .ci/docs.sh PYTHON [DOCS_VENV]}
docs_venv=${2:-.venv-docs}
export MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1 NO_MKDOCS_2_WARNING=1

echo "::group::docs: mkdocs build --strict"
[ -x "$docs_venv/bin/mkdocs" ] || {
  python3 -m venv "$docs_venv"
  # The requirements of the `docs` extra (tests/test_docs.py keeps docs/index.md's
  # command equal to them); the extra itself would pull in torch.
  "$docs_venv/bin/pip" install -q 'mkdocs-material>=9.5' 'mkdocstrings[python]>=0.24' 'ruff>=0.5'
}
site=$(mktemp -d)
"$docs_venv/bin/mkdocs" build --strict --site-dir "$site"
rm -rf "$site"
echo "::endgroup::"

echo "::group::docs: code blocks, docstrings, examples"
"$py" -m pytest -q tests/test_docs.py tests/test_examples.py
echo "::endgroup::"
