"""The command line on bad input, as a user runs it: exit 2, one line, no traceback, no debris."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.hardening.conftest import SENTINEL, Payload, listing, run_cli, small_net


def _files(tmp_path: Path) -> None:
    torch.save(small_net().state_dict(), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    start = data.index(small_net().state_dict()["3.weight"].numpy().tobytes()[:64]) + 64
    corrupt[start : start + 64] = bytes(64)
    (tmp_path / "corrupt.pt").write_bytes(bytes(corrupt))
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "folder.pt").mkdir()
    payload = {"state_dict": small_net().state_dict(), "x": Payload(tmp_path / SENTINEL)}
    torch.save(payload, tmp_path / "evil.pt")
    torch.save({"epoch": 1}, tmp_path / "nostate.pt")


def _assert_user_error(result, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("filterstats: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.stdout == ""


BAD = {
    "truncated.pt": "truncated or corrupt",
    "corrupt.pt": "CRC",
    "empty.pt": "empty",
    "folder.pt": "is a directory",
    "missing.pt": "not found",
    "evil.pt": "weights_only",
    "nostate.pt": "holds no state dict",
}


QUICK = ("truncated.pt", "corrupt.pt", "evil.pt", "folder.pt")


@pytest.mark.parametrize(
    "name", [n if n in QUICK else pytest.param(n, marks=pytest.mark.slow) for n in BAD]
)
def test_analyze_bad_files_exit_2_with_one_line_and_no_output_file(tmp_path, name):
    _files(tmp_path)
    (tmp_path / "out").mkdir()
    before = listing(tmp_path)
    result = run_cli("analyze", name, "--format", "csv", "--out", "out/r.csv", cwd=tmp_path)
    _assert_user_error(result, name, BAD[name])
    assert listing(tmp_path) == before  # no partial output, no temporary left behind
    assert not (tmp_path / SENTINEL).exists()


@pytest.mark.parametrize(
    "name",
    ["evil.pt", *(pytest.param(n, marks=pytest.mark.slow) for n in ("truncated.pt", "folder.pt"))],
)
def test_compare_bad_files_leave_no_output_directory(tmp_path, name):
    _files(tmp_path)
    before = listing(tmp_path)
    result = run_cli("compare", "good.pt", name, "--out", "cmp", cwd=tmp_path)
    _assert_user_error(result, name)
    assert listing(tmp_path) == before
    assert not (tmp_path / SENTINEL).exists()


def test_scan_records_bad_files_and_goes_on(tmp_path):
    pytest.importorskip("pyarrow")
    _files(tmp_path)
    (tmp_path / "specs.txt").write_text("good.pt\ntruncated.pt\nevil.pt\n")
    result = run_cli("scan", "specs.txt", "--store", "store", "--workers", "1", cwd=tmp_path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1, result.stderr  # the work ran, some models failed
    assert not (tmp_path / SENTINEL).exists()
    new = {p for p, _ in listing(tmp_path)} - {f"{tmp_path.name}/{n}" for n in
                                               (*BAD, "good.pt", "specs.txt")}  # fmt: skip
    assert all(p.startswith(f"{tmp_path.name}/store") or p.startswith(f"{tmp_path.name}/folder.pt")
               for p in new), new  # fmt: skip


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--device", "cuda:7" if torch.cuda.is_available() else "cuda"], "--device"),
        pytest.param(["--device", "nonsense"], "--device", marks=pytest.mark.slow),
        (["--kernel-size", "0"], "--kernel-size"),
        pytest.param(["--kernel-size", "3x"], "--kernel-size", marks=pytest.mark.slow),
        pytest.param(["--eps", "2"], "eps", marks=pytest.mark.slow),
    ],
)
def test_bad_options_exit_2_without_a_traceback(tmp_path, options, needle):
    _files(tmp_path)
    result = run_cli("analyze", "good.pt", *options, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert needle in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "spec",
    [
        "foo:bar",
        *(
            pytest.param(s, marks=pytest.mark.slow)
            for s in ("demo:robust@99", "model.weird", "x.onnx")
        ),
    ],
)
def test_bad_specs_exit_2_with_one_line(tmp_path, spec):
    result = run_cli("analyze", spec, cwd=tmp_path)
    _assert_user_error(result)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_output_into_a_missing_directory_is_one_line_and_leaves_nothing(tmp_path):
    _files(tmp_path)
    before = listing(tmp_path)
    result = run_cli("analyze", "good.pt", "--format", "csv", "--out", "nodir/r.csv", cwd=tmp_path)
    _assert_user_error(result, "nodir")
    assert listing(tmp_path) == before


def test_model_without_convs_is_an_empty_table_and_not_a_success(tmp_path):
    torch.save(torch.nn.Sequential(torch.nn.Linear(3, 4)).state_dict(), tmp_path / "mlp.pt")
    result = run_cli("analyze", "mlp.pt", "--format", "csv", "--out", "mlp.csv", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "filterstats: warning: no convolution" in result.stderr
    assert "filterstats: error: no layer of mlp.pt was measured" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.csv", "mlp.pt"]


def test_nan_weights_give_nan_rows_not_a_crash(tmp_path):
    state = small_net().state_dict()
    state["0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    result = run_cli("analyze", "nan.pt", "--format", "csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("nan.pt,0,"))
    assert ",nan," in row.lower() or ",," in row
