"""Make the figures of the documentation from the shipped demo models.

Every picture in the docs comes from this script (nothing is pasted): robust vs normal
over depth for one pair, box plots over the three shipped seeds, the PCA basis of the
kernels, the distribution shift per depth bin, and filter grids. Offline, about ten
seconds.

    python examples/make_doc_figures.py [OUT_DIR]    # default: docs/assets
"""

from __future__ import annotations

import sys
from pathlib import Path

import filterstats as fs

REQUIRES = ("matplotlib",)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "assets"
BINS = 4  # the demo net has five conv depths: the first, then quarters


def main(out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from filterstats import plotting

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(figure: object, name: str) -> None:
        path = out / name
        figure.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
        plt.close(figure)
        written.append(path)

    seeds = fs.demo.available_seeds()
    pairs = [fs.demo.load_pair(seed) for seed in seeds]
    robust = [fs.analyze(p.robust, label=f"robust-{p.seed}") for p in pairs]
    normal = [fs.analyze(p.normal, label=f"normal-{p.seed}") for p in pairs]

    # One pair: each metric over normalised depth.
    one = fs.compare(robust[0], normal[0], labels=("robust", "normal"), bins=BINS)
    save(one.plot(), "demo_pair_by_depth.png")

    # All seeds: the paper's box plots per depth bin (robust orange, normal blue).
    many = fs.compare(robust, normal, labels=("robust", "normal"), bins=BINS)
    save(many.plot(), "demo_boxes_by_depth.png")

    # PCA basis of the scaled non-sparse kernels, and its cumulative variance.
    bases = {
        "robust": fs.pca_basis([p.robust for p in pairs], label="robust"),
        "normal": fs.pca_basis([p.normal for p in pairs], label="normal"),
    }
    figure, axes = plt.subplots(2, 1, figsize=(7, 3.6))
    for ax, (label, basis) in zip(axes, bases.items()):
        plotting.plot_pca_basis(basis, ax=ax)
        ax.set_title(f"{label} basis", fontsize="medium", pad=18)
    figure.tight_layout()
    save(figure, "demo_pca_basis.png")
    figure, ax = plt.subplots(figsize=(4.5, 3))
    plotting.plot_cumulative_variance(bases, ax=ax)
    save(figure, "demo_cumulative_variance.png")

    # Distribution shift of the kernels per depth bin.
    divergence = fs.filter_divergence(
        [p.robust for p in pairs],
        [p.normal for p in pairs],
        labels=("robust", "normal"),
        depth_bins=BINS,
    )
    figure, ax = plt.subplots(figsize=(6, 3))
    plotting.plot_divergence(divergence, ax=ax)
    save(figure, "demo_divergence.png")

    # Filter grids: the first 16 kernels of every layer.
    figure, axes = plt.subplots(1, 2, figsize=(12, 3.2))
    plotting.plot_filters(pairs[0].robust, n_filters=16, ax=axes[0])
    axes[0].set_title("robust")
    plotting.plot_filters(pairs[0].normal, n_filters=16, ax=axes[1])
    axes[1].set_title("normal")
    save(figure, "demo_filters.png")

    return written


if __name__ == "__main__":
    for path in main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT):
        print(f"wrote {path}")
