"""What an operator sees of a real multi-process server: metrics summed over every worker,
one JSON log line per request, readiness that follows the database."""

import http.client
import json
import os
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import PROGRESS_TIMEOUT, REQUEST_TIMEOUT, WORKERS, parallel

pytestmark = pytest.mark.e2e


def sample(server, name: str, **labels) -> float:
    """The value of one sample of /metrics (0 when it has not been counted yet)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT)
    connection.request("GET", "/metrics", headers={"Authorization": f"Bearer {server.client.token}"})
    response = connection.getresponse()
    assert response.status == 200
    for family in text_string_to_metric_families(response.read().decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_metrics_count_every_request_whichever_worker_answered_it(server):
    before = sample(server, "inventory_http_requests_total", route="/readyz", status="200")

    requests = 50 * WORKERS
    results = parallel(
        8, lambda i: [server.client.request("GET", "/readyz")[0] for _ in range(requests // 8)]
    )

    assert [status for batch in results for status in batch] == [200] * requests
    after = sample(server, "inventory_http_requests_total", route="/readyz", status="200")
    assert after - before == requests
    assert sample(server, "inventory_http_request_duration_seconds_count", route="/readyz") >= requests


def test_every_request_writes_one_json_line_without_the_token(server):
    status, item = server.client.request(
        "POST", "/items", {"name": "logged", "qty": 3}, {"X-Request-ID": "op-1"}
    )
    assert status == 201
    server.client.request("PATCH", f"/items/{item['id']}/qty", {"delta": -2}, {"X-Request-ID": "op-2"})

    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    by_id = {line["request_id"]: line for line in lines}
    assert by_id["op-2"] == {
        "time": by_id["op-2"]["time"],
        "request_id": "op-2",
        "method": "PATCH",
        "route": "/items/{item_id}/qty",
        "status": 200,
        "duration_ms": by_id["op-2"]["duration_ms"],
        "token": "e2e",
        "item_id": item["id"],
        "delta": -2,
    }
    assert by_id["op-1"]["delta"] == 3
    assert server.client.token not in server.log.read_text()


def test_readiness_fails_when_the_database_is_gone(server, database_url):
    if database_url.startswith("sqlite"):
        # A worker's open connection would go on using a removed file: connect per request.
        server.extra_env["CONN_MAX_AGE"] = "0"
        server.stop()
        server.start()
    assert server.client.request("GET", "/readyz") == (200, {"status": "ok"})

    if database_url.startswith("sqlite"):
        path = urlsplit(database_url).path
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    else:
        import psycopg

        admin_url = urlunsplit(urlsplit(database_url)._replace(path="/postgres"))
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{urlsplit(database_url).path[1:]}" WITH (FORCE)')

    status, body = server.client.request("GET", "/readyz")
    assert status == 503
    assert body["error"] == "not_ready"
    assert server.client.request("GET", "/healthz") == (200, {"status": "ok"})


def test_a_revoked_token_is_refused_by_every_worker_within_the_token_cache_time(server):
    cache_seconds = float(server.setting("TOKEN_CACHE_SECONDS"))
    # Every worker has found the token active and trusts it for TOKEN_CACHE_SECONDS.
    reader = server.manage("token", "create", "soon revoked", "--scope", "read").strip()
    headers = {"Authorization": f"Bearer {reader}"}
    warm = parallel(
        8, lambda i: [server.client.request("GET", "/items", headers=headers)[0] for _ in range(25)]
    )
    assert {status for batch in warm for status in batch} == {200}

    server.manage("token", "revoke", "soon revoked")
    # The revocation was committed before the command returned, so a worker trusts the token
    # until before revoked_at + cache_seconds at the latest; a request is checked after it is
    # sent, so one sent from then on must be refused, however long its answer takes.
    refused_from = time.monotonic() + cache_seconds
    late_requests = 10  # per caller, sent after refused_from

    def caller(_):
        sent = []
        deadline = refused_from + PROGRESS_TIMEOUT
        while sum(at >= refused_from for at, _ in sent) < late_requests:
            assert time.monotonic() < deadline, f"{late_requests} requests not sent in time"
            at = time.monotonic()
            sent.append((at, server.client.request("GET", "/items", headers=headers)[0]))
        return sent

    sent = [request for batch in parallel(8, caller) for request in batch]

    assert {status for _, status in sent} <= {200, 401}
    late = [status for at, status in sent if at >= refused_from]
    assert late == [401] * len(late), f"{late.count(200)} requests accepted after {cache_seconds} s"
