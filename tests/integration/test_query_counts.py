"""The statements each endpoint sends to the database: no query that can be avoided.

A read is one query; a change of qty is one guarded UPDATE plus its ledger row; the token
check is one more query, once per TOKEN_CACHE_SECONDS and process (the fixtures have used
the token already). Transaction control (BEGIN, SAVEPOINT, COMMIT) is left out of the count."""

import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from inventory import tokens
from inventory.models import IdempotencyKey, Item, Movement, Token
from tests.conftest import Api

pytestmark = pytest.mark.django_db

TABLES = {
    Item._meta.db_table: "item",
    Movement._meta.db_table: "movement",
    Token._meta.db_table: "token",
    IdempotencyKey._meta.db_table: "idempotency key",
}
TRANSACTION_CONTROL = re.compile(
    r"^(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT)\b"
)


def statements(captured: CaptureQueriesContext) -> list[str]:
    """Each statement as "<verb> <table>", e.g. "UPDATE item"."""
    shown = []
    for query in captured.captured_queries:
        sql = query["sql"].strip()
        if TRANSACTION_CONTROL.match(sql.upper()):
            continue
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
    "delete": (
        "DELETE",
        "/items/{id}",
        None,
        204,
        ["SELECT item", "DELETE item", "INSERT movement"],
    ),
    "movements": ("GET", "/items/{id}/movements", None, 200, ["SELECT movement"]),
}


@pytest.mark.parametrize("name", ENDPOINTS)
def test_each_endpoint_sends_only_the_statements_it_needs(api, apple, name):
    method, path, body, status, expected = ENDPOINTS[name]

    if body is not None:
        body = json.loads(json.dumps(body).replace("{id}", apple["id"]))

    with CaptureQueriesContext(connection) as captured:
        response = api.request(method, path.replace("{id}", apple["id"]), body)

    assert response.status_code == status, response.content
    assert statements(captured) == expected


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
