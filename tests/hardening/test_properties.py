"""Property-based invariants of the three metrics on random and degenerate conv weights.

Normalised diversity: torchconvquality's threshold ``T(n)`` (a logistic fit of the
entropy of random kernels) is below 0.01 for ``n <= 2`` kernels and even negative for
``n = 2``, so ``H / T(n)`` is unbounded for tiny layers. For 3x3 layers with at least
64 kernels counted (all for torchconvquality, the non-sparse ones for the paper) ``T(n) >= 0.905``, so the normalised value lies in ``[0, log10(9) / 0.905]``,
about ``[0, 1.054]``; that is what is asserted here.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import filterstats as fs
from tests import reference as ref

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
PATTERNS = [
    "random",
    "zero_kernels",
    "repeated_kernels",
    "tiny_kernels",
    "all_zero",
    "sparse_filter",
]


@st.composite
def conv_weights(draw: st.DrawFn, min_out: int = 1, min_kernels: int = 1) -> torch.Tensor:
    """A conv weight ``(C_out, C_in, kH, kW)`` with a random shape, dtype, scale, pattern."""
    c_out = draw(st.integers(min_out, 9))
    c_in = draw(st.integers(1, 6))
    if c_out * c_in < min_kernels:
        c_in = math.ceil(min_kernels / c_out)
    kernel = draw(st.sampled_from([(3, 3), (1, 1), (1, 3), (5, 5), (2, 3)]))
    dtype = draw(st.sampled_from(DTYPES))
    pattern = draw(st.sampled_from(PATTERNS))
    seed = draw(st.integers(0, 2**31 - 1))
    # Powers of two keep the scaled values exact; the range stays inside float16's.
    exponent = draw(st.integers(-6, 6))
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(c_out, c_in, *kernel, generator=generator, dtype=torch.float64)
    kernels = weight.view(c_out * c_in, -1)
    n = kernels.shape[0]
    chosen = torch.rand(n, generator=generator) < 0.4
    if pattern == "zero_kernels":
        kernels[chosen] = 0
    elif pattern == "repeated_kernels":
        kernels[:] = kernels[0].clone()
    elif pattern == "tiny_kernels":
        kernels[chosen] *= 1e-3  # below eps=0.01 of the layer's max: sparse
    elif pattern == "all_zero":
        kernels[:] = 0
    elif pattern == "sparse_filter":
        weight[0] = 0
    return (weight * 2.0**exponent).to(dtype)


def _quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fs.FilterStatsWarning)
        return function(*args, **kwargs)


def _f64(weight: torch.Tensor) -> np.ndarray:
    return weight.to(torch.float64).numpy()


def _same(a: float, b: float, tolerance: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tolerance


def _ortho_tolerance(weight: torch.Tensor) -> float:
    return 1e-9 if weight.dtype == torch.float64 else 2e-6  # float32 Gram otherwise


# -------------------------------------------------------------------- ranges


@SETTINGS
@given(conv_weights())
def test_values_lie_in_their_ranges(weight):
    metrics = _quiet(fs.measure, weight)
    sparsity = metrics.sparsity[0].item()
    assert 0.0 <= sparsity <= 1.0
    width = math.prod(weight.shape[2:])
    for key in ("diversity", "diversity_clean", "entropy_raw"):
        value = getattr(metrics, key)[0].item()
        assert math.isnan(value) or -1e-12 <= value <= math.log10(width) + 1e-9, (key, value)
    ortho = metrics.orthogonality[0].item()
    assert math.isnan(ortho) or -1e-9 <= ortho <= 1.0 + 1e-9
    if weight.shape[0] >= 2 and (weight != 0).any():
        assert not math.isnan(ortho)


@SETTINGS
@given(conv_weights(min_kernels=64).filter(lambda w: tuple(w.shape[2:]) == (3, 3)))
def test_normalised_diversity_is_roughly_in_0_1_for_64_kernels_or_more(weight):
    kept = _quiet(fs.measure, weight).n_nonsparse.item()  # the paper counts these only
    for definition in ("paper", "torchconvquality") if kept >= 64 else ("torchconvquality",):
        value = _quiet(fs.diversity, weight, definition=definition, normalize=True).item()
        assert math.isnan(value) or -1e-12 <= value <= math.log10(9) / 0.905 + 1e-9


def test_the_threshold_is_why_tiny_layers_are_excluded_above():
    from filterstats.kernels import entropy_threshold

    threshold = entropy_threshold(torch.tensor([2.0, 64.0, 1e6]))
    assert threshold[0] < 0 < 0.905 <= threshold[1] < threshold[2] < 0.952
    assert ref.tcq_threshold(64) == pytest.approx(threshold[1].item())


# --------------------------------------------------------------- invariances


@SETTINGS
@given(conv_weights(), st.randoms(use_true_random=False))
def test_invariant_to_permuting_filters_and_channels(weight, rng):
    out_order = list(range(weight.shape[0]))
    in_order = list(range(weight.shape[1]))
    rng.shuffle(out_order)
    rng.shuffle(in_order)
    permuted = weight[out_order][:, in_order]
    a, b = _quiet(fs.measure, weight), _quiet(fs.measure, permuted)
    assert torch.equal(a.sparsity, b.sparsity)
    for key in ("diversity", "entropy_raw"):
        assert _same(getattr(a, key).item(), getattr(b, key).item(), 1e-9), key
    assert _same(a.orthogonality.item(), b.orthogonality.item(), _ortho_tolerance(weight))


@SETTINGS
@given(conv_weights(), st.integers(-4, 4))
def test_invariant_to_positive_scaling_and_negation(weight, exponent):
    scale = 2.0**exponent  # exact in every dtype for the drawn ranges
    a = _quiet(fs.measure, weight)
    for other in (weight * scale, -weight):
        b = _quiet(fs.measure, other)
        assert torch.equal(a.sparsity, b.sparsity)
        for key in ("diversity", "entropy_raw"):
            assert _same(getattr(a, key).item(), getattr(b, key).item(), 1e-9), key
        assert _same(a.orthogonality.item(), b.orthogonality.item(), _ortho_tolerance(weight))


# ------------------------------------------------------------ reference match


@SETTINGS
@given(conv_weights())
def test_agrees_with_the_plain_float64_reference(weight):
    array = _f64(weight)
    metrics = _quiet(fs.measure, weight)
    assert metrics.sparsity.item() == ref.sparsity(array)
    assert _same(metrics.diversity.item(), ref.entropy_paper(array), 1e-7)
    assert _same(metrics.entropy_raw.item(), ref.entropy_raw(array), 1e-7)
    assert _same(metrics.orthogonality.item(), ref.orthogonality(array), 1e-5)
    tcq = _quiet(fs.diversity, weight, definition="torchconvquality").item()
    assert _same(tcq, ref.entropy_tcq(array), 1e-7)
