"""Golden files for the printed comparison of the shipped demo models (a format change
is a visible diff; regenerate with ``pytest --update-golden`` and read the diff)."""

from __future__ import annotations

import math

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


@pytest.mark.parametrize("kind", [0, 1], ids=["robust-vs-robust", "normal-vs-normal"])
def test_same_kind_demo_controls_are_not_significant_after_adjustment(demo_reports, kind):
    group = demo_reports[kind]
    rotated = group[1:] + group[:1]  # seed s against seed s+1: each model in one pair
    cmp = fs.compare(group, rotated, labels=("x", "y"), bins=4, n_boot=200)
    assert cmp.design == "paired"
    for table in (cmp.summary(), cmp.by_depth()):
        adjusted = [r.p_holm for r in table if r.n_pairs >= 2]
        assert adjusted and all(p > 0.05 for p in adjusted)
    # Single models of the same kind: no inference at all, nothing ranked.
    single = fs.compare(group[0], group[1], labels=("x", "y"), bins=4, n_boot=50)
    assert all(math.isnan(r.p_value) for r in single.summary())
