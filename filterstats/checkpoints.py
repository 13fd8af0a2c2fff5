"""Safe reading of checkpoint files: magic bytes first, ``weights_only`` always.

Every loader of filterstats (RobustBench, timm, plain files, the CLI) reads
checkpoints through [`load_state_dict`][filterstats.checkpoints.load_state_dict].
It never executes code from a file unless the user passes ``trust_pickle=True``
explicitly; a refused file is never retried with a full pickle behind the
user's back (that fallback is how ``weights_only`` protection gets bypassed).

Each way a file can be unusable gives one [`CheckpointError`][filterstats.CheckpointError]
that says what the file is and what to do: a missing file (with its exact
path), a directory, an empty file, an HTML page saved by a failed download, a
truncated or corrupt archive, an unknown format, and a checkpoint whose pickle
needs code (``weights_only=True`` refused it).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from filterstats._optional import require

__all__ = [
    "WRAPPER_KEYS",
    "CheckpointError",
    "load_state_dict",
    "read_checkpoint",
    "strip_wrapper_prefixes",
    "to_state_dict",
]

logger = logging.getLogger(__name__)

#: Entries that hold the state dict inside a training checkpoint, tried in order.
#: ``"last"`` is how some RobustBench checkpoints store their final weights.
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "last")

#: Prefixes added by ``DataParallel``/``DistributedDataParallel`` and ``torch.compile``.
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_PICKLE_MAGIC = b"\x80"
_HTML = re.compile(rb"^\s*(<!doctype|<html|<head|<body|<\?xml|<!--|<meta|<script|<title)", re.I)


class CheckpointError(ValueError):
    """A checkpoint file is missing, not a checkpoint, corrupt, or refused as unsafe."""


def load_state_dict(
    path: str | os.PathLike[str], *, trust_pickle: bool = False
) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` state dict, safely.

    Reads ``.pt``/``.pth``/``.bin``/``.ckpt`` files written by ``torch.save``
    with ``torch.load(weights_only=True)`` (memory-mapped for the zip format),
    and ``.safetensors`` files with ``safetensors`` (extra ``timm``). The format
    is recognised from the file's first bytes, not its suffix.

    The state dict is unwrapped from training checkpoints (the first of
    ``state_dict``, ``model_state_dict``, ``model``, ``last`` that holds one),
    the ``module.`` and ``_orig_mod.`` prefixes of ``DataParallel`` and
    ``torch.compile`` are stripped, and entries that are not tensors (epoch
    counters, optimiser settings) are dropped.

    Args:
        path: The checkpoint file.
        trust_pickle: Load a full pickle (``torch.load(weights_only=False)``),
            which can run arbitrary code from the file. Only for files from a
            source you trust; never needed for plain state dicts or safetensors.

    Returns:
        Tensors by parameter name, on the CPU, in file order.

    Raises:
        CheckpointError: The file is missing, a directory, empty, an HTML page,
            truncated, of an unknown format, holds no tensors, or needs pickled
            code while ``trust_pickle`` is ``False``.

    Examples:
        >>> import torch, tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "net.pt"
        >>> torch.save({"state_dict": {"module.conv.weight": torch.ones(2, 1, 3, 3)}}, path)
        >>> list(load_state_dict(path))
        ['conv.weight']
    """
    return to_state_dict(read_checkpoint(path, trust_pickle=trust_pickle), source=str(path))


def read_checkpoint(path: str | os.PathLike[str], *, trust_pickle: bool = False) -> Any:
    """Read a checkpoint file as stored, without unwrapping it.

    Args:
        path: The checkpoint file.
        trust_pickle: See [`load_state_dict`][filterstats.checkpoints.load_state_dict].

    Returns:
        What the file holds: usually a dict (a state dict or a training
        checkpoint); with ``trust_pickle=True`` possibly a whole module.

    Raises:
        CheckpointError: As [`load_state_dict`][filterstats.checkpoints.load_state_dict].
    """
    file = Path(path)
    kind = _sniff(file)
    if kind == "safetensors":
        safetensors_torch = require("safetensors.torch", extra="timm")
        try:
            return safetensors_torch.load_file(str(file), device="cpu")
        except Exception as error:
            raise CheckpointError(
                f"{file} looks like a safetensors file but cannot be read ({error}); the file is "
                "probably truncated or corrupt: download it again."
            ) from error
    if kind == "zip":
        _check_zip(file)
    return _torch_load(file, mmap=kind == "zip", trust_pickle=trust_pickle)


def to_state_dict(checkpoint: Any, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """Find the state dict inside a loaded checkpoint and clean its keys.

    Args:
        checkpoint: A state dict, a training checkpoint holding one under one of
            [`WRAPPER_KEYS`][filterstats.checkpoints.WRAPPER_KEYS], or an ``nn.Module``.
        source: Name used in error messages (the file path).

    Returns:
        Tensors by name, ``module.``/``_orig_mod.`` prefixes stripped.

    Raises:
        CheckpointError: If no tensor is found, or two keys collide after the
            prefixes are stripped.
    """
    found = _unwrap(checkpoint)
    if found is None:
        keys = list(checkpoint)[:10] if isinstance(checkpoint, Mapping) else []
        raise CheckpointError(
            f"{source} holds no state dict: got {type(checkpoint).__name__}"
            f"{f' with keys {keys}' if keys else ''}. Expected a mapping of parameter names to "
            f"tensors, possibly under one of {list(WRAPPER_KEYS)}."
        )
    state: dict[str, Tensor] = {}
    dropped = []
    for key, value in found.items():
        if not isinstance(value, Tensor):
            dropped.append(key)
            continue
        name = strip_wrapper_prefixes(str(key))
        if name in state:
            raise CheckpointError(
                f"{source}: keys {key!r} and another collide as {name!r} once the "
                f"{list(_WRAPPER_PREFIXES)} prefixes are stripped; the file mixes wrapped and "
                "unwrapped weights. Save `model.state_dict()` of the unwrapped model."
            )
        state[name] = value
    if dropped:
        logger.debug(
            "%s: dropped %d non-tensor entries, e.g. %s", source, len(dropped), dropped[:5]
        )
    return state


def strip_wrapper_prefixes(name: str) -> str:
    """Remove leading ``module.`` and ``_orig_mod.`` (in any order, repeated) from a key.

    Args:
        name: A state-dict key, e.g. ``"module._orig_mod.conv1.weight"``.

    Returns:
        The key without wrapper prefixes, e.g. ``"conv1.weight"``.
    """
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
                changed = True
    return name


def _unwrap(checkpoint: Any, _level: int = 0) -> Mapping[str, Any] | None:
    if isinstance(checkpoint, nn.Module):
        return checkpoint.state_dict()
    if not isinstance(checkpoint, Mapping) or _level > 4:
        return None
    for key in WRAPPER_KEYS:
        if key in checkpoint and not isinstance(checkpoint[key], Tensor):
            inner = _unwrap(checkpoint[key], _level + 1)
            if inner is not None:
                return inner
    if any(isinstance(value, Tensor) for value in checkpoint.values()):
        return checkpoint
    return None


def _sniff(file: Path) -> str:
    """Classify a file by its first bytes: ``"zip"``, ``"pickle"`` or ``"safetensors"``."""
    if not file.exists():
        raise CheckpointError(
            f"checkpoint file not found: {file.resolve()}. Check the path, or download the "
            "checkpoint to exactly this place."
        )
    if file.is_dir():
        raise CheckpointError(
            f"{file} is a directory, not a checkpoint file; pass the file inside it "
            "(e.g. model.pt, pytorch_model.bin or model.safetensors)."
        )
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(
            f"{file} is empty (0 bytes): an interrupted download or copy. Download it again."
        )
    with file.open("rb") as handle:
        head = handle.read(1024)
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_PICKLE_MAGIC):
        return "pickle"
    if len(head) >= 9:
        (header_size,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 8 + header_size <= size:
            return "safetensors"
    if _HTML.match(head):
        raise CheckpointError(
            f"{file} is an HTML page, not a checkpoint ({size} bytes): a download that saved an "
            "error or confirmation page instead of the file. Delete it and download the "
            "checkpoint again (for Google Drive links, use the direct-download link)."
        )
    raise CheckpointError(
        f"{file} is not a checkpoint filterstats can read: its first bytes are {head[:16]!r}, "
        "neither a torch.save zip or pickle nor a safetensors file. Truncated or corrupt "
        "files give this too: download it again."
    )


def _check_zip(file: Path) -> None:
    try:
        with zipfile.ZipFile(file) as archive:
            for info in archive.infolist():
                _check_crc(archive, info)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CheckpointError(
            f"{file} is a truncated or corrupt torch.save archive ({error}); it was probably cut "
            "off during download or copy. Download it again."
        ) from error


def _check_crc(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Read one archive member to its end, which checks its CRC-32 (BadZipFile if wrong).

    torch.load does not check the CRCs, so without this a flipped byte in a tensor's
    data loads silently as a wrong weight. Members saved without a CRC (torch's
    ``compute_crc32=False`` writes 0) cannot be checked and are skipped.
    """
    if info.CRC == 0 and info.file_size > 0:
        return
    with archive.open(info) as member:
        while member.read(2**24):
            pass


def _torch_load(file: Path, *, mmap: bool, trust_pickle: bool) -> Any:
    try:
        if trust_pickle:
            logger.warning("loading %s as a full pickle (trust_pickle=True): it can run code", file)
            return torch.load(file, map_location="cpu", weights_only=False, mmap=mmap)
        return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Weights only load failed" in str(error):
            raise CheckpointError(
                f"{file} needs pickled code to load and was refused: torch.load(weights_only=True) "
                f"allows only tensors and plain containers. Refused because: "
                f"{_first_line(error)}. Prefer a checkpoint of `model.state_dict()` or a "
                "safetensors file. If you trust the file's source, opt in explicitly with "
                "`trust_pickle=True` (CLI: --trust-pickle); it can run arbitrary code."
                + (
                    ""
                    if mmap
                    else " (In an old-format, non-zip file, this error can also mean the file "
                    "was cut off: compare its size with the original.)"
                )
            ) from error
        raise _corrupt(file, error) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise _corrupt(file, error) from error


def _corrupt(file: Path, error: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{file} could not be read as a torch checkpoint ({type(error).__name__}: "
        f"{_first_line(error)}); the file is probably truncated or corrupt. Download it again."
    )


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # torch explains a refusal in boilerplate; the line naming the GLOBAL is the reason.
    for line in lines:
        if "GLOBAL" in line:
            return line.rstrip(".")
    return lines[0] if lines else type(error).__name__
