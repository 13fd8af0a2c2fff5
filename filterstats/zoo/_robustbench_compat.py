"""The one place where RobustBench 1.1.1 is made importable; everything else imports it here.

RobustBench 1.1.1 as published on PyPI fails to import in a clean environment:

1. ``robustbench/eval.py`` runs ``from autoattack import AutoAttack`` and
   ``from autoattack.state import EvaluationState``, but its dependency
   ``pyautoattack`` installs the module ``pyautoattack``; there is no
   ``autoattack`` module. Fix: when ``autoattack`` is missing, register the
   already-imported ``pyautoattack`` package and its submodules under the name
   ``autoattack`` in ``sys.modules`` (the aliasing the Python import system
   documents for ``sys.modules``). Nothing is written to disk and nothing of
   RobustBench is patched; an installed ``autoattack`` always wins.
2. ``robustbench/loaders.py`` imports ``pkg_resources``, which setuptools 82
   removed. The ``robustbench`` extra pins ``setuptools<82``; without it this
   module raises an error that names that fix. Its deprecation warning on
   import is silenced here.
3. It pins ``timm==1.0.9``; newer timm versions build the same architectures.
   The extra asks only for ``timm>=0.9``, so pip may report the pin as a
   conflict when a newer timm is installed; filterstats does not need the pin.

Importing RobustBench builds no model and downloads nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from types import ModuleType

from filterstats._optional import require

__all__ = ["import_robustbench"]


def import_robustbench() -> ModuleType:
    """Import ``robustbench.model_zoo`` after applying the documented workarounds.

    Returns:
        The ``robustbench.model_zoo`` module (``model_dicts`` and ``enums`` inside).

    Raises:
        ModuleNotFoundError: If robustbench, its attack package or ``pkg_resources``
            is missing; the message names the ``pip install`` that fixes it.
    """
    if "robustbench.model_zoo" in sys.modules:
        return sys.modules["robustbench.model_zoo"]
    if _missing("robustbench"):
        require("robustbench", extra="robustbench")
    _alias_autoattack()
    if _missing("pkg_resources"):
        raise ModuleNotFoundError(
            "robustbench 1.1.1 imports pkg_resources, which setuptools>=82 no longer ships; "
            "pip install 'setuptools<82' (the filterstats[robustbench] extra pins it)"
        )
    with warnings.catch_warnings():
        # pkg_resources and old timm APIs warn on import; the user cannot act on either.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        return importlib.import_module("robustbench.model_zoo")


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


def _alias_autoattack() -> None:
    """Make ``import autoattack`` resolve to the installed ``pyautoattack`` package."""
    if "autoattack" in sys.modules or not _missing("autoattack"):
        return
    if _missing("pyautoattack"):
        raise ModuleNotFoundError(
            "robustbench imports `autoattack`, provided by the pyautoattack package; "
            "pip install 'filterstats[robustbench]' (or pip install pyautoattack)"
        )
    importlib.import_module("pyautoattack")
    importlib.import_module("pyautoattack.state")
    for name, module in list(sys.modules.items()):
        if name == "pyautoattack" or name.startswith("pyautoattack."):
            sys.modules["autoattack" + name[len("pyautoattack") :]] = module
