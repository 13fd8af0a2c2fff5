import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from filterstats.checkpoints import CheckpointError  # noqa: E402
from filterstats.zoo.onnx import extract_onnx_filters  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class Branchy(nn.Module):
    """Dense, depthwise, pointwise, grouped, parallel and transposed convolutions."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.branch = nn.Conv2d(8, 16, 3, padding=1, groups=2, stride=1)
        self.down = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 6, 3, stride=2, groups=2)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = self.pw(torch.relu(self.dw(x))) + self.branch(x)
        return self.up(torch.relu(self.down(y)))


# Longest node path from the input (stem=0 ... up): stem, relu, dw, relu, pw, add, down, relu, up.
# branch sits beside dw; so the distinct conv depths are stem < {dw, branch} < pw < down < up.
EXPECTED_CONV_DEPTH = {"stem": 0, "dw": 1, "branch": 1, "pw": 2, "down": 3, "up": 4}


def torch_weight(module):
    weight = module.weight.detach()
    if isinstance(module, nn.ConvTranspose2d):
        g = module.groups
        c_in, c_out_g, *k = weight.shape
        weight = (
            weight.reshape(g, c_in // g, c_out_g, *k)
            .transpose(1, 2)
            .reshape(g * c_out_g, c_in // g, *k)
        )
    return weight


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    net = Branchy().eval()
    path = tmp_path / "branchy.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False)
    return net, path


def test_exported_model_gives_the_torch_layers(exported):
    net, path = exported
    filters = extract_onnx_filters(path, kernel_size=None)
    assert filters.depth_method == "onnx"
    assert set(filters.names) == set(EXPECTED_CONV_DEPTH)
    for layer in filters:
        module = getattr(net, layer.name)
        torch.testing.assert_close(layer.weight, torch_weight(module), rtol=0, atol=0)
        assert layer.groups == module.groups
        assert layer.stride == module.stride
        assert layer.transposed == isinstance(module, nn.ConvTranspose2d)
        assert layer.out_channels == module.out_channels
        assert layer.in_channels == module.in_channels
        assert layer.conv_depth == EXPECTED_CONV_DEPTH[layer.name]
        assert layer.conv_depth_norm == pytest.approx(EXPECTED_CONV_DEPTH[layer.name] / 4)


def test_transposed_orientation_matches_an_equivalent_convolution(exported):
    # A stride-1 transposed conv equals a conv with the flipped, out x in weight.
    net = nn.ConvTranspose2d(4, 6, 3, groups=2).eval()
    x = torch.randn(1, 4, 5, 5)
    w = torch_weight(net).flip(-1, -2)
    reference = torch.nn.functional.conv2d(x, w, net.bias, padding=2, groups=2)
    torch.testing.assert_close(net(x), reference)


def test_kernel_size_selection_lists_skips(exported):
    _, path = exported
    filters = extract_onnx_filters(path)
    assert "pw" not in filters.names
    assert [(s.name, s.reason) for s in filters.skipped] == [
        ("pw", "kernel size (1, 1) is not (3, 3)")
    ]
    assert len(filters) + len(filters.skipped) == 6
    # conv_depth is ranked over every conv, selected or not
    assert filters["down"].conv_depth == 3


def test_exported_model_metrics_equal_torch(exported):
    fs = pytest.importorskip("filterstats")
    if not hasattr(fs, "extract_filters"):
        pytest.skip("core extract_filters not available yet")
    net, path = exported
    from_onnx = extract_onnx_filters(path, kernel_size=None)
    from_torch = fs.extract_filters(net, kernel_size=None)
    assert set(from_onnx.names) == set(from_torch.names)
    for layer in from_torch:
        other = from_onnx[layer.name]
        torch.testing.assert_close(other.weight, layer.weight, rtol=0, atol=0)
        assert other.conv_depth == layer.conv_depth
        assert other.conv_depth_norm == pytest.approx(layer.conv_depth_norm)
    ordered = [from_onnx[name] for name in from_torch.names]
    for metric in (fs.sparsity, fs.orthogonality):
        torch.testing.assert_close(metric([layer.weight for layer in ordered]), metric(from_torch))


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def test_constant_nodes_quantised_and_computed_weights(tmp_path):
    rng = np.random.default_rng(0)
    w_const = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    q = rng.integers(-128, 127, size=(5, 4, 3, 3)).astype(np.int8)
    scale = np.array([0.1, 0.2, 0.3, 0.4, 0.5], dtype=np.float32)
    zero = np.array([0, 1, -2, 3, 0], dtype=np.int8)
    qw = rng.integers(0, 255, size=(2, 5, 3, 3)).astype(np.uint8)
    qw_scale = np.float32(0.05)
    qw_zero = np.uint8(128)

    nodes = [
        helper.make_node("Constant", [], ["w_const"], value=numpy_helper.from_array(w_const)),
        helper.make_node("Conv", ["x", "w_const"], ["a"], name="const_conv", pads=[1, 1, 1, 1]),
        helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zero"], ["w_deq"], axis=0),
        helper.make_node("Conv", ["a", "w_deq"], ["b"], name="dequant_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["w_deq", "two"], ["w_dyn_const"]),
        helper.make_node("Identity", ["w_const"], ["w_alias"]),
        helper.make_node("Conv", ["x", "w_alias"], ["c"], name="alias_conv", pads=[1, 1, 1, 1]),
        helper.make_node(
            "Conv", ["b", "w_from_input"], ["d"], name="computed_conv", pads=[1, 1, 1, 1]
        ),
        helper.make_node("QuantizeLinear", ["d", "xs", "xz"], ["dq"]),
        helper.make_node(
            "QLinearConv",
            ["dq", "xs", "xz", "qw", "qw_scale", "qw_zero", "ys", "yz"],
            ["e"],
            name="qlinear_conv",
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("ConvInteger", ["dq", "qw", "xz", "qw_zero"], ["f"], name="int_conv"),
    ]
    inits = [
        numpy_helper.from_array(q, "q"),
        numpy_helper.from_array(scale, "q_scale"),
        numpy_helper.from_array(zero, "q_zero"),
        numpy_helper.from_array(np.float32(2.0), "two"),
        numpy_helper.from_array(qw, "qw"),
        numpy_helper.from_array(np.array(qw_scale), "qw_scale"),
        numpy_helper.from_array(np.array(qw_zero), "qw_zero"),
        numpy_helper.from_array(np.float32(0.1), "xs"),
        numpy_helper.from_array(np.uint8(128), "xz"),
        numpy_helper.from_array(np.float32(0.1), "ys"),
        numpy_helper.from_array(np.uint8(128), "yz"),
    ]
    graph = helper.make_graph(
        nodes,
        "handmade",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("w_from_input", TensorProto.FLOAT, [5, 5, 3, 3]),
        ],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
            for name in ("c", "w_dyn_const")
        ]
        + [helper.make_tensor_value_info(name, TensorProto.UINT8, None) for name in ("e",)]
        + [helper.make_tensor_value_info("f", TensorProto.INT32, None)],
        initializer=inits,
    )
    path = _save(graph, tmp_path / "handmade.onnx")
    filters = extract_onnx_filters(path)

    torch.testing.assert_close(
        filters["const_conv"].weight, torch.from_numpy(w_const), rtol=0, atol=0
    )
    expected = (q.astype(np.float64) - zero[:, None, None, None]) * scale[:, None, None, None]
    torch.testing.assert_close(
        filters["dequant_conv"].weight, torch.from_numpy(expected.astype(np.float32))
    )
    expected_q = (qw.astype(np.float64) - 128) * 0.05
    torch.testing.assert_close(
        filters["qlinear_conv"].weight, torch.from_numpy(expected_q.astype(np.float32))
    )
    # the Identity-aliased weight is the same tensor as const_conv's: listed once
    assert "alias_conv" not in filters.names
    assert filters["const_conv"].weight.shape == (4, 3, 3, 3)
    reasons = {s.name: s.reason for s in filters.skipped}
    assert "computed at run time" in reasons["computed_conv"]
    assert "ConvInteger" in reasons["int_conv"]
    # depths: const_conv and alias_conv both read the input directly
    assert filters["const_conv"].conv_depth == 0
    assert filters["dequant_conv"].conv_depth == 1


def test_shared_weight_counted_once(tmp_path):
    w = np.ones((2, 2, 3, 3), dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w.weight"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w.weight"], ["b"], name="again", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "w.weight")],
    )
    filters = extract_onnx_filters(_save(graph, tmp_path / "shared.onnx"))
    assert filters.names == ("w",)
    assert filters["w"].shared_with == ("w",)
    assert filters.n_filters == 4


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        extract_onnx_filters(tmp_path / "absent.onnx")
    path = tmp_path / "page.onnx"
    path.write_bytes(b"<html>not a model</html>")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        extract_onnx_filters(path)
