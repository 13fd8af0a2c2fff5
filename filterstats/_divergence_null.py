r"""Nulls of the paper's histogram divergence, computed from histogram counts only.

The divergence ``D`` of [`filter_divergence`][filterstats.filter_divergence] depends
on the kernels only through the per-component histogram counts of each group. Both
nulls here work on those counts, so they need no kernel in memory: per model and
depth bin a ``(K, bins)`` array of counts is all that is kept.

* **Kernel null** (``null_mean``, ``null_q95``): the kernels of both groups pooled and
  reassigned at random to groups of the observed sizes ``n_a`` and ``n_b``. For each
  component the reassigned group-a histogram is then exactly multivariate
  hypergeometric (``n_a`` draws without replacement from the pooled histogram), so the
  draws below are made from the pooled counts, component by component. The mean of
  ``D`` over the draws estimates the divergence expected when nothing differs at all,
  only from the sample sizes (the sample-size bias of a 70-bin histogram estimator).
  The components of one kernel are drawn independently of each other; ``null_mean``
  is unaffected (a sum of per-component expectations), the upper quantile is that of
  this product null.
* **Model-label permutation** (``p_value``): the models (not the kernels) are
  relabelled, swapping the two members of a pair (paired design) or reassigning
  models across groups at the groups' sizes (unpaired), and ``D`` is recomputed from
  the summed per-model counts. It asks whether the two groups differ more than models
  differ among themselves; the model is the unit of inference.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LabelPermutations",
    "batch_divergence",
    "kernel_null",
    "label_permutations",
    "permutation_p",
    "probabilities",
]

#: numpy's hypergeometric sampler needs fewer than this many items in total.
_HYPERGEOMETRIC_LIMIT = 10**9


def probabilities(counts: np.ndarray, edges: np.ndarray, floor: float) -> np.ndarray:
    """Densities over the last axis (``numpy.histogram(density=True)``), zeros floored.

    Args:
        counts: ``(..., bins)`` histogram counts.
        edges: ``(bins + 1,)`` bin edges.
        floor: Value of empty bins before renormalising to sum 1.

    Returns:
        ``(..., bins)`` float64, each last-axis row summing to 1.
    """
    widths = np.diff(edges)
    totals = counts.sum(axis=-1, keepdims=True)
    density = counts / np.where(totals > 0, totals, 1) / widths
    density = np.where(density == 0, floor, density)
    return np.asarray(density / density.sum(axis=-1, keepdims=True), dtype=np.float64)


def batch_divergence(
    hist_a: np.ndarray, hist_b: np.ndarray, edges: np.ndarray, floor: float, weights: np.ndarray
) -> np.ndarray:
    r""":math:`\sum_k w_k [\mathrm{KL}(p_k\|q_k) + \mathrm{KL}(q_k\|p_k)]` per leading index.

    Args:
        hist_a: ``(..., K, bins)`` counts of group a.
        hist_b: ``(..., K, bins)`` counts of group b.
        edges: ``(bins + 1,)`` histogram edges.
        floor: Value of empty bins.
        weights: ``(K,)`` component weights (EVR).

    Returns:
        ``(...)`` divergences in nats.
    """
    p = probabilities(hist_a, edges, floor)
    q = probabilities(hist_b, edges, floor)
    kl_pq = np.sum(p * np.log(p / q), axis=-1)
    kl_qp = np.sum(q * np.log(q / p), axis=-1)
    return np.asarray(np.sum(weights * (kl_pq + kl_qp), axis=-1), dtype=np.float64)


def kernel_null(
    pooled: np.ndarray,
    n_a: int,
    *,
    n_null: int,
    edges: np.ndarray,
    floor: float,
    weights: np.ndarray,
    generator: np.random.Generator,
) -> np.ndarray:
    """Divergences with the pooled kernels reassigned at random at sizes ``n_a``, rest.

    Args:
        pooled: ``(K, bins)`` integer counts of both groups together.
        n_a: Kernels of group a (group b gets the rest).
        n_null: Number of draws.
        edges: Histogram edges.
        floor: Value of empty bins.
        weights: ``(K,)`` component weights.
        generator: Seeded source of randomness.

    Returns:
        ``(n_null,)`` divergences under the null.
    """
    pooled = np.asarray(pooled, dtype=np.int64)
    if n_null < 1:
        return np.zeros(0)
    draws = np.empty((n_null, *pooled.shape), dtype=np.float64)
    for k, colours in enumerate(pooled):
        total = int(colours.sum())
        if total < _HYPERGEOMETRIC_LIMIT:
            draws[:, k] = generator.multivariate_hypergeometric(
                colours, n_a, size=n_null, method="marginals"
            )
        else:  # beyond numpy's sampler; at this size with and without replacement agree
            draws[:, k] = generator.multinomial(n_a, colours / total, size=n_null)
    return batch_divergence(draws, pooled[None] - draws, edges, floor, weights)


@dataclass(frozen=True)
class LabelPermutations:
    """Relabellings of the models for the permutation test.

    Attributes:
        assignment: ``(R, m)`` 0/1 matrix: which of the ``m`` listed models (group a's
            listings, then group b's) go to group a in each relabelling.
        exact: Whether the rows enumerate every distinct relabelling (then the first
            is the observed one); otherwise they are ``R`` random ones.
        n_distinct: Number of distinct relabellings (the observed one included).
        p_min: Smallest p-value the test can give.
        design: ``"paired"`` or ``"unpaired"``.
    """

    assignment: np.ndarray
    exact: bool
    n_distinct: int
    p_min: float
    design: str


def label_permutations(
    m_a: int,
    m_b: int,
    *,
    paired: bool,
    n_permutations: int,
    generator: np.random.Generator,
) -> LabelPermutations:
    """The relabellings of ``m_a + m_b`` listed models (a's listings first).

    Paired (``m_a == m_b == k``, pair ``i`` = listing ``i`` of a and of b): swap the two
    members of any subset of the pairs. Swapping all pairs only exchanges the groups,
    and ``D`` is symmetric, so there are ``2^(k-1)`` distinct relabellings. Unpaired:
    any ``m_a`` of the listings form group a: ``C(m_a + m_b, m_a)`` relabellings, half
    of them distinct when ``m_a == m_b``.

    Enumerated exactly when there are at most ``n_permutations`` distinct ones; else
    ``n_permutations`` random relabellings (the observed one not among them).

    Args:
        m_a: Listed models of group a.
        m_b: Listed models of group b.
        paired: Paired design.
        n_permutations: Most relabellings to use.
        generator: Seeded source of randomness.

    Returns:
        The [`LabelPermutations`][filterstats._divergence_null.LabelPermutations].
    """
    m = m_a + m_b
    if paired:
        if m_a != m_b:
            raise ValueError(f"a paired design needs as many models in a as in b, got {m_a}, {m_b}")
        k = m_a
        n_distinct = 2 ** (k - 1) if k >= 1 else 1
        if n_distinct <= n_permutations:
            swaps = np.array(list(itertools.product((0, 1), repeat=max(k - 1, 0))), dtype=np.int8)
            swaps = np.concatenate([np.zeros((len(swaps), 1), dtype=np.int8), swaps], axis=1)
            exact = True
        else:
            swaps = generator.integers(0, 2, size=(n_permutations, k)).astype(np.int8)
            exact = False
        assignment = np.concatenate([1 - swaps, swaps], axis=1)
        design = "paired"
    else:
        total = math.comb(m, m_a)
        symmetric = m_a == m_b
        n_distinct = total // 2 if symmetric else total
        if n_distinct <= n_permutations:
            if symmetric:  # listing 0 stays in group a: each relabelling once
                chosen = [(0, *c) for c in itertools.combinations(range(1, m), m_a - 1)]
            else:
                chosen = list(itertools.combinations(range(m), m_a))
            assignment = np.zeros((len(chosen), m), dtype=np.int8)
            for r, members in enumerate(chosen):
                assignment[r, list(members)] = 1
            exact = True
        else:
            order = np.argsort(generator.random((n_permutations, m)), axis=1)
            assignment = np.zeros((n_permutations, m), dtype=np.int8)
            np.put_along_axis(assignment, order[:, :m_a], 1, axis=1)
            exact = False
        design = "unpaired"
    n_distinct = max(n_distinct, 1)
    if n_distinct < 2:
        p_min = math.nan
    elif exact:
        p_min = 1.0 / n_distinct
    else:
        p_min = 1.0 / (len(assignment) + 1)
    return LabelPermutations(assignment, exact, n_distinct, p_min, design)


def permutation_p(
    per_model: np.ndarray,
    observed: float,
    permutations: LabelPermutations,
    *,
    edges: np.ndarray,
    floor: float,
    weights: np.ndarray,
    chunk: int = 256,
) -> float:
    """Permutation p-value of ``D`` over model relabellings.

    Args:
        per_model: ``(m, K, bins)`` counts of each listed model (a's, then b's).
        observed: ``D`` of the observed labels.
        permutations: The relabellings.
        edges: Histogram edges.
        floor: Value of empty bins.
        weights: ``(K,)`` component weights.
        chunk: Relabellings evaluated at once (bounds memory).

    Returns:
        Exact: the fraction of relabellings with ``D >= observed``; random:
        ``(1 + count) / (1 + R)``. NaN when fewer than two distinct relabellings exist
        or ``observed`` is NaN.
    """
    if permutations.n_distinct < 2 or not math.isfinite(observed):
        return math.nan
    counts = per_model.reshape(per_model.shape[0], -1).astype(np.float64)
    total = counts.sum(axis=0)
    tolerance = 1e-12 * max(abs(observed), 1e-300)
    hits = 0
    valid = 0
    for start in range(0, len(permutations.assignment), chunk):
        rows = permutations.assignment[start : start + chunk].astype(np.float64)
        hist_a = (rows @ counts).reshape(len(rows), *per_model.shape[1:])
        hist_b = total.reshape(per_model.shape[1:])[None] - hist_a
        # A relabelling that leaves a group without kernels has no D; it is not counted.
        keep = (hist_a[:, 0].sum(axis=-1) > 0) & (hist_b[:, 0].sum(axis=-1) > 0)
        values = batch_divergence(hist_a[keep], hist_b[keep], edges, floor, weights)
        hits += int(np.sum(values >= observed - tolerance))
        valid += int(keep.sum())
    if permutations.exact:
        return hits / valid if valid else math.nan
    return (1 + hits) / (1 + valid)
