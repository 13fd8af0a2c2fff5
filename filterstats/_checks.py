"""Argument checks shared by the public functions."""

from __future__ import annotations

from typing import Literal

__all__ = ["NanPolicy", "check_choice", "check_eps", "normalize_kernel_size"]

NanPolicy = Literal["propagate", "raise", "omit"]


def check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {allowed}; got {value!r}.")


def check_eps(eps: float) -> float:
    """Validate a sparsity threshold: a finite number in [0, 1)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"`eps` must be a float in [0, 1), got {type(eps).__name__}.")
    if not 0.0 <= float(eps) < 1.0:
        raise ValueError(
            f"`eps` must be in [0, 1) (a fraction of the layer's largest |weight|), got {eps!r}. "
            "The paper uses eps=0.01."
        )
    return float(eps)


def normalize_kernel_size(kernel_size: object) -> tuple[int, ...] | None:
    """Validate ``kernel_size``: ``None``, a positive int ``k`` or a tuple.

    An int means what ``nn.Conv2d(kernel_size=k)`` means, ``(k, k)``, as the command
    line's ``--kernel-size 3``: both record the selection as ``"3x3"``. Other
    dimensions take a tuple (``(3,)``, ``(3, 3, 3)``).
    """
    if kernel_size is None:
        return None
    if isinstance(kernel_size, bool):
        raise TypeError("`kernel_size` must be None, an int or a tuple of ints, got a bool.")
    if isinstance(kernel_size, int):
        if kernel_size < 1:
            raise ValueError(f"`kernel_size` must be positive, got {kernel_size}.")
        return (kernel_size, kernel_size)
    if isinstance(kernel_size, (tuple, list)) and all(
        isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in kernel_size
    ):
        return tuple(kernel_size)
    raise TypeError(
        f"`kernel_size` must be None (every size), a positive int (3 for 3x3, as in "
        f"nn.Conv2d) or a tuple such as (3, 3) or (3, 3, 3); got {kernel_size!r}."
    )
