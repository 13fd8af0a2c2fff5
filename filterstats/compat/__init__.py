"""Drop-in replacements for the authors' earlier tools.

* [`filterstats.compat.torchconvquality`][filterstats.compat.torchconvquality]: the
  functions of the torchconvquality package (Gavrikov & Keuper, 0.3.0) with its
  signatures and its output dicts, computed by filterstats in one batched pass.
  Existing code switches by changing one import::

      # from torchconvquality import measure_quality
      from filterstats.compat.torchconvquality import measure_quality

Nothing here imports the original packages.
"""

from __future__ import annotations

__all__: list[str] = []
