"""The change feed through HTTP: the events of every transition (type, data, actor, request id,
item and hold), in order; no event for a refused write or an idempotent replay; GET /events
paged, polled, refused and pruned; and the feed replayed over an empty state giving the
state GET /items shows.

Time is the service's clock (inventory.clock.now), which every test here replaces with one
that stands still until the test moves it."""

import base64
import datetime
import itertools
import json

import pytest

from inventory import clock, events, holds, items
from inventory.models import Event, Movement
from tests.conftest import WRITER, Api, expected_item

pytestmark = pytest.mark.django_db

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
MISSING = "00000000-0000-4000-8000-000000000000"
EVENT_FIELDS = {"id", "type", "at", "actor", "request_id", "item_id", "hold_id", "data"}


class FakeClock:
    """The service's clock, standing still until a test moves it."""

    def __init__(self):
        self.now = T0

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@pytest.fixture(autouse=True)
def now(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(clock, "now", fake)
    return fake


def request_ids():
    return (f"req-{n}" for n in itertools.count())


class Feed:
    """A consumer of GET /events that keeps `next` and polls with it."""

    def __init__(self, api: Api):
        self.api = api
        self.cursor: str | None = None
        self.seen: list[dict] = []

    def page(self, limit: int = 1000) -> dict:
        response = self.api.get(f"/events?limit={limit}" + (f"&after={self.cursor}" if self.cursor else ""))
        assert response.status_code == 200, response.content
        page = response.json()
        assert isinstance(page["next"], str) and page["next"], page
        for event in page["events"]:
            assert set(event) == EVENT_FIELDS, event
        self.cursor = page["next"]
        self.seen += page["events"]
        return page

    def new(self, limit: int = 1000) -> list[dict]:
        """Every event after the cursor, following `next` until a page is empty."""
        found = []
        while events_ := self.page(limit)["events"]:
            found += events_
        return found


@pytest.fixture
def feed(api) -> Feed:
    return Feed(api)


@pytest.fixture
def rid():
    return request_ids()


def send(api: Api, rid, method: str, path: str, body=None, **headers):
    """The request with a fresh X-Request-ID: (response, that request id)."""
    request_id = next(rid)
    response = api.request(method, path, body, X_Request_ID=request_id, **headers)
    return response, request_id


def create(api: Api, name: str, qty: int, threshold: int | None = None) -> dict:
    body = {"name": name, "qty": qty} | ({} if threshold is None else {"low_stock_threshold": threshold})
    response = api.post("/items", body)
    assert response.status_code == 201, response.content
    return response.json()


def shown(found: list[dict]) -> list[tuple]:
    """(type, item_id, hold_id, data) of each event, in feed order."""
    return [(event["type"], event["item_id"], event["hold_id"], event["data"]) for event in found]


def written_by(found: list[dict], request_id: str | None, actor: str | None = WRITER) -> None:
    assert found, "no event"
    assert {(event["actor"], event["request_id"]) for event in found} == {(actor, request_id)}


def qty_changed(item: dict, kind: str, delta: int = 0, reason=None, reference=None, hold_id=None) -> tuple:
    """The item.qty_changed event that left `item` (an item as the API shows it) as it is."""
    data = {
        "kind": kind,
        "delta": delta,
        "qty": item["qty"],
        "reserved": item["reserved"],
        "available": item["available"],
        "reason": reason,
        "reference": reference,
    }
    return ("item.qty_changed", item["id"], hold_id, data)


def alert(type_: str, item: dict) -> tuple:
    data = {"available": item["available"]}
    if type_ == "item.low_stock":
        data["low_stock_threshold"] = item["low_stock_threshold"]
    return (type_, item["id"], None, data)


def instant(text: str) -> datetime.datetime:
    assert text.endswith("Z") or text.endswith("+00:00"), text
    return datetime.datetime.fromisoformat(text)


def as_hold(data: dict) -> dict:
    """A hold with its times as instants, to compare an event's with an answer's."""
    return {**data, "expires_at": instant(data["expires_at"]), "created_at": instant(data["created_at"])}


def hold_event(type_: str, api: Api, hold_id: str) -> tuple:
    """The hold event showing the hold as GET /holds/<id> does now."""
    return (type_, None, hold_id, as_hold(api.get(f"/holds/{hold_id}").json()))


def comparable(found: list[dict]) -> list[tuple]:
    """shown(), with a hold event's times as instants, and without the hold of an expiry's
    qty_changed: the contract leaves it open (one write may collect the lines of several
    holds at once), and the tests here give None."""
    return [
        (
            type_,
            item_id,
            None if data.get("kind") == "expire" else hold_id,
            as_hold(data) if type_.startswith("hold.") else data,
        )
        for type_, item_id, hold_id, data in shown(found)
    ]


def read_item(api: Api, item_id: str) -> dict:
    return api.get(f"/items/{item_id}").json()


# The item's life ----------------------------------------------------------------------------------


def test_create_publishes_item_created_with_the_item_as_answered(api, feed, rid):
    response, request_id = send(api, rid, "POST", "/items", {"name": "apple", "qty": 5})

    found = feed.new()
    assert response.status_code == 201
    assert shown(found) == [("item.created", response.json()["id"], None, response.json())]
    assert response.json() == expected_item(id=response.json()["id"], name="apple", qty=5)
    written_by(found, request_id)
    assert instant(found[0]["at"]) == T0


def test_rename_publishes_item_updated_with_the_item_after(api, feed, rid):
    apple = create(api, "apple", 5)
    feed.new()

    response, request_id = send(api, rid, "PATCH", f"/items/{apple['id']}", {"name": "pear"})

    found = feed.new()
    assert response.json() == {**apple, "name": "pear"}
    assert shown(found) == [("item.updated", apple["id"], None, response.json())]
    written_by(found, request_id)


def test_a_threshold_raised_above_available_publishes_item_updated_then_low_stock(api, feed, rid):
    apple = create(api, "apple", 5)
    feed.new()

    response, request_id = send(api, rid, "PATCH", f"/items/{apple['id']}", {"low_stock_threshold": 6})

    after = response.json()
    assert after == {**apple, "low_stock_threshold": 6}
    found = feed.new()
    assert shown(found) == [("item.updated", apple["id"], None, after), alert("item.low_stock", after)]
    written_by(found, request_id)


@pytest.mark.parametrize(
    ("threshold", "new_threshold"),
    [(None, 5), (None, 2), (3, 5), (6, 8), (6, 2), (6, None)],
    ids=["set at available", "set below", "raised to available", "already low", "lowered", "removed"],
)
def test_a_threshold_change_that_crosses_nothing_publishes_only_item_updated(
    api, feed, rid, threshold, new_threshold
):
    apple = create(api, "apple", 5, threshold)
    feed.new()

    response, _ = send(api, rid, "PATCH", f"/items/{apple['id']}", {"low_stock_threshold": new_threshold})

    assert response.json()["low_stock_threshold"] == new_threshold
    assert shown(feed.new()) == [("item.updated", apple["id"], None, response.json())]


def test_delete_publishes_item_deleted_with_the_qty_it_removed(api, feed, rid):
    apple = create(api, "apple", 5, 2)
    feed.new()

    response, request_id = send(api, rid, "DELETE", f"/items/{apple['id']}")

    found = feed.new()
    assert response.status_code == 204
    assert api.get(f"/items/{apple['id']}").status_code == 404
    assert shown(found) == [("item.deleted", apple["id"], None, apple)]
    written_by(found, request_id)


def test_deleting_a_missing_item_publishes_nothing(api, feed, rid):
    feed.new()

    response, _ = send(api, rid, "DELETE", f"/items/{MISSING}")

    assert response.status_code == 204
    assert feed.new() == []


# Changes of qty ------------------------------------------------------------------------------------


def test_a_delta_publishes_qty_changed_with_its_reason_and_reference(api, feed, rid):
    apple = create(api, "apple", 5)
    feed.new()

    response, request_id = send(
        api, rid, "PATCH", f"/items/{apple['id']}/qty", {"delta": -2, "reason": "sale", "reference": "o-1"}
    )

    after = response.json()
    assert after["qty"] == 3
    found = feed.new()
    assert shown(found) == [qty_changed(after, "adjust", -2, "sale", "o-1")]
    written_by(found, request_id)


def test_a_delta_of_zero_publishes_nothing(api, feed, rid):
    apple = create(api, "apple", 5, 9)
    feed.new()

    response, _ = send(api, rid, "PATCH", f"/items/{apple['id']}/qty", {"delta": 0})

    assert response.json() == apple
    assert feed.new() == []


def test_deltas_publish_low_stock_out_of_stock_and_back_in_stock_as_available_crosses(api, feed, rid):
    apple = create(api, "apple", 5, 3)
    feed.new()
    found_by_delta = []

    for delta in (-1, -2, -1, -1, 0, 1, 4, -4, 1):
        response, request_id = send(api, rid, "PATCH", f"/items/{apple['id']}/qty", {"delta": delta})
        assert response.status_code == 200, response.content
        found = feed.new()
        if found:
            written_by(found, request_id)
        found_by_delta.append(shown(found))

    def item(qty):
        return {**apple, "qty": qty, "available": qty}

    assert found_by_delta == [
        [qty_changed(item(4), "adjust", -1)],  # 5 -> 4: still at or above 3
        [qty_changed(item(2), "adjust", -2), alert("item.low_stock", item(2))],
        [qty_changed(item(1), "adjust", -1)],  # already low
        [qty_changed(item(0), "adjust", -1), alert("item.out_of_stock", item(0))],
        [],  # a delta of 0
        [qty_changed(item(1), "adjust", 1), alert("item.back_in_stock", item(1))],  # still low
        [qty_changed(item(5), "adjust", 4)],  # back above the threshold: no alert
        [qty_changed(item(1), "adjust", -4), alert("item.low_stock", item(1))],
        [qty_changed(item(2), "adjust", 1)],
    ]


def test_a_batch_publishes_one_qty_changed_per_line_in_id_order(api, feed, rid):
    made = [create(api, name, 5, 4) for name in ("a", "b", "c")]
    first, second, third = sorted(made, key=lambda item: item["id"])
    feed.new()
    changes = [
        {"id": third["id"], "delta": 1},
        {"id": first["id"], "delta": -2},
        {"id": second["id"], "delta": -5},
    ]

    response, request_id = send(
        api, rid, "POST", "/adjustments", {"changes": changes, "reason": "count", "reference": "c-9"}
    )

    assert response.status_code == 200, response.content
    after = {item["id"]: item for item in response.json()["items"]}
    found = feed.new()
    assert shown(found) == [
        qty_changed(after[first["id"]], "adjust", -2, "count", "c-9"),
        alert("item.low_stock", after[first["id"]]),
        qty_changed(after[second["id"]], "adjust", -5, "count", "c-9"),
        alert("item.low_stock", after[second["id"]]),
        alert("item.out_of_stock", after[second["id"]]),
        qty_changed(after[third["id"]], "adjust", 1, "count", "c-9"),
    ]
    written_by(found, request_id)


# Holds ---------------------------------------------------------------------------------------------


def test_a_hold_publishes_qty_changed_per_line_in_id_order_then_hold_created(api, feed, rid):
    first, second = sorted([create(api, "a", 5), create(api, "b", 3)], key=lambda item: item["id"])
    feed.new()
    lines = [{"id": second["id"], "qty": 1}, {"id": first["id"], "qty": 2}]

    response, request_id = send(api, rid, "POST", "/holds", {"lines": lines, "reference": "cart-1"})

    assert response.status_code == 201, response.content
    hold_id = response.json()["id"]
    found = feed.new()
    assert comparable(found) == [
        qty_changed(read_item(api, first["id"]), "hold", hold_id=hold_id),
        qty_changed(read_item(api, second["id"]), "hold", hold_id=hold_id),
        hold_event("hold.created", api, hold_id),
    ]
    assert read_item(api, first["id"])["reserved"] == 2
    written_by(found, request_id)


def test_a_hold_that_takes_available_below_the_threshold_publishes_low_stock(api, feed, rid):
    apple = create(api, "apple", 5, 4)
    feed.new()

    response, _ = send(api, rid, "POST", "/holds", {"lines": [{"id": apple["id"], "qty": 2}]})

    after = read_item(api, apple["id"])
    assert after["available"] == 3
    assert comparable(feed.new()) == [
        qty_changed(after, "hold", hold_id=response.json()["id"]),
        alert("item.low_stock", after),
        hold_event("hold.created", api, response.json()["id"]),
    ]


def test_a_hold_that_takes_the_last_unit_publishes_out_of_stock(api, feed, rid):
    apple = create(api, "apple", 2)
    feed.new()

    response, _ = send(api, rid, "POST", "/holds", {"lines": [{"id": apple["id"], "qty": 2}]})

    after = read_item(api, apple["id"])
    assert (after["qty"], after["available"]) == (2, 0)
    assert comparable(feed.new()) == [
        qty_changed(after, "hold", hold_id=response.json()["id"]),
        alert("item.out_of_stock", after),
        hold_event("hold.created", api, response.json()["id"]),
    ]


def test_commit_publishes_the_stock_that_left_then_hold_committed(api, feed, rid):
    apple = create(api, "apple", 5)
    hold = api.post("/holds", {"lines": [{"id": apple["id"], "qty": 2}], "reference": "order-7"}).json()
    feed.new()

    response, request_id = send(api, rid, "POST", f"/holds/{hold['id']}/commit")

    assert response.json()["state"] == "committed"
    after = read_item(api, apple["id"])
    assert (after["qty"], after["reserved"]) == (3, 0)
    found = feed.new()
    assert comparable(found) == [
        qty_changed(after, "commit", -2, reference="order-7", hold_id=hold["id"]),
        hold_event("hold.committed", api, hold["id"]),
    ]
    written_by(found, request_id)


def test_release_publishes_the_stock_given_back_then_hold_released(api, feed, rid):
    apple = create(api, "apple", 2)
    hold = api.post("/holds", {"lines": [{"id": apple["id"], "qty": 2}]}).json()
    feed.new()

    response, request_id = send(api, rid, "POST", f"/holds/{hold['id']}/release")

    assert response.json()["state"] == "released"
    after = read_item(api, apple["id"])
    assert after == apple
    found = feed.new()
    assert comparable(found) == [
        qty_changed(after, "release", hold_id=hold["id"]),
        alert("item.back_in_stock", after),
        hold_event("hold.released", api, hold["id"]),
    ]
    written_by(found, request_id)


def test_extend_publishes_hold_extended_with_the_new_expiry(api, feed, rid, now):
    apple = create(api, "apple", 2)
    hold = api.post("/holds", {"lines": [{"id": apple["id"], "qty": 1}], "ttl_seconds": 60}).json()
    feed.new()
    now.advance(30)

    response, request_id = send(api, rid, "POST", f"/holds/{hold['id']}/extend", {"ttl_seconds": 600})

    assert instant(response.json()["expires_at"]) == now.now + datetime.timedelta(seconds=600)
    found = feed.new()
    assert comparable(found) == [hold_event("hold.extended", api, hold["id"])]
    written_by(found, request_id)


@pytest.mark.parametrize("action", ["commit", "release"])
def test_repeating_a_hold_action_publishes_nothing(api, feed, rid, action):
    apple = create(api, "apple", 2)
    hold = api.post("/holds", {"lines": [{"id": apple["id"], "qty": 1}]}).json()
    assert api.post(f"/holds/{hold['id']}/{action}").status_code == 200
    feed.new()

    response, _ = send(api, rid, "POST", f"/holds/{hold['id']}/{action}")

    assert response.status_code == 200
    assert feed.new() == []


# Expiry -----------------------------------------------------------------------------------------


def expired(found: list[dict], api: Api, hold_id: str) -> list[dict]:
    """The hold.expired events of the hold (there must be exactly one), checked."""
    events_ = [event for event in found if event["type"] == "hold.expired"]
    assert [event["hold_id"] for event in events_] == [hold_id]
    assert as_hold(events_[0]["data"]) == as_hold(api.get(f"/holds/{hold_id}").json())
    assert events_[0]["data"]["state"] == "expired"
    return events_


def test_the_sweep_publishes_an_expiry_once_with_the_stock_it_frees(api, feed, now):
    apple = create(api, "apple", 2)
    hold = api.post("/holds", {"lines": [{"id": apple["id"], "qty": 2}], "ttl_seconds": 60}).json()
    feed.new()
    now.advance(60)

    assert holds.holds_expire_due() >= 1
    assert holds.holds_expire_due() == 0

    found = feed.new()
    after = read_item(api, apple["id"])
    assert after == apple
    expired(found, api, hold["id"])
    assert sorted(comparable(found)) == sorted(
        [
            qty_changed(after, "expire"),
            alert("item.back_in_stock", after),
            hold_event("hold.expired", api, hold["id"]),
        ]
    )
    # The sweep runs on no one's behalf.
    written_by(found, None, actor=None)
    # A later write on the item does not publish the expiry again.
    assert api.patch(f"/items/{apple['id']}/qty", {"delta": 1}).status_code == 200
    assert [event["type"] for event in feed.new()] == ["item.qty_changed"]


def test_the_sweep_leaves_a_hold_before_its_expiry(api, feed, now):
    apple = create(api, "apple", 2)
    api.post("/holds", {"lines": [{"id": apple["id"], "qty": 2}], "ttl_seconds": 60})
    feed.new()
    now.advance(59)

    assert holds.holds_expire_due() == 0
    assert feed.new() == []


def test_a_later_write_on_the_item_publishes_the_expiry_once_before_its_own_change(api, feed, rid, now):
    """The hold expired at expires_at, before the delta: the feed says so in that order, and
    the delta's qty_changed shows the item as clients saw it (nothing reserved any more)."""
    apple = create(api, "apple", 2)
    hold = api.post("/holds", {"lines": [{"id": apple["id"], "qty": 2}], "ttl_seconds": 60}).json()
    feed.new()
    now.advance(60)

    response, request_id = send(api, rid, "PATCH", f"/items/{apple['id']}/qty", {"delta": 1})

    after = response.json()
    assert (after["qty"], after["reserved"]) == (3, 0)
    found = feed.new()
    expired(found, api, hold["id"])
    freed = {**apple, "qty": 2, "reserved": 0, "available": 2}
    expiry = [
        qty_changed(freed, "expire"),
        alert("item.back_in_stock", freed),
        hold_event("hold.expired", api, hold["id"]),
    ]
    assert sorted(comparable(found)[:3]) == sorted(expiry)
    assert comparable(found)[3:] == [qty_changed(after, "adjust", 1)]
    written_by(found, request_id)
    assert holds.holds_expire_due() == 0
    assert feed.new() == []


def test_every_qty_changed_shows_the_item_as_a_client_could_read_it_around_an_expiry(api, feed, now):
    """Whatever the stored counter still counts, no event shows a `reserved` that an expired
    hold no longer sets aside."""
    apple = create(api, "apple", 5)
    api.post("/holds", {"lines": [{"id": apple["id"], "qty": 3}], "ttl_seconds": 60})
    feed.new()
    now.advance(60)

    assert api.patch(f"/items/{apple['id']}/qty", {"delta": -1}).status_code == 200
    assert api.post("/holds", {"lines": [{"id": apple["id"], "qty": 1}]}).status_code == 201

    shown_reserved = [
        (event["data"]["qty"], event["data"]["reserved"])
        for event in feed.new()
        if event["type"] == "item.qty_changed"
    ]
    assert all(reserved in (0, 1) for _, reserved in shown_reserved), shown_reserved


# Refusals and replays publish nothing -----------------------------------------------------------------


REFUSALS = {
    "create without qty": ("POST", "/items", {"name": "x"}, 400),
    "create of a taken name": ("POST", "/items", {"name": "apple", "qty": 1}, 400),
    "create with a bad threshold": (
        "POST",
        "/items",
        {"name": "x", "qty": 1, "low_stock_threshold": -1},
        400,
    ),
    "rename to a taken name": ("PATCH", "/items/{apple}", {"name": "pear"}, 400),
    "rename to a blank name": ("PATCH", "/items/{apple}", {"name": " "}, 400),
    "patch of qty": ("PATCH", "/items/{apple}", {"qty": 1}, 400),
    "rename of a missing item": ("PATCH", f"/items/{MISSING}", {"name": "x"}, 404),
    "delete of a held item": ("DELETE", "/items/{apple}", None, 409),
    "delta below 0": ("PATCH", "/items/{apple}/qty", {"delta": -6}, 400),
    "delta below reserved": ("PATCH", "/items/{apple}/qty", {"delta": -4}, 400),
    "delta above the bound": ("PATCH", "/items/{apple}/qty", {"delta": 2**63 - 1}, 400),
    "delta that is not an integer": ("PATCH", "/items/{apple}/qty", {"delta": 1.0}, 400),
    "stale expected_qty": ("PATCH", "/items/{apple}/qty", {"delta": 1, "expected_qty": 4}, 409),
    "delta on a missing item": ("PATCH", f"/items/{MISSING}/qty", {"delta": 1}, 404),
    "batch with a line below 0": (
        "POST",
        "/adjustments",
        {"changes": [{"id": "{pear}", "delta": 1}, {"id": "{apple}", "delta": -6}]},
        400,
    ),
    "batch with a missing item": (
        "POST",
        "/adjustments",
        {"changes": [{"id": "{pear}", "delta": 1}, {"id": MISSING, "delta": 1}]},
        404,
    ),
    "batch with a stale line": (
        "POST",
        "/adjustments",
        {"changes": [{"id": "{pear}", "delta": 1}, {"id": "{apple}", "delta": 1, "expected_qty": 0}]},
        409,
    ),
    "hold over available": (
        "POST",
        "/holds",
        {"lines": [{"id": "{pear}", "qty": 1}, {"id": "{apple}", "qty": 4}]},
        409,
    ),
    "hold on a missing item": (
        "POST",
        "/holds",
        {"lines": [{"id": "{pear}", "qty": 1}, {"id": MISSING, "qty": 1}]},
        404,
    ),
    "hold with a bad ttl": ("POST", "/holds", {"lines": [{"id": "{pear}", "qty": 1}], "ttl_seconds": 0}, 400),
    "commit of a released hold": ("POST", "/holds/{released}/commit", None, 409),
    "commit of an expired hold": ("POST", "/holds/{expired}/commit", None, 409),
    "release of a committed hold": ("POST", "/holds/{committed}/release", None, 409),
    "extend of a committed hold": ("POST", "/holds/{committed}/extend", {"ttl_seconds": 60}, 409),
    "extend of an expired hold": ("POST", "/holds/{expired}/extend", {"ttl_seconds": 60}, 409),
    "extend with a bad ttl": ("POST", "/holds/{active}/extend", {"ttl_seconds": 0}, 400),
    "commit of a missing hold": ("POST", f"/holds/{MISSING}/commit", None, 404),
}


@pytest.fixture
def scene(api, now) -> dict:
    """apple (5, of which an active hold sets 2 aside), pear (5), and a committed, a released
    and an expired hold (the last stored as expired already): names -> ids."""
    apple, pear = create(api, "apple", 5), create(api, "pear", 5)

    def hold(item, ttl=900):
        response = api.post("/holds", {"lines": [{"id": item["id"], "qty": 1}], "ttl_seconds": ttl})
        assert response.status_code == 201, response.content
        return response.json()["id"]

    committed, released, expired_ = hold(pear), hold(pear), hold(pear, ttl=1)
    assert api.post(f"/holds/{committed}/commit").status_code == 200
    assert api.post(f"/holds/{released}/release").status_code == 200
    now.advance(1)
    assert holds.holds_expire_due() == 1
    assert api.patch(f"/items/{pear['id']}/qty", {"delta": 1}).status_code == 200  # back to 5
    active = api.post("/holds", {"lines": [{"id": apple["id"], "qty": 2}]}).json()["id"]
    return {
        "apple": apple["id"],
        "pear": pear["id"],
        "active": active,
        "committed": committed,
        "released": released,
        "expired": expired_,
    }


@pytest.mark.parametrize("name", REFUSALS)
def test_a_refused_write_publishes_no_event_and_changes_nothing(api, feed, rid, scene, name):
    method, path, body, status = REFUSALS[name]
    path = path.format(**scene)
    if body is not None:
        body = json.loads(
            json.dumps(body).replace("{apple}", scene["apple"]).replace("{pear}", scene["pear"])
        )
    feed.new()
    items_before = api.all_items()

    response, _ = send(api, rid, method, path, body)

    assert response.status_code == status, response.content
    assert feed.new() == []
    assert api.all_items() == items_before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/items", {"name": "plum", "qty": 1}),
        ("PATCH", "/items/{apple}", {"name": "plum"}),
        ("PATCH", "/items/{apple}/qty", {"delta": -1}),
        ("PATCH", "/items/{apple}/qty", {"delta": -99}),  # a stored refusal is replayed too
        ("POST", "/adjustments", {"changes": [{"id": "{pear}", "delta": 2}]}),
        ("POST", "/holds", {"lines": [{"id": "{pear}", "qty": 1}]}),
        ("POST", "/holds/{active}/commit", None),
        ("POST", "/holds/{active}/release", None),
        ("POST", "/holds/{active}/extend", {"ttl_seconds": 60}),
    ],
)
def test_an_idempotent_replay_publishes_nothing(api, feed, rid, scene, method, path, body):
    path = path.format(**scene)
    if body is not None:
        body = json.loads(
            json.dumps(body).replace("{apple}", scene["apple"]).replace("{pear}", scene["pear"])
        )
    feed.new()
    first, _ = send(api, rid, method, path, body, Idempotency_Key="key-1")
    published = feed.new()
    items_before = api.all_items()

    replay, _ = send(api, rid, method, path, body, Idempotency_Key="key-1")

    assert replay.headers["Idempotent-Replayed"] == "true"
    assert (replay.status_code, replay.content) == (first.status_code, first.content)
    assert feed.new() == []
    assert api.all_items() == items_before
    assert bool(published) == (first.status_code < 400)


# The feed ----------------------------------------------------------------------------------------


def some_events(api: Api, count: int) -> None:
    apple = create(api, "apple", 0)
    for _ in range(count - 1):
        assert api.patch(f"/items/{apple['id']}/qty", {"delta": 1}).status_code == 200


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 1000])
def test_paging_with_limit_reaches_every_event_once_in_order(api, feed, limit):
    some_events(api, 13)  # 13 qty changes (and one back_in_stock)
    everything = api.get("/events?limit=1000").json()["events"]
    assert len(everything) == 14

    pages = []
    while page := feed.page(limit)["events"]:
        assert len(page) <= limit
        pages.append(page)

    assert [event for page in pages for event in page] == everything
    assert all(len(page) == limit for page in pages[:-1])
    assert len({event["id"] for event in everything}) == len(everything)


def test_next_is_never_null_and_stays_put_while_nothing_is_new(api, feed):
    empty = feed.page()
    assert empty["events"] == []
    assert feed.page()["next"] == empty["next"]

    some_events(api, 3)
    found = feed.page()
    again = feed.page()

    assert len(found["events"]) == 4
    assert again == {"events": [], "next": found["next"]}
    assert feed.page() == again


def test_polling_with_next_sees_each_new_event_once(api, feed):
    apple = create(api, "apple", 1)
    feed.new()

    for delta in (1, 2, 3):
        assert api.patch(f"/items/{apple['id']}/qty", {"delta": delta}).status_code == 200
        assert [event["data"]["delta"] for event in feed.new()] == [delta]

    assert feed.new() == []
    assert len({event["id"] for event in feed.seen}) == len(feed.seen) == 4


def cursor(value) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": value}).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "after",
    [
        "",
        "not-a-cursor",
        "!!",
        "%00",
        cursor(-1),
        cursor("1"),
        cursor(1.5),
        cursor(None),
        cursor(True),
        cursor(2**63),
        base64.urlsafe_b64encode(b'{"before": 1}').decode().rstrip("="),
        base64.urlsafe_b64encode(b"[1]").decode().rstrip("="),
    ],
)
def test_a_bad_after_cursor_is_400(api, after):
    some_events(api, 2)

    response = api.get(f"/events?after={after}")

    assert response.status_code == 400, response.content
    assert "error" in response.json()


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "x", "1.0", ""])
def test_a_bad_limit_is_400(api, limit):
    response = api.get(f"/events?limit={limit}")

    assert response.status_code == 400, response.content


def test_a_cursor_whose_events_were_pruned_is_410_and_without_after_the_feed_starts_at_the_oldest_kept(
    api, feed, now
):
    some_events(api, 3)  # 4 events at T0
    old_cursor = feed.page(limit=1)["next"]  # after the first event
    feed.new()
    last_old = feed.cursor
    now.advance(8 * 24 * 3600)
    apple_id = feed.seen[0]["item_id"]
    assert api.patch(f"/items/{apple_id}/qty", {"delta": 1}).status_code == 200
    kept = feed.new()

    assert events.events_prune(older_than_days=7) == 4

    expired_ = api.get(f"/events?after={old_cursor}")
    assert expired_.status_code == 410, expired_.content
    assert expired_.json()["error"] == "cursor expired"
    oldest = api.get("/events")
    assert oldest.status_code == 200
    assert oldest.json()["events"] == kept
    # A cursor at the end of what was pruned still reads on, and the consumer's own too.
    assert api.get(f"/events?after={last_old}").json()["events"] == kept
    assert feed.new() == []


def test_without_after_the_feed_is_never_410_even_when_everything_was_pruned(api, now):
    some_events(api, 2)
    now.advance(8 * 24 * 3600)
    assert events.events_prune(older_than_days=7) == 3

    response = api.get("/events")

    assert response.status_code == 200
    assert response.json()["events"] == []
    assert api.get(f"/events?after={response.json()['next']}").status_code == 200


def test_pruning_keeps_events_younger_than_the_retention(api, now):
    some_events(api, 3)
    now.advance(7 * 24 * 3600 - 1)

    assert events.events_prune(older_than_days=7) == 0
    assert len(api.get("/events").json()["events"]) == 4


def test_a_read_token_may_read_the_feed(api, client, read_token):
    some_events(api, 2)

    response = Api(client, read_token).get("/events")

    assert response.status_code == 200
    assert len(response.json()["events"]) == 3


# Replay -------------------------------------------------------------------------------------------


def replay(found: list[dict]) -> dict[str, dict]:
    """The state the feed describes, built over an empty one."""
    state: dict[str, dict] = {}
    for event in found:
        data = event["data"]
        if event["type"] in ("item.created", "item.updated"):
            state[event["item_id"]] = dict(data)
        elif event["type"] == "item.deleted":
            del state[event["item_id"]]
        elif event["type"] == "item.qty_changed":
            item = state[event["item_id"]]
            item.update(qty=data["qty"], reserved=data["reserved"], available=data["available"])
            assert item["available"] == item["qty"] - item["reserved"]
    return state


def test_replaying_the_feed_over_an_empty_state_gives_every_item_as_get_items_shows_it(api, feed, now):
    names = [f"item-{n:02}" for n in range(12)]
    made = [create(api, name, n, n % 4 or None) for n, name in enumerate(names)]
    ids = [item["id"] for item in made]
    assert api.patch(f"/items/{ids[0]}", {"name": "renamed", "low_stock_threshold": 9}).status_code == 200
    assert api.delete(f"/items/{ids[1]}").status_code == 204
    for n, item_id in enumerate(ids[2:], start=2):
        assert api.patch(f"/items/{item_id}/qty", {"delta": n % 3}).status_code == 200
    changes = [{"id": item_id, "delta": 1} for item_id in ids[2:8]]
    assert api.post("/adjustments", {"changes": changes}).status_code == 200
    hold_ids = []
    for item_id in ids[3:9]:
        response = api.post("/holds", {"lines": [{"id": item_id, "qty": 2}], "ttl_seconds": 60})
        assert response.status_code == 201, response.content
        hold_ids.append(response.json()["id"])
    assert api.post(f"/holds/{hold_ids[0]}/commit").status_code == 200
    assert api.post(f"/holds/{hold_ids[1]}/release").status_code == 200
    assert api.post(f"/holds/{hold_ids[2]}/extend", {"ttl_seconds": 600}).status_code == 200
    now.advance(60)
    assert api.patch(f"/items/{ids[6]}/qty", {"delta": 1}).status_code == 200  # collects an expiry
    assert holds.holds_expire_due() >= 1  # the rest
    assert api.delete(f"/items/{ids[7]}").status_code == 204
    assert api.patch(f"/items/{ids[4]}", {"low_stock_threshold": None}).status_code == 200

    found = feed.new(limit=7)

    assert replay(found) == api.all_items()
    assert len({event["id"] for event in found}) == len(found)
    assert [event["type"] for event in found].count("hold.expired") == 3


def test_the_feed_shows_an_event_exactly_as_a_webhook_body_carries_it(api, monkeypatch):
    # A time with microseconds but no whole milliseconds: written once, never parsed and
    # written again, so the feed and a webhook's body agree to the character.
    moment = datetime.datetime(2030, 1, 1, 0, 0, 0, 123, tzinfo=datetime.UTC)
    monkeypatch.setattr(clock, "now", lambda: moment)
    api.create("pear", 1)

    shown = api.get("/events").json()["events"][0]

    assert shown == events.event_body(Event.objects.get())


def test_a_nested_transition_rolled_back_leaves_no_event_or_movement_of_its_own(api, feed):
    """What a nested transition added to the tail goes with its savepoint; the outer one's
    rows are written, once."""
    item = api.post("/items", {"name": "tail", "qty": 5}).json()
    feed.new()
    movements_before = Movement.objects.count()

    def movement(actor: str) -> dict:
        return items.movement(item["id"], Movement.ADJUST, 0, 5, actor=actor, request_id=actor)

    with events.transition(actor="outer", request_id="outer"):
        events.emit("item.updated", item_id=item["id"], data={"from": "outer"})
        events.record(movement("outer"))
        with pytest.raises(RuntimeError), events.transition():
            events.emit("item.updated", item_id=item["id"], data={"from": "inner"})
            events.record(movement("inner"))
            raise RuntimeError("the inner transition fails")

    assert [event["data"] for event in feed.new()] == [{"from": "outer"}]
    assert Movement.objects.count() == movements_before + 1
    assert Movement.objects.order_by("-id").first().actor == "outer"
