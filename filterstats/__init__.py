"""filterstats: measure the convolution filters of trained neural networks.

Reproduces the filter analysis of Gavrikov & Keuper, "Adversarial Robustness
through the Lens of Convolutional Filters" (CVPR-W 2022, arXiv:2204.02481):
sparsity, diversity (variance entropy) and orthogonality of every convolution.
"""

from __future__ import annotations

from filterstats._warnings import FilterStatsWarning
from filterstats.analysis import analyze
from filterstats.compare import Comparison, compare
from filterstats.depth_bins import DepthProfile, assign_depth_bins, depth_bin_labels, depth_profile
from filterstats.distribution import (
    filter_divergence,
    first_layer_response,
    histogram_divergence,
    pca_basis,
)
from filterstats.extract import extract_filters, register_effective_weight
from filterstats.html import report
from filterstats.layers import ConvLayer, FilterSet, SkippedLayer
from filterstats.metrics import LayerMetrics, diversity, measure, orthogonality, sparsity
from filterstats.results import AnalysisParams, FilterReport, LayerRow, read_report

__version__ = "0.1.0.dev0"

__all__ = [
    "AnalysisParams",
    "Comparison",
    "ConvLayer",
    "DepthProfile",
    "FilterReport",
    "FilterSet",
    "FilterStatsWarning",
    "LayerMetrics",
    "LayerRow",
    "SkippedLayer",
    "__version__",
    "analyze",
    "assign_depth_bins",
    "compare",
    "depth_bin_labels",
    "depth_profile",
    "diversity",
    "extract_filters",
    "filter_divergence",
    "first_layer_response",
    "histogram_divergence",
    "measure",
    "orthogonality",
    "pca_basis",
    "read_report",
    "register_effective_weight",
    "report",
    "sparsity",
]
