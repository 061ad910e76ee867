"""The statements each endpoint sends to the database: no query that can be avoided.

A read is one query; a change of qty is one guarded UPDATE plus its ledger row, whether or
not the item has active holds, as long as none of them has expired; the token check is one
more query, once per TOKEN_CACHE_SECONDS and process (the fixtures have used the token
already). Every write that changes something also writes its events, in one INSERT at the
end of its transaction; on PostgreSQL that one statement also writes its movements and takes
the feed's advisory lock (pg_advisory_xact_lock), which orders the feed by commit. A refused
write, and a write that changes nothing, writes no event and takes no lock. Transaction
control (BEGIN, SAVEPOINT, COMMIT) is left out of the count, and a subquery is part of the
statement that holds it."""

import datetime
import json
import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from inventory import clock, tokens
from inventory.models import Event, FeedState, Hold, HoldLine, IdempotencyKey, Item, Movement, Token
from tests.conftest import Api

pytestmark = pytest.mark.django_db

TABLES = {
    Item._meta.db_table: "item",
    Movement._meta.db_table: "movement",
    Token._meta.db_table: "token",
    IdempotencyKey._meta.db_table: "idempotency key",
    Hold._meta.db_table: "hold",
    HoldLine._meta.db_table: "hold line",
    Event._meta.db_table: "event",
    FeedState._meta.db_table: "feed state",
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


EVENTS = "INSERT event"  # the events of a write, in one statement
# On PostgreSQL a write's movements, the feed's lock and its events are one statement.
TAIL_ON_POSTGRES = "WITH event"


def expected(listed: list[str]) -> list[str]:
    """The statements listed, as PostgreSQL gets them: the movements written just before the
    events, the feed's lock and the events in one statement."""
    if connection.vendor != "postgresql":
        return listed
    shown = []
    for statement in listed:
        if statement == EVENTS:
            if shown and shown[-1] == "INSERT movement":
                shown.pop()
            statement = TAIL_ON_POSTGRES
        shown.append(statement)
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
        ["INSERT item", "INSERT movement", EVENTS],
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
        ["UPDATE item", "INSERT movement", EVENTS],
    ),
    # qty does not change: a movement of 0, and no event.
    "delta of 0": (
        "PATCH",
        "/items/{id}/qty",
        {"delta": 0},
        200,
        ["UPDATE item", "INSERT movement"],
    ),
    "compare-and-set": (
        "PATCH",
        "/items/{id}/qty",
        {"delta": 1, "expected_qty": 5},
        200,
        ["UPDATE item", "INSERT movement", EVENTS],
    ),
    "batch of one": (
        "POST",
        "/adjustments",
        {"changes": [{"id": "{id}", "delta": 1}]},
        200,
        ["UPDATE item", "INSERT movement", EVENTS],
    ),
    # The item's row is locked (and read) first, so that expired holds are collected and
    # `reserved` in the answer is exact.
    "rename": (
        "PATCH",
        "/items/{id}",
        {"name": "pear"},
        200,
        ["SELECT item", "UPDATE item", EVENTS],
    ),
    "threshold": (
        "PATCH",
        "/items/{id}",
        {"low_stock_threshold": 3},
        200,
        ["SELECT item", "UPDATE item", EVENTS],
    ),
    "delete": (
        "DELETE",
        "/items/{id}",
        None,
        204,
        ["SELECT item", "DELETE item", "INSERT movement", EVENTS],
    ),
    "movements": ("GET", "/items/{id}/movements", None, 200, ["SELECT movement"]),
    # How far the feed was pruned, then the page.
    "events": ("GET", "/events", None, 200, ["SELECT feed state", "SELECT event"]),
}

# Refused writes: name -> (method, path, body, status, statements). None writes anything,
# an event least of all. apple has 5, of which a hold sets 2 aside.
MISSING = "00000000-0000-4000-8000-000000000000"
REFUSALS = {
    "create of a taken name": ("POST", "/items", {"name": "apple", "qty": 1}, 400, ["INSERT item"]),
    "rename of a missing item": ("PATCH", f"/items/{MISSING}", {"name": "x"}, 404, ["SELECT item"]),
    "delta on a missing item": (
        "PATCH",
        f"/items/{MISSING}/qty",
        {"delta": 1},
        404,
        ["UPDATE item", "SELECT item"],
    ),
    "delta below 0": ("PATCH", "/items/{id}/qty", {"delta": -6}, 400, ["UPDATE item", "SELECT item"]),
    "delta below reserved": ("PATCH", "/items/{id}/qty", {"delta": -4}, 400, ["UPDATE item", "SELECT item"]),
    "stale expected_qty": (
        "PATCH",
        "/items/{id}/qty",
        {"delta": 1, "expected_qty": 4},
        409,
        ["UPDATE item", "SELECT item"],
    ),
    "batch below 0": (
        "POST",
        "/adjustments",
        {"changes": [{"id": "{id}", "delta": -6}]},
        400,
        ["UPDATE item", "SELECT item"],
    ),
    "delete of a held item": ("DELETE", "/items/{id}", None, 409, ["SELECT item"]),
    "hold over available": (
        "POST",
        "/holds",
        {"lines": [{"id": "{id}", "qty": 4}]},
        409,
        ["UPDATE item", "SELECT item"],
    ),
    "hold on a missing item": (
        "POST",
        "/holds",
        {"lines": [{"id": MISSING, "qty": 1}]},
        404,
        ["UPDATE item", "SELECT item"],
    ),
}


def send(api, item: dict, name: str, table: dict = ENDPOINTS):
    """The request of table[name] on `item`: (response, its statements)."""
    method, path, body, _, _ = table[name]
    if body is not None:
        body = json.loads(json.dumps(body).replace("{id}", item["id"]))
    with CaptureQueriesContext(connection) as captured:
        response = api.request(method, path.replace("{id}", item["id"]), body)
    return response, statements(captured)


@pytest.mark.parametrize("name", ENDPOINTS)
def test_each_endpoint_sends_only_the_statements_it_needs(api, apple, name):
    events_before = Event.objects.count()

    response, sent = send(api, apple, name)

    assert response.status_code == ENDPOINTS[name][3], response.content
    assert sent == expected(ENDPOINTS[name][4])
    assert (Event.objects.count() > events_before) == (EVENTS in ENDPOINTS[name][4])


@pytest.mark.parametrize("name", REFUSALS)
def test_a_refused_write_writes_no_event_and_takes_no_feed_lock(api, apple, name):
    assert api.post("/holds", {"lines": [{"id": apple["id"], "qty": 2}]}).status_code == 201
    events_before = list(Event.objects.values_list("seq", flat=True))

    response, sent = send(api, apple, name, REFUSALS)

    assert response.status_code == REFUSALS[name][3], response.content
    assert sent == REFUSALS[name][4]
    assert list(Event.objects.values_list("seq", flat=True)) == events_before
    assert api.get(f"/items/{apple['id']}").json() == {**apple, "reserved": 2, "available": 3}


@pytest.fixture
def hold(api, apple) -> dict:
    response = api.post("/holds", {"lines": [{"id": apple["id"], "qty": 2}]})
    assert response.status_code == 201, response.content
    return response.json()


HOLD_EVENTS = {"commit": "hold.committed", "release": "hold.released", "extend": "hold.extended"}
# A hold's action: the hold's row and its lines (read once), each item locked in id order,
# the change, then the hold's events.
HOLD_ACTIONS = {
    "commit": (
        None,
        [
            "SELECT hold",
            "SELECT hold line",
            "SELECT item",
            "UPDATE hold line",
            "UPDATE item",  # qty and reserved fall by the line
            "UPDATE item",  # holds_expire_at
            "UPDATE hold",
            "INSERT movement",  # movements and events: the transition's tail
            EVENTS,
        ],
    ),
    "release": (
        None,
        [
            "SELECT hold",
            "SELECT hold line",
            "SELECT item",
            "UPDATE hold line",
            "UPDATE item",  # reserved
            "UPDATE item",  # holds_expire_at
            "UPDATE hold",
            EVENTS,
        ],
    ),
    "extend": (
        {"ttl_seconds": 60},
        [
            "SELECT hold",
            "SELECT hold line",
            "SELECT item",
            "UPDATE hold line",
            "UPDATE item",  # holds_expire_at
            "UPDATE hold",
            EVENTS,
        ],
    ),
}


def test_a_hold_reserves_each_line_with_one_guarded_update_and_writes_its_events_in_one_insert(api, apple):
    pear = api.create("pear", 5)
    lines = [{"id": apple["id"], "qty": 1}, {"id": pear["id"], "qty": 1}]

    with CaptureQueriesContext(connection) as captured:
        response = api.post("/holds", {"lines": lines})

    assert response.status_code == 201, response.content
    assert statements(captured) == expected(
        ["UPDATE item", "UPDATE item", "INSERT hold", "INSERT hold line", EVENTS]
    )
    assert Event.objects.filter(hold_id=response.json()["id"]).count() == 3  # 2 qty_changed, hold.created


@pytest.mark.parametrize("action", HOLD_ACTIONS)
def test_each_hold_action_sends_only_the_statements_it_needs(api, hold, action):
    body, listed = HOLD_ACTIONS[action]

    with CaptureQueriesContext(connection) as captured:
        response = api.post(f"/holds/{hold['id']}/{action}", body)

    assert response.status_code == 200, response.content
    assert statements(captured) == expected(listed)
    assert Event.objects.filter(type=HOLD_EVENTS[action], hold_id=hold["id"]).count() == 1


@pytest.mark.parametrize(("action", "status"), [("commit", 200), ("release", 409), ("extend", 409)])
def test_a_hold_action_that_changes_nothing_reads_the_hold_and_writes_no_event(api, hold, action, status):
    assert api.post(f"/holds/{hold['id']}/commit").status_code == 200
    events_before = Event.objects.count()

    with CaptureQueriesContext(connection) as captured:
        response = api.post(
            f"/holds/{hold['id']}/{action}", {"ttl_seconds": 60} if action == "extend" else None
        )

    assert response.status_code == status, response.content
    assert statements(captured) == (["SELECT hold", "SELECT hold line"] if status == 200 else ["SELECT hold"])
    assert Event.objects.count() == events_before


@pytest.mark.parametrize("name", ["list", "get", "delta", "compare-and-set", "batch of one", "rename"])
def test_an_active_hold_costs_no_statement_until_it_expires(api, apple, name):
    hold = api.post("/holds", {"lines": [{"id": apple["id"], "qty": 2}]})
    assert hold.status_code == 201, hold.content

    response, sent = send(api, apple, name)

    assert response.status_code == ENDPOINTS[name][3], response.content
    assert sent == expected(ENDPOINTS[name][4])
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
    assert first_sent == expected(
        [
            "UPDATE item",  # the guard: refused, the stored reserved counts an expired line
            "SELECT item",  # the row locked, its holds_expire_at passed: collect
            "SELECT hold line",
            "UPDATE hold line",
            "UPDATE item",  # reserved -= the expired lines
            "SELECT hold",
            "UPDATE hold",  # stored as expired
            "SELECT hold",  # the expired hold and its lines, for hold.expired
            "SELECT hold line",
            "UPDATE item",  # holds_expire_at
            "SELECT item",
            "UPDATE item",  # the guard again, on the exact reserved
            "INSERT movement",
            EVENTS,  # hold.expired, qty_changed (expire), then qty_changed (adjust), in one INSERT
        ]
    )
    assert second_sent == expected(ENDPOINTS["delta"][4])


def test_a_delta_with_an_idempotency_key_also_claims_and_stores_the_key(api, apple):
    with CaptureQueriesContext(connection) as captured:
        response = api.patch(f"/items/{apple['id']}/qty", {"delta": 1}, Idempotency_Key="k-1")

    # On PostgreSQL a transaction-scoped advisory lock tells a concurrent repeat apart.
    lock = ["SELECT pg_try_advisory_xact_lock"] if connection.vendor == "postgresql" else []
    assert response.status_code == 200
    assert statements(captured) == expected(
        [
            *lock,
            "SELECT idempotency key",
            "UPDATE item",
            "INSERT movement",
            EVENTS,
            "INSERT idempotency key",
        ]
    )


def test_a_replayed_write_reads_its_key_and_writes_no_event(api, apple):
    assert api.patch(f"/items/{apple['id']}/qty", {"delta": 1}, Idempotency_Key="k-1").status_code == 200
    events_before = Event.objects.count()

    with CaptureQueriesContext(connection) as captured:
        response = api.patch(f"/items/{apple['id']}/qty", {"delta": 1}, Idempotency_Key="k-1")

    lock = ["SELECT pg_try_advisory_xact_lock"] if connection.vendor == "postgresql" else []
    assert (response.status_code, response.headers["Idempotent-Replayed"]) == (200, "true")
    assert statements(captured) == [*lock, "SELECT idempotency key"]
    assert Event.objects.count() == events_before


def test_a_token_is_looked_up_on_its_first_use_in_a_process(client, apple):
    token = tokens.token_create(name="fresh", scope="read")

    with CaptureQueriesContext(connection) as captured:
        response = Api(client, token).get(f"/items/{apple['id']}")

    assert response.status_code == 200
    assert statements(captured) == ["SELECT token", "SELECT item"]


def test_a_batch_updates_each_item_and_writes_every_movement_and_every_event_in_one_insert(api, apple):
    pear = api.create("pear", 5)
    changes = [{"id": apple["id"], "delta": -1}, {"id": pear["id"], "delta": 2}]
    events_before = Event.objects.count()

    with CaptureQueriesContext(connection) as captured:
        response = api.post("/adjustments", {"changes": changes})

    assert response.status_code == 200
    assert statements(captured) == expected(["UPDATE item", "UPDATE item", "INSERT movement", EVENTS])
    assert Event.objects.count() == events_before + 2
