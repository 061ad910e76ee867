"""Idempotency-Key: the first request with a key runs, a repeat gets its answer back and changes nothing."""

import datetime
import json
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from inventory import tokens
from inventory.models import IdempotencyKey, Item, Movement
from tests.conftest import Api

pytestmark = pytest.mark.django_db

KEY_REUSED = {
    "error": "this Idempotency-Key was used for a different request",
    "field": "Idempotency-Key",
}
BAD_KEY = {"error": "Idempotency-Key must be 1 to 255 visible ASCII characters", "field": "Idempotency-Key"}


def state() -> tuple[list, list]:
    """Items and movements as stored."""
    items = list(
        Item.objects.order_by("id").values_list("id", "name", "qty", "reserved", "low_stock_threshold")
    )
    movements = list(Movement.objects.order_by("id").values_list())
    return items, movements


def keys() -> list[tuple]:
    return list(IdempotencyKey.objects.order_by("id").values_list("token__name", "key", "status"))


@pytest.fixture
def apple(api) -> dict:
    return api.create("apple", 5)


def fill(template, **values):
    """A request template with {placeholders} filled in, in the path and in the body's strings."""
    text = json.dumps(template)
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return json.loads(text)


# Every write that takes a key, on the item "apple" (qty 5): (method, path, body, status).
WRITES = {
    "create": ("POST", "/items", {"name": "pear", "qty": 2}, 201),
    "rename": ("PATCH", "/items/{id}", {"name": "pear"}, 200),
    "threshold": ("PATCH", "/items/{id}", {"low_stock_threshold": 3}, 200),
    "adjust": (
        "PATCH",
        "/items/{id}/qty",
        {"delta": 2, "expected_qty": 5, "reason": "restock", "reference": "PO-1"},
        200,
    ),
    "batch": (
        "POST",
        "/adjustments",
        {"changes": [{"id": "{id}", "delta": -2}], "reason": "sale", "reference": "order 9"},
        200,
    ),
}
# Every operation the contract lets take a key (POST /webhooks is not served yet).
KEYED_OPERATIONS = {
    ("post", "/items"),
    ("patch", "/items/{item_id}"),
    ("patch", "/items/{item_id}/qty"),
    ("post", "/adjustments"),
    ("post", "/holds"),
    ("post", "/holds/{hold_id}/commit"),
    ("post", "/holds/{hold_id}/release"),
    ("post", "/holds/{hold_id}/extend"),
    ("post", "/webhooks"),
}


def write(name: str, item: dict) -> list:
    return fill(WRITES[name], id=item["id"])


@pytest.mark.parametrize("name", WRITES)
def test_a_repeat_with_the_same_key_is_replayed_and_changes_nothing(api, apple, name):
    method, path, body, status = write(name, apple)
    before = state()

    first = api.request(method, path, body, Idempotency_Key="k-1")

    assert first.status_code == status, first.content
    assert "Idempotent-Replayed" not in first
    after = state()
    assert after != before
    # The answer is the effect: every item in it is the item as now stored.
    answered = first.json().get("items", [first.json()])
    assert answered == [api.get(f"/items/{item['id']}").json() for item in answered]

    repeat = api.request(method, path, body, Idempotency_Key="k-1")

    assert repeat.status_code == status
    assert repeat.content == first.content
    assert repeat["Content-Type"] == first["Content-Type"] == "application/json"
    assert repeat["Idempotent-Replayed"] == "true"
    assert state() == after
    if status == 201:
        assert repeat["Location"] == first["Location"] == f"/items/{first.json()['id']}"


def reordered(value):
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(value)}
    if isinstance(value, list):
        return [reordered(element) for element in value]
    return value


@pytest.mark.parametrize("name", WRITES)
def test_the_same_body_spaced_and_ordered_differently_is_the_same_request(api, apple, name):
    method, path, body, status = write(name, apple)
    first = api.request(method, path, body, Idempotency_Key="k-1")
    assert first.status_code == status
    after = state()
    respaced = json.dumps(reordered(body), indent=4, separators=(" ,  ", " :\t"))
    assert respaced != json.dumps(body)

    repeat = api.request(method, path, raw=respaced, Idempotency_Key="k-1")

    assert (repeat.status_code, repeat.content) == (first.status_code, first.content)
    assert repeat["Idempotent-Replayed"] == "true"
    assert state() == after


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/items/{apple}/qty", {"delta": 3}),
        ("PATCH", "/items/{apple}/qty", {"delta": 2, "reason": "restock"}),
        ("PATCH", "/items/{apple}/qty", {"delta": 2, "reference": "PO-1"}),
        ("PATCH", "/items/{apple}/qty", {"delta": 2, "expected_qty": 5}),
        ("PATCH", "/items/{pear}/qty", {"delta": 2}),
        ("PATCH", "/items/{apple}", {"name": "plum"}),
        ("PATCH", "/items/{apple}", {"low_stock_threshold": 2}),
        ("POST", "/items", {"name": "plum", "qty": 2}),
        ("POST", "/adjustments", {"changes": [{"id": "{apple}", "delta": 2}]}),
    ],
    ids=[
        "other-delta",
        "added-reason",
        "added-reference",
        "added-expected-qty",
        "other-item",
        "rename",
        "threshold",
        "create",
        "batch",
    ],
)
def test_the_same_key_with_a_different_request_is_refused(api, apple, method, path, body):
    pear = api.create("pear", 5)
    first = api.patch(f"/items/{apple['id']}/qty", {"delta": 2}, Idempotency_Key="k-1")
    assert first.status_code == 200
    before, stored = state(), keys()

    response = api.request(
        method, *fill([path, body], apple=apple["id"], pear=pear["id"]), Idempotency_Key="k-1"
    )

    assert response.status_code == 422
    assert response.json() == KEY_REUSED
    assert (state(), keys()) == (before, stored)
    # The key still answers the request it was first used for.
    again = api.patch(f"/items/{apple['id']}/qty", {"delta": 2}, Idempotency_Key="k-1")
    assert (again.content, again["Idempotent-Replayed"]) == (first.content, "true")


# A refused first request, then a change after which it would succeed: the repeat still gets
# the refusal. Items: "lo" and "hi" (lo's id sorts first), both with qty 5.
REFUSALS = {
    "below-zero": (
        ("PATCH", "/items/{lo}/qty", {"delta": -6}),
        ("PATCH", "/items/{lo}/qty", {"delta": 1}),
        400,
    ),
    "stale": (
        ("PATCH", "/items/{lo}/qty", {"delta": 1, "expected_qty": 7}),
        ("PATCH", "/items/{lo}/qty", {"delta": 2}),
        409,
    ),
    "taken-name": (("PATCH", "/items/{lo}", {"name": "hi"}), ("PATCH", "/items/{hi}", {"name": "plum"}), 400),
    "duplicate-create": (("POST", "/items", {"name": "hi", "qty": 1}), ("DELETE", "/items/{hi}", None), 400),
    # The change of lo applies inside the batch before hi's is refused; the key's answer is
    # stored in the same transaction, which must still roll lo back.
    "batch-below-zero": (
        ("POST", "/adjustments", {"changes": [{"id": "{lo}", "delta": 1}, {"id": "{hi}", "delta": -6}]}),
        ("PATCH", "/items/{hi}/qty", {"delta": 1}),
        400,
    ),
    "batch-stale": (
        (
            "POST",
            "/adjustments",
            {"changes": [{"id": "{lo}", "delta": 1}, {"id": "{hi}", "expected_qty": 6, "delta": 1}]},
        ),
        ("PATCH", "/items/{hi}/qty", {"delta": 1}),
        409,
    ),
}


@pytest.mark.parametrize("name", REFUSALS)
def test_a_refusal_is_replayed_even_when_the_request_would_now_succeed(api, name):
    first_request, change, status = REFUSALS[name]
    lo, hi = sorted(api.create(label, 5)["id"] for label in ["one", "two"])
    api.patch(f"/items/{hi}", {"name": "hi"})  # a name the templates can refer to
    ids = {"lo": lo, "hi": hi}
    method, path, body = fill(first_request, **ids)
    before = state()

    first = api.request(method, path, body, Idempotency_Key="k-1")

    assert first.status_code == status, first.content
    assert "Idempotent-Replayed" not in first
    assert state() == before
    assert api.request(*fill(change, **ids)).status_code in (200, 204)
    changed = state()

    repeat = api.request(method, path, body, Idempotency_Key="k-1")

    assert (repeat.status_code, repeat.content) == (status, first.content)
    assert repeat["Idempotent-Replayed"] == "true"
    assert state() == changed
    # Without the key, the same request now succeeds: the replay was not a fresh refusal.
    assert api.request(method, path, body).status_code in (200, 201)


def test_a_not_found_is_replayed_after_the_item_appears(api):
    item_id = uuid.uuid4()
    first = api.patch(f"/items/{item_id}/qty", {"delta": 1}, Idempotency_Key="k-1")
    assert (first.status_code, first.json()) == (404, {"error": "not_found"})
    Item.objects.create(id=item_id, name="apple", qty=5)  # the ORM: the API cannot choose an id
    before = state()

    repeat = api.patch(f"/items/{item_id}/qty", {"delta": 1}, Idempotency_Key="k-1")

    assert (repeat.status_code, repeat.content) == (404, first.content)
    assert repeat["Idempotent-Replayed"] == "true"
    assert state() == before


def test_keys_belong_to_the_token_that_used_them(api, client, apple):
    other = Api(client, tokens.token_create(name="other writer", scope="write"))
    path, body = f"/items/{apple['id']}/qty", {"delta": 1}

    mine = api.patch(path, body, Idempotency_Key="k-1")
    theirs = other.patch(path, body, Idempotency_Key="k-1")

    assert (mine.json()["qty"], theirs.json()["qty"]) == (6, 7)
    assert "Idempotent-Replayed" not in theirs
    assert [m.delta for m in Movement.objects.filter(kind=Movement.ADJUST)] == [1, 1]
    # Each token's key replays its own answer.
    assert other.patch(path, body, Idempotency_Key="k-1").json()["qty"] == 7
    assert api.patch(path, body, Idempotency_Key="k-1").json()["qty"] == 6
    assert Item.objects.get(pk=apple["id"]).qty == 7


@pytest.mark.parametrize(
    "key",
    [
        "",
        "k" * 256,
        "two words",
        " leading",
        "caf\u00e9",
        "\u043a\u043b\u044e\u0447",
        "tab\there",
        "nl\n",
        "del\x7f",
    ],
    ids=["empty", "256-chars", "space", "leading-space", "latin-1", "cyrillic", "tab", "newline", "del"],
)
@pytest.mark.parametrize("name", WRITES)
def test_an_invalid_key_is_refused_and_changes_nothing(api, apple, name, key):
    method, path, body, _ = write(name, apple)
    before = state()

    response = api.request(method, path, body, Idempotency_Key=key)

    assert response.status_code == 400
    assert response.json() == BAD_KEY
    assert (state(), keys()) == (before, [])


@pytest.mark.parametrize(
    "key",
    ["k", "".join(chr(0x21 + i % 94) for i in range(255))],  # every visible ASCII character
    ids=["one-char", "255-chars"],
)
def test_a_key_of_1_to_255_visible_ascii_characters_is_accepted(api, apple, key):
    path = f"/items/{apple['id']}/qty"

    first = api.patch(path, {"delta": 1}, Idempotency_Key=key)
    repeat = api.patch(path, {"delta": 1}, Idempotency_Key=key)

    assert first.json()["qty"] == repeat.json()["qty"] == 6
    assert repeat["Idempotent-Replayed"] == "true"
    assert keys() == [("test writer", key, 200)]


def test_without_a_key_every_repeat_is_applied(api, apple):
    path = f"/items/{apple['id']}/qty"

    responses = [api.patch(path, {"delta": 1}) for _ in range(2)]

    assert [r.json()["qty"] for r in responses] == [6, 7]
    assert not any("Idempotent-Replayed" in r for r in responses)
    assert keys() == []


def test_delete_ignores_the_key(api, apple):
    responses = [api.delete(f"/items/{apple['id']}", Idempotency_Key="k-1") for _ in range(2)]

    assert [r.status_code for r in responses] == [204, 204]
    assert not any("Idempotent-Replayed" in r for r in responses)
    assert keys() == []
    assert [m.kind for m in Movement.objects.order_by("id")] == ["create", "delete"]


def age_keys(hours: float, *names: str) -> None:
    IdempotencyKey.objects.filter(key__in=names).update(
        created_at=timezone.now() - datetime.timedelta(hours=hours)
    )


def test_prune_forgets_keys_older_than_24_hours_and_keeps_younger_ones(api, apple):
    path = f"/items/{apple['id']}/qty"
    for key in ["old", "young"]:
        api.patch(path, {"delta": 1}, Idempotency_Key=key)
    age_keys(25, "old")
    age_keys(23, "young")

    call_command("prune_idempotency_keys")

    assert [key for _, key, _ in keys()] == ["young"]
    # A pruned key runs its request again; a kept one is still replayed.
    again = api.patch(path, {"delta": 1}, Idempotency_Key="old")
    assert (again.json()["qty"], "Idempotent-Replayed" in again) == (8, False)
    kept = api.patch(path, {"delta": 1}, Idempotency_Key="young")
    assert (kept.json()["qty"], kept["Idempotent-Replayed"]) == (7, "true")
    assert Item.objects.get(pk=apple["id"]).qty == 8


def test_prune_refuses_to_keep_keys_for_less_than_24_hours(api, apple):
    api.patch(f"/items/{apple['id']}/qty", {"delta": 1}, Idempotency_Key="k-1")
    age_keys(2, "k-1")

    with pytest.raises(CommandError, match="24 hours"):
        call_command("prune_idempotency_keys", "--hours", "1")

    assert [key for _, key, _ in keys()] == ["k-1"]


def test_the_openapi_document_declares_409_and_422_wherever_a_key_is_taken(api):
    document = api.get("/openapi.json").json()
    taking_a_key = {
        (method, path): operation["responses"]
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))
    }
    assert taking_a_key.keys() == KEYED_OPERATIONS
    for responses in taking_a_key.values():
        assert {"409", "422"} <= responses.keys()
