"""Golden files for the printed comparison of the shipped demo models (a format change
is a visible diff; regenerate with ``pytest --update-golden`` and read the diff)."""

from __future__ import annotations

import pytest

import filterstats as fs


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
    golden.check("compare_summary_demo", repr(cmp.summary()) + "\n")
    golden.check("compare_depth_demo", repr(cmp.by_depth(4)) + "\n")


def test_demo_single_pair_summary_golden(golden, demo_reports):
    robust, normal = demo_reports
    cmp = fs.compare(robust[0], normal[0], labels=("robust", "normal"))
    golden.check("compare_summary_demo_pair", repr(cmp.summary()) + "\n")
    golden.check("compare_depth_demo_pair", repr(cmp.by_depth()) + "\n")
