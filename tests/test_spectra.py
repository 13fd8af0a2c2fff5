"""conv_spectra against the explicit operator matrix of small convolutions.

The reference builds each convolution's full matrix by applying it (``F.pad`` with the
module's padding mode, then ``F.conv2d``; ``F.conv_transpose2d`` for transposed ones)
to every basis image in float64, and takes ``numpy.linalg.svd`` of it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from filterstats import FilterStatsWarning
from filterstats import _spectral as spectral
from filterstats.spectra import COLUMNS, ConvSpectra, conv_spectra
from tests.conftest import model_fingerprint

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")


# ----------------------------------------------------------------------- reference


def operator_matrix(module: nn.Module, in_shape: tuple[int, ...]) -> np.ndarray:
    """The convolution's matrix (bias excluded), columns = basis images, float64."""
    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    weight = module.weight.detach().to(torch.float64)
    one_d = basis.ndim == 3
    if one_d:
        basis, weight = basis.unsqueeze(2), weight.unsqueeze(2)
    stride = tuple(module.stride) if not one_d else (1, module.stride[0])
    dilation = tuple(module.dilation) if not one_d else (1, module.dilation[0])
    if module.transposed:
        padding = tuple(module.padding) if not one_d else (0, module.padding[0])
        out_pad = tuple(module.output_padding) if not one_d else (0, module.output_padding[0])
        out = F.conv_transpose2d(basis, weight, stride=stride, padding=padding,
                                 output_padding=out_pad, groups=module.groups, dilation=dilation)  # fmt: skip
    else:
        pads = list(module._reversed_padding_repeated_twice)
        if one_d:
            pads = [*pads, 0, 0]
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        out = F.conv2d(F.pad(basis, pads, mode=mode), weight, stride=stride,
                       dilation=dilation, groups=module.groups)  # fmt: skip
    matrix = out.reshape(n, -1).T.numpy()
    # The reference is the module: its own forward gives the same matrix.
    copy = type(module)(**_ctor_args(module)).to(torch.float64)
    with torch.no_grad():
        copy.weight.copy_(module.weight)
        if copy.bias is not None:
            copy.bias.zero_()
        own = copy(torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)).reshape(n, -1).T
    np.testing.assert_allclose(matrix, own.numpy(), atol=1e-12)
    return matrix


def _ctor_args(module: nn.Module) -> dict[str, object]:
    args: dict[str, object] = {
        "in_channels": module.in_channels,
        "out_channels": module.out_channels,
        "kernel_size": module.kernel_size,
        "stride": module.stride,
        "padding": module.padding,
        "dilation": module.dilation,
        "groups": module.groups,
        "bias": module.bias is not None,
        "padding_mode": module.padding_mode,
    }
    if module.transposed:
        args["output_padding"] = module.output_padding
    return args


def true_singular_values(module: nn.Module, in_shape: tuple[int, ...]) -> np.ndarray:
    return np.linalg.svd(operator_matrix(module, in_shape), compute_uv=False)


def seeded(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.3)
    return module


def spectra_of(module: nn.Module, in_shape: tuple[int, ...], **kwargs: object) -> ConvSpectra:
    kwargs.setdefault("progress", False)
    return conv_spectra(nn.Sequential(module), input_size=in_shape, **kwargs)  # type: ignore[arg-type]


Conv = nn.Conv2d
# (name, module factory, input shape, expected method)
CASES = [
    ("circular", lambda: Conv(3, 5, 3, padding=1, padding_mode="circular"), (3, 6, 6),
     "exact-circular"),
    ("circular-rect", lambda: Conv(4, 3, 3, padding=1, padding_mode="circular"), (4, 5, 7),
     "exact-circular"),
    ("circular-kernel-larger-than-input", lambda: Conv(3, 4, 5, padding=2,
     padding_mode="circular"), (3, 3, 3), "exact-circular"),
    ("circular-dilated", lambda: Conv(3, 5, 3, padding=2, dilation=2, padding_mode="circular"),
     (3, 7, 7), "exact-circular"),
    ("circular-stride2", lambda: Conv(4, 6, 3, stride=2, padding=1, padding_mode="circular"),
     (4, 8, 8), "exact-circular-polyphase"),
    ("circular-stride2-even-kernel", lambda: Conv(3, 8, 4, stride=2, padding=1,
     padding_mode="circular"), (3, 8, 6), "exact-circular-polyphase"),
    ("circular-groups", lambda: Conv(4, 8, 3, padding=1, groups=2, padding_mode="circular"),
     (4, 6, 6), "exact-circular"),
    ("circular-depthwise", lambda: Conv(4, 4, 3, padding=1, groups=4, padding_mode="circular"),
     (4, 6, 6), "exact-circular"),
    ("circular-wide", lambda: Conv(2, 8, 3, padding=1, padding_mode="circular"), (2, 4, 4),
     "exact-circular"),
    ("circular-1xk", lambda: Conv(3, 5, (1, 3), padding=(0, 1), padding_mode="circular"),
     (3, 4, 6), "exact-circular"),
    ("pointwise", lambda: Conv(6, 4, 1), (6, 5, 5), "exact-patch"),
    ("pointwise-stride2", lambda: Conv(4, 6, 1, stride=2), (4, 8, 8), "exact-patch"),
    ("patch", lambda: Conv(3, 8, 2, stride=2), (3, 8, 8), "exact-patch"),
    ("patch-odd-tail", lambda: Conv(3, 5, 2, stride=3), (3, 8, 7), "exact-patch"),
    ("zeros", lambda: Conv(4, 6, 3, padding=1), (4, 6, 6), "bound-embedding"),
    ("zeros-stride2", lambda: Conv(4, 6, 3, stride=2, padding=1), (4, 8, 8), "bound-embedding"),
    ("zeros-valid", lambda: Conv(3, 4, 3), (3, 7, 7), "bound-embedding"),
    ("zeros-same-even", lambda: Conv(3, 4, 4, padding="same"), (3, 6, 6), "bound-embedding"),
    ("zeros-groups", lambda: Conv(4, 8, 3, padding=1, groups=2), (4, 6, 6), "bound-embedding"),
    ("reflect", lambda: Conv(3, 5, 3, padding=1, padding_mode="reflect"), (3, 6, 6),
     "bound-embedding"),
    ("replicate", lambda: Conv(3, 5, 3, padding=1, padding_mode="replicate"), (3, 6, 6),
     "bound-embedding"),
    ("circular-stride-not-dividing", lambda: Conv(3, 5, 3, stride=2, padding=1,
     padding_mode="circular"), (3, 7, 7), "bound-row-selection"),
    ("transposed", lambda: nn.ConvTranspose2d(5, 3, 4, stride=2, padding=1), (5, 4, 4),
     "bound-embedding"),
    ("transposed-patch", lambda: nn.ConvTranspose2d(6, 4, 2, stride=2), (6, 4, 4),
     "exact-patch"),
    ("transposed-groups", lambda: nn.ConvTranspose2d(4, 6, 3, padding=1, groups=2), (4, 5, 5),
     "bound-embedding"),
    ("conv1d-circular", lambda: nn.Conv1d(3, 5, 3, padding=1, padding_mode="circular"), (3, 8),
     "exact-circular"),
    ("conv1d-zeros-stride2", lambda: nn.Conv1d(3, 5, 3, stride=2, padding=1), (3, 8),
     "bound-embedding"),
]  # fmt: skip
IDS = [case[0] for case in CASES]


@pytest.fixture(params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> tuple[nn.Module, tuple[int, ...], str]:
    _, factory, shape, method = request.param
    return seeded(factory(), seed=len(request.param[0])), shape, method


# ------------------------------------------------------------- against the operator


def test_method_is_the_expected_one(case: tuple[nn.Module, tuple[int, ...], str]) -> None:
    module, shape, method = case
    assert spectra_of(module, shape)[0].method == method


def test_exact_singular_values_equal_svd_of_the_operator(
    case: tuple[nn.Module, tuple[int, ...], str],
) -> None:
    module, shape, method = case
    truth = true_singular_values(module, shape)
    spectra = spectra_of(module, shape, singular_values=True)
    row = spectra[0]
    assert row.n_singular_values == truth.size
    if not method.startswith("exact"):
        with pytest.raises(ValueError, match="only a bound"):
            spectra.singular_values("0")
        return
    ours = spectra.singular_values("0").numpy()
    assert ours.shape == truth.shape
    np.testing.assert_allclose(ours, truth, rtol=1e-6, atol=1e-6 * truth[0])
    assert row.spectral_norm == pytest.approx(truth[0], rel=1e-6)
    assert row.spectral_norm_lower == pytest.approx(truth[0], rel=1e-6)
    assert row.sigma_min == pytest.approx(truth[-1], rel=1e-6, abs=1e-6 * truth[0])


def test_bounds_are_never_below_the_true_norm(
    case: tuple[nn.Module, tuple[int, ...], str],
) -> None:
    module, shape, _ = case
    truth = true_singular_values(module, shape)[0]
    for singular_values in (False, True):
        row = spectra_of(module, shape, singular_values=singular_values)[0]
        assert row.spectral_norm >= truth * (1 - 1e-12)
        assert row.spectral_norm_lower <= truth * (1 + 1e-12)
        assert row.spectral_norm_lower > 0.5 * truth  # the lower bound is informative


# How the spectral norm alone is certified: the default, the default with every matrix
# through Lanczos + Cholesky (no direct eigensolver for small matrices), the Gram iteration.
NORM_PATHS = ["certificate", "certificate-forced", "gram"]


def _norm_path(path: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    import filterstats.spectra as module

    if path == "certificate-forced":
        monkeypatch.setattr(module, "_DIRECT_SIZE", 0)
    return {"norm_method": "gram" if path == "gram" else "certificate"}


@pytest.mark.parametrize("path", NORM_PATHS)
def test_norm_bounds_are_never_below_the_true_norm(
    case: tuple[nn.Module, tuple[int, ...], str], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, shape, _ = case
    truth = true_singular_values(module, shape)[0]
    row = spectra_of(module, shape, **_norm_path(path, monkeypatch))[0]
    assert row.spectral_norm >= truth * (1 - 1e-12)
    assert row.spectral_norm_lower <= truth * (1 + 1e-12)


@pytest.mark.parametrize("path", NORM_PATHS)
def test_gram_norm_is_within_tolerance_above_the_exact_one(
    case: tuple[nn.Module, tuple[int, ...], str], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, shape, method = case
    if not method.startswith("exact"):
        pytest.skip("a bound, checked above")
    truth = true_singular_values(module, shape)[0]
    options = _norm_path(path, monkeypatch)
    for tol in (1e-2, 1e-4):
        row = spectra_of(module, shape, tol=tol, **options)[0]
        assert truth * (1 - 1e-12) <= row.spectral_norm <= truth * (1 + tol) * (1 + 1e-12)
        assert row.spectral_norm_lower <= truth * (1 + 1e-12)
        assert row.spectral_norm <= row.spectral_norm_lower * (1 + tol) * (1 + 1e-12)


def test_frobenius_norm_and_stable_rank(case: tuple[nn.Module, tuple[int, ...], str]) -> None:
    module, shape, _ = case
    matrix = operator_matrix(module, shape)
    row = spectra_of(module, shape, singular_values=True)[0]
    assert row.frobenius_norm == pytest.approx(np.linalg.norm(matrix), rel=1e-10)
    assert row.stable_rank == pytest.approx(row.frobenius_norm**2 / row.spectral_norm**2)


def test_circular_assumption_is_exact_for_the_circular_layer() -> None:
    zeros = seeded(Conv(4, 6, 3, padding=1), 3)
    circular = seeded(Conv(4, 6, 3, padding=1, padding_mode="circular"), 3)
    truth = true_singular_values(circular, (4, 6, 6))
    spectra = spectra_of(zeros, (4, 6, 6), padding="circular", singular_values=True)
    row = spectra[0]
    assert (row.method, row.padding_mode, row.operator_padding) == (
        "exact-circular", "zeros", "circular"
    )  # fmt: skip
    np.testing.assert_allclose(spectra.singular_values("0").numpy(), truth, rtol=1e-6,
                               atol=1e-6 * truth[0])  # fmt: skip
    assert row.frobenius_norm == pytest.approx(np.linalg.norm(operator_matrix(circular, (4, 6, 6))))


@pytest.mark.parametrize("seed", range(3))
def test_larger_layers_random_and_structured(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    module = Conv(8, 8, 3, padding=1, padding_mode="circular")
    with torch.no_grad():
        weight = torch.randn(8, 8, 3, 3, generator=generator)
        if seed == 1:  # nearly rank one: one dominant direction
            weight = weight[:1] * torch.ones(8, 1, 1, 1) + 1e-3 * weight
        if seed == 2:  # a smooth (low-pass) kernel: one dominant frequency
            weight = weight.abs()
        module.weight.copy_(weight)
    truth = true_singular_values(module, (8, 8, 8))
    spectra = spectra_of(module, (8, 8, 8), singular_values=True)
    np.testing.assert_allclose(spectra.singular_values("0").numpy(), truth, rtol=1e-6,
                               atol=1e-6 * truth[0])  # fmt: skip
    row = spectra_of(module, (8, 8, 8), tol=1e-6)[0]
    assert truth[0] * (1 - 1e-12) <= row.spectral_norm <= truth[0] * (1 + 1e-6) * (1 + 1e-12)


def test_degenerate_layers() -> None:
    dead = Conv(3, 4, 3, padding=1, padding_mode="circular")
    with torch.no_grad():
        dead.weight.zero_()
    row = spectra_of(dead, (3, 5, 5), singular_values=True)[0]
    assert (row.spectral_norm, row.frobenius_norm, row.sigma_min) == (0.0, 0.0, 0.0)
    assert math.isnan(row.stable_rank) and math.isnan(row.condition_number)
    gram = spectra_of(dead, (3, 5, 5))[0]
    assert gram.spectral_norm == 0.0
    # One pixel, one channel in and out: the operator is the kernel's centre tap.
    single = seeded(Conv(1, 1, 3, padding=1, padding_mode="circular"), 0)
    row = spectra_of(single, (1, 1, 1), singular_values=True)[0]
    # Circular padding of one pixel reads it through every tap: the sum of the kernel.
    assert row.spectral_norm == pytest.approx(
        abs(float(single.weight.detach().double().sum())), rel=1e-12
    )
    # Rank one: every frequency's matrix is an outer product.
    outer = Conv(4, 5, 3, padding=1, padding_mode="circular")
    with torch.no_grad():
        outer.weight.copy_(torch.randn(5, 1, 1, 1) * torch.randn(1, 4, 3, 3))
    truth = true_singular_values(outer, (4, 6, 6))
    assert spectra_of(outer, (4, 6, 6))[0].spectral_norm == pytest.approx(truth[0], rel=1e-3)
    assert spectra_of(outer, (4, 6, 6))[0].spectral_norm >= truth[0] * (1 - 1e-12)


def test_eigensolver_finishes_open_frequencies() -> None:
    module = seeded(Conv(8, 8, 3, padding=1, padding_mode="circular"), 5)
    truth = true_singular_values(module, (8, 8, 8))[0]
    row = spectra_of(module, (8, 8, 8), max_steps=1, tol=1e-8)[0]
    assert row.gram_steps in (1, 2)
    assert truth * (1 - 1e-12) <= row.spectral_norm <= truth * (1 + 1e-8)


WIDE = [
    ("wide-circular", lambda: Conv(36, 40, 3, padding=1, padding_mode="circular"), (36, 6, 6)),
    ("wide-stride2", lambda: Conv(12, 40, 3, stride=2, padding=1, padding_mode="circular"),
     (12, 8, 8)),
    ("wide-groups", lambda: Conv(68, 72, 3, padding=1, groups=2, padding_mode="circular"),
     (68, 4, 4)),
    ("wide-zeros", lambda: Conv(34, 36, 3, padding=1), (34, 6, 6)),
]  # fmt: skip


@pytest.mark.parametrize(("name", "factory", "shape"), WIDE, ids=[w[0] for w in WIDE])
@pytest.mark.parametrize("tol", [1e-3, 1e-7])
def test_certificate_on_layers_wider_than_the_direct_size(
    name: str, factory: object, shape: tuple[int, ...], tol: float
) -> None:
    # r > 32: Lanczos lower bound, Cholesky certificates, the eigensolver fallback.
    module = seeded(factory(), seed=len(name))  # type: ignore[operator]
    every = true_singular_values(module, shape)
    truth = every[0]
    row = spectra_of(module, shape, tol=tol)[0]
    if row.method.startswith("exact"):
        assert truth * (1 - 1e-12) <= row.spectral_norm <= truth * (1 + tol) * (1 + 1e-12)
        assert row.spectral_norm <= row.spectral_norm_lower * (1 + tol) * (1 + 1e-12)
        spectra = spectra_of(module, shape, singular_values=True)
        assert spectra[0].spectral_norm == pytest.approx(truth, rel=1e-9)
        ours = spectra.singular_values("0").numpy()
        np.testing.assert_allclose(ours, every, rtol=1e-6, atol=1e-6 * truth)
    else:
        assert row.spectral_norm >= truth * (1 - 1e-12)
    assert row.spectral_norm_lower <= truth * (1 + 1e-12)
    assert row.gram_steps in (0, 1, 2, 3)


def test_certificate_falls_back_to_the_eigensolver(monkeypatch: pytest.MonkeyPatch) -> None:
    import filterstats.spectra as module

    monkeypatch.setattr(module, "_LANCZOS_STEPS", 1)  # a poor lower bound: rungs fail
    monkeypatch.setattr(module, "_RANKING_STEPS", 1)
    monkeypatch.setattr(module, "_DIRECT_SIZE", 0)
    conv = seeded(Conv(6, 8, 3, padding=1, padding_mode="circular"), 3)
    truth = true_singular_values(conv, (6, 8, 8))[0]
    row = spectra_of(conv, (6, 8, 8), tol=1e-6)[0]
    assert row.gram_steps == 3
    assert truth * (1 - 1e-12) <= row.spectral_norm <= truth * (1 + 1e-6)
    assert row.spectral_norm_lower == pytest.approx(truth, rel=1e-9)


def test_offset_grams_equal_the_gram_of_the_transfer_matrices() -> None:
    generator = torch.Generator().manual_seed(4)
    for p, q, taps_hw in ((5, 3, (3, 3)), (3, 7, (2, 3)), (4, 4, (1, 3))):
        count = taps_hw[0] * taps_hw[1]
        taps = torch.randn(2, count, 2, p, q, dtype=torch.float64, generator=generator)
        grid = (5, 6)
        u, v, _ = spectral.frequencies(grid, taps_hw)
        phases = spectral.phase_matrix(u, v, grid, taps_hw, dtype=torch.complex128,
                                       device=torch.device("cpu"))  # fmt: skip
        matrices = spectral.transfer_matrices(phases, taps)  # (L, F, g, p, q)
        offsets, grams, _ = spectral.offset_grams(taps, taps_hw)
        trig = spectral.offset_phases(u, v, offsets, grid, device=torch.device("cpu"))
        for layer in range(2):
            ours = spectral.grams_at(trig, grams[layer])
            a = matrices[layer]
            direct = a.mH @ a if q <= p else a @ a.mH
            reference = torch.linalg.eigvalsh(direct)
            torch.testing.assert_close(torch.linalg.eigvalsh(ours), reference, rtol=0,
                                       atol=1e-12 * float(reference.max()))  # fmt: skip
            # The same matrix, or its complex conjugate (the other side's Gram).
            close = (ours - direct).abs().max() < 1e-12 * float(reference.max())
            conjugate = (ours - direct.conj()).abs().max() < 1e-12 * float(reference.max())
            assert bool(close or conjugate)


def test_cholesky_certificate_never_certifies_below_the_top_eigenvalue() -> None:
    generator = torch.Generator().manual_seed(5)
    a = torch.randn(30, 40, 40, dtype=torch.complex128, generator=generator)
    grams = a.mH @ a
    top = torch.linalg.eigvalsh(grams)[:, -1]
    zero = torch.zeros(30, dtype=torch.float64)
    assert not bool(spectral.certify_below(grams, top * (1 - 1e-9), zero).any())
    assert not bool(spectral.certify_below(grams, top, zero).any())
    assert bool(spectral.certify_below(grams, top * (1 + 1e-6), zero).all())
    lanczos = spectral.lanczos_lower(grams, 40)
    assert bool((lanczos <= top * (1 + 1e-12)).all())
    assert bool((lanczos >= top * (1 - 1e-9)).all())  # a full Krylov space


def test_gram_bounds_on_random_matrices() -> None:
    generator = torch.Generator().manual_seed(0)
    for shape in ((7, 3), (40, 40), (33, 70), (100, 100)):
        matrices = torch.randn(20, *shape, dtype=torch.complex128, generator=generator)
        top = torch.linalg.svdvals(matrices)[:, 0].to(torch.float64)
        out = spectral.gram_bounds(matrices, torch.zeros(20, dtype=torch.float64),
                                   tol=1e-5, max_steps=30)  # fmt: skip
        assert bool((out.upper >= top * (1 - 1e-13)).all())
        assert bool((out.lower <= top * (1 + 1e-13)).all())
        assert bool((out.upper <= out.lower * (1 + 1e-5) * (1 + 1e-12)).all())


# -------------------------------------------------------------- batching, chunking


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        Conv(3, 8, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        Conv(8, 8, 3, padding=1, padding_mode="circular"),
        nn.ReLU(),
        Conv(8, 8, 3, padding=1, padding_mode="circular"),
        Conv(8, 8, 3, padding=1),
        Conv(8, 12, 3, stride=2, padding=1, padding_mode="circular"),
        Conv(12, 12, 1),
    )


@pytest.mark.parametrize("singular_values", [False, True])
def test_results_do_not_depend_on_chunking_or_batching(singular_values: bool) -> None:
    model = _model()
    columns = ("spectral_norm", "spectral_norm_lower", "sigma_min", "frobenius_norm")
    whole = conv_spectra(model, input_size=(3, 8, 8), singular_values=singular_values,
                         progress=False)  # fmt: skip
    tiny = conv_spectra(model, input_size=(3, 8, 8), singular_values=singular_values,
                        max_memory=1, progress=False)  # fmt: skip
    for a, b in zip(whole.computed, tiny.computed):
        for column in columns:
            x, y = getattr(a, column), getattr(b, column)
            assert (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=1e-12), column
    # Each layer alone (no batching with same-shape layers) gives the same values.
    for index in (2, 4):
        alone = conv_spectra(nn.Sequential(model[index]), input_size=(8, 8, 8),
                             singular_values=singular_values, progress=False)[0]  # fmt: skip
        batched = whole[str(index)]
        assert alone.spectral_norm == pytest.approx(batched.spectral_norm, rel=1e-12)
    if singular_values:
        kept = whole.singular_values("2")
        again = conv_spectra(model, input_size=(3, 8, 8), progress=False).singular_values("2")
        torch.testing.assert_close(kept, again, rtol=1e-12, atol=1e-12)


def test_certificate_does_not_depend_on_chunking_or_batching() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        Conv(36, 40, 3, padding=1, padding_mode="circular"),
        Conv(40, 40, 3, padding=1, padding_mode="circular"),
        Conv(40, 40, 3, padding=1, padding_mode="circular"),
        Conv(40, 40, 3, padding=1),
    )
    whole = conv_spectra(model, input_size=(36, 6, 6), progress=False)
    tiny = conv_spectra(model, input_size=(36, 6, 6), max_memory=1, progress=False)
    for a, b in zip(whole.computed, tiny.computed):
        for column in ("spectral_norm", "spectral_norm_lower", "gram_steps"):
            assert getattr(a, column) == pytest.approx(getattr(b, column), rel=1e-12), column
    alone = conv_spectra(nn.Sequential(model[2]), input_size=(40, 6, 6), progress=False)[0]
    assert alone.spectral_norm == pytest.approx(whole["2"].spectral_norm, rel=1e-12)
    assert alone.spectral_norm_lower == pytest.approx(whole["2"].spectral_norm_lower, rel=1e-12)


def test_float32_bounds_hold() -> None:
    model = _model()
    exact = conv_spectra(model, input_size=(3, 8, 8), singular_values=True, progress=False)
    fast = conv_spectra(model, input_size=(3, 8, 8), dtype=torch.float32, progress=False)
    assert fast.params.dtype == "float32"
    for a, b in zip(exact.computed, fast.computed):
        assert b.spectral_norm >= a.spectral_norm * (1 - 1e-6)
        assert b.spectral_norm == pytest.approx(a.spectral_norm, rel=2e-3)


def test_device_and_dtype_of_the_computation(device: str) -> None:
    model = _model()
    cpu = conv_spectra(model, input_size=(3, 8, 8), progress=False)
    there = conv_spectra(model, input_size=(3, 8, 8), device=device, progress=False)
    for a, b in zip(cpu.computed, there.computed):
        assert b.spectral_norm == pytest.approx(a.spectral_norm, rel=1e-9)
    assert next(model.parameters()).device.type == "cpu"


# ---------------------------------------------------------------- the user's model


class _Noisy(nn.Module):
    """Train-mode parts: batch norm statistics, dropout, an RNG draw in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = Conv(3, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)
        self.head = Conv(6, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0.1 * torch.randn_like(x)
        return self.head(self.drop(self.norm(self.conv(x))))


@pytest.mark.parametrize("singular_values", [False, True])
def test_model_is_untouched(singular_values: bool) -> None:
    model = _Noisy().train()
    model.norm.eval()  # a frozen part of a model in training mode
    model.head.weight.requires_grad_(False)
    before = model_fingerprint(model)
    rng = torch.random.get_rng_state()
    spectra = conv_spectra(model, input_size=(3, 8, 8), singular_values=singular_values,
                           progress=False)  # fmt: skip
    assert len(spectra.computed) == 2
    assert model_fingerprint(model) == before
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert model.training and not model.norm.training
    assert model.conv.weight.grad is None


def test_shape_pass_uses_fake_tensors_for_an_ordinary_cnn() -> None:
    spectra = conv_spectra(_model(), input_size=(3, 8, 8), progress=False)
    assert spectra.params.shape_pass == "fake"
    assert [r.input_size for r in spectra.computed] == ["8x8"] * 5 + ["4x4"]


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = Conv(3, 4, 3, padding=1)
        self.b = Conv(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        if float(x.abs().sum()) >= 0:  # data-dependent: fake tensors cannot decide it
            x = self.b(x)
        return x


def test_shape_pass_falls_back_to_a_forward_pass() -> None:
    model = _DataDependent()
    before = model_fingerprint(model)
    spectra = conv_spectra(model, input_size=(3, 6, 6), progress=False)
    assert spectra.params.shape_pass == "forward"
    assert [r.layer for r in spectra.computed] == ["a", "b"]
    assert model_fingerprint(model) == before


class _Skips(nn.Module):
    """Every reason a convolution has no spectrum."""

    def __init__(self) -> None:
        super().__init__()
        self.ok = Conv(3, 4, 3, padding=1)
        self.volume = nn.Conv3d(1, 2, 3, padding=1)
        self.unused = Conv(4, 4, 3)
        self.twice = Conv(4, 4, 3, padding=1)
        self.custom = _SelfPadding(4, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ok(x)
        x = self.twice(x) + self.twice(x[..., ::2, ::2]).repeat_interleave(2, -1).repeat_interleave(
            2, -2
        )
        x = self.custom(x)
        self.volume(x[:, :1, None])
        return x


class _SelfPadding(nn.Conv2d):
    """Pads in forward (as timm's Conv2dSame): the module's own padding says 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (1, 1, 1, 1)))


def test_skipped_layers_are_listed_with_reasons() -> None:
    spectra = conv_spectra(_Skips(), input_size=(3, 8, 8), progress=False)
    assert [r.layer for r in spectra.computed] == ["ok"]
    reasons = {r.layer: r.reason for r in spectra.skipped}
    assert set(reasons) == {"volume", "unused", "twice", "custom"}
    assert "1-D and 2-D" in reasons["volume"]
    assert "never called" in reasons["unused"]
    assert "several input sizes" in reasons["twice"]
    assert "custom forward" in reasons["custom"]
    assert all(r.status == "skipped" for r in spectra.skipped)
    assert len(spectra) == 5


class _Breaks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = Conv(3, 4, 3, padding=1)
        self.second = Conv(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        raise RuntimeError("boom")


def test_a_failing_forward_keeps_the_layers_it_reached() -> None:
    with pytest.warns(FilterStatsWarning, match="shape pass"):
        spectra = conv_spectra(_Breaks(), input_size=(3, 6, 6), progress=False)
    assert [r.layer for r in spectra.computed] == ["first"]
    assert "forward pass failed (RuntimeError: boom)" in spectra["second"].reason


def test_wrapped_and_root_models() -> None:
    conv = seeded(Conv(3, 4, 3, padding=1, padding_mode="circular"), 1)
    wrapped = conv_spectra(nn.DataParallel(nn.Sequential(conv)), input_size=(3, 6, 6),
                           progress=False)  # fmt: skip
    assert [r.layer for r in wrapped.computed] == ["0"]
    truth = true_singular_values(conv, (3, 6, 6))[0]
    assert wrapped[0].spectral_norm == pytest.approx(truth, rel=1e-3)


# ------------------------------------------------------------------- the result


def test_result_exports_carry_provenance(tmp_path: Path) -> None:
    spectra = conv_spectra(_model(), input_size=(3, 8, 8), tol=1e-4, progress=False)
    records = spectra.to_records()
    assert list(records[0]) == list(COLUMNS)
    text = spectra.to_csv(tmp_path / "s.csv")
    head = json.loads(text.splitlines()[0].removeprefix("# filterstats "))
    assert head["input_size"] == "3x8x8" and head["tol"] == 1e-4
    assert head["definition"].startswith("operator 2-norm")
    assert head["version"] and head["schema_version"] == 1
    assert (tmp_path / "s.csv").read_text() == text
    payload = json.loads(spectra.to_json(tmp_path / "s.json"))
    assert payload["filterstats"]["padding"] == "model"
    assert payload["rows"][0]["sigma_min"] is None  # NaN as null
    assert len(payload["rows"]) == len(spectra)
    frame = spectra.to_pandas()
    assert list(frame.columns) == list(COLUMNS)
    assert frame.attrs["filterstats"]["tol"] == 1e-4


def test_repr_computes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import filterstats.spectra as module

    spectra = conv_spectra(_model(), input_size=(3, 8, 8), progress=False)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("computed in repr")

    monkeypatch.setattr(module, "_singular_values_of", fail)
    monkeypatch.setattr(module, "_spectral_norms_of", fail)
    monkeypatch.setattr(spectral, "gram_bounds", fail)
    assert repr(spectra) == spectra.table()
    assert "ConvSpectra" in repr(spectra)


def test_table_golden_file(golden) -> None:
    spectra = conv_spectra(_model(), input_size=(3, 8, 8), progress=False)
    golden.check("spectra_table", spectra.table() + "\n")


def test_singular_values_on_demand() -> None:
    model = _model()
    spectra = conv_spectra(model, input_size=(3, 8, 8), progress=False)
    values = spectra.singular_values("0")
    assert values.dtype == torch.float64 and values.device.type == "cpu"
    assert values.shape == (spectra["0"].n_singular_values,)
    assert bool((values[:-1] >= values[1:]).all())
    assert values[0].item() <= spectra["0"].spectral_norm
    with pytest.raises(ValueError, match="only a bound"):
        spectra.singular_values("5")
    surrogate = spectra.singular_values("5", surrogate=True)
    assert surrogate[0].item() * 1.0 == pytest.approx(spectra["5"].spectral_norm, rel=1e-3)
    with pytest.raises(KeyError, match="no computed layer"):
        spectra.singular_values("nope")
    with torch.no_grad():
        model[0].weight.mul_(2)  # in place: the kept reference changed
    with pytest.raises(ValueError, match="changed"):
        spectra.singular_values("0")


def test_lipschitz_product() -> None:
    spectra = conv_spectra(_model(), input_size=(3, 8, 8), progress=False)
    assert spectra.lipschitz_product() == pytest.approx(
        math.prod(r.spectral_norm for r in spectra.computed)
    )


def test_lipschitz_product_is_nan_when_a_convolution_is_missing() -> None:
    from filterstats._warnings import FilterStatsWarning

    class TwoSizes(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Conv2d(3, 4, 3, padding=1)
            self.shared = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.shared(self.first(x))
            return self.shared(nn.functional.avg_pool2d(x, 2))  # a second input size

    spectra = conv_spectra(TwoSizes(), input_size=(3, 8, 8), progress=False)
    assert [r.layer for r in spectra.skipped] == ["shared"]
    with pytest.warns(FilterStatsWarning, match="'shared'"):
        assert math.isnan(spectra.lipschitz_product())
    text = spectra.table()
    assert "skipped:" in text and spectra.skipped[0].reason in text  # uncut


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"input_size": (32, 32, "3")}, TypeError, "input_size"),
        ({"input_size": 32}, TypeError, "input_size"),
        ({"padding": "zeros"}, ValueError, "padding"),
        ({"tol": 0}, ValueError, "tol"),
        ({"max_steps": 0}, ValueError, "max_steps"),
        ({"dtype": torch.float16}, ValueError, "dtype"),
        ({"max_memory": 0}, ValueError, "max_memory"),
        ({"lower_steps": -1}, ValueError, "lower_steps"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type, match: str) -> None:
    kwargs.setdefault("input_size", (3, 8, 8))
    with pytest.raises(error, match=match):
        conv_spectra(_model(), **kwargs)  # type: ignore[arg-type]


def test_a_state_dict_is_refused() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        conv_spectra(_model().state_dict())  # type: ignore[arg-type]


# ----------------------------------------------------------------------- plots


def test_plots_return_axes() -> None:
    pytest.importorskip("matplotlib")
    from filterstats.plotting import plot_singular_values, plot_spectral_norm_by_depth

    spectra = conv_spectra(_model(), input_size=(3, 8, 8), progress=False)
    ax = plot_singular_values(spectra, "0")
    assert ax.get_yscale() == "log" and len(ax.lines) == 1
    ax = plot_spectral_norm_by_depth([spectra, spectra], labels=["normal", "robust"])
    assert len(ax.lines) == 2 and ax.get_legend() is not None
    with pytest.raises(ValueError, match="only a bound"):
        plot_singular_values(spectra, "5")


@pytest.mark.parametrize(
    ("input_size", "match"),
    [
        ((1, 3, 16, 16), "drop the batch dimension"),
        ((16, 16), "add the channel count"),
        ((4, 16, 16), "does not fit"),  # the first conv expects 3 channels
    ],
)
def test_an_input_size_that_does_not_fit_is_one_clear_error(input_size, match) -> None:
    import filterstats

    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3))
    with pytest.raises(ValueError, match=match):
        conv_spectra(net, input_size=input_size, progress=False)
    with pytest.raises(ValueError, match=match):
        filterstats.analyze(net, input_size=input_size, spectra=True)


def test_example_inputs_drive_the_shape_pass_of_a_data_dependent_forward() -> None:
    import filterstats

    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Conv2d(3, 4, 3, padding=1)
            self.gated = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gate = bool(x.sum() > 0)  # closed on zeros
            x = self.first(x)
            return self.gated(x) if gate else x

    torch.manual_seed(0)
    net = Gate()
    x = torch.ones(2, 3, 8, 8)
    plain = conv_spectra(net, input_size=(3, 8, 8), progress=False)
    assert [r.layer for r in plain.skipped] == ["gated"]
    real = conv_spectra(net, input_size=(3, 8, 8), progress=False, example_inputs=x)
    assert [r.layer for r in real.computed] == ["first", "gated"]
    report = filterstats.analyze(net, input_size=(3, 8, 8), spectra=True, example_inputs=x)
    assert not report.spectra.skipped
    with pytest.raises(ValueError, match="example_inputs"):
        conv_spectra(net, input_size=(3, 16, 16), progress=False, example_inputs=x)
