"""`manage.py verify` finds rows that broke an invariant behind the service's back."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from inventory import items

pytestmark = pytest.mark.django_db


def test_verify_passes_on_a_consistent_database(capsys):
    items.item_create(name="apple", qty=5)
    call_command("verify")
    assert "ok" in capsys.readouterr().out


def corrupt(sql: str, *params) -> None:
    """Write past the model and, where the database allows it, past its constraints."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA ignore_check_constraints = ON")
        cursor.execute(sql, params)
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA ignore_check_constraints = OFF")


@pytest.mark.parametrize(
    ("sql", "params", "reason"),
    [
        ("UPDATE inventory_item SET name = %s", ["  padded  "], "not stored normalised"),
        ("UPDATE inventory_item SET name = %s", ["cafe\u0301"], "not stored normalised"),
        ("UPDATE inventory_item SET name = %s", ["bell\x07"], "control characters"),
        ("UPDATE inventory_item SET name = %s", ["x" * 201], "at most 200"),
    ],
)
def test_verify_names_the_row_with_a_broken_name(capsys, sql, params, reason):
    if reason == "at most 200" and connection.vendor != "sqlite":
        pytest.skip("PostgreSQL's varchar(200) refuses a longer name with no way around it")
    item = items.item_create(name="apple", qty=5)
    corrupt(sql, *params)

    with pytest.raises(CommandError):
        call_command("verify")

    err = capsys.readouterr().err
    assert str(item.id) in err
    assert reason in err


def test_verify_finds_a_negative_qty_where_the_database_lets_one_in(capsys):
    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL enforces the check constraint with no way around it")
    item = items.item_create(name="apple", qty=5)
    corrupt("UPDATE inventory_item SET qty = -1")

    with pytest.raises(CommandError):
        call_command("verify")
    assert str(item.id) in capsys.readouterr().err


def test_verify_finds_a_qty_that_sqlite_turned_into_a_real(capsys):
    if connection.vendor != "sqlite":
        pytest.skip("only SQLite stores an overflowing sum as a REAL")
    item = items.item_create(name="apple", qty=2**63 - 1)
    corrupt("UPDATE inventory_item SET qty = qty + 1")

    with pytest.raises(CommandError):
        call_command("verify")
    assert str(item.id) in capsys.readouterr().err
