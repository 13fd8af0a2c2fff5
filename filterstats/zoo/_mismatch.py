"""How a checkpoint differs from the architecture it is loaded into, in one short line.

torch's ``load_state_dict`` error lists every missing and unexpected key, which for
a checkpoint of another model (or one saved with a wrapper prefix) runs to many
kilobytes. The loaders of the zoo report the counts and the first few keys instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor

__all__ = ["describe_mismatch"]

#: Keys shown per kind of difference.
SHOWN = 3


def describe_mismatch(
    expected: Mapping[str, Tensor],
    found: Mapping[str, Tensor],
    *,
    may_be_missing: Callable[[str], bool] | None = None,
    ignore_unexpected: bool = False,
) -> str:
    """Count and name (first few) the keys that keep ``found`` from fitting ``expected``.

    Args:
        expected: The architecture's state dict (``model.state_dict()``).
        found: The checkpoint's state dict.
        may_be_missing: Keys of ``expected`` that the file may lack (e.g. RobustBench's
            normalisation buffers); ``None``: none.
        ignore_unexpected: Keys of ``found`` that the architecture lacks are not a
            mismatch (the caller loads with ``strict=False`` and warns).

    Returns:
        ``""`` when ``found`` fits; else e.g. ``"2 keys missing from the file
        ('fc.weight', 'fc.bias'); 1 tensor of another shape ('conv1.weight': file
        (64, 3, 7, 7), model (64, 3, 3, 3))"``.
    """
    missing = [
        key
        for key in expected
        if key not in found and not (may_be_missing is not None and may_be_missing(key))
    ]
    unexpected = [] if ignore_unexpected else [key for key in found if key not in expected]
    reshaped = [
        f"{key!r}: file {tuple(found[key].shape)}, model {tuple(expected[key].shape)}"
        for key in expected
        if key in found and tuple(found[key].shape) != tuple(expected[key].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{_count(missing, 'key')} missing from the file ({_first(missing)})")
    if unexpected:
        parts.append(f"{_count(unexpected, 'unexpected key')} in the file ({_first(unexpected)})")
    if reshaped:
        parts.append(
            f"{_count(reshaped, 'tensor')} of another shape ({_first(reshaped, quote=False)})"
        )
    return "; ".join(parts)


def _count(items: Sequence[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _first(items: Sequence[str], *, quote: bool = True) -> str:
    shown = [repr(item) if quote else item for item in items[:SHOWN]]
    more = f", ... {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(shown) + more
