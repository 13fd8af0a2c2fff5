"""Kernels: independence of chunking and grouping, batched == per layer, memory bound."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import filterstats as fs
from filterstats import kernels

FIELDS = ("sparsity", "diversity", "diversity_clean", "entropy_raw", "orthogonality")


def make_weight(shape, seed, dtype=torch.float64, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator, dtype=torch.float64)
    kernels_view = weight.view(shape[0] * shape[1], -1)
    draw = torch.rand(kernels_view.shape[0], generator=generator, dtype=torch.float64)
    kernels_view[draw < 0.1] *= 1e-4  # some sparse kernels
    kernels_view[draw > 0.95] = 0.0
    return weight.to(device=device, dtype=dtype)


def abs_cosine_reference(filters: np.ndarray) -> float:
    """Independent float64 sum of |cos| over distinct pairs (full Gram, numpy)."""
    norms = np.linalg.norm(filters, axis=1, keepdims=True)
    unit = filters / np.where(norms > 0, norms, 1.0)
    gram = np.abs(unit @ unit.T)
    return float(gram.sum() - np.trace(gram))


@pytest.mark.parametrize("chunk_bytes", [1, 100, 4096, 2**30])
def test_kernel_maxabs_is_exact_for_any_chunk(device, chunk_bytes):
    rows = make_weight((33, 7, 3, 3), 0, torch.float32, device).reshape(-1, 9)
    rows[5, 4] = float("nan")
    result = kernels.kernel_maxabs(rows, chunk_bytes=chunk_bytes)
    expected = rows.abs().amax(dim=1)
    assert torch.isnan(result[5])
    torch.testing.assert_close(result, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("chunk_bytes", [1, 700, 65536, 2**30])
@pytest.mark.parametrize("block_rows", [1, 5, 128])
def test_gram_sum_independent_of_chunks_and_blocks(device, chunk_bytes, block_rows):
    filters = make_weight((37, 6, 3, 3), 1, device=device).reshape(37, -1)
    filters[3] = 0.0  # a zero filter stays zero
    value = kernels.offdiag_abs_gram_sum(filters, chunk_bytes=chunk_bytes, block_rows=block_rows)
    expected = abs_cosine_reference(filters.cpu().numpy())
    assert abs(float(value) - expected) < 1e-12 * max(1.0, expected)


def test_batched_gram_equals_per_layer(device):
    stack = make_weight((5, 24, 8, 3, 3), 2, device=device).reshape(5, 24, -1)
    mask = torch.ones(5, 24, dtype=torch.bool, device=device)
    mask[1, 3] = False
    stack[1, 3, 0] = float("nan")  # excluded row: must not spread
    batched = kernels.offdiag_abs_gram_sum_batched(stack, row_mask=mask)
    for i in range(5):
        alone = kernels.offdiag_abs_gram_sum(stack[i], row_mask=mask[i])
        assert torch.isfinite(batched[i])
        torch.testing.assert_close(batched[i], alone, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk_bytes", [1, 1000, 2**30])
def test_moment_variants_in_one_pass_equal_separate_passes(device, chunk_bytes):
    rows = make_weight((40, 12, 3, 3), 3, device=device).reshape(-1, 9)
    kernel_max = rows.abs().amax(dim=1)
    scale = torch.where(kernel_max > 0, kernel_max, 1.0)
    mask = kernel_max > 0.01 * kernel_max.max()
    variants = [(mask, scale), (None, None), (mask, None)]
    together = kernels.kernel_moments_multi(rows, variants, chunk_bytes=chunk_bytes)
    for (weights, row_scale), moments in zip(variants, together):
        kept = rows if weights is None else rows[weights]
        if row_scale is not None:
            kept = kept / (row_scale if weights is None else row_scale[weights])[:, None]
        torch.testing.assert_close(moments.count.item(), float(kept.shape[0]))
        torch.testing.assert_close(moments.total, kept.sum(dim=0), rtol=0, atol=1e-12)
        torch.testing.assert_close(moments.outer, kept.T @ kept, rtol=0, atol=1e-11)


@pytest.mark.parametrize("definition", ["paper", "torchconvquality"])
def test_measure_independent_of_chunk_size(device, definition):
    weights = [
        make_weight((96, 40, 3, 3), 4, device=device),
        make_weight((160, 8, 3, 3), 5, device=device),  # > 128 filters: triangle path
    ]
    base = fs.measure(weights, definition=definition)
    for chunk_bytes in (1, 5000, 2**20):
        other = fs.measure(weights, definition=definition, chunk_bytes=chunk_bytes)
        for field in FIELDS:
            torch.testing.assert_close(
                getattr(other, field), getattr(base, field), rtol=0, atol=1e-12
            )


def test_grouped_small_layers_equal_each_alone(device):
    # Same-shaped small layers are stacked into one batched Gram product.
    weights = [make_weight((32, 16, 3, 3), seed, device=device) for seed in range(6)]
    weights.append(make_weight((200, 4, 3, 3), 9, device=device))
    together = fs.measure(weights)
    for i, weight in enumerate(weights):
        alone = fs.measure([weight])
        for field in FIELDS:
            torch.testing.assert_close(
                getattr(together, field)[i], getattr(alone, field)[0], rtol=0, atol=1e-12
            )


def test_float32_close_to_float64(device):
    weight = make_weight((64, 48, 3, 3), 6, device=device)
    high = fs.measure([weight])
    low = fs.measure([weight.float()])
    for field in FIELDS:
        torch.testing.assert_close(getattr(low, field), getattr(high, field), rtol=0, atol=1e-6)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import filterstats as fs

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    # A large synthetic layer: 256 filters, 8192 x 3 x 3 inputs, float32 (75 MB).
    weight = torch.randn(256, 8192, 3, 3)
    weight[:, :100] = 0.0
    fs.measure([weight], chunk_bytes=2**22)  # first call: code paths, allocator arenas
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size
    before = status("VmRSS")
    fs.measure([weight], chunk_bytes=2**22)
    print(status("VmHWM") - before, weight.numel() * weight.element_size())
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_memory_of_a_large_layer_is_bounded():
    # Peak resident set size (the OS's count of touched pages) in a fresh process:
    # a normalised or float64 copy of the layer would add 100-200 % of its bytes.
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    extra, weight_bytes = (int(v) for v in done.stdout.split())
    assert extra < 0.25 * weight_bytes + 16 * 2**20, (extra, weight_bytes)
