"""``filterstats scan``: exit codes, options, errors, ``--trust-pickle``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from filterstats.cli import build_parser, main
from filterstats.scanning import Store, open_store
from tests.cli.helpers import ROOT
from tests.scan_helpers import direct_frame, write_checkpoints


def specs_file(tmp_path, specs):
    path = tmp_path / "specs.txt"
    path.write_text("# checkpoints\n" + "\n".join(specs) + "\n")
    return path


def test_cli_scan_exit_codes_and_store(tmp_path, capsys):
    good = write_checkpoints(tmp_path / "ckpts", 2)
    missing = str(tmp_path / "ckpts" / "gone.pt")
    path = specs_file(tmp_path, [good[0], missing, good[1]])
    store = tmp_path / "store"
    code = main(["scan", str(path), "--store", str(store), "--workers", "1", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    assert f"FAILED  {missing}: CheckpointError" in captured.err
    assert "2 scanned, 0 already in the store, 1 failed" in captured.err
    assert open_store(store).equals(direct_frame(good))
    path.write_text("\n".join(good) + "\n")
    code = main(["scan", str(path), "--store", str(store), "--workers", "1", "--no-progress"])
    assert code == 0
    assert "0 scanned, 2 already in the store, 0 failed" in capsys.readouterr().err


def test_cli_shard_limit_and_options(tmp_path):
    specs = write_checkpoints(tmp_path / "ckpts", 5)
    path = specs_file(tmp_path, specs)
    store = tmp_path / "store"
    args = ["scan", str(path), "--store", str(store), "--workers", "1", "--no-progress"]
    assert main([*args, "--shard", "0/2", "--limit", "2", "--eps", "0.1", "--raw-filters"]) == 0
    entries = Store(store).entries()
    assert [e.spec for e in entries] == [specs[0], specs[2]]
    assert entries[0].key_fields["eps"] == 0.1 and entries[0].raw_dtype == "float16"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shard", "2/2"], "shard"),
        (["--executor", "nope"], "invalid choice"),
        (["--kernel-size", "3y3"], "kernel size"),
        (["--kernel-size", "0"], "kernel size must be positive"),
    ],
)
def test_cli_user_errors_are_one_line(tmp_path, capsys, extra, message):
    path = specs_file(tmp_path, ["a.pt"])
    try:
        code = main(["scan", str(path), "--store", str(tmp_path / "s"), *extra])
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_missing_specs_file(tmp_path, capsys):
    code = main(["scan", str(tmp_path / "none.txt"), "--store", str(tmp_path / "s")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read SPECS" in err[0]


def test_cli_runs_as_filterstats_scan(tmp_path):
    specs = write_checkpoints(tmp_path / "ckpts", 1)
    path = specs_file(tmp_path, specs)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "filterstats",
            "scan",
            str(path),
            "--store",
            str(tmp_path / "store"),
            "--workers",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert f"ok      {specs[0]}" in result.stderr


def test_cli_kernel_size_means_what_it_means_for_analyze():
    """``--kernel-size 3`` is 3x3 for scan as for analyze (it once parsed as (3,))."""
    parser = build_parser()
    base = ["scan", "specs.txt", "--store", "s"]
    assert parser.parse_args([*base, "--kernel-size", "3"]).kernel_size == (3, 3)
    assert parser.parse_args([*base, "--kernel-size", "1x3"]).kernel_size == (1, 3)
    assert parser.parse_args([*base, "--kernel-size", "all"]).kernel_size is None


def test_cli_store_that_is_a_file_is_refused(tmp_path, capsys):
    path = specs_file(tmp_path, ["a.pt"])
    (tmp_path / "s").write_text("not a store")
    assert main(["scan", str(path), "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--store" in err[0] and "is a file" in err[0], err


def test_cli_trust_pickle_reaches_the_scan_and_its_hint_is_true(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), tmp_path / "whole.pt")
    path = specs_file(tmp_path, [str(tmp_path / "whole.pt")])
    args = ["scan", str(path), "--workers", "1", "--no-progress"]
    assert main([*args, "--store", str(tmp_path / "refused")]) == 1
    failed = next(line for line in capsys.readouterr().err.splitlines() if "FAILED" in line)
    assert "--trust-pickle" in failed and "trust_pickle=True" not in failed
    assert main([*args, "--store", str(tmp_path / "trusted"), "--trust-pickle"]) == 0
    frame = open_store(tmp_path / "trusted")
    assert list(frame["layer"]) == ["0"]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_scan_prints_worker_warnings_as_one_line_each(tmp_path, capfd, workers):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    from tests.scan_helpers import build_model

    good = write_checkpoints(tmp_path / "ckpts", 1)
    sorted_keys = tmp_path / "ckpts" / "sorted.safetensors"
    safetensors_torch.save_file(build_model(1).state_dict(), str(sorted_keys))
    path = specs_file(tmp_path, [good[0], str(sorted_keys)])
    code = main(["scan", str(path), "--store", str(tmp_path / "store"), "--workers", workers])
    err = capfd.readouterr().err
    assert code == 0, err
    lines = [line for line in err.splitlines() if "safetensors sorts its keys" in line]
    assert len(lines) == 1, err
    assert lines[0].lstrip("\r").startswith(f"filterstats: warning: {sorted_keys}: "), err
    assert "FilterStatsWarning" not in err and "warnings.warn" not in err and ".py:" not in err
