"""Spectra of convolutions as linear operators: singular values, spectral norms, bounds.

Adversarial robustness is about how much a layer can amplify a small change of its
input: the operator (spectral) norm ``||A||_2`` of the convolution at its real input
size, which the statistics of the 3x3 kernels do not see.
[`conv_spectra`][filterstats.spectra.conv_spectra] finds every convolution's input size
from one shape pass of the model and computes, per layer:

- the spectral norm (a certified upper bound within a stated tolerance: Cholesky
  certificates of the per-frequency Gram matrices, or the Gram iteration of Delattre
  et al., ICML 2023, with ``norm_method="gram"``), or all singular values (Sedghi,
  Gupta & Long, ICLR 2019) with ``singular_values=True``;
- exact values where the operator is (block-)circulant: circular padding with a
  stride that divides the input (a polyphase reshaping), and convolutions without
  padding whose kernel is no longer than the stride (1x1, patch embeddings);
- an upper bound otherwise (zero, reflect or replicate padding): the operator is a
  restriction of a circular convolution on a larger grid, and its norm is at most that
  one's; the table says which (``method``) and, for bounds, gives a certified lower
  bound from a test input (``spectral_norm_lower``).

The formulas and their padding/stride conditions are on the documentation's Metrics
page ("Spectra of the convolution operators").
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from filterstats import _spectral
from filterstats._checks import check_choice
from filterstats._files import atomic_write_text
from filterstats._modes import eval_mode
from filterstats._progress import progress_bar
from filterstats._tables import RowTable, csv_value, json_value
from filterstats._text import fmt, plural, render_table
from filterstats._warnings import FilterStatsWarning
from filterstats.extract import conv_modules
from filterstats.layers import ConvLayer
from filterstats.resolve import extract_filters, runnable_module

__all__ = [
    "SCHEMA_VERSION",
    "ConvSpectra",
    "SpectraParams",
    "SpectrumRow",
    "conv_spectra",
]

logger = logging.getLogger(__name__)

#: Version of the exported table layout; bumped on any change of columns or meaning.
SCHEMA_VERSION = 1

#: What ``spectral_norm`` is, recorded in every export.
DEFINITION = (
    "operator 2-norm of each convolution at its input size (bias excluded): exact or a "
    "certified upper bound, see method"
)

Padding = Literal["model", "circular"]
NormMethod = Literal["certificate", "gram"]

# The most matrices' worth of work memory per batch (bytes), by default.
DEFAULT_MAX_MEMORY = 256 * 2**20
# Frequencies per layer iterated first, to find the layer's lower bound.
_LEADING_FREQUENCIES = 4
# Lanczos steps at every frequency (ranking) and at the leading ones (certificate method).
_RANKING_STEPS = 8
_LANCZOS_STEPS = 32
# Gram matrices up to this size get all their eigenvalues at once.
_DIRECT_SIZE = 32


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class SpectrumRow:
    """One convolution of one model: its operator's geometry and spectrum.

    Attributes:
        layer: Full module path.
        module_type: Class name of the module.
        status: ``"ok"`` (computed) or ``"skipped"``.
        reason: Why it was skipped; empty when computed.
        conv_depth_norm: Normalised conv depth (0 first, 1 last); NaN when unknown.
        input_size: Spatial input size of the operator, e.g. ``"32x32"`` (for a
            transposed convolution: of the convolution it is the adjoint of, i.e. the
            module's output size).
        output_size: Spatial output size of that operator.
        in_channels: Input channels of the module.
        out_channels: Output channels of the module.
        groups: Convolution groups.
        kernel_size: Kernel size as text, ``"3x3"``.
        stride: Stride as text, ``"1x1"``.
        dilation: Dilation as text, ``"1x1"``.
        padding: Padding as text, ``"top,bottom,left,right"``.
        padding_mode: The module's padding mode (``"zeros"``, ``"circular"``, ...).
        operator_padding: Padding of the operator analysed: the module's, or
            ``"circular"`` under ``padding="circular"``.
        transposed: Whether the module is a transposed convolution (its operator is the
            adjoint of a convolution; same singular values).
        method: ``"exact-circular"``, ``"exact-circular-polyphase"``, ``"exact-patch"``
            or ``"bound-embedding"`` (see the Metrics page).
        grid: Size of the circular grid the transfer matrices live on, ``"34x34"``.
        spectral_norm: ``||A||_2``: exact (``singular_values=True`` and an exact
            method), within ``tol`` above the exact value (Gram iteration, exact
            method), or an upper bound (``bound-*``).
        spectral_norm_lower: A certified lower bound of ``||A||_2``; NaN when none.
        sigma_min: Smallest singular value; NaN unless all singular values were
            computed for an exact method.
        stable_rank: ``||A||_F^2 / spectral_norm^2`` (a lower bound of the stable rank
            when ``spectral_norm`` is an upper bound); NaN for a zero operator.
        condition_number: ``spectral_norm / sigma_min``; inf when ``sigma_min`` is 0
            (and the norm is not), NaN when unknown or for a zero operator.
        frobenius_norm: ``||A||_F`` of the operator, exact for every method.
        n_singular_values: ``min(rows, columns)`` of the operator's matrix.
        gram_steps: Work of the slowest frequency. ``norm_method="certificate"``: 0
            (settled by the trace), 1 (certified below ``(1 + tol / 8)`` times the
            lower bound), 2 (below ``(1 + tol)`` times it), 3 (eigensolver).
            ``norm_method="gram"``: Gram steps (``max_steps + 1``: eigensolver).
    """

    layer: str
    module_type: str
    status: str = "ok"
    reason: str = ""
    conv_depth_norm: float = math.nan
    input_size: str = ""
    output_size: str = ""
    in_channels: int = 0
    out_channels: int = 0
    groups: int = 0
    kernel_size: str = ""
    stride: str = ""
    dilation: str = ""
    padding: str = ""
    padding_mode: str = ""
    operator_padding: str = ""
    transposed: bool = False
    method: str = ""
    grid: str = ""
    spectral_norm: float = math.nan
    spectral_norm_lower: float = math.nan
    sigma_min: float = math.nan
    stable_rank: float = math.nan
    condition_number: float = math.nan
    frobenius_norm: float = math.nan
    n_singular_values: int = 0
    gram_steps: int = 0


#: Column names of the table, in order.
COLUMNS = tuple(f.name for f in fields(SpectrumRow))


@dataclass(frozen=True)
class SpectraParams:
    """How a [`ConvSpectra`][filterstats.spectra.ConvSpectra] was computed.

    Attributes:
        definition: What ``spectral_norm`` is.
        input_size: Model input size without the batch, ``"3x32x32"``.
        padding: ``"model"`` (each module's padding) or ``"circular"`` (assumed).
        singular_values: Whether all singular values were computed.
        norm_method: How spectral norms were certified without all singular values:
            ``"certificate"`` (Cholesky certificates of the Gram matrices, float64) or
            ``"gram"`` (the Gram iteration).
        tol: Relative tolerance of the certified bracket.
        max_steps: Gram steps per frequency before the eigensolver settles the rest
            (``norm_method="gram"``).
        dtype: Floating dtype of the computation (of the singular values and of the
            Gram iteration; the certificates are float64).
        shape_pass: How input sizes were found: ``"fake"`` (fake tensors, nothing
            computed) or ``"forward"`` (one forward pass on zeros).
        depth_method: How conv depths were obtained.
        source: Model class name.
        version: filterstats version.
        schema_version: Table layout version.
    """

    definition: str = DEFINITION
    input_size: str = ""
    padding: str = "model"
    singular_values: bool = False
    norm_method: str = "certificate"
    tol: float = 1e-3
    max_steps: int = 6
    dtype: str = "float64"
    shape_pass: str = ""
    depth_method: str = ""
    source: str = ""
    version: str = ""
    schema_version: int = SCHEMA_VERSION


@dataclass(frozen=True, eq=False)
class _Operator:
    """Everything needed to (re)compute one layer's spectrum."""

    name: str
    weight: Tensor  # (c_out, c_in / groups, k_h, k_w), operator orientation, the model's dtype
    weight_version: int
    device: torch.device | None  # where to compute; None: the weight's device
    groups: int
    geometry: _spectral.Geometry
    plan: _spectral.Plan
    mode: str  # padding mode of the operator analysed


@dataclass(frozen=True)
class _Spectrum:
    """Singular values of one layer, compact: distinct frequencies with multiplicities."""

    values: Tensor  # (F, g, r) float64, CPU
    weights: Tensor  # (F,) float64
    total: int  # min(rows, columns) of the operator


# ------------------------------------------------------------------------- result


@dataclass(frozen=True, eq=False)
class ConvSpectra(RowTable, Sequence[SpectrumRow]):
    """The spectrum of every convolution of a model, as an operator at its input size.

    A read-only sequence of [`SpectrumRow`][filterstats.spectra.SpectrumRow]: computed
    layers in model order, then the skipped ones with their reasons. Holds results
    only: printing formats them, nothing is computed.

    Attributes:
        rows: One row per convolution.
        params: How it was computed (exported with every table).
    """

    rows: tuple[SpectrumRow, ...]
    params: SpectraParams = field(default_factory=SpectraParams)
    _operators: Mapping[str, _Operator] = field(default_factory=dict, repr=False)
    _kept: Mapping[str, _Spectrum] = field(default_factory=dict, repr=False)
    _row_type = SpectrumRow

    def __getitem__(self, key: int | str) -> SpectrumRow:  # type: ignore[override]
        if isinstance(key, str):
            for row in self.rows:
                if row.layer == key:
                    return row
            raise KeyError(f"no layer named {key!r}; layers: {[r.layer for r in self.rows][:8]}")
        return self.rows[key]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[SpectrumRow]:
        return iter(self.rows)

    @property
    def computed(self) -> tuple[SpectrumRow, ...]:
        """Rows of the computed layers (``status == "ok"``)."""
        return tuple(row for row in self.rows if row.status == "ok")

    @property
    def skipped(self) -> tuple[SpectrumRow, ...]:
        """Rows of the skipped convolutions, with their ``reason``."""
        return tuple(row for row in self.rows if row.status != "ok")

    def lipschitz_product(self) -> float:
        """Product of the layers' spectral norms: a Lipschitz bound of their chain.

        It bounds the Lipschitz constant (in the 2-norm) of the composition of the
        computed convolutions in sequence with 1-Lipschitz activations between them
        (ReLU, ...). It is not a bound of a network with other layers (batch norm,
        linear layers, pooling) or of a residual network, whose blocks compose as
        ``x + f(x)`` (Lipschitz constant at most ``1 + Lip(f)``). Exact when every
        factor is; an upper bound otherwise.

        Returns:
            The product; ``nan`` (with a ``FilterStatsWarning`` naming them) when a
            convolution was skipped or none was computed: a product that leaves out
            layers bounds nothing of the model.
        """
        if self.skipped or not self.computed:
            missing = ", ".join(f"{r.layer!r} ({r.reason})" for r in self.skipped[:3])
            more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            reason = f"skipped: {missing}{more}" if self.skipped else "no layer was computed"
            warnings.warn(
                f"lipschitz_product is nan: {reason}; the product of the other layers' "
                "norms would bound no part of the model.",
                FilterStatsWarning,
                stacklevel=2,
            )
            return math.nan
        return math.prod(row.spectral_norm for row in self.computed)

    def singular_values(self, layer: str, *, surrogate: bool = False) -> Tensor:
        """All singular values of one layer's operator, in descending order.

        Kept from the computation when ``conv_spectra(..., singular_values=True)``
        (memory: 8 bytes per singular value); otherwise recomputed now for this one
        layer, from the module's weights as they are now (an error if they changed
        in place since).

        Args:
            layer: Layer name, as in the table.
            surrogate: For a ``bound-*`` layer, return the singular values of the
                circular convolution that bounds it (the row's ``grid``), which are
                not the layer's. Without it such a layer raises.

        Returns:
            ``(n,)`` float64 tensor on the CPU, ``n = n_singular_values`` (exact
            layers; zeros included) or the surrogate's count.

        Raises:
            KeyError: If no computed layer has that name.
            ValueError: For a ``bound-*`` layer without ``surrogate=True``, or if the
                weights changed since the spectra were computed.
        """
        operator = self._operators.get(layer)
        if operator is None:
            names = [r.layer for r in self.computed][:8]
            raise KeyError(f"no computed layer named {layer!r}; computed: {names}")
        if not operator.plan.exact and not surrogate:
            raise ValueError(
                f"layer {layer!r} has method {operator.plan.method!r}: only a bound of its "
                "spectral norm is known, not its singular values. Pass surrogate=True for the "
                f"singular values of the bounding circular convolution (grid "
                f"{_text(operator.plan.grid)}), or padding='circular' to analyse the circular "
                "version of the layer."
            )
        spectrum = self._kept.get(layer)
        if spectrum is None:
            if operator.weight._version != operator.weight_version:
                raise ValueError(
                    f"the weights of {layer!r} changed since conv_spectra ran; call "
                    "conv_spectra again (or pass singular_values=True to keep the values)."
                )
            dtype = getattr(torch, self.params.dtype)
            values = _singular_values_of([operator], dtype=dtype).spectra[0]
            spectrum = _Spectrum(values, _group_weights(operator), _operator_count(operator))
        return _expand(spectrum, exact=operator.plan.exact)

    # ---------------------------------------------------------------- exports
    def to_csv(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write (or return) the table as CSV, parameters in a leading comment line.

        Args:
            path: File to write (atomically); ``None`` returns the text only.

        Returns:
            The CSV text.
        """
        buffer = io.StringIO()
        buffer.write("# filterstats " + json.dumps(asdict(self.params), sort_keys=True) + "\n")
        writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        for record in self.to_records():
            writer.writerow({key: csv_value(value) for key, value in record.items()})
        text = buffer.getvalue()
        if path is not None:
            atomic_write_text(path, text, example="table.csv")
        return text

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write (or return) ``{"filterstats": params, "rows": [...]}`` as JSON.

        NaN and infinity are written as ``null``.

        Args:
            path: File to write (atomically); ``None`` returns the text only.

        Returns:
            The JSON text.
        """
        payload = {
            "filterstats": asdict(self.params),
            "rows": [{k: json_value(v) for k, v in r.items()} for r in self.to_records()],
        }
        text = json.dumps(payload, indent=1, allow_nan=False)
        if path is not None:
            atomic_write_text(path, text, example="table.json")
        return text

    def to_pandas(self) -> Any:
        """Rows as a pandas DataFrame; ``df.attrs["filterstats"]`` holds the parameters.

        Returns:
            A ``pandas.DataFrame`` with the columns of ``SpectrumRow``.
        """
        frame = super().to_pandas()
        frame.attrs["filterstats"] = asdict(self.params)
        return frame

    # ---------------------------------------------------------------- display
    def __repr__(self) -> str:
        return self.table()

    def table(self, *, max_rows: int = 60) -> str:
        """The spectra as a fixed-width text table.

        Args:
            max_rows: Rows shown before eliding the middle.

        Returns:
            The table as text, one line per layer.
        """
        head = ["layer", "input", "kernel", "stride", "padding", "groups", "norm",
                "lower", "sigma_min", "stable_rank", "cond", "method"]  # fmt: skip
        lines: list[list[str]] = []
        for row in self.rows:
            if row.status != "ok":
                continue  # listed below, in their own table, reasons uncut
            padding = row.operator_padding
            if row.operator_padding != row.padding_mode:
                padding += " (assumed)"
            lines.append([
                row.layer, row.input_size, row.kernel_size, row.stride, padding,
                str(row.groups), fmt(row.spectral_norm), fmt(row.spectral_norm_lower),
                fmt(row.sigma_min), fmt(row.stable_rank, 2), fmt(row.condition_number, 2),
                row.method,
            ])  # fmt: skip
        if len(lines) > max_rows:
            half = max_rows // 2
            lines = [*lines[:half], ["..."] + [""] * (len(head) - 1), *lines[-half:]]
        p = self.params
        title = (
            f"ConvSpectra: {p.source or 'model'} at input {p.input_size} — "
            f"{plural(len(self.computed), 'layer')}, {len(self.skipped)} skipped "
            f"(padding={p.padding}, tol={p.tol:g}, "
            f"{'all singular values' if p.singular_values else 'spectral norms'})"
        )
        parts = [render_table(title, head, lines)]
        if self.skipped:
            skipped = [[row.layer, row.input_size or "?", row.kernel_size, row.reason]
                       for row in self.skipped]  # fmt: skip
            parts.append(render_table("skipped:", ["layer", "input", "kernel", "reason"], skipped))
        return "\n".join(parts)


def _expand(spectrum: _Spectrum, *, exact: bool) -> Tensor:
    counts = spectrum.weights.round().to(torch.int64)
    values = spectrum.values.reshape(spectrum.values.shape[0], -1)
    flat = values.repeat_interleave(counts, dim=0).reshape(-1)
    if exact and flat.numel() < spectrum.total:  # columns or rows the kernel never reads
        flat = torch.cat([flat, flat.new_zeros(spectrum.total - flat.numel())])
    return flat.sort(descending=True).values


# --------------------------------------------------------------------- shape pass


_Call = tuple[tuple[int, ...], tuple[int, ...]]


def _shape_pass(
    model: nn.Module,
    input_size: tuple[int, ...],
    convs: Mapping[nn.Module, list[str]],
    example_inputs: Tensor | None = None,
) -> tuple[dict[str, list[_Call]], str, str]:
    """Input and output shapes of every convolution from one pass of the model.

    First with fake tensors (shapes only, nothing computed); if the model cannot run
    on them (data-dependent control flow, ``.item()``, numpy), one forward pass on
    zeros under ``torch.no_grad()``. Either way in eval mode, with every module's
    ``training`` flag, the RNG states and the hooks restored afterwards.

    Returns:
        ``({layer name: [(input shape, output shape), ...]}, method, error)``; ``error``
        is empty unless the forward pass failed part-way (the shapes seen before the
        failure are kept).
    """
    seen: dict[str, list[_Call]] = {}

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if args and isinstance(args[0], Tensor) and isinstance(output, Tensor):
            call = (tuple(int(s) for s in args[0].shape), tuple(int(s) for s in output.shape))
            for name in convs[module]:
                seen.setdefault(name, []).append(call)

    reference = next(
        (t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()), None
    )
    dtype = reference.dtype if reference is not None else torch.get_default_dtype()
    device = reference.device if reference is not None else torch.device("cpu")
    if device.type == "meta":
        device = torch.device("cpu")
    shape = (1, *input_size)

    def inputs() -> Tensor:  # the user's batch (on the weights' device), else zeros
        if example_inputs is not None:
            return example_inputs.detach().to(device=device)
        return torch.zeros(shape, dtype=dtype, device=device)

    cpu_rng = torch.random.get_rng_state()
    initialized = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    cuda_rng = torch.cuda.get_rng_state_all() if initialized else None
    handles = [module.register_forward_hook(hook) for module in convs]
    error = ""
    try:
        try:
            from torch._subclasses.fake_tensor import FakeTensorMode

            # torch logs a traceback at ERROR when an op has no meta kernel; that case is
            # handled here (a forward pass on real tensors), so it is not the user's news.
            fake_logger = logging.getLogger("torch._subclasses.fake_tensor")
            was_disabled, fake_logger.disabled = fake_logger.disabled, True
            try:
                with (
                    torch.no_grad(),
                    eval_mode(model),
                    FakeTensorMode(allow_non_fake_inputs=True),
                ):
                    model(inputs())
            finally:
                fake_logger.disabled = was_disabled
            method = "fake"
        except Exception as fake_error:  # fake tensors fail in many legitimate ways
            logger.debug("fake-tensor shape pass failed (%s); running on zeros", fake_error)
            seen.clear()
            method = "forward"
            try:
                with torch.no_grad(), eval_mode(model):
                    model(inputs())
            except Exception as forward_error:
                error = f"{type(forward_error).__name__}: {forward_error}"[:200]
    finally:
        for handle in handles:
            handle.remove()
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return seen, method, error


# ------------------------------------------------------------------ the operators


def _text(values: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in values)


def _pairs(module: _ConvNd, ndim: int) -> tuple[tuple[int, int], ...]:
    """``(before, after)`` padding per spatial dimension, as the module applies it."""
    reversed_twice = getattr(module, "_reversed_padding_repeated_twice", None)
    if reversed_twice is not None and len(reversed_twice) == 2 * ndim:
        pads = [int(p) for p in reversed_twice]  # (last dim before, after, ..., first dim ...)
        return tuple((pads[2 * (ndim - 1 - d)], pads[2 * (ndim - 1 - d) + 1]) for d in range(ndim))
    padding = module.padding
    if isinstance(padding, str):
        padding = (0,) * ndim
    return tuple((int(p), int(p)) for p in padding)


def _lift(values: Sequence[int], fill: int) -> tuple[int, int]:
    """A 1-D size as 2-D (height ``fill``), a 2-D size as is."""
    return (fill, int(values[0])) if len(values) == 1 else (int(values[0]), int(values[1]))


def _unpermute(weight: Tensor, groups: int) -> Tensor:
    """A transposed convolution's weight back to the layout of its adjoint convolution."""
    c_out, c_in_group = weight.shape[:2]
    grouped = weight.reshape(groups, c_out // groups, c_in_group, *weight.shape[2:])
    return grouped.transpose(1, 2).reshape(groups * c_in_group, c_out // groups, *weight.shape[2:])


def _operator_of(
    layer: ConvLayer,
    module: nn.Module | None,
    calls: list[_Call],
    *,
    assume_circular: bool,
    device: torch.device | None,
) -> _Operator | str:
    """The layer's operator, or the reason it has none."""
    if not isinstance(module, _ConvNd):
        return "not a torch.nn convolution module (no padding/stride/dilation to read)"
    ndim = len(layer.kernel_size)
    if ndim not in (1, 2):
        return f"spectra are computed for 1-D and 2-D convolutions, not {ndim}-D ones"
    if not calls:
        return "never called in the shape pass (not reached from the model input)"
    if len(set(calls)) > 1:
        sizes = sorted({_text(c[0][2:]) for c in calls})
        return f"called with several input sizes ({', '.join(sizes)}): one operator per size"
    in_shape, out_shape = calls[0]
    if len(in_shape) != ndim + 2 or len(out_shape) != ndim + 2:
        return f"unexpected input shape {in_shape} for a {ndim}-D convolution"
    groups = int(module.groups)
    transposed = bool(module.transposed)
    pads = _pairs(module, ndim)
    stride = tuple(int(s) for s in module.stride)
    dilation = tuple(int(d) for d in module.dilation)
    kernel = tuple(int(k) for k in layer.kernel_size)
    mode = str(module.padding_mode)
    if mode not in _spectral.PADDING_MODES:
        return f"unknown padding mode {mode!r}"
    weight = layer.weight.detach()
    if transposed:
        # The module applies the adjoint of a convolution from its output to its input.
        operator_in, operator_out = out_shape[2:], in_shape[2:]
        weight = _unpermute(weight, groups)
    else:
        operator_in, operator_out = in_shape[2:], out_shape[2:]
    if ndim == 1:
        weight = weight.unsqueeze(2)
        pads = ((0, 0), pads[0])
    geometry = _spectral.Geometry(
        in_size=_lift(operator_in, 1),
        out_size=_lift(operator_out, 1),
        kernel=_lift(kernel, 1),
        stride=_lift(stride, 1),
        dilation=_lift(dilation, 1),
        pads=(pads[0], pads[1]),
        padding_mode=mode,
    )
    if geometry.expected_out() != geometry.out_size:
        return (
            f"output size {_text(operator_out)} does not follow from the module's padding, "
            f"stride and dilation at input {_text(operator_in)} (a custom forward?)"
        )
    plan = _spectral.plan_operator(geometry, assume_circular=assume_circular)
    return _Operator(
        name=layer.name,
        weight=weight,
        weight_version=layer.weight._version,
        device=device,
        groups=groups,
        geometry=geometry,
        plan=plan,
        mode="circular" if assume_circular else mode,
    )


def _kernel_positions(operator: _Operator) -> tuple[tuple[int, ...], tuple[int, ...]]:
    geometry, grid = operator.geometry, operator.plan.grid
    positions = [
        tuple(int(x) for x in (geometry.dilation[d] * torch.arange(geometry.kernel[d])) % grid[d])
        for d in range(2)
    ]
    return positions[0], positions[1]


def _shape_key(operator: _Operator) -> tuple[Any, ...]:
    """Layers with equal keys batch together: same grid, tap positions and matrix shape."""
    weight, plan = operator.weight, operator.plan
    p = weight.shape[0] // operator.groups
    q = weight.shape[1] * plan.stride[0] * plan.stride[1]
    device = operator.device or weight.device
    return (plan.polyphase_grid, plan.stride, _kernel_positions(operator), operator.groups,
            p, q, device)  # fmt: skip


def _taps(operators: Sequence[_Operator], dtype: torch.dtype) -> tuple[Tensor, tuple[int, int]]:
    """Polyphase taps ``(L, T, g, p, q)`` of layers of one shape, in ``dtype``."""
    stacked = []
    grid_taps = (1, 1)
    for operator in operators:
        weight = operator.weight.to(device=operator.device or operator.weight.device, dtype=dtype)
        taps, grid_taps = _spectral.polyphase_taps(
            weight, operator.groups, operator.geometry, operator.plan
        )
        stacked.append(taps)
    return torch.stack(stacked), grid_taps


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _layer_runs(layer_index: Tensor) -> list[tuple[int, int, int]]:
    """``[(layer, start, stop), ...]`` of a layer index sorted by layer (one host sync)."""
    layers, counts = torch.unique_consecutive(layer_index, return_counts=True)
    runs = []
    start = 0
    for layer, count in zip(layers.tolist(), counts.tolist()):
        runs.append((int(layer), start, start + int(count)))
        start += int(count)
    return runs


def _matrices(phases: Tensor, taps: Tensor, layer_index: Tensor, freq_index: Tensor) -> Tensor:
    """Transfer matrices of items ``(layer, frequency)`` sorted by layer: ``(n, g, p, q)``."""
    _, count, groups, p, q = taps.shape
    flat = taps.reshape(taps.shape[0], count, -1)
    pieces = [
        phases[freq_index[start:stop]] @ flat[layer].to(phases.dtype)
        for layer, start, stop in _layer_runs(layer_index)
    ]
    return torch.cat(pieces).reshape(-1, groups, p, q)


@dataclass(frozen=True)
class _GroupResult:
    """Per-layer results of one shape group, on the group's device."""

    upper: Tensor  # (L,) float64: spectral norm (bound of the surrogate when not exact)
    lower: Tensor  # (L,) float64: lower bound of the same
    steps: Tensor  # (L,) int64
    best: Tensor  # (L,) index into the frequencies of the largest lower bound
    best_group: Tensor  # (L,) its group
    spectra: tuple[Tensor, ...] = ()  # per layer (F, g, r) float64, with singular_values


def _group_frequencies(
    operators: Sequence[_Operator], dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    taps, grid_taps = _taps(operators, dtype)
    plan = operators[0].plan
    u, v, weights = _spectral.frequencies(plan.polyphase_grid, grid_taps)
    phases = _spectral.phase_matrix(
        u, v, plan.polyphase_grid, grid_taps, dtype=_complex(dtype), device=taps.device
    )
    return taps, phases, u, v, weights


def _singular_values_of(
    operators: Sequence[_Operator], *, dtype: torch.dtype, max_memory: int = DEFAULT_MAX_MEMORY
) -> _GroupResult:
    """All singular values of layers of one shape, batched over layers and frequencies.

    float64: the eigenvalues of the Hermitian Gram matrices of the smaller side, built
    from the kernel's tap cross-products (``_spectral.offset_grams``), by a batched
    ``eigvalsh`` (about twice as fast as ``svdvals`` of the transfer matrices; singular
    values are accurate to about ``1e-7 sigma_1`` absolute, ``sqrt(r eps) sigma_1`` for
    the smallest). float32: ``svdvals`` of the complex64 transfer matrices.

    Memory: at most ``max_memory`` bytes of transfer (or Gram) matrices and the
    solver's work arrays (counted as three more copies) at once.
    """
    if dtype == torch.float64:
        return _singular_values_by_gram(operators, max_memory=max_memory)
    taps, phases, _, _, _ = _group_frequencies(operators, dtype)
    layers, _, groups, p, q = taps.shape
    frequencies = phases.shape[0]
    per_item = groups * p * q * _element_size(phases.dtype) * 4
    per_chunk = max(1, max_memory // per_item)
    layer_index = torch.arange(layers, device=taps.device).repeat_interleave(frequencies)
    freq_index = torch.arange(frequencies, device=taps.device).repeat(layers)
    pieces = []
    for start, stop in _spectral.chunks(layers * frequencies, per_chunk):
        matrices = _matrices(phases, taps, layer_index[start:stop], freq_index[start:stop])
        pieces.append(torch.linalg.svdvals(matrices).to(torch.float64))
    values = torch.cat(pieces).reshape(layers, frequencies, groups, -1)
    flat_max = values.amax(-1).reshape(layers, -1)
    upper, best = flat_max.max(dim=1)
    return _GroupResult(
        upper=upper,
        lower=upper,
        steps=torch.zeros(layers, dtype=torch.int64, device=taps.device),
        best=best // groups,
        best_group=best % groups,
        spectra=tuple(values.cpu().unbind(0)),
    )


@dataclass(frozen=True)
class _GramSetup:
    """What both Gram-based methods start from, for one batch of same-shape operators."""

    taps: Tensor  # (L, taps, groups, p, q) float64
    u: Tensor  # frequencies of the polyphase grid (conjugate symmetry used)
    v: Tensor
    offsets: Tensor  # tap offsets d of the cross-products R_d
    grams: Tensor  # (L, groups, D, q, q) the R_d
    inner: Any  # offset_grams' rounding information
    trig: Tensor  # phases of every offset at every frequency


def _gram_setup(operators: Sequence[_Operator]) -> _GramSetup:
    taps, grid_taps = _taps(operators, torch.float64)
    grid = operators[0].plan.polyphase_grid
    u, v, _ = _spectral.frequencies(grid, grid_taps)
    offsets, grams, inner = _spectral.offset_grams(taps, grid_taps)
    trig = _spectral.offset_phases(u, v, offsets, grid, device=taps.device)
    return _GramSetup(taps, u, v, offsets, grams, inner, trig)


def _singular_values_by_gram(operators: Sequence[_Operator], *, max_memory: int) -> _GroupResult:
    """All singular values as square roots of the Gram matrices' eigenvalues (float64)."""
    g = _gram_setup(operators)
    taps, grams, trig = g.taps, g.grams, g.trig
    layers, _, groups, p, q = taps.shape
    device = taps.device
    r = min(p, q)
    frequencies = g.u.numel()
    per_chunk = max(1, max_memory // (groups * r * r * 16 * 4))
    values = torch.empty(layers, frequencies, groups, r, dtype=torch.float64, device=device)
    for layer in range(layers):
        for start, stop in _spectral.chunks(frequencies, per_chunk):
            g_mat = _spectral.grams_at(trig[:, start:stop], grams[layer])
            eigen = torch.linalg.eigvalsh(g_mat).to(torch.float64)
            values[layer, start:stop] = eigen.clamp_min(0).sqrt().flip(-1)
    flat_max = values[..., 0].reshape(layers, -1)
    upper, best = flat_max.max(dim=1)
    return _GroupResult(
        upper=upper,
        lower=upper,
        steps=torch.zeros(layers, dtype=torch.int64, device=device),
        best=best // groups,
        best_group=best % groups,
        spectra=tuple(values.cpu().unbind(0)),
    )


def _spectral_norms_of(
    operators: Sequence[_Operator],
    *,
    dtype: torch.dtype,
    tol: float,
    max_steps: int,
    max_memory: int,
    norm_method: str = "certificate",
) -> _GroupResult:
    """Certified spectral norms of the circular operators of layers of one shape."""
    if norm_method == "gram":
        return _spectral_norms_gram(
            operators, dtype=dtype, tol=tol, max_steps=max_steps, max_memory=max_memory
        )
    return _spectral_norms_certificate(operators, tol=tol, max_memory=max_memory)


def _spectral_norms_certificate(
    operators: Sequence[_Operator], *, tol: float, max_memory: int
) -> _GroupResult:
    """Certified spectral norms by Gram matrices from the taps and Cholesky certificates.

    Per layer (float64 throughout, whatever ``dtype``):

    1. The tap cross-products ``R_d`` (``_spectral.offset_grams``): the Hermitian Gram
       matrix ``G(u, v)`` of the smaller side at any frequency is a sum of ``D`` of them
       (``D = 13`` for 3x3 kernels) with phases, without forming the transfer matrices.
    2. A lower bound ``L``: Lanczos, ``_RANKING_STEPS`` steps at every frequency, then
       ``_LANCZOS_STEPS`` at the ``_LEADING_FREQUENCIES`` best; the top Ritz vector's
       Rayleigh quotient is a certified lower bound of ``sigma_1^2``.
    3. Every frequency: ``lambda_1(G) <= tr(G)`` settles the weak ones; the others are
       certified below ``((1 + tol / 8) L)^2``, then ``((1 + tol) L)^2``, by a Cholesky
       factorisation of ``c I - G`` (positive definite exactly when
       ``lambda_1(G) < c``, with the rounding of ``G`` and of the factorisation
       subtracted from ``c``); a frequency that fails both gets ``lambda_1(G)`` from
       ``eigvalsh`` (bracketed for rounding), which also raises the lower bound.

    Matrices up to ``32 x 32`` get ``eigvalsh`` directly. Each frequency's work depends
    only on itself and its layer's ``L``: results do not depend on the batching.

    Memory: the ``R_d`` of the layers of the batch, and at most ``max_memory`` bytes of
    Gram matrices and work arrays (about ten ``r x r`` complex128 matrices per
    frequency and group) at once.
    """
    g = _gram_setup(operators)
    taps, grams, trig, inner, offsets = g.taps, g.grams, g.trig, g.inner, g.offsets
    u = g.u
    layers, count, groups, p, q = taps.shape
    device = taps.device
    r = min(p, q)
    frequencies = u.numel()
    squared = taps.square().sum((1, 3, 4))  # (L, g): ||W||_F^2 per group
    error = _spectral.gram_error(inner, count, offsets.shape[0], squared)  # (L, g)
    traces = grams.diagonal(dim1=-2, dim2=-1).sum(-1)  # (L, g, D)
    trace = 2.0 * torch.einsum("fd,lgd->lfg", trig[0], traces).clamp_min(0)  # tr G(u, v)
    eps = torch.finfo(torch.float64).eps
    upper = torch.zeros(layers, frequencies, groups, dtype=torch.float64, device=device)
    lower = torch.zeros_like(upper)
    steps = torch.zeros(layers, frequencies, groups, dtype=torch.int64, device=device)
    per_item = groups * 10 * r * r * 16
    per_chunk = max(1, max_memory // per_item)

    def gram_items(
        layer_index: Tensor, freq_index: Tensor
    ) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """``(layer, frequency, G (n g, r, r))`` per chunk and layer run."""
        for start, stop in _spectral.chunks(layer_index.numel(), per_chunk):
            li, fi = layer_index[start:stop], freq_index[start:stop]
            for layer, a, b in _layer_runs(li):
                g_mat = _spectral.grams_at(trig[:, fi[a:b]], grams[layer])
                yield li[a:b], fi[a:b], g_mat.reshape(-1, r, r)

    def exact(li: Tensor, fi: Tensor, g_mat: Tensor) -> None:
        err = error[li].reshape(-1)
        low, up = _spectral.top_eigenvalue(g_mat, err)
        upper[li, fi] = up.sqrt().reshape(-1, groups)
        lower[li, fi] = torch.maximum(lower[li, fi], low.sqrt().reshape(-1, groups))
        steps[li, fi] = 3

    all_layers = torch.arange(layers, device=device).repeat_interleave(frequencies)
    all_freqs = torch.arange(frequencies, device=device).repeat(layers)
    if r <= _DIRECT_SIZE:
        for li, fi, g_mat in gram_items(all_layers, all_freqs):
            exact(li, fi, g_mat)
        steps.clamp_(max=1)
        return _group_outcome(upper, lower, steps)

    def lanczos(li: Tensor, fi: Tensor, g_mat: Tensor, steps_: int) -> None:
        theta = _spectral.lanczos_lower(g_mat, steps_)
        norm = _spectral._squared_norm(g_mat, (-2, -1)).sqrt()
        slack = error[li].reshape(-1) + 4.0 * (r + 4) * eps * norm
        bound = ((theta - slack) * (1 - 8 * eps)).clamp_min(0).sqrt().reshape(-1, groups)
        lower[li, fi] = torch.maximum(lower[li, fi], bound)

    # Lower bound per layer: a short Lanczos run at every frequency ranks them (at
    # random initialisation the largest singular value is often at a frequency of
    # middling Frobenius norm), then a longer one at the best few.
    for li, fi, g_mat in gram_items(all_layers, all_freqs):
        lanczos(li, fi, g_mat, _RANKING_STEPS)
    leading = min(_LEADING_FREQUENCIES, frequencies)
    first = lower.amax(-1).argsort(dim=1, descending=True, stable=True)[:, :leading]
    first = first.sort(dim=1).values
    layer_of = torch.arange(layers, device=device)[:, None].expand(-1, leading).reshape(-1)
    for li, fi, g_mat in gram_items(layer_of, first.reshape(-1)):
        lanczos(li, fi, g_mat, _LANCZOS_STEPS)
    floor = lower.amax((1, 2))  # (L,)

    # Every frequency: certified below the rungs, or by the eigensolver.
    rungs = [(1.0 + tol / 8.0) * floor, (1.0 + tol) * floor]  # (L,) each
    by_trace = (trace + error[:, None, :]) <= rungs[0][:, None, None] ** 2
    upper[by_trace] = (trace + error[:, None, :]).sqrt()[by_trace]
    rest = torch.nonzero(~by_trace.all(-1))  # (n, 2) sorted by layer, then frequency
    if rest.numel():
        for li, fi, g_mat in gram_items(rest[:, 0], rest[:, 1]):
            item_layer = li.repeat_interleave(groups)
            err = error[li].reshape(-1)
            open_items = torch.arange(g_mat.shape[0], device=device)
            bound = torch.empty(g_mat.shape[0], dtype=torch.float64, device=device)
            rung_of = torch.full((g_mat.shape[0],), 3, dtype=torch.int64, device=device)
            for number, rung in enumerate(rungs, start=1):
                level = rung[item_layer[open_items]]
                ok = _spectral.certify_below(g_mat[open_items], level.square(), err[open_items])
                bound[open_items[ok]] = level[ok]
                rung_of[open_items[ok]] = number
                open_items = open_items[~ok]
                if open_items.numel() == 0:
                    break
            upper[li, fi] = bound.reshape(-1, groups)
            steps[li, fi] = rung_of.reshape(-1, groups)
            if open_items.numel():
                low, up = _spectral.top_eigenvalue(g_mat[open_items], err[open_items])
                flat_upper = upper[li, fi].reshape(-1)
                flat_lower = lower[li, fi].reshape(-1)
                flat_upper[open_items] = up.sqrt()
                flat_lower[open_items] = torch.maximum(flat_lower[open_items], low.sqrt())
                upper[li, fi] = flat_upper.reshape(-1, groups)
                lower[li, fi] = flat_lower.reshape(-1, groups)
    return _group_outcome(upper, lower, steps)


def _group_outcome(upper: Tensor, lower: Tensor, steps: Tensor) -> _GroupResult:
    """Per-layer maxima of per-frequency brackets ``(L, F, g)``."""
    layers, _, groups = upper.shape
    best_lower, best = lower.reshape(layers, -1).max(dim=1)
    return _GroupResult(
        upper=upper.amax((1, 2)),
        lower=best_lower,
        steps=steps.reshape(layers, -1).amax(1),
        best=best // groups,
        best_group=best % groups,
    )


def _spectral_norms_gram(
    operators: Sequence[_Operator],
    *,
    dtype: torch.dtype,
    tol: float,
    max_steps: int,
    max_memory: int,
) -> _GroupResult:
    """Certified spectral norms by the Gram iteration (``norm_method="gram"``).

    Phase 1: per layer, the few frequencies with the largest Frobenius norm are
    iterated to their own tolerance, giving the layer's lower bound ``L``. Phase 2:
    every other frequency is settled by its Frobenius norm when that is within
    ``(1 + tol) L``, else iterated until its upper bound is (or its own bracket closes).
    Each frequency's work depends only on itself and ``L``: results do not depend on
    how the work is batched.

    Memory: at most ``max_memory`` bytes of transfer matrices and Gram iterates (five
    ``r x r`` matrices per frequency and group, ``r = min(p, q)``) at once.
    """
    taps, phases, _, _, _ = _group_frequencies(operators, dtype)
    layers, _, groups, p, q = taps.shape
    device = taps.device
    frequencies = phases.shape[0]
    fro = _spectral.frobenius_at(phases, _spectral.tap_gram(taps))  # (L, F, g)
    r = min(p, q)
    per_item = groups * (p * q + 5 * r * r) * _element_size(phases.dtype)
    per_chunk = max(1, max_memory // per_item)
    upper = torch.zeros(layers, frequencies, groups, dtype=torch.float64, device=device)
    lower = torch.zeros_like(upper)
    steps = torch.zeros(layers, frequencies, groups, dtype=torch.int64, device=device)

    def run(layer_index: Tensor, freq_index: Tensor, threshold: Tensor) -> None:
        for start, stop in _spectral.chunks(layer_index.numel(), per_chunk):
            li, fi = layer_index[start:stop], freq_index[start:stop]
            outcome = _spectral.gram_bounds(
                _matrices(phases, taps, li, fi).reshape(-1, p, q),
                threshold[start:stop].repeat_interleave(groups),
                tol=tol,
                max_steps=max_steps,
            )
            upper[li, fi] = outcome.upper.reshape(-1, groups)
            lower[li, fi] = outcome.lower.reshape(-1, groups)
            steps[li, fi] = outcome.steps.reshape(-1, groups)

    leading = min(_LEADING_FREQUENCIES, frequencies)
    # Ties broken by frequency index (stable sort), so the choice is deterministic.
    first = fro.amax(-1).argsort(dim=1, descending=True, stable=True)[:, :leading]
    first = first.sort(dim=1).values
    layer_of = torch.arange(layers, device=device)[:, None].expand(-1, leading)
    zeros = torch.zeros(layers * leading, dtype=torch.float64, device=device)
    run(layer_of.reshape(-1), first.reshape(-1), zeros)
    floor = lower.amax((1, 2))  # (L,)
    in_first = torch.zeros(layers, frequencies, dtype=torch.bool, device=device)
    in_first[layer_of, first] = True
    fro_bound = fro.to(torch.float64) * _spectral._rounding_margin(r, phases.dtype)
    by_fro = (fro_bound <= (1 + tol) * floor[:, None, None]).all(-1) & ~in_first
    upper[by_fro] = fro_bound[by_fro]
    rest = torch.nonzero(~in_first & ~by_fro)  # (n, 2), sorted by layer then frequency
    if rest.numel():
        run(rest[:, 0], rest[:, 1], (1 + tol) * floor[rest[:, 0]])
    best_lower, best = lower.reshape(layers, -1).max(dim=1)
    return _GroupResult(
        upper=upper.amax((1, 2)),
        lower=best_lower,
        steps=steps.reshape(layers, -1).amax(1),
        best=best // groups,
        best_group=best % groups,
    )


def _apply(operator: _Operator, inputs: Tensor) -> Tensor:
    """The layer's operator (bias excluded) on ``(B, c_in, h, w)`` inputs."""
    geometry = operator.geometry
    weight = operator.weight.to(device=inputs.device, dtype=inputs.dtype)
    (top, bottom), (left, right) = geometry.pads
    mode = "constant" if operator.mode == "zeros" else operator.mode
    padded = F.pad(inputs, (left, right, top, bottom), mode=mode)
    return F.conv2d(
        padded, weight, stride=geometry.stride, dilation=geometry.dilation, groups=operator.groups
    )


def _test_input_lower(
    operators: Sequence[_Operator], result: _GroupResult, *, dtype: torch.dtype, steps: int
) -> Tensor:
    """Certified lower bounds ``||A x|| / ||x||`` of bound layers' true operators.

    ``x`` starts as the top right singular vector of the bounding circular operator at
    its best frequency (a plane wave in each polyphase channel), cut to the real input
    (the embedding's support); real and imaginary parts run through the layer as a
    batch of two; ``steps`` power steps ``x <- A^T A x`` (the adjoint by autograd, on
    our own tensors) sharpen it.

    Returns:
        ``(L,)`` float64 on the group's device.
    """
    taps, phases, u, v, _ = _group_frequencies(operators, dtype)
    layers, _, groups, _, q = taps.shape
    best = result.best
    matrices = _matrices(phases, taps, torch.arange(layers, device=taps.device), best)
    chosen = matrices[torch.arange(layers, device=taps.device), result.best_group]  # (L, p, q)
    right = torch.linalg.svd(chosen).Vh[:, 0, :].conj()  # (L, q): A v = sigma_1 u
    plan = operators[0].plan
    grid_h, grid_w = plan.polyphase_grid
    s_h, s_w = plan.stride
    # One host transfer for the group, none per layer.
    chosen_cpu = torch.stack([best, result.best_group]).cpu()
    u_best, v_best, best_group = u[chosen_cpu[0]], v[chosen_cpu[0]], chosen_cpu[1].tolist()
    lowers = []
    for index, operator in enumerate(operators):
        geometry = operator.geometry
        wave = _spectral.phase_matrix(
            u_best[index : index + 1],
            v_best[index : index + 1],
            (grid_h, grid_w),
            (grid_h, grid_w),
            dtype=right.dtype,
            device=taps.device,
        ).reshape(grid_h, grid_w)
        c_group = q // (s_h * s_w)
        channels = right[index].reshape(c_group, s_h, s_w)
        # Grid position (s i + a, s j + b) holds channel (c, a, b) times the wave at (i, j).
        field = torch.einsum("cab,ij->ciajb", channels, wave).reshape(
            c_group, grid_h * s_h, grid_w * s_w
        )
        # The embedding puts the input at offset pad_before; a circular dimension reads
        # it cyclically shifted by pad_before; a patch dimension has no padding.
        for dim, kind in enumerate(plan.dims):
            offset = geometry.pads[dim][0]
            if kind in ("circular", "select") and offset:
                field = field.roll(-offset, dims=dim + 1)
        window = []
        for dim, kind in enumerate(plan.dims):
            start = geometry.pads[dim][0] if kind == "embed" else 0
            window.append(slice(start, start + geometry.in_size[dim]))
        cut = field[:, window[0], window[1]]
        test = cut.new_zeros(operator.weight.shape[1] * groups, *geometry.in_size)
        group = int(best_group[index])
        test[group * c_group : (group + 1) * c_group, : cut.shape[1], : cut.shape[2]] = cut
        batch = torch.stack([test.real, test.imag]).to(taps.dtype)
        try:
            for _ in range(steps):
                with torch.enable_grad():
                    batch = batch.detach().requires_grad_(True)
                    output = _apply(operator, batch)
                    (batch,) = torch.autograd.grad(output, batch, grad_outputs=output)
                batch = batch / torch.linalg.vector_norm(batch)
            with torch.no_grad():
                output = _apply(operator, batch)
        except RuntimeError:  # e.g. a padding wider than a tiny input: no bound
            lowers.append(torch.full((), math.nan, dtype=torch.float64, device=taps.device))
            continue
        ratio = torch.linalg.vector_norm(output) / torch.linalg.vector_norm(batch)
        lowers.append(ratio.to(torch.float64) / _spectral._rounding_margin(q, dtype))
    return torch.stack(lowers)


def _operator_count(operator: _Operator) -> int:
    """``min(rows, columns)`` of the operator's matrix."""
    c_out, c_in_group = operator.weight.shape[:2]
    geometry = operator.geometry
    rows = c_out * geometry.out_size[0] * geometry.out_size[1]
    columns = c_in_group * operator.groups * geometry.in_size[0] * geometry.in_size[1]
    return int(min(rows, columns))


# -------------------------------------------------------------------- front door


def conv_spectra(
    model: nn.Module | str,
    *,
    input_size: Sequence[int] = (3, 32, 32),
    singular_values: bool = False,
    padding: Padding = "model",
    tol: float = 1e-3,
    max_steps: int = 6,
    lower_steps: int | None = 2,
    norm_method: NormMethod = "certificate",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
    progress: bool = True,
    example_inputs: Tensor | None = None,
) -> ConvSpectra:
    """The spectrum of every convolution of a model, as an operator at its input size.

    One shape pass (fake tensors, so nothing is computed; one forward pass on zeros if
    the model cannot run on them) gives each convolution's input size at the model's
    ``input_size``. Each convolution ``A`` (bias excluded) is then reduced to transfer
    matrices on a circular grid (Sedghi, Gupta & Long, ICLR 2019), batched over
    frequencies and over layers of the same shape:

    - ``exact-circular``: circular padding, stride 1: the singular values are those of
      the ``c_out x c_in`` matrices ``A(u, v)``, one per frequency of the input grid;
    - ``exact-circular-polyphase``: circular padding with a stride that divides the
      input: the same after a polyphase reshaping (``c_in s^2`` input channels);
    - ``exact-patch``: no padding and a kernel no longer than the stride (1x1 and
      patch-embedding convolutions): disjoint patches;
    - ``bound-embedding``: anything else (zero, reflect or replicate padding):
      ``||A||_2 <= ||P||_2 ||C_N||_2`` with ``C_N`` the circular convolution on a grid
      ``N >= n + padding`` and ``P`` the padding (``||P||_2 = 1`` for zeros);
    - ``bound-row-selection``: circular padding with a stride that does not divide the
      input: ``||A||_2 <= sqrt(r) ||C_n||_2``, ``r`` the most times an output row of the
      stride-1 circulant is taken. Bound rows also get a certified lower bound
      (``lower_steps``).

    Groups are independent blocks; a transposed convolution is the adjoint of a
    convolution from its output to its input and has its singular values.

    The model is not changed: weights, device, dtype, ``requires_grad``, train/eval
    modes, hooks and RNG states are as before (the shape pass restores them).

    Args:
        model: The network (wrappers such as ``DataParallel`` are unwrapped).
        input_size: One input without the batch dimension, ``(C, H, W)`` (or
            ``(C, L)`` for 1-D convolutions).
        singular_values: Compute all singular values (batched SVDs; far slower) and
            keep them for ``ConvSpectra.singular_values``; gives exact spectral norms,
            ``sigma_min`` and condition numbers of exact layers. ``False``: spectral
            norms only, certified within ``tol`` (``norm_method``).
        padding: ``"model"``: each module's own padding; ``"circular"``: treat every
            padding as circular (the setting of Sedghi et al. and weightwatcher),
            which makes most layers exact (for the circular version of the layer).
        tol: Relative width of the certified bracket of each spectral norm
            (``lower <= ||C||_2 <= upper <= (1 + tol) lower``).
        max_steps: ``norm_method="gram"`` only: Gram steps per frequency before a
            Hermitian eigensolver settles the frequencies still open (exact to
            rounding); the bracket always reaches ``tol``.
        lower_steps: For ``bound-*`` layers, a certified lower bound of the true
            operator's norm: a test input (the bound's top singular vector) run
            through the layer, after this many power steps ``x <- A^T A x`` (each
            about three convolutions of the layer at batch 2). ``None``: no lower
            bound (NaN).
        norm_method: How the spectral norm alone is certified. ``"certificate"``
            (default): per frequency the Hermitian Gram matrix of the smaller side,
            built from the kernel's tap cross-products (no transfer matrices), a
            Lanczos lower bound, and Cholesky factorisations of ``c I - G`` that prove
            ``sigma_1 <= sqrt(c)`` (float64, rounding accounted for); about
            ``4 r^3 / 3`` flops per frequency. ``"gram"``: the Gram iteration of
            Delattre et al. (``8 r^3`` flops per squaring, in ``dtype``).
        dtype: ``torch.float64`` (default: the bounds and singular values are
            certified to rounding far below ``tol``) or ``torch.float32`` (faster;
            rounding of order ``1e-6`` relative).
        device: Where to compute; default each layer's weight device.
        max_memory: Work memory in bytes: bounds the transfer matrices and Gram
            iterates held at once, and the float64 kernels of the layers batched
            together (each at most this much; one layer or matrix larger than this
            still runs alone). The peak is about twice this plus the results.
        progress: Show a progress bar over shape groups on stderr (needs tqdm).
        example_inputs: A real input batch ``(N, *input_size)`` for the shape pass (and
            the layers' depths) instead of zeros, for models whose forward depends on
            the data (``if x.sum() > 0: ...``). Its shape must agree with ``input_size``.

    Returns:
        A [`ConvSpectra`][filterstats.spectra.ConvSpectra]: one row per convolution,
        every one not computed listed with its reason.

    Raises:
        TypeError: If ``model`` is not an ``nn.Module`` or ``input_size`` is not a
            sequence of positive ints.
        ValueError: For a bad ``padding``, ``tol``, ``max_steps``, ``dtype`` or
            ``max_memory``.

    Examples:
        >>> import torch, filterstats as fs
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, padding_mode="circular"))
        >>> spec = fs.conv_spectra(net, input_size=(3, 16, 16), progress=False)
        >>> spec[0].method, round(spec[0].spectral_norm / spec.singular_values("0")[0].item(), 3)
        ('exact-circular', 1.0)
    """
    model = runnable_module(model)  # spectra need the modules (padding, stride) and a forward
    size = _check_arguments(model, input_size, padding, tol, max_steps, dtype, max_memory)
    check_choice("norm_method", norm_method, ("certificate", "gram"))
    if lower_steps is not None and (
        isinstance(lower_steps, bool) or not isinstance(lower_steps, int) or lower_steps < 0
    ):
        raise ValueError(f"`lower_steps` must be None or an int >= 0; got {lower_steps!r}.")
    target = torch.device(device) if device is not None else None
    if example_inputs is not None:
        if not isinstance(example_inputs, Tensor) or example_inputs.dim() < 2:
            raise TypeError(
                "`example_inputs` must be one input batch, a tensor (N, *input_size); got "
                f"{type(example_inputs).__name__}."
            )
        if tuple(example_inputs.shape[1:]) != size:
            raise ValueError(
                f"`example_inputs` has shape {tuple(example_inputs.shape)}, but `input_size` "
                f"is {size}: give a batch of inputs of that size (N, {', '.join(map(str, size))})."
            )
    inner, convs = conv_modules(model)
    filters = extract_filters(model, kernel_size=None, example_inputs=example_inputs)
    modules = {name: module for module, names in convs.items() for name in names}
    _check_input_rank(size, [module for module in convs])
    seen, shape_pass, error = _shape_pass(inner, size, convs, example_inputs)
    if error and not seen and filters.layers:
        raise ValueError(
            f"`input_size` {size} does not fit {type(inner).__name__}: its forward pass "
            f"failed before any convolution ({error}). Give one input's shape without the "
            "batch dimension, with the channels the first layer expects."
        )
    operators: dict[str, _Operator] = {}
    skipped: dict[str, str] = {}
    for layer in filters.layers:
        calls = seen.get(layer.name, [])
        if not calls and error:
            skipped[layer.name] = f"input size unknown: the forward pass failed ({error})"
            continue
        found = _operator_of(
            layer,
            modules.get(layer.name),
            calls,
            assume_circular=padding == "circular",
            device=target,
        )
        if isinstance(found, str):
            skipped[layer.name] = found
        else:
            operators[layer.name] = found
    if error:
        import warnings

        warnings.warn(
            f"the shape pass of {type(inner).__name__} at input {_text(size)} failed "
            f"({error}); layers after the failure are skipped.",
            FilterStatsWarning,
            stacklevel=2,
        )
    groups: dict[tuple[Any, ...], list[_Operator]] = {}
    for operator in operators.values():
        groups.setdefault(_shape_key(operator), []).append(operator)
    batches = [batch for members in groups.values() for batch in _batches(members, max_memory)]
    results: dict[str, dict[str, float]] = {}
    kept: dict[str, _Spectrum] = {}
    for members in progress_bar(batches, desc="spectra", enabled=progress and len(batches) > 1):
        if singular_values:
            result = _singular_values_of(members, dtype=dtype, max_memory=max_memory)
        else:
            result = _spectral_norms_of(
                members,
                dtype=dtype,
                tol=tol,
                max_steps=max_steps,
                max_memory=max_memory,
                norm_method=norm_method,
            )
        exact = members[0].plan.exact
        lower = result.lower
        if not exact:
            lower = (
                _test_input_lower(members, result, dtype=dtype, steps=lower_steps)
                if lower_steps is not None
                else torch.full_like(lower, math.nan)
            )
        # One host transfer per shape group, none per layer.
        columns = torch.stack([result.upper, lower, result.steps.to(torch.float64)]).cpu()
        for index, operator in enumerate(members):
            upper, low, steps = (float(x) for x in columns[:, index])
            values = {
                "spectral_norm": upper * operator.plan.copy_factor,
                "spectral_norm_lower": low,
                "gram_steps": steps,
            }
            if singular_values:
                spectrum = _Spectrum(
                    result.spectra[index], _group_weights(operator), _operator_count(operator)
                )
                kept[operator.name] = spectrum
                if exact:
                    values["sigma_min"] = _smallest(spectrum)
            results[operator.name] = values
    frobenius = _frobenius_all(operators)
    rows = _rows(filters.layers, operators, results, frobenius, skipped, filters.skipped)
    from filterstats._version import __version__

    params = SpectraParams(
        input_size=_text(size),
        padding=padding,
        singular_values=singular_values,
        norm_method=norm_method,
        tol=float(tol),
        max_steps=int(max_steps),
        dtype=str(dtype).removeprefix("torch."),
        shape_pass=shape_pass,
        depth_method=filters.depth_method,
        source=filters.source,
        version=__version__,
    )
    return ConvSpectra(rows, params, dict(operators), kept)


def _batches(members: list[_Operator], max_memory: int) -> list[list[_Operator]]:
    """Same-shape layers in runs whose float64 taps and tap products fit in ``max_memory``.

    Per layer: the polyphase taps, the tap cross-products ``R_d`` (at most ``2 T`` of
    them, ``r x r`` per group) and the products' work arrays (``T r (p + q)``).
    """
    plan, weight, groups = members[0].plan, members[0].weight, members[0].groups
    taps = math.prod(math.ceil(members[0].geometry.kernel[d] * members[0].geometry.dilation[d]
                               / plan.stride[d]) for d in range(2))  # fmt: skip
    p = weight.shape[0] // groups
    q = weight.shape[1] * plan.stride[0] * plan.stride[1]
    r = min(p, q)
    per_layer = 8 * groups * taps * (p * q + 2 * r * r + r * (p + q))
    size = max(1, max_memory // max(per_layer, 1))
    return [members[start : start + size] for start in range(0, len(members), size)]


def _group_weights(operator: _Operator) -> Tensor:
    _, grid_taps = _spectral.polyphase_taps(
        operator.weight[:1, :1].to(torch.float64), 1, operator.geometry, operator.plan
    )
    return _spectral.frequencies(operator.plan.polyphase_grid, grid_taps)[2]


def _smallest(spectrum: _Spectrum) -> float:
    computed = round(float(spectrum.weights.sum())) * spectrum.values[0].numel()
    return 0.0 if computed < spectrum.total else float(spectrum.values.min())


def _frobenius_all(operators: Mapping[str, _Operator]) -> dict[str, float]:
    """``||A||_F`` of every operator (float64), with one host transfer per device."""
    squares = [
        _spectral.operator_frobenius_sq(
            op.weight.to(device=op.device or op.weight.device, dtype=torch.float64),
            op.geometry,
            op.mode,
        )
        for op in operators.values()
    ]
    by_device: dict[torch.device, list[int]] = {}
    for index, square in enumerate(squares):
        by_device.setdefault(square.device, []).append(index)
    values = [0.0] * len(squares)
    for indices in by_device.values():
        for index, value in zip(indices, torch.stack([squares[i] for i in indices]).tolist()):
            values[index] = math.sqrt(max(value, 0.0))
    return dict(zip(operators, values))


def _rows(
    layers: Sequence[ConvLayer],
    operators: Mapping[str, _Operator],
    results: Mapping[str, Mapping[str, float]],
    frobenius: Mapping[str, float],
    skipped: Mapping[str, str],
    extraction_skips: Sequence[Any],
) -> tuple[SpectrumRow, ...]:
    computed: list[SpectrumRow] = []
    later: list[SpectrumRow] = []
    for layer in layers:
        depth = math.nan if layer.conv_depth_norm is None else float(layer.conv_depth_norm)
        operator = operators.get(layer.name)
        if operator is None:
            later.append(
                SpectrumRow(layer.name, layer.module_type, "skipped", skipped[layer.name],
                            conv_depth_norm=depth, in_channels=layer.in_channels,
                            out_channels=layer.out_channels, groups=layer.groups or 0,
                            kernel_size=_text(layer.kernel_size))
            )  # fmt: skip
            continue
        values = results[operator.name]
        geometry = operator.geometry
        one_d = len(layer.kernel_size) == 1
        norm = values["spectral_norm"]
        fro = frobenius[operator.name]
        sigma_min = values.get("sigma_min", math.nan)
        if math.isnan(sigma_min) or norm == 0:
            condition = math.nan
        else:
            condition = math.inf if sigma_min == 0 else norm / sigma_min
        pads = geometry.pads[1:] if one_d else geometry.pads
        computed.append(
            SpectrumRow(
                layer=layer.name,
                module_type=layer.module_type,
                conv_depth_norm=depth,
                input_size=_text(geometry.in_size[1:] if one_d else geometry.in_size),
                output_size=_text(geometry.out_size[1:] if one_d else geometry.out_size),
                in_channels=layer.in_channels,
                out_channels=layer.out_channels,
                groups=operator.groups,
                kernel_size=_text(layer.kernel_size),
                stride=_text(geometry.stride[1:] if one_d else geometry.stride),
                dilation=_text(geometry.dilation[1:] if one_d else geometry.dilation),
                padding=",".join(str(p) for pair in pads for p in pair),
                padding_mode=geometry.padding_mode,
                operator_padding=operator.mode,
                transposed=layer.transposed,
                method=operator.plan.method,
                grid=_text(operator.plan.grid[1:] if one_d else operator.plan.grid),
                spectral_norm=norm,
                spectral_norm_lower=values.get("spectral_norm_lower", math.nan),
                sigma_min=sigma_min,
                stable_rank=fro**2 / norm**2 if norm > 0 else math.nan,
                condition_number=condition,
                frobenius_norm=fro,
                n_singular_values=_operator_count(operator),
                gram_steps=int(values.get("gram_steps", 0)),
            )
        )
    for skip in extraction_skips:
        later.append(
            SpectrumRow(skip.name, skip.module_type, "skipped", skip.reason,
                        in_channels=skip.in_channels or 0, out_channels=skip.out_channels or 0,
                        groups=skip.groups or 0,
                        kernel_size=_text(skip.kernel_size) if skip.kernel_size else "")
        )  # fmt: skip
    return tuple(computed + later)


def _check_input_rank(size: tuple[int, ...], modules: Sequence[nn.Module]) -> None:
    """``input_size`` has one entry per dimension of the convolutions' input, no batch."""
    weights = [getattr(m, "weight", None) for m in modules]
    ranks = {w.dim() - 1 for w in weights if isinstance(w, Tensor)}
    if len(ranks) != 1:
        return  # mixed or unknown: the shape pass decides
    expected = ranks.pop()  # channels + spatial dimensions
    if len(size) == expected:
        return
    example = "(3, 32, 32)" if expected == 3 else "(3, 1024)" if expected == 2 else "(C, ...)"
    hint = (
        "drop the batch dimension" if len(size) == expected + 1
        else "add the channel count in front" if len(size) == expected - 1
        else f"give {expected} entries"
    )  # fmt: skip
    raise ValueError(
        f"`input_size` must be one input's shape without the batch, {expected} entries for "
        f"this model's convolutions (e.g. {example}); got {size}: {hint}."
    )


def _check_arguments(
    model: object,
    input_size: object,
    padding: object,
    tol: object,
    max_steps: object,
    dtype: object,
    max_memory: object,
) -> tuple[int, ...]:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"`model` must be a torch.nn.Module, got {type(model).__name__}: spectra need "
            "the modules (padding, stride) and a forward pass for the input sizes."
        )
    if (
        not isinstance(input_size, Sequence)
        or isinstance(input_size, str)
        or len(input_size) < 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in input_size)
    ):
        raise TypeError(
            f"`input_size` must be one input's shape without the batch, e.g. (3, 32, 32); "
            f"got {input_size!r}."
        )
    check_choice("padding", padding, ("model", "circular"))
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < float(tol) < 1:
        raise ValueError(f"`tol` must be a float in (0, 1), e.g. 1e-3; got {tol!r}.")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive int, e.g. 6; got {max_steps!r}.")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"`dtype` must be torch.float64 or torch.float32; got {dtype!r}.")
    if isinstance(max_memory, bool) or not isinstance(max_memory, int) or max_memory < 1:
        raise ValueError(f"`max_memory` must be a positive int (bytes); got {max_memory!r}.")
    return tuple(int(s) for s in input_size)
