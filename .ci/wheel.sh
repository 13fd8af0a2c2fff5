#!/usr/bin/env bash
# Build the wheel and sdist, install the wheel into a fresh virtual environment and
# use it from outside the repository, as `pip install filterstats` users will: the
# package data (demo weights, the paper's model list, the C source of the compiled
# pass) must be inside, and the demo job must run from it.
#
# Usage: .ci/wheel.sh [WORK_DIR]   (default: a temporary directory, removed afterwards)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
work="${1:-}"
if [ -z "$work" ]; then
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work"

"$python" -m venv "$work/build-venv"
"$work/build-venv/bin/pip" install --quiet build
"$work/build-venv/bin/python" -m build --outdir "$work/dist" "$root" >/dev/null
wheel=$(ls "$work"/dist/filterstats-*.whl)
ls "$work"/dist/filterstats-*.tar.gz >/dev/null
echo "built $(basename "$wheel") and its sdist"

"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet torch==2.13.0 "$wheel"

cd "$work"  # not the repository: the installed package only
FILTERSTATS_CACHE_DIR="$work/cache" "$work/venv/bin/python" - <<'PY'
import importlib.resources as resources
import pathlib

import filterstats
from filterstats import kernels

package = resources.files("filterstats")
for data in ("py.typed", "_native/kernel_pass.c", "zoo/data/paper_models.csv",
             "demo/weights/metrics.json", "demo/weights/robust_seed0.pt"):
    assert package.joinpath(data).is_file(), f"{data} is missing from the wheel"
location = pathlib.Path(filterstats.__file__).resolve()
assert "site-packages" in location.parts, f"imported from {location}, not the install"
print("filterstats", filterstats.__version__, "from", location.parent)
print("compiled kernel pass:", kernels.native_pass_available())
PY
if command -v "${CC:-cc}" >/dev/null 2>&1; then
    FILTERSTATS_CACHE_DIR="$work/cache" "$work/venv/bin/python" -c \
        "from filterstats import kernels; assert kernels.native_pass_available(), 'C compiler present but the compiled pass did not build'"
fi
"$work/venv/bin/filterstats" demo --out "$work/demo" >/dev/null
test -s "$work/demo/report.html"
echo "wheel install: demo job ran from the installed package"
