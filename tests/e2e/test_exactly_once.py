"""Idempotency keys across kill -9: a client that retries every unanswered write with the
same key gets every write applied exactly once, never twice, never lost."""

import http.client
import itertools
import random
import threading
import time
from collections import Counter

import pytest

from tests.e2e.conftest import (
    REQUEST_TIMEOUT,
    START_TIMEOUT,
    Progress,
    create,
    keyed_request,
    kill_between,
    parallel,
)

pytestmark = pytest.mark.e2e

WRITERS = 8
KILLS = 5
# Each kill comes after a random number of answered writes in this range (and the run ends
# after as many more): where the kills land varies, and not with the machine's speed.
WRITES_BETWEEN_KILLS = (100, 300)
# A write may wait out a restart and an attempt cut short on either side of it.
ANSWER_TIMEOUT = START_TIMEOUT + 2 * REQUEST_TIMEOUT
INITIAL = 100
STILL_RUNNING = "a request with this Idempotency-Key is still running"


def until_answered(server, method: str, path: str, body: dict, key: str, rng, counts: Progress):
    """Send the same request with the same key until it gets its answer. Without an answer
    the write may or may not have been applied; the key makes sending it again safe."""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    # Sometimes give up on the first answer, as a client whose timeout expired does: the write
    # is then committed but unanswered, which a kill rarely catches, so replays surely happen.
    abandon = rng.random() < 0.05
    killed_in_flight = False
    while time.monotonic() < deadline:
        try:
            result = keyed_request(server, method, path, body, key, abandon=abandon)
        except ConnectionRefusedError:
            counts.add("refused")  # the server is down: nothing was sent
        except (OSError, http.client.HTTPException):
            counts.add("lost")  # sent, and the server died before answering
            killed_in_flight = True
        else:
            if result is None:
                counts.add("abandoned")
            elif result[0] == 503 or (result[0] == 409 and result[1]["error"] == STILL_RUNNING):
                counts.add("busy")
            else:
                counts.add("replays", result[2])
                counts.add("replays after a kill", result[2] and killed_in_flight)
                return result[:2]
        abandon = False
        time.sleep(0.05)
    raise AssertionError(f"no answer to {method} {path} (key {key}) in {ANSWER_TIMEOUT} s")


def test_retried_writes_are_applied_exactly_once_across_kill_9(server):
    items = [create(server, f"writer {i}", INITIAL) for i in range(WRITERS)]
    stop = threading.Event()
    progress = Progress()

    def writer(i):
        """Sequential writes on its own item, so each answer's qty is known in advance."""
        rng = random.Random(i)
        item, qty = items[i], INITIAL
        deltas, created = [], {}
        for n in itertools.count():
            if stop.is_set():
                break
            key = f"writer-{i}-write-{n}"
            roll = rng.random()
            if roll < 0.15:
                name, new_qty = f"made by {i} #{n}", rng.randint(0, 1000)
                status, body = until_answered(
                    server, "POST", "/items", {"name": name, "qty": new_qty}, key, rng, progress
                )
                # A create applied twice would be a 400 for the duplicate name.
                assert status == 201, (key, status, body)
                assert (body["name"], body["qty"]) == (name, new_qty), (key, body)
                created[name] = body
            else:
                delta = rng.randint(1, 1000)
                if roll < 0.35:
                    request = ("POST", "/adjustments", {"changes": [{"id": item["id"], "delta": delta}]})
                else:
                    request = ("PATCH", f"/items/{item['id']}/qty", {"delta": delta})
                status, body = until_answered(server, *request, key, rng, progress)
                assert status == 200, (key, status, body)
                qty += delta
                # A replay is the first answer: the qty right after this write, not a later one.
                answered = body["items"][0] if request[1] == "/adjustments" else body
                expected = {**item, "qty": qty}
                if "available" in item:  # an item with holds' fields: available = qty - reserved
                    expected["available"] = qty - item["reserved"]
                assert answered == expected, (key, answered, qty)
                deltas.append(delta)
            progress.add("writes")
        return deltas, created

    def killer(_):
        # Replays come mostly from abandoned first attempts (5% of writes): wait for one.
        kill_between(
            server,
            progress,
            "writes",
            WRITES_BETWEEN_KILLS,
            KILLS,
            stop,
            lambda c: c["replays"] > 0,
            ", a replay",
        )

    def run(i):
        return killer(i) if i == WRITERS else writer(i)

    results = parallel(WRITERS + 1, run, progress)[:WRITERS]

    stored = {item["name"]: item for item in server.client.all_items()}
    counts = progress.counts()
    assert len(stored) == WRITERS + sum(len(created) for _, created in results)
    assert counts["writes"] == sum(len(deltas) + len(created) for deltas, created in results)
    for i, (deltas, created) in enumerate(results):
        item = stored[f"writer {i}"]
        assert item["qty"] == INITIAL + sum(deltas), (i, item)
        ledger = [(m["kind"], m["delta"]) for m in server.client.movements(item["id"])]
        assert ledger == [("create", INITIAL)] + [("adjust", d) for d in deltas], i
        for name, body in created.items():
            assert stored[name] == body
            assert [(m["kind"], m["delta"]) for m in server.client.movements(body["id"])] == [
                ("create", body["qty"])
            ]
    assert counts["replays"], "some retries should have met an answer already stored"
    print(
        f"exactly once: {KILLS} kills, {counts['writes']} writes, {counts['lost']} answers lost in a kill, "
        f"{counts['refused']} retries refused while down, {counts['abandoned']} abandoned, "
        f"{counts['busy']} busy (409/503), {counts['replays']} replays "
        f"({counts['replays after a kill']} after a kill), all applied exactly once"
    )
    server.verify()


def test_a_concurrent_repeat_is_applied_once(server):
    """Two clients send the same key at the same moment: the one that runs answers 200;
    the other gets 409 while it still runs, or its replay."""
    ids = [create(server, f"line {i:03}", 0)["id"] for i in range(200)]
    rounds = 10
    outcomes = Counter()
    # A batch of 200 changes takes long enough for the two to overlap.
    body = {"changes": [{"id": item_id, "delta": 1} for item_id in ids]}
    for round_ in range(rounds):
        key = f"repeat-{round_}"
        answers = parallel(2, lambda _, key=key: keyed_request(server, "POST", "/adjustments", body, key))

        originals = [answer for status, answer, replayed in answers if status == 200 and not replayed]
        assert len(originals) == 1, answers
        assert all(item["qty"] == round_ + 1 for item in originals[0]["items"])
        for status, answer, replayed in answers:
            if replayed:
                assert (status, answer) == (200, originals[0])
                outcomes["replay"] += 1
            elif status == 409:
                assert answer["error"] == STILL_RUNNING, answer
                outcomes["409"] += 1
            else:
                assert (status, answer) == (200, originals[0]), answer
                outcomes["original"] += 1
        # Once the first has finished, a retry gets its answer back.
        assert keyed_request(server, "POST", "/adjustments", body, key) == (200, originals[0], True)
    for item_id in ids:
        ledger = [(m["kind"], m["delta"]) for m in server.client.movements(item_id)]
        assert ledger == [("create", 0)] + [("adjust", 1)] * rounds, item_id
    print(f"concurrent repeat: {rounds} rounds, {dict(outcomes)}")
    server.verify()
