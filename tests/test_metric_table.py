"""The one table of metrics: the order every result shows its metric columns in."""

from __future__ import annotations

from filterstats import metric_table


def test_in_table_order_puts_table_metrics_first_then_others_as_seen():
    names = metric_table.names()
    held = ["drift_cosine", names[2], names[0], "drift_unmoved", names[2]]
    assert metric_table.in_table_order(held) == (
        names[0],
        names[2],
        "drift_cosine",
        "drift_unmoved",
    )
    assert metric_table.in_table_order(reversed(names)) == names
    assert metric_table.in_table_order([]) == ()
