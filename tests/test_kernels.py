"""Kernels: independence of chunking and grouping, batched == per layer, memory bound."""

from __future__ import annotations

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
    together = kernels._kernel_moments_multi(rows, variants, chunk_bytes=chunk_bytes)
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


def peak_allocated(fn):
    """Peak bytes of live tensors allocated while ``fn`` runs (the allocator's events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    live = peak = 0
    for event in events:
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


def test_peak_memory_of_a_large_layer_is_bounded():
    # A large synthetic layer: 256 filters, 8192 x 3 x 3 inputs, float32 (75 MB).
    weight = make_weight((256, 8192, 3, 3), 7, torch.float32)
    weight_bytes = weight.numel() * weight.element_size()
    bound = 0.25 * weight_bytes + 16 * 2**20
    # The measurement sees a copy of the layer (it can fail) ...
    assert peak_allocated(lambda: weight.abs()) >= weight_bytes
    # ... and none of the metrics makes one.
    calls = {
        "measure": lambda: fs.measure([weight], chunk_bytes=2**22),
        "measure (tcq)": lambda: fs.measure(
            [weight], definition="torchconvquality", chunk_bytes=2**22
        ),
        "diversity": lambda: fs.diversity(weight),
        "sparsity": lambda: fs.sparsity(weight),
        "orthogonality": lambda: fs.orthogonality(weight, chunk_bytes=2**22),
        "measure (omit)": lambda: fs.measure([weight], nan_policy="omit", chunk_bytes=2**22),
    }
    for name, call in calls.items():
        call()  # first call: code paths
        peak = peak_allocated(call)
        assert peak < bound, (name, peak, weight_bytes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_pass_matches_float64_moments_for_any_chunk(device, dtype):
    rows = make_weight((40, 30, 3, 3), 8, dtype, device).reshape(-1, 9)
    exact = rows.to(torch.float64)
    kernel_max = exact.abs().amax(dim=1)
    threshold = 0.01 * kernel_max.max()
    sparse = kernel_max <= threshold
    variants = [(True, True), (False, False), (False, True), (True, False)]
    passes = [
        kernels.kernel_pass(
            rows,
            threshold,
            strict=False,
            all_sparse=torch.tensor(False, device=device),
            variants=variants,
            chunk_bytes=chunk_bytes,
        )
        for chunk_bytes in (1, 3000, 2**30)
    ]
    for result in passes:
        assert float(result.n_sparse) == float(sparse.sum())
        for (scale, drop), moments in zip(variants, result.moments):
            kept = exact[~sparse] if drop else exact
            if scale:
                divisor = kernel_max[~sparse] if drop else kernel_max
                kept = kept / torch.where(divisor > 0, divisor, 1.0)[:, None]
            centred = kept - moments.shift
            assert float(moments.count) == kept.shape[0]
            torch.testing.assert_close(moments.total, centred.sum(dim=0), rtol=0, atol=1e-10)
            torch.testing.assert_close(moments.outer, centred.T @ centred, rtol=0, atol=1e-10)
    for other in passes[1:]:  # chunking changes nothing but float64 summation order
        for a, b in zip(passes[0].moments, other.moments):
            torch.testing.assert_close(a.outer, b.outer, rtol=0, atol=1e-12)


def entropy_reference(rows: torch.Tensor) -> float:
    """Variance entropy by SVD of the centred kernels, float64 (independent of ours)."""
    rows = rows.to(torch.float64)
    singular = torch.linalg.svdvals(rows - rows.mean(dim=0))
    ratio = singular**2 / (singular**2).sum()
    ratio = ratio[ratio > 0]
    return float(-(ratio * torch.log10(ratio)).sum())


def adversarial_layers():
    generator = torch.Generator().manual_seed(11)
    direction = torch.randn(9, generator=generator)
    signs = torch.randn(2048, 1, generator=generator)
    return {
        "large mean": 1.0 + 1e-2 * torch.randn(128, 64, 3, 3, generator=generator),
        "big centre": torch.randn(64, 64, 3, 3, generator=generator)
        + 30.0 * torch.eye(3)[None, None],
        "signed multiples": (signs * direction).reshape(64, 32, 3, 3),
        "near rank 2": (
            torch.randn(4096, 2, generator=generator) @ torch.randn(2, 9, generator=generator)
            + 1e-4 * torch.randn(4096, 9, generator=generator)
        ).reshape(64, 64, 3, 3),
        "tiny layer": torch.randn(10, 1, 3, 3, generator=generator),
    }


@pytest.mark.parametrize("name", list(adversarial_layers()))
def test_float32_entropies_match_float64_svd_on_hard_layers(name):
    weight = adversarial_layers()[name].float()
    rows = weight.reshape(-1, 9).to(torch.float64)
    scaled = rows / rows.abs().amax(dim=1, keepdim=True)
    result = fs.measure([weight], eps=0.0)  # eps 0: no kernel is dropped
    assert abs(float(result.entropy_raw[0]) - entropy_reference(rows)) < 1e-7
    assert abs(float(result.diversity[0]) - entropy_reference(scaled)) < 1e-7


def test_identical_and_proportional_kernels_give_exactly_zero_entropy():
    kernel = torch.randn(9)
    identical = kernel.repeat(64 * 32).reshape(64, 32, 3, 3)
    assert float(fs.measure([identical]).entropy_raw[0]) == 0.0
    assert float(fs.diversity(identical)) == 0.0
    proportional = (torch.rand(64 * 32, 1) + 0.5) * kernel
    assert float(fs.diversity(proportional.reshape(64, 32, 3, 3))) == 0.0


def test_ieee_float32_matmul_restores_the_users_setting():
    """TF32 would move orthogonality by ~1e-3: Gram products ask for IEEE float32."""
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("torch < 2.9 has no fp32_precision")
    previous = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        with kernels._ieee_float32_matmul(torch.device("cuda")):
            assert matmul.fp32_precision == "ieee"
        assert matmul.fp32_precision == "tf32"
        with pytest.raises(RuntimeError), kernels._ieee_float32_matmul(torch.device("cuda")):
            raise RuntimeError("restored on errors too")
        assert matmul.fp32_precision == "tf32"
        with kernels._ieee_float32_matmul(torch.device("cpu")):
            assert matmul.fp32_precision == "tf32"  # other devices: untouched
    finally:
        matmul.fp32_precision = previous


def test_public_surface_is_what_other_modules_use():
    """``kernels.__all__`` holds the names other modules use (and the types they get back)."""
    import inspect
    import re
    import typing
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    users = [
        p
        for folder in ("filterstats", "benchmarks")
        for p in (root / folder).rglob("*.py")
        if p.name != "kernels.py"
    ]
    used = set()
    for path in users:
        text = path.read_text(encoding="utf-8")
        used |= set(re.findall(r"\bkernels\.([A-Za-z_]\w*)", text))
        for names in re.findall(r"from filterstats\.kernels import \(?([\w\s,]+)\)?", text):
            used |= {name.strip() for name in names.split(",") if name.strip()}
    returned = set()
    for name in kernels.__all__:
        obj = getattr(kernels, name)
        if inspect.isfunction(obj):
            hint = typing.get_type_hints(obj).get("return")
            returned |= {getattr(t, "__name__", "") for t in (hint, *typing.get_args(hint))}
    public = {  # defined here, not imported (torch, Tensor, ...)
        name
        for name, obj in vars(kernels).items()
        if not name.startswith("_")
        and getattr(obj, "__module__", "filterstats.kernels") == "filterstats.kernels"
        and not inspect.ismodule(obj)
    }
    used_here = {name for name in used if name in public or name.startswith("_")}
    assert set(kernels.__all__) == (used_here & public) | (returned & public)
