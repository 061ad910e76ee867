"""Many parallel clients against a multi-process server: no lost update, no oversell, no 5xx."""

import random

import pytest

from tests.e2e.conftest import create, direct_and_pooled, parallel

pytestmark = pytest.mark.e2e

CLIENTS = 32
BELOW_ZERO = {"error": "qty cannot go below 0"}


def qty_of(server, item_id: str) -> int:
    status, item = server.client.request("GET", f"/items/{item_id}")
    assert status == 200, item
    return item["qty"]


@direct_and_pooled
def test_hot_row_applies_every_answered_delta_exactly_once(server):
    initial, per_client = 100, 100
    item = create(server, "hot", initial)
    path = f"/items/{item['id']}/qty"

    def client(i):
        rng = random.Random(i)
        results = []
        for _ in range(per_client):
            delta = rng.randint(-5, 4)  # drifts down, so "below 0" refusals really happen
            results.append((delta, *server.client.request("PATCH", path, {"delta": delta})))
        return results

    results = [r for batch in parallel(CLIENTS, client) for r in batch]

    applied = [delta for delta, status, _ in results if status == 200]
    refused = [(delta, body) for delta, status, body in results if status == 400]
    assert len(applied) + len(refused) == len(results) == CLIENTS * per_client, {s for _, s, _ in results}
    assert all(body["qty"] >= 0 for _, status, body in results if status == 200)
    assert all(delta < 0 and body == BELOW_ZERO for delta, body in refused)
    assert refused, "the workload should reach 0 and be refused sometimes"
    assert qty_of(server, item["id"]) == initial + sum(applied)
    print(
        f"hot row: {CLIENTS} clients, {len(results)} deltas, {len(applied)} applied, {len(refused)} refused"
    )
    server.verify()


@direct_and_pooled
def test_hot_row_drained_by_decrements_sells_exactly_the_stock(server):
    """Only -1s: qty falls monotonically, so exactly `stock` of them may succeed: one more
    is an oversell, one fewer is a refusal that was not needed."""
    stock, per_client = 500, 25
    item = create(server, "drained", stock)
    path = f"/items/{item['id']}/qty"

    def client(i):
        return [server.client.request("PATCH", path, {"delta": -1}) for _ in range(per_client)]

    results = [r for batch in parallel(CLIENTS, client) for r in batch]

    statuses = [status for status, _ in results]
    assert statuses.count(200) == stock
    assert statuses.count(400) == CLIENTS * per_client - stock
    assert all(body == BELOW_ZERO for status, body in results if status == 400)
    assert qty_of(server, item["id"]) == 0
    server.verify()


def test_racing_creates_of_one_name_have_exactly_one_winner(server):
    for round_ in range(5):
        name = f"contested {round_}"

        def client(i, name=name):
            return server.client.request("POST", "/items", {"name": name, "qty": i})

        results = parallel(CLIENTS, client)

        statuses = sorted(status for status, _ in results)
        assert statuses == [201] + [400] * (CLIENTS - 1)
        assert all(body["field"] == "name" for status, body in results if status == 400)
    assert sorted(item["name"] for item in server.client.all_items()) == [f"contested {r}" for r in range(5)]
    server.verify()


def test_deletes_racing_deltas_and_renames_answer_only_what_the_contract_allows(server):
    names = [f"item {i}" for i in range(6)]
    ids = [create(server, name, 50)["id"] for name in names]
    allowed = {
        "delta": {200, 400, 404},
        "rename": {200, 400, 404},
        "delete": {204},
        "get": {200, 404},
        "create": {201, 400},
    }

    def client(i):
        rng = random.Random(1000 + i)
        seen = []
        for _ in range(60):
            op = rng.choice(["delta", "delta", "rename", "delete", "get", "create"])
            item_id = rng.choice(ids)
            if op == "delta":
                status, body = server.client.request(
                    "PATCH", f"/items/{item_id}/qty", {"delta": rng.randint(-20, 20)}
                )
            elif op == "rename":
                new_name = rng.choice(names)
                status, body = server.client.request("PATCH", f"/items/{item_id}", {"name": new_name})
            elif op == "delete":
                status, body = server.client.request("DELETE", f"/items/{item_id}")
            elif op == "get":
                status, body = server.client.request("GET", f"/items/{item_id}")
            else:
                status, body = server.client.request("POST", "/items", {"name": rng.choice(names), "qty": 1})
                if status == 201:
                    ids.append(body["id"])
            seen.append((op, status, body))
        return seen

    results = [r for batch in parallel(CLIENTS, client) for r in batch]

    for op, status, body in results:
        assert status in allowed[op], (op, status, body)
        if status == 400 and op == "delta":
            assert body == BELOW_ZERO
        if status == 200 and op in {"delta", "get", "rename"}:
            assert body["qty"] >= 0
    listed = server.client.all_items()
    assert len({item["name"] for item in listed}) == len(listed)
    for item in listed:
        assert server.client.request("GET", f"/items/{item['id']}") == (200, item)
    server.verify()
