from __future__ import annotations

import difflib
import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite tests/golden/*.out with the output of this run instead of comparing",
    )


class Golden:
    """Printed output compared exactly with ``tests/golden/NAME.out``.

    A change of format is a visible diff in review. Regenerate after an intended change
    with ``pytest --update-golden`` (then read the diff before committing it).
    """

    def __init__(self, update: bool, directory: Path = GOLDEN_DIR) -> None:
        self.update = update
        self.directory = directory

    def check(self, name: str, text: str) -> None:
        """Compare ``text`` with the golden file ``NAME.out`` (or rewrite it)."""
        path = self.directory / f"{name}.out"
        if self.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        if not path.is_file():
            pytest.fail(f"no golden file {path}; create it with pytest --update-golden")
        expected = path.read_text(encoding="utf-8")
        if text != expected:
            diff = "".join(
                difflib.unified_diff(
                    expected.splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    fromfile=f"golden/{name}.out",
                    tofile="this run",
                )
            )
            pytest.fail(
                f"output differs from golden/{name}.out (regenerate with pytest "
                f"--update-golden if the change is intended):\n{diff}",
                pytrace=False,
            )


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    """Compare printed output with ``tests/golden/*.out`` (see ``Golden``)."""
    return Golden(bool(request.config.getoption("--update-golden")))


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


class NetworkBlockedError(RuntimeError):
    """Raised when a test tries to open a network connection."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Block every outgoing connection and name resolution; fail the test on any attempt.

    The zoo and hardening test folders use it for every test (autouse there).
    """
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise NetworkBlockedError(f"network access attempted in a test: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert not attempts, f"the test attempted network access: {attempts}"
