"""Determinism: the same inputs give bit-identical results on CPU, across runs and processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import filterstats as fs
from tests.hardening.conftest import REPO_ROOT, small_net

_SCRIPT = """
import json, torch, filterstats as fs
from tests.hardening.conftest import small_net
torch.set_num_threads({threads})
model = small_net(3)
metrics = fs.measure(fs.extract_filters(model, kernel_size=None))
values = {{k: getattr(metrics, k).tolist() for k in ("sparsity", "diversity", "orthogonality")}}
values["report"] = fs.analyze(model).to_json()
values["compare"] = fs.compare(model, small_net(4), n_boot=50).summary().to_pandas().to_json()
print(json.dumps({{k: (v if isinstance(v, str) else [float.hex(x) for x in v])
                  for k, v in values.items()}}))
"""


def _fresh_process(threads: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(threads=threads)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_fresh_processes_give_bit_identical_results():
    first = _fresh_process(threads=1)
    second = _fresh_process(threads=2)
    assert first == second


def test_repeated_calls_give_bit_identical_tensors():
    filters = fs.extract_filters(small_net(2), kernel_size=None)
    runs = [fs.measure(filters) for _ in range(3)]
    for run in runs[1:]:
        for key in ("sparsity", "diversity", "diversity_clean", "entropy_raw", "orthogonality"):
            assert torch.equal(
                getattr(run, key).nan_to_num(-1), getattr(runs[0], key).nan_to_num(-1)
            )


def test_repeated_analyze_gives_identical_exports():
    model = small_net(5)
    assert fs.analyze(model).to_csv() == fs.analyze(model).to_csv()


def test_compare_is_deterministic_for_a_seed():
    a, b = small_net(6), small_net(7)
    first = fs.compare(a, b, n_boot=100, seed=1).summary().to_pandas()
    second = fs.compare(a, b, n_boot=100, seed=1).summary().to_pandas()
    assert first.equals(second)


@pytest.mark.parametrize("chunk_bytes", [256, 4096, 2**20])
def test_results_do_not_depend_on_the_chunk_size(chunk_bytes):
    weight = torch.randn(64, 16, 3, 3, generator=torch.Generator().manual_seed(0))
    default = fs.measure(weight)
    chunked = fs.measure(weight, chunk_bytes=chunk_bytes)
    for key in ("diversity", "entropy_raw", "orthogonality"):
        torch.testing.assert_close(
            getattr(chunked, key), getattr(default, key), rtol=0, atol=1e-9
        )  # float32 Gram blocks
    assert torch.equal(chunked.sparsity, default.sparsity)


def test_results_do_not_depend_on_how_layers_are_grouped():
    weights = [
        torch.randn(8, c, 3, 3, generator=torch.Generator().manual_seed(c)) for c in (1, 4, 9)
    ]
    together = fs.measure(weights)
    for i, weight in enumerate(weights):
        alone = fs.measure(weight)
        for key in ("sparsity", "diversity", "orthogonality"):
            # Batched eigen-solves may differ from single ones in the last bit.
            assert getattr(together, key)[i].item() == pytest.approx(
                getattr(alone, key)[0].item(), rel=0, abs=1e-12
            )
