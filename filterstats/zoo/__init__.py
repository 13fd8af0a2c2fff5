"""Model sources: RobustBench, timm, ONNX files, model specs and the paper's catalog.

Submodules import their extra only when used: ``robustbench`` (extra
``filterstats[robustbench]``), ``timm`` (``filterstats[timm]``), ``onnx``
(``filterstats[onnx]``); ``catalog`` and ``specs`` need only torch.
"""
