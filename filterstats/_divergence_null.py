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
  relabelled, swapping the two members of a pair (paired design; pairs that share a
  twin are permuted together, the twin's role going to one of their models) or
  reassigning models across groups at the groups' sizes (unpaired), and ``D`` is
  recomputed from the summed per-model counts. It asks whether the two groups differ
  more than models differ among themselves; the model is the unit of inference.
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

    A relabelling gives each distinct model how often it is listed in group a and in
    group b (its *role*); roles are permuted among exchangeable models: within a pair,
    or within the models joined by a shared twin (paired), or among all models
    (unpaired). A twin shared by ``k`` pairs keeps its role of being listed ``k``
    times: some model of its cluster takes it in every relabelling.

    Attributes:
        weights_a: ``(R, n)`` how often each of the ``n`` distinct models is listed in
            group a, per relabelling.
        weights_b: ``(R, n)`` the same for group b.
        exact: Whether the rows enumerate every relabelling (the observed one
            included); otherwise they are ``R`` random ones.
        n_distinct: Number of distinct relabellings (the observed one included; a
            relabelling and its mirror image with the groups exchanged count once,
            as D is symmetric).
        p_min: Smallest p-value the test can give.
        design: ``"paired"`` or ``"unpaired"``.
    """

    weights_a: np.ndarray
    weights_b: np.ndarray
    exact: bool
    n_distinct: int
    p_min: float
    design: str


def _arrangements(roles: list[tuple[int, int]]) -> list[tuple[tuple[int, int], ...]]:
    """Every distinct ordering of a multiset of roles."""
    counts: dict[tuple[int, int], int] = {}
    for role in roles:
        counts[role] = counts.get(role, 0) + 1
    kinds = sorted(counts)
    out: list[tuple[tuple[int, int], ...]] = []

    def extend(prefix: list[tuple[int, int]]) -> None:
        if len(prefix) == len(roles):
            out.append(tuple(prefix))
            return
        for kind in kinds:
            if counts[kind]:
                counts[kind] -= 1
                extend([*prefix, kind])
                counts[kind] += 1

    extend([])
    return out


def _n_arrangements(roles: list[tuple[int, int]]) -> int:
    total = math.factorial(len(roles))
    for role in set(roles):
        total //= math.factorial(roles.count(role))
    return total


def label_permutations(
    keys_a: list[object],
    keys_b: list[object],
    *,
    paired: bool,
    n_permutations: int,
    generator: np.random.Generator,
) -> LabelPermutations:
    """The relabellings of the listed models (``keys_*`` name each listing's model).

    Paired (listing ``i`` of a with listing ``i`` of b): models joined by pairs (a
    pair, or every pair that shares a twin) form a cluster, and roles are permuted
    within each cluster; with ``k`` plain pairs that is swapping within any subset of
    pairs, ``2^(k-1)`` distinct relabellings. Unpaired: roles are permuted among all
    models, ``C(m_a + m_b, m_a)`` relabellings for distinct models (half of them
    distinct when ``m_a == m_b``).

    Enumerated exactly when there are at most ``n_permutations`` relabellings; else
    ``n_permutations`` random ones (each cluster permuted uniformly at random).

    Args:
        keys_a: One hashable key per listing of group a (the same model: the same key).
        keys_b: The same for group b.
        paired: Paired design (needs ``len(keys_a) == len(keys_b)``).
        n_permutations: Most relabellings to use.
        generator: Seeded source of randomness.

    Returns:
        The [`LabelPermutations`][filterstats._divergence_null.LabelPermutations];
        models are in order of first listing (a's listings, then b's).
    """
    if paired and len(keys_a) != len(keys_b):
        raise ValueError(
            f"a paired design needs as many models in a as in b, got {len(keys_a)}, {len(keys_b)}"
        )
    index: dict[object, int] = {}
    for key in [*keys_a, *keys_b]:
        index.setdefault(key, len(index))
    n = len(index)
    count_a = [0] * n
    count_b = [0] * n
    for key in keys_a:
        count_a[index[key]] += 1
    for key in keys_b:
        count_b[index[key]] += 1
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if paired:
        for key_a, key_b in zip(keys_a, keys_b):
            parent[find(index[key_a])] = find(index[key_b])
    else:
        for i in range(1, n):
            parent[find(i)] = find(0)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    clusters = list(members.values())
    roles = [[(count_a[i], count_b[i]) for i in cluster] for cluster in clusters]
    total = math.prod(_n_arrangements(r) for r in roles)
    mirrored = all(sorted(r) == sorted((b, a) for a, b in r) for r in roles)
    n_distinct = max(total // 2 if mirrored and total > 1 else total, 1)
    exact = total <= n_permutations
    if exact:
        per_cluster = [_arrangements(r) for r in roles]
        rows = list(itertools.product(*per_cluster))
        weights_a = np.zeros((len(rows), n), dtype=np.int64)
        weights_b = np.zeros((len(rows), n), dtype=np.int64)
        for r, choice in enumerate(rows):
            for cluster, arrangement in zip(clusters, choice):
                for model, (ca, cb) in zip(cluster, arrangement):
                    weights_a[r, model], weights_b[r, model] = ca, cb
    else:
        weights_a = np.zeros((n_permutations, n), dtype=np.int64)
        weights_b = np.zeros((n_permutations, n), dtype=np.int64)
        for cluster, cluster_roles in zip(clusters, roles):
            role_a = np.array([ca for ca, _ in cluster_roles])
            role_b = np.array([cb for _, cb in cluster_roles])
            order = np.argsort(generator.random((n_permutations, len(cluster))), axis=1)
            weights_a[:, cluster] = role_a[order]
            weights_b[:, cluster] = role_b[order]
    if n_distinct < 2:
        p_min = math.nan
    elif exact:
        p_min = 1.0 / n_distinct
    else:
        p_min = 1.0 / (n_permutations + 1)
    return LabelPermutations(
        weights_a, weights_b, exact, n_distinct, p_min, "paired" if paired else "unpaired"
    )


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
        per_model: ``(n, K, bins)`` counts of each distinct model (the order of
            [`label_permutations`][filterstats._divergence_null.label_permutations]).
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
    shape = per_model.shape[1:]
    tolerance = 1e-12 * max(abs(observed), 1e-300)
    hits = 0
    valid = 0
    for start in range(0, len(permutations.weights_a), chunk):
        rows_a = permutations.weights_a[start : start + chunk].astype(np.float64)
        rows_b = permutations.weights_b[start : start + chunk].astype(np.float64)
        hist_a = (rows_a @ counts).reshape(len(rows_a), *shape)
        hist_b = (rows_b @ counts).reshape(len(rows_b), *shape)
        # A relabelling that leaves a group without kernels has no D; it is not counted.
        keep = (hist_a[:, 0].sum(axis=-1) > 0) & (hist_b[:, 0].sum(axis=-1) > 0)
        values = batch_divergence(hist_a[keep], hist_b[keep], edges, floor, weights)
        hits += int(np.sum(values >= observed - tolerance))
        valid += int(keep.sum())
    if permutations.exact:
        return hits / valid if valid else math.nan
    return (1 + hits) / (1 + valid)
