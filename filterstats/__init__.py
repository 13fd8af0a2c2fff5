"""filterstats: measure the convolution filters of trained neural networks.

Reproduces the filter analysis of Gavrikov & Keuper, "Adversarial Robustness
through the Lens of Convolutional Filters" (CVPR-W 2022, arXiv:2204.02481):
sparsity, diversity (variance entropy) and orthogonality of every convolution.
"""

from __future__ import annotations

from filterstats import demo
from filterstats._version import __version__
from filterstats._warnings import FilterStatsWarning
from filterstats.analysis import analyze
from filterstats.baseline import InitBaseline, init_baseline
from filterstats.checkpoints import CheckpointError, load_state_dict
from filterstats.compare import Comparison, compare
from filterstats.depth_bins import DepthProfile, assign_depth_bins, depth_bin_labels, depth_profile
from filterstats.distribution import (
    filter_divergence,
    first_layer_response,
    histogram_divergence,
    pca_basis,
)
from filterstats.effective_weights import register_effective_weight
from filterstats.html import report
from filterstats.layers import ConvLayer, FilterSet, SkippedLayer
from filterstats.metrics import (
    LayerMetrics,
    diversity,
    frequency_profile,
    measure,
    orthogonality,
    sparsity,
)
from filterstats.resolve import extract_filters
from filterstats.results import AnalysisParams, FilterReport, LayerRow, read_report
from filterstats.scanning import ScanSummary, open_filters, open_store, scan
from filterstats.spectra import ConvSpectra, conv_spectra
from filterstats.tracking import CSVSink, FilterHistory, FilterTracker, read_history
from filterstats.trajectories import TrajectoryComparison, compare_trajectories, trajectory
from filterstats.zoo.specs import load_model

__all__ = [
    "AnalysisParams",
    "CSVSink",
    "CheckpointError",
    "Comparison",
    "ConvLayer",
    "ConvSpectra",
    "DepthProfile",
    "FilterHistory",
    "FilterReport",
    "FilterSet",
    "FilterStatsWarning",
    "FilterTracker",
    "InitBaseline",
    "LayerMetrics",
    "LayerRow",
    "ScanSummary",
    "SkippedLayer",
    "TrajectoryComparison",
    "__version__",
    "analyze",
    "assign_depth_bins",
    "compare",
    "compare_trajectories",
    "conv_spectra",
    "demo",
    "depth_bin_labels",
    "depth_profile",
    "diversity",
    "extract_filters",
    "filter_divergence",
    "first_layer_response",
    "frequency_profile",
    "histogram_divergence",
    "init_baseline",
    "load_model",
    "load_state_dict",
    "measure",
    "open_filters",
    "open_store",
    "orthogonality",
    "pca_basis",
    "read_history",
    "read_report",
    "register_effective_weight",
    "report",
    "scan",
    "sparsity",
    "trajectory",
]
