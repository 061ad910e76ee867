"""Webhooks through HTTP and their delivery: every endpoint and refusal (the admin scope, bodies,
ids, at most 100, the secret shown once), and delivery to fake receivers: in order, each
attempt signed, retried with back-off, disabled after the limit, resumed where it stopped,
passing over the types a webhook does not name, one receiver never holding back another,
two workers never sending an event at the same time, and state kept in the database.

Time is the service's clock (inventory.clock.now), replaced by one that stands still until a
test moves it; it starts at the real time, so that receivers can verify signatures (the
Standard Webhooks library refuses timestamps more than 5 minutes off). Receivers replace
inventory.outbound.post, or are a real HTTP server on loopback (WEBHOOKS_ALLOW_PRIVATE).
"""

import base64
import datetime
import http.server
import io
import ipaddress
import json
import ssl
import subprocess
import threading
import uuid

import pytest
import standardwebhooks
from django.core.management import call_command
from prometheus_client import REGISTRY

from inventory import clock, events, outbound, tokens, webhooks
from inventory.models import Delivery, Event, IdempotencyKey, Webhook
from tests.conftest import Api

pytestmark = pytest.mark.django_db

MISSING = "00000000-0000-4000-8000-000000000000"
URL = "https://hooks.example/in"
WEBHOOK_FIELDS = {
    "id",
    "url",
    "events",
    "description",
    "enabled",
    "disabled_reason",
    "created_at",
    "failing_since",
    "next_attempt_at",
}


class FakeClock:
    """The service's clock, standing still (at a whole second) until a test moves it."""

    def __init__(self):
        self.now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        self.start = self.now

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)

    def to(self, instant: datetime.datetime) -> None:
        self.now = max(self.now, instant)


@pytest.fixture(autouse=True)
def now(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(clock, "now", fake)
    return fake


@pytest.fixture(autouse=True)
def dns(monkeypatch):
    """Names under .example resolve to a public address; private.example to a private one;
    nowhere.example to nothing."""

    def resolve(host, port, *, timeout):
        if host == "nowhere.example":
            raise outbound.Unreachable(f"{host} does not resolve")
        address = "10.0.0.7" if host == "private.example" else "93.184.215.14"
        return [ipaddress.ip_address(address)]

    monkeypatch.setattr(outbound, "resolve", resolve)


@pytest.fixture(autouse=True)
def worker(monkeypatch):
    """This test's own attempts in flight (as a fresh process has none); at the end, every
    attempt still running is let go and waited for."""
    fresh = webhooks._Deliveries()
    monkeypatch.setattr(webhooks, "_deliveries", fresh)
    yield fresh
    Receiver.release_all()
    if fresh.pool is not None:
        fresh.pool.shutdown(wait=True)


class Receiver:
    """A fake receiver in place of outbound.post: records every attempt and answers as told,
    per URL: a status, (status, error), or "block" (waits until released, then 200) or
    ("block", status)."""

    instances: list["Receiver"] = []

    def __init__(self):
        self.attempts: list[dict] = []
        self.script: dict[str, list] = {}
        self.default = 200
        self.lock = threading.Lock()
        self.gate = threading.Event()
        Receiver.instances.append(self)

    @classmethod
    def release_all(cls):
        for receiver in cls.instances:
            receiver.gate.set()
        cls.instances = []

    def answer(self, url: str, *answers) -> None:
        self.script.setdefault(url, []).extend(answers)

    def __call__(self, url, *, body, headers, allow_private):
        with self.lock:
            self.attempts.append({"url": url, "body": body, "headers": headers, "event": json.loads(body)})
            script = self.script.get(url)
            answer = script.pop(0) if script else self.default
        if answer == "block" or (isinstance(answer, tuple) and answer[0] == "block"):
            self.gate.wait(30)
            answer = 200 if answer == "block" else answer[1]
        status, error = answer if isinstance(answer, tuple) else (answer, None)
        if status is not None and not 200 <= status < 300 and error is None:
            error = "no thanks"
        return outbound.Answer(status, error, 0.005)

    def to(self, url: str) -> list[dict]:
        return [attempt for attempt in self.attempts if attempt["url"] == url]

    def types(self, url: str = URL) -> list[str]:
        return [attempt["event"]["type"] for attempt in self.to(url)]


@pytest.fixture
def receiver(monkeypatch) -> Receiver:
    fake = Receiver()
    monkeypatch.setattr(outbound, "post", fake)
    return fake


@pytest.fixture
def admin_token(db) -> str:
    return tokens.token_create(name="test admin", scope="admin")


@pytest.fixture
def admin(client, admin_token) -> Api:
    return Api(client, admin_token)


def make(admin: Api, url: str = URL, events_: list[str] | None = None, **fields) -> dict:
    response = admin.post("/webhooks", {"url": url, "events": events_ or ["*"], **fields})
    assert response.status_code == 201, response.content
    return response.json()


def publish(*types: str) -> list[Event]:
    """Events of these types, written in one transition as a change writes them."""
    with events.transition(actor="test writer", request_id="req-1"):
        for number, type_ in enumerate(types):
            events.emit(type_, data={"n": number}, item_id=uuid.uuid4())
    return list(Event.objects.order_by("-seq")[: len(types)])[::-1]


def deliver(**kwargs) -> int:
    """A worker's round that waits until no attempt is in flight."""
    return webhooks.deliver_due(wait_seconds=None, **kwargs)


def row(webhook: dict) -> Webhook:
    return Webhook.objects.get(pk=webhook["id"])


def stored() -> tuple[list, list, list]:
    return (
        list(Webhook.objects.order_by("id").values_list()),
        list(Delivery.objects.order_by("id").values_list()),
        list(IdempotencyKey.objects.order_by("id").values_list()),
    )


def instant(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


# The admin scope -----------------------------------------------------------------------------------

ROUTES = {
    "create": ("POST", "/webhooks", {"url": "https://hooks.example/new", "events": ["item.*"]}, 201),
    "list": ("GET", "/webhooks", None, 200),
    "get": ("GET", "/webhooks/{id}", None, 200),
    "update": ("PATCH", "/webhooks/{id}", {"enabled": False}, 200),
    "delete": ("DELETE", "/webhooks/{id}", None, 204),
    "deliveries": ("GET", "/webhooks/{id}/deliveries", None, 200),
}


def call(client, route: str, webhook: dict, token: str | None):
    method, path, body, _ = ROUTES[route]
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return Api(client).request(method, path.replace("{id}", webhook["id"]), body, **headers)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("scope", ["read", "write"])
def test_read_and_write_tokens_get_403_on_every_webhooks_route_and_change_nothing(
    client, admin, route, scope
):
    webhook = make(admin)
    token = tokens.token_create(name=f"a {scope} token", scope=scope)
    before = stored()

    response = call(client, route, webhook, token)

    assert response.status_code == 403
    assert response.json()["error"] == f"this token's scope is {scope}; this request needs admin"
    assert stored() == before


@pytest.mark.parametrize("route", ROUTES)
def test_an_admin_token_may_call_every_webhooks_route(client, admin, admin_token, route):
    webhook = make(admin)

    response = call(client, route, webhook, admin_token)

    assert response.status_code == ROUTES[route][3], response.content


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("token", [None, "inv_0123456789abcdef.nonsense"])
def test_every_webhooks_route_needs_a_valid_token(client, admin, route, token):
    webhook = make(admin)
    before = stored()

    response = call(client, route, webhook, token)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert stored() == before


@pytest.mark.parametrize("path", ["/webhooks", "/webhooks/{id}", "/webhooks/{id}/deliveries"])
def test_head_on_webhooks_needs_admin_too(client, admin, admin_token, read_token, path):
    path = path.replace("{id}", make(admin)["id"])

    assert Api(client, admin_token).request("HEAD", path).status_code == 200
    assert Api(client, read_token).request("HEAD", path).status_code == 403


ELSEWHERE = [
    ("POST", "/items", {"name": "pear", "qty": 1}, 201),
    ("GET", "/items", None, 200),
    ("GET", "/events", None, 200),
    ("GET", "/metrics", None, 200),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), ELSEWHERE)
def test_an_admin_token_may_call_every_other_endpoint(admin, method, path, body, status):
    assert admin.request(method, path, body).status_code == status


def test_token_create_with_the_admin_scope_makes_a_token_that_manages_webhooks(client):
    out = io.StringIO()
    call_command("token", "create", "ops", "--scope", "admin", stdout=out)
    token = out.getvalue().strip()

    assert token.startswith("inv_")
    assert Api(client, token).get("/webhooks").status_code == 200


def test_the_openapi_document_still_has_one_bearer_scheme(client):
    document = Api(client).get("/openapi.json").json()

    assert list(document["components"]["securitySchemes"]) == ["BearerToken"]
    assert document["paths"]["/webhooks"]["post"]["security"] == [{"BearerToken": []}]


# Making, reading, changing and deleting webhooks -------------------------------------------------


def test_a_new_webhook_is_201_with_its_secret_and_location(admin, now):
    response = admin.post(
        "/webhooks", {"url": URL, "events": ["item.*", "hold.created"], "description": "erp"}
    )

    assert response.status_code == 201
    body = response.json()
    assert set(body) == WEBHOOK_FIELDS | {"secret"}
    assert response["Location"] == f"/webhooks/{body['id']}"
    assert body["url"] == URL
    assert body["events"] == ["item.*", "hold.created"]
    assert body["description"] == "erp"
    assert (body["enabled"], body["disabled_reason"]) == (True, None)
    assert (body["failing_since"], body["next_attempt_at"]) == (None, None)
    assert instant(body["created_at"]) == now.now
    assert body["secret"].startswith("whsec_")
    assert len(base64.b64decode(body["secret"].removeprefix("whsec_"), validate=True)) >= 24
    assert row(body).secret == body["secret"]


def test_the_secret_is_shown_once_and_never_again(admin, receiver):
    made = make(admin)
    secret = made["secret"]
    publish("item.created")
    deliver()

    shown = [
        admin.get("/webhooks"),
        admin.get(f"/webhooks/{made['id']}"),
        admin.patch(f"/webhooks/{made['id']}", {"description": "again"}),
        admin.get(f"/webhooks/{made['id']}/deliveries"),
    ]

    for response in shown:
        assert response.status_code == 200
        assert secret not in response.content.decode()
        assert "secret" not in response.content.decode()
    assert set(shown[1].json()) == WEBHOOK_FIELDS


def test_a_repeat_with_the_same_idempotency_key_makes_one_webhook_and_replays_its_answer(admin):
    body = {"url": URL, "events": ["*"]}
    first = admin.post("/webhooks", body, **{"Idempotency-Key": "hook-1"})
    again = admin.post("/webhooks", body, **{"Idempotency-Key": "hook-1"})
    other = admin.post("/webhooks", {**body, "description": "x"}, **{"Idempotency-Key": "hook-1"})

    assert (first.status_code, again.status_code, other.status_code) == (201, 201, 422)
    assert again.json() == first.json()  # the answer replayed, the secret with it
    assert again["Idempotent-Replayed"] == "true"
    assert again["Location"] == first["Location"]
    assert Webhook.objects.count() == 1


def test_a_new_webhook_starts_at_the_end_of_the_feed(admin, receiver):
    publish("item.created", "item.updated")
    made = make(admin)
    [later] = publish("item.deleted")

    deliver()

    assert row(made).delivered_seq == later.seq
    assert receiver.types() == ["item.deleted"]


BAD_CREATES = {
    "no url": {"events": ["*"]},
    "no events": {"url": URL},
    "url null": {"url": None, "events": ["*"]},
    "url a number": {"url": 443, "events": ["*"]},
    "url http": {"url": "http://hooks.example/in", "events": ["*"]},
    "url ftp": {"url": "ftp://hooks.example/in", "events": ["*"]},
    "url without host": {"url": "https:///in", "events": ["*"]},
    "url with credentials": {"url": "https://u:p@hooks.example/in", "events": ["*"]},
    "url with fragment": {"url": "https://hooks.example/in#x", "events": ["*"]},
    "url with a newline": {"url": "https://hooks.example/in\r\nX: y", "events": ["*"]},
    "url too long": {"url": "https://hooks.example/" + "a" * 2000, "events": ["*"]},
    "url to a private name": {"url": "https://private.example/in", "events": ["*"]},
    "url to a name that does not resolve": {"url": "https://nowhere.example/in", "events": ["*"]},
    "url loopback": {"url": "https://127.0.0.1/in", "events": ["*"]},
    "url localhost by number": {"url": "https://2130706433/in", "events": ["*"]},
    "url metadata": {"url": "https://169.254.169.254/latest/meta-data/", "events": ["*"]},
    "url private": {"url": "https://192.168.1.1/in", "events": ["*"]},
    "url CGNAT": {"url": "https://100.64.0.1/in", "events": ["*"]},
    "url IPv6 loopback": {"url": "https://[::1]/in", "events": ["*"]},
    "url IPv4-mapped private": {"url": "https://[::ffff:10.0.0.1]/in", "events": ["*"]},
    "url IPv6 link-local": {"url": "https://[fe80::1]/in", "events": ["*"]},
    "url IPv6 unique-local": {"url": "https://[fd00::1]/in", "events": ["*"]},
    "url unspecified": {"url": "https://0.0.0.0/in", "events": ["*"]},
    "url multicast": {"url": "https://224.0.0.1/in", "events": ["*"]},
    "events empty": {"url": URL, "events": []},
    "events a string": {"url": URL, "events": "*"},
    "events null": {"url": URL, "events": None},
    "events unknown type": {"url": URL, "events": ["item.exploded"]},
    "events twice": {"url": URL, "events": ["item.*", "item.*"]},
    "events nested": {"url": URL, "events": [["*"]]},
    "events a number": {"url": URL, "events": [1]},
    "description a number": {"url": URL, "events": ["*"], "description": 5},
    "description null": {"url": URL, "events": ["*"], "description": None},
    "description too long": {"url": URL, "events": ["*"], "description": "x" * 501},
    "description with NUL": {"url": URL, "events": ["*"], "description": "a\x00b"},
    "a secret of ones own": {"url": URL, "events": ["*"], "secret": "whsec_" + "A" * 32},
    "enabled at creation": {"url": URL, "events": ["*"], "enabled": False},
    "a list": [{"url": URL, "events": ["*"]}],
}


@pytest.mark.parametrize("body", BAD_CREATES.values(), ids=BAD_CREATES.keys())
def test_a_bad_create_is_400_and_stores_nothing(admin, body):
    response = admin.post("/webhooks", body, **{"Idempotency-Key": "k"})

    assert response.status_code == 400, response.content
    assert isinstance(response.json()["error"], str)
    assert len(response.content) < 500
    assert Webhook.objects.count() == 0


def test_a_refused_url_says_why(admin):
    response = admin.post("/webhooks", {"url": "https://private.example/in", "events": ["*"]})

    assert response.json() == {
        "error": "url: private.example resolves to 10.0.0.7, a private address",
        "field": "url",
    }


def test_with_private_addresses_allowed_http_and_loopback_urls_are_taken(admin, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True

    made = make(admin, "http://127.0.0.1:8080/in")

    assert made["url"] == "http://127.0.0.1:8080/in"


def test_at_most_100_webhooks_exist_at_once(admin):
    for number in range(webhooks.WEBHOOKS_MAX):
        webhooks.webhook_create(url=f"https://hooks.example/{number}", events=["*"])

    refused = admin.post("/webhooks", {"url": URL, "events": ["*"]})
    admin.delete(f"/webhooks/{Webhook.objects.first().pk}")
    taken = admin.post("/webhooks", {"url": URL, "events": ["*"]})

    assert refused.status_code == 400
    assert refused.json()["error"] == "at most 100 webhooks may exist; delete one first"
    assert taken.status_code == 201
    assert Webhook.objects.count() == 100


def test_list_shows_every_webhook_oldest_first(admin, now):
    first = make(admin, "https://hooks.example/1")
    now.advance(1)
    second = make(admin, "https://hooks.example/2", ["hold.*"])

    response = admin.get("/webhooks")

    assert response.status_code == 200
    secretless = [{k: v for k, v in w.items() if k != "secret"} for w in (first, second)]
    assert response.json() == {"webhooks": secretless}


def test_get_shows_the_webhook_as_made(admin):
    made = make(admin)

    response = admin.get(f"/webhooks/{made['id']}")

    assert response.json() == {k: v for k, v in made.items() if k != "secret"}


@pytest.mark.parametrize("path", ["/webhooks/{id}", "/webhooks/{id}/deliveries"])
@pytest.mark.parametrize("webhook_id", [MISSING, "not-a-uuid", "0" * 32, MISSING + "0"])
def test_an_unknown_or_malformed_id_is_404(admin, path, webhook_id):
    response = admin.get(path.replace("{id}", webhook_id))

    assert response.status_code == 404
    assert response.json() == {"error": "not_found"}


def test_patch_of_an_unknown_webhook_is_404_and_delete_204(admin):
    assert admin.patch(f"/webhooks/{MISSING}", {"enabled": True}).status_code == 404
    assert admin.delete(f"/webhooks/{MISSING}").status_code == 204


def test_patch_changes_events_and_description_and_keeps_the_rest(admin):
    made = make(admin)

    response = admin.patch(f"/webhooks/{made['id']}", {"events": ["hold.*"], "description": "holds only"})

    assert response.status_code == 200
    expected = {k: v for k, v in made.items() if k != "secret"}
    assert response.json() == {**expected, "events": ["hold.*"], "description": "holds only"}
    assert row(made).events == ["hold.*"]


def test_patch_enabled_false_disables_and_says_why(admin):
    made = make(admin)

    response = admin.patch(f"/webhooks/{made['id']}", {"enabled": False})

    assert response.json()["enabled"] is False
    assert response.json()["disabled_reason"] == "disabled on request"


BAD_PATCHES = {
    "nothing": {},
    "enabled a string": {"enabled": "true"},
    "enabled a number": {"enabled": 1},
    "enabled null": {"enabled": None},
    "events empty": {"events": []},
    "events null": {"events": None},
    "events unknown": {"events": ["*", "hold.exploded"]},
    "description null": {"description": None},
    "description too long": {"description": "x" * 501},
    "url": {"url": "https://hooks.example/other"},
    "secret": {"secret": "whsec_AAAA"},
    "delivered_seq": {"delivered_seq": 0},
}


@pytest.mark.parametrize("body", BAD_PATCHES.values(), ids=BAD_PATCHES.keys())
def test_a_bad_patch_is_400_and_changes_nothing(admin, body):
    made = make(admin)
    before = stored()

    response = admin.patch(f"/webhooks/{made['id']}", body)

    assert response.status_code == 400, response.content
    assert isinstance(response.json()["error"], str)
    assert stored() == before


def test_delete_removes_the_webhook_and_its_deliveries_and_is_idempotent(admin, receiver):
    made = make(admin)
    publish("item.created")
    deliver()
    assert Delivery.objects.count() == 1

    first = admin.delete(f"/webhooks/{made['id']}")
    again = admin.delete(f"/webhooks/{made['id']}")

    assert (first.status_code, again.status_code) == (204, 204)
    assert first.content == b""
    assert admin.get(f"/webhooks/{made['id']}").status_code == 404
    assert Delivery.objects.count() == 0


def test_deliveries_are_listed_newest_first_in_pages(admin, receiver, now):
    made = make(admin)
    receiver.answer(URL, 500, (None, "connect timeout"), 200)
    [event] = publish("item.created")
    deliver()
    for _ in range(2):
        now.to(row(made).next_attempt_at)
        deliver()

    first = admin.get(f"/webhooks/{made['id']}/deliveries?limit=2").json()
    rest = admin.get(f"/webhooks/{made['id']}/deliveries?limit=2&cursor={first['next']}").json()

    listed = first["deliveries"] + rest["deliveries"]
    assert [(d["status"], d["error"]) for d in listed] == [
        (200, None),
        (None, "connect timeout"),
        (500, "no thanks"),
    ]
    assert {d["event_id"] for d in listed} == {str(event.event_id)}
    assert set(listed[0]) == {"event_id", "status", "error", "duration_ms", "at"}
    assert listed[0]["duration_ms"] == pytest.approx(5)
    assert instant(listed[0]["at"]) > instant(listed[2]["at"])
    assert rest["next"] is None


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "limit=-1", "cursor=!!", "cursor=abc"])
def test_deliveries_with_a_bad_limit_or_cursor_are_400(admin, query):
    made = make(admin)

    response = admin.get(f"/webhooks/{made['id']}/deliveries?{query}")

    assert response.status_code == 400


# Delivery --------------------------------------------------------------------------------------------


def test_events_are_delivered_in_order_as_the_feed_shows_them(admin, receiver, client, write_token):
    made = make(admin)
    published = publish("item.created", "item.qty_changed", "hold.created")

    recorded = deliver()

    assert recorded == 3
    feed = Api(client, write_token).get("/events").json()["events"]
    assert [attempt["event"] for attempt in receiver.to(URL)] == feed
    assert [attempt["headers"]["webhook-id"] for attempt in receiver.to(URL)] == [
        str(event.event_id) for event in published
    ]
    assert row(made).delivered_seq == published[-1].seq
    assert list(Delivery.objects.order_by("id").values_list("event_id", "status")) == [
        (event.event_id, 200) for event in published
    ]


def test_each_attempt_verifies_with_the_webhooks_secret(admin, receiver):
    made = make(admin)
    publish("item.created", "item.deleted")

    deliver()

    verifier = standardwebhooks.Webhook(made["secret"])
    for attempt in receiver.to(URL):
        assert verifier.verify(attempt["body"], attempt["headers"]) == attempt["event"]
        assert attempt["headers"]["content-type"] == "application/json"
    other = standardwebhooks.Webhook(webhooks._new_secret())
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        other.verify(receiver.to(URL)[0]["body"], receiver.to(URL)[0]["headers"])


def test_events_of_types_a_webhook_does_not_name_are_passed_over(admin, receiver):
    made = make(admin, events_=["hold.*", "item.deleted"])
    published = publish("item.created", "hold.created", "item.updated", "item.deleted", "item.created")

    deliver()

    assert receiver.types() == ["hold.created", "item.deleted"]
    assert row(made).delivered_seq == published[-1].seq


def test_a_webhook_that_names_none_of_the_events_moves_past_them_without_a_request(admin, receiver):
    made = make(admin, events_=["hold.expired"])
    published = publish("item.created", "item.updated")

    assert deliver() == 0

    assert receiver.attempts == []
    assert row(made).delivered_seq == published[-1].seq


def test_the_filter_in_sql_agrees_with_the_patterns_for_every_type(db):
    publish(*events.TYPES)

    for pattern in webhooks.PATTERNS:
        found = set(Event.objects.filter(webhooks._matching([pattern])).values_list("type", flat=True))
        assert found == {t for t in events.TYPES if webhooks.pattern_matches([pattern], t)}, pattern
    pair = set(
        Event.objects.filter(webhooks._matching(["hold.*", "item.created"])).values_list("type", flat=True)
    )
    assert pair == {t for t in events.TYPES if t.startswith("hold.")} | {"item.created"}


def test_a_failed_attempt_is_retried_with_back_off_and_a_fresh_timestamp(admin, receiver, now):
    made = make(admin)
    receiver.answer(URL, 503, 503)
    start = row(made).delivered_seq
    [event] = publish("item.created")
    started = now.now

    deliver()
    first = row(made)
    deliver()  # not due yet: nothing is sent
    now.to(first.next_attempt_at)
    deliver()
    second = row(made)
    now.to(second.next_attempt_at)
    deliver()

    assert (first.attempts, first.failing_since, first.delivered_seq) == (1, started, start)
    assert 2 <= (first.next_attempt_at - started).total_seconds() <= 2.2
    assert second.attempts == 2
    assert 4 <= (second.next_attempt_at - first.next_attempt_at).total_seconds() <= 4.4
    assert len(receiver.to(URL)) == 3
    stamps = [int(a["headers"]["webhook-timestamp"]) for a in receiver.to(URL)]
    assert stamps[0] < stamps[1] < stamps[2]
    assert len({a["headers"]["webhook-id"] for a in receiver.to(URL)}) == 1
    assert len({a["body"] for a in receiver.to(URL)}) == 1
    done = row(made)
    assert (done.delivered_seq, done.attempts, done.failing_since, done.next_attempt_at) == (
        event.seq,
        0,
        None,
        None,
    )


def test_the_next_event_waits_until_the_current_one_is_acknowledged(admin, receiver, now):
    made = make(admin)
    receiver.answer(URL, 500, 500)
    publish("item.created", "item.updated", "item.deleted")

    deliver()
    now.to(row(made).next_attempt_at)
    deliver()
    now.to(row(made).next_attempt_at)
    deliver()

    assert receiver.types() == ["item.created"] * 3 + ["item.updated", "item.deleted"]


@pytest.mark.parametrize(
    "answer",
    [301, 302, 400, 404, 410, 500, (None, "connect timeout"), (None, "refused: a loopback address")],
    ids=str,
)
def test_anything_but_a_2xx_is_a_failed_attempt(admin, receiver, answer):
    made = make(admin)
    receiver.answer(URL, answer)
    publish("item.created")

    deliver()

    state = row(made)
    assert (state.attempts, state.next_attempt_at is not None) == (1, True)
    assert Delivery.objects.get().status == (answer if isinstance(answer, int) else None)


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_any_2xx_acknowledges(admin, receiver, status):
    made = make(admin)
    receiver.answer(URL, status)
    [event] = publish("item.created")

    deliver()

    assert row(made).delivered_seq == event.seq


def test_a_2xx_after_the_10_seconds_is_a_failed_attempt(admin, receiver):
    made = make(admin)
    receiver.answer(URL, (200, "answered after 10 s"))
    publish("item.created")

    deliver()

    assert row(made).attempts == 1


def test_a_webhook_failing_for_the_limit_is_disabled_and_says_why(admin, receiver, now, settings):
    settings.WEBHOOKS_DISABLE_AFTER_SECONDS = 60
    made = make(admin)
    receiver.default = 500
    publish("item.created")
    started = now.now

    while row(made).enabled:
        deliver()
        state = row(made)
        if state.next_attempt_at is not None:
            now.to(state.next_attempt_at)

    state = row(made)
    assert (now.now - started).total_seconds() >= 60
    assert state.disabled_reason.startswith(f"failing since {started.isoformat().replace('+00:00', 'Z')}")
    assert state.disabled_reason.endswith("last attempt: HTTP 500")
    assert state.next_attempt_at is None
    attempts = len(receiver.attempts)
    now.advance(3600)
    deliver()
    assert len(receiver.attempts) == attempts  # a disabled webhook is not tried
    shown = admin.get(f"/webhooks/{made['id']}").json()
    assert (shown["enabled"], shown["disabled_reason"]) == (False, state.disabled_reason)


def test_a_failing_webhook_is_retried_for_24_hours_before_it_is_disabled(admin, receiver, now):
    made = make(admin)
    receiver.default = 500
    publish("item.created")
    started = now.now
    gaps = []

    while row(made).enabled:
        deliver()
        state = row(made)
        if state.next_attempt_at is not None:
            gaps.append((state.next_attempt_at - now.now).total_seconds())
            now.to(state.next_attempt_at)

    assert (now.now - started).total_seconds() >= 24 * 3600
    assert max(gaps) <= 3600 * 1.1
    assert 25 <= len(receiver.attempts) <= 40
    assert Delivery.objects.count() == len(receiver.attempts)


def test_enabling_a_disabled_webhook_resumes_it_where_it_stopped(admin, receiver, now, settings):
    settings.WEBHOOKS_DISABLE_AFTER_SECONDS = 10
    made = make(admin)
    receiver.default = 500
    stuck, *rest = publish("item.created", "item.updated")
    while row(made).enabled:
        deliver()
        now.to(row(made).next_attempt_at or now.now)
    later = publish("item.deleted")
    receiver.default = 200
    failed = len(receiver.attempts)

    response = admin.patch(f"/webhooks/{made['id']}", {"enabled": True})
    deliver()

    assert response.status_code == 200
    assert (response.json()["enabled"], response.json()["disabled_reason"]) == (True, None)
    assert (response.json()["failing_since"], response.json()["next_attempt_at"]) == (None, None)
    resumed = receiver.to(URL)[failed:]
    assert [a["headers"]["webhook-id"] for a in resumed] == [str(e.event_id) for e in [stuck, *rest, *later]]
    assert row(made).delivered_seq == later[-1].seq


def test_a_webhook_disabled_on_request_is_not_tried_until_enabled(admin, receiver):
    made = make(admin)
    admin.patch(f"/webhooks/{made['id']}", {"enabled": False})
    publish("item.created")

    deliver()
    assert receiver.attempts == []
    admin.patch(f"/webhooks/{made['id']}", {"enabled": True})
    deliver()

    assert receiver.types() == ["item.created"]


def test_a_failing_receiver_does_not_hold_back_a_healthy_one(admin, receiver):
    slow, healthy = "https://hooks.example/slow", "https://hooks.example/healthy"
    make(admin, slow)
    fast = make(admin, healthy)
    receiver.answer(slow, "block")
    published = publish("item.created", "item.updated", "item.deleted")

    webhooks.deliver_due(wait_seconds=2)

    assert receiver.types(healthy) == ["item.created", "item.updated", "item.deleted"]
    assert row(fast).delivered_seq == published[-1].seq
    assert receiver.types(slow) == ["item.created"]  # still waiting for its answer
    receiver.gate.set()
    deliver()
    assert receiver.types(slow) == ["item.created", "item.updated", "item.deleted"]


def test_a_round_returns_while_an_attempt_is_in_flight_and_records_it_at_a_later_round(admin, receiver):
    made = make(admin)
    receiver.answer(URL, "block")
    [event] = publish("item.created")

    assert webhooks.deliver_due(wait_seconds=0.2) == 0
    assert Delivery.objects.count() == 0
    receiver.gate.set()
    recorded = deliver()

    assert recorded == 1
    assert row(made).delivered_seq == event.seq


def test_two_workers_never_send_the_same_event_at_once_and_a_dead_ones_attempt_is_made_again(
    admin, receiver, now, monkeypatch, worker
):
    made = make(admin)
    receiver.answer(URL, ("block", 500), 200)
    [event] = publish("item.created")
    webhooks.deliver_due(wait_seconds=0.2)  # the first worker's attempt hangs, then fails
    second = webhooks._Deliveries()
    monkeypatch.setattr(webhooks, "_deliveries", second)

    webhooks.deliver_due(wait_seconds=0.2)  # a second worker (despite the lease)
    claimed = len(receiver.attempts)
    now.advance(webhooks.CLAIM_SECONDS + 1)  # the first worker is presumed dead
    deliver()
    taken_over = row(made)
    receiver.gate.set()  # the first worker's receiver answers at last, too late: 500
    monkeypatch.setattr(webhooks, "_deliveries", worker)
    deliver()

    assert claimed == 1
    assert len(receiver.attempts) == 2
    assert taken_over.delivered_seq == event.seq
    assert row(made).delivered_seq == event.seq
    assert (row(made).attempts, row(made).next_attempt_at) == (0, None)  # the late failure is only logged
    assert sorted(Delivery.objects.values_list("status", flat=True)) == [200, 500]
    second.pool.shutdown(wait=True)


def test_delivery_state_is_in_the_database_and_a_new_process_goes_on_from_it(
    admin, receiver, now, monkeypatch
):
    made = make(admin)
    receiver.answer(URL, 500)
    [event] = publish("item.created")
    deliver()
    due = row(made).next_attempt_at

    monkeypatch.setattr(webhooks, "_deliveries", webhooks._Deliveries())  # killed and started again
    deliver()
    assert len(receiver.attempts) == 1  # not due yet
    now.to(due)
    deliver()

    assert len(receiver.attempts) == 2
    assert row(made).delivered_seq == event.seq
    webhooks._deliveries.pool.shutdown(wait=True)


def test_a_webhook_deleted_while_its_attempt_is_in_flight_records_nothing(admin, receiver):
    made = make(admin)
    receiver.answer(URL, "block")
    publish("item.created")
    webhooks.deliver_due(wait_seconds=0.2)

    admin.delete(f"/webhooks/{made['id']}")
    receiver.gate.set()
    recorded = deliver()

    assert recorded == 1
    assert Delivery.objects.count() == 0


def test_a_patch_while_an_attempt_is_in_flight_keeps_the_events_order(admin, receiver):
    made = make(admin)
    receiver.answer(URL, "block")
    _, second = publish("item.created", "item.updated")
    webhooks.deliver_due(wait_seconds=0.2)

    admin.patch(f"/webhooks/{made['id']}", {"description": "changed meanwhile"})
    receiver.gate.set()
    deliver()

    assert receiver.types() == ["item.created", "item.updated"]
    assert row(made).delivered_seq == second.seq


def test_a_name_that_now_resolves_to_a_private_address_is_a_failed_attempt(admin, monkeypatch):
    made = make(admin, "https://rebind.example/in")
    publish("item.created")
    sent = []
    monkeypatch.setattr(outbound, "_send", lambda *args: sent.append(args) or (200, None))
    monkeypatch.setattr(
        outbound, "resolve", lambda host, port, *, timeout: [ipaddress.ip_address("127.0.0.1")]
    )

    deliver()

    assert sent == []
    delivery = Delivery.objects.get()
    assert delivery.status is None
    assert delivery.error == "refused: rebind.example resolves to 127.0.0.1, a loopback address"
    assert row(made).attempts == 1


def test_deliveries_are_counted_by_outcome(admin, receiver):
    def count(outcome):
        return REGISTRY.get_sample_value("inventory_webhook_deliveries_total", {"outcome": outcome}) or 0

    make(admin)
    receiver.answer(URL, 500)
    publish("item.created", "item.updated")
    delivered, failed = count("delivered"), count("failed")

    deliver()

    assert (count("delivered") - delivered, count("failed") - failed) == (0, 1)


def test_the_oldest_undelivered_age_is_set_per_webhook_and_removed_with_it(admin, receiver, now):
    def age(webhook):
        return REGISTRY.get_sample_value(
            "inventory_webhook_oldest_undelivered_seconds", {"webhook": webhook["id"]}
        )

    failing, healthy = make(admin, "https://hooks.example/down"), make(admin, "https://hooks.example/up")
    receiver.answer("https://hooks.example/down", 500, 500)
    publish("item.created")
    deliver()
    now.advance(30)

    deliver()
    aged = (age(failing), age(healthy))
    admin.delete(f"/webhooks/{failing['id']}")
    deliver()

    assert aged == (30, 0)
    assert age(failing) is None
    assert age(healthy) == 0


def test_old_deliveries_are_pruned_with_the_events(admin, receiver, now, settings, worker):
    made = make(admin)
    publish("item.created")
    deliver()
    now.advance(settings.EVENTS_RETENTION_DAYS * 86400 + 1)
    publish("item.updated")
    worker.pruned_at = -1e9

    deliver()

    assert list(Delivery.objects.values_list("status", flat=True)) == [200]
    assert row(made).delivered_seq == Event.objects.order_by("-seq").first().seq


# A real receiver on loopback --------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    answers: list[tuple[int, bytes]] = []
    received: list[dict] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Handler.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
        status, answer = Handler.answers.pop(0) if Handler.answers else (204, b"")
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback(settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    Handler.answers, Handler.received = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/in?src=inventory"
    server.shutdown()
    server.server_close()


def test_a_real_receiver_gets_signed_posts_and_its_refusals_are_logged_briefly(admin, loopback, now):
    made = make(admin, loopback)
    Handler.answers = [(500, b"<html>" + b"x" * 10_000 + b"</html>"), (302, b""), (200, b"ok")]
    first, second = publish("item.created", "hold.created")

    deliver()
    now.to(row(made).next_attempt_at)
    deliver()
    now.to(row(made).next_attempt_at)
    deliver()

    assert [r["path"] for r in Handler.received] == ["/hooks/in?src=inventory"] * 4
    verifier = standardwebhooks.Webhook(made["secret"])
    bodies = [verifier.verify(r["body"], r["headers"]) for r in Handler.received]
    assert [b["id"] for b in bodies] == [str(first.event_id)] * 3 + [str(second.event_id)]
    assert Handler.received[0]["headers"]["Host"] == loopback.split("/")[2]
    assert Handler.received[0]["headers"]["content-type"] == "application/json"
    log = list(Delivery.objects.order_by("id").values_list("status", "error"))
    assert log[0][0] == 500 and log[0][1].startswith("<html>xxx") and len(log[0][1]) == 200
    assert log[1] == (302, "redirects are not followed")
    assert log[2:] == [(200, None), (204, None)]
    assert row(made).delivered_seq == second.seq


def test_a_real_receiver_that_is_not_listening_is_a_failed_attempt(admin, settings):
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    made = make(admin, "http://127.0.0.1:1/in")
    publish("item.created")

    deliver()

    assert Delivery.objects.get().error == "cannot connect: Connection refused"
    assert row(made).attempts == 1


# A real receiver over TLS ---------------------------------------------------------------------------------


@pytest.fixture
def tls_receiver(tmp_path, monkeypatch, settings):
    """An HTTPS receiver on loopback with a certificate for hooks.example from a test CA that
    the service trusts (SSL_CERT_FILE); hooks.example and other.example resolve to loopback."""
    settings.WEBHOOKS_ALLOW_PRIVATE = True  # loopback
    ca, key, csr, cert, ext = (
        tmp_path / name for name in ("ca.pem", "key.pem", "csr.pem", "cert.pem", "ext")
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    signed = ["-out", cert, "-days", "2", "-extfile", ext]
    ext.write_text(
        "subjectAltName=DNS:hooks.example\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    )
    for command in (
        [
            "req",
            "-x509",
            *ec,
            "-keyout",
            tmp_path / "ca.key",
            "-out",
            ca,
            "-days",
            "2",
            "-subj",
            "/CN=Test CA",
        ],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=hooks.example"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", tmp_path / "ca.key", "-CAcreateserial", *signed],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    monkeypatch.setattr(
        outbound, "resolve", lambda host, port, *, timeout: [ipaddress.ip_address("127.0.0.1")]
    )
    names = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: names.append(name)
    Handler.answers, Handler.received = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], names
    server.shutdown()
    server.server_close()


def test_over_tls_the_name_is_sent_for_sni_and_checked_against_the_certificate(tls_receiver):
    port, names = tls_receiver

    good = outbound.post(f"https://hooks.example:{port}/in", body=b"{}", headers={}, allow_private=True)
    wrong = outbound.post(f"https://other.example:{port}/in", body=b"{}", headers={}, allow_private=True)

    assert (good.status, good.error) == (204, None)
    assert Handler.received[0]["headers"]["Host"] == f"hooks.example:{port}"
    assert names[:2] == ["hooks.example", "other.example"]
    assert wrong.status is None
    assert wrong.error.startswith("TLS")
    assert len(Handler.received) == 1


def test_over_tls_a_certificate_from_an_unknown_authority_is_a_failed_attempt(tls_receiver, monkeypatch):
    port, _ = tls_receiver
    monkeypatch.delenv("SSL_CERT_FILE")

    answer = outbound.post(f"https://hooks.example:{port}/in", body=b"{}", headers={}, allow_private=True)

    assert answer.status is None
    assert "CERTIFICATE_VERIFY_FAILED" in answer.error
    assert Handler.received == []
