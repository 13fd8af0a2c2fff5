"""Measure a model from its checkpoint file and from an ONNX export.

Saves the shipped demo model as a training checkpoint (``.pt``), as safetensors (if
installed) and as ONNX (if ``filterstats[onnx]`` is installed), reads each back with
filterstats' safe loaders and checks that all give the metrics of the module itself.
Offline, a few seconds.

    python examples/state_dict_and_onnx.py [OUT_DIR]
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import torch

import filterstats as fs

METRICS = ("sparsity", "diversity", "orthogonality")


def values(report: fs.FilterReport) -> list[list[float]]:
    return [report.column(name) for name in METRICS]


def main(out: Path) -> None:
    model = fs.demo.load_model("normal", seed=0)
    reference = fs.analyze(model, label="module")
    print(reference)

    # A training checkpoint as many training scripts write it, with DataParallel prefixes.
    wrapped = {f"module.{key}": value for key, value in model.state_dict().items()}
    torch.save({"epoch": 30, "state_dict": wrapped, "best_acc": 0.96}, out / "checkpoint.pt")
    state = fs.load_state_dict(out / "checkpoint.pt")  # weights_only=True, unwrapped
    from_file = fs.analyze(state, label="checkpoint.pt")
    assert values(from_file) == values(reference)
    print(f"\ncheckpoint.pt: same metrics; depth from {from_file.params.depth_method}")

    # Loading the weights into the architecture restores graph depth.
    rebuilt = fs.demo.DemoNet()
    rebuilt.load_state_dict(state)
    assert fs.analyze(rebuilt).column("conv_depth_norm") == reference.column("conv_depth_norm")

    if importlib.util.find_spec("safetensors") is not None:
        from safetensors.torch import save_file

        save_file(model.state_dict(), str(out / "model.safetensors"))
        same = fs.analyze(fs.load_state_dict(out / "model.safetensors"))
        assert values(same) == values(reference)
        print("model.safetensors: same metrics")

    if importlib.util.find_spec("onnx") is not None:
        from filterstats.zoo.onnx import extract_onnx_filters

        # torch's TorchScript exporter, and its default (dynamo) exporter where onnxscript
        # is installed: both keep the module names, so the layers match by name.
        exporters = [False] + ([True] if importlib.util.find_spec("onnxscript") else [])
        for dynamo in exporters:
            path = out / f"model-{'dynamo' if dynamo else 'torchscript'}.onnx"
            exporter_log = logging.getLogger("torch.onnx")
            level = exporter_log.level
            exporter_log.setLevel(logging.ERROR)
            try:  # quiet: the exporters' deprecation, progress and registration notes
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), path, dynamo=dynamo)
            finally:
                exporter_log.setLevel(level)
            filters = extract_onnx_filters(path)  # every conv read, then the 3x3 selected
            assert list(filters.names) == reference.column("layer")
            from_onnx = fs.analyze(filters, label="onnx")
            for ours, theirs in zip(values(from_onnx), values(reference)):
                torch.testing.assert_close(torch.tensor(ours), torch.tensor(theirs))
            assert from_onnx.column("conv_depth_norm") == reference.column("conv_depth_norm")
            print(f"{path.name}: same layer names, metrics and depths, read from the ONNX graph")
    else:
        print("onnx not installed: pip install 'filterstats[onnx]' for the ONNX part")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
