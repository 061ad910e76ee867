"""The ledger: every change of qty writes one movement, and qty == the sum of an item's deltas."""

import base64
import datetime
import json
import random
import re
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import F

from inventory.invariants import QTY_MAX
from inventory.models import Item, Movement
from tests.conftest import WRITER

pytestmark = pytest.mark.django_db

# RFC 3339's date-time: a "T", and an offset or "Z" (which Python's isoformat alone may omit).
RFC_3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
FIELDS = {"kind", "delta", "qty_after", "reason", "reference", "hold_id", "actor", "request_id", "at"}


def state() -> tuple[list, list]:
    """Items and movements as stored, to show that a refused write changed neither."""
    items = list(
        Item.objects.order_by("id").values_list("id", "name", "qty", "reserved", "low_stock_threshold")
    )
    movements = list(Movement.objects.order_by("id").values_list())
    return items, movements


def movements(api, item_id: str) -> list[dict]:
    response = api.get(f"/items/{item_id}/movements?limit=1000")
    assert response.status_code == 200, response.content
    assert response.json()["next"] is None
    return response.json()["movements"]


def brief(moves: list[dict]) -> list[tuple]:
    """Each movement but its request id and time; hold_id and actor are checked on every one:
    none of these changes comes from a hold, and each is made by the `api` fixture's token."""
    assert [(m["hold_id"], m["actor"]) for m in moves] == [(None, WRITER)] * len(moves)
    return [(m["kind"], m["delta"], m["qty_after"], m["reason"], m["reference"]) for m in moves]


def test_create_writes_a_create_movement(api):
    response = api.post("/items", {"name": "apple", "qty": 5})
    item = response.json()

    [move] = movements(api, item["id"])

    assert set(move) == FIELDS
    assert brief([move]) == [("create", 5, 5, None, None)]
    assert (move["hold_id"], move["actor"]) == (None, WRITER)
    assert move["request_id"] == response["X-Request-ID"]
    assert RFC_3339.fullmatch(move["at"]), move["at"]
    at = datetime.datetime.fromisoformat(move["at"])
    assert abs(datetime.datetime.now(datetime.UTC) - at) < datetime.timedelta(minutes=1)


def test_each_applied_delta_writes_an_adjust_movement_with_its_reason_and_reference(api):
    item = api.create("apple", 5)
    reference = "https://shop.example/orders/" + "7" * 172  # 200 characters

    api.patch(f"/items/{item['id']}/qty", {"delta": -2, "reason": "sold", "reference": "order 1"})
    api.patch(f"/items/{item['id']}/qty", {"delta": 10})
    api.patch(f"/items/{item['id']}/qty", {"delta": -1, "reference": reference})
    response = api.patch(
        f"/items/{item['id']}/qty", {"delta": 1, "reason": "", "reference": ""}, X_Request_ID="req-42"
    )

    moves = movements(api, item["id"])
    assert brief(moves) == [
        ("create", 5, 5, None, None),
        ("adjust", -2, 3, "sold", "order 1"),
        ("adjust", 10, 13, None, None),
        ("adjust", -1, 12, None, reference),
        ("adjust", 1, 13, "", ""),  # an empty reason or reference is kept apart from none
    ]
    assert moves[-1]["request_id"] == response["X-Request-ID"] == "req-42"


def test_delta_zero_writes_a_movement_of_zero(api):
    # The code records the request even though qty stays put; the ledger still adds up.
    item = api.create("apple", 5)

    response = api.patch(f"/items/{item['id']}/qty", {"delta": 0, "reason": "count"})

    assert response.json()["qty"] == 5
    assert brief(movements(api, item["id"]))[-1] == ("adjust", 0, 5, "count", None)


def test_delete_writes_a_delete_movement_that_empties_the_item(api):
    item = api.create("apple", 7)

    assert api.delete(f"/items/{item['id']}").status_code == 204
    assert api.delete(f"/items/{item['id']}").status_code == 204  # nothing left to record

    assert brief(movements(api, item["id"])) == [("create", 7, 7, None, None), ("delete", -7, 0, None, None)]


@pytest.mark.parametrize(
    ("start", "path", "body", "status"),
    [
        (2, "/qty", {"delta": -3}, 400),
        (QTY_MAX, "/qty", {"delta": 1}, 400),
        (2, "/qty", {"delta": 1, "expected_qty": 3}, 409),
        (2, "/qty", {"delta": 1, "reason": "x" * 501}, 400),
        (2, "/qty", {"delta": 1, "reference": "x" * 201}, 400),
        (2, "/qty", {"delta": 1, "reference": "a\x00b"}, 400),
        (2, "/qty", {"delta": 1, "reference": "bell\x07"}, 400),
        (2, "/qty", {"delta": 1, "reference": "line\nbreak"}, 400),
        (2, "/qty", {"delta": 1, "reference": "a\x85b"}, 400),
        (2, "/qty", {"delta": 1, "reference": "a\ud800b"}, 400),
        (2, "/qty", {"delta": 1, "reference": 5}, 400),
        (2, "/qty", {"delta": 1, "reference": True}, 400),
        (2, "/qty", {"delta": 1, "reference": ["order 1"]}, 400),
        (2, "", {"name": "pear"}, 200),  # a rename changes no qty
        (2, "", {"low_stock_threshold": 3}, 200),  # nor does a threshold
    ],
    ids=[
        "below-zero",
        "above-max",
        "stale-expected-qty",
        "reason-too-long",
        "reference-201-chars",
        "reference-nul",
        "reference-bell",
        "reference-newline",
        "reference-next-line",
        "reference-lone-surrogate",
        "reference-number",
        "reference-true",
        "reference-list",
        "rename",
        "threshold",
    ],
)
def test_a_refused_delta_or_an_update_writes_no_movement(api, start, path, body, status):
    item = api.create("apple", start)
    items, moves = state()

    response = api.patch(f"/items/{item['id']}{path}", body)

    assert response.status_code == status
    if status == 200:
        updated = {"name": "apple", "low_stock_threshold": None, **body}
        row = (uuid.UUID(item["id"]), updated["name"], start, 0, updated["low_stock_threshold"])
        assert state() == ([row], moves)
    else:
        assert state() == (items, moves)
        text_fields = [field for field in ("reason", "reference") if field in body]
        if text_fields:
            assert (response.status_code, response.json()["field"]) == (400, text_fields[0])


def test_movements_are_listed_oldest_first_and_only_the_items_own(api):
    apple, pear = api.create("apple", 1), api.create("pear", 100)
    for delta in [1, 2, 3]:
        api.patch(f"/items/{apple['id']}/qty", {"delta": delta})
        api.patch(f"/items/{pear['id']}/qty", {"delta": -delta})

    assert [m["qty_after"] for m in movements(api, apple["id"])] == [1, 2, 4, 7]
    assert [m["qty_after"] for m in movements(api, pear["id"])] == [100, 99, 97, 94]


@pytest.mark.parametrize(("limit", "pages"), [(1, 8), (3, 3), (4, 2), (8, 1), (9, 1)])
def test_paging_movements_gives_the_whole_list_once(api, limit, pages):
    item = api.create("apple", 0)
    for delta in range(1, 8):
        api.patch(f"/items/{item['id']}/qty", {"delta": delta})
    whole = movements(api, item["id"])
    assert len(whole) == 8

    seen, cursor, count = [], None, 0
    while True:
        query = f"limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        page = api.get(f"/items/{item['id']}/movements?{query}").json()
        seen += page["movements"]
        count += 1
        cursor = page["next"]
        if cursor is None:
            break

    assert seen == whole
    assert count == pages  # no empty trailing page


def test_movements_are_kept_after_the_item_is_deleted(api):
    item = api.create("apple", 3)
    api.patch(f"/items/{item['id']}/qty", {"delta": 2})
    api.delete(f"/items/{item['id']}")

    assert api.get(f"/items/{item['id']}").status_code == 404
    assert brief(movements(api, item["id"])) == [
        ("create", 3, 3, None, None),
        ("adjust", 2, 5, None, None),
        ("delete", -5, 0, None, None),
    ]


def test_movements_of_an_item_that_never_existed_are_not_found(api):
    api.create("apple", 3)
    response = api.get(f"/items/{uuid.uuid4()}/movements")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found"}


def cursor_of(after) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).rstrip(b"=").decode()


FORGED_CURSOR = "cursor is not one this service issued"


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("limit=0", "limit: Input should be greater than or equal to 1"),
        ("limit=1001", "limit: Input should be less than or equal to 1000"),
        ("limit=ten", None),
        ("cursor=", None),
        ("cursor=not!base64", None),  # outside the cursor's alphabet
        ("cursor=abc", FORGED_CURSOR),  # base64 of bytes that are not JSON
        (f"cursor={cursor_of(-1)}", FORGED_CURSOR),
        (f"cursor={cursor_of(True)}", FORGED_CURSOR),
        (f"cursor={cursor_of(1.5)}", FORGED_CURSOR),
        (f"cursor={cursor_of(QTY_MAX + 1)}", FORGED_CURSOR),
        (f"cursor={cursor_of('apple')}", FORGED_CURSOR),  # what GET /items issues
    ],
)
def test_bad_limit_or_cursor_is_refused(api, query, error):
    item = api.create("apple", 3)

    response = api.get(f"/items/{item['id']}/movements?{query}")

    assert response.status_code == 400
    body = response.json()
    assert body["field"] == query.partition("=")[0]
    if error is not None:
        assert body["error"] == error


def test_a_name_cursor_from_the_item_list_is_refused(api):
    for name in ["apple", "pear"]:
        item = api.create(name, 1)
    name_cursor = api.get("/items?limit=1").json()["next"]
    assert name_cursor is not None

    response = api.get(f"/items/{item['id']}/movements?cursor={name_cursor}")

    assert response.status_code == 400
    assert response.json() == {"error": FORGED_CURSOR, "field": "cursor"}


def test_the_ledger_adds_up_after_a_random_run_of_operations(api):
    rng = random.Random(20240611)  # seeded: a failure is reproducible
    ids: list[str] = []
    for step in range(150):
        live = list(api.all_items())
        operation = rng.choice(["create"] * 2 + ["adjust"] * 3 + ["batch"] * 2 + ["rename", "delete"])
        if operation == "create" or not live:
            response = api.post("/items", {"name": f"item {rng.randrange(20)}", "qty": rng.randrange(10)})
            if response.status_code == 201:
                ids.append(response.json()["id"])
        elif operation == "adjust":
            body = {"delta": rng.randint(-8, 8)}
            if rng.random() < 0.3:
                body["expected_qty"] = rng.randrange(10)
            api.patch(f"/items/{rng.choice(live)}/qty", body)
        elif operation == "batch":
            chosen = rng.sample(live, k=min(len(live), rng.randint(1, 3)))
            if rng.random() < 0.2:
                chosen.append(rng.choice(ids))  # may be deleted or repeated: the batch is refused
            changes = [{"id": item_id, "delta": rng.randint(-5, 5)} for item_id in chosen]
            api.post("/adjustments", {"changes": changes, "reason": f"step {step}"})
        elif operation == "rename":
            api.patch(f"/items/{rng.choice(live)}", {"name": f"item {rng.randrange(20)}"})
        else:
            api.delete(f"/items/{rng.choice(live)}")

    live = api.all_items()
    assert live, "the run should leave some items"
    for item_id in ids:
        moves = movements(api, item_id)
        qty = live[item_id]["qty"] if item_id in live else 0
        assert sum(m["delta"] for m in moves) == qty
        assert moves[-1]["qty_after"] == qty
        assert moves[0]["kind"] == "create"
        assert (moves[-1]["kind"] == "delete") == (item_id not in live)
    call_command("verify")


def drop_a_movement(item: Item) -> None:
    Movement.objects.filter(item_id=item.id, kind=Movement.ADJUST).delete()


def change_qty_behind_the_ledger(item: Item) -> None:
    Item.objects.filter(pk=item.id).update(qty=F("qty") + 1)


def change_the_last_qty_after(item: Item) -> None:
    # The deltas still add up, but the last movement no longer says what qty it left.
    last = Movement.objects.filter(item_id=item.id).order_by("-id")[:1].get()
    Movement.objects.filter(pk=last.pk).update(qty_after=F("qty_after") + 1)


@pytest.mark.parametrize(
    "corrupt", [drop_a_movement, change_qty_behind_the_ledger, change_the_last_qty_after]
)
def test_verify_names_an_item_whose_ledger_does_not_add_up(api, capsys, corrupt):
    healthy = api.create("apple", 5)
    broken = api.create("pear", 5)
    for item_id in [healthy["id"], broken["id"]]:
        api.patch(f"/items/{item_id}/qty", {"delta": 3})
    call_command("verify")

    corrupt(Item.objects.get(pk=broken["id"]))

    with pytest.raises(CommandError):
        call_command("verify")
    err = capsys.readouterr().err
    assert broken["id"] in err
    assert healthy["id"] not in err
