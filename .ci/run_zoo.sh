#!/usr/bin/env bash
# Test the zoo extras (timm, RobustBench, ONNX) in their own virtual environment.
# They need torch with a matching torchvision, which the core environment may lack.
#
# Usage: .ci/run_zoo.sh [VENV_DIR]   (or FILTERSTATS_ZOO_VENV=VENV_DIR .ci/run_zoo.sh)
# Default VENV_DIR: .venv-zoo in the repository root. Reused when it already exists.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${FILTERSTATS_ZOO_VENV:-$root/.venv-zoo}}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet \
    torch==2.14.1 torchvision==0.29.1 'setuptools<82' \
    -e "$root[timm,robustbench,onnx,test]"

cd "$root"
"$venv/bin/python" -m pytest -m zoo tests -q -p no:cacheprovider
