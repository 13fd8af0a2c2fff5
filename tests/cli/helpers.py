"""Run the command line as a user runs it (a fresh process) or in this process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m filterstats ARGS`` in a fresh process, in ``cwd``."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "filterstats", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


#: Run ``filterstats`` as if only the core dependencies were installed.
BLOCK_EXTRAS = (
    "import sys\n"
    "for name in ('pandas', 'pyarrow', 'matplotlib', 'tqdm'): sys.modules[name] = None\n"
    "from filterstats.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def run_core_only(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command line in a fresh process where pandas, pyarrow, matplotlib, tqdm fail."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", BLOCK_EXTRAS, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def small_checkpoint(path: Path, seed: int) -> Path:
    """A state dict of two 3x3 convs, saved to ``path``."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    torch.save(net.state_dict(), path)
    return path


def one_error_line(stderr: str, *, alone: bool = True) -> str:
    """The single ``filterstats: error:`` line of a failed run (asserts there is one).

    ``alone``: nothing else on stderr (else log lines before the error are allowed).
    """
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("filterstats: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert not alone or len(lines) == 1, stderr
    return errors[0]
