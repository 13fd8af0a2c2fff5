"""The filter trajectories of the shipped demo runs: normal and PGD training side by side.

``python -m filterstats.demo.train`` records, for each of the three seeds, the
per-layer metrics and the drift of a normally and an adversarially (PGD) trained
DemoNet every 23 optimiser steps (one epoch), from the initialisation (step 0, the
same for both kinds of a seed) to the end of training; the files ship in
``filterstats/demo/weights/trajectories/``. This script draws them, one panel per
metric and layer, and prints from which step each layer's difference (robust minus
normal, paired by seed) stays outside its 95% interval over the three seeds.

    python examples/demo_trajectories.py [OUT_DIR]    # default: docs/assets
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import filterstats as fs

REQUIRES = ("matplotlib", "scipy")

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "assets"
SEEDS = (0, 1, 2)
METRICS = ("diversity", "orthogonality", "sparsity", "drift_cosine")
TITLES = {
    "diversity": "variance entropy",
    "orthogonality": "orthogonality",
    "sparsity": "sparsity",
    "drift_cosine": "cosine to init",
}
STEPS_PER_EPOCH = 23


def load(kind: str, seed: int) -> fs.FilterHistory:
    folder = resources.files("filterstats.demo").joinpath("weights").joinpath("trajectories")
    with resources.as_file(folder.joinpath(f"{kind}_seed{seed}.filters.csv")) as path:
        return fs.read_history(path)


def main(out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    runs = {kind: [load(kind, seed) for seed in SEEDS] for kind in ("normal", "robust")}
    layers = runs["normal"][0].layers
    # The demo net has one convolution per depth: 4 bins put each in its own bin.
    comparison = fs.compare_trajectories(
        runs["robust"], runs["normal"], metrics=list(METRICS), bins=4, paired=True,
        labels=("robust", "normal"),
    )  # fmt: skip
    print(comparison)
    bins = [r["bin"] for r in runs["normal"][0].by_depth_bin(bins=4) if r["step"] == 0]
    figure = Figure(figsize=(2.4 * len(layers), 2.0 * len(METRICS)), layout="constrained")
    axes = figure.subplots(len(METRICS), len(layers), sharex=True, squeeze=False)
    for row, metric in enumerate(METRICS):
        for col, layer in enumerate(layers):
            ax = axes[row][col]
            for kind, color in (("normal", "C0"), ("robust", "C1")):
                for position, run in enumerate(runs[kind]):
                    epochs = [s / STEPS_PER_EPOCH for s in run.steps]
                    ax.plot(epochs, run.values(metric)[layer], color=color, lw=1, alpha=0.8,
                            label=kind if position == 0 else None)  # fmt: skip
            step = comparison.diverged.get((metric, bins[col]))
            if step is not None:
                ax.axvline(step / STEPS_PER_EPOCH, color="0.3", ls=":", lw=1)
            if row == 0:
                ax.set_title(layer)
            if col == 0:
                ax.set_ylabel(TITLES[metric])
            if row == len(METRICS) - 1:
                ax.set_xlabel("epoch")
    axes[0][0].legend(fontsize="small")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "demo_trajectories.png"
    figure.savefig(path, dpi=100, bbox_inches="tight", metadata={"Software": None})
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
