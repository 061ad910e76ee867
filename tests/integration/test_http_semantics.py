"""HTTP as the contract's "HTTP", "Errors" and "Idempotency" sections say it, on every route:
HEAD wherever GET is answered, one JSON media type, no content coding but identity, query
integers and ids in one spelling each, metrics and a token cache no client can grow, the line
between a request refused before it runs and one the service refuses, and pruning in short
transactions."""

import datetime
import gzip
import io
import json
import logging
import re
import uuid
import zlib
from urllib.parse import quote

import django.test.client
import pytest
from django.core.management import call_command
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from inventory import idempotency, integrity, items, metrics, tokens
from inventory.models import IdempotencyKey, Item, Movement
from tests.conftest import Api

pytestmark = pytest.mark.django_db

MIB = 1024 * 1024
JSON = "application/json"


def stored_state() -> tuple[list, list, list]:
    """Items, movements and idempotency keys, every column, as stored."""
    return (
        list(Item.objects.order_by("id").values_list()),
        list(Movement.objects.order_by("id").values_list()),
        list(IdempotencyKey.objects.order_by("id").values_list()),
    )


def new_token(name: str, scope: str) -> str:
    out = io.StringIO()
    call_command("token", "create", name, "--scope", scope, stdout=out)
    return out.getvalue().strip()


def fill(template, **values):
    """A request template with {placeholders} filled in, in the path and in the body's strings."""
    text = json.dumps(template)
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    return json.loads(text)


def core(item: dict) -> dict:
    """The fields every item has had since the first version: what these tests look at."""
    return {key: item[key] for key in ("id", "name", "qty")}


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.fixture
def apple(api) -> dict:
    return api.create("apple", 5)


@pytest.fixture
def unstripped(monkeypatch):
    """Django's test client removes the body of every HEAD and 204 answer itself, as a server
    would, which would hide a body the service sent: here it keeps what the service sent."""
    monkeypatch.setattr(django.test.client, "conditional_content_removal", lambda request, response: response)


@pytest.fixture
def steady_metrics(monkeypatch):
    """/metrics counts every request, so two in a row differ: here it answers the same text."""
    monkeypatch.setattr(metrics, "exposition", lambda: (b"# steady\n", "text/plain; version=0.0.4"))


# HEAD ----------------------------------------------------------------------------------------------


def needs_admin(path: str) -> bool:
    """Webhooks answer only admin tokens: read and write tokens get 403."""
    return path == "/webhooks" or path.startswith("/webhooks/")


def documented_get_paths(client, item_id: str) -> dict[str, tuple[int, bool]]:
    """Every path the service's own OpenAPI document says answers GET: path -> (the status a
    GET with a token gets, whether it needs one). {item_id} is a real item (200); any other
    id is one never used (404)."""
    document = Api(client).get("/openapi.json").json()
    paths = {}
    for template, operations in document["paths"].items():
        if "get" not in operations:
            continue
        others = set(re.findall(r"\{(\w+)\}", template)) - {"item_id"}
        path = template.replace("{item_id}", item_id)
        for name in others:
            path = path.replace("{" + name + "}", str(uuid.uuid4()))
        paths[path] = (404 if others else 200, bool(operations["get"].get("security")))
    return paths


def exchange(api, method: str, path: str) -> tuple[int, dict, bytes]:
    # The same request id on both, so that every header may be compared.
    response = api.request(method, path, X_Request_ID="head-or-get")
    return response.status_code, dict(response.items()), body_of(response)


@pytest.mark.parametrize("scope", ["admin", "write", "read", None])
def test_head_answers_every_get_route_with_gets_status_and_headers_and_no_body(
    client, apple, unstripped, steady_metrics, scope
):
    api = Api(client, None if scope is None else new_token(f"{scope} client", scope))
    documented = documented_get_paths(client, apple["id"])
    item = apple["id"]
    assert {"/healthz", "/items", f"/items/{item}", f"/items/{item}/movements"} <= documented.keys()
    expected = {
        path: 401 if guarded and scope is None else 403 if needs_admin(path) and scope != "admin" else status
        for path, (status, guarded) in documented.items()
    }
    before = stored_state()

    # The static files /docs loads are streamed; HEAD closes such a response early, which in
    # the test client's transaction would close its connection: tests/e2e asks for them.
    for path in [*documented, "/openapi.json", "/docs"]:
        get_status, get_headers, get_body = exchange(api, "GET", path)
        head_status, head_headers, head_body = exchange(api, "HEAD", path)

        assert (head_status, head_body) == (get_status, b""), path
        assert head_headers == {**get_headers, "Content-Length": str(len(get_body))}, path
        assert get_status == expected.get(path, 200), path
    assert stored_state() == before


def test_head_needs_a_token_where_get_does_and_a_read_token_is_enough(client, apple, read_token):
    documented = documented_get_paths(client, apple["id"])
    assert {"/items", "/metrics", f"/items/{apple['id']}"} <= {
        path for path, (_, guarded) in documented.items() if guarded
    }

    for path, (status, guarded) in documented.items():
        anonymous = Api(client).request("HEAD", path)
        reader = Api(client, read_token).request("HEAD", path)

        assert anonymous.status_code == (401 if guarded else status), path
        if guarded:
            assert anonymous["WWW-Authenticate"].startswith("Bearer"), path
        assert reader.status_code == (403 if needs_admin(path) else status), path


# path -> status of GET and HEAD alike; "{id}" is the item "apple", "{new}" an id never used.
UNKNOWN = {
    "no route": "/no/such/route",
    "not an id": "/items/not-an-id",
    "below an item": "/items/{id}/nope",
    "trailing slash": "/items/{id}/",
    "unknown item": "/items/{new}",
    "movements of an unknown item": "/items/{new}/movements",
}


@pytest.mark.parametrize("case", UNKNOWN)
def test_head_on_an_unknown_route_or_item_is_a_404_without_a_body(api, apple, unstripped, case):
    path = fill(UNKNOWN[case], id=apple["id"], new=str(uuid.uuid4()))
    before = stored_state()

    get_status, get_headers, get_body = exchange(api, "GET", path)
    head_status, head_headers, head_body = exchange(api, "HEAD", path)

    assert (get_status, json.loads(get_body)) == (404, {"error": "not_found"})
    assert (head_status, head_body) == (404, b"")
    assert head_headers == {**get_headers, "Content-Length": str(len(get_body))}
    assert head_headers["Content-Type"] == JSON
    assert stored_state() == before


# (method, path) -> the methods its 405 allows; "{id}" is the item "apple".
WRONG_METHODS = {
    ("POST", "/healthz"): {"GET", "HEAD"},
    ("PUT", "/items"): {"GET", "HEAD", "POST"},
    ("PUT", "/items/{id}"): {"GET", "HEAD", "PATCH", "DELETE"},
    ("DELETE", "/items/{id}/movements"): {"GET", "HEAD"},
    ("POST", "/metrics"): {"GET", "HEAD"},
    ("PATCH", "/readyz"): {"GET", "HEAD"},
    ("PROPFIND", "/items"): {"GET", "HEAD", "POST"},
    ("GET", "/items/{id}/qty"): {"PATCH"},
    ("HEAD", "/items/{id}/qty"): {"PATCH"},
    ("HEAD", "/adjustments"): {"POST"},
}


@pytest.mark.parametrize(("method", "path"), WRONG_METHODS)
def test_a_405_allows_head_exactly_when_it_allows_get(api, apple, method, path):
    before = stored_state()

    response = api.request(method, path.replace("{id}", apple["id"]), {"name": "pear", "qty": 1})

    allowed = {part.strip() for part in response["Allow"].split(",")}
    assert response.status_code == 405
    assert response["Content-Type"] == JSON
    assert allowed == WRONG_METHODS[method, path]
    assert ("HEAD" in allowed) == ("GET" in allowed)
    assert stored_state() == before


@pytest.mark.parametrize(
    ("method", "path"), [("PUT", "/openapi.json"), ("POST", "/docs"), ("DELETE", "/docs")]
)
def test_a_write_method_on_the_openapi_document_or_the_docs_page_is_a_405(api, method, path):
    response = api.request(method, path, {"name": "pear", "qty": 1})

    assert response.status_code == 405
    assert response["Content-Type"] == JSON
    assert {part.strip() for part in response["Allow"].split(",")} == {"GET", "HEAD"}


def test_a_head_request_is_logged_and_counted_as_head(api, apple, request_log, read_token):
    request_log.clear()

    response = api.request("HEAD", f"/items/{apple['id']}")

    line = json.loads(request_log[-1])
    assert response.status_code == 200
    assert (line["method"], line["route"], line["status"]) == ("HEAD", "/items/{item_id}", 200)
    text = Api(api.client, read_token).get("/metrics").content.decode()
    assert 'method="HEAD",route="/items/{item_id}",status="200"' in text


# One media type ------------------------------------------------------------------------------------

# Every kind of answer, on the item "apple" (qty 5): kind -> (token, method, path, body, headers,
# a request sent first or None). A raw body is a str; "{id}" is apple.
ANSWERS = {
    "200 list": ("write", "GET", "/items", None, {}, None),
    "200 item": ("read", "GET", "/items/{id}", None, {}, None),
    "200 movements": ("read", "GET", "/items/{id}/movements", None, {}, None),
    "200 rename": ("write", "PATCH", "/items/{id}", {"name": "green apple"}, {}, None),
    "200 qty": ("write", "PATCH", "/items/{id}/qty", {"delta": 1}, {}, None),
    "200 adjustments": ("write", "POST", "/adjustments", {"changes": [{"id": "{id}", "delta": 1}]}, {}, None),
    "200 healthz": (None, "GET", "/healthz", None, {}, None),
    "200 readyz": (None, "GET", "/readyz", None, {}, None),
    "200 openapi": (None, "GET", "/openapi.json", None, {}, None),
    "200 qty with a key": ("write", "PATCH", "/items/{id}/qty", {"delta": 1}, {"Idempotency_Key": "k"}, None),
    "200 qty replayed": (
        "write",
        "PATCH",
        "/items/{id}/qty",
        {"delta": 1},
        {"Idempotency_Key": "k"},
        ("PATCH", "/items/{id}/qty", {"delta": 1}, {"Idempotency_Key": "k"}),
    ),
    "201 create": ("write", "POST", "/items", {"name": "pear", "qty": 1}, {}, None),
    "201 create with a key": (
        "write",
        "POST",
        "/items",
        {"name": "pear", "qty": 1},
        {"Idempotency_Key": "k"},
        None,
    ),
    "400 invalid body": ("write", "POST", "/items", {"name": " ", "qty": 1}, {}, None),
    "400 not json": ("write", "POST", "/items", '{"name": "pear",', {}, None),
    "400 host": ("write", "GET", "/healthz", None, {"Host": "evil.example"}, None),
    "400 bad limit": ("write", "GET", "/items?limit=01", None, {}, None),
    "400 below zero": ("write", "PATCH", "/items/{id}/qty", {"delta": -6}, {}, None),
    "400 below zero with a key": (
        "write",
        "PATCH",
        "/items/{id}/qty",
        {"delta": -6},
        {"Idempotency_Key": "k"},
        None,
    ),
    "400 bad key": (
        "write",
        "PATCH",
        "/items/{id}/qty",
        {"delta": 1},
        {"Idempotency_Key": "two words"},
        None,
    ),
    "401 no token": (None, "GET", "/items", None, {}, None),
    "401 bad token": ("bad", "PATCH", "/items/{id}/qty", {"delta": 1}, {}, None),
    "403": ("read", "DELETE", "/items/{id}", None, {}, None),
    "404 route": ("write", "GET", "/no/such/route", None, {}, None),
    "404 item": ("write", "GET", "/items/00000000-0000-4000-8000-000000000000", None, {}, None),
    "404 item with a key": (
        "write",
        "PATCH",
        "/items/00000000-0000-4000-8000-000000000000/qty",
        {"delta": 1},
        {"Idempotency_Key": "k"},
        None,
    ),
    "405": ("write", "PUT", "/items", None, {}, None),
    "409 stale": ("write", "PATCH", "/items/{id}/qty", {"delta": 1, "expected_qty": 4}, {}, None),
    "413": ("write", "POST", "/items", '{"name": "pear", "qty": 1}' + " " * MIB, {}, None),
    "415 media type": (
        "write",
        "POST",
        "/items",
        {"name": "pear", "qty": 1},
        {"Content_Type": "text/plain"},
        None,
    ),
    "415 coding": ("write", "POST", "/items", {"name": "pear", "qty": 1}, {"Content_Encoding": "br"}, None),
    "422": (
        "write",
        "PATCH",
        "/items/{id}/qty",
        {"delta": 2},
        {"Idempotency_Key": "k"},
        ("PATCH", "/items/{id}/qty", {"delta": 1}, {"Idempotency_Key": "k"}),
    ),
    "500": ("write", "PATCH", "/items/{id}/qty", {"delta": 1}, {}, None),
    "503 database": ("write", "PATCH", "/items/{id}/qty", {"delta": 1}, {}, None),
    "503 not ready": (None, "GET", "/readyz", None, {}, None),
}


def failing(error: Exception):
    def service(**kwargs):
        raise error

    return service


# The answers no valid request gets, provoked by breaking what the view calls.
BREAKAGES = {
    "500": (items, "qty_adjust", failing(RuntimeError("an unexpected failure"))),
    "503 database": (items, "qty_adjust", failing(OperationalError("the database went away"))),
    "503 not ready": (integrity, "database_ready", lambda: False),
}


@pytest.fixture
def answer(client, write_token, read_token, apple, monkeypatch):
    """answer(kind): the response to ANSWERS[kind], and the state before and after it."""
    scopes = {"write": write_token, "read": read_token, "bad": "inv_0123456789abcdef.wrong", None: None}

    def send(api, method, path, body, headers):
        headers = dict(headers)
        content_type = headers.pop("Content_Type", JSON)
        raw = body if isinstance(body, str) or body is None else json.dumps(body)
        raw = None if raw is None else raw.replace("{id}", apple["id"])
        return api.request(
            method, path.replace("{id}", apple["id"]), raw=raw, content_type=content_type, **headers
        )

    def answer(kind: str):
        token, method, path, body, headers, first = ANSWERS[kind]
        if first is not None:
            send(Api(client, write_token), *first)
        if kind in BREAKAGES:
            monkeypatch.setattr(*BREAKAGES[kind])
        before = stored_state()
        response = send(Api(client, scopes[token]), method, path, body, headers)
        return response, before, stored_state()

    return answer


@pytest.mark.parametrize("kind", ANSWERS)
def test_every_json_answer_is_exactly_application_json(answer, kind):
    response, before, after = answer(kind)

    assert response.status_code == int(kind[:3]), response.content
    assert response["Content-Type"] == JSON
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body["error"], str)
        if "with a key" not in kind:  # a refusal with a key stores that key: nothing else changes
            assert after == before
        else:
            assert after[:2] == before[:2]
    else:  # a write that ran changed the state; a read or a replay did not
        method = ANSWERS[kind][1]
        assert (after != before) == (method != "GET" and "replayed" not in kind)


@pytest.mark.parametrize("exists", [True, False], ids=["existing", "absent"])
def test_a_204_has_no_content_type_and_no_body(api, apple, unstripped, exists):
    item_id = apple["id"] if exists else str(uuid.uuid4())

    response = api.delete(f"/items/{item_id}")

    assert response.status_code == 204
    assert "Content-Type" not in response
    assert body_of(response) == b""
    assert api.get(f"/items/{apple['id']}").status_code == (404 if exists else 200)


# Content codings -----------------------------------------------------------------------------------

# Every write with a body, on the item "apple" (qty 5): name -> (method, path, body, success).
BODY_WRITES = {
    "create": ("POST", "/items", {"name": "pear", "qty": 1}, 201),
    "rename": ("PATCH", "/items/{id}", {"name": "pear"}, 200),
    "adjust": ("PATCH", "/items/{id}/qty", {"delta": 1}, 200),
    "batch": ("POST", "/adjustments", {"changes": [{"id": "{id}", "delta": 1}]}, 200),
}


def identity(data: bytes) -> bytes:
    return data


# Content-Encoding -> how the body is coded. "br" and "x-anything" go as plain JSON: accepting
# them would read a body the client said was coded.
REFUSED_CODINGS = {
    "gzip": gzip.compress,
    "br": identity,
    "deflate": zlib.compress,
    "gzip, identity": gzip.compress,
    "identity, gzip": gzip.compress,
    "GZIP": gzip.compress,
    "x-anything": identity,
}


@pytest.mark.parametrize("coding", REFUSED_CODINGS)
@pytest.mark.parametrize("endpoint", BODY_WRITES)
def test_a_body_with_a_content_coding_is_415_and_changes_nothing_not_even_its_key(
    api, apple, endpoint, coding
):
    method, path, body, success = fill(BODY_WRITES[endpoint], id=apple["id"])
    before = stored_state()

    refused = api.request(
        method,
        path,
        raw=REFUSED_CODINGS[coding](json.dumps(body).encode()),
        Content_Encoding=coding,
        Idempotency_Key="k",
    )

    assert refused.status_code == 415, refused.content
    assert refused["Content-Type"] == JSON
    assert isinstance(refused.json()["error"], str)
    assert stored_state() == before
    # The key was not spent: the same request, plain, runs.
    plain = api.request(method, path, body, Idempotency_Key="k")
    assert plain.status_code == success, plain.content
    assert "Idempotent-Replayed" not in plain


@pytest.mark.parametrize("coding", ["identity", "Identity", "IDENTITY"])
@pytest.mark.parametrize("endpoint", BODY_WRITES)
def test_a_body_with_the_identity_coding_is_accepted(api, apple, endpoint, coding):
    method, path, body, success = fill(BODY_WRITES[endpoint], id=apple["id"])
    before = api.all_items()

    response = api.request(method, path, body, Content_Encoding=coding)

    assert response.status_code == success, response.content
    assert api.all_items() != before


# Query integers ------------------------------------------------------------------------------------

PLAIN_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")
REFUSED_LIMITS = {
    "leading space": " 1",
    "trailing space": "1 ",
    "plus": "+1",
    "leading zero": "01",
    "fraction": "1.0",
    "exponent": "1e2",
    "arabic-indic digit": "\u0661",
    "hex": "0x10",
    "fullwidth digit": "\uff11",
    "empty": "",
    "underscore": "1_0",
    "trailing newline": "1\n",
    "no-break space": "\u00a01",
    "minus zero padded": "-01",
}


@pytest.fixture
def listings(api, apple) -> list[str]:
    """Both endpoints that take `limit`, each with two entries to page through."""
    api.create("banana", 1)
    api.patch(f"/items/{apple['id']}/qty", {"delta": 1})
    return ["/items", f"/items/{apple['id']}/movements"]


@pytest.mark.parametrize("limit", REFUSED_LIMITS.values(), ids=REFUSED_LIMITS.keys())
def test_a_limit_not_in_plain_decimal_digits_is_400_on_every_listing(api, listings, limit):
    for path in listings:
        response = api.get(f"{path}?limit={quote(limit, safe='')}")

        assert response.status_code == 400, (path, response.content)
        assert response["Content-Type"] == JSON
        assert response.json()["field"] == "limit"


@pytest.mark.parametrize(("limit", "entries"), [("1", 1), ("2", 2), ("1000", 2)])
def test_a_limit_in_plain_decimal_digits_is_accepted_on_every_listing(api, listings, limit, entries):
    for path, key in zip(listings, ["items", "movements"], strict=True):
        response = api.get(f"{path}?limit={limit}")

        assert response.status_code == 200, (path, response.content)
        assert len(response.json()[key]) == entries
        assert (response.json()["next"] is None) == (entries == 2)


near_misses = st.builds(
    lambda before, digits, after: before + digits + after,
    st.sampled_from(["", " ", "+", "-", "0", "\t", "\u00a0", "\u200b", "--"]),
    st.from_regex(PLAIN_INTEGER, fullmatch=True) | st.text(st.characters(categories=["Nd"]), min_size=1),
    st.sampled_from(["", " ", ".", ".0", "e1", "_0", "\n", "\x00", "L", "j"]),
)
not_plain_integers = (near_misses | st.text(st.characters(exclude_categories=["Cs"]), max_size=12)).filter(
    lambda text: not PLAIN_INTEGER.fullmatch(text)
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=not_plain_integers)
def test_any_limit_that_is_not_a_plain_integer_is_refused_alike_on_every_listing(api, listings, limit):
    answers = [api.get(f"{path}?limit={quote(limit, safe='')}") for path in listings]

    assert [answer.status_code for answer in answers] == [400, 400], [a.content for a in answers]
    assert answers[0].json() == answers[1].json()
    assert answers[0].json()["field"] == "limit"


# Ids -----------------------------------------------------------------------------------------------


def mixed_case(item_id: str) -> str:
    return "".join(c.upper() if i % 2 else c for i, c in enumerate(item_id))


# How an id may be written (RFC 9562, section 4: hex digits in either case, 8-4-4-4-12).
ID_SPELLINGS = {"lower case": str.lower, "upper case": str.upper, "mixed case": mixed_case}
# Other spellings Python's uuid.UUID would read, and near misses: no route, no body takes them.
OTHER_SPELLINGS = {
    "32 bare hex digits": lambda i: i.replace("-", ""),
    "braces": lambda i: "{" + i + "}",
    "urn": lambda i: f"urn:uuid:{i}",
    "surrounding spaces": lambda i: f" {i} ",
    "trailing newline": lambda i: i + "\n",
    "hyphens moved": lambda i: "-".join(re.findall(".{4}", i.replace("-", ""))),
    "fullwidth digits": lambda i: i.translate({ord(d): 0xFF10 + int(d) for d in "0123456789"}),
}


@pytest.mark.parametrize("spelling", ID_SPELLINGS)
def test_an_id_in_either_case_names_the_same_item_in_every_path_and_body(api, apple, spelling):
    canonical = apple["id"]
    written = ID_SPELLINGS[spelling](canonical)
    path = f"/items/{quote(written)}"

    got = api.get(path)
    renamed = api.patch(path, {"name": "green apple"})
    adjusted = api.patch(f"{path}/qty", {"delta": 2})
    batch = api.post("/adjustments", {"changes": [{"id": written, "delta": -1}]})
    moved = api.get(f"{path}/movements")

    expected = core(apple)
    assert [r.status_code for r in (got, renamed, adjusted, batch, moved)] == [200] * 5
    assert core(got.json()) == expected
    assert core(renamed.json()) == {**expected, "name": "green apple"}
    assert core(adjusted.json()) == {**expected, "name": "green apple", "qty": 7}
    assert [core(item) for item in batch.json()["items"]] == [{**expected, "name": "green apple", "qty": 6}]
    assert [(m["kind"], m["delta"]) for m in moved.json()["movements"]] == [
        ("create", 5),
        ("adjust", 2),
        ("adjust", -1),
    ]
    assert [core(item) for item in api.all_items().values()] == [
        {**expected, "name": "green apple", "qty": 6}
    ]

    deleted = api.delete(path)

    assert deleted.status_code == 204
    assert api.all_items() == {}
    assert api.get(f"/items/{canonical}/movements").json()["movements"][-1]["kind"] == "delete"


@pytest.mark.parametrize("spelling", OTHER_SPELLINGS)
def test_any_other_spelling_of_an_id_is_a_404_in_a_path_and_a_400_in_a_body(api, apple, spelling):
    written = OTHER_SPELLINGS[spelling](apple["id"])
    path = f"/items/{quote(written, safe='')}"
    before = stored_state()

    in_paths = [
        api.get(path),
        api.patch(path, {"name": "green apple"}),
        api.delete(path),
        api.patch(f"{path}/qty", {"delta": 1}),
        api.get(f"{path}/movements"),
    ]
    in_body = api.post("/adjustments", {"changes": [{"id": written, "delta": 1}]})

    for response in in_paths:
        assert (response.status_code, response.json()) == (404, {"error": "not_found"})
    assert in_body.status_code == 400, in_body.content
    assert in_body.json()["field"] == "changes.0.id"
    assert stored_state() == before


case_masks = st.lists(st.booleans(), min_size=36, max_size=36)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mask=case_masks)
def test_an_id_in_any_mix_of_cases_names_the_same_item(api, apple, mask):
    written = "".join(c.upper() if upper else c for c, upper in zip(apple["id"], mask, strict=True))

    got = api.get(f"/items/{written}")
    moved = api.get(f"/items/{written}/movements")
    batch = api.post("/adjustments", {"changes": [{"id": written, "delta": 0}]})

    assert [r.status_code for r in (got, moved, batch)] == [200] * 3, written
    assert core(got.json()) == core(apple)
    assert moved.json()["movements"][0]["kind"] == "create"
    assert [core(item) for item in batch.json()["items"]] == [core(apple)]


ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@st.composite
def misspelt(draw, item_id: str) -> str:
    """The id with its hyphens dropped or moved, a character cut, added or swapped, or text
    around it; never 8-4-4-4-12 hex."""
    text = draw(st.sampled_from([item_id, item_id.upper(), item_id.replace("-", "")]))
    edit = draw(st.sampled_from(["none", "cut", "insert", "swap"]))
    at = draw(st.integers(0, len(text) - 1))
    char = draw(
        st.sampled_from("-0aAfFgG {}:\n\t\u00a0\uff10\u0660") | st.characters(exclude_categories=["Cs"])
    )
    if edit == "cut":
        text = text[:at] + text[at + 1 :]
    elif edit == "insert":
        text = text[:at] + char + text[at:]
    elif edit == "swap":
        text = text[:at] + char + text[at + 1 :]
    before = draw(st.sampled_from(["", " ", "{", "urn:uuid:", "URN:UUID:", "0"]))
    after = draw(st.sampled_from(["", " ", "}", "\n", "0", "\x00"]))
    written = before + text + after
    assume(not ID.fullmatch(written))
    return written


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_id_not_written_8_4_4_4_12_is_refused_in_a_path_and_in_a_body(api, apple, data):
    written = data.draw(misspelt(apple["id"]))
    before = stored_state()

    got = api.get(f"/items/{quote(written, safe='')}")
    adjusted = api.patch(f"/items/{quote(written, safe='')}/qty", {"delta": 1})
    batch = api.post("/adjustments", {"changes": [{"id": written, "delta": 1}]})

    assert (got.status_code, got.json()) == (404, {"error": "not_found"})
    assert (adjusted.status_code, adjusted.json()) == (404, {"error": "not_found"})
    assert (batch.status_code, batch.json()["field"]) == (400, "changes.0.id"), batch.content
    assert stored_state() == before


# Bounded metrics and token cache -------------------------------------------------------------------


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def request_log():
    """The messages of "inventory.request", which has its own handler and does not propagate."""
    logger = logging.getLogger("inventory.request")
    handler = Lines()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def series(text: str) -> dict[tuple, float]:
    """Every sample of a /metrics text: (name, labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


INVENTED_METHODS = [f"FOO{n}" for n in range(1, 101)] + ["M" * 4000]


def test_invented_methods_add_one_series_labelled_other_and_a_short_log_method(
    client, read_token, request_log
):
    anonymous, reader = Api(client), Api(client, read_token)
    anonymous.get("/items")  # the latency series of /items, and those of /metrics, exist now
    reader.get("/metrics")
    text_before = reader.get("/metrics").content.decode()
    request_log.clear()

    statuses = {anonymous.request(method, "/items").status_code for method in INVENTED_METHODS}

    text_after = reader.get("/metrics").content.decode()
    before, after = series(text_before), series(text_after)
    other = (("method", "other"), ("route", "/items"), ("status", "405"))
    assert statuses == {405}
    assert {labels for _, labels in after.keys() - before.keys()} <= {other}
    assert len(text_after) - len(text_before) < 1000  # one series more; no label holds a method sent
    counted = ("inventory_http_requests_total", other)
    assert after[counted] - before.get(counted, 0) == len(INVENTED_METHODS)  # none missed
    logged = [json.loads(message)["method"] for message in request_log[: len(INVENTED_METHODS)]]
    for sent, method in zip(INVENTED_METHODS, logged, strict=True):
        assert len(method) <= 16 and sent.startswith(method), (len(method), method[:20])


def test_the_token_cache_holds_at_most_its_bound_and_every_token_still_works(client, monkeypatch):
    monkeypatch.setattr(tokens, "CACHE_MAX_TOKENS", 5)
    monkeypatch.setattr(tokens, "_found", type(tokens._found)())
    issued = [new_token(f"client {n}", "read") for n in range(12)]

    first_round = [Api(client, token).get("/items").status_code for token in issued]

    assert first_round == [200] * 12
    assert len(tokens._found) <= 5
    again = [Api(client, token).get("/items").status_code for token in issued]
    assert again == [200] * 12
    assert len(tokens._found) <= 5
    assert Api(client, issued[0] + "x").get("/items").status_code == 401  # cached, yet checked


# Idempotency: refused before it runs, or refused by the service ------------------------------------

# A body refused before the view runs: name -> (raw body, content type).
MALFORMED = {
    "unknown field": ('{"name": "pear", "qty": 1, "colour": "green"}', JSON),
    "bad json": ('{"name": "pear", "qty": 1', JSON),
    "wrong type": ('{"name": "pear", "qty": "1"}', JSON),
    "not an object": ('[{"name": "pear", "qty": 1}]', JSON),
    "duplicate key": ('{"name": "pear", "qty": 1, "qty": 2}', JSON),
    "not json media type": ('{"name": "pear", "qty": 1}', "text/plain"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_key_used_with_a_malformed_body_is_not_spent(api, apple, case):
    raw, content_type = MALFORMED[case]
    before = stored_state()

    refused = api.request("POST", "/items", raw=raw, content_type=content_type, Idempotency_Key="K")

    assert refused.status_code in (400, 415), refused.content
    assert stored_state() == before
    ran = api.post("/items", {"name": "plum", "qty": 3}, Idempotency_Key="K")
    assert ran.status_code == 201, ran.content
    assert "Idempotent-Replayed" not in ran
    assert {item["name"]: item["qty"] for item in api.all_items().values()} == {"apple": 5, "plum": 3}
    replayed = api.post("/items", {"name": "plum", "qty": 3}, Idempotency_Key="K")
    assert (replayed.status_code, replayed.content) == (201, ran.content)
    assert replayed["Idempotent-Replayed"] == "true"


# A request the service refuses: name -> (method, path, body, status, another body for the key).
REFUSED = {
    "below zero": ("PATCH", "/items/{id}/qty", {"delta": -6}, 400, {"delta": -5}),
    "stale": ("PATCH", "/items/{id}/qty", {"delta": 1, "expected_qty": 4}, 409, {"delta": 1}),
    "unknown item": ("PATCH", "/items/{new}/qty", {"delta": 1}, 404, {"delta": 2}),
    "taken name": ("POST", "/items", {"name": "apple", "qty": 1}, 400, {"name": "pear", "qty": 1}),
    "batch with an unknown item": (
        "POST",
        "/adjustments",
        {"changes": [{"id": "{id}", "delta": 1}, {"id": "{new}", "delta": 1}]},
        404,
        {"changes": [{"id": "{id}", "delta": 1}]},
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_key_used_with_a_request_the_service_refuses_stores_the_refusal(api, apple, case):
    method, path, body, status, other = fill(REFUSED[case], id=apple["id"], new=str(uuid.uuid4()))
    items_before, movements_before, _ = stored_state()

    first = api.request(method, path, body, Idempotency_Key="K2")
    repeat = api.request(method, path, body, Idempotency_Key="K2")
    different = api.request(method, path, other, Idempotency_Key="K2")

    assert first.status_code == status, first.content
    assert "Idempotent-Replayed" not in first
    assert (repeat.status_code, repeat.content, repeat["Idempotent-Replayed"]) == (
        status,
        first.content,
        "true",
    )
    assert different.status_code == 422, different.content
    assert different.json()["field"] == "Idempotency-Key"
    assert stored_state()[:2] == (items_before, movements_before)
    assert list(IdempotencyKey.objects.values_list("key", "status")) == [("K2", status)]


def revoked_token(write_token: str) -> str:
    token = new_token("leaver", "write")
    call_command("token", "revoke", "leaver", stdout=io.StringIO())
    return f"Bearer {token}"


# A token refused before the view runs: name -> the Authorization header, given the write token.
REFUSED_TOKENS = {
    "none": lambda write_token: None,
    "not bearer": lambda write_token: "Basic dXNlcjpwYXNz",
    "unknown": lambda write_token: "Bearer inv_0123456789abcdef.nonsense",
    "wrong secret": lambda write_token: f"Bearer {write_token}x",
    "revoked": revoked_token,
    "read scope": lambda write_token: f"Bearer {new_token('reader', 'read')}",
}


@pytest.mark.parametrize("case", REFUSED_TOKENS)
def test_a_key_used_with_a_refused_token_is_not_spent(client, api, apple, write_token, case):
    authorization = REFUSED_TOKENS[case](write_token)
    headers = {} if authorization is None else {"Authorization": authorization}
    path = f"/items/{apple['id']}/qty"
    before = stored_state()

    refused = Api(client).request("PATCH", path, {"delta": -1}, Idempotency_Key="K3", **headers)

    assert refused.status_code in (401, 403), refused.content
    assert stored_state() == before
    ran = api.patch(path, {"delta": 2}, Idempotency_Key="K3")
    assert (ran.status_code, ran.json()["qty"]) == (200, 7)
    assert "Idempotent-Replayed" not in ran
    assert Item.objects.get(pk=apple["id"]).qty == 7


# Pruning -------------------------------------------------------------------------------------------


def rows_named(sql: str) -> int:
    """How many rows a DELETE names by primary key (WHERE ... IN (...))."""
    listed = re.search(r"\bIN \(([^()]*)\)", sql)
    assert listed is not None, f"a DELETE that names no rows, so deletes any number: {sql}"
    return len(listed.group(1).split(","))


def test_pruning_deletes_old_keys_a_few_rows_per_transaction_and_keeps_younger_ones(api, apple, monkeypatch):
    monkeypatch.setattr(idempotency, "PRUNE_BATCH", 3)
    path = f"/items/{apple['id']}/qty"
    for n in range(13):
        assert api.patch(path, {"delta": 1}, Idempotency_Key=f"key-{n}").status_code == 200
    now = timezone.now()
    old = [f"key-{n}" for n in range(10)]
    IdempotencyKey.objects.filter(key__in=old).update(created_at=now - datetime.timedelta(hours=25))
    IdempotencyKey.objects.filter(key="key-10").update(
        created_at=now - datetime.timedelta(hours=23, minutes=59)
    )

    with CaptureQueriesContext(connection) as queries:
        call_command("prune_idempotency_keys", stdout=io.StringIO())

    assert sorted(IdempotencyKey.objects.values_list("key", flat=True)) == ["key-10", "key-11", "key-12"]
    statements = [query["sql"] for query in queries.captured_queries]
    deletes = [sql for sql in statements if sql.upper().startswith("DELETE")]
    assert len(deletes) >= 4, statements
    # Each transaction (a savepoint here, inside the test's own transaction) deletes at most 3.
    transactions, current = [], None
    for sql in statements:
        verb = sql.split()[0].upper()
        if verb in ("SAVEPOINT", "BEGIN"):
            current = []
        elif verb in ("RELEASE", "COMMIT"):
            transactions.append(current)
            current = None
        elif verb == "DELETE":
            assert current is not None, f"a DELETE outside a transaction: {sql}"
            current.append(rows_named(sql))
    deleted = [sum(rows) for rows in transactions if rows]
    assert max(deleted) <= 3, deleted
    assert sum(deleted) == 10, deleted
    # A pruned key runs again; a kept one is still replayed.
    again = api.patch(path, {"delta": 1}, Idempotency_Key="key-0")
    kept = api.patch(path, {"delta": 1}, Idempotency_Key="key-10")
    assert ("Idempotent-Replayed" in again, kept["Idempotent-Replayed"]) == (False, "true")
    assert Item.objects.get(pk=apple["id"]).qty == 5 + 13 + 1
