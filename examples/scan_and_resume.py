"""Scan a folder of checkpoints, get killed, resume, compare depth profiles from the store.

Run: ``python examples/scan_and_resume.py [OUT_DIR]`` (needs ``filterstats[pandas]``;
takes about half a minute on a laptop CPU).

1. Writes 12 small checkpoints: 6 "dense" CNNs and 6 "pruned" ones whose
   deeper layers have more zeroed kernels.
2. Starts ``filterstats.scanning`` in a separate process and kills it (SIGKILL)
   as soon as the first model is in the store.
3. Scans again: complete models are skipped, the rest are scanned.
4. From the store alone (no model is loaded again), prints the mean sparsity,
   diversity and orthogonality per family and depth decile, and the spread of
   the stored raw kernels per family.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from filterstats.checkpoints import load_state_dict
from filterstats.scanning import open_filters, open_store, read_specs, scan

FAMILIES = ("dense", "pruned")
SEEDS = range(6)


def make_model(family: str, seed: int) -> nn.Module:
    """A small VGG-like CNN; "pruned" zeroes more kernels the deeper the layer."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    widths = [3, 16, 16, 32, 32, 64, 64]
    layers: list[nn.Module] = []
    for index, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
        conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        if family == "pruned":
            keep = torch.rand(c_out, c_in, 1, 1, generator=generator) > 0.12 * index
            with torch.no_grad():
                conv.weight.mul_(keep)
        layers += [conv, nn.ReLU()]
    return nn.Sequential(*layers)


def write_checkpoints(folder: Path) -> Path:
    """Save every model's state dict; return a specs file listing them."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for family in FAMILIES:
        for seed in SEEDS:
            path = folder / f"{family}_{seed}.pt"
            torch.save(make_model(family, seed).state_dict(), path)
            specs.append(str(path))
    specs_file = folder / "specs.txt"
    specs_file.write_text("# one model spec per line\n" + "\n".join(specs) + "\n")
    return specs_file


def slow_loader(spec: str) -> dict[str, torch.Tensor]:
    """Load a checkpoint slowly, so that the kill below lands mid-scan."""
    time.sleep(0.5)
    return load_state_dict(spec)


def scan_killed_midway(specs_file: Path, store: Path) -> None:
    """Run a scan in another process and kill it once the first model is stored."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[3]);"
        "from scan_and_resume import slow_loader;"
        "from filterstats.scanning import read_specs, scan;"
        "scan(read_specs(sys.argv[1]), sys.argv[2], workers=1, loader=slow_loader,"
        " raw_filters=True, progress=False)"
    )
    here = str(Path(__file__).resolve().parent)
    process = subprocess.Popen([sys.executable, "-c", code, str(specs_file), str(store), here])
    try:
        while not list((store / "manifest").glob("*.json")) and process.poll() is None:
            time.sleep(0.05)
    finally:
        process.kill()  # SIGKILL: no clean-up code runs in the scan
        process.wait()
    done = len(list((store / "manifest").glob("*.json")))
    print(f"killed the scan after {done} of {len(read_specs(specs_file))} models")


def main(out: Path) -> None:
    specs_file = write_checkpoints(out / "checkpoints")
    store = out / "store"
    scan_killed_midway(specs_file, store)

    summary = scan(read_specs(specs_file), store, workers=1, raw_filters=True, progress=False)
    print(
        f"resumed: {len(summary.skipped)} already stored, {len(summary.succeeded)} scanned, "
        f"{len(summary.failed)} failed"
    )
    assert summary.ok

    # Everything below reads the store only.
    layers = open_store(store)
    layers = layers[layers["status"] == "ok"].copy()
    layers["family"] = layers["model"].map(lambda spec: Path(spec).stem.split("_")[0])
    layers["depth_decile"] = np.minimum((layers["conv_depth_norm"] * 10).astype(int), 9)
    assert layers.groupby("model").size().nunique() == 1  # every model whole, once
    profile = (
        layers.groupby(["depth_decile", "family"])[["sparsity", "diversity", "orthogonality"]]
        .mean()
        .unstack("family")
    )
    print("\nmean per depth decile (0 = first conv, 9 = last), from the store alone:")
    print(profile.round(3).to_string())

    kernels = open_filters(store)
    values = kernels[[f"w{i}" for i in range(9)]].to_numpy(dtype=np.float32)
    kernels["norm"] = np.linalg.norm(values, axis=1)
    kernels["family"] = kernels["model"].astype(str).map(lambda s: Path(s).stem.split("_")[0])
    zero = kernels.groupby("family")["norm"].apply(lambda n: float((n == 0).mean()))
    print(f"\n{len(kernels):,} raw kernels stored; fraction of all-zero kernels per family:")
    print(zero.round(3).to_string())


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as folder:
            main(Path(folder))
