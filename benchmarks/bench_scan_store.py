"""Size and write speed of raw-filter files per million 3x3 kernels.

Run: ``python benchmarks/bench_scan_store.py``. Prints a Markdown table.
Random weights are the worst case for compression; ``init`` is PyTorch's
default initialisation (uniform), ``normal`` a Gaussian, as trained
filters roughly are.
"""

from __future__ import annotations

import io
import platform
import sys
import time

import torch

from filterstats.layers import ConvLayer
from filterstats.scanning.raw import write_filters

N_KERNELS = 1 << 20  # 1,048,576 kernels: 16 layers of 256 x 256


def make_layers(kind: str) -> list[ConvLayer]:
    generator = torch.Generator().manual_seed(0)
    layers = []
    for index in range(16):
        if kind == "normal":
            weight = torch.randn(256, 256, 3, 3, generator=generator) * 0.05
        else:
            weight = (torch.rand(256, 256, 3, 3, generator=generator) * 2 - 1) / 48
        layers.append(
            ConvLayer(
                f"layer{index}.conv",
                "Conv2d",
                weight,
                256,
                256,
                conv_depth=index,
                conv_depth_norm=index / 15,
            )
        )
    return layers


def main() -> None:
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"threads {torch.get_num_threads()}\n"
    )
    print("| weights | dtype | MB per million kernels | bytes per kernel | write s per million |")
    print("|---|---|---|---|---|")
    for kind in ("init", "normal"):
        layers = make_layers(kind)
        for dtype in ("float16", "float32"):
            buffer = io.BytesIO()
            start = time.perf_counter()
            total = write_filters(buffer, layers, model="bench", kernel_size=(3, 3), dtype=dtype)
            seconds = time.perf_counter() - start
            size = len(buffer.getvalue())
            scale = 1e6 / total
            print(
                f"| {kind} | {dtype} | {size * scale / 1e6:.1f} | {size / total:.1f} | "
                f"{seconds * scale:.2f} |"
            )


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as measured, even in a file
    main()
