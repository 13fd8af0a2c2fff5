"""What makes a stored model result valid: the spec, its weights, the settings.

A model is skipped by a re-run only when its stored key equals the key the
re-run would write. The key is a hash of:

- the spec string, exactly as given;
- a fingerprint of the weights file(s) the spec names: by default the file's
  size and modification time in nanoseconds (``fingerprint="stat"``: cheap, and
  changes whenever the file is rewritten), or the SHA-256 of its bytes
  (``fingerprint="sha256"``: survives copies that reset the time, reads every
  byte). Specs without a local file (``demo:``, ``timm:NAME`` from the cache)
  are keyed by name and library version only;
- the filterstats version and the table schema version;
- the analysis settings that change the numbers (kernel size, ``eps``,
  ``definition``, ``normalize``, ``nan_policy``, ``depth``).

``device`` and ``example_inputs`` are not part of the key: they do not change
what is measured.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

__all__ = ["FINGERPRINTS", "fingerprint", "model_key", "spec_files"]

#: Ways to fingerprint a weights file.
FINGERPRINTS: tuple[str, ...] = ("stat", "sha256")


def spec_files(spec: str) -> list[Path]:
    """Local files whose content a spec depends on.

    Args:
        spec: A model spec (``"ckpt.pt"``, ``"timm:NAME@FILE"``,
            ``"robustbench:DATASET/THREAT/NAME@DIR"``, ...).

    Returns:
        Existing files, possibly none (missing files are left to the loader,
        whose error is then recorded).
    """
    candidates = [Path(spec)]
    scheme, colon, rest = spec.partition(":")
    if colon and len(scheme) > 1:
        name, _, location = rest.partition("@")
        if location:
            candidates.append(Path(location))
        if scheme == "robustbench":
            parts = name.split("/")
            if len(parts) == 3:
                dataset, threat, model = parts
                candidates.append(Path(location or "models") / dataset / threat / f"{model}.pt")
    return [path for path in candidates if path.is_file()]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(spec: str, *, method: str = "stat") -> str:
    """A short text that changes when the weights behind ``spec`` change.

    Args:
        spec: A model spec.
        method: ``"stat"`` (size and modification time) or ``"sha256"`` (content).

    Returns:
        ``"path:size:mtime_ns"`` or ``"path:sha256"`` per file, ``;``-joined;
        ``""`` when the spec names no local file.
    """
    if method not in FINGERPRINTS:
        raise ValueError(f"`fingerprint` must be one of {FINGERPRINTS}, got {method!r}.")
    parts = []
    for path in spec_files(spec):
        if method == "sha256":
            parts.append(f"{path.name}:{_sha256(path)}")
        else:
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return ";".join(parts)


def model_key(spec: str, weights: str, settings: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Hash of everything that decides a model's stored rows.

    Args:
        spec: The model spec.
        weights: Its [`fingerprint`][filterstats.scanning.keys.fingerprint].
        settings: Analysis settings and versions (JSON-serialisable).

    Returns:
        ``(key, fields)``: a 16-hex-digit key and the fields it hashes.
    """
    fields = {"spec": spec, "weights": weights, **settings}
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], fields
