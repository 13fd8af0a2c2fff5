"""timm models with local weights, never downloading unless asked (extra ``filterstats[timm]``).

[`create_model`][filterstats.zoo.timm.create_model] builds any timm architecture
by name and fills it from a local file (``.safetensors``/``.pth``/``.bin``, read
safely by [`filterstats.checkpoints`][filterstats.checkpoints]) or from timm's
local Hugging Face cache; ``pretrained=False`` keeps the random initialisation
for architecture studies.

Importing this module registers the effective weights of timm's convolutions
that transform their weight in ``forward`` (weight standardisation; Brock et al.,
"Characterizing signal propagation to close the performance gap in unnormalized
ResNets", ICLR 2021, and Qiao et al., "Micro-Batch Training with Batch-Channel
Normalization and Weight Standardization", 2019), so that the filters extracted
are the ones the forward pass convolves with. timm's "same"-padding convolutions
(``Conv2dSame``) and mixed convolutions (``MixedConv2d``, a dict of plain
``Conv2d``) convolve with their stored weight and need no getter.
``CondConv2d`` mixes its experts per input, so it has no single effective weight
and is not a convolution module for filterstats.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from filterstats._optional import require
from filterstats.checkpoints import CheckpointError, load_state_dict
from filterstats.effective_weights import register_effective_weight
from filterstats.zoo._mismatch import describe_mismatch

__all__ = ["create_model", "register_effective_weights", "standardized_weight"]

logger = logging.getLogger(__name__)

_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def standardized_weight(conv: nn.Conv2d) -> Tensor:
    """The weight a timm weight-standardised convolution uses in ``forward``.

    ``StdConv2d(Same)``: each output filter minus its mean, divided by
    ``sqrt(var + eps)`` (biased variance over ``C_in/groups * kH * kW``).
    ``ScaledStdConv2d(Same)`` also multiplies filter ``o`` by
    ``gain[o] * scale`` (``scale = gamma / sqrt(fan_in)``). Computed exactly as
    timm does, with ``F.batch_norm`` in training mode (no running statistics
    touched), without gradients and without changing the module.

    Args:
        conv: A ``StdConv2d``, ``StdConv2dSame``, ``ScaledStdConv2d`` or
            ``ScaledStdConv2dSame`` module.

    Returns:
        Effective weight ``(C_out, C_in/groups, kH, kW)``, on the module's device and dtype.
    """
    with torch.no_grad():
        weight = conv.weight.detach()
        gain = getattr(conv, "gain", None)
        affine = None if gain is None else (gain.detach() * conv.scale).reshape(-1)
        return F.batch_norm(
            weight.reshape(1, conv.out_channels, -1),
            None,
            None,
            weight=affine,
            training=True,
            momentum=0.0,
            eps=float(conv.eps),  # type: ignore[arg-type]
        ).reshape_as(weight)


def register_effective_weights() -> None:
    """Register the effective-weight getters of timm's weight-transforming convolutions.

    Idempotent; called when this module is imported. Needs timm installed.
    """
    require("timm", extra="timm")
    from timm.layers import std_conv

    for name in ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"):
        cls = getattr(std_conv, name, None)
        if cls is not None:
            register_effective_weight(cls, standardized_weight)


def create_model(
    name: str,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    pretrained: bool = False,
    allow_download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    reparameterize: bool = False,
    trust_pickle: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Create a timm model by name, with weights from disk only unless asked.

    Args:
        name: timm model name, optionally with a pretrained tag
            (``"resnet50.a1_in1k"``).
        checkpoint: A local weights file (``.safetensors``, ``.pth``, ``.bin``,
            ``.pt``); its state dict must fit the architecture exactly (after
            timm's own key conversion for the model family, if any).
        pretrained: Load timm's pretrained weights from the local Hugging Face
            cache (``cache_dir``, default: the hub's cache). Ignored when
            ``checkpoint`` is given.
        allow_download: With ``pretrained=True``, let timm download the weights
            when they are not cached. Off by default: nothing touches the network.
        cache_dir: Hugging Face hub cache to look in; ``None``: the hub's default
            (``HF_HUB_CACHE``).
        reparameterize: Fuse re-parameterisable blocks (RepVGG, MobileOne, ...)
            into the single convolutions used at inference, with
            ``timm.utils.reparameterize_model``.
        trust_pickle: Allow a checkpoint that needs pickled code; see
            [`load_state_dict`][filterstats.checkpoints.load_state_dict].
        **kwargs: Passed to ``timm.create_model`` (e.g. ``num_classes``).

    Returns:
        The model in eval mode on the CPU.

    Raises:
        CheckpointError: The checkpoint is missing, unreadable or does not fit,
            or ``pretrained=True`` found no cached weights and downloads are off.
        ValueError: timm knows no model ``name`` (close names are suggested).
        ModuleNotFoundError: timm is not installed.

    Examples:
        >>> net = create_model("resnet18")  # doctest: +SKIP
        >>> net = create_model("resnet18", checkpoint="resnet18.safetensors")  # doctest: +SKIP
    """
    timm = require("timm", extra="timm")
    register_effective_weights()
    _check_name(timm, name)
    model: nn.Module
    if pretrained and checkpoint is None and allow_download:
        model = timm.create_model(name, pretrained=True, **kwargs)
    else:
        model = timm.create_model(name, pretrained=False, **kwargs)
        if checkpoint is not None:
            _load_into(model, Path(checkpoint), trust_pickle=trust_pickle)
        elif pretrained:
            _load_into(model, _cached_weights(model, name, cache_dir), trust_pickle=trust_pickle)
    if reparameterize:
        from timm.utils.model import reparameterize_model

        model = reparameterize_model(model, inplace=True)
    return model.eval()


def _check_name(timm: Any, name: str) -> None:
    """Refuse a name timm does not know, with the close ones, before building anything."""
    if ":" in name:
        return  # another source ("hf-hub:ORG/NAME", "local-dir:PATH"): timm resolves it
    architecture = name.split(".", 1)[0]  # timm splits a pretrained tag off at the first dot
    if timm.is_model(architecture):
        return
    raise ValueError(unknown_model_message(name, timm.list_models(), str(timm.__version__)))


def unknown_model_message(name: str, known: list[str], version: str) -> str:
    """The one-line error for a model name timm does not know.

    Args:
        name: The name asked for, possibly with a pretrained tag (``"resnet50.a1_in1k"``).
        known: The architectures timm knows (``timm.list_models()``).
        version: timm's version, which decides what it knows.

    Returns:
        The message, with up to five close names.
    """
    architecture = name.split(".", 1)[0]
    close = difflib.get_close_matches(architecture, known, n=5, cutoff=0.6)
    suggestion = f"did you mean {', '.join(close)}? " if close else ""
    return (
        f"timm {version} has no model {architecture!r}; {suggestion}timm.list_models() lists "
        f"its {len(known)} architectures (with wildcards: timm.list_models('*resnet*'))."
    )


def _load_into(model: nn.Module, path: Path, *, trust_pickle: bool) -> None:
    state = load_state_dict(path, trust_pickle=trust_pickle)
    expected_state = model.state_dict()
    expected = set(expected_state)
    if set(state) != expected:
        # Checkpoints of the original implementations use other names; timm converts
        # them with the model family's `checkpoint_filter_fn`, as its own loader does.
        convert = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if convert is not None:
            try:
                state = convert(state, model)
            except Exception as error:  # a filter for another layout: keep the original keys
                logger.debug("checkpoint_filter_fn of %s failed: %s", type(model).__name__, error)
    # Counts and the first few keys: torch's own error lists every key, kilobytes of them.
    problem = describe_mismatch(expected_state, state)
    if problem:
        raise CheckpointError(
            f"{path} does not fit timm's {type(model).__name__}: {problem}. Check the model "
            "name (and its num_classes) against the checkpoint."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # keys and shapes fit; e.g. a value torch cannot copy
        first = str(error).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{path} does not fit timm's {type(model).__name__}: {first}"
        ) from error


def _cached_weights(model: nn.Module, name: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    config = getattr(model, "pretrained_cfg", {}) or {}
    hub_id = config.get("hf_hub_id")
    looked = []
    if hub_id:
        hub = require("huggingface_hub", extra="timm")
        for filename in _HUB_FILES:
            found = hub.try_to_load_from_cache(
                hub_id, filename, cache_dir=None if cache_dir is None else str(cache_dir)
            )
            if isinstance(found, str):
                return Path(found)
        looked.append(f"Hugging Face cache entry {hub_id} ({' or '.join(_HUB_FILES)})")
    url = config.get("url")
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if cached.is_file():
            return cached
        looked.append(str(cached))
    raise CheckpointError(
        f"no local pretrained weights for timm model {name!r}: looked in "
        f"{'; '.join(looked) or 'nothing (timm has no pretrained weights for it)'}. Pass "
        "`checkpoint=` a local file, or `allow_download=True` to let timm download them."
    )


register_effective_weights()
