"""Every endpoint through the Django test client, checking the state after each call."""

import uuid

import pytest
from django.db import OperationalError

from inventory import items
from inventory.invariants import QTY_MAX
from tests.conftest import expected_item


def test_create_returns_the_item_with_its_location(api):
    response = api.post("/items", {"name": "  apple  ", "qty": 5})

    assert response.status_code == 201
    item = response.json()
    assert item == expected_item(id=item["id"], name="apple", qty=5)
    assert response["Location"] == f"/items/{item['id']}"
    assert api.get(response["Location"]).json() == item


def test_create_accepts_the_qty_bounds(api):
    assert api.create("empty", 0)["qty"] == 0
    assert api.create("full", QTY_MAX)["qty"] == QTY_MAX


def test_create_stores_names_in_nfc(api):
    item = api.create("cafe\u0301")
    assert item["name"] == "caf\u00e9"
    assert api.get(f"/items/{item['id']}").json()["name"] == "caf\u00e9"


def test_get_unknown_item_is_not_found(api):
    response = api.get(f"/items/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found"}


def test_create_takes_an_optional_low_stock_threshold(api):
    response = api.post("/items", {"name": "apple", "qty": 5, "low_stock_threshold": 2})

    assert response.status_code == 201
    item = response.json()
    assert item == expected_item(id=item["id"], name="apple", qty=5, low_stock_threshold=2)
    assert api.all_items() == {item["id"]: item}


def test_rename_changes_only_the_name(api):
    item = api.post("/items", {"name": "apple", "qty": 3, "low_stock_threshold": 2}).json()

    response = api.patch(f"/items/{item['id']}", {"name": " pear "})

    assert response.status_code == 200
    after = expected_item(id=item["id"], name="pear", qty=3, low_stock_threshold=2)
    assert response.json() == after
    assert api.all_items() == {item["id"]: after}


@pytest.mark.parametrize("threshold", [0, 4, QTY_MAX, None])
def test_setting_the_low_stock_threshold_changes_only_the_threshold(api, threshold):
    item = api.post("/items", {"name": "apple", "qty": 3, "low_stock_threshold": 2}).json()

    response = api.patch(f"/items/{item['id']}", {"low_stock_threshold": threshold})

    assert response.status_code == 200
    after = expected_item(id=item["id"], name="apple", qty=3, low_stock_threshold=threshold)
    assert response.json() == after
    assert api.all_items() == {item["id"]: after}


def test_patch_sets_the_name_and_the_threshold_together(api):
    item = api.create("apple", 3)

    response = api.patch(f"/items/{item['id']}", {"name": "pear", "low_stock_threshold": 1})

    assert response.status_code == 200
    after = expected_item(id=item["id"], name="pear", qty=3, low_stock_threshold=1)
    assert response.json() == after
    assert api.all_items() == {item["id"]: after}


def test_rename_to_its_own_name_is_allowed(api):
    item = api.create("apple", 3)
    assert api.patch(f"/items/{item['id']}", {"name": "apple"}).json() == item


def test_rename_to_a_taken_name_is_refused_and_changes_nothing(api):
    apple, pear = api.create("apple"), api.create("pear")
    before = api.all_items()

    response = api.patch(f"/items/{pear['id']}", {"name": "apple"})

    assert response.status_code == 400
    assert response.json()["field"] == "name"
    assert api.all_items() == before == {apple["id"]: apple, pear["id"]: pear}


def test_rename_of_unknown_item_is_not_found(api):
    response = api.patch(f"/items/{uuid.uuid4()}", {"name": "pear"})
    assert response.status_code == 404
    assert response.json() == {"error": "not_found"}


def test_delete_removes_the_item_and_is_idempotent(api):
    item = api.create("apple", 4)

    first = api.delete(f"/items/{item['id']}")
    second = api.delete(f"/items/{item['id']}")

    assert (first.status_code, first.content) == (204, b"")
    assert (second.status_code, second.content) == (204, b"")
    assert api.all_items() == {}
    assert api.get(f"/items/{item['id']}").status_code == 404


def test_a_deleted_name_can_be_used_again(api):
    item = api.create("apple", 4)
    api.delete(f"/items/{item['id']}")
    assert api.create("apple", 1)["qty"] == 1


@pytest.mark.parametrize(("start", "delta", "end"), [(5, -1, 4), (5, 5, 10), (5, 0, 5), (5, -5, 0)])
def test_delta_changes_qty_by_exactly_the_delta(api, start, delta, end):
    item = api.create("apple", start)

    response = api.patch(f"/items/{item['id']}/qty", {"delta": delta})

    assert response.status_code == 200
    assert response.json() == expected_item(item, qty=end)
    assert api.all_items()[item["id"]]["qty"] == end


def test_delta_below_zero_is_refused_with_the_seed_message(api):
    item = api.create("apple", 2)

    response = api.patch(f"/items/{item['id']}/qty", {"delta": -3})

    assert response.status_code == 400
    assert response.json() == {"error": "qty cannot go below 0"}
    assert api.all_items()[item["id"]]["qty"] == 2


def test_delta_past_the_upper_bound_is_refused(api):
    item = api.create("apple", QTY_MAX - 1)

    response = api.patch(f"/items/{item['id']}/qty", {"delta": 2})

    assert response.status_code == 400
    assert "above" in response.json()["error"]
    assert api.all_items()[item["id"]]["qty"] == QTY_MAX - 1


def test_delta_to_exactly_the_upper_bound_applies(api):
    item = api.create("apple", 1)
    response = api.patch(f"/items/{item['id']}/qty", {"delta": QTY_MAX - 1})
    assert response.json()["qty"] == QTY_MAX


def test_delta_on_unknown_item_is_not_found(api):
    response = api.patch(f"/items/{uuid.uuid4()}/qty", {"delta": 1})
    assert response.status_code == 404
    assert response.json() == {"error": "not_found"}


def test_list_is_ordered_by_code_point_and_paged_with_a_cursor(api):
    # Code-point order: upper case before lower case, "é" (U+00E9) after "z".
    names = ["b", "a", "B", "\u00e9", "z", "A", "aa", "\U0001f34e"]
    for name in names:
        api.create(name)

    seen, cursor, pages = [], None, 0
    while True:
        page = api.get("/items?limit=3" + (f"&cursor={cursor}" if cursor else "")).json()
        assert len(page["items"]) <= 3
        seen += [item["name"] for item in page["items"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break

    assert seen == sorted(names)
    assert pages == 3


def test_list_defaults_to_100_items_and_allows_1000(api):
    for i in range(101):
        api.create(f"item {i:03}")

    assert len(api.get("/items").json()["items"]) == 100
    everything = api.get("/items?limit=1000").json()
    assert len(everything["items"]) == 101
    assert everything["next"] is None


def test_empty_list_has_no_next_page(api):
    assert api.get("/items").json() == {"items": [], "next": None}


def test_healthz_answers_ok(api):
    response = api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_openapi_document_describes_every_item_route(api):
    document = api.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert {"/items", "/items/{item_id}", "/items/{item_id}/qty", "/healthz"} <= set(document["paths"])


def test_docs_page_renders_the_openapi_document(api):
    response = api.get("/docs")
    assert response.status_code == 200
    assert b"/openapi.json" in response.content


@pytest.mark.parametrize("debug", [False, True])
def test_unexpected_error_is_a_json_500_with_request_id_and_no_traceback(api, monkeypatch, settings, debug):
    settings.DEBUG = debug

    def explode(**kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(items, "item_create", explode)

    response = api.post("/items", {"name": "apple", "qty": 1}, X_Request_ID="req-123")

    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "request_id": "req-123"}
    assert b"secret detail" not in response.content
    assert b"Traceback" not in response.content


@pytest.mark.parametrize("debug", [False, True])
def test_unknown_route_is_json_404_in_every_mode(api, settings, debug):
    settings.DEBUG = debug
    response = api.get("/nowhere")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/json")
    assert response.json() == {"error": "not_found"}


def test_wrong_method_is_json_405_with_allow(api):
    response = api.request("PUT", "/items")
    assert response.status_code == 405
    assert response.json() == {"error": "method_not_allowed"}
    assert set(response["Allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}


def test_response_carries_a_request_id(api):
    assert api.get("/healthz", X_Request_ID="abc-1")["X-Request-ID"] == "abc-1"
    generated = api.get("/healthz", X_Request_ID="bad id\nwith newline")["X-Request-ID"]
    assert generated != "bad id\nwith newline"
    assert len(generated) == 32


def test_database_unavailable_is_a_json_503_to_retry(api, monkeypatch):
    def locked(**kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(items, "qty_adjust", locked)

    response = api.patch(f"/items/{uuid.uuid4()}/qty", {"delta": 1}, X_Request_ID="req-9")

    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert response.json() == {"error": "database_unavailable", "request_id": "req-9"}
