"""kill -9 of every server process while writers run: every answered write survives, and
every unanswered one is wholly applied or not at all."""

import http.client
import itertools
import random
import threading
import time

import pytest

from tests.e2e.conftest import Progress, create, kill_between, parallel

pytestmark = pytest.mark.e2e

WRITERS = 8
KILLS = 4
# Each kill comes after a random number of answered writes in this range (and the run ends
# after as many more): where the kills land varies, and not with the machine's speed.
ANSWERED_BETWEEN_KILLS = (100, 300)


def test_kill_9_loses_no_answered_write_and_half_applies_none(server):
    items = [create(server, f"writer {i}", 0)["id"] for i in range(WRITERS)]
    stop = threading.Event()
    progress = Progress()

    def writer(i):
        """Sequential writes: at most one is in flight when the server dies."""
        rng = random.Random(i)
        acked, unknown, created, maybe_created = [], [], {}, {}
        for n in itertools.count():
            if stop.is_set():
                break
            if n % 5 == 4:
                name, qty = f"made by {i} #{n}", rng.randint(0, 1000)
                request, pending = ("POST", "/items", {"name": name, "qty": qty}), ("create", name, qty)
            else:
                delta = rng.randint(1, 1000)
                request, pending = ("PATCH", f"/items/{items[i]}/qty", {"delta": delta}), ("delta", delta)
            try:
                status, body = server.client.request(*request)
            except ConnectionRefusedError:
                time.sleep(0.05)  # nothing reached a server: certainly not applied
                continue
            except (OSError, http.client.HTTPException):
                # Sent, then the server died: applied wholly or not at all.
                if pending[0] == "create":
                    maybe_created[pending[1]] = pending[2]
                else:
                    unknown.append(pending[1])
                time.sleep(0.05)
                continue
            assert status == (201 if pending[0] == "create" else 200), (status, body)
            if pending[0] == "create":
                created[pending[1]] = pending[2]
            else:
                acked.append(pending[1])
            progress.add("answered")
        return acked, unknown, created, maybe_created

    def killer(_):
        kill_between(server, progress, "answered", ANSWERED_BETWEEN_KILLS, KILLS, stop)

    def run(i):
        return killer(i) if i == WRITERS else writer(i)

    results = parallel(WRITERS + 1, run, progress)[:WRITERS]

    stored = {item["name"]: item for item in server.client.all_items()}
    total_acked = total_unknown = 0
    for i, (acked, unknown, created, maybe_created) in enumerate(results):
        total_acked += len(acked) + len(created)
        total_unknown += len(unknown) + len(maybe_created)
        extra = stored[f"writer {i}"]["qty"] - sum(acked)
        # Each unanswered delta was applied wholly or not at all: extra is a subset sum.
        sums = {sum(c) for k in range(len(unknown) + 1) for c in itertools.combinations(unknown, k)}
        assert extra in sums, (i, extra, acked[-3:], unknown)
        for name, qty in created.items():
            assert stored[name]["qty"] == qty
        for name, qty in maybe_created.items():
            assert name not in stored or stored[name]["qty"] == qty
    # Nothing else was made: every stored item was answered or in flight at a kill.
    answered = {name for _, _, created, _ in results for name in created}
    in_flight = {name for *_, maybe_created in results for name in maybe_created}
    assert set(stored) - answered - in_flight == {f"writer {i}" for i in range(WRITERS)}
    assert total_acked == progress["answered"]
    print(f"crash test: {KILLS} kills, {total_acked} answered writes, {total_unknown} unanswered")
    server.verify()
