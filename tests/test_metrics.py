from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import filterstats as fs
from tests import reference

SHAPES = [(16, 3, 3, 3), (32, 16, 3, 3), (7, 5, 3, 3), (12, 4, 5, 5), (10, 6, 3), (6, 2, 3, 3, 3)]


def make_weight(shape, seed: int, sparse_share: float = 0.3, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator, dtype=torch.float64)
    weight[0, 0] = 0.0  # an exactly-zero kernel
    kernel_dims = tuple(range(2, weight.ndim))
    mask = torch.rand(shape[:2], generator=generator) < sparse_share
    # Make some kernels sparse but not zero: tiny values.
    scale = torch.where(mask, 1e-3, 1.0).reshape(*shape[:2], *([1] * len(kernel_dims)))
    return (weight * scale).to(dtype)


def close(actual: torch.Tensor, expected: float, atol: float = 1e-9) -> None:
    value = float(actual)
    if math.isnan(expected):
        assert math.isnan(value), f"expected NaN, got {value}"
    else:
        assert value == pytest.approx(expected, abs=atol), (value, expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_sparsity_matches_reference(shape, seed):
    weight = make_weight(shape, seed)
    close(fs.sparsity(weight), reference.sparsity(weight.numpy(), 0.01, strict=False))
    close(
        fs.sparsity(weight, definition="torchconvquality"),
        reference.sparsity(weight.numpy(), 0.01, strict=True),
    )
    close(fs.sparsity(weight, eps=0.2), reference.sparsity(weight.numpy(), 0.2, strict=False))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_diversity_paper_matches_reference(shape, seed):
    weight = make_weight(shape, seed)
    close(fs.diversity(weight), reference.entropy_paper(weight.numpy()), atol=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_diversity_tcq_variants_match_reference(shape, seed):
    weight = make_weight(shape, seed)
    w = weight.numpy()
    tcq = {"definition": "torchconvquality"}
    close(fs.diversity(weight, **tcq), reference.entropy_tcq(w))
    close(fs.diversity(weight, **tcq, drop_sparse=True), reference.entropy_tcq(w, clean=True))
    close(fs.diversity(weight, **tcq, normalize=True), reference.entropy_tcq(w, normalize=True))
    close(
        fs.diversity(weight, **tcq, drop_sparse=True, normalize=True),
        reference.entropy_tcq(w, clean=True, normalize=True),
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_orthogonality_matches_reference(shape):
    weight = make_weight(shape, 3)
    close(fs.orthogonality(weight), reference.orthogonality(weight.numpy()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_inputs_are_upcast(dtype):
    weight = make_weight((32, 16, 3, 3), 5, dtype=dtype)
    exact = weight.to(torch.float64).numpy()
    atol = 1e-6 if dtype == torch.float32 else 1e-5
    close(fs.orthogonality(weight), reference.orthogonality(exact), atol=atol)
    close(fs.diversity(weight), reference.entropy_paper(exact), atol=atol)
    close(fs.sparsity(weight), reference.sparsity(exact), atol=0)


def test_chunking_does_not_change_results():
    weight = make_weight((64, 32, 3, 3), 7)
    whole = fs.measure([weight])
    tiny = fs.measure([weight], chunk_bytes=1)
    for field in ("sparsity", "diversity", "entropy_raw", "orthogonality"):
        torch.testing.assert_close(getattr(whole, field), getattr(tiny, field), rtol=0, atol=1e-12)


def test_batched_equals_per_layer():
    weights = [make_weight(s, i) for i, s in enumerate(SHAPES)]
    together = fs.measure(weights)
    for i, weight in enumerate(weights):
        alone = fs.measure([weight])
        for field in ("sparsity", "diversity", "diversity_clean", "entropy_raw", "orthogonality"):
            torch.testing.assert_close(
                getattr(together, field)[i], getattr(alone, field)[0], rtol=0, atol=1e-12
            )


def test_results_are_bit_identical_across_runs():
    weight = make_weight((48, 24, 3, 3), 11, dtype=torch.float32)
    first = fs.measure([weight])
    second = fs.measure([weight])
    for field in ("sparsity", "diversity", "entropy_raw", "orthogonality"):
        assert torch.equal(getattr(first, field), getattr(second, field))


def test_shapes_of_results():
    weight = torch.randn(8, 4, 3, 3)
    assert fs.sparsity(weight).shape == ()
    assert fs.diversity([weight, weight]).shape == (2,)
    assert fs.orthogonality((weight,)).shape == (1,)
    assert fs.sparsity(weight).dtype == torch.float64


# ------------------------------------------------------------------ degenerate layers


def test_all_zero_layer():
    zeros = torch.zeros(8, 4, 3, 3)
    assert float(fs.sparsity(zeros)) == 1.0
    with pytest.warns(fs.FilterStatsWarning, match="all zeros"):
        assert math.isnan(float(fs.diversity(zeros)))
    with pytest.warns(fs.FilterStatsWarning, match="all zeros"):
        assert math.isnan(float(fs.orthogonality(zeros)))
    with pytest.warns(fs.FilterStatsWarning, match="all zeros"):
        assert math.isnan(float(fs.diversity(zeros, definition="torchconvquality")))


def test_single_output_filter_orthogonality_is_nan():
    with pytest.warns(fs.FilterStatsWarning, match="single output filter"):
        assert math.isnan(float(fs.orthogonality(torch.randn(1, 8, 3, 3))))


def test_clean_diversity_with_fewer_than_two_nonsparse_kernels_is_nan():
    weight = torch.full((4, 4, 3, 3), 1e-6, dtype=torch.float64)
    weight[0, 0, 1, 1] = 1.0  # one non-sparse kernel
    assert math.isnan(float(fs.diversity(weight)))
    assert math.isnan(float(fs.diversity(weight, definition="torchconvquality", drop_sparse=True)))


def test_identical_kernels_give_zero_diversity():
    kernel = torch.randn(3, 3, dtype=torch.float64)
    weight = kernel.expand(64, 32, 3, 3).contiguous()
    assert float(fs.diversity(weight)) == 0.0
    assert str(float(fs.diversity(weight))) == "0.0"  # +0.0, not -0.0
    assert float(fs.diversity(weight.float(), definition="torchconvquality")) == 0.0


def test_orthonormal_filters_give_orthogonality_one():
    q, _ = torch.linalg.qr(torch.randn(36, 36, dtype=torch.float64))
    weight = q[:20].reshape(20, 4, 3, 3)
    close(fs.orthogonality(weight), 1.0, atol=1e-12)


def test_parallel_filters_give_orthogonality_zero():
    row = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    weight = torch.cat([row, -2 * row, 3 * row])
    close(fs.orthogonality(weight), 0.0, atol=1e-12)


def test_zero_filter_counts_as_orthogonal_unlike_reference_bug():
    q, _ = torch.linalg.qr(torch.randn(9, 9, dtype=torch.float64))
    weight = q[:4].reshape(4, 1, 3, 3).clone()
    weight[3] = 0
    # Off-diagonal of an orthonormal set plus a zero filter: all zero.
    close(fs.orthogonality(weight), 1.0, atol=1e-12)


@pytest.mark.parametrize("policy", ["propagate", "raise", "omit"])
def test_nan_policy(policy):
    weight = make_weight((16, 8, 3, 3), 2)
    broken = weight.clone()
    broken[3, 2, 0, 0] = float("nan")
    if policy == "raise":
        with pytest.raises(ValueError, match="non-finite"):
            fs.sparsity(broken, nan_policy=policy)
        return
    values = fs.measure([broken, weight], nan_policy=policy)
    clean = fs.measure([weight])
    if policy == "propagate":
        for field in ("sparsity", "diversity", "orthogonality"):
            assert math.isnan(float(getattr(values, field)[0]))
            close(getattr(values, field)[1], float(getattr(clean, field)[0]), atol=1e-12)
    else:
        keep = np.ones((16, 8), dtype=bool)
        keep[3, 2] = False
        w = weight.numpy()
        rows = reference.kernels_of(w)[keep.ravel()]
        top = np.abs(rows).max()
        sparse = np.abs(rows).max(axis=1) <= 0.01 * top
        close(values.sparsity[0], sparse.mean())
        expected_ortho = reference.orthogonality(np.delete(w, 3, axis=0))
        close(values.orthogonality[0], expected_ortho)


# ------------------------------------------------------------------ reference package


@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (32, 16, 3, 3), (64, 64, 3, 3)])
def test_against_torchconvquality_package(shape):
    tcq = pytest.importorskip("torchconvquality")
    weight = make_weight(shape, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = tcq.measure_conv_weight_quality(weight)
    tcq_def = {"definition": "torchconvquality"}
    close(fs.sparsity(weight, **tcq_def), expected["sparsity"], atol=1e-7)
    close(fs.diversity(weight, **tcq_def), expected["variance_entropy"], atol=1e-6)
    close(
        fs.diversity(weight, **tcq_def, drop_sparse=True),
        expected["variance_entropy_clean"],
        atol=1e-6,
    )
    close(
        fs.diversity(weight, **tcq_def, normalize=True),
        expected["variance_entropy_norm"],
        atol=1e-6,
    )
    close(
        fs.diversity(weight, **tcq_def, drop_sparse=True, normalize=True),
        expected["variance_entropy_clean_norm"],
        atol=1e-6,
    )
    close(fs.orthogonality(weight), expected["orthogonality"], atol=1e-6)


def test_against_torchconvquality_on_a_model():
    tcq = pytest.importorskip("torchconvquality")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3),
        torch.nn.Conv2d(32, 8, 1),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = tcq.measure_quality(net)
    metrics = fs.measure(fs.extract_filters(net), definition="torchconvquality")
    assert list(metrics.names) == list(expected)
    for i, name in enumerate(metrics.names):
        close(metrics.sparsity[i], expected[name]["sparsity"], atol=1e-7)
        close(metrics.diversity[i], expected[name]["variance_entropy"], atol=1e-6)
        close(metrics.orthogonality[i], expected[name]["orthogonality"], atol=1e-6)


# ------------------------------------------------------------------ properties

weights_strategy = st.tuples(
    st.integers(2, 12), st.integers(1, 6), st.sampled_from([1, 2, 3]), st.integers(0, 2**16)
)


@settings(max_examples=40, deadline=None)
@given(weights_strategy, st.floats(0.01, 100.0))
def test_invariant_to_positive_scaling(spec, factor):
    c_out, c_in, k, seed = spec
    weight = make_weight((c_out, c_in, k, k), seed)
    base = fs.measure([weight])
    scaled = fs.measure([weight * factor])
    for field in ("sparsity", "diversity", "entropy_raw", "orthogonality"):
        torch.testing.assert_close(
            getattr(scaled, field), getattr(base, field), atol=1e-9, rtol=0, equal_nan=True
        )


@settings(max_examples=40, deadline=None)
@given(weights_strategy)
def test_invariant_to_filter_permutation_and_negation(spec):
    c_out, c_in, k, seed = spec
    weight = make_weight((c_out, c_in, k, k), seed)
    generator = torch.Generator().manual_seed(seed)
    permuted = weight[torch.randperm(c_out, generator=generator)]
    permuted = permuted[:, torch.randperm(c_in, generator=generator)]
    base = fs.measure([weight, weight * 0.5])
    other = fs.measure([-weight * 0.5, permuted])
    for field in ("sparsity", "diversity", "entropy_raw", "orthogonality"):
        torch.testing.assert_close(
            getattr(other, field), getattr(base, field).flip(0), atol=1e-9, rtol=0, equal_nan=True
        )


@settings(max_examples=40, deadline=None)
@given(weights_strategy)
def test_values_within_ranges_and_match_reference(spec):
    c_out, c_in, k, seed = spec
    weight = make_weight((c_out, c_in, k, k), seed)
    metrics = fs.measure([weight])
    s, d, o = (
        float(metrics.sparsity[0]),
        float(metrics.diversity[0]),
        float(metrics.orthogonality[0]),
    )
    assert 0.0 <= s <= 1.0
    assert math.isnan(d) or 0.0 <= d <= math.log10(k * k) + 1e-12
    assert math.isnan(o) or -1e-12 <= o <= 1.0 + 1e-12
    close(metrics.diversity[0], reference.entropy_paper(weight.numpy()), atol=1e-8)
    close(metrics.orthogonality[0], reference.orthogonality(weight.numpy()), atol=1e-9)


# ------------------------------------------------------------------ errors


def test_a_model_goes_through_the_one_resolver():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 1))
    expected = fs.measure(fs.extract_filters(net))
    for held in (net, net.state_dict()):
        got = fs.measure(held)
        assert got.names == ("0",)
        for name in ("sparsity", "diversity", "orthogonality"):
            torch.testing.assert_close(getattr(got, name), getattr(expected, name))
    torch.testing.assert_close(fs.diversity(net[0]), fs.diversity(net[0].weight).reshape(1))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="`filters`.*3 to 5 dimensions"):
        fs.sparsity(torch.randn(4, 9))
    with pytest.raises(TypeError, match="extract_filters"):
        fs.sparsity(object())
    with pytest.raises(ValueError, match="`eps`"):
        fs.sparsity(torch.randn(4, 4, 3, 3), eps=2.0)
    with pytest.raises(ValueError, match="`definition`"):
        fs.diversity(torch.randn(4, 4, 3, 3), definition="pap")
    with pytest.raises(ValueError, match="`nan_policy`"):
        fs.orthogonality(torch.randn(4, 4, 3, 3), nan_policy="ignore")
    with pytest.raises(TypeError, match="floating point"):
        fs.sparsity(torch.ones(4, 4, 3, 3, dtype=torch.int64))


def test_metrics_on_device(device):
    weight = make_weight((32, 16, 3, 3), 9, dtype=torch.float32).to(device)
    metrics = fs.measure([weight])
    assert metrics.diversity.device.type == device
    cpu = fs.measure([weight.cpu()])
    for field in ("sparsity", "diversity", "orthogonality"):
        torch.testing.assert_close(
            getattr(metrics, field).cpu(), getattr(cpu, field), atol=1e-6, rtol=0
        )


class HostReads:
    """Counts the host reads and host-to-device copies that filterstats code asks for.

    On CUDA each is a synchronisation (``tolist``, ``item``, ``cpu``, ``bool(tensor)``,
    ``torch.tensor(..., device=...)``). On CPU they cost nothing, so the test counts the
    calls themselves, made directly from a filterstats module.
    """

    METHODS = ("tolist", "item", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import sys

        self.calls: list[str] = []

        def from_filterstats() -> str | None:
            frame = sys._getframe(2)
            module = frame.f_globals.get("__name__", "")
            return f"{module}:{frame.f_lineno}" if module.startswith("filterstats") else None

        def counting(name: str, original):
            def wrapper(*args, **kwargs):
                where = from_filterstats()
                if where and (name != "torch.tensor" or kwargs.get("device") is not None):
                    self.calls.append(f"{name} at {where}")
                return original(*args, **kwargs)

            return wrapper

        for name in self.METHODS:
            monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch, "tensor", counting("torch.tensor", torch.tensor))
        self.solves = 0
        solve = torch.linalg.eigvalsh

        def counted_solve(*args, **kwargs):
            self.solves += 1  # on CUDA its error check reads the host too
            return solve(*args, **kwargs)

        monkeypatch.setattr(torch.linalg, "eigvalsh", counted_solve)


def conv_stack(n_layers: int) -> torch.nn.Sequential:
    torch.manual_seed(n_layers)
    layers = [torch.nn.Conv2d(3, 16, 3)] + [torch.nn.Conv2d(16, 16, 3) for _ in range(n_layers - 1)]
    layers.append(torch.nn.Conv2d(16, 200, 3))  # large enough for the Gram panels
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("nan_policy", ["propagate", "omit"])
def test_host_reads_per_call_do_not_grow_with_the_number_of_layers(monkeypatch, nan_policy):
    """No per-layer synchronisation: measure and analyze read the host a fixed few times."""
    reads = {}
    for n_layers in (2, 12):
        model = conv_stack(n_layers)
        filters = fs.extract_filters(model)
        with monkeypatch.context() as patch:
            counter = HostReads(patch)
            fs.measure(filters, nan_policy=nan_policy)
            measured = list(counter.calls)
            assert counter.solves == 1  # every entropy variant, every layer: one solve
            counter.calls.clear()
            fs.analyze(filters, nan_policy=nan_policy)
            analyzed = list(counter.calls)
        reads[n_layers] = (measured, analyzed)
    (measure_small, analyze_small), (measure_big, analyze_big) = reads[2], reads[12]
    assert measure_big == measure_small, measure_big
    assert analyze_big == analyze_small, analyze_big
    # the layer maxima for the Gram scaling, the warnings, the out-channel counts; and
    # analyze's one copy of all columns
    assert len(measure_big) <= 3, measure_big
    assert len(analyze_big) <= len(measure_big) + 2, analyze_big
