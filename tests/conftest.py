from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


def model_fingerprint(model: nn.Module) -> tuple:
    """Everything a read-only function must leave as it found it."""
    digest = hashlib.sha256()
    for name, tensor in list(model.state_dict(keep_vars=True).items()):
        digest.update(name.encode())
        if isinstance(tensor, nn.parameter.UninitializedTensorMixin):
            digest.update(b"uninitialised")  # a lazy module's parameter: no values yet
            continue
        data = tensor.detach()
        if data.device.type != "meta":
            if data.is_quantized:
                data = data.dequantize()
            digest.update(data.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    params = tuple(
        (n, p.dtype, p.device, p.requires_grad, p.is_leaf) for n, p in model.named_parameters()
    )
    buffers = tuple((n, b.dtype, b.device) for n, b in model.named_buffers())
    modes = tuple((n, m.training) for n, m in model.named_modules())
    hooks = tuple(
        (
            n,
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            len(m._backward_hooks),
            len(getattr(m, "_state_dict_hooks", {})),
        )
        for n, m in model.named_modules()
    )
    return digest.hexdigest(), params, buffers, modes, hooks
