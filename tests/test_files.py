"""Atomic writes: the target holds the old content or the new, and no temporary remains."""

from __future__ import annotations

import threading

import pytest

from filterstats._files import atomic_target, atomic_write_text


def test_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    atomic_write_text(target, "new, ünïcode\n")
    assert target.read_text(encoding="utf-8") == "new, ünïcode\n"
    assert list(tmp_path.iterdir()) == [target]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")

    def fail_halfway() -> None:
        with atomic_target(target) as temporary:
            temporary.write_text("half of the new")
            raise RuntimeError("failed after writing half")

    with pytest.raises(RuntimeError, match="half"):
        fail_halfway()
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_concurrent_writers_use_their_own_temporaries(tmp_path):
    target = tmp_path / "out.txt"
    names: list[str] = []
    inside = threading.Barrier(4)

    def write(text: str) -> None:
        with atomic_target(target) as temporary:
            names.append(temporary.name)
            temporary.write_text(text)
            inside.wait(timeout=10)  # all four temporaries exist at once

    threads = [threading.Thread(target=write, args=(str(i) * 100,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(names)) == 4
    assert target.read_text() in {str(i) * 100 for i in range(4)}
    assert list(tmp_path.iterdir()) == [target]
