"""Holds through HTTP: every hold endpoint and every refusal, with the whole state as clients
see it (every item, every hold, every item's active holds, every movement) compared before and
after: a refusal changes nothing, a success exactly what it says.

Time is the service's clock (inventory.clock.now), which every test here replaces with one
that stands still until the test moves it. Every test ends with `manage.py verify` passing.
"""

import copy
import datetime
import io
import json
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.db.models import F
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from inventory import clock
from inventory.invariants import QTY_MAX
from inventory.models import Hold, HoldLine, Item, Movement
from tests.conftest import Api

pytestmark = pytest.mark.django_db

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
MICROSECOND = datetime.timedelta(microseconds=1)
ACTOR = "test writer"  # the name of the `api` fixture's token
NOT_ENOUGH = "not enough available stock"
BELOW_ZERO = "qty cannot go below 0"
BELOW_RESERVED = "qty cannot go below reserved"
HAS_HOLDS = "item has active holds"
HOLD_FIELDS = {"id", "state", "lines", "reference", "expires_at", "created_at", "actor"}
# Ids that sort before and after every random one: a line met first or last in id order.
FIRST_ID, LAST_ID = "00000000-0000-4000-8000-000000000000", "ffffffff-ffff-4fff-bfff-ffffffffffff"


class FakeClock:
    """The service's clock, standing still at T0 until a test moves it (or, with `tick`, moving
    on by that much at every read, as time passes while a request runs)."""

    def __init__(self):
        self.now = T0
        self.tick = datetime.timedelta(0)

    def __call__(self) -> datetime.datetime:
        current = self.now
        self.now += self.tick
        return current

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)

    def at(self, seconds: float) -> datetime.datetime:
        return T0 + datetime.timedelta(seconds=seconds)


@pytest.fixture(autouse=True)
def now(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(clock, "now", fake)
    return fake


@pytest.fixture(autouse=True)
def verified(now, db):
    """Every scenario leaves a database that `manage.py verify` accepts, at the test's instant."""
    yield
    call_command("verify", stdout=io.StringIO(), stderr=io.StringIO())


def instant(text: str) -> datetime.datetime:
    """An RFC 3339 time of a response, as an aware datetime."""
    assert text.endswith("Z") or text.endswith("+00:00"), text
    return datetime.datetime.fromisoformat(text)


def pages(api: Api, path: str, key: str, limit: int = 1000) -> list[dict]:
    """Every entry of a paged list, each page followed to the end."""
    entries, cursor = [], None
    while True:
        response = api.get(f"{path}?limit={limit}" + (f"&cursor={cursor}" if cursor else ""))
        assert response.status_code == 200, response.content
        page = response.json()
        entries += page[key]
        cursor = page["next"]
        if cursor is None:
            return entries


@pytest.fixture
def state(api):
    """state(): the whole state as clients see it. The ids of holds and of items with
    movements come from the database (no endpoint lists them all); everything else is read
    through the API."""

    def snapshot() -> dict:
        items = api.all_items()
        hold_ids = sorted(str(hold_id) for hold_id in Hold.objects.values_list("id", flat=True))
        moved = sorted({str(item_id) for item_id in Movement.objects.values_list("item_id", flat=True)})
        holds = {}
        for hold_id in hold_ids:
            response = api.get(f"/holds/{hold_id}")
            assert response.status_code == 200
            holds[hold_id] = response.json()
        return {
            "items": items,
            "holds": holds,
            "item_holds": {
                item_id: [hold["id"] for hold in pages(api, f"/items/{item_id}/holds", "holds")]
                for item_id in items
            },
            "movements": {
                item_id: pages(api, f"/items/{item_id}/movements", "movements") for item_id in moved
            },
        }

    return snapshot


def held(expected: dict, item_id: str, qty: int) -> None:
    """The expected state after qty of the item is set aside (negative: given back)."""
    item = expected["items"][item_id]
    item["reserved"] += qty
    item["available"] -= qty


def taken(expected: dict, item_id: str, qty: int) -> None:
    """The expected state after a committed line of qty leaves the item."""
    item = expected["items"][item_id]
    item["qty"] -= qty
    item["reserved"] -= qty


def new_movements(before: dict, after: dict, item_id: str) -> list[dict]:
    """The movements of the item written between two states; those before are unchanged."""
    old = before["movements"].get(item_id, [])
    assert after["movements"][item_id][: len(old)] == old
    return after["movements"][item_id][len(old) :]


def hold(api: Api, *lines: tuple[dict, int], **fields) -> dict:
    """Hold qty of each item; the hold's body."""
    body = {"lines": [{"id": item["id"], "qty": qty} for item, qty in lines], **fields}
    response = api.post("/holds", body)
    assert response.status_code == 201, response.content
    return response.json()


def item(api: Api, item_id: str) -> dict:
    return api.get(f"/items/{item_id}").json()


def hold_state(api: Api, hold_id: str) -> str:
    return api.get(f"/holds/{hold_id}").json()["state"]


# POST /holds -------------------------------------------------------------------------------------


def test_create_hold_sets_the_stock_aside_and_answers_201_with_its_location(api, state):
    a, b = api.create("apple", 5), api.create("banana", 3)
    before = state()

    response = api.post(
        "/holds",
        {
            "lines": [{"id": b["id"], "qty": 3}, {"id": a["id"], "qty": 2}],
            "ttl_seconds": 60,
            "reference": "o-1",
        },
    )

    assert response.status_code == 201
    body = response.json()
    assert set(body) == HOLD_FIELDS
    assert response["Location"] == f"/holds/{body['id']}"
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert body["state"] == "active"
    assert body["lines"] == [{"id": b["id"], "qty": 3}, {"id": a["id"], "qty": 2}]  # the request's order
    assert body["reference"] == "o-1"
    assert instant(body["created_at"]) == T0
    assert instant(body["expires_at"]) == T0 + datetime.timedelta(seconds=60)
    assert body["actor"] == ACTOR
    expected = copy.deepcopy(before)
    held(expected, a["id"], 2)
    held(expected, b["id"], 3)
    expected["holds"][body["id"]] = body
    expected["item_holds"][a["id"]].append(body["id"])
    expected["item_holds"][b["id"]].append(body["id"])
    assert state() == expected
    assert expected["items"][b["id"]]["available"] == 0


def test_create_hold_defaults_to_900_seconds_and_no_reference(api):
    a = api.create("apple", 5)

    body = hold(api, (a, 1))

    assert instant(body["expires_at"]) == T0 + datetime.timedelta(seconds=900)
    assert body["reference"] is None
    assert api.get(f"/holds/{body['id']}").json() == body


def test_create_hold_accepts_the_bounds_of_ttl_and_qty(api, now):
    a, b = api.create("apple", QTY_MAX), api.create("banana", 1)

    longest = hold(api, (a, QTY_MAX), ttl_seconds=604800, reference="r" * 200)
    shortest = hold(api, (b, 1), ttl_seconds=1)

    assert instant(longest["expires_at"]) == now.at(604800)
    assert instant(shortest["expires_at"]) == now.at(1)
    assert item(api, a["id"]) == {**a, "reserved": QTY_MAX, "available": 0}


def test_create_hold_accepts_an_id_in_upper_case_and_answers_it_in_lower_case(api):
    a = api.create("apple", 5)

    response = api.post("/holds", {"lines": [{"id": a["id"].upper(), "qty": 2}]})

    assert response.status_code == 201
    assert response.json()["lines"] == [{"id": a["id"], "qty": 2}]
    assert item(api, a["id"])["reserved"] == 2


def test_holds_count_what_earlier_holds_set_aside(api, state):
    a = api.create("apple", 5)
    hold(api, (a, 3))
    before = state()

    response = api.post("/holds", {"lines": [{"id": a["id"], "qty": 3}]})

    assert response.status_code == 409
    assert response.json() == {"error": NOT_ENOUGH, "id": a["id"], "available": 2}
    assert state() == before

    second = hold(api, (a, 2))
    assert item(api, a["id"]) == {**a, "reserved": 5, "available": 0}
    assert api.post("/holds", {"lines": [{"id": a["id"], "qty": 1}]}).json()["available"] == 0
    assert second["state"] == "active"


# Bodies refused before anything is looked at: (body with "{a}" and "{b}" for two items, field named).
INVALID = {
    "no-body-fields": ({}, "lines"),
    "lines-null": ({"lines": None}, "lines"),
    "lines-an-object": ({"lines": {"id": "{a}", "qty": 1}}, "lines"),
    "lines-empty": ({"lines": []}, "lines"),
    "lines-101": ({"lines": "101 lines"}, "lines"),
    "line-not-an-object": ({"lines": [5]}, "lines.0"),
    "line-missing-id": ({"lines": [{"qty": 1}]}, "lines.0.id"),
    "line-missing-qty": ({"lines": [{"id": "{a}"}]}, "lines.0.qty"),
    "line-unknown-field": ({"lines": [{"id": "{a}", "qty": 1, "price": 3}]}, "lines.0.price"),
    "duplicate-id": ({"lines": [{"id": "{a}", "qty": 1}, {"id": "{a}", "qty": 1}]}, "lines.1.id"),
    "duplicate-id-other-case": ({"lines": [{"id": "{a}", "qty": 1}, {"id": "{A}", "qty": 1}]}, "lines.1.id"),
    "qty-0": ({"lines": [{"id": "{a}", "qty": 0}]}, "lines.0.qty"),
    "qty-minus-1": ({"lines": [{"id": "{a}", "qty": -1}]}, "lines.0.qty"),
    "qty-above-bound": ({"lines": [{"id": "{a}", "qty": QTY_MAX + 1}]}, "lines.0.qty"),
    "qty-true": ({"lines": [{"id": "{a}", "qty": True}]}, "lines.0.qty"),
    "qty-5.0": ({"lines": [{"id": "{a}", "qty": 5.0}]}, "lines.0.qty"),
    "qty-string": ({"lines": [{"id": "{a}", "qty": "5"}]}, "lines.0.qty"),
    "qty-null": ({"lines": [{"id": "{a}", "qty": None}]}, "lines.0.qty"),
    "bad-second-line": ({"lines": [{"id": "{a}", "qty": 1}, {"id": "{b}", "qty": 0}]}, "lines.1.qty"),
    "id-not-a-uuid": ({"lines": [{"id": "apple", "qty": 1}]}, "lines.0.id"),
    "id-empty": ({"lines": [{"id": "", "qty": 1}]}, "lines.0.id"),
    "id-32-hex-digits": ({"lines": [{"id": "{a-hex}", "qty": 1}]}, "lines.0.id"),
    "id-in-braces": ({"lines": [{"id": "{{a}}", "qty": 1}]}, "lines.0.id"),
    "id-urn": ({"lines": [{"id": "urn:uuid:{a}", "qty": 1}]}, "lines.0.id"),
    "id-padded": ({"lines": [{"id": " {a} ", "qty": 1}]}, "lines.0.id"),
    "id-a-number": ({"lines": [{"id": 5, "qty": 1}]}, "lines.0.id"),
    "id-null": ({"lines": [{"id": None, "qty": 1}]}, "lines.0.id"),
    "ttl-0": ({"ttl_seconds": 0}, "ttl_seconds"),
    "ttl-negative": ({"ttl_seconds": -1}, "ttl_seconds"),
    "ttl-604801": ({"ttl_seconds": 604801}, "ttl_seconds"),
    "ttl-string": ({"ttl_seconds": "900"}, "ttl_seconds"),
    "ttl-float": ({"ttl_seconds": 900.0}, "ttl_seconds"),
    "ttl-true": ({"ttl_seconds": True}, "ttl_seconds"),
    "ttl-null": ({"ttl_seconds": None}, "ttl_seconds"),
    "unknown-field": ({"expires_at": "2030-01-02T00:00:00Z"}, "expires_at"),
    "unknown-field-state": ({"state": "committed"}, "state"),
    "reference-201": ({"reference": "r" * 201}, "reference"),
    "reference-nul": ({"reference": "o\x00"}, "reference"),
    "reference-newline": ({"reference": "o\n1"}, "reference"),
    "reference-bell": ({"reference": "o\x07"}, "reference"),
    "reference-lone-surrogate": ({"reference": "o\ud800"}, "reference"),
    "reference-a-number": ({"reference": 5}, "reference"),
}


def invalid_body(case: str, a: dict, b: dict) -> dict:
    template, _ = INVALID[case]
    if template.get("lines") == "101 lines":
        return {"lines": [{"id": str(uuid.uuid4()), "qty": 1} for _ in range(101)]}
    text = json.dumps(template)
    for name, value in [("{a-hex}", a["id"].replace("-", "")), ("{a}", a["id"]), ("{A}", a["id"].upper())]:
        text = text.replace(name, value)
    text = text.replace("{b}", b["id"])
    body = json.loads(text)
    if "lines" not in template and template:  # a bad field beside valid lines
        body = {"lines": [{"id": a["id"], "qty": 1}, {"id": b["id"], "qty": 1}], **body}
    return body


@pytest.mark.parametrize("case", INVALID)
def test_invalid_hold_is_400_naming_the_field_and_holds_nothing(api, state, case):
    a, b = api.create("apple", 5), api.create("banana", 5)
    hold(api, (a, 1))
    body = invalid_body(case, a, b)
    before = state()

    response = api.post("/holds", body)

    assert response.status_code == 400, response.content
    assert response.json()["field"] == INVALID[case][1]
    assert isinstance(response.json()["error"], str)
    assert state() == before


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [
        ("[]", "application/json", 400),
        ('"lines"', "application/json", 400),
        ("null", "application/json", 400),
        ('{"lines": [', "application/json", 400),
        ('{"lines": [], "lines": []}', "application/json", 400),
        ('{"lines": [{"id": "x", "qty": NaN}]}', "application/json", 400),
        ('{"lines": []}', "text/plain", 415),
    ],
    ids=["array", "string", "null", "truncated", "duplicate-key", "nan", "text-plain"],
)
def test_a_hold_body_that_is_not_a_strict_json_object_is_refused_and_holds_nothing(
    api, state, raw, content_type, status
):
    api.create("apple", 5)
    before = state()

    response = api.request("POST", "/holds", raw=raw, content_type=content_type)

    assert response.status_code == status
    assert isinstance(response.json()["error"], str)
    assert state() == before


@pytest.mark.parametrize("position", ["first", "last"])
def test_hold_on_a_missing_item_is_404_naming_it_and_holds_nothing(api, state, position):
    a, b = api.create("apple", 5), api.create("banana", 5)
    missing = FIRST_ID if position == "first" else LAST_ID
    before = state()

    response = api.post(
        "/holds",
        {"lines": [{"id": a["id"], "qty": 1}, {"id": missing, "qty": 1}, {"id": b["id"], "qty": 5}]},
    )

    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "id": missing}
    assert state() == before


def test_hold_on_a_deleted_item_is_404(api, state):
    a = api.create("apple", 5)
    assert api.delete(f"/items/{a['id']}").status_code == 204
    before = state()

    response = api.post("/holds", {"lines": [{"id": a["id"], "qty": 1}]})

    assert response.status_code == 404
    assert response.json() == {"error": "not_found", "id": a["id"]}
    assert state() == before


@pytest.mark.parametrize("refusing", [[0], [2], [0, 2], [1, 2], [0, 1, 2]], ids=str)
def test_hold_over_available_is_409_naming_the_first_refusing_line_in_id_order(api, state, refusing):
    # Three items with 1, 2 and 3 available; the refusing lines ask one more than that.
    made = [api.create(name, 5) for name in ("apple", "banana", "cherry")]
    for index, made_item in enumerate(made):
        hold(api, (made_item, 4 - index))
    ordered = sorted(made, key=lambda made_item: made_item["id"])
    available = {made_item["id"]: 1 + made.index(made_item) for made_item in made}
    lines = [
        {"id": entry["id"], "qty": available[entry["id"]] + (1 if position in refusing else 0)}
        for position, entry in enumerate(ordered)
    ]
    lines.reverse()  # the request's order is not the id order
    before = state()

    response = api.post("/holds", {"lines": lines})

    first = ordered[refusing[0]]["id"]
    assert response.status_code == 409
    assert response.json() == {"error": NOT_ENOUGH, "id": first, "available": available[first]}
    assert state() == before


@pytest.mark.parametrize("fits", ["first", "last"])
def test_a_hold_on_two_items_is_all_or_nothing(api, state, fits):
    a, b = sorted([api.create("apple", 5), api.create("banana", 2)], key=lambda made: made["id"])
    fitting, short = (a, b) if fits == "first" else (b, a)
    before = state()

    response = api.post(
        "/holds", {"lines": [{"id": fitting["id"], "qty": 1}, {"id": short["id"], "qty": short["qty"] + 1}]}
    )

    assert response.status_code == 409
    assert response.json() == {"error": NOT_ENOUGH, "id": short["id"], "available": short["qty"]}
    assert state() == before


def test_a_read_token_may_read_holds_but_not_make_them(api, client, read_token, state):
    a = api.create("apple", 5)
    made = hold(api, (a, 1))
    reader = Api(client, read_token)
    before = state()

    refused = reader.post("/holds", {"lines": [{"id": a["id"], "qty": 1}]})
    actions = [reader.post(f"/holds/{made['id']}/{action}") for action in ("commit", "release")]
    extend = reader.post(f"/holds/{made['id']}/extend", {"ttl_seconds": 60})
    anonymous = Api(client).get(f"/holds/{made['id']}")

    assert [r.status_code for r in [refused, *actions, extend]] == [403] * 4
    assert anonymous.status_code == 401
    assert reader.get(f"/holds/{made['id']}").json() == made
    assert reader.get(f"/items/{a['id']}/holds").json() == {"holds": [made], "next": None}
    assert state() == before


# Reads ---------------------------------------------------------------------------------------------


def test_reserved_and_available_show_on_get_item_and_in_every_page_of_items(api):
    made = [api.create(name, 10) for name in ("apple", "banana", "cherry")]
    for index, made_item in enumerate(made):
        if index:
            hold(api, (made_item, index * 3))

    one_by_one = [item(api, made_item["id"]) for made_item in made]
    paged = pages(api, "/items", "items", limit=1)

    assert [(i["qty"], i["reserved"], i["available"]) for i in one_by_one] == [
        (10, 0, 10),
        (10, 3, 7),
        (10, 6, 4),
    ]
    assert paged == one_by_one  # created in name order


@pytest.mark.parametrize("action", ["", "/commit", "/release", "/extend"])
@pytest.mark.parametrize(
    "hold_id",
    [str(uuid.uuid4()), "not-a-uuid", "0" * 32, "{" + str(uuid.uuid4()) + "}", str(uuid.uuid4()) + "0"],
    ids=["unknown", "word", "32-hex-digits", "braces", "too-long"],
)
def test_an_unknown_hold_or_an_id_that_is_not_a_uuid_is_404(api, state, action, hold_id):
    a = api.create("apple", 5)
    hold(api, (a, 1))
    before = state()

    if action:
        body = {"ttl_seconds": 60} if action == "/extend" else None
        response = api.post(f"/holds/{hold_id}{action}", body)
    else:
        response = api.get(f"/holds/{hold_id}")

    assert response.status_code == 404
    assert response.json() == {"error": "not_found"}
    assert state() == before


def test_a_hold_is_found_by_its_id_in_either_case_and_answers_head(api):
    a = api.create("apple", 5)
    made = hold(api, (a, 1))

    upper = api.get(f"/holds/{made['id'].upper()}")
    head = api.request("HEAD", f"/holds/{made['id']}")
    head_list = api.request("HEAD", f"/items/{a['id'].upper()}/holds")
    released = api.post(f"/holds/{made['id'].upper()}/release")

    assert upper.status_code == 200
    assert upper.json() == made
    assert (head.status_code, head.content) == (200, b"")
    assert (head_list.status_code, head_list.content) == (200, b"")
    assert released.json() == {**made, "state": "released"}
    assert item(api, a["id"]) == a


def test_item_holds_lists_only_active_holds_oldest_first(api, now):
    a, b = api.create("apple", 10), api.create("banana", 10)
    first = hold(api, (a, 1))
    now.advance(1)
    both = hold(api, (b, 2), (a, 2))
    released = hold(api, (a, 1))
    committed = hold(api, (a, 1), (b, 1))
    short = hold(api, (a, 1), ttl_seconds=5)
    last = hold(api, (a, 3), ttl_seconds=60)
    assert api.post(f"/holds/{released['id']}/release").status_code == 200
    assert api.post(f"/holds/{committed['id']}/commit").status_code == 200
    now.advance(5)  # `short` expires

    listed_a = api.get(f"/items/{a['id']}/holds").json()
    listed_b = api.get(f"/items/{b['id']}/holds").json()

    assert [h["id"] for h in listed_a["holds"]] == [first["id"], both["id"], last["id"]]
    assert listed_a["holds"] == [api.get(f"/holds/{h['id']}").json() for h in (first, both, last)]
    assert listed_a["next"] is None
    assert listed_b == {"holds": [both], "next": None}
    assert api.get(f"/holds/{short['id']}").json()["state"] == "expired"


@pytest.mark.parametrize(("count", "limit"), [(5, 2), (4, 2), (3, 1), (3, 3), (3, 1000)])
def test_item_holds_pages_to_the_end_with_limit_and_cursor(api, count, limit):
    a = api.create("apple", 10)
    made = [hold(api, (a, 1))["id"] for _ in range(count)]

    seen, cursor, sizes = [], None, []
    while True:
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        response = api.get(f"/items/{a['id']}/holds{query}")
        assert response.status_code == 200
        page = response.json()
        sizes.append(len(page["holds"]))
        seen += [h["id"] for h in page["holds"]]
        cursor = page["next"]
        if cursor is None:
            break

    assert seen == made
    assert all(size == limit for size in sizes[:-1])
    assert 1 <= sizes[-1] <= limit


def test_item_holds_of_an_item_without_holds_is_an_empty_page(api):
    a = api.create("apple", 10)
    assert api.get(f"/items/{a['id']}/holds").json() == {"holds": [], "next": None}


def test_item_holds_of_an_unknown_or_deleted_item_is_404(api):
    a = api.create("apple", 10)
    made = hold(api, (a, 1))
    assert api.post(f"/holds/{made['id']}/release").status_code == 200
    assert api.delete(f"/items/{a['id']}").status_code == 204

    for item_id in (a["id"], str(uuid.uuid4())):
        response = api.get(f"/items/{item_id}/holds")
        assert response.status_code == 404
        assert response.json() == {"error": "not_found"}
    assert api.get("/items/not-a-uuid/holds").status_code == 404


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=1001", "limit=x", "limit=1.0", "cursor=!!", "cursor=abc"]
)
def test_item_holds_with_a_bad_limit_or_cursor_is_400(api, query):
    a = api.create("apple", 10)
    hold(api, (a, 1))

    response = api.get(f"/items/{a['id']}/holds?{query}")

    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)


# Commit --------------------------------------------------------------------------------------------


def test_commit_takes_each_line_from_qty_and_reserved_with_one_commit_movement_per_line(api, state, now):
    a, b, c = api.create("apple", 5), api.create("banana", 3), api.create("cherry", 4)
    made = hold(api, (a, 2), (b, 3), reference="order 7")
    other = hold(api, (a, 1))
    now.advance(30)
    before = state()

    response = api.post(f"/holds/{made['id']}/commit")

    assert response.status_code == 200
    body = response.json()
    assert body == {**made, "state": "committed"}
    expected = copy.deepcopy(before)
    taken(expected, a["id"], 2)
    taken(expected, b["id"], 3)
    expected["holds"][made["id"]] = body
    expected["item_holds"][a["id"]] = [other["id"]]
    expected["item_holds"][b["id"]] = []
    after = state()
    for item_id, qty, qty_after in [(a["id"], 2, 3), (b["id"], 3, 0)]:
        (movement,) = new_movements(before, after, item_id)
        assert movement == {
            "kind": "commit",
            "delta": -qty,
            "qty_after": qty_after,
            "reason": None,
            "reference": "order 7",
            "hold_id": made["id"],
            "actor": ACTOR,
            "request_id": response["X-Request-ID"],
            "at": movement["at"],
        }
        assert instant(movement["at"]) == now.now
        expected["movements"][item_id].append(movement)
    assert after == expected
    assert after["items"][c["id"]] == before["items"][c["id"]]
    assert after["items"][a["id"]] == {**a, "qty": 3, "reserved": 1, "available": 2}


def test_committing_a_committed_hold_answers_200_and_takes_nothing_more(api, state):
    a = api.create("apple", 5)
    made = hold(api, (a, 2))
    first = api.post(f"/holds/{made['id']}/commit")
    before = state()

    again = api.post(f"/holds/{made['id']}/commit")

    assert again.status_code == 200
    assert again.json() == first.json()
    assert state() == before
    assert before["items"][a["id"]] == {**a, "qty": 3, "reserved": 0, "available": 3}


def test_commit_of_a_released_hold_is_409_and_takes_nothing(api, state):
    a = api.create("apple", 5)
    made = hold(api, (a, 2))
    assert api.post(f"/holds/{made['id']}/release").status_code == 200
    before = state()

    response = api.post(f"/holds/{made['id']}/commit")

    assert response.status_code == 409
    assert response.json()["error"] == "hold is released"
    assert state() == before


def test_commit_of_a_hold_on_an_item_whose_other_stock_moved_takes_only_its_lines(api, state):
    a = api.create("apple", 5)
    made = hold(api, (a, 2))
    assert api.patch(f"/items/{a['id']}/qty", {"delta": -3}).status_code == 200  # down to reserved
    assert api.patch(f"/items/{a['id']}/qty", {"delta": 4}).status_code == 200
    before = state()

    response = api.post(f"/holds/{made['id']}/commit")

    assert response.status_code == 200
    expected = copy.deepcopy(before)
    taken(expected, a["id"], 2)
    expected["holds"][made["id"]]["state"] = "committed"
    expected["item_holds"][a["id"]] = []
    after = state()
    expected["movements"][a["id"]] += new_movements(before, after, a["id"])
    assert after == expected
    assert after["items"][a["id"]] == {**a, "qty": 4, "reserved": 0, "available": 4}


# Release -------------------------------------------------------------------------------------------


def test_release_gives_the_held_stock_back_and_keeps_qty(api, state):
    a, b = api.create("apple", 5), api.create("banana", 3)
    made = hold(api, (a, 2), (b, 3))
    before = state()

    response = api.post(f"/holds/{made['id']}/release")

    assert response.status_code == 200
    assert response.json() == {**made, "state": "released"}
    expected = copy.deepcopy(before)
    held(expected, a["id"], -2)
    held(expected, b["id"], -3)
    expected["holds"][made["id"]] = response.json()
    expected["item_holds"] = {a["id"]: [], b["id"]: []}
    assert state() == expected
    assert expected["items"][a["id"]] == a
    assert expected["items"][b["id"]] == b


def test_releasing_a_released_hold_answers_200_and_changes_nothing(api, state):
    a = api.create("apple", 5)
    made = hold(api, (a, 2))
    first = api.post(f"/holds/{made['id']}/release")
    before = state()

    again = api.post(f"/holds/{made['id']}/release")

    assert again.status_code == 200
    assert again.json() == first.json()
    assert state() == before


def test_release_of_a_committed_hold_is_409_and_changes_nothing(api, state):
    a = api.create("apple", 5)
    made = hold(api, (a, 2))
    assert api.post(f"/holds/{made['id']}/commit").status_code == 200
    before = state()

    response = api.post(f"/holds/{made['id']}/release")

    assert response.status_code == 409
    assert response.json()["error"] == "hold is committed"
    assert state() == before
    assert before["items"][a["id"]]["qty"] == 3


# Extend --------------------------------------------------------------------------------------------


def test_extend_sets_expires_at_to_now_plus_ttl(api, state, now):
    a = api.create("apple", 5)
    made = hold(api, (a, 2), ttl_seconds=60)
    now.advance(50)
    before = state()

    response = api.post(f"/holds/{made['id']}/extend", {"ttl_seconds": 100})

    assert response.status_code == 200
    assert response.json() == {**made, "expires_at": response.json()["expires_at"]}
    assert instant(response.json()["expires_at"]) == now.at(150)
    expected = copy.deepcopy(before)
    expected["holds"][made["id"]] = response.json()
    assert state() == expected

    now.now = now.at(150) - MICROSECOND
    assert item(api, a["id"])["reserved"] == 2
    assert hold_state(api, made["id"]) == "active"
    now.now = now.at(150)
    assert item(api, a["id"])["reserved"] == 0
    assert hold_state(api, made["id"]) == "expired"


def test_extend_may_shorten_a_hold(api, now):
    a = api.create("apple", 5)
    made = hold(api, (a, 2), ttl_seconds=600)
    now.advance(10)

    response = api.post(f"/holds/{made['id']}/extend", {"ttl_seconds": 5})

    assert instant(response.json()["expires_at"]) == now.at(15)
    now.advance(5)
    assert hold_state(api, made["id"]) == "expired"
    assert item(api, a["id"])["available"] == 5
    assert api.get(f"/items/{a['id']}/holds").json()["holds"] == []


def finish(api: Api, now: FakeClock, hold_id: str, end: str) -> None:
    """Take an active hold to a state it cannot leave."""
    if end == "expired":
        now.advance(900)
    else:
        action = {"committed": "commit", "released": "release"}[end]
        assert api.post(f"/holds/{hold_id}/{action}").status_code == 200
    assert hold_state(api, hold_id) == end


@pytest.mark.parametrize("end", ["committed", "released", "expired"])
def test_extend_of_a_hold_that_is_not_active_is_409_naming_its_state(api, state, now, end):
    a = api.create("apple", 5)
    made = hold(api, (a, 2))
    finish(api, now, made["id"], end)
    before = state()

    response = api.post(f"/holds/{made['id']}/extend", {"ttl_seconds": 600})

    assert response.status_code == 409
    assert response.json()["error"] == f"hold is {end}"
    assert state() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ttl_seconds": 0}, "ttl_seconds"),
        ({"ttl_seconds": -1}, "ttl_seconds"),
        ({"ttl_seconds": 604801}, "ttl_seconds"),
        ({"ttl_seconds": "60"}, "ttl_seconds"),
        ({"ttl_seconds": 60.0}, "ttl_seconds"),
        ({"ttl_seconds": True}, "ttl_seconds"),
        ({"ttl_seconds": None}, "ttl_seconds"),
        ({}, "ttl_seconds"),
        ({"ttl_seconds": 60, "expires_at": "2031-01-01T00:00:00Z"}, "expires_at"),
    ],
    ids=["0", "negative", "604801", "string", "float", "true", "null", "missing", "unknown-field"],
)
def test_extend_with_a_bad_ttl_is_400_and_changes_nothing(api, state, body, field):
    a = api.create("apple", 5)
    made = hold(api, (a, 2))
    before = state()

    response = api.post(f"/holds/{made['id']}/extend", body)

    assert response.status_code == 400
    assert response.json()["field"] == field
    assert state() == before


def test_extend_accepts_the_bounds_of_ttl(api, now):
    a = api.create("apple", 5)
    made = hold(api, (a, 2))

    for ttl in (1, 604800):
        response = api.post(f"/holds/{made['id']}/extend", {"ttl_seconds": ttl})
        assert response.status_code == 200
        assert instant(response.json()["expires_at"]) == now.at(ttl)


# Expiry --------------------------------------------------------------------------------------------


def test_at_expires_at_a_hold_is_expired_and_reserves_nothing_before_any_write(api, now):
    a, b = api.create("apple", 5), api.create("banana", 5)
    made = hold(api, (a, 2), (b, 5), ttl_seconds=60)
    kept = hold(api, (a, 1), ttl_seconds=61)

    now.now = now.at(60) - MICROSECOND
    assert hold_state(api, made["id"]) == "active"
    assert item(api, a["id"]) == {**a, "reserved": 3, "available": 2}
    assert pages(api, "/items", "items", limit=1)[1] == {**b, "reserved": 5, "available": 0}

    now.now = now.at(60)  # exactly expires_at; nothing has been written since the holds
    assert hold_state(api, made["id"]) == "expired"
    assert hold_state(api, kept["id"]) == "active"
    assert item(api, a["id"]) == {**a, "reserved": 1, "available": 4}
    assert item(api, b["id"]) == b
    assert pages(api, "/items", "items", limit=1) == [{**a, "reserved": 1, "available": 4}, b]
    assert api.get(f"/items/{a['id']}/holds").json() == {"holds": [kept], "next": None}
    assert api.get(f"/items/{b['id']}/holds").json() == {"holds": [], "next": None}

    now.advance(1)
    assert item(api, a["id"]) == a
    assert hold_state(api, kept["id"]) == "expired"


def test_commit_of_an_expired_hold_is_409_and_takes_nothing(api, state, now):
    a = api.create("apple", 5)
    made = hold(api, (a, 2), ttl_seconds=60)
    now.advance(60)
    before = state()

    response = api.post(f"/holds/{made['id']}/commit")

    assert response.status_code == 409
    assert response.json()["error"] == "hold is expired"
    assert state() == before
    assert before["items"][a["id"]] == a


def test_commit_a_moment_before_expires_at_takes_the_stock(api, now):
    a = api.create("apple", 5)
    made = hold(api, (a, 2), ttl_seconds=60)
    now.now = now.at(60) - MICROSECOND

    response = api.post(f"/holds/{made['id']}/commit")

    assert response.status_code == 200
    assert response.json()["state"] == "committed"
    now.advance(1)
    assert hold_state(api, made["id"]) == "committed"
    assert item(api, a["id"]) == {**a, "qty": 3, "available": 3}


@pytest.mark.parametrize("reads", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("action", ["commit", "release", "extend"])
def test_an_action_as_the_hold_expires_leaves_the_state_its_answer_says(api, now, action, reads):
    # The clock reaches expires_at after `reads` reads during the request: whichever way the
    # service decides, the hold and its item must be what the answer says.
    a = api.create("apple", 5)
    made = hold(api, (a, 2), ttl_seconds=60)
    now.now, now.tick = now.at(60) - reads * MICROSECOND, MICROSECOND

    response = api.post(f"/holds/{made['id']}/{action}", {"ttl_seconds": 600} if action == "extend" else None)

    now.tick = datetime.timedelta(0)
    shown = api.get(f"/holds/{made['id']}").json()
    if response.status_code == 409:
        assert response.json()["error"] == "hold is expired"
        assert shown == {**made, "state": "expired"}
    else:
        assert response.status_code == 200
        assert response.json()["state"] in {"commit": ["committed"], "release": ["released", "expired"]}.get(
            action, ["active"]
        )
        assert shown == response.json()
    reserved = 2 if shown["state"] == "active" else 0
    qty = 3 if shown["state"] == "committed" else 5
    assert item(api, a["id"]) == {**a, "qty": qty, "reserved": reserved, "available": qty - reserved}
    assert api.get(f"/items/{a['id']}/holds").json()["holds"] == ([shown] if reserved else [])


def test_release_of_an_expired_hold_answers_200_and_it_stays_expired(api, state, now):
    a = api.create("apple", 5)
    made = hold(api, (a, 2), ttl_seconds=60)
    now.advance(61)
    before = state()

    first = api.post(f"/holds/{made['id']}/release")
    again = api.post(f"/holds/{made['id']}/release")

    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() == {**made, "state": "expired"}
    assert state() == before


def test_extend_of_an_expired_hold_is_409_even_before_any_write(api, state, now):
    a = api.create("apple", 5)
    made = hold(api, (a, 2), ttl_seconds=60)
    now.advance(60)
    before = state()

    response = api.post(f"/holds/{made['id']}/extend", {"ttl_seconds": 60})

    assert response.status_code == 409
    assert response.json()["error"] == "hold is expired"
    assert state() == before


def test_a_delta_may_take_the_stock_an_expired_hold_set_aside(api, state, now):
    a = api.create("apple", 5)
    made = hold(api, (a, 5), ttl_seconds=60)
    assert api.patch(f"/items/{a['id']}/qty", {"delta": -1}).json()["error"] == BELOW_RESERVED
    now.advance(60)
    before = state()

    response = api.patch(f"/items/{a['id']}/qty", {"delta": -5, "reason": "sale"})

    assert response.status_code == 200
    assert response.json() == {**a, "qty": 0, "available": 0}
    expected = copy.deepcopy(before)
    expected["items"][a["id"]] = response.json()
    after = state()
    (movement,) = new_movements(before, after, a["id"])
    assert (movement["kind"], movement["delta"], movement["qty_after"]) == ("adjust", -5, 0)
    expected["movements"][a["id"]].append(movement)
    assert after == expected
    assert after["holds"][made["id"]]["state"] == "expired"


def test_a_batch_may_take_the_stock_an_expired_hold_set_aside(api, now):
    a, b = api.create("apple", 5), api.create("banana", 5)
    hold(api, (a, 5), (b, 5), ttl_seconds=60)
    now.advance(60)

    response = api.post(
        "/adjustments", {"changes": [{"id": a["id"], "delta": -5}, {"id": b["id"], "delta": -1}]}
    )

    assert response.status_code == 200
    assert response.json()["items"] == [{**a, "qty": 0, "available": 0}, {**b, "qty": 4, "available": 4}]


def test_a_new_hold_may_take_the_stock_an_expired_hold_set_aside(api, state, now):
    a = api.create("apple", 5)
    old = hold(api, (a, 4), ttl_seconds=60)
    assert api.post("/holds", {"lines": [{"id": a["id"], "qty": 5}]}).status_code == 409
    now.advance(60)

    new = hold(api, (a, 5))

    assert hold_state(api, old["id"]) == "expired"
    assert item(api, a["id"]) == {**a, "reserved": 5, "available": 0}
    assert api.get(f"/items/{a['id']}/holds").json() == {"holds": [new], "next": None}


def test_an_expired_hold_frees_every_item_it_held_whichever_is_written_first(api, now):
    a, b = api.create("apple", 5), api.create("banana", 5)
    made = hold(api, (a, 5), (b, 5), ttl_seconds=60)
    now.advance(60)

    assert api.patch(f"/items/{a['id']}/qty", {"delta": -5}).status_code == 200

    assert hold_state(api, made["id"]) == "expired"
    assert item(api, b["id"]) == b
    assert api.post(f"/holds/{made['id']}/commit").json()["error"] == "hold is expired"
    assert hold(api, (b, 5))["state"] == "active"


# A delta against what holds set aside --------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"delta": -3}, 400, {"error": BELOW_RESERVED, "reserved": 3}),
        ({"delta": -5}, 400, {"error": BELOW_RESERVED, "reserved": 3}),
        ({"delta": -6}, 400, {"error": BELOW_ZERO}),  # below 0 comes before below reserved
        ({"delta": -QTY_MAX}, 400, {"error": BELOW_ZERO}),
        (
            {"delta": -3, "expected_qty": 4},
            409,
            {"error": "qty is not expected_qty", "field": "expected_qty", "qty": 5},
        ),
        ({"delta": QTY_MAX}, 400, {"error": f"qty cannot go above {QTY_MAX}"}),
    ],
    ids=["below-reserved", "to-0-below-reserved", "below-0", "far-below-0", "stale-first", "above-bound"],
)
def test_a_delta_refused_against_reserved_changes_nothing(api, state, change, status, error):
    a = api.create("apple", 5)
    hold(api, (a, 3))
    before = state()

    response = api.patch(f"/items/{a['id']}/qty", change)

    assert response.status_code == status
    body = response.json()
    assert body.pop("id", a["id"]) == a["id"]  # an error body may name the item
    assert body == error
    assert state() == before


def test_a_delta_down_to_reserved_is_applied(api):
    a = api.create("apple", 5)
    made = hold(api, (a, 3))

    response = api.patch(f"/items/{a['id']}/qty", {"delta": -2})

    assert response.status_code == 200
    assert response.json() == {**a, "qty": 3, "reserved": 3, "available": 0}
    assert api.post(f"/holds/{made['id']}/commit").status_code == 200
    assert item(api, a["id"]) == {**a, "qty": 0, "reserved": 0, "available": 0}


def test_a_batch_that_would_take_an_item_below_reserved_applies_nothing(api, state):
    a, b = sorted([api.create("apple", 5), api.create("banana", 5)], key=lambda made: made["id"])
    hold(api, (b, 3))
    before = state()

    response = api.post(
        "/adjustments", {"changes": [{"id": a["id"], "delta": -1}, {"id": b["id"], "delta": -3}]}
    )

    assert response.status_code == 400
    assert response.json() == {"error": BELOW_RESERVED, "id": b["id"], "reserved": 3}
    assert state() == before


# Delete --------------------------------------------------------------------------------------------


def test_deleting_an_item_with_an_active_hold_is_409_and_keeps_it(api, state):
    a = api.create("apple", 5)
    hold(api, (a, 1))
    before = state()

    response = api.delete(f"/items/{a['id']}")

    assert response.status_code == 409
    assert response.json()["error"] == HAS_HOLDS
    assert state() == before


@pytest.mark.parametrize("end", ["committed", "released", "expired"])
def test_deleting_an_item_whose_hold_ended_is_204(api, state, now, end):
    a = api.create("apple", 5)
    made = hold(api, (a, 2))
    finish(api, now, made["id"], end)
    before = state()

    response = api.delete(f"/items/{a['id']}")

    assert response.status_code == 204
    after = state()
    assert a["id"] not in after["items"]
    (movement,) = new_movements(before, after, a["id"])
    assert (movement["kind"], movement["delta"], movement["qty_after"]) == (
        "delete",
        -before["items"][a["id"]]["qty"],
        0,
    )
    assert after["holds"][made["id"]] == before["holds"][made["id"]]  # a hold outlives its item


def test_delete_ignores_the_idempotency_key_so_a_retry_after_release_deletes(api):
    a = api.create("apple", 5)
    made = hold(api, (a, 1))
    refused = api.delete(f"/items/{a['id']}", **{"Idempotency-Key": "del-1"})
    assert api.post(f"/holds/{made['id']}/release").status_code == 200

    retried = api.delete(f"/items/{a['id']}", **{"Idempotency-Key": "del-1"})

    assert refused.status_code == 409
    assert retried.status_code == 204
    assert "Idempotent-Replayed" not in retried
    assert api.get(f"/items/{a['id']}").status_code == 404


# verify --------------------------------------------------------------------------------------------


def corrupt_reserved_up(item_id: str) -> None:
    Item.objects.filter(pk=item_id).update(reserved=F("reserved") + 1)


def corrupt_reserved_to_0(item_id: str) -> None:
    Item.objects.filter(pk=item_id).update(reserved=0)


def corrupt_line_not_counted(item_id: str) -> None:
    HoldLine.objects.filter(item_id=item_id).update(reserving=False)


@pytest.mark.parametrize("corrupt", [corrupt_reserved_up, corrupt_reserved_to_0, corrupt_line_not_counted])
def test_verify_names_an_item_whose_reserved_is_not_its_active_holds(api, corrupt):
    a, b = api.create("apple", 5), api.create("banana", 5)
    hold(api, (a, 2), (b, 1))
    call_command("verify", stdout=io.StringIO())
    stored = list(Item.objects.values_list("pk", "reserved"))
    lines = list(HoldLine.objects.values_list("pk", "reserving"))

    corrupt(a["id"])
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("verify", stdout=io.StringIO(), stderr=err)

    assert a["id"] in err.getvalue()
    assert b["id"] not in err.getvalue()
    for pk, reserved in stored:  # put it back: verify passes again at the end of the test
        Item.objects.filter(pk=pk).update(reserved=reserved)
    for pk, reserving in lines:
        HoldLine.objects.filter(pk=pk).update(reserving=reserving)


def test_verify_names_an_item_whose_stored_reserved_is_off_while_an_expired_hold_is_not_collected(api, now):
    # Reads leave the expired line out, so only the stored counter against its lines shows it.
    a = api.create("apple", 5)
    hold(api, (a, 2), ttl_seconds=60)
    now.advance(60)
    corrupt_reserved_up(a["id"])
    err = io.StringIO()

    with pytest.raises(CommandError):
        call_command("verify", stdout=io.StringIO(), stderr=err)

    assert a["id"] in err.getvalue()
    assert item(api, a["id"])["reserved"] == 0
    Item.objects.filter(pk=a["id"]).update(reserved=2)


def test_verify_names_a_hold_that_ended_yet_still_reserves(api):
    a = api.create("apple", 5)
    made = hold(api, (a, 2))
    Hold.objects.filter(pk=made["id"]).update(state="released")
    err = io.StringIO()

    with pytest.raises(CommandError):
        call_command("verify", stdout=io.StringIO(), stderr=err)

    assert made["id"] in err.getvalue()
    Hold.objects.filter(pk=made["id"]).update(state="active")


def test_verify_passes_while_an_expired_hold_is_not_yet_collected(api, now):
    a = api.create("apple", 5)
    hold(api, (a, 2), ttl_seconds=60)
    now.advance(120)

    call_command("verify", stdout=io.StringIO())
    assert item(api, a["id"])["reserved"] == 0


# Idempotency-Key -----------------------------------------------------------------------------------


def test_a_replayed_create_hold_gets_the_same_answer_and_location_and_holds_nothing_more(api, state):
    a = api.create("apple", 5)
    body = {"lines": [{"id": a["id"], "qty": 2}], "ttl_seconds": 60}
    first = api.post("/holds", body, **{"Idempotency-Key": "hold-1"})
    before = state()

    replay = api.post("/holds", body, **{"Idempotency-Key": "hold-1"})

    assert first.status_code == replay.status_code == 201
    assert replay.json() == first.json()
    assert replay["Location"] == first["Location"] == f"/holds/{first.json()['id']}"
    assert replay["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert state() == before
    assert before["items"][a["id"]]["reserved"] == 2
    assert len(before["holds"]) == 1


def test_a_replayed_refused_hold_stays_refused_after_stock_arrives(api, state):
    a = api.create("apple", 1)
    body = {"lines": [{"id": a["id"], "qty": 2}]}
    first = api.post("/holds", body, **{"Idempotency-Key": "hold-1"})
    assert api.patch(f"/items/{a['id']}/qty", {"delta": 5}).status_code == 200
    before = state()

    replay = api.post("/holds", body, **{"Idempotency-Key": "hold-1"})

    assert first.status_code == replay.status_code == 409
    assert replay.json() == first.json() == {"error": NOT_ENOUGH, "id": a["id"], "available": 1}
    assert replay["Idempotent-Replayed"] == "true"
    assert state() == before


@pytest.mark.parametrize("action", ["commit", "release", "extend"])
def test_a_replayed_hold_action_gets_the_same_answer_and_changes_nothing(api, state, now, action):
    a = api.create("apple", 5)
    made = hold(api, (a, 2), ttl_seconds=60)
    body = {"ttl_seconds": 30} if action == "extend" else None
    first = api.post(f"/holds/{made['id']}/{action}", body, **{"Idempotency-Key": f"{action}-1"})
    now.advance(10)  # a second extend would move expires_at
    before = state()

    replay = api.post(f"/holds/{made['id']}/{action}", body, **{"Idempotency-Key": f"{action}-1"})

    assert first.status_code == replay.status_code == 200
    assert replay.json() == first.json()
    assert replay["Idempotent-Replayed"] == "true"
    assert replay.get("Location") in (None, f"/holds/{made['id']}")
    assert state() == before
    if action == "extend":
        assert instant(before["holds"][made["id"]]["expires_at"]) == now.at(30)


def test_a_replayed_refused_action_is_replayed_as_refused(api, state):
    a = api.create("apple", 5)
    made = hold(api, (a, 2))
    assert api.post(f"/holds/{made['id']}/commit").status_code == 200
    first = api.post(f"/holds/{made['id']}/release", **{"Idempotency-Key": "release-1"})
    before = state()

    replay = api.post(f"/holds/{made['id']}/release", **{"Idempotency-Key": "release-1"})

    assert first.status_code == replay.status_code == 409
    assert replay.json() == first.json()
    assert replay.json()["error"] == "hold is committed"
    assert replay["Idempotent-Replayed"] == "true"
    assert state() == before


def test_an_idempotency_key_reused_for_another_hold_request_is_422_and_changes_nothing(api, state):
    a = api.create("apple", 5)
    one, two = hold(api, (a, 1)), hold(api, (a, 1))
    assert api.post(f"/holds/{one['id']}/commit", **{"Idempotency-Key": "k"}).status_code == 200
    before = state()

    responses = [
        api.post(f"/holds/{two['id']}/commit", **{"Idempotency-Key": "k"}),
        api.post(f"/holds/{one['id']}/release", **{"Idempotency-Key": "k"}),
        api.post("/holds", {"lines": [{"id": a["id"], "qty": 1}]}, **{"Idempotency-Key": "k"}),
    ]

    assert [r.status_code for r in responses] == [422, 422, 422]
    assert state() == before


# Metrics -------------------------------------------------------------------------------------------


@pytest.fixture
def holds_counted(client, read_token):
    """holds_counted(): the inventory_holds_total samples /metrics shows now, by outcome."""

    def sample() -> dict[str, float]:
        text = Api(client, read_token).get("/metrics").content.decode()
        counts = dict.fromkeys(["created", "committed", "released", "expired", "refused"], 0.0)
        for family in text_string_to_metric_families(text):
            for found in family.samples:
                if found.name == "inventory_holds_total":
                    counts[found.labels["outcome"]] = found.value
        return counts

    return sample


@pytest.fixture
def counts(holds_counted, django_capture_on_commit_callbacks):
    """counts(request, **outcomes): run the request and check that inventory_holds_total moved by
    exactly those outcomes. Outcomes are counted when their transaction commits; pytest-django
    never commits, so the callbacks a commit would run are run here."""

    def step(request, **outcomes: int):
        before = holds_counted()
        with django_capture_on_commit_callbacks(execute=True):
            response = request()
        after = holds_counted()
        assert {k: after[k] - before[k] for k in after} == {**dict.fromkeys(after, 0.0), **outcomes}
        return response

    return step


def test_metrics_count_created_holds_and_refused_ones(api, counts):
    a = api.create("apple", 5)
    body = {"lines": [{"id": a["id"], "qty": 2}]}

    assert counts(lambda: api.post("/holds", body), created=1).status_code == 201
    assert (
        counts(lambda: api.post("/holds", {"lines": [{"id": a["id"], "qty": 4}]}), refused=1).status_code
        == 409
    )
    assert (
        counts(lambda: api.post("/holds", {"lines": [{"id": LAST_ID, "qty": 1}]}), refused=1).status_code
        == 404
    )
    assert (
        counts(lambda: api.post("/holds", body, **{"Idempotency-Key": "m-1"}), created=1).status_code == 201
    )
    assert (
        counts(lambda: api.post("/holds", body, **{"Idempotency-Key": "m-1"}))["Idempotent-Replayed"]
        == "true"
    )


def test_metrics_count_a_commit_once(api, counts):
    made = hold(api, (api.create("apple", 5), 2))

    assert counts(lambda: api.post(f"/holds/{made['id']}/commit"), committed=1).status_code == 200
    assert counts(lambda: api.post(f"/holds/{made['id']}/commit")).status_code == 200
    assert counts(lambda: api.post(f"/holds/{made['id']}/release")).status_code == 409


def test_metrics_count_a_release_once(api, counts):
    made = hold(api, (api.create("apple", 5), 2))

    assert counts(lambda: api.post(f"/holds/{made['id']}/release"), released=1).status_code == 200
    assert counts(lambda: api.post(f"/holds/{made['id']}/release")).status_code == 200
    assert counts(lambda: api.post(f"/holds/{made['id']}/commit")).status_code == 409


def test_metrics_count_an_expiry_once_when_the_expired_hold_is_released(api, now, counts):
    made = hold(api, (api.create("apple", 5), 2), ttl_seconds=60)
    now.advance(60)

    assert counts(lambda: api.post(f"/holds/{made['id']}/commit")).status_code == 409
    assert counts(lambda: api.post(f"/holds/{made['id']}/release"), expired=1).json()["state"] == "expired"
    assert counts(lambda: api.post(f"/holds/{made['id']}/release")).status_code == 200


def test_metrics_count_an_expiry_once_when_a_write_to_its_items_collects_it(api, now, counts):
    a, b = api.create("apple", 5), api.create("banana", 5)
    made = hold(api, (a, 1), (b, 1), ttl_seconds=60)
    now.advance(60)

    assert counts(lambda: api.patch(f"/items/{b['id']}/qty", {"delta": -5}), expired=1).status_code == 200
    assert counts(lambda: api.patch(f"/items/{a['id']}/qty", {"delta": -5})).status_code == 200
    assert counts(lambda: api.post(f"/holds/{made['id']}/release")).json()["state"] == "expired"


# A random run --------------------------------------------------------------------------------------

ITEMS = ("apple", "banana", "cherry")
# A hold is named by how recent it is (0: the newest), so that actions meet active holds too.
recent = st.integers(0, 3)
operations = st.one_of(
    st.tuples(
        st.just("hold"),
        st.lists(
            st.tuples(st.integers(0, 2), st.integers(1, 4)),
            min_size=1,
            max_size=3,
            unique_by=lambda line: line[0],
        ),
        st.integers(1, 40),
    ),
    st.tuples(st.just("commit"), recent),
    st.tuples(st.just("release"), recent),
    st.tuples(st.just("extend"), recent, st.integers(1, 40)),
    st.tuples(st.just("delta"), st.integers(0, 2), st.integers(-8, 4)),
    st.tuples(st.just("advance"), st.sampled_from([0, 1, 5, 10, 20, 40])),
)


class Model:
    """What the contract says the state is: each item's qty, each hold's lines, expiry and
    state as last written (an active hold past expires_at reads as expired)."""

    def __init__(self, qtys: dict[str, int]):
        self.qty = dict(qtys)
        self.holds: dict[str, dict] = {}

    def state(self, hold_id: str, now: datetime.datetime) -> str:
        held_now = self.holds[hold_id]
        return (
            "expired"
            if held_now["state"] == "active" and now >= held_now["expires_at"]
            else held_now["state"]
        )

    def reserved(self, item_id: str, now: datetime.datetime) -> int:
        return sum(
            entry["lines"].get(item_id, 0)
            for hold_id, entry in self.holds.items()
            if self.state(hold_id, now) == "active"
        )


def run(api: Api, model: Model, now: FakeClock, ids: list[str], operation: tuple) -> None:
    """Apply one operation through the API and to the model; check the answer matches."""
    kind, *args = operation
    hold_ids = list(model.holds)
    if kind in ("commit", "release", "extend"):
        if not hold_ids:
            return
        hold_id = hold_ids[-1 - args[0] % len(hold_ids)]
        current = model.state(hold_id, now.now)
        event(
            f"{kind} of an {current} hold"
            if current in ("active", "expired")
            else f"{kind} of a {current} hold"
        )
    if kind == "hold":
        lines, ttl = args
        named = {ids[index % len(ids)]: qty for index, qty in reversed(lines)}  # each item once
        body = {"lines": [{"id": item_id, "qty": qty} for item_id, qty in named.items()], "ttl_seconds": ttl}
        response = api.post("/holds", body)
        event(f"hold answered {response.status_code}")
        refusing = [
            line["id"]
            for line in sorted(body["lines"], key=lambda line: line["id"])
            if line["qty"] > model.qty[line["id"]] - model.reserved(line["id"], now.now)
        ]
        if refusing:
            available = model.qty[refusing[0]] - model.reserved(refusing[0], now.now)
            assert (response.status_code, response.json()) == (
                409,
                {"error": NOT_ENOUGH, "id": refusing[0], "available": available},
            )
        else:
            assert response.status_code == 201, response.content
            model.holds[response.json()["id"]] = {
                "lines": {line["id"]: line["qty"] for line in body["lines"]},
                "expires_at": now.now + datetime.timedelta(seconds=ttl),
                "state": "active",
            }
    elif kind == "commit":
        response = api.post(f"/holds/{hold_id}/commit")
        if current in ("active", "committed"):
            assert response.status_code == 200, response.content
            if current == "active":
                for item_id, qty in model.holds[hold_id]["lines"].items():
                    model.qty[item_id] -= qty
                model.holds[hold_id]["state"] = "committed"
        else:
            assert (response.status_code, response.json()["error"]) == (409, f"hold is {current}")
    elif kind == "release":
        response = api.post(f"/holds/{hold_id}/release")
        if current == "committed":
            assert (response.status_code, response.json()["error"]) == (409, "hold is committed")
        else:
            assert response.status_code == 200, response.content
            assert response.json()["state"] == ("released" if current == "active" else current)
            if current == "active":
                model.holds[hold_id]["state"] = "released"
    elif kind == "extend":
        response = api.post(f"/holds/{hold_id}/extend", {"ttl_seconds": args[1]})
        if current == "active":
            assert response.status_code == 200, response.content
            model.holds[hold_id]["expires_at"] = now.now + datetime.timedelta(seconds=args[1])
        else:
            assert (response.status_code, response.json()["error"]) == (409, f"hold is {current}")
    elif kind == "delta":
        item_id, delta = ids[args[0] % len(ids)], args[1]
        response = api.patch(f"/items/{item_id}/qty", {"delta": delta})
        after, reserved = model.qty[item_id] + delta, model.reserved(item_id, now.now)
        event(f"delta answered {response.status_code}" + (" below reserved" if 0 <= after < reserved else ""))
        if after < 0:
            assert (response.status_code, response.json()) == (400, {"error": BELOW_ZERO})
        elif after < reserved:
            assert (response.status_code, response.json()) == (
                400,
                {"error": BELOW_RESERVED, "reserved": reserved},
            )
        else:
            assert response.status_code == 200, response.content
            model.qty[item_id] = after
    else:
        now.advance(args[0])


def check(api: Api, model: Model, now: FakeClock, ids: list[str]) -> None:
    """The invariants, through the API only, and agreement with the model."""
    items = api.all_items()
    holds = {hold_id: api.get(f"/holds/{hold_id}").json() for hold_id in model.holds}
    for item_id in ids:
        shown = items[item_id]
        active = [hold for hold in holds.values() if hold["state"] == "active"]
        lines = sum(line["qty"] for hold in active for line in hold["lines"] if line["id"] == item_id)
        assert 0 <= shown["reserved"] <= shown["qty"]
        assert shown["reserved"] == lines
        assert shown["available"] == shown["qty"] - shown["reserved"]
        assert (shown["qty"], shown["reserved"]) == (model.qty[item_id], model.reserved(item_id, now.now))
        assert item(api, item_id) == shown
        listed = [hold["id"] for hold in pages(api, f"/items/{item_id}/holds", "holds", limit=2)]
        assert listed == [
            hold["id"] for hold in active if any(line["id"] == item_id for line in hold["lines"])
        ]
    for hold_id, shown in holds.items():
        assert shown["state"] == model.state(hold_id, now.now)
        assert instant(shown["expires_at"]) == model.holds[hold_id]["expires_at"]


@example(  # below reserved; then, expired: commit refused, its stock taken by a delta, released
    qtys=[5, 3],
    steps=[
        ("hold", [(0, 3), (1, 3)], 10),
        ("delta", 0, -3),
        ("advance", 10),
        ("commit", 0),
        ("delta", 0, -5),
        ("hold", [(1, 3)], 5),
        ("extend", 0, 20),
        ("advance", 5),
        ("commit", 0),
        ("release", 0),
        ("release", 1),
        ("extend", 1, 5),
    ],
)
@example(  # an extended hold outlives the one beside it; the freed stock is held again
    qtys=[4, 4, 4],
    steps=[
        ("hold", [(0, 2), (1, 2), (2, 2)], 5),
        ("hold", [(0, 2), (2, 2)], 5),
        ("extend", 0, 40),
        ("advance", 5),
        ("hold", [(1, 4), (2, 2)], 40),
        ("release", 2),
        ("commit", 1),
        ("delta", 0, -2),
        ("advance", 40),
        ("hold", [(1, 4), (2, 2)], 1),
    ],
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    qtys=st.lists(st.integers(0, 8), min_size=2, max_size=3),
    steps=st.lists(operations, min_size=6, max_size=20),
)
def test_random_runs_keep_reserved_equal_to_the_active_holds(api, now, qtys, steps):
    now.now = T0
    with transaction.atomic():  # each example starts from an empty database
        ids = [api.create(name, qty)["id"] for name, qty in zip(ITEMS, qtys, strict=False)]
        model = Model(dict(zip(ids, qtys, strict=True)))
        for operation in steps:
            run(api, model, now, ids, operation)
            check(api, model, now, ids)
        call_command("verify", stdout=io.StringIO())
        transaction.set_rollback(True)


def test_a_missing_item_is_named_before_a_short_line_whatever_their_id_order(api, state):
    # The contract's order of refusals: 404 before 409, even when the short line's item sorts first.
    short = api.create("scarce", 1)
    missing = "ffffffff-ffff-4fff-bfff-ffffffffffff"  # sorts after every other id
    before = state()

    response = api.post("/holds", {"lines": [{"id": short["id"], "qty": 5}, {"id": missing, "qty": 1}]})

    assert response.status_code == 404, response.json()
    assert response.json() == {"error": "not_found", "id": missing}
    assert state() == before


def test_a_delta_that_collects_an_expired_hold_applies_even_when_another_expires_meanwhile(api, monkeypatch):
    # The delta's guard is refused while a first hold still counts; the row, once locked, is
    # collected at a later instant, at which a second hold has not expired yet; and by the
    # time the delta is tried again the second one has. One instant must decide both tries.
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    monkeypatch.setattr(clock, "now", lambda: start)
    apple = api.create("apple", 10)
    first = hold(api, (apple, 3), ttl_seconds=60)
    second = hold(api, (apple, 2), ttl_seconds=61)
    expires = instant(first["expires_at"])
    reads = iter([expires - datetime.timedelta(microseconds=1), expires + datetime.timedelta(microseconds=1)])
    later = instant(second["expires_at"]) + datetime.timedelta(microseconds=1)
    monkeypatch.setattr(clock, "now", lambda: next(reads, later))

    response = api.patch(f"/items/{apple['id']}/qty", {"delta": -8})

    assert response.status_code == 200, response.json()
    assert (response.json()["qty"], response.json()["reserved"]) == (2, 2)
    call_command("verify")
