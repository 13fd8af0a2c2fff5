"""Lazy imports of optional extras with an error that names the ``pip install`` fix."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, *, extra: str) -> ModuleType:
    """Import an optional dependency, or explain which extra installs it.

    Args:
        module: Dotted module name, e.g. ``"pandas"``.
        extra: The filterstats extra that provides it, e.g. ``"pandas"``.

    Returns:
        The imported module.

    Raises:
        ModuleNotFoundError: If ``module`` is not installed; the message names
            ``pip install 'filterstats[<extra>]'``.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        top = module.split(".")[0]
        if error.name not in (module, top):
            raise  # installed but broken: keep the real cause
        raise ModuleNotFoundError(
            f"{module} is not installed; pip install 'filterstats[{extra}]'"
        ) from error
