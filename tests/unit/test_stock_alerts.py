"""inventory.invariants.stock_alerts on its own: which alerts a change of `available` (and of
the low-stock threshold) crossed, not merely ended in. Exhaustively over small values, where
every crossing and every non-crossing happens, and with hypothesis over the whole range."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inventory.invariants import QTY_MAX, stock_alerts

LOW, OUT, BACK = "item.low_stock", "item.out_of_stock", "item.back_in_stock"
SMALL = range(5)
THRESHOLDS = (None, *SMALL)


def is_low(available: int, threshold: int | None) -> bool:
    """Below the threshold; never without one."""
    return threshold is not None and available < threshold


def contract(before: int, threshold_before: int | None, after: int, threshold_after: int | None) -> set:
    """The contract's table, read literally."""
    alerts = set()
    if is_low(after, threshold_after) and not is_low(before, threshold_before):
        alerts.add(LOW)
    if before > 0 and after == 0:
        alerts.add(OUT)
    if before == 0 and after > 0:
        alerts.add(BACK)
    return alerts


@pytest.mark.parametrize(
    ("before", "threshold_before", "after", "threshold_after", "alerts"),
    [
        # low_stock: crossing below the threshold, by a change of stock ...
        (5, 3, 2, 3, [LOW]),
        (3, 3, 2, 3, [LOW]),  # from exactly the threshold
        # ... or of the threshold, stock unchanged ...
        (4, 3, 4, 5, [LOW]),
        (4, None, 4, 5, [LOW]),  # a threshold set for the first time, above the stock
        # ... or both at once
        (6, 5, 2, 4, [LOW]),
        # staying below is no new crossing, however far it falls or the threshold moves
        (2, 3, 1, 3, []),
        (2, 3, 2, 10, []),
        (2, 3, 3, 5, []),
        # ending at the threshold is not below it
        (5, 3, 3, 3, []),
        (2, 2, 2, 3, [LOW]),
        (2, 3, 2, 2, []),  # the threshold lowered to the stock: no longer low, no alert
        (2, 3, 2, None, []),  # the threshold removed
        (5, None, 0, None, [OUT]),  # no threshold: never low
        # out_of_stock: reaching 0 from above
        (1, None, 0, None, [OUT]),
        (7, 3, 0, 3, [LOW, OUT]),
        (2, 3, 0, 3, [OUT]),  # already low: only out of stock is new
        (0, None, 0, None, []),  # staying at 0
        (0, 3, 0, 5, []),
        # back_in_stock: rising from 0
        (0, None, 1, None, [BACK]),
        (0, 3, 1, 3, [BACK]),  # still low: only back in stock
        (0, 3, 9, 3, [BACK]),
        (0, 0, 0, 1, [LOW]),  # at threshold 0, nothing is low; raised to 1, 0 is low
        # nothing crosses
        (5, 3, 5, 3, []),
        (5, 3, 4, 3, []),
        (5, 3, 9, 3, []),
        (2, 3, 5, 3, []),  # rising back above the threshold says nothing
        (QTY_MAX, 1, QTY_MAX - 1, 1, []),
        (QTY_MAX, QTY_MAX, QTY_MAX - 1, QTY_MAX, [LOW]),
    ],
)
def test_stock_alerts_name_what_the_change_crossed(before, threshold_before, after, threshold_after, alerts):
    assert stock_alerts(before, threshold_before, after, threshold_after) == alerts


@pytest.mark.parametrize(
    ("before", "threshold_before", "after", "threshold_after"),
    list(itertools.product(SMALL, THRESHOLDS, SMALL, THRESHOLDS)),
)
def test_every_small_change_alerts_exactly_as_the_contract_says(
    before, threshold_before, after, threshold_after
):
    alerts = stock_alerts(before, threshold_before, after, threshold_after)

    assert len(alerts) == len(set(alerts))
    assert set(alerts) == contract(before, threshold_before, after, threshold_after)


availability = st.integers(min_value=0, max_value=QTY_MAX)
thresholds = st.none() | availability


@given(availability, thresholds, availability, thresholds)
def test_alerts_follow_the_contract_over_the_whole_range(before, threshold_before, after, threshold_after):
    alerts = stock_alerts(before, threshold_before, after, threshold_after)

    assert len(alerts) == len(set(alerts))
    assert set(alerts) == contract(before, threshold_before, after, threshold_after)


@given(availability, thresholds)
def test_a_change_that_changes_nothing_alerts_nothing(available, threshold):
    assert stock_alerts(available, threshold, available, threshold) == []


@given(st.integers(min_value=1, max_value=QTY_MAX), thresholds, st.integers(min_value=1, max_value=QTY_MAX))
def test_moving_between_positive_stocks_never_alerts_out_of_or_back_in_stock(before, threshold, after):
    alerts = stock_alerts(before, threshold, after, threshold)

    assert OUT not in alerts
    assert BACK not in alerts


@given(availability, thresholds, availability, thresholds)
def test_out_of_stock_and_back_in_stock_never_come_together(before, threshold_before, after, threshold_after):
    alerts = stock_alerts(before, threshold_before, after, threshold_after)

    assert not {OUT, BACK} <= set(alerts)


@given(st.lists(st.tuples(availability, thresholds), min_size=2, max_size=20))
def test_along_any_history_out_of_stock_and_back_in_stock_alternate(history):
    """A consumer that tracks "in stock" from these alerts alone is never told twice in a row."""
    told = [
        alert
        for (before, threshold_before), (after, threshold_after) in itertools.pairwise(history)
        for alert in stock_alerts(before, threshold_before, after, threshold_after)
        if alert in (OUT, BACK)
    ]

    assert all(first != second for first, second in itertools.pairwise(told))
    if told:
        assert told[0] == (OUT if history[0][0] > 0 else BACK)
        assert (history[-1][0] == 0) == (told[-1] == OUT)
