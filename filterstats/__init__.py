"""filterstats: measure the convolution filters of trained neural networks.

Reproduces the filter analysis of Gavrikov & Keuper, "Adversarial Robustness
through the Lens of Convolutional Filters" (CVPR-W 2022, arXiv:2204.02481):
sparsity, diversity (variance entropy) and orthogonality of every convolution.
"""

from __future__ import annotations

from filterstats import demo
from filterstats._warnings import FilterStatsWarning
from filterstats.analysis import analyze
from filterstats.checkpoints import CheckpointError, load_state_dict
from filterstats.extract import extract_filters, register_effective_weight
from filterstats.layers import ConvLayer, FilterSet, SkippedLayer
from filterstats.metrics import LayerMetrics, diversity, measure, orthogonality, sparsity
from filterstats.results import AnalysisParams, FilterReport, LayerRow, read_report
from filterstats.zoo.specs import load_model

__version__ = "0.1.0.dev0"

__all__ = [
    "AnalysisParams",
    "CheckpointError",
    "ConvLayer",
    "FilterReport",
    "FilterSet",
    "FilterStatsWarning",
    "LayerMetrics",
    "LayerRow",
    "SkippedLayer",
    "__version__",
    "analyze",
    "demo",
    "diversity",
    "extract_filters",
    "load_model",
    "load_state_dict",
    "measure",
    "orthogonality",
    "read_report",
    "register_effective_weight",
    "sparsity",
]
