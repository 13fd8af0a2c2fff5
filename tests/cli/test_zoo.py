"""``filterstats zoo paper``: the shipped catalogue, offline, in three formats."""

from __future__ import annotations

import csv
import io
import json

import pytest

from filterstats.cli import main
from filterstats.zoo.catalog import paper_pairs


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_zoo_paper_lists_every_pair(capsys, fmt):
    assert main(["zoo", "paper", "--format", fmt]) == 0
    out = capsys.readouterr().out
    pairs = paper_pairs()
    if fmt == "json":
        assert len(json.loads(out)) == len(pairs)
    elif fmt == "csv":
        assert len(list(csv.DictReader(io.StringIO(out)))) == len(pairs)
    else:
        assert len(out.strip().splitlines()) == len(pairs) + 1  # a header line
