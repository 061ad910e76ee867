"""A write aborted for a conflict runs again, but never past the bound a client is owed."""

import pytest
from django.db import OperationalError

from inventory import transactions


class Conflict(Exception):
    sqlstate = "40001"  # serialization_failure


def conflicting(calls: list):
    def service():
        calls.append(1)
        try:
            raise Conflict("could not serialize access")
        except Conflict as cause:
            raise OperationalError("could not serialize access") from cause

    return service


def test_a_conflict_is_retried_up_to_five_attempts(monkeypatch):
    monkeypatch.setattr(transactions.time, "sleep", lambda seconds: None)
    calls = []

    with pytest.raises(OperationalError):
        transactions.retry_on_conflict(conflicting(calls))()

    assert len(calls) == 5


def test_no_retry_starts_more_than_five_seconds_after_the_first_attempt(monkeypatch):
    clock = iter([100.0, 100.1, 106.0, 200.0, 300.0])  # the third look is past the bound
    monkeypatch.setattr(transactions.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(transactions.time, "sleep", lambda seconds: None)
    calls = []

    with pytest.raises(OperationalError):
        transactions.retry_on_conflict(conflicting(calls))()

    assert len(calls) == 2
