"""RobustBench models from a local model directory, offline (extra ``filterstats[robustbench]``).

RobustBench (Croce et al., "RobustBench: a standardized adversarial robustness
benchmark", NeurIPS Datasets and Benchmarks 2021) keeps checkpoints at
``<model_dir>/<dataset>/<threat_model>/<name>.pt``; ensembles keep one file per
member, ``<name>.pt_m0.pt``, ``<name>.pt_m1.pt``, ... This module reads that
layout without a network connection: the architecture comes from RobustBench's
model registry, the weights from the file, read with ``weights_only=True``
through [`filterstats.checkpoints`][filterstats.checkpoints].

Examples:
    >>> from filterstats.zoo import robustbench as rb
    >>> models = rb.list_models("cifar10", "Linf")  # doctest: +SKIP
    >>> net = rb.load_model("Carmon2019Unlabeled", "cifar10", "Linf", "models")  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from filterstats._text import plural
from filterstats._warnings import FilterStatsWarning
from filterstats.checkpoints import CheckpointError, read_checkpoint, to_state_dict
from filterstats.zoo._mismatch import describe_mismatch

__all__ = [
    "SNAPSHOT_FILE",
    "RobustBenchModel",
    "build_model",
    "checkpoint_paths",
    "list_models",
    "load_model",
    "read_snapshot",
    "registry_entries",
]

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet")
THREAT_MODELS: tuple[str, ...] = ("Linf", "L2", "corruptions")

# Normalisation constants some RobustBench wrappers register as buffers; checkpoints
# saved before the wrapper existed lack them, and RobustBench keeps the built values.
_OPTIONAL_BUFFERS = frozenset({"mu", "sigma", "mean", "std"})


@dataclass(frozen=True)
class RobustBenchModel:
    """One entry of RobustBench's model registry.

    Attributes:
        name: RobustBench model name, e.g. ``"Carmon2019Unlabeled"``.
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        threat_model: ``"Linf"``, ``"L2"`` or ``"corruptions"``.
        architecture: How RobustBench builds it: the constructor expression,
            e.g. ``"WideResNet(depth=34, widen_factor=10)"``, or the class and its
            base, e.g. ``"Carmon2019UnlabeledNet(WideResNet)"``.
        n_checkpoints: Checkpoint files (more than one for ensembles).
        downloadable: Whether RobustBench has a download id for it.
        paper_architecture: Architecture as named in the paper's catalog
            (e.g. ``"WideResNet-28-10"``), empty for models the paper did not study.
    """

    name: str
    dataset: str
    threat_model: str
    architecture: str
    n_checkpoints: int
    downloadable: bool
    paper_architecture: str = ""

    def checkpoint_paths(self, model_dir: str | os.PathLike[str]) -> tuple[Path, ...]:
        """Where RobustBench keeps this model's checkpoint file(s) under ``model_dir``.

        Args:
            model_dir: RobustBench's model directory (its ``model_dir`` argument).

        Returns:
            The expected checkpoint path(s), one per ensemble member.
        """
        return checkpoint_paths(
            self.name, self.dataset, self.threat_model, model_dir, self.n_checkpoints
        )


def list_models(
    dataset: str | None = None, threat_model: str | None = None
) -> tuple[RobustBenchModel, ...]:
    """List the models RobustBench knows, without downloading anything.

    Reads RobustBench's installed model registry. Without RobustBench (or when it
    cannot be imported), reads the registry snapshot shipped with filterstats
    (``SNAPSHOT_FILE``: RobustBench 1.1.1, with its date) and says so in a
    [`FilterStatsWarning`][filterstats.FilterStatsWarning] (one line on stderr in
    the CLI); loading a model still needs ``pip install 'filterstats[robustbench]'``.

    Args:
        dataset: Keep one dataset (``"cifar10"``, ``"cifar100"``, ``"imagenet"``); ``None``: all.
        threat_model: Keep one threat model (``"Linf"``, ``"L2"``, ``"corruptions"``);
            ``None``: all.

    Returns:
        Registry entries in RobustBench's order (dataset, threat model, name).
    """
    datasets = DATASETS if dataset is None else (_check_dataset(dataset),)
    threats = THREAT_MODELS if threat_model is None else (_check_threat(threat_model),)
    try:
        entries = registry_entries()
    except ModuleNotFoundError as error:
        snapshot = read_snapshot()
        warnings.warn(
            f"RobustBench cannot be imported ({error}): listing the snapshot of RobustBench "
            f"{snapshot['robustbench_version']}'s model registry taken {snapshot['date']}.",
            FilterStatsWarning,
            stacklevel=2,
        )
        entries = snapshot["models"]
    paper = _paper_architectures()
    return tuple(
        RobustBenchModel(
            **entry,
            paper_architecture=paper.get(
                (entry["name"], entry["dataset"], entry["threat_model"]), ""
            ),
        )
        for entry in entries
        if entry["dataset"] in datasets and entry["threat_model"] in threats
    )


#: The shipped snapshot of RobustBench's model registry (package data).
SNAPSHOT_FILE = "robustbench_models.json"


def registry_entries() -> list[dict[str, Any]]:
    """Every entry of the installed RobustBench's model registry, as plain values.

    Returns:
        ``{"name", "dataset", "threat_model", "architecture", "n_checkpoints",
        "downloadable"}`` per model, in RobustBench's order.

    Raises:
        ModuleNotFoundError: RobustBench (or what it imports) is missing.
    """
    zoo = _zoo()
    entries = []
    for dataset_enum, by_threat in zoo.model_dicts.items():
        for threat_enum, models in by_threat.items():
            for name, entry in models.items():
                ids = entry.get("gdrive_id")
                entries.append(
                    {
                        "name": name,
                        "dataset": dataset_enum.value,
                        "threat_model": threat_enum.value,
                        "architecture": _describe(entry["model"]),
                        "n_checkpoints": len(ids) if isinstance(ids, list | tuple) else 1,
                        "downloadable": ids is not None,
                    }
                )
    return entries


def read_snapshot() -> dict[str, Any]:
    """The shipped registry snapshot: ``robustbench_version``, ``date``, ``models``.

    Returns:
        The snapshot; its ``models`` are entries as
        [`registry_entries`][filterstats.zoo.robustbench.registry_entries] gives them.
    """
    from importlib import resources

    # One name per joinpath: Traversable.joinpath takes a single argument on Python 3.10.
    data = resources.files("filterstats.zoo").joinpath("data").joinpath(SNAPSHOT_FILE)
    text = data.read_text(encoding="utf-8")
    snapshot: dict[str, Any] = json.loads(text)
    return snapshot


def checkpoint_paths(
    name: str,
    dataset: str,
    threat_model: str,
    model_dir: str | os.PathLike[str],
    n_checkpoints: int = 1,
) -> tuple[Path, ...]:
    """RobustBench's checkpoint layout: ``<model_dir>/<dataset>/<threat_model>/<name>.pt``.

    Args:
        name: Model name.
        dataset: Dataset name.
        threat_model: Threat model name.
        model_dir: Root of the model directory (RobustBench's ``model_dir``).
        n_checkpoints: Ensemble members; more than one gives ``<name>.pt_m<i>.pt`` files.

    Returns:
        One path per checkpoint file.
    """
    base = Path(model_dir) / dataset / threat_model / f"{name}.pt"
    if n_checkpoints == 1:
        return (base,)
    return tuple(Path(f"{base}_m{i}.pt") for i in range(n_checkpoints))


def build_model(name: str, dataset: str = "cifar10", threat_model: str = "Linf") -> nn.Module:
    """Build a RobustBench architecture with random weights, offline.

    Args:
        name: RobustBench model name.
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        threat_model: ``"Linf"``, ``"L2"`` or ``"corruptions"`` (``"corruptions_3d"``
            is an alias of ``"corruptions"``, as in RobustBench).

    Returns:
        The model in eval mode, with its constructor's random initialisation.

    Raises:
        ValueError: Unknown dataset, threat model or name (close names are suggested).
        RuntimeError: The architecture cannot be built here (e.g. it needs CUDA or
            downloads weights while it is built).
    """
    entry, _, _ = _entry(name, dataset, threat_model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            model: nn.Module = entry["model"]()
    except Exception as error:
        raise RuntimeError(
            f"RobustBench cannot build {name!r} ({dataset}, {threat_model}) offline on this "
            f"machine: {type(error).__name__}: {error}"
        ) from error
    return model.eval()


def load_model(
    name: str,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir: str | os.PathLike[str] = "models",
    *,
    trust_pickle: bool = False,
) -> nn.Module:
    """Load a RobustBench model from a local model directory, never downloading.

    Builds the architecture from RobustBench's registry and loads the checkpoint
    itself with ``weights_only=True``. Handles the checkpoint shapes RobustBench
    handles: a plain state dict, one under ``state_dict``/``model_state_dict``/
    ``last``, ``module.`` prefixes, and the ``model.`` prefix of its normalising
    wrappers (present or absent). Every parameter of the architecture must come
    from the file; only normalisation buffers (``mu``, ``sigma``, ``mean``,
    ``std``) may be missing, as RobustBench allows.

    Args:
        name: RobustBench model name, e.g. ``"Carmon2019Unlabeled"``.
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        threat_model: ``"Linf"``, ``"L2"`` or ``"corruptions"``.
        model_dir: RobustBench's model directory (its ``model_dir`` argument).
        trust_pickle: Allow checkpoints that need pickled code (can run code);
            see [`load_state_dict`][filterstats.checkpoints.load_state_dict].

    Returns:
        The model, in eval mode, on the CPU.

    Raises:
        CheckpointError: A checkpoint file is missing (the message names the
            exact path and how to obtain it), not a checkpoint, refused as
            unsafe, or does not fit the architecture.
        ValueError: Unknown dataset, threat model or name.
        RuntimeError: The architecture cannot be built here.
    """
    entry, dataset, threat_model = _entry(name, dataset, threat_model)
    ids = entry.get("gdrive_id")
    n_checkpoints = len(ids) if isinstance(ids, list | tuple) else 1
    paths = checkpoint_paths(name, dataset, threat_model, model_dir, n_checkpoints)
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise CheckpointError(
            f"RobustBench checkpoint for {name!r} ({dataset}, {threat_model}) not found: "
            f"expected {', '.join(str(path.resolve()) for path in missing)}. filterstats never "
            "downloads. On a machine with internet run `from robustbench.utils import load_model; "
            f"load_model({name!r}, model_dir='models', dataset={dataset!r}, "
            f"threat_model={threat_model!r})`, then copy the file(s) to the path(s) above."
        )
    model = build_model(name, dataset, threat_model)
    if n_checkpoints == 1:
        _load_into(model, paths[0], trust_pickle=trust_pickle)
        return model.eval()
    members = getattr(model, "models", None)
    if not isinstance(members, nn.ModuleList | list) or len(members) != n_checkpoints:
        raise NotImplementedError(
            f"{name!r} is a composite RobustBench model whose {n_checkpoints} checkpoints do not "
            "map onto `model.models`; load it with robustbench.utils.load_model instead."
        )
    for member, path in zip(members, paths, strict=True):
        _load_into(member, path, trust_pickle=trust_pickle)
    return model.eval()


def _load_into(model: nn.Module, path: Path, *, trust_pickle: bool) -> None:
    state = to_state_dict(read_checkpoint(path, trust_pickle=trust_pickle), source=str(path))
    state = _match_keys(state, model)
    expected = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}

    def optional(key: str) -> bool:  # normalisation buffers RobustBench lets a file lack
        return key in buffers and key.rsplit(".", 1)[-1] in _OPTIONAL_BUFFERS

    # Keys the architecture does not use are no mismatch (they are ignored with a
    # warning below), but once the file does not fit they help to see why.
    if describe_mismatch(expected, state, may_be_missing=optional, ignore_unexpected=True):
        raise CheckpointError(
            f"{path} does not fit the architecture RobustBench builds: "
            f"{describe_mismatch(expected, state, may_be_missing=optional)}. Check that the "
            "file belongs to this model name, dataset and threat model."
        )
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # keys and shapes fit; e.g. a value torch cannot copy
        first = str(error).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{path} does not fit the architecture RobustBench builds: {first}"
        ) from error
    if result.unexpected_keys:
        logger.warning(
            "%s: ignored %s the architecture does not use, e.g. %s",
            path,
            plural(len(result.unexpected_keys), "key"),
            result.unexpected_keys[:5],
        )


def _match_keys(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Add or remove the ``model.`` prefix of RobustBench's wrappers, whichever fits the model."""
    expected = set(model.state_dict())
    candidates = [state]
    if any(key.startswith("model.") for key in state):
        candidates.append({_remove_prefix(key, "model."): value for key, value in state.items()})
    candidates.append({f"model.{key}": value for key, value in state.items()})
    return max(candidates, key=lambda candidate: len(expected.intersection(candidate)))


def _remove_prefix(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def _entry(name: str, dataset: str, threat_model: str) -> tuple[Mapping[str, Any], str, str]:
    dataset = _check_dataset(dataset)
    threat_model = _check_threat(threat_model)
    zoo = _zoo()
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    models = zoo.model_dicts[BenchmarkDataset(dataset)].get(ThreatModel(threat_model), {})
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=5, cutoff=0.5)
        raise ValueError(
            f"`name` {name!r} is not a RobustBench model for ({dataset}, {threat_model}); "
            f"{'did you mean ' + ', '.join(close) + '? ' if close else ''}"
            "see filterstats.zoo.robustbench.list_models() or `filterstats zoo list`."
        )
    return models[name], dataset, threat_model


def _check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise ValueError(f"`dataset` must be one of {list(DATASETS)}, got {dataset!r}.")
    return dataset


def _check_threat(threat_model: str) -> str:
    threat_model = "corruptions" if threat_model == "corruptions_3d" else threat_model
    if threat_model not in THREAT_MODELS:
        raise ValueError(
            f"`threat_model` must be one of {list(THREAT_MODELS)}, got {threat_model!r}."
        )
    return threat_model


def _zoo() -> Any:
    from filterstats.zoo._robustbench_compat import import_robustbench

    return import_robustbench()


def _describe(constructor: Callable[..., Any]) -> str:
    """A short, readable description of how the registry builds a model."""
    if inspect.isclass(constructor):
        bases = [
            base.__name__ for base in constructor.__mro__[1:] if base not in (nn.Module, object)
        ]
        return f"{constructor.__name__}({bases[0]})" if bases else constructor.__name__
    if getattr(constructor, "__name__", "") == "<lambda>":
        try:
            source = inspect.getsource(constructor)
        except (OSError, TypeError):
            return "<lambda>"
        match = re.search(r"lambda\s*:\s*(.*)", " ".join(source.split()))
        if match:
            expression = _balanced(match.group(1))
            return expression.replace("( ", "(").replace(" )", ")")
    return getattr(constructor, "__name__", type(constructor).__name__)


def _balanced(text: str) -> str:
    """Cut a constructor expression at the end of its first balanced call."""
    depth = 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return text[: index + 1]
            if depth < 0:
                return text[:index].strip()
        elif char == "," and depth == 0:
            return text[:index].strip()
    return text.strip().rstrip(",")


def _paper_architectures() -> dict[tuple[str, str, str], str]:
    from filterstats.zoo.catalog import paper_pairs

    return {(pair.paper_id, pair.dataset, "Linf"): pair.architecture for pair in paper_pairs()}
