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

This module is also the one place that turns what a file (or ``torch.save``) holds
into a state dict: one list of wrapper entries (``WRAPPER_KEYS``), one prefix rule
(``strip_wrapper_prefixes``) and one rule for Lightning checkpoints, used by the
file loaders and by ``extract_filters`` on in-memory dicts alike.

TorchScript archives (``torch.jit.save``) are recognised by their content (a
``constants.pkl`` and ``code/`` inside the zip), not by a suffix, and read with
``torch.jit.load``: it builds the model from the archive's TorchScript code and
restricted pickles, and unpickles no Python code (TorchScript ``__setstate__``
methods of the archive do run, as in any ``torch.jit.load``).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import struct
import traceback
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from filterstats._text import plural

__all__ = [
    "LIGHTNING_KEYS",
    "WRAPPER_KEYS",
    "WRAPPER_SEGMENTS",
    "CheckpointError",
    "UnorderedStateDict",
    "is_torchscript_archive",
    "load_state_dict",
    "read_checkpoint",
    "strip_wrapper_prefixes",
    "to_state_dict",
]

logger = logging.getLogger(__name__)

#: Entries that hold the state dict inside a training checkpoint, tried in order (the
#: first that holds tensors wins, nested up to four levels): plain weights before
#: EMA weights. ``"last"`` is how some RobustBench checkpoints store their final weights.
WRAPPER_KEYS: tuple[str, ...] = (
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "network",
    "state_dict_ema",
    "model_ema",
    "ema",
    "last",
)

#: Path segments added by ``DataParallel``/``DistributedDataParallel`` (``module``)
#: and ``torch.compile`` (``_orig_mod``); removed wherever they occur in a name.
WRAPPER_SEGMENTS: tuple[str, ...] = ("module", "_orig_mod")

#: Entries by which a checkpoint written by PyTorch Lightning is recognised.
LIGHTNING_KEYS: tuple[str, ...] = ("pytorch-lightning_version", "lightning_version")

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_PICKLE_MAGIC = b"\x80"
#: safetensors caps its JSON header at 100 MB: a larger size is not a safetensors header.
_SAFETENSORS_MAX_HEADER = 100_000_000
_HTML = re.compile(rb"^\s*(<!doctype|<html|<head|<body|<\?xml|<!--|<meta|<script|<title)", re.I)


class CheckpointError(ValueError):
    """A checkpoint file is missing, not a checkpoint, corrupt, or refused as unsafe."""


class UnorderedStateDict(dict):  # type: ignore[type-arg]
    """A state dict whose key order is not the model's order.

    safetensors files store their tensors sorted by name, so the order in which
    ``torch.save`` would keep a model's layers is lost; depths cannot be taken from
    the position of a key (``extract_filters`` leaves them unknown and says so).
    """


def load_state_dict(
    path: str | os.PathLike[str], *, trust_pickle: bool = False
) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` state dict, safely.

    Reads ``.pt``/``.pth``/``.bin``/``.ckpt`` files written by ``torch.save``
    with ``torch.load(weights_only=True)`` (memory-mapped for the zip format),
    and ``.safetensors`` files with ``safetensors``. The format
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
        checkpoint); a ``torch.jit.ScriptModule`` for a TorchScript archive; with
        ``trust_pickle=True`` possibly a whole module.

    Raises:
        CheckpointError: As [`load_state_dict`][filterstats.checkpoints.load_state_dict].
    """
    file = Path(path)
    kind = _sniff(file)
    if kind == "safetensors":
        import safetensors.torch as safetensors_torch  # a core dependency, imported on use

        try:
            return UnorderedStateDict(safetensors_torch.load_file(str(file), device="cpu"))
        except Exception as error:
            raise CheckpointError(
                f"{file} looks like a safetensors file but cannot be read ({error}); the file is "
                "probably truncated or corrupt: download it again."
            ) from error
    if kind == "zip":
        if _check_zip(file):
            return _jit_load(file)
    return _torch_load(file, mmap=kind == "zip", trust_pickle=trust_pickle)


def to_state_dict(checkpoint: Any, *, source: str = "checkpoint") -> dict[str, Tensor]:
    """Find the state dict inside a loaded checkpoint and clean its keys.

    The rules (the same for files and in-memory dicts):

    1. A module gives its ``state_dict()``; a mapping that holds tensors is the state
       dict; otherwise the first entry of ``WRAPPER_KEYS`` that holds one (nested up
       to four levels).
    2. Every ``module`` / ``_orig_mod`` path segment (``DataParallel``,
       ``torch.compile``) is removed from the keys (``strip_wrapper_prefixes``).
    3. A Lightning checkpoint (it has a ``pytorch-lightning_version`` entry) whose
       tensors all sit under one attribute of the ``LightningModule`` (``model.``,
       ``net.``, ...) loses that first segment, so its names are those of the
       network itself, as a plain ``state_dict()`` of it has them.
    4. Entries that are not tensors (epoch counters, optimiser settings) are dropped.

    Args:
        checkpoint: A state dict, a training checkpoint holding one under one of
            [`WRAPPER_KEYS`][filterstats.checkpoints.WRAPPER_KEYS], or an ``nn.Module``.
        source: Name used in error messages (the file path).

    Returns:
        Tensors by name, wrapper segments stripped.

    Raises:
        CheckpointError: If no tensor is found, or two keys collide after the
            prefixes are stripped.
    """
    found = _unwrap(checkpoint)
    if found is None:
        expected = (
            "Expected a state dict, a mapping of parameter names to tensors "
            "({'conv1.weight': tensor, ...}, as `model.state_dict()` gives), possibly under "
            f"one of {list(WRAPPER_KEYS)}."
        )
        if isinstance(checkpoint, Mapping):
            keys = [str(key) for key in list(checkpoint)[:5]]
            more = f" and {len(checkpoint) - 5} more" if len(checkpoint) > 5 else ""
            kinds = sorted({type(value).__name__ for value in checkpoint.values()})
            found_text = f"a {type(checkpoint).__name__} with no tensors " + (
                f"({plural(len(checkpoint), 'key')}: {', '.join(map(repr, keys))}{more}; "
                f"values: {', '.join(kinds[:5])})"
                if checkpoint
                else "(empty)"
            )
        else:
            found_text = f"it is a {type(checkpoint).__name__}"
        raise CheckpointError(f"{source} holds no state dict: {found_text}. {expected}")
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
                f"{list(WRAPPER_SEGMENTS)} segments are stripped; the file mixes wrapped and "
                "unwrapped weights. Save `model.state_dict()` of the unwrapped model."
            )
        state[name] = value
    if dropped:
        logger.debug(
            "%s: dropped %d non-tensor entries, e.g. %s", source, len(dropped), dropped[:5]
        )
    if isinstance(checkpoint, Mapping) and any(key in checkpoint for key in LIGHTNING_KEYS):
        state = _strip_common_segment(state)
    return UnorderedStateDict(state) if isinstance(found, UnorderedStateDict) else state


def _strip_common_segment(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the first path segment when every key has the same one (and more after it)."""
    heads = {key.partition(".")[0] for key in state}
    if len(heads) != 1 or not all("." in key for key in state):
        return state
    return {key.partition(".")[2]: value for key, value in state.items()}


def strip_wrapper_prefixes(name: str) -> str:
    """Remove every ``module`` and ``_orig_mod`` path segment from a name.

    The one prefix rule of filterstats: applied to state-dict keys and to module
    paths alike, so a wrapped model, its state dict and its checkpoint give the same
    layer names.

    Args:
        name: A state-dict key or module path, e.g. ``"module._orig_mod.conv1.weight"``.

    Returns:
        The name without wrapper segments, e.g. ``"conv1.weight"``.
    """
    parts = [part for part in name.split(".") if part not in WRAPPER_SEGMENTS]
    return ".".join(parts)


def is_torchscript_archive(path: str | os.PathLike[str]) -> bool:
    """Whether a file is a TorchScript archive (``torch.jit.save``), by its content.

    Args:
        path: The file.

    Returns:
        ``True`` for a zip holding ``*/constants.pkl`` and ``*/code/`` entries.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return _torchscript_names(names)


def _torchscript_names(names: list[str]) -> bool:
    tops = {name.split("/", 1)[1] if "/" in name else name for name in names}
    return "constants.pkl" in tops and any(top.startswith("code/") for top in tops)


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
        if head[8:9] == b"{" and header_size < _SAFETENSORS_MAX_HEADER:
            raise CheckpointError(
                f"{file} looks like a truncated or corrupt safetensors file: its header says "
                f"{8 + header_size:,} bytes of metadata, but the whole file has {size:,} bytes. "
                "An interrupted download or copy: download it again."
            )
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


def _check_zip(file: Path) -> bool:
    """Check every member's CRC; return whether the archive is a TorchScript archive."""
    try:
        with zipfile.ZipFile(file) as archive:
            for info in archive.infolist():
                _check_crc(archive, info)
            return _torchscript_names(archive.namelist())
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


_CANNOT_GET = re.compile(r"Can't get attribute '([^']+)' on <module '([^']+)'")


def _pickled_class(error: BaseException) -> str | None:
    """The class a failed unpickling looked for, or ``None`` if ``error`` is not that.

    ``torch.load(weights_only=False)`` imports each class the pickle names by its
    module and name; a missing module gives ``ModuleNotFoundError``, a missing name
    ``AttributeError``, raised from the unpickler's ``find_class``.

    Args:
        error: The exception ``torch.load`` raised.

    Returns:
        ``"module.Name"``, or ``None`` when the error did not come from unpickling.
    """
    frames = traceback.walk_tb(error.__traceback__)
    for frame, _ in frames:
        names = frame.f_locals
        if frame.f_code.co_name == "find_class" and "mod_name" in names and "name" in names:
            return f"{names['mod_name']}.{names['name']}"
    found = _CANNOT_GET.search(str(error))
    if isinstance(error, AttributeError) and found is not None:
        return f"{found.group(2)}.{found.group(1)}"
    return None


def _missing_class_message(file: Path, qualified_name: str) -> str:
    """The one-line error for a trusted pickle whose class cannot be imported.

    Args:
        file: The checkpoint file.
        qualified_name: ``"module.Name"`` of the class the pickle names.

    Returns:
        The message: the class, why it is needed and what to do.
    """
    module = qualified_name.rpartition(".")[0]
    if module == "__main__":
        where = (
            "it was defined in the script that saved the file (`__main__`), so no other "
            "program can import it"
        )
    else:
        where = (
            f"its defining code must be importable here: install the package that provides "
            f"{module!r} or add its folder to PYTHONPATH"
        )
    return (
        f"{file} is a pickled object of class {qualified_name}, which cannot be imported: a "
        f"full pickle stores only the class's import path, and {where}. Better: save "
        "`model.state_dict()` (or a safetensors file), which loads without "
        "`trust_pickle=True` (CLI: --trust-pickle)."
    )


def _jit_load(file: Path) -> Any:
    try:
        return torch.jit.load(str(file), map_location="cpu")  # type: ignore[no-untyped-call]
    except Exception as error:
        raise CheckpointError(
            f"{file} is a TorchScript archive (torch.jit.save) that torch.jit.load cannot "
            f"read ({type(error).__name__}: {_first_line(error)}); it may have been saved by a "
            "newer PyTorch or with custom TorchScript classes that are not registered here."
        ) from error


def _torch_load(file: Path, *, mmap: bool, trust_pickle: bool) -> Any:
    try:
        if trust_pickle:
            logger.warning("loading %s as a full pickle (trust_pickle=True): it can run code", file)
            try:
                return torch.load(file, map_location="cpu", weights_only=False, mmap=mmap)
            except (AttributeError, ImportError) as error:
                missing = _pickled_class(error)
                if missing is None:
                    raise
                raise CheckpointError(_missing_class_message(file, missing)) from error
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
