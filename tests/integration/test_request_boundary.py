"""What every request gets at the boundary: its id, one log line, body limits, readiness,
security headers and the Host check."""

import datetime
import json
import logging
import re

import pytest
from django.db import InternalError, OperationalError
from django.db.migrations.executor import MigrationExecutor

from inventory import integrity, items
from inventory.models import IdempotencyKey, Item, Movement
from tests.conftest import Api

pytestmark = pytest.mark.django_db

MIB = 1024 * 1024
NEW_REQUEST_ID = re.compile(r"[0-9a-f]{32}")
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}

# One request for each kind of response, on the item "apple" (qty 5):
# kind -> (token, method, path, raw body, content type, extra headers).
KINDS = {
    "200": ("write", "GET", "/items/{id}", None, None, {}),
    "201": ("write", "POST", "/items", '{"name": "pear", "qty": 1}', "application/json", {}),
    "204": ("write", "DELETE", "/items/{id}", None, None, {}),
    "400": ("write", "POST", "/items", '{"name": " ", "qty": 1}', "application/json", {}),
    "400 host": ("write", "GET", "/healthz", None, None, {"Host": "evil.example"}),
    "401": (None, "GET", "/items", None, None, {}),
    "403": ("read", "DELETE", "/items/{id}", None, None, {}),
    "404": ("write", "GET", "/no/such/route", None, None, {}),
    "405": ("write", "PUT", "/items", None, None, {}),
    "413": ("write", "POST", "/items", " " * (MIB + 1), "application/json", {}),
    "415": ("write", "POST", "/items", '{"name": "pear", "qty": 1}', "text/plain", {}),
    "500": ("write", "PATCH", "/items/{id}", '{"name": "pear"}', "application/json", {}),
    "503": ("write", "GET", "/readyz", None, None, {}),
}


def stored_state() -> tuple[list, list, list]:
    """Items, movements and idempotency keys as stored."""
    return (
        list(Item.objects.order_by("id").values_list()),
        list(Movement.objects.order_by("id").values_list()),
        list(IdempotencyKey.objects.order_by("id").values_list()),
    )


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def request_log():
    """The messages of "inventory.request". It does not propagate (it has its own handler),
    so caplog, which listens on the root logger, would see nothing: a handler goes on it."""
    logger = logging.getLogger("inventory.request")
    handler = Lines()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


def only_line(messages: list[str]) -> dict:
    assert len(messages) == 1, messages
    return json.loads(messages[0])


@pytest.fixture
def apple(api) -> dict:
    return api.create("apple", 5)


@pytest.fixture
def send(client, write_token, read_token, apple, monkeypatch):
    """send(kind, **headers): the request of KINDS[kind]."""

    def broken(**kwargs):
        raise RuntimeError("boom")

    # Only the "500" row renames and only the "503" row asks /readyz.
    monkeypatch.setattr(items, "item_update", broken)
    monkeypatch.setattr(integrity, "database_ready", lambda: False)
    tokens = {"write": write_token, "read": read_token, None: None}

    def send(kind: str, **headers):
        token, method, path, raw, content_type, extra = KINDS[kind]
        api = Api(client, tokens[token])
        path = path.replace("{id}", apple["id"])
        return api.request(method, path, raw=raw, content_type=content_type or "", **extra, **headers)

    return send


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_response_echoes_a_sane_request_id(send, kind):
    sent = "case-" + kind.replace(" ", ".")

    response = send(kind, X_Request_ID=sent)

    assert response.status_code == int(kind[:3])
    assert response["X-Request-ID"] == sent
    if response.status_code == 204:
        assert response.content == b""
    else:
        assert response["Content-Type"].startswith("application/json")
        body = response.json()
        if response.status_code >= 400:
            assert isinstance(body["error"], str)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_response_gets_a_new_request_id_when_none_is_sent(send, kind):
    response = send(kind)
    assert NEW_REQUEST_ID.fullmatch(response["X-Request-ID"])


def test_a_500_names_its_request_id_and_no_traceback(send):
    response = send("500")
    assert response.json() == {"error": "internal_error", "request_id": response["X-Request-ID"]}


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_response_writes_one_log_line(send, request_log, kind):
    request_log.clear()  # the fixtures' own requests (making "apple") are logged too

    response = send(kind)

    line = only_line(request_log)
    assert line["status"] == response.status_code
    assert line["request_id"] == response["X-Request-ID"]


@pytest.mark.parametrize(
    "kind",
    KINDS,
)
def test_every_kind_of_response_has_the_security_headers(send, kind):
    response = send(kind)

    assert {name: response.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    assert response.get("Referrer-Policy")


SANE_IDS = ["a", "0123456789", "A.b_c:d-E", "x" * 128, "3f2c9a1e-6b7d-4c1e-9f0a-2b3c4d5e6f70"]
INSANE_IDS = ["", "x" * 129, "with space", "line\nbreak", "tab\there", "caf\u00e9", "a/b", "a;b", "<script>"]


@pytest.mark.parametrize("sent", SANE_IDS)
def test_a_sane_request_id_is_echoed(client, sent):
    assert Api(client).get("/healthz", X_Request_ID=sent)["X-Request-ID"] == sent


@pytest.mark.parametrize("sent", INSANE_IDS)
def test_an_insane_request_id_is_replaced_with_a_new_one(client, sent):
    assert NEW_REQUEST_ID.fullmatch(Api(client).get("/healthz", X_Request_ID=sent)["X-Request-ID"])


def test_each_request_without_an_id_gets_its_own(client):
    first, second = Api(client).get("/healthz"), Api(client).get("/healthz")
    assert first["X-Request-ID"] != second["X-Request-ID"]


BASE_FIELDS = {"time", "request_id", "method", "route", "status", "duration_ms", "token"}
ITEM = "/items/{item_id}"  # ninja's converter; the README documents this template

# request -> (token sent, method, path, body, route, status, token logged, delta logged or None).
# A route that does not exist never checks the token, so its line names none.
LOGGED = {
    "probe": (None, "GET", "/healthz", None, "/healthz", 200, None, None),
    "list": ("write", "GET", "/items", None, "/items", 200, "test writer", None),
    "get": ("read", "GET", "/items/{id}", None, ITEM, 200, "test reader", None),
    "create": ("write", "POST", "/items", {"name": "pear", "qty": 7}, "/items", 201, "test writer", 7),
    "adjust": ("write", "PATCH", "/items/{id}/qty", {"delta": -2}, ITEM + "/qty", 200, "test writer", -2),
    "refused": ("write", "PATCH", "/items/{id}/qty", {"delta": -9}, ITEM + "/qty", 400, "test writer", -9),
    "no scope": ("read", "DELETE", "/items/{id}", None, ITEM, 403, "test reader", None),
    "no token": (None, "GET", "/items", None, "/items", 401, None, None),
    "unknown route": ("write", "GET", "/no/such/route", None, "(unmatched)", 404, None, None),
    "id not a uuid": ("write", "GET", "/items/not-a-uuid", None, "(unmatched)", 404, None, None),
    "delete": ("write", "DELETE", "/items/{id}", None, ITEM, 204, "test writer", -5),
}


@pytest.mark.parametrize("case", LOGGED)
def test_the_log_line_has_the_route_template_and_the_token_name(
    client, write_token, read_token, apple, request_log, case
):
    token, method, path, body, route, status, token_name, delta = LOGGED[case]
    api = Api(client, {"write": write_token, "read": read_token, None: None}[token])
    request_log.clear()

    response = api.request(method, path.replace("{id}", apple["id"]), body)

    line = only_line(request_log)
    assert response.status_code == status
    assert datetime.datetime.fromisoformat(line["time"]).tzinfo is not None
    assert line["request_id"] == response["X-Request-ID"]
    assert (line["method"], line["route"], line["status"]) == (method, route, status)
    assert type(line["duration_ms"]) in (int, float) and line["duration_ms"] >= 0
    assert line["token"] == token_name
    if delta is None:
        assert set(line) == BASE_FIELDS
    else:
        item_id = response.json()["id"] if method == "POST" else apple["id"]
        assert set(line) == BASE_FIELDS | {"item_id", "delta"}
        assert (line["item_id"], line["delta"]) == (item_id, delta)


MARKER = "secret-body-marker"

# Requests that carry a marker in the body, or a token, that the log line must not repeat.
UNLOGGED = {
    "create": ("POST", "/items", {"name": MARKER, "qty": 1}, None),
    "rename": ("PATCH", "/items/{id}", {"name": MARKER}, None),
    "adjust reason": ("PATCH", "/items/{id}/qty", {"delta": 1, "reason": MARKER}, None),
    "adjust reference": ("PATCH", "/items/{id}/qty", {"delta": 1, "reference": MARKER}, None),
    "batch reference": (
        "POST",
        "/adjustments",
        {"changes": [{"id": "{id}", "delta": 1}], "reference": MARKER},
        None,
    ),
    "refused body": ("POST", "/items", {"name": MARKER, "qty": -1}, None),
    "bad token": ("GET", "/items", None, f"Bearer inv_0123456789abcdef.{MARKER}"),
    "malformed header": ("GET", "/items", None, f"Bearer {MARKER}"),
}


@pytest.mark.parametrize("case", UNLOGGED)
def test_the_log_line_never_holds_the_token_or_the_body(api, write_token, apple, request_log, case):
    method, path, body, authorization = UNLOGGED[case]
    headers = {} if authorization is None else {"Authorization": authorization}
    body = None if body is None else json.loads(json.dumps(body).replace("{id}", apple["id"]))
    request_log.clear()

    api.request(method, path.replace("{id}", apple["id"]), body, **headers)

    assert len(request_log) == 1
    message = request_log[0]
    assert MARKER not in message
    assert write_token.partition(".")[2] not in message


# Every write with a body, on the item "apple": (method, path, body, success status).
BODY_WRITES = {
    "create": ("POST", "/items", {"name": "pear", "qty": 1}, 201),
    "rename": ("PATCH", "/items/{id}", {"name": "pear"}, 200),
    "adjust": ("PATCH", "/items/{id}/qty", {"delta": 1}, 200),
    "batch": ("POST", "/adjustments", {"changes": [{"id": "{id}", "delta": 1}]}, 200),
}


def body_write(name: str, item: dict) -> tuple[str, str, str, int]:
    """(method, path, body as JSON text, success status) of BODY_WRITES[name] on `item`."""
    method, path, body, status = BODY_WRITES[name]
    return method, path.replace("{id}", item["id"]), json.dumps(body).replace("{id}", item["id"]), status


def padded(text: str, size: int) -> str:
    """The same JSON, with trailing white space up to `size` bytes."""
    return text + " " * (size - len(text.encode()))


@pytest.mark.parametrize("endpoint", BODY_WRITES)
def test_a_body_over_1_mib_is_413_and_writes_nothing(api, apple, endpoint):
    method, path, body, _ = body_write(endpoint, apple)
    before = stored_state()

    response = api.request(method, path, raw=padded(body, MIB + 1))

    assert response.status_code == 413
    assert isinstance(response.json()["error"], str)
    assert stored_state() == before


@pytest.mark.parametrize("endpoint", BODY_WRITES)
def test_a_body_of_exactly_1_mib_is_accepted(api, apple, endpoint):
    method, path, body, status = body_write(endpoint, apple)
    assert api.request(method, path, raw=padded(body, MIB)).status_code == status


NOT_JSON = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=X", "text/xml"]


@pytest.mark.parametrize("content_type", NOT_JSON)
@pytest.mark.parametrize("endpoint", BODY_WRITES)
def test_a_body_that_is_not_application_json_is_415_and_writes_nothing(api, apple, endpoint, content_type):
    method, path, body, _ = body_write(endpoint, apple)
    before = stored_state()

    response = api.request(method, path, raw=body, content_type=content_type)

    assert response.status_code == 415
    assert isinstance(response.json()["error"], str)
    assert stored_state() == before


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
@pytest.mark.parametrize("endpoint", BODY_WRITES)
def test_application_json_with_parameters_or_in_capitals_is_accepted(api, apple, endpoint, content_type):
    method, path, body, status = body_write(endpoint, apple)
    assert api.request(method, path, raw=body, content_type=content_type).status_code == status


def test_readyz_is_ok_when_the_database_is_migrated(client):
    response = Api(client).get("/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def unreachable(connection):
    raise OperationalError("could not connect to server")


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda mp: mp.setattr(integrity, "MigrationExecutor", unreachable), id="database down"),
        pytest.param(
            lambda mp: mp.setattr(MigrationExecutor, "migration_plan", lambda self, targets: [("m", False)]),
            id="migration pending",
        ),
    ],
)
def test_readyz_is_503_when_not_ready_while_healthz_stays_200(client, monkeypatch, breakage):
    breakage(monkeypatch)

    ready, health = Api(client).get("/readyz"), Api(client).get("/healthz")

    assert ready.status_code == 503
    assert isinstance(ready.json()["error"], str)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


def test_a_host_not_allowed_is_a_json_400(client, settings):
    settings.ALLOWED_HOSTS = ["localhost"]

    refused = client.get("/healthz", HTTP_HOST="evil.example")
    allowed = client.get("/healthz", HTTP_HOST="localhost")

    assert refused.status_code == 400
    assert isinstance(refused.json()["error"], str)
    assert allowed.status_code == 200


def test_a_host_not_allowed_is_a_json_400_also_when_https_redirects_ask_for_it_first(client, settings):
    # SecurityMiddleware asks for the host to build its redirect, before json_errors runs.
    settings.ALLOWED_HOSTS = ["localhost"]
    settings.SECURE_SSL_REDIRECT = True

    refused = client.get("/healthz", HTTP_HOST="evil.example")
    redirected = client.get("/healthz", HTTP_HOST="localhost")

    assert (refused.status_code, refused.json()) == (400, {"error": "host not allowed"})
    assert (redirected.status_code, redirected["Location"]) == (301, "https://localhost/healthz")


def test_a_transaction_the_database_ended_for_idling_is_a_503_not_a_500(api, apple, monkeypatch):
    # PostgreSQL's idle_in_transaction_session_timeout arrives as psycopg's InternalError
    # (SQLSTATE 25P03): nothing was committed and a retry may succeed.
    class Ended(Exception):
        sqlstate = "25P03"

    def ended(**kwargs):
        try:
            raise Ended("terminating connection due to idle-in-transaction timeout")
        except Ended as cause:
            raise InternalError("terminating connection") from cause

    monkeypatch.setattr(items, "qty_adjust", ended)
    before = stored_state()

    response = api.patch(f"/items/{apple['id']}/qty", {"delta": 1})

    assert response.status_code == 503
    assert response.json()["error"] == "database_unavailable"
    assert response["Retry-After"] == "1"
    assert stored_state() == before
