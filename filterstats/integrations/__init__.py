"""Thin adapters between ``FilterTracker`` and training tools, each imported on use.

=================================  =====================================  ===================
name                               what it is                             needs
=================================  =====================================  ===================
``TensorBoardSink``                snapshot scalars to TensorBoard        ``tensorboard`` (for
                                                                          a log directory)
``WandbSink``                      snapshot values to ``run.log``         a W&B run (any
                                                                          object with ``log``)
``LightningFilterTracker``         a Lightning ``Callback``               ``lightning``
``HFFilterTracker``                a Hugging Face ``TrainerCallback``     nothing (duck-typed)
=================================  =====================================  ===================

``import filterstats.integrations`` imports none of these tools; each name loads its
module when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["HFFilterTracker", "LightningFilterTracker", "TensorBoardSink", "WandbSink"]

_WHERE = {
    "TensorBoardSink": "filterstats.integrations.sinks",
    "WandbSink": "filterstats.integrations.sinks",
    "LightningFilterTracker": "filterstats.integrations.lightning",
    "HFFilterTracker": "filterstats.integrations.huggingface",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'filterstats.integrations' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
