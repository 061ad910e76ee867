"""Hostile input through the HTTP API.

Every rejected request gets a 4xx JSON error (never a 500, never HTML) and leaves the whole
state, as GET /items shows it, exactly as it was.
"""

import base64
import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inventory.errors import InvalidInput, QtyBelowZero
from inventory.invariants import (
    QTY_MAX,
    apply_delta,
    check_delta,
    check_threshold,
    normalize_name,
    validate_item,
)
from tests.conftest import expected_item

ANY = object()  # the rejection may name any field, or none


def assert_json_error(response, status):
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body.get("error"), str), body
    return body


def assert_rejected(api, response, before, status=400, field=ANY):
    body = assert_json_error(response, status)
    if field is not ANY:
        assert body.get("field") == field, body
    assert api.all_items() == before
    return body


@pytest.fixture
def apple(api):
    return api.create("apple", 5)


@pytest.fixture
def banana(api):
    return api.create("banana", 7)


# Bodies --------------------------------------------------------------------------------------------

BAD_NAMES = [
    pytest.param("", id="name-empty"),
    pytest.param("   ", id="name-ascii-spaces"),
    pytest.param("\u00a0\u2003\u3000\t\n", id="name-unicode-white-space"),
    pytest.param("a\x00b", id="name-nul"),
    pytest.param("a\x01b", id="name-x01"),
    pytest.param("a\x1fb", id="name-x1f"),
    pytest.param("a\x7fb", id="name-del"),
    pytest.param("a\x85b", id="name-next-line"),
    pytest.param("\ud800", id="name-lone-surrogate"),
    pytest.param("a" * 201, id="name-201-chars"),
    pytest.param("a" * 10_000, id="name-10000-chars"),
    pytest.param(None, id="name-null"),
    pytest.param(5, id="name-number"),
    pytest.param(True, id="name-true"),
    pytest.param([], id="name-empty-list"),
    pytest.param(["x"], id="name-list"),
    pytest.param({"a": 1}, id="name-object"),
]

BAD_QTYS = [
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param(5.0, id="float"),
    pytest.param("5", id="string"),
    pytest.param(None, id="null"),
    pytest.param([], id="list"),
    pytest.param({}, id="object"),
    pytest.param(-1, id="minus-1"),
    pytest.param(2**63, id="2-to-63"),
    pytest.param(-(2**63), id="minus-2-to-63"),
    pytest.param(10**30, id="10-to-30"),
]

# low_stock_threshold is null or an integer in 0..QTY_MAX, as strict as qty; null is a value.
BAD_THRESHOLDS = [
    pytest.param(True, id="true"),
    pytest.param(False, id="false"),
    pytest.param(5.0, id="float"),
    pytest.param(0.0, id="float-zero"),
    pytest.param("5", id="string"),
    pytest.param("", id="empty-string"),
    pytest.param([], id="list"),
    pytest.param({}, id="object"),
    pytest.param(-1, id="minus-1"),
    pytest.param(2**63, id="2-to-63"),
    pytest.param(-(2**63), id="minus-2-to-63"),
    pytest.param(10**30, id="10-to-30"),
]
GOOD_THRESHOLDS = [
    pytest.param(None, id="null"),
    pytest.param(0, id="zero"),
    pytest.param(3, id="three"),
    pytest.param(QTY_MAX, id="max"),
]

BAD_DELTAS = [
    pytest.param(True, id="true"),
    pytest.param(5.0, id="float"),
    pytest.param("5", id="string"),
    pytest.param(None, id="null"),
    pytest.param([], id="list"),
    pytest.param({}, id="object"),
    pytest.param(2**63, id="2-to-63"),
    pytest.param(-(2**63), id="minus-2-to-63"),
    pytest.param(10**30, id="10-to-30"),
    pytest.param(-(10**30), id="minus-10-to-30"),
]

NOT_OBJECTS = [
    pytest.param([{"name": "pear", "qty": 1}], id="list"),
    pytest.param("pear", id="string"),
    pytest.param(5, id="number"),
    pytest.param(None, id="null"),
]

# Each endpoint with a body it accepts; the raw-body cases below break that body's syntax only,
# so a rejection can be blamed on the syntax and nothing else.
ENDPOINTS = {
    "create": ("POST", "/items", {"name": "pear", "qty": 1}),
    "rename": ("PATCH", "/items/{id}", {"name": "pear"}),
    "threshold": ("PATCH", "/items/{id}", {"low_stock_threshold": 1}),
    "adjust": ("PATCH", "/items/{id}/qty", {"delta": 1}),
}


def _broken(valid: dict) -> list[tuple[str, bytes]]:
    text = json.dumps(valid)
    key, value = list(valid.items())[-1]
    head = text[: -len(json.dumps(value)) - 1]  # everything before the last value

    def last_value(raw: str) -> bytes:
        return (head + raw + "}").encode()

    def bad_bytes_in_first_string(bad: bytes) -> bytes:
        # Inside the name where there is one, so that a lenient decoder would accept the body.
        string = b'"pear"' if "pear" in text else f'"{key}"'.encode()
        return text.encode().replace(string, string[:-1] + bad + b'"', 1)

    other = json.dumps(2 if isinstance(value, int) else "plum")
    return [
        ("empty", b""),
        ("only-white-space", b"  \n"),
        ("lone-brace", b"{"),
        ("truncated", text[:-1].encode()),
        ("truncated-in-last-value", text[:-2].encode()),
        ("trailing-comma", (text[:-1] + ",}").encode()),
        ("single-quotes", text.replace('"', "'").encode()),
        ("unquoted-key", text.replace(f'"{key}"', key).encode()),
        ("trailing-garbage", (text + " x").encode()),
        ("two-objects", (text + text).encode()),
        ("nan", last_value("NaN")),
        ("infinity", last_value("Infinity")),
        ("minus-infinity", last_value("-Infinity")),
        ("leading-zero", last_value("01")),
        ("5000-digit-number", last_value("9" * 5000)),
        ("duplicate-key", (text[:-1] + f', "{key}": {other}}}').encode()),
        ("deeply-nested-lists", b"[" * 100_000),
        ("deeply-nested-objects", b'{"a":' * 100_000),
        ("deeply-nested-last-value", last_value("[" * 100_000)),
        ("invalid-utf8", b"\xff\xfe\xfd"),
        ("invalid-utf8-in-string", bad_bytes_in_first_string(b"\xff")),
        ("overlong-utf8-in-string", bad_bytes_in_first_string(b"\xc0\xaf")),
    ]


BROKEN_BODIES = [
    pytest.param(endpoint, raw, id=f"{endpoint}-{case}")
    for endpoint, (_, _, valid) in ENDPOINTS.items()
    for case, raw in _broken(valid)
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_accepts_the_body_the_broken_bodies_are_made_from(api, apple, endpoint):
    method, route, valid = ENDPOINTS[endpoint]
    response = api.request(method, route.format(id=apple["id"]), raw=json.dumps(valid))
    assert response.status_code in (200, 201), response.content


@pytest.mark.parametrize(("endpoint", "raw"), BROKEN_BODIES)
def test_rejects_a_body_that_is_not_one_json_object_with_unique_keys(api, apple, endpoint, raw):
    method, route, _ = ENDPOINTS[endpoint]
    before = api.all_items()
    response = api.request(method, route.format(id=apple["id"]), raw=raw)
    # No field is to blame: the body never became a JSON object.
    assert_rejected(api, response, before, field=None)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_create_rejects_a_bad_name(api, apple, name):
    before = api.all_items()
    response = api.post("/items", {"name": name, "qty": 1})
    assert_rejected(api, response, before, field="name")


@pytest.mark.parametrize("qty", BAD_QTYS)
def test_create_rejects_a_qty_that_is_not_an_integer_in_range(api, apple, qty):
    before = api.all_items()
    response = api.post("/items", {"name": "pear", "qty": qty})
    assert_rejected(api, response, before, field="qty")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"name": "pear", "qty": 1, "colour": "red"}, "colour", id="unknown-field"),
        pytest.param({"name": "pear", "qty": 1, "id": str(uuid.uuid4())}, "id", id="client-chosen-id"),
        pytest.param({"name": "pear", "qty": 1, "delta": 1}, "delta", id="delta"),
        pytest.param({"name": "pear", "qty": 1, "reserved": 0}, "reserved", id="reserved"),
        pytest.param({"name": "pear", "qty": 1, "available": 1}, "available", id="available"),
        pytest.param({"qty": 1}, "name", id="missing-name"),
        pytest.param({"name": "pear"}, "qty", id="missing-qty"),
        pytest.param({"name": "pear", "low_stock_threshold": 1}, "qty", id="threshold-without-qty"),
        pytest.param({}, ANY, id="empty-object"),
        pytest.param({"colour": "red"}, ANY, id="only-unknown"),
        *(pytest.param(body, ANY, id=f"body-{p.id}") for p in NOT_OBJECTS for body in p.values),
    ],
)
def test_create_rejects_a_body_that_is_not_name_qty_and_an_optional_threshold(api, apple, body, field):
    before = api.all_items()
    response = api.post("/items", raw=json.dumps(body))
    assert_rejected(api, response, before, field=field)


@pytest.mark.parametrize("endpoint", ["create", "rename"])
def test_rejects_a_name_with_a_surrogate_encoded_as_utf8_bytes(api, apple, endpoint):
    # ED A0 80 is not UTF-8, yet json.loads lets it through as "\ud800": the name check must catch it.
    method, route, _ = ENDPOINTS[endpoint]
    before = api.all_items()
    raw = b'{"name": "pe\xed\xa0\x80ar"' + (b', "qty": 1}' if endpoint == "create" else b"}")
    response = api.request(method, route.format(id=apple["id"]), raw=raw)
    assert_rejected(api, response, before, field="name")


def test_create_rejects_a_body_over_1_mib_with_413(api, apple):
    before = api.all_items()
    response = api.post("/items", raw=json.dumps({"name": "x" * (1024 * 1024), "qty": 1}))
    assert_rejected(api, response, before, status=413)


def test_create_ignores_a_utf8_bom_before_the_json_body(api, apple):
    # RFC 8259 lets a parser ignore a BOM; json.loads of bytes does, and so does the service.
    before = api.all_items()
    response = api.post("/items", raw=b'\xef\xbb\xbf{"name": "pear", "qty": 1}')

    assert response.status_code == 201, response.content
    item = response.json()
    assert item == expected_item(id=item["id"], name="pear", qty=1)
    assert api.all_items() == {**before, item["id"]: item}


@pytest.mark.parametrize("threshold", BAD_THRESHOLDS)
def test_create_rejects_a_threshold_that_is_not_null_or_an_integer_in_range(api, apple, threshold):
    before = api.all_items()
    response = api.post("/items", {"name": "pear", "qty": 1, "low_stock_threshold": threshold})
    assert_rejected(api, response, before, field="low_stock_threshold")


@pytest.mark.parametrize("threshold", BAD_THRESHOLDS)
def test_update_rejects_a_threshold_that_is_not_null_or_an_integer_in_range(api, apple, threshold):
    before = api.all_items()
    response = api.patch(f"/items/{apple['id']}", {"low_stock_threshold": threshold})
    assert_rejected(api, response, before, field="low_stock_threshold")


@pytest.mark.parametrize("threshold", BAD_THRESHOLDS)
def test_update_with_a_good_name_and_a_bad_threshold_changes_neither(api, apple, threshold):
    before = api.all_items()
    response = api.patch(f"/items/{apple['id']}", {"name": "pear", "low_stock_threshold": threshold})
    assert_rejected(api, response, before, field="low_stock_threshold")


@pytest.mark.parametrize("threshold", GOOD_THRESHOLDS)
def test_create_and_update_accept_a_threshold_that_is_null_or_an_integer_in_range(api, apple, threshold):
    created = api.post("/items", {"name": "pear", "qty": 1, "low_stock_threshold": threshold})
    updated = api.patch(f"/items/{apple['id']}", {"low_stock_threshold": threshold})

    assert created.status_code == 201, created.content
    assert updated.status_code == 200, updated.content
    pear = expected_item(id=created.json()["id"], name="pear", qty=1, low_stock_threshold=threshold)
    assert created.json() == pear
    assert updated.json() == expected_item(apple, low_stock_threshold=threshold)
    assert api.all_items() == {apple["id"]: updated.json(), pear["id"]: pear}


@pytest.mark.parametrize("name", BAD_NAMES)
def test_rename_rejects_a_bad_name(api, apple, name):
    before = api.all_items()
    response = api.patch(f"/items/{apple['id']}", {"name": name})
    assert_rejected(api, response, before, field="name")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"name": "pear", "qty": 1}, "qty", id="qty-in-rename"),
        pytest.param({"low_stock_threshold": 1, "qty": 1}, "qty", id="qty-beside-threshold"),
        pytest.param({"qty": 1}, ANY, id="only-qty"),
        pytest.param({"name": "pear", "colour": "red"}, "colour", id="unknown-field"),
        pytest.param({"low_stock_threshold": 1, "colour": "red"}, "colour", id="unknown-beside-threshold"),
        pytest.param({"name": "pear", "delta": 1}, "delta", id="delta"),
        pytest.param({"name": "pear", "reserved": 0}, "reserved", id="reserved"),
        pytest.param({}, None, id="empty-object"),
        *(pytest.param(body, ANY, id=f"body-{p.id}") for p in NOT_OBJECTS for body in p.values),
    ],
)
def test_update_rejects_a_body_that_is_not_name_threshold_or_both(api, apple, body, field):
    before = api.all_items()
    response = api.patch(f"/items/{apple['id']}", raw=json.dumps(body))
    assert_rejected(api, response, before, field=field)


def test_update_of_no_field_says_which_fields_it_takes(api, apple):
    before = api.all_items()
    response = api.patch(f"/items/{apple['id']}", {})
    assert assert_rejected(api, response, before) == {"error": "give name, low_stock_threshold or both"}


@pytest.mark.parametrize("delta", BAD_DELTAS)
def test_adjust_rejects_a_delta_that_is_not_an_integer_in_range(api, apple, delta):
    before = api.all_items()
    response = api.patch(f"/items/{apple['id']}/qty", {"delta": delta})
    assert_rejected(api, response, before, field="delta")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({}, "delta", id="missing-delta"),
        pytest.param({"qty": 5}, ANY, id="new-value-instead-of-delta"),
        pytest.param({"delta": 1, "qty": 5}, "qty", id="qty-beside-delta"),
        pytest.param({"delta": 1, "colour": "red"}, "colour", id="unknown-field"),
        pytest.param({"delta": 1, "name": "pear"}, "name", id="name-beside-delta"),
        *(pytest.param(body, ANY, id=f"body-{p.id}") for p in NOT_OBJECTS for body in p.values),
    ],
)
def test_adjust_rejects_a_body_that_is_not_exactly_delta(api, apple, body, field):
    before = api.all_items()
    response = api.patch(f"/items/{apple['id']}/qty", raw=json.dumps(body))
    assert_rejected(api, response, before, field=field)


@pytest.mark.parametrize("delta", [-6, -1000, -QTY_MAX])
def test_adjust_refuses_to_take_qty_below_0_with_the_fixed_message(api, apple, delta):
    before = api.all_items()
    response = api.patch(f"/items/{apple['id']}/qty", {"delta": delta})
    assert assert_rejected(api, response, before) == {"error": "qty cannot go below 0"}


@pytest.mark.parametrize(("qty", "delta"), [(5, QTY_MAX - 4), (5, QTY_MAX), (QTY_MAX, 1)])
def test_adjust_refuses_to_take_qty_above_the_64_bit_bound(api, qty, delta):
    item = api.create("pear", qty)
    before = api.all_items()
    response = api.patch(f"/items/{item['id']}/qty", {"delta": delta})
    assert_rejected(api, response, before)


@pytest.mark.parametrize(("delta", "qty_after"), [(-5, 0), (QTY_MAX - 5, QTY_MAX)])
def test_adjust_reaches_both_bounds_exactly(api, apple, delta, qty_after):
    # The refusals above are at the bound, not one step inside it.
    response = api.patch(f"/items/{apple['id']}/qty", {"delta": delta})
    assert response.status_code == 200, response.content
    assert response.json() == expected_item(apple, qty=qty_after)


# Duplicate names -----------------------------------------------------------------------------------

SAME_AS_CAFE = [
    pytest.param("caf\u00e9", id="exact"),
    pytest.param("cafe\u0301", id="nfd"),
    pytest.param("  caf\u00e9\t", id="ascii-white-space"),
    pytest.param("\u00a0cafe\u0301\u3000", id="nfd-and-unicode-white-space"),
]


@pytest.mark.parametrize("name", SAME_AS_CAFE)
def test_create_rejects_a_name_that_normalises_to_an_existing_one(api, name):
    api.create("caf\u00e9", 1)
    before = api.all_items()
    response = api.post("/items", {"name": name, "qty": 2})
    assert_rejected(api, response, before, field="name")


@pytest.mark.parametrize("name", SAME_AS_CAFE)
def test_rename_rejects_a_name_that_normalises_to_another_items_name(api, apple, name):
    api.create("caf\u00e9", 1)
    before = api.all_items()
    response = api.patch(f"/items/{apple['id']}", {"name": name})
    assert_rejected(api, response, before, field="name")


# Paths and methods ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
@pytest.mark.parametrize(
    "template",
    [
        "/items/abc",
        "/items/123",
        "/items/{id}x",
        "/items/{id}/",
        "/items/{short}",  # 35 hex digits and hyphens
        "/items/{short}g",
        "/items/{hex}",  # a UUID without hyphens is not the form the API issues
        "/items/",
        "/items/abc/qty",
        "/items/{id}/qty/",
        "/items/{id}/nope",
        "/items/%00",
        "/Items",
        "/nope",
        "/",
    ],
)
def test_a_path_that_is_no_route_is_a_json_404(api, apple, method, template):
    item_id = apple["id"]
    path = template.format(id=item_id, short=item_id[:-1], hex=item_id.replace("-", ""))
    before = api.all_items()
    # A body the nearest real route would accept: only the path is wrong.
    body = None if method != "PATCH" else {"delta": 1} if "/qty" in template else {"name": "renamed"}
    response = api.request(method, path, body)
    assert assert_rejected(api, response, before, status=404) == {"error": "not_found"}


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("PATCH", "", {"name": "pear"}),
        ("PATCH", "", {"low_stock_threshold": 1}),
        ("PATCH", "/qty", {"delta": 1}),
    ],
)
def test_an_unknown_item_is_a_json_404(api, apple, method, suffix, body):
    before = api.all_items()
    response = api.request(method, f"/items/{uuid.uuid4()}{suffix}", body)
    assert assert_rejected(api, response, before, status=404) == {"error": "not_found"}


@pytest.mark.parametrize(
    ("method", "route", "allowed"),
    [
        ("PUT", "/items/{id}", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("POST", "/items/{id}", {"GET", "HEAD", "PATCH", "DELETE"}),
        ("DELETE", "/items", {"GET", "HEAD", "POST"}),
        ("PUT", "/items", {"GET", "HEAD", "POST"}),
        ("PATCH", "/items", {"GET", "HEAD", "POST"}),
        ("GET", "/items/{id}/qty", {"PATCH"}),
        ("POST", "/items/{id}/qty", {"PATCH"}),
        ("DELETE", "/items/{id}/qty", {"PATCH"}),
        ("POST", "/healthz", {"GET", "HEAD"}),
    ],
)
def test_a_wrong_method_is_a_json_405_with_allow(api, apple, method, route, allowed):
    before = api.all_items()
    response = api.request(method, route.format(id=apple["id"]), {"name": "pear", "qty": 1})
    assert_rejected(api, response, before, status=405)
    assert {m.strip() for m in response["Allow"].split(",")} == allowed


# Listing -------------------------------------------------------------------------------------------


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("limit=0", id="limit-0"),
        pytest.param("limit=-1", id="limit-negative"),
        pytest.param("limit=1001", id="limit-1001"),
        pytest.param("limit=" + "9" * 30, id="limit-huge"),
        pytest.param("limit=abc", id="limit-word"),
        pytest.param("limit=1.5", id="limit-fraction"),
        pytest.param("limit=1e2", id="limit-exponent"),
        pytest.param("limit=", id="limit-empty"),
        pytest.param("limit=%00", id="limit-nul"),
        pytest.param("cursor=", id="cursor-empty"),
        pytest.param("cursor=garbage!!", id="cursor-garbage"),
        pytest.param("cursor=%C3%A9", id="cursor-non-ascii"),
        pytest.param("cursor=%00", id="cursor-nul"),
        pytest.param("cursor=" + _cursor(b"not json"), id="cursor-not-json"),
        pytest.param("cursor=" + _cursor(b"\xff\xfe"), id="cursor-not-utf8"),
        pytest.param("cursor=" + _cursor(b'{"before": "a"}'), id="cursor-without-after"),
        pytest.param("cursor=" + _cursor(b'{"after": 5}'), id="cursor-after-number"),
        pytest.param("cursor=" + _cursor(b'{"after": null}'), id="cursor-after-null"),
        pytest.param("cursor=" + _cursor(b'["after"]'), id="cursor-list"),
        pytest.param("cursor=" + _cursor(b'"after"'), id="cursor-string"),
        pytest.param("cursor=" + _cursor(b'{"after": "\\ud800"}'), id="cursor-after-lone-surrogate"),
        pytest.param("cursor=" + _cursor(b'{"after": "a\\u0000b"}'), id="cursor-after-nul"),
    ],
)
def test_list_rejects_a_bad_limit_or_cursor(api, apple, query):
    assert_json_error(api.get(f"/items?{query}"), 400)


# Generated bodies ----------------------------------------------------------------------------------

FIELDS = ["name", "qty", "delta", "low_stock_threshold"]
names = st.sampled_from(["apple", " apple\u00a0", "banana", "cafe\u0301", "", " ", "a\x00"]) | st.text(
    max_size=8
)
integers = st.sampled_from([0, 1, -1, -5, 5, QTY_MAX, -QTY_MAX, 2**63, -(2**63)]) | st.integers()
leaves = st.none() | st.booleans() | integers | st.floats() | names
json_values = st.recursive(
    leaves,
    # Keys of at most 3 characters never spell a field the contract allows beyond FIELDS.
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=8,
)
# Values that are valid on their own (a name may still be taken); wrong ones come from json_values.
plausible = {
    "name": st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=12)
    | st.sampled_from(["apple", " apple\u00a0", "banana", "caf\u00e9", "cafe\u0301"]),
    "qty": st.integers(0, QTY_MAX) | st.sampled_from([0, QTY_MAX]),
    "delta": st.integers(-10, 10) | st.sampled_from([QTY_MAX, -QTY_MAX]),
    "low_stock_threshold": st.none() | st.integers(0, QTY_MAX) | st.sampled_from([0, QTY_MAX]),
}


def bodies(*fields, optional=()):
    """Bodies for an endpoint that takes exactly `fields`, and `optional` ones if it likes:
    right, nearly right, or anything."""
    right = st.fixed_dictionaries(
        {field: plausible[field] for field in fields},
        optional={field: plausible[field] for field in optional},
    )
    wrong_value = st.builds(
        lambda body, field, value: {**body, field: value},
        right,
        st.sampled_from([*fields, *optional]),
        json_values,
    )
    wrong_fields = st.fixed_dictionaries({}, optional=plausible)
    # Half right, so that the success branch of each test gets a fair share of the examples.
    return st.one_of(right, st.one_of(wrong_value, wrong_fields, json_values))


fuzz = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# The oracles below use inventory.invariants (unit-tested on its own): the question here is
# whether the HTTP layer accepts exactly what the invariants accept, and changes exactly that.


def _other_names(state, item_id=None):
    return {item["name"] for id_, item in state.items() if id_ != item_id}


def _send(api, method, path, body):
    before = api.all_items()
    response = api.request(method, path, raw=json.dumps(body))
    assert response.status_code < 500, response.content
    assert response["Content-Type"].startswith("application/json")
    return before, response, response.json(), api.all_items()


def _assert_refused(response, data, before, after):
    assert response.status_code == 400, data
    assert isinstance(data["error"], str)
    assert after == before


@fuzz
@given(body=bodies("name", "qty", optional=["low_stock_threshold"]))
def test_create_accepts_exactly_the_valid_bodies(api, apple, banana, body):
    before, response, data, after = _send(api, "POST", "/items", body)
    try:
        valid = validate_item(body) if isinstance(body, dict) else None
    except InvalidInput:
        valid = None
    if valid is None or valid["name"] in _other_names(before):
        _assert_refused(response, data, before, after)
    else:
        assert response.status_code == 201, data
        assert data == expected_item(id=data["id"], **valid)
        assert after == {**before, data["id"]: data}


def _update(body) -> dict | None:
    """The fields a PATCH /items/<id> body sets, as stored, or None if it is refused."""
    if not (isinstance(body, dict) and body and set(body) <= {"name", "low_stock_threshold"}):
        return None
    changes = {}
    try:
        if "name" in body:
            changes["name"] = normalize_name(body["name"])
        if "low_stock_threshold" in body:
            changes["low_stock_threshold"] = check_threshold(body["low_stock_threshold"])
    except InvalidInput:
        return None
    return changes


@fuzz
@given(body=bodies(optional=["name", "low_stock_threshold"]))
def test_update_accepts_exactly_the_valid_bodies(api, apple, banana, body):
    item_id = apple["id"]
    before, response, data, after = _send(api, "PATCH", f"/items/{item_id}", body)
    changes = _update(body)
    if changes is None or changes.get("name") in _other_names(before, item_id):
        _assert_refused(response, data, before, after)
    else:
        assert response.status_code == 200, data
        assert data == expected_item(before[item_id], **changes)
        assert after == {**before, item_id: data}


@fuzz
@given(body=bodies("delta"))
def test_adjust_changes_qty_by_exactly_the_delta_or_not_at_all(api, apple, banana, body):
    item_id = apple["id"]
    before, response, data, after = _send(api, "PATCH", f"/items/{item_id}/qty", body)
    qty = before[item_id]["qty"]
    try:
        if not (isinstance(body, dict) and set(body) == {"delta"}):
            raise InvalidInput()
        new_qty = apply_delta(qty, check_delta(body["delta"]))
    except QtyBelowZero:
        _assert_refused(response, data, before, after)
        assert data == {"error": "qty cannot go below 0"}
    except InvalidInput:
        _assert_refused(response, data, before, after)
    else:
        assert response.status_code == 200, data
        assert data == expected_item(before[item_id], qty=new_qty)
        assert after == {**before, item_id: data}
