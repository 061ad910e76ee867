"""The hot paths' statements run on the driver's own cursor (inventory.sql.execute): what
their callers rely on must be as through Django's cursor."""

import pytest
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from inventory import items, sql
from inventory.models import Event, Item, Movement

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


@pytest.mark.django_db(transaction=True)
def test_a_write_inside_a_transaction_it_did_not_begin_commits_nothing_of_its_own():
    """A transition's COMMIT may go with its last statement (sql.execute) only when its own
    block began the transaction: inside an outer block that then fails, nothing is left."""
    item = items.item_create(name="outer", qty=5)
    movements, feed = Movement.objects.count(), Event.objects.count()

    with pytest.raises(RuntimeError), transaction.atomic():
        items.qty_adjust(item_id=item.id, delta=-1)
        raise RuntimeError("the outer block fails after the write")

    assert items.item_get(item_id=item.id).qty == 5
    assert (Movement.objects.count(), Event.objects.count()) == (movements, feed)


@pytest.mark.django_db(transaction=True)
def test_a_write_that_carries_its_commit_is_committed_and_the_connection_writes_on():
    item = items.item_create(name="own", qty=5)

    assert items.qty_adjust(item_id=item.id, delta=-1).qty == 4
    assert not connection.in_atomic_block
    other = connections.create_connection(DEFAULT_DB_ALIAS)  # another session
    try:
        table = connection.ops.quote_name(Item._meta.db_table)
        with other.cursor() as cursor:
            cursor.execute(f"SELECT qty FROM {table} WHERE id = %s", [sql.param(Item, "id", item.id)])  # noqa: S608
            assert cursor.fetchone()[0] == 4
    finally:
        other.close()
    assert items.qty_adjust(item_id=item.id, delta=-1).qty == 3


@pytest.mark.django_db(transaction=True)
def test_a_read_opens_the_connection_when_none_is_open():
    """A read runs no BEGIN first: in a new thread, or after the connection was closed, its
    statement is the one that must open it."""
    item = items.item_create(name="fresh", qty=5)
    connection.close()

    assert items.item_get(item_id=item.id).qty == 5
