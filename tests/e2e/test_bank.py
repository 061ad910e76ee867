"""The bank test: batches move stock between items while readers watch the total.

Every batch conserves the total, so a reader that ever sees another total has seen a batch
half applied; the ledger and the answered batches must account for every unit at the end.
"""

import random
import threading
import time

import pytest

from tests.e2e.conftest import PROGRESS_TIMEOUT, Progress, create, direct_and_pooled, parallel

pytestmark = pytest.mark.e2e

ITEMS = 10
INITIAL = 1000
CLIENTS = 16
BATCHES = 60
READERS = 3
# Reads made while batches run: the clients go on past BATCHES until there were this many.
MIN_READS = 30
BELOW_ZERO = "qty cannot go below 0"


def random_batch(rng: random.Random, ids: list[str]) -> list[dict]:
    """Take n from one item and give it to one or two others: the total is unchanged."""
    # Mostly small moves; sometimes more than an item can hold, so the batch is refused.
    n = rng.randint(1, 300) if rng.random() < 0.8 else rng.randint(800, 2500)
    if rng.random() < 0.3:
        a, b, c = rng.sample(ids, 3)
        k = rng.randint(0, n)
        return [{"id": a, "delta": -n}, {"id": b, "delta": k}, {"id": c, "delta": n - k}]
    a, b = rng.sample(ids, 2)
    return [{"id": a, "delta": -n}, {"id": b, "delta": n}]


@direct_and_pooled
def test_batches_conserve_the_total_and_are_never_seen_half_applied(server):
    ids = [create(server, f"account {i}", INITIAL)["id"] for i in range(ITEMS)]
    total = ITEMS * INITIAL
    writers_left = [CLIENTS]
    lock = threading.Lock()
    done = threading.Event()
    progress = Progress()

    def client(i):
        rng = random.Random(i)
        answers = []
        deadline = time.monotonic() + PROGRESS_TIMEOUT
        while len(answers) < BATCHES or (progress["reads"] < MIN_READS and not progress.failed):
            assert time.monotonic() < deadline, f"{MIN_READS} reads not made in {PROGRESS_TIMEOUT} s"
            changes = random_batch(rng, ids)
            status, body = server.client.request("POST", "/adjustments", {"changes": changes})
            answers.append((changes, status, body))
        with lock:
            writers_left[0] -= 1
            if writers_left[0] == 0:
                done.set()
        return answers

    def reader(_):
        # One GET is one query, so one snapshot: it sees each batch wholly or not at all. The
        # accounts fit in one page, so one GET sees them all.
        seen = []
        while not done.is_set():
            status, page = server.client.request("GET", "/items?limit=1000")
            assert status == 200, page
            assert page["next"] is None and len(page["items"]) == ITEMS, page
            seen.append(
                (sum(item["qty"] for item in page["items"]), min(item["qty"] for item in page["items"]))
            )
            progress.add("reads")
        return seen

    def run(i):
        return client(i) if i < CLIENTS else reader(i)

    results = parallel(CLIENTS + READERS, run, progress)
    answers = [answer for batch in results[:CLIENTS] for answer in batch]
    reads = [read for seen in results[CLIENTS:] for read in seen]

    expected = dict.fromkeys(ids, INITIAL)
    applied = refused = 0
    for changes, status, body in answers:
        assert status in (200, 400), (status, body, changes)
        if status == 200:
            applied += 1
            for change in changes:
                expected[change["id"]] += change["delta"]
            assert all(item["qty"] >= 0 for item in body["items"]), body
        else:
            refused += 1
            assert body["error"] == BELOW_ZERO, (body, changes)
            assert any(c["id"] == body["id"] and c["delta"] < 0 for c in changes), (body, changes)
    assert applied and refused, "the workload should both apply and refuse batches"
    assert len(reads) >= MIN_READS, "the readers should have read while the batches ran"
    for seen_total, seen_min in reads:
        assert seen_total == total, f"a reader saw a total of {seen_total}, not {total}"
        assert seen_min >= 0

    final = {item["id"]: item["qty"] for item in server.client.all_items()}
    assert sum(final.values()) == total
    assert final == expected
    for item_id in ids:
        assert sum(m["delta"] for m in server.client.movements(item_id)) == final[item_id], item_id
    print(
        f"bank: {CLIENTS} clients, {len(answers)} batches, {applied} applied, {refused} refused, "
        f"{len(reads)} reads, final total {sum(final.values())}"
    )
    server.verify()
