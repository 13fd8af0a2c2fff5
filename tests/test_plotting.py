from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import filterstats as fs

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from filterstats import plotting  # noqa: E402


def make_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), *[nn.Conv2d(8, 8, 3) for _ in range(5)])


@pytest.fixture(scope="module")
def nets():
    return [make_net(k) for k in range(4)]


def pixels(fig) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(float)


def assert_drawn(fig, name=""):
    """Non-blank: pixel variance, and coloured (data) pixels beyond black text on white."""
    image = pixels(fig)
    assert image.std() > 5, name
    colourful = (image.max(axis=2) - image.min(axis=2)) > 40
    assert colourful.mean() > 0.003, name


def test_every_figure_is_drawn_and_saved(nets, tmp_path):
    cmp = fs.compare(nets[:2], nets[2:], n_boot=50)
    basis = fs.pca_basis(nets)
    coefficients = {"robust": fs.distribution.filter_coefficients(nets[:2], basis),
                    "normal": fs.distribution.filter_coefficients(nets[2:], basis)}  # fmt: skip
    response = fs.first_layer_response(nets[0], torch.rand(3, 12, 12), torch.rand(3, 12, 12))
    figures = {
        "grid": plotting.plot_metric_grid({"cifar10": cmp, "cifar100": cmp}),
        "comparison": cmp.plot(),
        "pair": fs.compare(nets[0], nets[1], n_boot=10).plot(),
        "boxes": plotting.plot_depth_boxes(cmp, "orthogonality").figure,
        "depth": plotting.plot_metric_vs_depth(fs.analyze(nets[0])).figure,
        "basis": plotting.plot_pca_basis(basis).figure,
        "cumulative": plotting.plot_cumulative_variance({"all": basis}).figure,
        "ridge": plotting.plot_ridge(coefficients, max_points=1000).figure,
        "divergence": plotting.plot_divergence(fs.filter_divergence(nets[:2], nets[2:])).figure,
        "filters": plotting.plot_filters(nets[0]).figure,
        "rgb": plotting.plot_rgb_filters(nets[0]).figure,
        "response": plotting.plot_first_layer_response(response),
    }
    for name, fig in figures.items():
        assert_drawn(fig, name)
    for suffix in ("png", "svg", "pdf"):
        path = tmp_path / f"grid.{suffix}"
        figures["grid"].savefig(path)
        assert path.stat().st_size > 1000
    assert plt.get_fignums() == []  # nothing leaked into pyplot


def test_functions_draw_on_a_given_axes(nets):
    fig, ax = plt.subplots()
    try:
        assert plotting.plot_filters(nets[0], ax=ax) is ax
        assert len(ax.images) == 1
        image = ax.images[0].get_array()
        assert np.nanmax(np.abs(image)) == pytest.approx(1.0)  # shared symmetric scale
        assert image.shape[1] == 32 * 4 - 1  # the first 32 kernels, one-pixel gaps
    finally:
        plt.close(fig)


def test_divergence_bar_is_missing_for_nan_bins(nets):
    stem = nn.Sequential(nn.Conv2d(3, 8, 7), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3))
    result = fs.filter_divergence(stem, nets[0])
    ax = plotting.plot_divergence(result)
    bars = ax.patches
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert not bars[labels.index("first")].get_visible()
    assert any(t.get_text() == "n/a" for t in ax.texts)
