"""Plots of convolution spectra (``pip install 'filterstats[plot]'``).

Like [`filterstats.plotting`][]: every function takes ``ax=None``, draws on it (or on a
new ``Figure`` made without pyplot), returns the ``Axes`` and never calls ``show``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from filterstats.plotting import _new_axes

if TYPE_CHECKING:
    from filterstats.spectra import ConvSpectra

__all__ = ["plot_singular_values", "plot_spectral_norm_by_depth"]


def plot_singular_values(
    spectra: ConvSpectra, layer: str, *, surrogate: bool = False, ax: Any = None
) -> Any:
    """All singular values of one layer's operator, largest first, on a log scale.

    The x axis is the rank divided by the number of singular values (0 to 1), so
    layers of different sizes share an axis; the spectral norm is the left end.

    Args:
        spectra: From [`conv_spectra`][filterstats.spectra.conv_spectra].
        layer: Layer name, as in the table.
        surrogate: For a ``bound-*`` layer, draw the bounding circular operator's
            singular values (see ``ConvSpectra.singular_values``).
        ax: Axes to draw on.

    Returns:
        The Axes.
    """
    values = spectra.singular_values(layer, surrogate=surrogate).numpy()
    ax = _new_axes(ax, (5, 3.5))
    rank = (np.arange(values.size) + 0.5) / max(values.size, 1)
    positive = values > 0
    ax.plot(rank[positive], values[positive], color="C0", linewidth=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("rank / number of singular values")
    ax.set_ylabel("singular value")
    row = spectra[layer]
    note = " (bounding circular operator)" if surrogate and row.method.startswith("bound") else ""
    ax.set_title(f"{layer}: {row.input_size}, {row.method}{note}", fontsize="small")
    ax.grid(alpha=0.4, which="both")
    return ax


def plot_spectral_norm_by_depth(
    spectra: ConvSpectra | Sequence[ConvSpectra],
    *,
    labels: Sequence[str] | None = None,
    lower: bool = True,
    ax: Any = None,
) -> Any:
    """Each layer's spectral norm against its normalised conv depth, one line per model.

    Upper bounds are drawn as lines with markers; where a certified lower bound exists,
    the band between it and the bound is shaded. Layers without a known depth are
    placed by their order.

    Args:
        spectra: One [`ConvSpectra`][filterstats.spectra.ConvSpectra] or several
            (e.g. a normal and a robust model: blue and orange, as in the paper).
        labels: Line labels (default: each model's class name).
        lower: Shade the band down to ``spectral_norm_lower``.
        ax: Axes to draw on.

    Returns:
        The Axes.
    """
    from filterstats.spectra import ConvSpectra

    items: list[ConvSpectra] = [spectra] if isinstance(spectra, ConvSpectra) else list(spectra)
    names = list(labels) if labels is not None else [s.params.source or "model" for s in items]
    ax = _new_axes(ax, (6, 3.5))
    for index, (item, label) in enumerate(zip(items, names)):
        rows = item.computed
        depth = np.array([r.conv_depth_norm for r in rows], dtype=float)
        if not np.isfinite(depth).all():
            depth = np.linspace(0.0, 1.0, len(rows)) if len(rows) > 1 else np.zeros(len(rows))
        order = np.argsort(depth, kind="stable")
        depth = depth[order]
        upper = np.array([rows[i].spectral_norm for i in order], dtype=float)
        low = np.array([rows[i].spectral_norm_lower for i in order], dtype=float)
        color = f"C{index}"
        ax.plot(depth, upper, marker="o", markersize=3, linewidth=1, color=color, label=label)
        if lower and np.isfinite(low).any():
            ax.fill_between(depth, np.where(np.isfinite(low), low, upper), upper,
                            color=color, alpha=0.25, linewidth=0)  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("normalised convolution depth")
    ax.set_ylabel("spectral norm (Lipschitz constant)")
    ax.grid(alpha=0.4, which="both")
    if len(items) > 1 or labels is not None:
        ax.legend(loc="best", fontsize="small")
    ax.set_xlim(-0.02, 1.02 if any(len(i.computed) for i in items) else 1.0)
    return ax
