"""One model-spec syntax for Python and the command line.

==========================================  ==========================================
spec                                        what it loads
==========================================  ==========================================
``timm:NAME``                               timm model, pretrained weights from the
                                            local cache (never downloaded)
``timm:NAME@FILE``                          timm model, weights from ``FILE``
``timm:NAME@random``                        timm model, random initialisation
``robustbench:DATASET/THREAT/NAME``         RobustBench model from ``./models``
``robustbench:DATASET/THREAT/NAME@DIR``     RobustBench model from model directory ``DIR``
``demo:normal`` / ``demo:robust[@SEED]``    the built-in demo models
``PATH.pt|.pth|.bin|.ckpt|.safetensors``    a state dict read safely from the file (a
                                            TorchScript archive: its scripted module)
``PATH.onnx``                               filters read from the ONNX graph
``PATH.parquet``                            one model's raw filters from a scan store
                                            (``scan(..., raw_filters=True)``)
==========================================  ==========================================

[`filterstats.extract_filters`][filterstats.extract_filters] (and so every function
that takes a model) accepts these spec strings directly.

Example: ``robustbench:cifar10/Linf/Carmon2019Unlabeled@/data/robustbench``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from filterstats.checkpoints import read_checkpoint, to_state_dict
from filterstats.layers import FilterSet

__all__ = ["ModelSpec", "load_model", "parse_spec"]

SCHEMES: tuple[str, ...] = ("timm", "robustbench", "demo")
STATE_DICT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
ONNX_SUFFIX = ".onnx"
RAW_FILTERS_SUFFIX = ".parquet"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec.

    Attributes:
        scheme: ``"timm"``, ``"robustbench"``, ``"demo"``, ``"state_dict"``, ``"onnx"``
            or ``"raw_filters"``.
        name: Model name (timm, RobustBench), demo kind, or the file path.
        location: What follows ``@``: a weights file or ``"random"`` (timm), a
            model directory (RobustBench), a seed (demo); ``""`` when absent.
        dataset: RobustBench dataset, else ``""``.
        threat_model: RobustBench threat model, else ``""``.
    """

    scheme: str
    name: str
    location: str = ""
    dataset: str = ""
    threat_model: str = ""


def parse_spec(spec: str) -> ModelSpec:
    """Parse a model spec (see the module docs for the syntax).

    Args:
        spec: E.g. ``"timm:resnet18@weights.safetensors"`` or ``"model.pt"``.

    Returns:
        The parsed spec.

    Raises:
        ValueError: Unknown scheme or suffix, or a malformed spec; the message shows the syntax.
    """
    scheme, colon, rest = spec.partition(":")
    # A one-letter "scheme" is a Windows drive letter (C:\...), and a path may contain ':'.
    if colon and len(scheme) > 1 and not Path(spec).exists():
        if scheme not in SCHEMES:
            raise ValueError(
                f"unknown model spec scheme {scheme!r} in {spec!r}; use one of "
                f"{[s + ':' for s in SCHEMES]} or a file path ending in "
                f"{[*STATE_DICT_SUFFIXES, ONNX_SUFFIX, RAW_FILTERS_SUFFIX]}."
            )
        name, _, location = rest.partition("@")
        if not name:
            raise ValueError(f"model spec {spec!r} has no name after {scheme + ':'!r}.")
        if scheme == "robustbench":
            parts = name.split("/")
            if len(parts) != 3 or not all(parts):
                raise ValueError(
                    f"RobustBench spec {spec!r} must be "
                    "robustbench:DATASET/THREAT/NAME[@MODEL_DIR], "
                    "e.g. robustbench:cifar10/Linf/Carmon2019Unlabeled@models."
                )
            return ModelSpec("robustbench", parts[2], location, parts[0], parts[1])
        if scheme == "demo" and name not in ("normal", "robust"):
            raise ValueError(f"demo spec {spec!r} must be demo:normal or demo:robust[@SEED].")
        if scheme == "demo" and location and not location.isdigit():
            raise ValueError(
                f"the seed in {spec!r} must be a non-negative integer, got {location!r}."
            )
        return ModelSpec(scheme, name, location)
    suffix = Path(spec).suffix.lower()
    if suffix == ONNX_SUFFIX:
        return ModelSpec("onnx", spec)
    if suffix in STATE_DICT_SUFFIXES:
        return ModelSpec("state_dict", spec)
    if suffix == RAW_FILTERS_SUFFIX:
        return ModelSpec("raw_filters", spec)
    raise ValueError(
        f"cannot tell what {spec!r} is: a model file must end in "
        f"{[*STATE_DICT_SUFFIXES, ONNX_SUFFIX, RAW_FILTERS_SUFFIX]}, or use a scheme "
        f"{[s + ':' for s in SCHEMES]} (e.g. timm:resnet18, demo:robust)."
    )


def load_model(
    spec: str | ModelSpec, *, trust_pickle: bool = False
) -> nn.Module | dict[str, Tensor] | FilterSet:
    """Load what a model spec names, offline.

    Args:
        spec: A spec string (see the module docs) or a parsed
            [`ModelSpec`][filterstats.zoo.specs.ModelSpec].
        trust_pickle: Allow checkpoints that need pickled code (can run code).

    Returns:
        An ``nn.Module`` (timm, RobustBench, demo, a TorchScript archive, a trusted
        full pickle of a module); a state dict ``{name: tensor}`` for plain
        checkpoint files (unwrapped as ``filterstats.checkpoints.to_state_dict``
        does); a [`FilterSet`][filterstats.FilterSet] of every kernel size for
        ``.onnx`` files and raw-filter ``.parquet`` files.
        [`extract_filters`][filterstats.extract_filters] turns any
        of them into a ``FilterSet``.

    Raises:
        ValueError: A malformed spec.
        CheckpointError: A missing or unreadable file.
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed.scheme == "state_dict":
        held = read_checkpoint(parsed.name, trust_pickle=trust_pickle)
        if isinstance(held, nn.Module):
            return held
        return to_state_dict(held, source=parsed.name)
    if parsed.scheme == "onnx":
        from filterstats.zoo.onnx import extract_onnx_filters

        return extract_onnx_filters(parsed.name, kernel_size=None)
    if parsed.scheme == "raw_filters":
        from filterstats.scanning.raw import read_filterset

        return read_filterset(parsed.name)
    if parsed.scheme == "timm":
        from filterstats.zoo.timm import create_model

        if parsed.location == "random":
            return create_model(parsed.name)
        if parsed.location:
            return create_model(parsed.name, checkpoint=parsed.location, trust_pickle=trust_pickle)
        return create_model(parsed.name, pretrained=True)
    if parsed.scheme == "robustbench":
        from filterstats.zoo.robustbench import load_model as load_robustbench

        return load_robustbench(
            parsed.name,
            parsed.dataset,
            parsed.threat_model,
            parsed.location or "models",
            trust_pickle=trust_pickle,
        )
    demo: Any = importlib.import_module("filterstats.demo")
    seed = int(parsed.location) if parsed.location else 0
    model: nn.Module = demo.load_model(parsed.name, seed)
    return model
