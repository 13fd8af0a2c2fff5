"""The compiled kernel pass: equal to the torch path, thread-independent, optional."""

from __future__ import annotations

import stat
import sys

import pytest
import torch

import filterstats as fs
from filterstats import _native, kernels

needs_compiler = pytest.mark.skipif(
    not _native.available(), reason="no C compiler here: the compiled pass is not built"
)

VARIANT_SETS = [
    (),
    ((True, True), (False, False)),  # the paper definition
    ((False, True), (False, False)),  # torchconvquality
    ((True, False), (False, True), (True, True), (False, False)),
]


def layer(n: int, width: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, width, generator=generator, dtype=torch.float64) + 0.3
    draw = torch.rand(n, generator=generator, dtype=torch.float64)
    rows[draw < 0.1] *= 1e-4  # sparse kernels
    rows[draw > 0.95] = 0.0
    return rows.to(dtype)


def near_threshold_layer() -> torch.Tensor:
    """A layer whose kernel 10 has max|x| = 0.01 * max|W| rounded to float32."""
    rows = layer(64, 9, seed=4)
    top = rows.abs().max().to(torch.float64)
    rows[10] = 0.0
    rows[10, 3] = float(0.01 * top)  # rounded to float32: either side of the threshold
    return rows


def run_pass(monkeypatch, rows, variants, *, native, eps=0.01, strict=False, omit=False):
    monkeypatch.setenv(_native.ENV_SWITCH, "1" if native else "0")
    top, _ = kernels.layer_maxabs(rows, omit_nonfinite=omit)  # as filterstats.metrics does
    return kernels.kernel_pass(
        rows,
        eps * top,
        strict=strict,
        all_sparse=~(top > 0),
        variants=variants,
        omit_nonfinite=omit,
    )


def assert_same_pass(native, torch_path, *, tolerance=1e-12):
    assert float(native.n_sparse) == float(torch_path.n_sparse)
    assert float(native.n_valid) == float(torch_path.n_valid)
    assert len(native.moments) == len(torch_path.moments)
    for ours, theirs in zip(native.moments, torch_path.moments):
        assert float(ours.count) == float(theirs.count)
        # The compiled pass sums the shift's mean in its own order: equal to rounding.
        shift_scale = float(torch.nan_to_num(theirs.shift).abs().max()) or 1.0
        torch.testing.assert_close(
            ours.shift, theirs.shift, rtol=0, atol=1e-15 * shift_scale, equal_nan=True
        )
        # Scales of the sums' terms: |sum y| <= sqrt(n * trace(sum y y^T)).
        outer_scale = float(torch.nan_to_num(theirs.outer, nan=0.0).abs().max())
        total_scale = (float(theirs.count) * float(torch.nan_to_num(theirs.outer).trace())) ** 0.5
        for name, scale in (("total", total_scale), ("outer", outer_scale)):
            a, b = getattr(ours, name), getattr(theirs, name)
            atol = tolerance * (scale or 1.0)
            torch.testing.assert_close(a, b, rtol=0, atol=atol, equal_nan=True)


@needs_compiler
@pytest.mark.parametrize("variants", VARIANT_SETS)
@pytest.mark.parametrize(
    ("n", "width"),
    [
        (1, 9),
        (7, 9),
        (8, 9),
        (1023, 9),
        (1025, 9),
        (5000, 9),
        (300, 1),
        (301, 25),
        (90, 3),
        (17, 64),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_pass_equals_torch_path(monkeypatch, variants, n, width, dtype):
    rows = layer(n, width, seed=n + width, dtype=dtype)
    native = run_pass(monkeypatch, rows, variants, native=True)
    reference = run_pass(monkeypatch, rows, variants, native=False)
    assert_same_pass(native, reference)


@needs_compiler
@pytest.mark.parametrize("omit", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_native_pass_non_finite_kernels(monkeypatch, omit, bad):
    rows = layer(2100, 9, seed=3)
    rows[5, 4] = bad
    rows[2050, 0] = bad
    variants = VARIANT_SETS[3]
    native = run_pass(monkeypatch, rows, variants, native=True, omit=omit)
    reference = run_pass(monkeypatch, rows, variants, native=False, omit=omit)
    assert_same_pass(native, reference)
    if omit:
        assert float(native.n_valid) == 2098
        assert all(torch.isfinite(m.outer).all() for m in native.moments)


@needs_compiler
@pytest.mark.parametrize("strict", [False, True])
def test_native_pass_threshold_boundary(monkeypatch, strict):
    """A kernel whose max|x| equals the threshold is sparse for <= only."""
    rows = near_threshold_layer()
    native = run_pass(monkeypatch, rows, VARIANT_SETS[1], native=True, strict=strict)
    reference = run_pass(monkeypatch, rows, VARIANT_SETS[1], native=False, strict=strict)
    assert_same_pass(native, reference)


@needs_compiler
def test_native_pass_all_zero_and_identical_kernels(monkeypatch):
    zeros = torch.zeros(40, 9)
    native = run_pass(monkeypatch, zeros, VARIANT_SETS[1], native=True)
    assert float(native.n_sparse) == 40  # an all-zero layer: every kernel sparse
    assert_same_pass(native, run_pass(monkeypatch, zeros, VARIANT_SETS[1], native=False))
    same = torch.randn(1, 9).repeat(3000, 1)
    native = run_pass(monkeypatch, same, VARIANT_SETS[1], native=True)
    raw = native.moments[1]  # x - shift: the shift makes identical kernels exactly zero
    assert torch.count_nonzero(raw.outer) == 0
    assert torch.count_nonzero(raw.total) == 0
    # The scaled rows x / max|x| are rounded: their mean is only near them; the
    # eigenvalue floor still gives entropy exactly 0.
    for definition in ("paper", "torchconvquality"):
        result = fs.measure(same.reshape(100, 30, 3, 3), definition=definition)
        assert float(result.diversity) == 0.0


@needs_compiler
def test_native_pass_does_not_depend_on_threads(monkeypatch):
    rows = layer(50_000, 9, seed=5)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(run_pass(monkeypatch, rows, VARIANT_SETS[1], native=True))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert_same_pass(other, results[0], tolerance=0.0)


@needs_compiler
@pytest.mark.parametrize("definition", ["paper", "torchconvquality"])
def test_measure_same_with_and_without_native(monkeypatch, definition):
    generator = torch.Generator().manual_seed(6)
    weights = [torch.randn(64, 32, 3, 3, generator=generator), torch.randn(16, 3, 5, 5)]
    monkeypatch.setenv(_native.ENV_SWITCH, "1")
    native = fs.measure(weights, definition=definition)
    monkeypatch.setenv(_native.ENV_SWITCH, "0")
    reference = fs.measure(weights, definition=definition)
    names = ("sparsity", "diversity", "orthogonality", "freq_dc", "freq_low", "freq_high")
    for name in names:
        torch.testing.assert_close(
            getattr(native, name), getattr(reference, name), rtol=0, atol=1e-12
        )


def test_torch_path_where_native_does_not_apply():
    threshold = torch.tensor(0.01, dtype=torch.float64)
    flag = torch.tensor(False)
    common = {"strict": False, "all_sparse": flag, "variants": (), "shift_rows": 256}
    half = torch.randn(100, 9).half()
    strided = torch.randn(9, 100).T  # not contiguous: a copy would break the memory bound
    wide = torch.randn(10, 65)
    for rows in (half, strided, wide, torch.zeros(0, 9)):
        assert _native.kernel_pass(rows, threshold, omit_nonfinite=False, **common) is None


def _fresh_state(monkeypatch, cache_dir):
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setattr(_native, "_library", None)
    monkeypatch.setenv(_native.ENV_CACHE_DIR, str(cache_dir))
    monkeypatch.setenv(_native.ENV_SWITCH, "1")


def test_no_compiler_falls_back_to_torch(monkeypatch, tmp_path):
    _fresh_state(monkeypatch, tmp_path / "cache")
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert not _native.available()
    assert not list((tmp_path / "cache").glob("*.so"))
    rows = layer(500, 9, seed=7)
    result = run_pass(monkeypatch, rows, VARIANT_SETS[1], native=True)
    monkeypatch.setenv(_native.ENV_SWITCH, "0")
    reference = run_pass(monkeypatch, rows, VARIANT_SETS[1], native=False)
    assert_same_pass(result, reference, tolerance=0.0)  # both are the torch path


def test_switch_off_means_torch_path(monkeypatch):
    monkeypatch.setenv(_native.ENV_SWITCH, "0")
    assert not _native.available()
    assert (
        _native.kernel_pass(
            torch.randn(10, 9),
            torch.tensor(0.01, dtype=torch.float64),
            strict=False,
            all_sparse=torch.tensor(False),
            variants=(),
            shift_rows=256,
            omit_nonfinite=False,
        )
        is None
    )


@needs_compiler
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_build_is_cached_in_a_private_directory(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    _fresh_state(monkeypatch, cache)
    assert _native.available()
    (built,) = cache.glob("kernel_pass-*.so")
    assert stat.S_IMODE(cache.stat().st_mode) & 0o077 == 0
    # A second process state loads the same file without compiling again.
    mtime = built.stat().st_mtime_ns
    _fresh_state(monkeypatch, cache)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert _native.available()
    assert built.stat().st_mtime_ns == mtime


@needs_compiler
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_shared_writable_cache_is_not_used(monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anybody could plant a library here
    _fresh_state(monkeypatch, shared)
    assert _native.available()  # built elsewhere, privately
    assert not list(shared.glob("*.so"))


@needs_compiler
def test_damaged_cached_build_is_rebuilt(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    built = cache / _native._build_name()
    built.write_bytes(b"not a shared library")  # e.g. left by a full disk elsewhere
    _fresh_state(monkeypatch, cache)
    assert _native.available()
    assert built.stat().st_size > 1000  # compiled again in its place


@needs_compiler
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_private_temporary_build_leaves_nothing(monkeypatch, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    _fresh_state(monkeypatch, shared)
    assert _native.available()
    assert list(scratch.iterdir()) == []


@needs_compiler
def test_threads_follow_the_callers_flush_denormal_mode(monkeypatch):
    """Blocks summed on other threads see the caller's floating-point environment."""
    generator = torch.Generator().manual_seed(8)
    # Products near 1e-310 are denormal (flushed to zero in flush mode); every 100th
    # kernel's near 1e-307 are not: the sums differ where a thread flushes and another
    # does not.
    rows = torch.randn(40_000, 9, generator=generator, dtype=torch.float64) * 1e-155
    rows[::100] *= 30.0
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    run_pass(monkeypatch, rows, [(False, False)], native=True)  # worker threads exist now
    if not torch.set_flush_denormal(True):
        pytest.skip("no flush-to-zero mode on this CPU")
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(run_pass(monkeypatch, rows, [(False, False)], native=True))
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    assert_same_pass(results[1], results[0], tolerance=0.0)


@needs_compiler
@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell script as compiler")
def test_compiler_without_march_native_and_with_arguments(monkeypatch, tmp_path):
    """$CC may carry arguments; a compiler refusing -march=native gets plain -O3."""
    calls = tmp_path / "calls.txt"
    wrapper = tmp_path / "picky-cc"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{calls}"\n'
        'case "$*" in *-march=native*) echo "unknown option -march=native" >&2; exit 1;; esac\n'
        'exec "$@"\n'
    )
    wrapper.chmod(0o755)
    _fresh_state(monkeypatch, tmp_path / "cache")
    monkeypatch.setenv("CC", f"{wrapper} cc")  # the wrapper runs "cc ..."
    assert _native.available()
    lines = calls.read_text().splitlines()
    assert len(lines) == 2
    assert "-march=native" in lines[0]
    assert "-march=native" not in lines[1]
    rows = layer(3000, 9, seed=9)
    native = run_pass(monkeypatch, rows, VARIANT_SETS[1], native=True)
    assert_same_pass(native, run_pass(monkeypatch, rows, VARIANT_SETS[1], native=False))


# ------------------------------------------------------ sparsity alone, one read


def one_read(monkeypatch, rows, *, eps=0.01, strict=False, omit=False):
    monkeypatch.setenv(_native.ENV_SWITCH, "1")
    result = kernels.layer_sparsity(rows, eps, strict=strict, omit_nonfinite=omit)
    assert result is not None
    return result.top, result.finite, result.n_valid, result.n_sparse


def two_reads(monkeypatch, rows, *, eps=0.01, strict=False, omit=False):
    """The torch path: the layer maximum, then the sparsity count."""
    monkeypatch.setenv(_native.ENV_SWITCH, "0")
    assert kernels.layer_sparsity(rows, eps, strict=strict, omit_nonfinite=omit) is None
    top, finite = kernels.layer_maxabs(rows, omit_nonfinite=omit)
    counted = kernels.kernel_pass(
        rows, eps * top, strict=strict, all_sparse=~(top > 0), omit_nonfinite=omit
    )
    return top, finite, counted.n_valid, counted.n_sparse


def assert_same_sparsity(ours, theirs):
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape == ()
        assert torch.equal(a, b) or (bool(a.isnan()) and bool(b.isnan())), (ours, theirs)


@needs_compiler
@pytest.mark.parametrize(
    ("n", "width"),
    [(1, 9), (7, 9), (8, 9), (1023, 9), (1025, 9), (40_000, 9), (300, 1), (301, 25), (99, 64)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("strict", [False, True])
def test_one_read_sparsity_equals_the_torch_path(monkeypatch, n, width, dtype, strict):
    rows = layer(n, width, seed=n + width, dtype=dtype)
    ours = one_read(monkeypatch, rows, strict=strict)
    assert_same_sparsity(ours, two_reads(monkeypatch, rows, strict=strict))
    expected = (rows.abs().amax(dim=1).double() <= 0.01 * rows.abs().max().double()).sum()
    if not strict:  # and against a plain float64 count
        assert float(ours[3]) == float(expected)


@needs_compiler
@pytest.mark.parametrize("omit", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_read_sparsity_non_finite_kernels(monkeypatch, omit, bad):
    rows = layer(3000, 9, seed=8)
    rows[5, 4] = bad
    rows[2050, 0] = bad
    ours = one_read(monkeypatch, rows, omit=omit)
    assert_same_sparsity(ours, two_reads(monkeypatch, rows, omit=omit))
    assert not bool(ours[1])  # not finite
    if omit:
        assert float(ours[2]) == 2998 and bool(torch.isfinite(ours[0]))


@needs_compiler
@pytest.mark.parametrize("strict", [False, True])
def test_one_read_sparsity_boundary_and_all_zero_layers(monkeypatch, strict):
    rows = near_threshold_layer()
    assert_same_sparsity(
        one_read(monkeypatch, rows, strict=strict), two_reads(monkeypatch, rows, strict=strict)
    )
    exact = layer(64, 9, seed=5)
    exact[0, 0] = 100.0  # the layer maximum: the threshold 0.01 * 100 is exactly 1.0
    exact[10] = 0.5
    exact[10, 2] = 1.0  # a kernel whose max|x| is exactly the threshold
    ours = one_read(monkeypatch, exact, strict=strict)
    assert_same_sparsity(ours, two_reads(monkeypatch, exact, strict=strict))
    maxima = exact.abs().amax(dim=1).double()
    assert float(ours[3]) == float((maxima < 1.0).sum() + (0 if strict else 1))
    zeros = torch.zeros(2000, 9)
    ours = one_read(monkeypatch, zeros, strict=strict)
    assert float(ours[3]) == 2000  # an all-zero layer: every kernel sparse, < or <=
    assert_same_sparsity(ours, two_reads(monkeypatch, zeros, strict=strict))


@needs_compiler
def test_one_read_sparsity_does_not_depend_on_threads(monkeypatch):
    rows = layer(70_000, 9, seed=9)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(one_read(monkeypatch, rows))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert_same_sparsity(other, results[0])


@needs_compiler
@pytest.mark.parametrize("definition", ["paper", "torchconvquality"])
@pytest.mark.parametrize("nan_policy", ["propagate", "omit"])
def test_sparsity_same_with_and_without_native(monkeypatch, definition, nan_policy):
    generator = torch.Generator().manual_seed(10)
    weights = [torch.randn(64, 32, 3, 3, generator=generator), torch.zeros(8, 4, 3, 3)]
    weights.append(torch.randn(16, 3, 5, 5, generator=generator).double())
    weights[0][3, 2, 1, 1] = float("nan")
    weights[0][:5] *= 1e-4
    monkeypatch.setenv(_native.ENV_SWITCH, "1")
    native = fs.sparsity(weights, definition=definition, nan_policy=nan_policy)
    monkeypatch.setenv(_native.ENV_SWITCH, "0")
    reference = fs.sparsity(weights, definition=definition, nan_policy=nan_policy)
    assert torch.equal(native.isnan(), reference.isnan())
    assert torch.equal(native.nan_to_num(), reference.nan_to_num())
