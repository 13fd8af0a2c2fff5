import contextlib
import io
import logging
import warnings

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import filterstats as fs  # noqa: E402
from filterstats.checkpoints import CheckpointError  # noqa: E402
from filterstats.layers import ROOT_NAME  # noqa: E402
from filterstats.zoo.onnx import extract_onnx_filters  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

EXPORTERS = ("torchscript", "dynamo")
SELECTIONS = [(3, 3), (1, 1), (5, 5), 3, 1, None]


def export(model, path, exporter, example=None, **options):
    """``torch.onnx.export`` by one of torch's two exporters, quietly."""
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    example = torch.randn(1, 3, 16, 16) if example is None else example
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=exporter == "dynamo", **options)
    finally:
        quiet.setLevel(level)
    return path


def conv_paths(model):
    return tuple(
        name for name, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)
    )


def skipped_set(filters):
    return {(s.name, s.reason) for s in filters.skipped}


# --------------------------------------------------------------- the small CNN, both exporters


class Stage(nn.Module):
    """Containers inside a module: the path ``stage.block.0.0`` (as torchvision's blocks)."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU()),  # depthwise
            nn.Conv2d(8, 16, 1),  # pointwise
        )

    def forward(self, x):
        return self.block(x)


class SmallCNN(nn.Module):
    """A 1x1, a 5x5, a grouped and a depthwise conv, a tied pair, a BatchNorm after the stem."""

    def __init__(self, batchnorm=True):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8) if batchnorm else nn.Identity()
        self.stage = Stage()
        self.wide = nn.Conv2d(16, 16, 5, padding=2)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.conv_t = nn.Conv2d(16, 16, 3, padding=1)
        self.conv_u = nn.Conv2d(16, 16, 3, padding=1)
        self.conv_u.weight = self.conv_t.weight  # tied

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = self.grouped(torch.relu(self.wide(self.stage(x))))
        return self.conv_u(torch.relu(self.conv_t(x)))


def small_cnn(batchnorm):
    torch.manual_seed(0)
    net = SmallCNN(batchnorm)
    if batchnorm:
        with torch.no_grad():  # statistics far from (0, 1), so that folding changes the weights
            net.bn.running_mean.uniform_(-1, 1)
            net.bn.running_var.uniform_(0.25, 4)
            net.bn.weight.uniform_(0.5, 2)
            net.bn.bias.uniform_(-1, 1)
    return net.eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """``{(exporter, variant): (model, path)}``, exported once for the module."""
    folder = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(exporter, variant):
        key = (exporter, variant)
        if key not in cache:
            net = small_cnn(batchnorm=variant != "plain")
            options = {}
            if variant == "preserve":
                options["training"] = torch.onnx.TrainingMode.PRESERVE
            path = export(net, folder / f"{exporter}-{variant}.onnx", exporter, **options)
            cache[key] = (net, path)
        return cache[key]

    return get


@pytest.mark.parametrize(
    ("exporter", "variant"),
    [(exporter, variant) for exporter in EXPORTERS for variant in ("folded", "plain")]
    + [("torchscript", "preserve")],  # dynamo folds in either training mode
)
def test_layer_names_are_the_torch_module_paths(exports, exporter, variant):
    net, path = exports(exporter, variant)
    every = extract_onnx_filters(path, kernel_size=None)
    assert every.kernel_size is None
    assert every.order == conv_paths(net)  # graph order is the call order here
    assert {layer.name for layer in every} | {s.name for s in every.skipped} == set(conv_paths(net))
    # tied: both nodes read one initializer (named after either module); named by the node
    assert every["conv_t"].shared_with == ("conv_u",)
    assert "conv_u" not in every.names


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_weights_and_metrics_equal_torch_without_folding(exports, exporter):
    net, path = exports(exporter, "plain")
    from_onnx = extract_onnx_filters(path, kernel_size=None)
    from_torch = fs.extract_filters(net, kernel_size=None)
    assert from_onnx.names == from_torch.names
    modules = dict(net.named_modules())
    for layer in from_onnx:
        module = modules[layer.name]
        torch.testing.assert_close(layer.weight, module.weight.detach(), rtol=0, atol=0)
        assert layer.groups == module.groups
        assert layer.in_channels == module.in_channels
        assert layer.out_channels == module.out_channels
        assert layer.kernel_size == module.kernel_size
        assert layer.stride == module.stride
    ours, theirs = fs.measure(from_onnx), fs.measure(from_torch)
    assert ours.names == theirs.names
    for metric in ("sparsity", "diversity", "diversity_clean", "entropy_raw", "orthogonality"):
        torch.testing.assert_close(
            getattr(ours, metric), getattr(theirs, metric), rtol=0, atol=1e-6
        )
    for metric in ("n_filters", "n_nonsparse", "out_channels"):
        assert torch.equal(getattr(ours, metric), getattr(theirs, metric))


def test_torchscript_preserve_keeps_the_batchnorm_apart(exports):
    net, path = exports("torchscript", "preserve")
    from_onnx = extract_onnx_filters(path, kernel_size=None)
    modules = dict(net.named_modules())
    for layer in from_onnx:
        torch.testing.assert_close(
            layer.weight, modules[layer.name].weight.detach(), rtol=0, atol=0
        )


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_folded_batchnorm_gives_the_inference_weight(exports, exporter):
    net, path = exports(exporter, "folded")
    from_onnx = extract_onnx_filters(path, kernel_size=None)
    # plain float64 fold: w * gamma / sqrt(running_var + eps), per output channel
    bn = net.bn
    w = net.stem.weight.detach().double().numpy()
    factor = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    folded = w * factor[:, None, None, None]
    np.testing.assert_allclose(
        from_onnx["stem"].weight.double().numpy(), folded, rtol=1e-5, atol=1e-6
    )
    assert not np.allclose(folded, w, atol=1e-3)  # the fold is visible
    for layer in from_onnx:
        if layer.name != "stem":
            torch.testing.assert_close(
                layer.weight, dict(net.named_modules())[layer.name].weight.detach(), rtol=0, atol=0
            )


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("variant", ["folded", "plain"])
@pytest.mark.parametrize("selection", SELECTIONS, ids=str)
def test_selected_and_skipped_sets_equal_the_module_door(exports, exporter, variant, selection):
    net, path = exports(exporter, variant)
    from_torch = fs.extract_filters(net, kernel_size=None).select(selection)
    from_onnx = extract_onnx_filters(path, kernel_size=None).select(selection)
    assert from_onnx.names == from_torch.names
    assert skipped_set(from_onnx) == skipped_set(from_torch)
    assert from_onnx.kernel_size == from_torch.kernel_size
    for layer in from_onnx:
        assert layer.shared_with == from_torch[layer.name].shared_with


@pytest.mark.parametrize("selection", SELECTIONS, ids=str)
def test_kernel_size_keyword_is_select_of_every_convolution(exports, selection):
    _, path = exports("torchscript", "plain")
    every = extract_onnx_filters(path, kernel_size=None)
    chosen = extract_onnx_filters(path, kernel_size=selection)
    expected = every.select(selection)
    assert chosen.names == expected.names
    assert [(s.name, s.reason) for s in chosen.skipped] == [
        (s.name, s.reason) for s in expected.skipped
    ]
    assert chosen.kernel_size == expected.kernel_size
    assert chosen.order == every.order


def test_default_selection_is_3x3_with_select_reasons(exports):
    _, path = exports("torchscript", "plain")
    filters = extract_onnx_filters(path)
    assert filters.kernel_size == (3, 3)
    assert filters.names == ("stem", "stage.block.0.0", "grouped", "conv_t")
    assert [(s.name, s.reason) for s in filters.skipped] == [
        ("stage.block.1", "kernel size (1, 1) is not (3, 3)"),
        ("wide", "kernel size (5, 5) is not (3, 3)"),
        ("conv_u", "shares its weight with 'conv_t' (counted once there)"),
    ]
    assert [s.reason for s in extract_onnx_filters(path, kernel_size=3).skipped][:2] == [
        "kernel size (1, 1) is not (3, 3)",
        "kernel size (5, 5) is not (3, 3)",
    ]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_skipped_layers_keep_what_is_known(exports, exporter):
    _, path = exports(exporter, "plain")
    every = extract_onnx_filters(path, kernel_size=None)
    selected = every.select((3, 3))
    skipped = {s.name: s for s in selected.skipped}
    for name in ("stage.block.1", "wide"):
        before, after = every[name], skipped[name]
        assert (after.in_channels, after.out_channels, after.groups, after.kernel_size) == (
            before.in_channels,
            before.out_channels,
            before.groups,
            before.kernel_size,
        )
        assert (after.depth, after.conv_depth, after.conv_depth_norm) == (
            before.depth,
            before.conv_depth,
            before.conv_depth_norm,
        )
        assert after.depth is not None
    shared = skipped["conv_u"]
    assert (shared.in_channels, shared.out_channels, shared.groups, shared.kernel_size) == (
        16,
        16,
        1,
        (3, 3),
    )
    assert shared.conv_depth == every["conv_t"].conv_depth + 1


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_a_convolution_that_is_the_model_is_the_root(tmp_path, exporter):
    conv = nn.Conv2d(3, 4, 3).eval()
    filters = extract_onnx_filters(export(conv, tmp_path / "conv.onnx", exporter))
    assert filters.names == (ROOT_NAME,)
    torch.testing.assert_close(filters[ROOT_NAME].weight, conv.weight.detach(), rtol=0, atol=0)


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.relu(self.conv(x)))


def test_a_module_called_twice_is_one_layer_under_dynamo(tmp_path):
    filters = extract_onnx_filters(export(CalledTwice().eval(), tmp_path / "twice.onnx", "dynamo"))
    assert filters.names == ("conv",)
    assert filters.skipped == ()
    assert filters["conv"].shared_with == ()
    assert filters["conv"].depth == 3  # conv, relu, conv: its deepest call


def test_a_module_called_twice_is_listed_as_sharing_under_torchscript(tmp_path):
    path = export(CalledTwice().eval(), tmp_path / "twice.onnx", "torchscript")
    filters = extract_onnx_filters(path)
    assert filters.names == ("conv",)
    assert skipped_set(filters) == {
        ("conv_1", "shares its weight with 'conv' (counted once there)")
    }


# ------------------------------------------------------------ transposed convolutions, depth


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


@pytest.fixture(scope="module", params=EXPORTERS)
def exported(request, tmp_path_factory):
    torch.manual_seed(0)
    net = Branchy().eval()
    folder = tmp_path_factory.mktemp("branchy")
    return net, export(net, folder / "branchy.onnx", request.param)


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


def test_transposed_orientation_matches_an_equivalent_convolution():
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


# ------------------------------------------------------------------ hand-made graphs


def _save(graph, path, opset=13):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return path


def _graph(nodes, inits, outputs, inputs=None):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])]
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs]
    return helper.make_graph(nodes, "handmade", inputs, outs, initializer=inits)


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
            "Conv",
            ["b", "w_from_input"],
            ["d"],
            name="computed_conv",
            pads=[1, 1, 1, 1],
            kernel_shape=[3, 3],
            group=1,
        ),
        helper.make_node("QuantizeLinear", ["d", "xs", "xz"], ["dq"]),
        helper.make_node(
            "QLinearConv",
            ["dq", "xs", "xz", "qw", "qw_scale", "qw_zero", "ys", "yz"],
            ["e"],
            name="qlinear_conv",
            pads=[1, 1, 1, 1],
        ),
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
        + [helper.make_tensor_value_info("e", TensorProto.UINT8, None)],
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
    # the Identity-aliased weight is the same stored tensor as const_conv's: counted once
    assert "alias_conv" not in filters.names
    assert filters["const_conv"].shared_with == ("alias_conv",)
    skipped = {s.name: s for s in filters.skipped}
    assert skipped["alias_conv"].reason == (
        "shares its weight with 'const_conv' (counted once there)"
    )
    assert skipped["computed_conv"].reason == (
        "weight is computed at run time, not stored in the file"
    )
    # what the attributes tell is kept
    assert skipped["computed_conv"].kernel_size == (3, 3)
    assert skipped["computed_conv"].groups == 1
    assert skipped["computed_conv"].conv_depth == 2
    # depths: const_conv and alias_conv both read the input directly
    assert filters["const_conv"].conv_depth == 0
    assert filters["dequant_conv"].conv_depth == 1


def _conv_integer_graph(q, w_scale, w_zero, *, scale_node=True, cast=True):
    """onnxruntime's dynamic quantisation of a Conv: the pattern of ``quantize_dynamic``."""
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_scale", "x_zero"]),
        helper.make_node(
            "ConvInteger", ["x_q", "w_q", "x_zero", "w_zero"], ["y_int"], name="conv_quant"
        ),
    ]
    if cast:
        nodes.append(helper.make_node("Cast", ["y_int"], ["y_float"], to=TensorProto.FLOAT))
        if scale_node:
            nodes.append(helper.make_node("Mul", ["x_scale", "w_scale"], ["scales"]))
            nodes.append(helper.make_node("Mul", ["y_float", "scales"], ["y"]))
        else:  # rescaled by the activation scale only: the weight scale is not in the graph
            nodes.append(helper.make_node("Mul", ["y_float", "x_scale"], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", ["y_int"], ["y"]))
    inits = [
        numpy_helper.from_array(q, "w_q"),
        numpy_helper.from_array(np.asarray(w_scale, dtype=np.float32), "w_scale"),
        numpy_helper.from_array(np.asarray(w_zero, dtype=q.dtype), "w_zero"),
    ]
    return _graph(nodes, inits, ["y"])


def numpy_dequantize(q, scale, zero):
    # plain per-channel loop, float64
    out = np.empty(q.shape, dtype=np.float64)
    scale, zero = (
        np.broadcast_to(np.ravel(scale), q.shape[:1]),
        np.broadcast_to(np.ravel(zero), q.shape[:1]),
    )
    for c in range(q.shape[0]):
        out[c] = (q[c].astype(np.float64) - float(zero[c])) * float(scale[c])
    return out


@pytest.mark.parametrize(
    ("scale_shape", "zero_per_channel"),
    [((), False), ((1,), False), ((5, 1, 1), False), ((5, 1, 1), True), ((1, 5, 1, 1), True)],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_conv_integer_is_dequantised_with_the_graphs_scale(
    tmp_path, scale_shape, zero_per_channel, dtype
):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    q = rng.integers(info.min, info.max, size=(5, 3, 3, 3), endpoint=True).astype(dtype)
    size = int(np.prod(scale_shape))
    w_scale = rng.uniform(0.001, 0.1, size=size).astype(np.float32).reshape(scale_shape)
    w_zero = (
        rng.integers(info.min // 2, info.max // 2, size=5).astype(dtype)
        if zero_per_channel
        else np.asarray(info.min // 2 + 3, dtype=dtype)
    )
    path = _save(_conv_integer_graph(q, w_scale, w_zero), tmp_path / "int.onnx")
    filters = extract_onnx_filters(path)
    assert filters.names == ("conv_quant",)
    expected = numpy_dequantize(q, w_scale, w_zero)
    np.testing.assert_allclose(filters[0].weight.double().numpy(), expected, rtol=1e-6, atol=1e-7)
    assert filters[0].module_type == "ConvInteger"
    assert filters[0].conv_depth == 0


@pytest.mark.parametrize(("scale_node", "cast"), [(False, True), (True, False)])
def test_conv_integer_without_a_weight_scale_is_skipped_saying_so(tmp_path, scale_node, cast):
    q = np.ones((2, 3, 3, 3), dtype=np.uint8)
    graph = _conv_integer_graph(q, 0.1, 0, scale_node=scale_node, cast=cast)
    filters = extract_onnx_filters(_save(graph, tmp_path / "int.onnx"), kernel_size=None)
    assert filters.names == ()
    (skip,) = filters.skipped
    assert skip.name == "conv_quant"
    assert "weight scale is not in the graph" in skip.reason
    assert "cannot dequantise" in skip.reason


def test_conv_integer_scale_along_the_wrong_axis_is_skipped(tmp_path):
    q = np.ones((5, 3, 3, 3), dtype=np.uint8)
    graph = _conv_integer_graph(q, np.full((5,), 0.1), 0)  # broadcasts along width, not channels
    (skip,) = extract_onnx_filters(_save(graph, tmp_path / "int.onnx")).skipped
    assert "neither per tensor nor per output channel" in skip.reason


def _metadata(node, scopes, classes):
    for key, value in (
        ("pkg.torch.onnx.name_scopes", repr(scopes)),
        ("pkg.torch.onnx.class_hierarchy", repr(classes)),
    ):
        entry = node.metadata_props.add()
        entry.key, entry.value = key, value
    return node


def test_naming_rule_on_handmade_nodes(tmp_path):
    rng = np.random.default_rng(2)
    weights = {
        name: rng.normal(size=(3, 3, 3, 3)).astype(np.float32)
        for name in ("features.1.weight", "onnx::Conv_7", "head.weight", "other.weight", "w9")
    }
    conv = "torch.nn.modules.conv.Conv2d"
    nodes = [
        # 1. dynamo metadata of a conv op: the innermost module path
        _metadata(
            helper.make_node("Conv", ["x", "features.1.weight"], ["a"], name="node_conv2d"),
            ["", "features", "features.1", "conv2d"],
            ["Net", "Sequential", conv, "aten.conv2d.default"],
        ),
        # dynamo metadata of a fused BatchNorm: not the conv's own, the weight's name instead
        _metadata(
            helper.make_node("Conv", ["a", "head.weight"], ["b"], name="node_Conv_3"),
            ["", "bn", "_native_batch_norm_legit_no_training"],
            ["Net", "BatchNorm2d", "aten._native_batch_norm_legit_no_training.default"],
        ),
        # 2. TorchScript scopes, preferred to an anonymous folded weight
        helper.make_node(
            "Conv",
            ["b", "onnx::Conv_7"],
            ["c"],
            name="/features/features.1/block/block.0/block.0.0/Conv",
        ),
        # a name taken by a different weight: the weight's name
        helper.make_node(
            "Conv",
            ["c", "other.weight"],
            ["d"],
            name="/features/features.1/block/block.0/block.0.0/Conv_1",
        ),
        # 4. no module, no weight name: the node name
        helper.make_node("Conv", ["d", "w9"], ["e"], name="custom"),
    ]
    inits = [numpy_helper.from_array(value, name) for name, value in weights.items()]
    path = _save(_graph(nodes, inits, ["e"]), tmp_path / "names.onnx")
    filters = extract_onnx_filters(path)
    assert filters.names == ("features.1", "head", "features.1.block.0.0", "other", "custom")
    torch.testing.assert_close(filters["head"].weight, torch.from_numpy(weights["head.weight"]))


def test_shared_weight_counted_once(tmp_path):
    w = np.ones((2, 2, 3, 3), dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w.weight"], ["a"], name="/first/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w.weight"], ["b"], name="/again/Conv", pads=[1, 1, 1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])]
    graph = _graph(nodes, [numpy_helper.from_array(w, "w.weight")], ["b"], inputs)
    filters = extract_onnx_filters(_save(graph, tmp_path / "shared.onnx"))
    assert filters.names == ("first",)
    assert filters["first"].shared_with == ("again",)
    assert skipped_set(filters) == {
        ("again", "shares its weight with 'first' (counted once there)")
    }
    assert filters.n_filters == 4


def test_one_quantised_weight_behind_two_dequantize_nodes_is_shared(tmp_path):
    q = np.arange(2 * 2 * 9, dtype=np.int8).reshape(2, 2, 3, 3)
    nodes = [
        helper.make_node("DequantizeLinear", ["q", "s"], ["w1"]),
        helper.make_node("DequantizeLinear", ["q", "s"], ["w2"]),
        helper.make_node("Conv", ["x", "w1"], ["a"], name="/one/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w2"], ["b"], name="/two/Conv", pads=[1, 1, 1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])]
    inits = [numpy_helper.from_array(q, "q"), numpy_helper.from_array(np.float32(0.5), "s")]
    filters = extract_onnx_filters(_save(_graph(nodes, inits, ["b"], inputs), tmp_path / "dq.onnx"))
    assert filters.names == ("one",)
    assert skipped_set(filters) == {("two", "shares its weight with 'one' (counted once there)")}
    torch.testing.assert_close(filters["one"].weight, torch.from_numpy(q.astype(np.float32) * 0.5))


@pytest.mark.parametrize("constant", [False, True])
def test_equal_values_in_separate_tensors_follow_the_rule_of_every_door(tmp_path, constant):
    # a tied weight stored twice is shared, as in a state dict; two constant (dead)
    # layers are not one layer
    w = np.ones((2, 2, 3, 3), dtype=np.float32)
    if not constant:
        w = np.random.default_rng(4).normal(size=w.shape).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "a.weight"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "b.weight"], ["b"], pads=[1, 1, 1, 1]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])]
    inits = [numpy_helper.from_array(w, "a.weight"), numpy_helper.from_array(w.copy(), "b.weight")]
    filters = extract_onnx_filters(_save(_graph(nodes, inits, ["b"], inputs), tmp_path / "eq.onnx"))
    state = {"a.weight": torch.from_numpy(w), "b.weight": torch.from_numpy(w.copy())}
    from_state = fs.extract_filters(state)
    assert filters.names == from_state.names
    assert skipped_set(filters) == skipped_set(from_state)
    if constant:
        assert filters.names == ("a", "b")
    else:
        assert skipped_set(filters) == {("b", "shares its weight with 'a' (counted once there)")}
        assert filters["a"].shared_with == ("b",)


def test_half_precision_weights_behind_cast_are_read(tmp_path):
    w = np.random.default_rng(3).normal(size=(4, 3, 3, 3)).astype(np.float16)
    nodes = [
        helper.make_node("Cast", ["conv.weight"], ["w32"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["x", "w32"], ["y"], name="/conv/Conv"),
    ]
    graph = _graph(nodes, [numpy_helper.from_array(w, "conv.weight")], ["y"])
    filters = extract_onnx_filters(_save(graph, tmp_path / "half.onnx"))
    torch.testing.assert_close(filters["conv"].weight, torch.from_numpy(w.astype(np.float32)))


def test_a_constant_that_cannot_be_folded_is_a_skip_not_a_crash(tmp_path):
    w = np.ones((2, 3, 3, 3), dtype=np.float32)
    nodes = [
        helper.make_node("Reshape", ["conv.weight", "bad_shape"], ["w"]),
        helper.make_node("Conv", ["x", "w"], ["y"], name="/conv/Conv", kernel_shape=[3, 3]),
    ]
    inits = [
        numpy_helper.from_array(w, "conv.weight"),
        numpy_helper.from_array(np.array([7, 5], dtype=np.int64), "bad_shape"),
    ]
    filters = extract_onnx_filters(_save(_graph(nodes, inits, ["y"]), tmp_path / "bad.onnx"))
    assert filters.names == ()
    assert skipped_set(filters) == {
        ("conv", "weight is computed at run time, not stored in the file")
    }
    assert filters.skipped[0].kernel_size == (3, 3)


def test_bad_files_and_arguments(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        extract_onnx_filters(tmp_path / "absent.onnx")
    path = tmp_path / "page.onnx"
    path.write_bytes(b"<html>not a model</html>")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        extract_onnx_filters(path)
    with pytest.raises(TypeError, match="kernel_size"):
        extract_onnx_filters(path, kernel_size="3x3")


# ---------------------------------------------------------------- a torchvision export


@pytest.mark.zoo
@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_mobilenet_v3_large_export_selects_as_the_module(tmp_path, exporter):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v3_large().eval()  # random weights: nothing downloaded
    path = export(model, tmp_path / "mnv3.onnx", exporter, example=torch.zeros(1, 3, 224, 224))
    from_torch = fs.extract_filters(model, kernel_size=None)
    from_onnx = extract_onnx_filters(path, kernel_size=None)
    assert from_onnx.order == conv_paths(model)
    for selection in ((3, 3), (5, 5), (1, 1), None):
        ours, theirs = from_onnx.select(selection), from_torch.select(selection)
        assert ours.names == theirs.names
        assert skipped_set(ours) == skipped_set(theirs)
    three = extract_onnx_filters(path)
    counted = sum(
        1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    )
    assert len(three) == counted == len(from_torch.select((3, 3)))
    assert len(three) + len(three.skipped) == len(conv_paths(model))
