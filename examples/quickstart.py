"""Quickstart: analyse a model, read the table, export it and read it back.

Runs offline in seconds on the shipped demo model (no extra needed; pandas optional).

    python examples/quickstart.py [OUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

import filterstats as fs


def main(out: Path) -> None:
    # Any nn.Module works; the shipped robust demo model stands in for yours.
    model = fs.demo.load_model("robust", seed=0)
    report = fs.analyze(model, label="demo-robust")
    print(report)

    # Rows by layer name, columns as lists.
    last = report["conv5"]
    print(f"\nlast layer: {last.n_filters} kernels, sparsity {last.sparsity:.3f}")
    print("orthogonality by layer:", [round(v, 3) for v in report.column("orthogonality")])

    # The same numbers, metric by metric, from the extracted filters.
    filters = fs.extract_filters(model)
    diversity = fs.diversity(filters)
    assert torch.allclose(diversity, torch.tensor(report.column("diversity"), dtype=torch.float64))

    # The authors' package definition gives different diversity values.
    print("torchconvquality diversity:", fs.diversity(filters, definition="torchconvquality"))

    # Exports carry their parameters and read back unchanged.
    path = out / "demo-robust.csv"
    report.to_csv(path)
    again = fs.read_report(path)
    assert again.rows == report.rows
    assert again.params == report.params
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
