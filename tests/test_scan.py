from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

import filterstats as fs  # noqa: E402
from filterstats.scanning import Store, open_store, read_specs, scan, select_specs  # noqa: E402
from filterstats.scanning.store import entry_id  # noqa: E402
from tests.scan_helpers import (  # noqa: E402
    build_model,
    direct_frame,
    module_loader,
    slow_loader,
    write_checkpoints,
)

ROOT = Path(__file__).resolve().parents[1]


def assert_frames_equal(left, right):
    pd.testing.assert_frame_equal(
        left.reset_index(drop=True), right.reset_index(drop=True), check_exact=True
    )


def manifest(store: Path) -> dict[str, dict]:
    entries = (json.loads(p.read_text()) for p in (store / "manifest").glob("*.json"))
    return {e["spec"]: e for e in entries}


def test_store_equals_direct_analysis_of_checkpoints(tmp_path):
    specs = write_checkpoints(tmp_path / "ckpts", 3)
    summary = scan(specs, tmp_path / "store", workers=1, progress=False)
    assert summary.ok and summary.succeeded == tuple(specs) and not summary.failed
    frame = open_store(tmp_path / "store")
    assert_frames_equal(frame, direct_frame(specs))
    assert frame["model"].unique().tolist() == sorted(specs)
    assert (frame["status"] == "ok").sum() == sum(
        len(fs.extract_filters(build_model(i))) for i in range(3)
    )
    # each model file alone is a report that reads back with read_report
    entry = Store(tmp_path / "store").entry(specs[1])
    report = fs.read_report(tmp_path / "store" / "layers" / entry.layers_file)
    assert report.models == (specs[1],)
    assert entry.n_measured == len(report.measured)


def test_store_equals_direct_analysis_of_modules_with_settings(tmp_path):
    specs = [f"net:{i}" for i in range(3)]
    kwargs = {"eps": 0.05, "definition": "torchconvquality", "kernel_size": None}
    scan(specs, tmp_path / "store", workers=1, loader=module_loader, progress=False, **kwargs)
    frame = open_store(tmp_path / "store")
    assert_frames_equal(frame, direct_frame(specs, module_loader, **kwargs))
    assert set(frame["kernel_size"]) == {"3x3", "1x1"}  # kernel_size=None kept the 1x1
    assert frame.attrs["filterstats"]["eps"] == 0.05


def test_rerun_skips_complete_models_and_rescans_changed_ones(tmp_path):
    specs = write_checkpoints(tmp_path / "ckpts", 3)
    store = tmp_path / "store"
    scan(specs, store, workers=1, progress=False)
    again = scan(specs, store, workers=1, progress=False)
    assert again.skipped == tuple(specs) and again.succeeded == ()
    # a checkpoint rewritten with other weights is scanned again, the others are not
    torch.save(build_model(7).state_dict(), specs[1])
    changed = scan(specs, store, workers=1, progress=False)
    assert changed.succeeded == (specs[1],)
    assert changed.skipped == (specs[0], specs[2])
    assert_frames_equal(open_store(store), direct_frame(specs))
    assert len(list((store / "layers").glob("*.parquet"))) == 3  # the old file is gone
    # other analysis settings invalidate every stored model
    assert scan(specs, store, workers=1, eps=0.1, progress=False).succeeded == tuple(specs)
    assert_frames_equal(open_store(store), direct_frame(specs, eps=0.1))


def test_bad_checkpoints_are_recorded_and_the_rest_complete(tmp_path):
    good = write_checkpoints(tmp_path / "ckpts", 3)
    corrupt = tmp_path / "ckpts" / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04" + os.urandom(200))
    missing = str(tmp_path / "ckpts" / "missing.pt")
    specs = [good[0], str(corrupt), good[1], missing, good[2]]
    summary = scan(specs, tmp_path / "store", workers=1, progress=False)
    assert not summary.ok
    assert summary.succeeded == tuple(good)
    assert set(summary.failed) == {str(corrupt), missing}
    assert "CheckpointError" in summary.failed[missing] and "missing.pt" in summary.failed[missing]
    entries = manifest(tmp_path / "store")
    assert entries[str(corrupt)]["status"] == "failed"
    assert entries[str(corrupt)]["error"].startswith("CheckpointError")
    assert_frames_equal(open_store(tmp_path / "store"), direct_frame(good))
    # a re-run retries the failures (and only them); fixed files then succeed
    torch.save(build_model(5).state_dict(), corrupt)
    retry = scan(specs, tmp_path / "store", workers=1, progress=False)
    assert retry.succeeded == (str(corrupt),)
    assert retry.skipped == tuple(good)
    assert list(retry.failed) == [missing]
    assert_frames_equal(open_store(tmp_path / "store"), direct_frame([*good, str(corrupt)]))


def test_kill_mid_scan_then_resume_gives_the_uninterrupted_rows(tmp_path):
    specs = write_checkpoints(tmp_path / "ckpts", 4)
    reference = tmp_path / "reference"
    scan(specs, reference, workers=1, progress=False)

    store = tmp_path / "store"
    script = textwrap.dedent(
        f"""
        from filterstats.scanning import scan
        from tests.scan_helpers import slow_loader
        scan({specs!r}, {str(store)!r}, workers=1, loader=slow_loader, progress=False)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        while not list((store / "manifest").glob("*.json")):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no model finished in time"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    done = manifest(store)
    assert 1 <= len(done) < len(specs)  # killed mid-scan
    assert len(open_store(store)["model"].unique()) == len(done)  # only whole models

    resumed = scan(specs, store, workers=1, loader=slow_loader, progress=False)
    assert resumed.ok
    assert set(resumed.skipped) == set(done)
    assert set(resumed.succeeded) == set(specs) - set(done)
    assert_frames_equal(open_store(store), open_store(reference))
    assert not list(store.rglob("*.tmp"))


def test_crash_between_data_file_and_manifest_leaves_no_partial_model(tmp_path, monkeypatch):
    specs = write_checkpoints(tmp_path / "ckpts", 3)
    store = tmp_path / "store"
    commit = Store.commit
    calls = []

    def crash_on_second(self, entry):
        calls.append(entry.spec)
        if len(calls) == 2:
            raise KeyboardInterrupt  # like a kill after the data file, before the commit
        commit(self, entry)

    monkeypatch.setattr(Store, "commit", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        scan(specs, store, workers=1, progress=False)
    monkeypatch.setattr(Store, "commit", commit)
    assert len(list((store / "layers").glob("*.parquet"))) == 2  # written, not committed
    assert open_store(store)["model"].unique().tolist() == [specs[0]]
    # a half-written temporary file of the third model, as a kill during the write leaves
    stale = store / "layers" / f".{entry_id(specs[2])}-0123.parquet.ab12cd34.tmp"
    stale.write_bytes(b"PAR1 half")
    resumed = scan(specs, store, workers=1, progress=False)
    assert resumed.skipped == (specs[0],) and resumed.succeeded == tuple(specs[1:])
    assert_frames_equal(open_store(store), direct_frame(specs))
    assert not stale.exists()
    assert len(list((store / "layers").glob("*.parquet"))) == 3


def test_two_worker_processes_give_the_same_store(tmp_path):
    specs = write_checkpoints(tmp_path / "ckpts", 3)
    summary = scan(specs, tmp_path / "store", workers=2, progress=False)
    assert summary.ok and set(summary.succeeded) == set(specs)
    assert [o.spec for o in summary.outcomes] == specs  # summary in spec order
    assert_frames_equal(open_store(tmp_path / "store"), direct_frame(specs))


def test_select_specs_shard_and_limit():
    specs = [f"m{i}" for i in range(10)]
    shards = [select_specs(specs, shard=f"{i}/3") for i in range(3)]
    assert shards[0] == ["m0", "m3", "m6", "m9"]
    assert shards[2] == ["m2", "m5", "m8"]
    assert sorted(s for shard in shards for s in shard) == sorted(specs)
    assert select_specs(specs, shard=(1, 3), limit=2) == ["m1", "m4"]
    assert select_specs(specs, limit=0) == []
    assert select_specs(["a", "b", "a", "c"]) == ["a", "b", "c"]
    for bad in ("3/3", "1", "a/b", "-1/2", (2, 1)):
        with pytest.raises(ValueError, match="shard"):
            select_specs(specs, shard=bad)


def test_shard_and_limit_scan_only_the_selected_models(tmp_path):
    specs = write_checkpoints(tmp_path / "ckpts", 5)
    summary = scan(specs, tmp_path / "store", shard="1/2", limit=1, workers=1, progress=False)
    assert summary.succeeded == (specs[1],)
    assert list(manifest(tmp_path / "store")) == [specs[1]]


def test_read_specs_and_argument_errors(tmp_path):
    path = tmp_path / "specs.txt"
    path.write_text(
        "# models\n a.pt \n\ntimm:resnet18   # the reference\n  # indented comment\n"
        "runs/run#3.pt\t# a tab, then a comment\n"
    )
    assert read_specs(path) == ["a.pt", "timm:resnet18", "runs/run#3.pt"]
    with pytest.raises(TypeError, match="read_specs"):
        scan("a.pt", tmp_path / "store")
    with pytest.raises(ValueError, match="raw_dtype"):
        scan(["a.pt"], tmp_path / "store", raw_filters=True, raw_dtype="int8")
    with pytest.raises(ValueError, match="executor"):
        scan(["a.pt"], tmp_path / "store", executor="dask")
    with pytest.raises(FileNotFoundError, match="not a filterstats store"):
        open_store(tmp_path / "nowhere")


def test_worker_warnings_are_logged_by_the_scan_not_printed_by_the_workers(tmp_path, caplog, capfd):
    import logging
    import warnings

    safetensors_torch = pytest.importorskip("safetensors.torch")
    from tests.scan_helpers import build_model

    specs = write_checkpoints(tmp_path / "ckpts", 1)
    for index in (1, 2):
        path = tmp_path / "ckpts" / f"sorted_{index}.safetensors"
        safetensors_torch.save_file(build_model(index).state_dict(), str(path))
        specs.append(str(path))
    with caplog.at_level(logging.WARNING, logger="filterstats"), warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing reaches this process as a Python warning
        summary = scan(specs, tmp_path / "store", workers=2, progress=False)
    assert summary.ok
    logged = [r for r in caplog.records if "safetensors sorts its keys" in r.getMessage()]
    assert sorted(r.getMessage().split(":")[0] for r in logged) == specs[1:]  # one per model
    assert all(r.levelno == logging.WARNING for r in logged)
    assert "FilterStatsWarning" not in capfd.readouterr().err


def test_int_kernel_size_is_the_same_scan_as_its_tuple(tmp_path):
    specs = write_checkpoints(tmp_path / "ckpts", 1)
    first = scan(specs, tmp_path / "store", workers=1, progress=False, raw_filters=True)
    assert first.succeeded == tuple(specs)
    again = scan(specs, tmp_path / "store", kernel_size=3, workers=1, progress=False,
                 raw_filters=True)  # fmt: skip
    assert again.skipped == tuple(specs)
    assert Store(tmp_path / "store").entries()[0].key_fields["kernel_size"] == "3x3"
