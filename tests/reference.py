"""Plain float64 reference implementations, written from the definitions with loops.

Independent of filterstats' kernels: no Gram tricks, no batching, numpy + scipy only.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.stats import entropy as scipy_entropy


def kernels_of(weight) -> np.ndarray:
    w = np.asarray(weight, dtype=np.float64)
    return w.reshape(w.shape[0] * w.shape[1], -1)


def is_sparse(weight, eps: float, strict: bool) -> np.ndarray:
    rows = kernels_of(weight)
    layer_max = np.abs(rows).max()
    flags = []
    for row in rows:
        top = np.abs(row).max()
        if layer_max == 0:
            flags.append(True)
        elif strict:
            flags.append(top < eps * layer_max)
        else:
            flags.append(top <= eps * layer_max)
    return np.array(flags, dtype=bool)


def sparsity(weight, eps: float = 0.01, strict: bool = False) -> float:
    flags = is_sparse(weight, eps, strict)
    return float(sum(flags)) / len(flags)


def _entropy_of_rows(rows: np.ndarray) -> float:
    if len(rows) < 2:
        return math.nan
    centred = rows - rows.mean(axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    variance = singular**2 / (len(rows) - 1)
    if variance.sum() <= 1e-12 * (rows**2).sum():
        return 0.0  # no variance: documented as 0 (scipy would give NaN)
    return float(scipy_entropy(variance, base=10))


def entropy_paper(weight, eps: float = 0.01) -> float:
    """Paper code: scale each kernel by its own max |value|, drop sparse (<=), SVD."""
    rows = kernels_of(weight)
    if np.abs(rows).max() == 0:
        return math.nan
    keep = []
    for row, sparse in zip(rows, is_sparse(weight, eps, strict=False)):
        if sparse:
            continue
        top = np.abs(row).max()
        keep.append(row / (top if top != 0 else 1.0))
    return _entropy_of_rows(np.array(keep).reshape(-1, rows.shape[1]))


def tcq_threshold(n: float) -> float:
    height, midpoint, steepness, offset = 1.2618047, 2.30436435, 0.88767525, -0.31050834
    return height / (1 + math.exp(-steepness * (math.log2(n) - midpoint))) + offset


def entropy_tcq(weight, eps: float = 0.01, clean: bool = False, normalize: bool = False) -> float:
    """torchconvquality: raw kernels; 'clean' drops sparse (<); optional normaliser."""
    rows = kernels_of(weight)
    if np.abs(rows).max() == 0:
        return math.nan
    if clean:
        rows = rows[~is_sparse(weight, eps, strict=True)]
    value = _entropy_of_rows(rows)
    if normalize and not math.isnan(value):
        value /= tcq_threshold(len(rows))
    return value


def entropy_raw(weight) -> float:
    rows = kernels_of(weight)
    if np.abs(rows).max() == 0:
        return math.nan
    return _entropy_of_rows(rows)


def orthogonality(weight) -> float:
    w = np.asarray(weight, dtype=np.float64)
    rows = w.reshape(w.shape[0], -1)
    n = len(rows)
    if n < 2 or np.abs(rows).max() == 0:
        return math.nan
    units = []
    for row in rows:
        norm = math.sqrt(sum(v * v for v in row))
        units.append(row / norm if norm > 0 else row * 0.0)
    total = 0.0
    for i, j in itertools.permutations(range(n), 2):
        total += abs(float(np.dot(units[i], units[j])))
    return 1.0 - total / (n * (n - 1))
