"""Scan many models into a resumable filter store, locally or on Slurm or Ray.

```python
import filterstats as fs

summary = fs.scan(["ckpts/a.pt", "ckpts/b.pt"], "results/")  # local processes
summary = fs.scan(specs, "/shared/results", executor="slurm",
                  executor_options={"partition": "gpu", "time_min": 30})
frame = fs.open_store("results/")  # one row per conv layer of every model
```

Modules: ``runner`` (``scan``), ``store`` (the folder layout and its crash
guarantees), ``keys`` (when a stored model is still valid), ``worker`` (one
model), ``executors`` (local, Slurm, Ray), ``raw`` (raw-kernel files). The command
line (``filterstats scan``) lives in ``filterstats.cli.scan``.
"""

from __future__ import annotations

from filterstats.scanning.executors import Executor, LocalExecutor, Lost, RayExecutor, SlurmExecutor
from filterstats.scanning.runner import ModelOutcome, ScanSummary, read_specs, scan, select_specs
from filterstats.scanning.store import Store, StoreEntry, open_filters, open_store

__all__ = [
    "Executor",
    "LocalExecutor",
    "Lost",
    "ModelOutcome",
    "RayExecutor",
    "ScanSummary",
    "SlurmExecutor",
    "Store",
    "StoreEntry",
    "open_filters",
    "open_store",
    "read_specs",
    "scan",
    "select_specs",
]
