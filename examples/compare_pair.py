"""Robust vs normal: two models -> tables -> comparison -> HTML report.

Uses the shipped demo pair (a small CNN trained normally and with PGD adversarial
training from the same initialisation), offline, in a few seconds. Writes
``layers.csv``, ``summary.csv``, ``by_depth.csv``, ``metrics_by_depth.png`` and
``report.html`` into the directory given as argument (default: a temporary one).

    python examples/compare_pair.py [OUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import filterstats as fs

REQUIRES = ("pandas", "matplotlib")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pair = fs.demo.load_pair(seed=0)
    print(f"PGD accuracy: robust {pair.robust_accuracy.pgd_accuracy:.2f}, "
          f"normal {pair.normal_accuracy.pgd_accuracy:.2f}")  # fmt: skip

    # 1. One table per model (the same settings for both).
    robust = fs.analyze(pair.robust, label="robust")
    normal = fs.analyze(pair.normal, label="normal")
    fs.FilterReport.concat([robust, normal]).to_csv(out / "layers.csv")

    # 2. Compare them: same architecture, so layers are matched by name; a - b.
    comparison = fs.compare(robust, normal, labels=("robust", "normal"))
    print(comparison)
    comparison.summary().to_csv(out / "summary.csv")
    by_depth = comparison.by_depth(bins=4)  # 5 layers: the first, then quarters of depth
    print(by_depth)
    by_depth.to_csv(out / "by_depth.csv")

    # 3. Metrics over depth for both models, then everything in one HTML page.
    figure = comparison.plot()
    figure.savefig(out / "metrics_by_depth.png", dpi=120, bbox_inches="tight")
    page = fs.report(comparison, out / "report.html")
    print(
        f"\nwrote {out}: layers.csv, summary.csv, by_depth.csv, metrics_by_depth.png, {page.name}"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
