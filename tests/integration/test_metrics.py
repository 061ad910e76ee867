"""/metrics: Prometheus text behind a token, and counters that move by exactly what happened.

The counters live in this process and are shared by every test, so each test reads a value
before and after and checks the difference.
"""

import json

import pytest
from django.db import DatabaseError, OperationalError
from prometheus_client.parser import text_string_to_metric_families

from inventory import items
from inventory.invariants import QTY_MAX
from tests.conftest import Api

pytestmark = pytest.mark.django_db

ITEM = "/items/{item_id}"  # the route template, as labelled
FAMILIES = {
    "inventory_http_requests",
    "inventory_http_request_duration_seconds",
    "inventory_qty_transitions",
    "inventory_rejected_transitions",
    "inventory_database_errors",
}


@pytest.fixture
def sample(client, read_token):
    """sample(name, **labels): the value /metrics shows now (0 before the first increment)."""

    def sample(name: str, **labels: str) -> float:
        text = Api(client, read_token).get("/metrics").content.decode()
        for family in text_string_to_metric_families(text):
            for found in family.samples:
                if found.name == name and found.labels == labels:
                    return found.value
        return 0.0

    return sample


@pytest.fixture
def apple(api) -> dict:
    return api.create("apple", 5)


@pytest.mark.parametrize("authorization", [None, "Bearer inv_0123456789abcdef.nonsense"])
def test_metrics_needs_a_token(client, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}

    response = Api(client).get("/metrics", **headers)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_metrics_answers_prometheus_text_to_a_read_token(client, read_token):
    response = Api(client, read_token).get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(response.content.decode())}
    assert names >= FAMILIES


# request -> (method, path, labelled route, status); "{id}" is the item "apple".
COUNTED = {
    "probe": ("GET", "/healthz", "/healthz", "200"),
    "item": ("GET", "/items/{id}", ITEM, "200"),
    "unknown item": ("GET", "/items/00000000-0000-4000-8000-000000000000", ITEM, "404"),
    "adjust": ("PATCH", "/items/{id}/qty", ITEM + "/qty", "200"),
    "unknown route": ("GET", "/no/such/route", "(unmatched)", "404"),
}


@pytest.mark.parametrize("case", COUNTED)
def test_n_requests_add_n_to_the_request_counter_and_the_latency_histogram(api, apple, sample, case):
    method, path, route, status = COUNTED[case]
    labels = {"method": method, "route": route, "status": status}
    requests_before = sample("inventory_http_requests_total", **labels)
    latencies_before = sample("inventory_http_request_duration_seconds_count", route=route)

    for _ in range(3):
        body = {"delta": 1} if method == "PATCH" else None
        assert api.request(method, path.replace("{id}", apple["id"]), body).status_code == int(status)

    assert sample("inventory_http_requests_total", **labels) == requests_before + 3
    assert sample("inventory_http_request_duration_seconds_count", route=route) == latencies_before + 3


# Qty transitions are counted with transaction.on_commit, so that a rolled-back one is not.
# pytest-django runs each test in a transaction that is never committed, so the callbacks
# would never run: django_capture_on_commit_callbacks(execute=True) runs the ones that a
# commit would have run. (transactional_db would commit for real, at the price of a slower,
# table-flushing teardown for no more insight.)

# request -> (method, path, body, status, kind counted).
COMMITTED = {
    "create": ("POST", "/items", {"name": "pear", "qty": 2}, 201, "create"),
    "adjust": ("PATCH", "/items/{id}/qty", {"delta": -1}, 200, "adjust"),
    "delete": ("DELETE", "/items/{id}", None, 204, "delete"),
}


@pytest.mark.parametrize("case", COMMITTED)
def test_a_committed_change_of_qty_counts_one_transition(
    api, apple, sample, django_capture_on_commit_callbacks, case
):
    method, path, body, status, kind = COMMITTED[case]
    before = sample("inventory_qty_transitions_total", kind=kind)

    with django_capture_on_commit_callbacks(execute=True):
        response = api.request(method, path.replace("{id}", apple["id"]), body)

    assert response.status_code == status
    assert sample("inventory_qty_transitions_total", kind=kind) == before + 1


# request -> (method, path, body, reason counted); the item "apple" has qty 5.
REFUSED = {
    "below zero": ("PATCH", "/items/{id}/qty", {"delta": -6}, "qty_below_zero"),
    "above max": ("PATCH", "/items/{id}/qty", {"delta": QTY_MAX}, "qty_above_max"),
    "stale": ("PATCH", "/items/{id}/qty", {"delta": 1, "expected_qty": 4}, "stale_qty"),
    "duplicate create": ("POST", "/items", {"name": "apple", "qty": 1}, "duplicate_name"),
    "batch below zero": (
        "POST",
        "/adjustments",
        {"changes": [{"id": "{id}", "delta": -6}]},
        "qty_below_zero",
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_refused_write_counts_its_reason_and_no_transition(
    api, apple, sample, django_capture_on_commit_callbacks, case
):
    method, path, body, reason = REFUSED[case]
    body = json.loads(json.dumps(body).replace("{id}", apple["id"]))
    kinds = ("create", "adjust", "delete")
    transitions_before = [sample("inventory_qty_transitions_total", kind=kind) for kind in kinds]
    rejected_before = sample("inventory_rejected_transitions_total", reason=reason)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.request(method, path.replace("{id}", apple["id"]), body)

    assert response.status_code in (400, 409)
    assert callbacks == []
    assert [sample("inventory_qty_transitions_total", kind=kind) for kind in kinds] == transitions_before
    assert sample("inventory_rejected_transitions_total", reason=reason) == rejected_before + 1


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [(OperationalError, 503, "unavailable"), (DatabaseError, 500, "unexpected")],
)
def test_a_database_error_is_counted_by_kind(api, apple, sample, monkeypatch, error, status, kind):
    def failing(**kwargs):
        raise error("the database went away")

    monkeypatch.setattr(items, "qty_adjust", failing)
    before = sample("inventory_database_errors_total", kind=kind)

    response = api.patch(f"/items/{apple['id']}/qty", {"delta": 1})

    assert response.status_code == status
    assert sample("inventory_database_errors_total", kind=kind) == before + 1
