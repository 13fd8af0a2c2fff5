"""Models, checkpoints and loaders for the scan tests.

Module-level functions only: worker processes (spawn), submitit and Ray import
them by name.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

import filterstats as fs
from filterstats.checkpoints import load_state_dict


def build_model(index: int) -> nn.Module:
    """A small seeded CNN; the architecture varies with ``index``."""
    torch.manual_seed(index)
    width = 4 + 2 * (index % 3)
    layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
    for _ in range(1 + index % 2):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
    layers += [nn.Conv2d(width, 2 * width, 3, groups=2), nn.Conv2d(2 * width, 3, 1)]
    model = nn.Sequential(*layers)
    with torch.no_grad():  # some exactly-zero kernels so that sparsity is not always 0
        model[0].weight[: width // 2, 0] = 0.0
    return model


def write_checkpoints(folder: Path, count: int) -> list[str]:
    """Save ``count`` state-dict checkpoints; return their paths as specs."""
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for index in range(count):
        path = folder / f"model_{index}.pt"
        torch.save(build_model(index).state_dict(), path)
        specs.append(str(path))
    return specs


def state_dict_loader(spec: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint the safe way."""
    return load_state_dict(spec)


def slow_loader(spec: str) -> dict[str, torch.Tensor]:
    """Like ``state_dict_loader`` but slow, so that a kill lands mid-scan."""
    time.sleep(0.5)
    return load_state_dict(spec)


def stalling_loader(spec: str) -> dict[str, torch.Tensor]:
    """Like ``state_dict_loader``, but stalls for two minutes on ``model_2.pt``.

    Before stalling it writes its Slurm array task id (``<job>_<task>``) to
    ``model_2.pt.slurm-task``, for the test that cancels it.
    """
    if Path(spec).name == "model_2.pt":
        task = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        Path(spec + ".slurm-task").write_text(task)
        time.sleep(120)
    return load_state_dict(spec)


def module_loader(spec: str) -> nn.Module:
    """``"net:<index>"`` -> ``build_model(index)``, built in memory."""
    return build_model(int(spec.split(":")[1]))


def direct_frame(specs: list[str], loader=state_dict_loader, **kwargs):
    """The reference: ``analyze`` on each model, rows concatenated in spec order."""
    reports = [fs.analyze(loader(spec), label=spec, **kwargs) for spec in sorted(specs)]
    return fs.FilterReport.concat(reports).to_pandas()
