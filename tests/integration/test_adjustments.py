"""POST /adjustments (all changes or none) and compare-and-set with expected_qty."""

import uuid
from collections import Counter

import pytest

from inventory import items
from inventory.invariants import QTY_MAX
from inventory.models import Item, Movement
from tests.conftest import WRITER, Api, expected_item

pytestmark = pytest.mark.django_db

BELOW_ZERO = "qty cannot go below 0"
STALE = "qty is not expected_qty"
# Ids that sort before and after every random one: a missing item met first or last.
FIRST_ID, LAST_ID = "00000000-0000-4000-8000-000000000000", "ffffffff-ffff-4fff-bfff-ffffffffffff"


def state() -> tuple[list, list]:
    """Items and movements as stored, to show that a refused batch changed neither."""
    items = list(
        Item.objects.order_by("id").values_list("id", "name", "qty", "reserved", "low_stock_threshold")
    )
    movements = list(Movement.objects.order_by("id").values_list())
    return items, movements


def adjust_movements(item_id) -> list[tuple]:
    rows = Movement.objects.filter(item_id=item_id, kind=Movement.ADJUST).order_by("id")
    fields = ("delta", "qty_after", "reason", "reference", "hold_id", "actor", "request_id")
    return list(rows.values_list(*fields))


def test_a_batch_applies_every_change_and_answers_in_the_request_order(api):
    a, b, c = api.create("a", 5), api.create("b", 0), api.create("c", 10)
    changes = [
        {"id": c["id"], "delta": -3},
        {"id": a["id"], "delta": 2},
        {"id": b["id"], "delta": 7, "expected_qty": 0},
    ]

    response = api.post("/adjustments", {"changes": changes, "reason": "recount"})

    assert response.status_code == 200
    after = [expected_item(c, qty=7), expected_item(a, qty=7), expected_item(b, qty=7)]
    assert response.json() == {"items": after}
    assert api.all_items() == {item["id"]: item for item in after}
    request_id = response["X-Request-ID"]
    for change in changes:
        assert adjust_movements(change["id"]) == [
            (change["delta"], 7, "recount", None, None, WRITER, request_id)
        ]


def test_a_batch_without_a_reason_or_reference_writes_movements_with_both_null(api):
    a = api.create("a", 5)
    assert api.post("/adjustments", {"changes": [{"id": a["id"], "delta": 1}]}).status_code == 200
    assert [(reason, reference) for _, _, reason, reference, *_ in adjust_movements(a["id"])] == [
        (None, None)
    ]


def test_a_reason_of_500_characters_is_kept(api):
    a = api.create("a", 5)
    reason = "r" * 500
    response = api.post("/adjustments", {"changes": [{"id": a["id"], "delta": 1}], "reason": reason})
    assert response.status_code == 200
    assert [reason for _, _, reason, *_ in adjust_movements(a["id"])] == [reason]


def test_a_reference_of_200_characters_is_kept_on_every_movement_of_the_batch(api):
    a, b = api.create("a", 5), api.create("b", 5)
    reference = "PO-" + "9" * 197
    changes = [{"id": a["id"], "delta": 1}, {"id": b["id"], "delta": -1}]

    response = api.post("/adjustments", {"changes": changes, "reference": reference})

    assert response.status_code == 200
    request_id = response["X-Request-ID"]
    assert adjust_movements(a["id"]) == [(1, 6, None, reference, None, WRITER, request_id)]
    assert adjust_movements(b["id"]) == [(-1, 4, None, reference, None, WRITER, request_id)]


# One change of a batch fails; the others are valid. (the failing change, status, error body)
FAILURES = {
    "below-zero": ({"delta": -6}, 400, {"error": BELOW_ZERO}),
    "above-max": ({"delta": QTY_MAX}, 400, {"error": f"qty cannot go above {QTY_MAX}"}),
    "stale": ({"delta": 1, "expected_qty": 4}, 409, {"error": STALE, "field": "expected_qty", "qty": 5}),
    "missing": ({"delta": 1}, 404, {"error": "not_found"}),
    # The failing item has 3 of its 5 held (HELD): 2 may go, not 3.
    "below-reserved": ({"delta": -3}, 400, {"error": "qty cannot go below reserved", "reserved": 3}),
}
HELD = 3


@pytest.mark.parametrize("position", ["first", "last"])
@pytest.mark.parametrize("failure", FAILURES)
def test_a_batch_with_one_failing_change_applies_none(api, failure, position):
    # Changes are applied in id order: the failing one met first, or after the others applied.
    ids = sorted(api.create(name, 5)["id"] for name in ["a", "b", "c"])
    change, status, error = FAILURES[failure]
    failing = ids[0] if position == "first" else ids[-1]
    if failure == "missing":
        failing = FIRST_ID if position == "first" else LAST_ID
    changes = [{"id": item_id, "delta": 1} for item_id in ids if item_id != failing]
    changes.insert(1, {"id": failing, **change})  # the request's order is not the id order
    if failure == "below-reserved":
        assert api.post("/holds", {"lines": [{"id": failing, "qty": HELD}]}).status_code == 201
    before = state()

    response = api.post("/adjustments", {"changes": changes, "reason": "batch"})

    assert response.status_code == status
    assert response.json() == {**error, "id": failing}
    assert state() == before


# Each batch has a valid change of "a" first, so a partly applied batch would show.
INVALID = {
    "repeated-id": ([{"id": "{a}", "delta": 1}], {}, "changes.1.id"),
    "repeated-id-upper-case": ([{"id": "{A}", "delta": 1}], {}, "changes.1.id"),
    "unknown-batch-field": ([], {"note": "x"}, "note"),
    "unknown-change-field": ([{"id": "{b}", "delta": 1, "qty": 3}], {}, "changes.1.qty"),
    "missing-delta": ([{"id": "{b}"}], {}, "changes.1.delta"),
    "missing-id": ([{"delta": 1}], {}, "changes.1.id"),
    "id-not-a-uuid": ([{"id": "apple", "delta": 1}], {}, "changes.1.id"),
    "id-a-number": ([{"id": 5, "delta": 1}], {}, "changes.1.id"),
    "delta-true": ([{"id": "{b}", "delta": True}], {}, "changes.1.delta"),
    "delta-float": ([{"id": "{b}", "delta": 5.0}], {}, "changes.1.delta"),
    "delta-string": ([{"id": "{b}", "delta": "5"}], {}, "changes.1.delta"),
    "delta-null": ([{"id": "{b}", "delta": None}], {}, "changes.1.delta"),
    "delta-2**63": ([{"id": "{b}", "delta": 2**63}], {}, "changes.1.delta"),
    "delta--2**63": ([{"id": "{b}", "delta": -(2**63)}], {}, "changes.1.delta"),
    "expected-qty-negative": ([{"id": "{b}", "delta": 1, "expected_qty": -1}], {}, "changes.1.expected_qty"),
    "expected-qty-true": ([{"id": "{b}", "delta": 1, "expected_qty": True}], {}, "changes.1.expected_qty"),
    "expected-qty-2**63": ([{"id": "{b}", "delta": 1, "expected_qty": 2**63}], {}, "changes.1.expected_qty"),
    "reason-501-chars": ([], {"reason": "r" * 501}, "reason"),
    "reason-nul": ([], {"reason": "a\x00b"}, "reason"),
    "reason-bell": ([], {"reason": "bell\x07"}, "reason"),
    "reason-number": ([], {"reason": 5}, "reason"),
    "reference-201-chars": ([], {"reference": "r" * 201}, "reference"),
    "reference-nul": ([], {"reference": "a\x00b"}, "reference"),
    "reference-bell": ([], {"reference": "bell\x07"}, "reference"),
    "reference-next-line": ([], {"reference": "a\x85b"}, "reference"),
    "reference-lone-surrogate": ([], {"reference": "a\ud800b"}, "reference"),
    "reference-number": ([], {"reference": 5}, "reference"),
    "reference-true": ([], {"reference": True}, "reference"),
    "reference-list": ([], {"reference": ["PO-1"]}, "reference"),
}


@pytest.mark.parametrize("case", INVALID)
def test_an_invalid_batch_is_refused_and_applies_nothing(api, case):
    more_changes, extra, field = INVALID[case]
    a, b = api.create("a", 5)["id"], api.create("b", 5)["id"]
    ids = {"{a}": a, "{A}": a.upper(), "{b}": b}
    changes = [{"id": a, "delta": 1}] + [
        {key: ids.get(value, value) if key == "id" else value for key, value in change.items()}
        for change in more_changes
    ]
    before = state()

    response = api.post("/adjustments", {"changes": changes, **extra})

    assert response.status_code == 400
    body = response.json()
    assert isinstance(body["error"], str)
    assert body["field"] == field
    assert state() == before


@pytest.mark.parametrize(
    "body",
    [{}, {"changes": []}, {"changes": {"id": LAST_ID, "delta": 1}}, {"changes": None}],
    ids=["no-changes-field", "zero-changes", "changes-an-object", "changes-null"],
)
def test_a_batch_without_a_list_of_changes_is_refused(api, body):
    api.create("a", 5)
    before = state()

    response = api.post("/adjustments", body)

    assert response.status_code == 400
    assert response.json()["field"] == "changes"
    assert state() == before


def test_a_batch_holds_at_most_1000_changes(api):
    ids = [str(items.item_create(name=f"item {i:04}", qty=1).id) for i in range(1001)]
    before = state()

    too_many = api.post("/adjustments", {"changes": [{"id": i, "delta": 1} for i in ids]})

    assert too_many.status_code == 400
    assert too_many.json() == {"error": "changes must hold 1 to 1000 changes", "field": "changes"}
    assert state() == before

    most = api.post("/adjustments", {"changes": [{"id": i, "delta": 1} for i in ids[:1000]]})

    assert most.status_code == 200
    assert [item["id"] for item in most.json()["items"]] == ids[:1000]
    assert Counter(Item.objects.values_list("qty", flat=True)) == {2: 1000, 1: 1}
    assert Movement.objects.filter(kind=Movement.ADJUST).count() == 1000


@pytest.mark.parametrize(
    ("start", "body", "status", "answer"),
    [
        (5, {"delta": 2, "expected_qty": 5}, 200, {"qty": 7}),
        (0, {"delta": 2, "expected_qty": 0}, 200, {"qty": 2}),  # 0 is a value, not "absent"
        (5, {"delta": 2, "expected_qty": 0}, 409, {"error": STALE, "field": "expected_qty", "qty": 5}),
        (5, {"delta": 2, "expected_qty": 4}, 409, {"error": STALE, "field": "expected_qty", "qty": 5}),
        (5, {"delta": 0, "expected_qty": 6}, 409, {"error": STALE, "field": "expected_qty", "qty": 5}),
        (5, {"delta": -6, "expected_qty": 5}, 400, {"error": BELOW_ZERO}),
        (5, {"delta": 2, "expected_qty": None}, 200, {"qty": 7}),  # null is "no condition"
    ],
)
def test_expected_qty_makes_a_delta_compare_and_set(api, start, body, status, answer):
    item = api.create("apple", start)
    before = state()

    response = api.patch(f"/items/{item['id']}/qty", body)

    assert response.status_code == status
    if status == 200:
        assert response.json() == expected_item(item, **answer)
        assert adjust_movements(item["id"])[0][:2] == (body["delta"], answer["qty"])
    else:
        assert response.json().items() >= answer.items()  # an error may carry more fields (the id)
        assert state() == before


def test_expected_qty_on_a_missing_item_is_not_found(api):
    response = api.patch(f"/items/{uuid.uuid4()}/qty", {"delta": 1, "expected_qty": 0})
    assert (response.status_code, response.json()) == (404, {"error": "not_found"})


def test_a_read_token_cannot_post_a_batch(api, client, read_token):
    a = api.create("a", 5)
    before = state()

    response = Api(client, read_token).post("/adjustments", {"changes": [{"id": a["id"], "delta": 1}]})

    assert response.status_code == 403
    assert "error" in response.json()
    assert state() == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"delta": 2**63}, "changes.1.delta"),
        ({"delta": 1, "expected_qty": -1}, "changes.1.expected_qty"),
        ({"delta": 1, "id": "{a}"}, "changes.1.id"),
    ],
    ids=["delta-out-of-range", "expected-qty-out-of-range", "repeated-id"],
)
def test_a_refused_change_is_named_by_its_position_and_its_id(api, change, field):
    a, b = api.create("a", 5)["id"], api.create("b", 5)["id"]
    second = {"id": b, **change}
    second["id"] = a if second["id"] == "{a}" else second["id"]
    before = state()

    response = api.post("/adjustments", {"changes": [{"id": a, "delta": 1}, second]})

    assert response.status_code == 400
    assert (response.json()["field"], response.json()["id"]) == (field, second["id"])
    assert state() == before


def test_a_stale_expected_qty_is_given_before_a_line_below_0_that_sorts_first(api):
    # The contract's order of refusals: 404, stale expected_qty, below 0, below reserved, above
    # the bound; the first kind wins whatever the lines' id order, then the first such line.
    first, second = sorted([api.create("p", 1), api.create("q", 1)], key=lambda item: item["id"])
    before = state()
    changes = [
        {"id": first["id"], "delta": -5},
        {"id": second["id"], "delta": 1, "expected_qty": 7},
    ]

    response = api.post("/adjustments", {"changes": changes})

    assert response.status_code == 409, response.json()
    assert response.json()["id"] == second["id"]
    assert response.json()["qty"] == 1
    missing = api.post("/adjustments", {"changes": [*changes, {"id": LAST_ID, "delta": 1}]})
    assert (missing.status_code, missing.json()) == (404, {"error": "not_found", "id": LAST_ID})
    assert state() == before
