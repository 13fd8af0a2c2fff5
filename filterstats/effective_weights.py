"""The registry of effective weights: how to read the weight a module really convolves with.

Its own module, below ``extract`` and the zoo adapters, so that an adapter (timm's
weight-standardised convolutions) can register getters without importing
extraction, and extraction can load the adapter when it meets one of its classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor, nn

__all__ = ["register_effective_weight", "registered_getter"]

ModuleT = TypeVar("ModuleT", bound=nn.Module)
WeightGetter = Callable[[Any], Tensor]

_EFFECTIVE_WEIGHT: dict[type, WeightGetter] = {}


def register_effective_weight(
    module_cls: type[ModuleT], getter: Callable[[ModuleT], Tensor] | None = None
) -> Any:
    """Tell extraction how to get the weight a module really convolves with.

    For modules that transform their weight in ``forward`` (weight standardisation,
    re-parameterisation, custom quantisation), register a function that returns the
    effective weight ``(C_out, C_in / groups, *kernel)``. Subclasses inherit the
    getter; the most specific registered class wins. Registering a class that is not
    a ``_ConvNd`` subclass makes extraction treat it as a convolution.

    Args:
        module_cls: The module class.
        getter: ``getter(module) -> Tensor``; omit to use as a decorator.

    Returns:
        ``getter`` (or the decorator).

    Examples:
        >>> import torch, filterstats as fs
        >>> class StdConv(torch.nn.Conv2d):
        ...     def forward(self, x):
        ...         return self._conv_forward(x, standardize(self.weight), self.bias)
        >>> def standardize(w):
        ...     return (w - w.mean((1, 2, 3), keepdim=True)) / w.std((1, 2, 3), keepdim=True)
        >>> _ = fs.register_effective_weight(StdConv, lambda m: standardize(m.weight))
    """
    if not isinstance(module_cls, type) or not issubclass(module_cls, nn.Module):
        raise TypeError(f"`module_cls` must be an nn.Module subclass, got {module_cls!r}.")

    def decorate(function: Callable[[ModuleT], Tensor]) -> Callable[[ModuleT], Tensor]:
        if not callable(function):
            raise TypeError(f"`getter` must be callable, got {function!r}.")
        _EFFECTIVE_WEIGHT[module_cls] = function
        return function

    return decorate if getter is None else decorate(getter)


def registered_getter(module: nn.Module) -> WeightGetter | None:
    """The getter registered for a module's class (the most specific one), if any.

    Args:
        module: Any module.

    Returns:
        The getter, or ``None``.
    """
    for cls in type(module).__mro__:
        if cls in _EFFECTIVE_WEIGHT:
            return _EFFECTIVE_WEIGHT[cls]
    return None
