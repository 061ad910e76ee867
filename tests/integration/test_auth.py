"""Bearer tokens on every endpoint: who may call what, and that a refused call changes nothing."""

import io
import json
import pathlib
import secrets

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from inventory import tokens
from inventory.models import IdempotencyKey, Item, Movement, Token
from tests.conftest import Api

pytestmark = pytest.mark.django_db

# Every endpoint that needs a token, called on the item "apple" (qty 5):
# name -> (method, path, body, status with a write token).
ENDPOINTS = {
    "create": ("POST", "/items", {"name": "pear", "qty": 1}, 201),
    "list": ("GET", "/items", None, 200),
    "get": ("GET", "/items/{id}", None, 200),
    "rename": ("PATCH", "/items/{id}", {"name": "pear"}, 200),
    "delete": ("DELETE", "/items/{id}", None, 204),
    "adjust": ("PATCH", "/items/{id}/qty", {"delta": -1}, 200),
    "batch": ("POST", "/adjustments", {"changes": [{"id": "{id}", "delta": -1}]}, 200),
    "movements": ("GET", "/items/{id}/movements", None, 200),
    "metrics": ("GET", "/metrics", None, 200),
}
READS = [name for name, (method, *_) in ENDPOINTS.items() if method == "GET"]
WRITES = [name for name, (method, *_) in ENDPOINTS.items() if method != "GET"]
OPEN = ["/healthz", "/readyz", "/openapi.json", "/docs"]


def _key(token: str) -> str:
    return token.partition(".")[0]


def _secret(token: str) -> str:
    return token.partition(".")[2]


LATIN1_JUNK = "".join(chr(c) for c in range(0x21, 0x100) if c != 0x7F)

# Authorization headers that must get 401, each made from a valid write token (None: no header).
REJECTED = {
    "no header": lambda token: None,
    "scheme only": lambda token: "Bearer",
    "scheme and a space": lambda token: "Bearer ",
    "basic": lambda token: "Basic abc",
    "token scheme": lambda token: f"Token {token}",
    "no scheme": lambda token: token,
    "trailing garbage": lambda token: f"Bearer {token}x",
    "trailing word": lambda token: f"Bearer {token} x",
    "key without secret": lambda token: f"Bearer {_key(token)}",
    "empty secret": lambda token: f"Bearer {_key(token)}.",
    "other format (JWT)": lambda token: "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "10 KB of junk": lambda token: "Bearer " + (LATIN1_JUNK * 60)[:10240],
    "10 KB key": lambda token: f"Bearer inv_{'a' * 10240}.{_secret(token)}",
    "wrong secret": lambda token: f"Bearer {_key(token)}.{secrets.token_urlsafe(32)}",
    "wrong key": lambda token: f"Bearer inv_{secrets.token_hex(8)}.{_secret(token)}",
}


def stored_state() -> tuple[list, list, list]:
    """Items, movements and idempotency keys as stored."""
    return (
        list(Item.objects.order_by("id").values_list()),
        list(Movement.objects.order_by("id").values_list()),
        list(IdempotencyKey.objects.order_by("id").values_list()),
    )


def call(client, endpoint: str, item: dict, authorization: str | None):
    """One request to an endpoint, on `item`, with exactly this Authorization header (or none)."""
    method, path, body, _ = ENDPOINTS[endpoint]
    path = path.replace("{id}", item["id"])
    body = json.loads(json.dumps(body).replace("{id}", item["id"]))
    headers = {} if authorization is None else {"Authorization": authorization}
    return Api(client).request(method, path, body, **headers)


def assert_unauthorized(response):
    assert response.status_code == 401
    assert isinstance(response.json()["error"], str)
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.fixture
def apple(api) -> dict:
    return api.create("apple", 5)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("header", REJECTED.values(), ids=REJECTED.keys())
def test_a_missing_or_bad_token_is_401_and_changes_nothing(client, write_token, apple, endpoint, header):
    before = stored_state()

    response = call(client, endpoint, apple, header(write_token))

    assert_unauthorized(response)
    assert stored_state() == before


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_revoked_token_is_401_and_changes_nothing(client, apple, endpoint):
    token = tokens.token_create(name="former writer", scope="write")
    call_command("token", "revoke", "former writer", stdout=io.StringIO())
    before = stored_state()

    response = call(client, endpoint, apple, f"Bearer {token}")

    assert_unauthorized(response)
    assert stored_state() == before


@pytest.mark.parametrize("endpoint", READS)
def test_a_read_token_may_read(client, read_token, apple, endpoint):
    response = call(client, endpoint, apple, f"Bearer {read_token}")
    assert response.status_code == ENDPOINTS[endpoint][3]


def test_a_read_token_gets_404_for_an_unknown_item(client, read_token):
    response = call(client, "get", {"id": "00000000-0000-4000-8000-000000000000"}, f"Bearer {read_token}")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found"}


@pytest.mark.parametrize("endpoint", WRITES)
def test_a_read_token_may_not_write_and_changes_nothing(client, read_token, apple, endpoint):
    before = stored_state()

    response = call(client, endpoint, apple, f"Bearer {read_token}")

    assert response.status_code == 403
    assert isinstance(response.json()["error"], str)
    assert stored_state() == before


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])  # the scheme is case-insensitive
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_a_write_token_may_call_every_endpoint(client, write_token, apple, endpoint, scheme):
    response = call(client, endpoint, apple, f"{scheme} {write_token}")
    assert response.status_code == ENDPOINTS[endpoint][3], response.content


@pytest.mark.parametrize("header", [None, "Bearer inv_0123456789abcdef.nonsense", "Basic abc"])
@pytest.mark.parametrize("path", OPEN)
def test_open_endpoints_answer_without_a_token_and_ignore_a_bad_one(client, path, header):
    headers = {} if header is None else {"Authorization": header}
    assert Api(client).get(path, **headers).status_code == 200


def test_openapi_requires_the_bearer_scheme_on_every_operation_but_the_probes(client):
    document = Api(client).get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    bearer = [
        name
        for name, scheme in schemes.items()
        if (scheme["type"], scheme.get("scheme")) == ("http", "bearer")
    ]
    assert len(bearer) == 1
    operations = {
        (method.upper(), path): operation.get("security")
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    probes = {("GET", "/healthz"), ("GET", "/readyz")}
    assert probes < operations.keys()
    assert {("POST", "/items"), ("PATCH", "/items/{item_id}/qty"), ("GET", "/metrics")} < operations.keys()
    for operation, security in operations.items():
        if operation in probes:
            assert not security, operation
        else:
            assert security == [{bearer[0]: []}], operation


def run_token(*args: str) -> str:
    out = io.StringIO()
    call_command("token", *args, stdout=out)
    return out.getvalue()


def test_token_create_prints_the_token_alone_and_it_works_with_its_scope(client, apple):
    output = run_token("create", "stock reader", "--scope", "read")

    token = output.removesuffix("\n")
    assert output == token + "\n" and token.startswith("inv_")
    assert token.split() == [token]  # one word: nothing else on the line
    reader = Api(client, token)
    assert reader.get("/items").status_code == 200
    assert reader.delete(f"/items/{apple['id']}").status_code == 403


def test_token_create_stores_no_plaintext_secret(db):
    token = run_token("create", "stock writer", "--scope", "write").strip()

    row = Token.objects.filter(name="stock writer").values().get()
    stored = " ".join(str(value) for value in row.values())
    assert _secret(token) not in stored
    assert row["scope"] == "write"


def test_token_create_refuses_a_second_active_token_with_the_same_name(client):
    first = run_token("create", "stock writer", "--scope", "write").strip()

    with pytest.raises(CommandError):
        run_token("create", "stock writer", "--scope", "read")

    assert Token.objects.filter(name="stock writer").count() == 1
    assert Api(client, first).get("/items").status_code == 200


def test_token_revoke_of_an_unknown_name_fails(db):
    with pytest.raises(CommandError):
        run_token("revoke", "nobody")


def test_token_list_shows_names_and_scopes_never_secrets(db):
    reader = run_token("create", "stock reader", "--scope", "read").strip()
    writer = run_token("create", "stock writer", "--scope", "write").strip()

    output = run_token("list")

    listed = {tuple(line.split("\t")[:2]) for line in output.splitlines()}
    assert {("stock reader", "read"), ("stock writer", "write")} <= listed
    for token in (reader, writer):
        assert _secret(token) not in output


def test_after_revoke_the_name_can_be_reused_and_only_the_new_token_works(client):
    old = run_token("create", "stock writer", "--scope", "write").strip()
    run_token("revoke", "stock writer")

    new = run_token("create", "stock writer", "--scope", "write").strip()

    assert Api(client, new).get("/items").status_code == 200
    assert_unauthorized(Api(client, old).get("/items"))


@pytest.mark.parametrize("endpoint", WRITES)
def test_browser_cookies_alone_cannot_change_anything(client, apple, endpoint):
    client.cookies["sessionid"] = "abc123"
    client.cookies["csrftoken"] = "def456"
    before = stored_state()

    response = call(client, endpoint, apple, None)

    assert_unauthorized(response)
    assert stored_state() == before


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_no_endpoint_sets_a_cookie(client, write_token, apple, endpoint):
    for authorization in (f"Bearer {write_token}", None):  # answered and refused
        response = call(client, endpoint, apple, authorization)
        assert not response.cookies
        assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize("path", OPEN)
def test_no_open_endpoint_sets_a_cookie(client, path):
    response = Api(client).get(path)
    assert not response.cookies
    assert "Set-Cookie" not in response.headers


def test_no_view_is_csrf_exempt():
    # With no cookies or sessions there is nothing for CSRF to protect, so nothing opts out of it.
    base = pathlib.Path(settings.BASE_DIR)
    sources = [*(base / "inventory").rglob("*.py"), *(base / "config").rglob("*.py")]
    assert len(sources) > 10
    assert [str(path) for path in sources if "csrf_exempt" in path.read_text()] == []


# What a cross-site HTML form (or a no-preflight fetch) can send: never application/json.
FORM_POSTS = {
    "form": ("application/x-www-form-urlencoded", "name=pear&qty=1"),
    "text": ("text/plain", '{"name": "pear", "qty": 1}'),
    "multipart": (
        "multipart/form-data; boundary=X",
        '--X\r\nContent-Disposition: form-data; name="name"\r\n\r\npear\r\n--X--\r\n',
    ),
}


@pytest.mark.parametrize(("content_type", "body"), FORM_POSTS.values(), ids=FORM_POSTS.keys())
def test_a_cross_site_form_post_is_415_even_with_a_write_token(api, apple, content_type, body):
    before = stored_state()

    response = api.post("/items", raw=body, content_type=content_type)

    assert response.status_code == 415
    assert isinstance(response.json()["error"], str)
    assert stored_state() == before


class Clock:
    """time.monotonic for inventory.tokens, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_token_revoked_by_another_process_is_refused_once_the_cache_time_has_passed(
    client, apple, monkeypatch, settings
):
    settings.TOKEN_CACHE_SECONDS = 2
    clock = Clock()
    monkeypatch.setattr("inventory.tokens.time.monotonic", clock)
    token = tokens.token_create(name="cached", scope="read")
    api = Api(client, token)
    assert api.get("/items").status_code == 200

    # Another process revokes it: this one is not told, and trusts it for 2 seconds more.
    Token.objects.filter(name="cached").update(revoked_at="2026-01-01T00:00:00Z")
    clock.now += 1.9
    trusted = api.get("/items").status_code
    clock.now += 0.2
    refused = api.get("/items")

    assert trusted == 200
    assert_unauthorized(refused)
    assert_unauthorized(api.get("/items"))


def test_a_token_revoked_in_this_process_is_refused_at_once(client, apple):
    token = tokens.token_create(name="cached", scope="write")
    api = Api(client, token)
    assert api.get("/items").status_code == 200

    assert tokens.token_revoke(name="cached")

    assert_unauthorized(api.get("/items"))
