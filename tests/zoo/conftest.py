"""Fixtures of the zoo tests: no test here may open a network connection."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _offline(no_network: list[object]) -> list[object]:
    """Every zoo test runs with the network blocked (``no_network`` in tests/conftest.py)."""
    return no_network
