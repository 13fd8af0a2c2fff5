"""Golden files for the printed comparison of the shipped demo models (a format change
is a visible diff; regenerate with ``pytest --update-golden`` and read the diff)."""

from __future__ import annotations

import pytest

import filterstats as fs
from filterstats._version import __version__


def _printed(table: object) -> str:
    """The printed table, the library version replaced (it changes with every release)."""
    return repr(table).replace(f"version={__version__}", "version=VERSION") + "\n"


@pytest.fixture(scope="module")
def demo_reports() -> tuple[list[fs.FilterReport], list[fs.FilterReport]]:
    robust, normal = [], []
    for seed in fs.demo.available_seeds():
        pair = fs.demo.load_pair(seed=seed)
        robust.append(fs.analyze(pair.robust, label=f"robust-seed{seed}"))
        normal.append(fs.analyze(pair.normal, label=f"normal-seed{seed}"))
    return robust, normal


def test_demo_groups_summary_and_depth_table_golden(golden, demo_reports):
    robust, normal = demo_reports
    cmp = fs.compare(robust, normal, labels=("robust", "normal"))
    golden.check("compare_summary_demo", _printed(cmp.summary()))
    golden.check("compare_depth_demo", _printed(cmp.by_depth(4)))


def test_demo_single_pair_summary_golden(golden, demo_reports):
    robust, normal = demo_reports
    cmp = fs.compare(robust[0], normal[0], labels=("robust", "normal"))
    golden.check("compare_summary_demo_pair", _printed(cmp.summary()))
    golden.check("compare_depth_demo_pair", _printed(cmp.by_depth()))
