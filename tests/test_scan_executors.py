from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

from filterstats.scanning import Executor, Lost, open_store, scan  # noqa: E402
from filterstats.scanning.executors import LocalExecutor, make_executor  # noqa: E402
from tests.scan_helpers import stalling_loader, write_checkpoints  # noqa: E402


def assert_same_store(left, right):
    pd.testing.assert_frame_equal(open_store(left), open_store(right), check_exact=True)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    """Checkpoints (one of them corrupt) and their store from the in-process executor."""
    folder = tmp_path_factory.mktemp("executors")
    specs = write_checkpoints(folder / "ckpts", 3)
    corrupt = folder / "ckpts" / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02 not a pickle")
    specs.insert(1, str(corrupt))
    summary = scan(specs, folder / "local", workers=1, progress=False)
    assert list(summary.failed) == [str(corrupt)]
    return specs, folder / "local", summary


class ListExecutor(Executor):
    """A minimal engine: runs tasks in reverse order, loses one of them."""

    def map(self, fn, items):
        for index, item in enumerate(reversed(items)):
            yield Lost(item, "node went away") if index == 0 else fn(item)


def test_a_custom_executor_plugs_in_and_lost_tasks_are_failures(local_store, tmp_path):
    specs, local, _ = local_store
    summary = scan(specs, tmp_path / "store", executor=ListExecutor(), progress=False)
    assert [o.spec for o in summary.outcomes] == specs
    assert list(summary.failed) == [specs[1], specs[-1]]
    assert "node went away" in summary.failed[specs[-1]]
    rerun = scan(specs, tmp_path / "store", workers=1, progress=False)
    assert set(rerun.succeeded) == {specs[-1]}
    assert_same_store(tmp_path / "store", local)


def test_make_executor_names_and_errors():
    assert isinstance(make_executor("local", workers=3), LocalExecutor)
    assert make_executor("local", workers=3).workers == 3
    with pytest.raises(ValueError, match="workers"):
        LocalExecutor(0)
    with pytest.raises(ValueError, match="executor_options"):
        make_executor(LocalExecutor(1), workers=None, max_tasks_per_child=1)


@pytest.mark.slow
def test_slurm_executor_in_submitit_debug_mode_gives_the_same_store(local_store, tmp_path):
    pytest.importorskip("submitit")
    specs, local, expected = local_store
    options = {"folder": tmp_path / "logs", "cluster": "debug"}
    summary = scan(
        specs, tmp_path / "store", executor="slurm", executor_options=options, progress=False
    )
    assert summary.failed.keys() == expected.failed.keys()
    assert_same_store(tmp_path / "store", local)


@pytest.mark.slow
def test_slurm_executor_in_submitit_local_mode_gives_the_same_store(local_store, tmp_path):
    pytest.importorskip("submitit")
    specs, local, expected = local_store
    options = {"folder": tmp_path / "logs", "cluster": "local", "poll_seconds": 0.5, "time_min": 5}
    summary = scan(
        specs, tmp_path / "store", executor="slurm", executor_options=options, progress=False
    )
    assert summary.failed.keys() == expected.failed.keys()
    assert set(summary.succeeded) == set(expected.succeeded)
    assert_same_store(tmp_path / "store", local)
    assert list((tmp_path / "logs").glob("*_submitted.pkl"))  # it went through submitit


def slurm_answer(*command: str) -> list[str]:
    """The words a Slurm client prints; [] when there is no cluster to answer."""
    conf = os.environ.get("SLURM_CONF")
    if shutil.which(command[0]) is None or (conf and not Path(conf).is_file()):
        return []  # (the clients retry a missing configuration file for a minute)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return done.stdout.split() if done.returncode == 0 else []


def skip_unless_this_machine_is_an_idle_slurm_node():
    """The tests' folders live under this machine's temporary folder: they run here only."""
    host = socket.gethostname().split(".")[0]
    if host not in slurm_answer("sinfo", "-h", "-N", "-t", "idle", "-o", "%N"):
        pytest.skip(f"this machine ({host}) is no idle node of a Slurm cluster; see .ci/slurm.sh")


def cancel_when_it_reports(marker: Path) -> tuple[threading.Thread, list[str]]:
    """A thread that `scancel`s the task that `stalling_loader` writes into ``marker``."""
    marker.unlink(missing_ok=True)
    cancelled: list[str] = []

    def cancel_the_stalled_task():
        for _ in range(240):
            if marker.exists() and marker.read_text():
                task = marker.read_text()
                subprocess.run(["scancel", task], timeout=20, check=True)
                cancelled.append(task)
                return
            time.sleep(0.5)

    canceller = threading.Thread(target=cancel_the_stalled_task, daemon=True)
    canceller.start()
    return canceller, cancelled


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_executor_on_a_real_cluster_gives_the_same_store(local_store, tmp_path):
    """A scan submitted to a running Slurm cluster (`.ci/slurm.sh start` makes one)."""
    pytest.importorskip("submitit")
    skip_unless_this_machine_is_an_idle_slurm_node()
    specs, local, expected = local_store
    options = {
        "folder": tmp_path / "logs",  # on the submitting machine: the single node shares it
        "cluster": "slurm",
        "poll_seconds": 0.5,
        "time_min": 5,
        "mem_gb": 1,
    }
    summary = scan(
        specs, tmp_path / "store", executor="slurm", executor_options=options, progress=False
    )
    assert summary.failed.keys() == expected.failed.keys()
    assert set(summary.succeeded) == set(expected.succeeded)
    assert_same_store(tmp_path / "store", local)
    # one sbatch array, one task per model, each known to the controller as completed
    scripts = list((tmp_path / "logs").glob("*_submission.sh"))
    assert len(scripts) == 1
    assert "#SBATCH --array=0-3" in scripts[0].read_text()
    array = scripts[0].name.split("_")[0]
    for _ in range(60):  # a task writes its result a moment before its job ends
        states = slurm_answer("squeue", "-h", "-r", "-t", "all", "-j", array, "-o", "%i=%T")
        if not any(state.endswith(("PENDING", "RUNNING", "COMPLETING")) for state in states):
            break
        time.sleep(0.5)
    assert sorted(states) == [f"{array}_{task}=COMPLETED" for task in range(4)]


@pytest.mark.slow
@pytest.mark.slurm
def test_a_task_cancelled_on_slurm_is_a_failure_and_a_rerun_completes_it(local_store, tmp_path):
    """Needs `sacct` (accounting): only through it does submitit see a task that died."""
    pytest.importorskip("submitit")
    skip_unless_this_machine_is_an_idle_slurm_node()
    if not slurm_answer("sacctmgr", "-n", "list", "cluster", "format=cluster"):
        pytest.skip("the Slurm cluster has no accounting (`sacctmgr list cluster`)")
    specs, local, expected = local_store
    stalled = next(spec for spec in specs if spec.endswith("model_2.pt"))
    marker = Path(stalled + ".slurm-task")
    canceller, cancelled = cancel_when_it_reports(marker)
    options = {"folder": tmp_path / "logs", "cluster": "slurm", "poll_seconds": 0.5, "time_min": 5}
    summary = scan(
        specs,
        tmp_path / "store",
        executor="slurm",
        executor_options=options,
        loader=stalling_loader,
        progress=False,
    )
    canceller.join(timeout=5)
    marker.unlink(missing_ok=True)
    assert cancelled, "the stalled task never reported its Slurm id"
    assert set(summary.failed) == {*expected.failed, stalled}
    assert "UncompletedJobError" in summary.failed[stalled]
    state = slurm_answer("sacct", "-n", "-X", "-P", "-j", cancelled[0], "-o", "State")
    assert state and state[0] == "CANCELLED"
    rerun = scan(specs, tmp_path / "store", workers=1, progress=False)
    assert list(rerun.succeeded) == [stalled]
    assert_same_store(tmp_path / "store", local)


@pytest.mark.slow
@pytest.mark.slurm
def test_without_job_accounting_a_cancelled_task_is_a_failure_not_a_hang(
    local_store, tmp_path, monkeypatch
):
    """Clusters without accounting: `sacct` fails, so only `squeue` can tell a task died."""
    pytest.importorskip("submitit")
    skip_unless_this_machine_is_an_idle_slurm_node()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sacct").write_text(
        "#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n"
    )
    (fake / "sacct").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    specs, local, expected = local_store
    stalled = next(spec for spec in specs if spec.endswith("model_2.pt"))
    marker = Path(stalled + ".slurm-task")
    canceller, cancelled = cancel_when_it_reports(marker)
    options = {
        "folder": tmp_path / "logs",
        "cluster": "slurm",
        "poll_seconds": 0.5,
        "time_min": 5,
        "lost_after_s": 3,
    }
    results = []

    def run_scan():
        results.append(
            scan(
                specs,
                tmp_path / "store",
                executor="slurm",
                executor_options=options,
                loader=stalling_loader,
                progress=False,
            )
        )

    scanner = threading.Thread(target=run_scan, daemon=True)
    scanner.start()
    scanner.join(timeout=300)  # the stalled task sleeps 120 s, its time limit is 5 min
    canceller.join(timeout=5)
    marker.unlink(missing_ok=True)
    assert cancelled, "the stalled task never reported its Slurm id"
    assert not scanner.is_alive(), "the scan still waits for a task Slurm no longer has"
    (summary,) = results
    assert set(summary.failed) == {*expected.failed, stalled}
    assert f"Slurm task {cancelled[0]} left the queue without a result" in summary.failed[stalled]
    rerun = scan(specs, tmp_path / "store", workers=1, progress=False)
    assert list(rerun.succeeded) == [stalled]
    assert_same_store(tmp_path / "store", local)


@pytest.mark.slow
def test_ray_executor_on_a_local_instance_gives_the_same_store(local_store, tmp_path):
    ray = pytest.importorskip("ray")
    specs, local, expected = local_store
    summary = scan(
        specs, tmp_path / "store", executor="ray", executor_options={"num_cpus": 2}, progress=False
    )
    assert not ray.is_initialized()  # the instance it started is stopped again
    assert summary.failed.keys() == expected.failed.keys()
    assert_same_store(tmp_path / "store", local)
