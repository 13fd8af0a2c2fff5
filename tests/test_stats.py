"""The small statistics helpers against plain references written here."""

from __future__ import annotations

import math

import numpy as np
import pytest

from filterstats._stats import holm


def _holm_reference(p: list[float]) -> list[float]:
    """Holm's step-down procedure as in the textbook, with obvious loops."""
    index = [i for i, v in enumerate(p) if not math.isnan(v)]
    m = len(index)
    ordered = sorted(index, key=lambda i: (p[i], i))
    out = [math.nan] * len(p)
    running = 0.0
    for rank, i in enumerate(ordered):
        value = min(1.0, (m - rank) * p[i])
        running = max(running, value)
        out[i] = running
    return out


@pytest.mark.parametrize("seed", range(20))
def test_holm_matches_reference_on_random_p_values(seed: int) -> None:
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 15))
    p = rng.uniform(0, 1, size=m) ** 3
    if seed % 3 == 0:
        p[rng.integers(0, m)] = math.nan
    if seed % 4 == 0:
        p[: m // 2] = p[0]  # ties
    got = holm(list(p))
    want = _holm_reference(list(p))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15, equal_nan=True)


def test_holm_degenerate_inputs() -> None:
    assert holm([]).shape == (0,)
    assert np.isnan(holm([math.nan, math.nan])).all()
    np.testing.assert_array_equal(holm([0.0, 0.0]), [0.0, 0.0])
    np.testing.assert_array_equal(holm([1.0, 1.0, 1.0]), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    # Each adjusted value is at least its input and never above 1.
    p = np.array([0.2, 0.5, 0.9, 0.001])
    adjusted = holm(p)
    assert np.all(adjusted >= p) and np.all(adjusted <= 1)


def test_holm_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="p_values"):
        holm([0.5, 1.5])
    with pytest.raises(ValueError, match="p_values"):
        holm(np.zeros((2, 2)))
