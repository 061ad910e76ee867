"""The statements each endpoint sends to the database: no query that can be avoided.

A read is one query; a change of qty is one guarded UPDATE plus its ledger row, whether or
not the item has active holds, as long as none of them has expired; the token check is one
more query, once per TOKEN_CACHE_SECONDS and process (the fixtures have used the token
already). Transaction control (BEGIN, SAVEPOINT, COMMIT) is left out of the count, and a
subquery is part of the statement that holds it."""

import datetime
import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from inventory import clock, tokens
from inventory.models import Hold, HoldLine, IdempotencyKey, Item, Movement, Token
from tests.conftest import Api

pytestmark = pytest.mark.django_db

TABLES = {
    Item._meta.db_table: "item",
    Movement._meta.db_table: "movement",
    Token._meta.db_table: "token",
    IdempotencyKey._meta.db_table: "idempotency key",
    Hold._meta.db_table: "hold",
    HoldLine._meta.db_table: "hold line",
}
TRANSACTION_CONTROL = re.compile(
    r"^(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT)\b"
)
STRING_LITERAL = re.compile(r"'(?:[^']|'')*'")
PARENTHESES = re.compile(r"\([^()]*\)")


def statements(captured: CaptureQueriesContext) -> list[str]:
    """Each statement as "<verb> <table>", e.g. "UPDATE item"."""
    shown = []
    for query in captured.captured_queries:
        sql = query["sql"].strip()
        if TRANSACTION_CONTROL.match(sql.upper()):
            continue
        sql = STRING_LITERAL.sub("''", sql)
        while PARENTHESES.search(sql):  # innermost first: a subquery is named by its statement
            sql = PARENTHESES.sub(" _ ", sql)
        verb = sql.split()[0].upper()
        table = re.search(r'(?:FROM|INTO|UPDATE)\s+"?(\w+)"?', sql, re.IGNORECASE)
        # A statement on no table is named by what it calls, e.g. "SELECT pg_try_advisory_xact_lock".
        subject = TABLES[table.group(1)] if table else re.findall(r"\w+", sql)[1]
        shown.append(f"{verb} {subject}")
    return shown


@pytest.fixture
def apple(api) -> dict:
    return api.create("apple", 5)


# name -> (method, path, body, status, statements).
ENDPOINTS = {
    "create": (
        "POST",
        "/items",
        {"name": "pear", "qty": 2},
        201,
        ["INSERT item", "INSERT movement"],
    ),
    "list": ("GET", "/items", None, 200, ["SELECT item"]),
    "get": ("GET", "/items/{id}", None, 200, ["SELECT item"]),
    "get missing": (
        "GET",
        "/items/00000000-0000-4000-8000-000000000000",
        None,
        404,
        ["SELECT item"],
    ),
    "delta": (
        "PATCH",
        "/items/{id}/qty",
        {"delta": -2},
        200,
        ["UPDATE item", "INSERT movement"],
    ),
    "compare-and-set": (
        "PATCH",
        "/items/{id}/qty",
        {"delta": 1, "expected_qty": 5},
        200,
        ["UPDATE item", "INSERT movement"],
    ),
    "batch of one": (
        "POST",
        "/adjustments",
        {"changes": [{"id": "{id}", "delta": 1}]},
        200,
        ["UPDATE item", "INSERT movement"],
    ),
    # The item's row is locked (and read) first, so that expired holds are collected and
    # `reserved` in the answer is exact.
    "rename": (
        "PATCH",
        "/items/{id}",
        {"name": "pear"},
        200,
        ["SELECT item", "UPDATE item"],
    ),
    "threshold": (
        "PATCH",
        "/items/{id}",
        {"low_stock_threshold": 3},
        200,
        ["SELECT item", "UPDATE item"],
    ),
    "delete": (
        "DELETE",
        "/items/{id}",
        None,
        204,
        ["SELECT item", "DELETE item", "INSERT movement"],
    ),
    "movements": ("GET", "/items/{id}/movements", None, 200, ["SELECT movement"]),
}


def send(api, item: dict, name: str):
    """The request of ENDPOINTS[name] on `item`: (response, its statements)."""
    method, path, body, _, _ = ENDPOINTS[name]
    if body is not None:
        body = json.loads(json.dumps(body).replace("{id}", item["id"]))
    with CaptureQueriesContext(connection) as captured:
        response = api.request(method, path.replace("{id}", item["id"]), body)
    return response, statements(captured)


@pytest.mark.parametrize("name", ENDPOINTS)
def test_each_endpoint_sends_only_the_statements_it_needs(api, apple, name):
    response, sent = send(api, apple, name)

    assert response.status_code == ENDPOINTS[name][3], response.content
    assert sent == ENDPOINTS[name][4]


@pytest.mark.parametrize("name", ["list", "get", "delta", "compare-and-set", "batch of one", "rename"])
def test_an_active_hold_costs_no_statement_until_it_expires(api, apple, name):
    hold = api.post("/holds", {"lines": [{"id": apple["id"], "qty": 2}]})
    assert hold.status_code == 201, hold.content

    response, sent = send(api, apple, name)

    assert response.status_code == ENDPOINTS[name][3], response.content
    assert sent == ENDPOINTS[name][4]
    answered = response.json()
    item = answered["items"][0] if "items" in answered else answered
    assert (item["reserved"], item["available"]) == (2, item["qty"] - 2)


def test_the_first_write_after_an_expiry_collects_it_and_the_next_one_costs_nothing_more(
    api, apple, monkeypatch
):
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    now = [start]
    monkeypatch.setattr(clock, "now", lambda: now[0])
    assert (
        api.post("/holds", {"lines": [{"id": apple["id"], "qty": 2}], "ttl_seconds": 60}).status_code == 201
    )
    now[0] = start + datetime.timedelta(seconds=60)

    read, read_sent = send(api, apple, "get")
    first, first_sent = send(api, apple, "delta")
    second, second_sent = send(api, apple, "delta")

    # A read leaves the expired line out without writing: the item, then its lines.
    assert (read.json()["reserved"], read_sent) == (0, ["SELECT item", "SELECT hold line"])
    assert first.json()["reserved"] == second.json()["reserved"] == 0
    assert first_sent == [
        "UPDATE item",  # the guard, on the stored reserved: it fits, and counts the expired line
        "SELECT item",  # the row locked, its holds_expire_at passed: collect
        "SELECT hold line",
        "UPDATE hold line",
        "UPDATE item",  # reserved -= the expired lines
        "SELECT hold",
        "UPDATE hold",  # stored as expired
        "UPDATE item",  # holds_expire_at
        "SELECT item",
        "INSERT movement",
    ]
    assert second_sent == ENDPOINTS["delta"][4]


def test_a_delta_with_an_idempotency_key_also_claims_and_stores_the_key(api, apple):
    with CaptureQueriesContext(connection) as captured:
        response = api.patch(f"/items/{apple['id']}/qty", {"delta": 1}, Idempotency_Key="k-1")

    # On PostgreSQL a transaction-scoped advisory lock tells a concurrent repeat apart.
    lock = ["SELECT pg_try_advisory_xact_lock"] if connection.vendor == "postgresql" else []
    assert response.status_code == 200
    assert statements(captured) == [
        *lock,
        "SELECT idempotency key",
        "UPDATE item",
        "INSERT movement",
        "INSERT idempotency key",
    ]


def test_a_token_is_looked_up_on_its_first_use_in_a_process(client, apple):
    token = tokens.token_create(name="fresh", scope="read")

    with CaptureQueriesContext(connection) as captured:
        response = Api(client, token).get(f"/items/{apple['id']}")

    assert response.status_code == 200
    assert statements(captured) == ["SELECT token", "SELECT item"]


def test_a_batch_updates_each_item_and_writes_every_movement_in_one_insert(api, apple):
    pear = api.create("pear", 5)
    changes = [{"id": apple["id"], "delta": -1}, {"id": pear["id"], "delta": 2}]

    with CaptureQueriesContext(connection) as captured:
        response = api.post("/adjustments", {"changes": changes})

    assert response.status_code == 200
    assert statements(captured) == ["UPDATE item", "UPDATE item", "INSERT movement"]
