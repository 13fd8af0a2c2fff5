"""Temporary, fully restored changes of a user's module."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode"]


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Set ``training=False`` on ``module`` and all its submodules, then restore each flag.

    Unlike ``module.eval()`` followed by ``module.train()``, this restores every
    submodule's own flag (a model in training mode with some frozen, eval-mode parts
    comes back exactly as it was), also when the body raises.

    Args:
        module: The module to switch temporarily.

    Yields:
        Nothing; the body runs in eval mode.
    """
    flags = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, training in flags:
            m.training = training
