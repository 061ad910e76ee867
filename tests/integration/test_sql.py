"""The hot paths' statements run on the driver's own cursor (inventory.sql.execute): what
their callers rely on must be as through Django's cursor."""

import pytest
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from inventory import items, sql
from inventory.models import Item

pytestmark = pytest.mark.django_db


def test_a_statement_s_placeholders_and_literal_percent_signs_reach_the_driver_as_meant():
    row = sql.execute(sql.database(), "SELECT %s || '%%', %s", ["50", 7]).fetchone()

    assert tuple(row) == ("50%", 7)


def test_an_error_of_the_driver_is_django_s_so_callers_catch_it_as_always():
    items.item_create(name="apple", qty=1)
    table = connection.ops.quote_name(Item._meta.db_table)
    statement = f"INSERT INTO {table} (id, name, qty, reserved) VALUES (%s, %s, %s, %s)"  # noqa: S608
    params = [sql.param(Item, "id", Item().id), "apple", 1, 0]

    with pytest.raises(IntegrityError):  # django.db's, not sqlite3's or psycopg's
        sql.execute(sql.database(), statement, params)


def test_a_statement_is_logged_while_queries_are():
    with CaptureQueriesContext(connection) as captured:
        sql.execute(sql.database(), "SELECT %s", [1])

    assert [query["sql"] for query in captured.captured_queries] == ["SELECT 1"]
