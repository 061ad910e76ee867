"""The change feed under real parallel writers: a consumer that keeps `next` and polls with it
sees every acknowledged write's events exactly once and none of a refused write's, each write's
events together and, for one item, in the order its writes were acknowledged; replaying what it
saw over an empty state gives exactly the items the service lists at the end."""

import http.client
import itertools
import json
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest

from tests.e2e.conftest import REQUEST_TIMEOUT, Progress, parallel

pytestmark = pytest.mark.e2e

WRITERS = 32
ITEMS = 8  # made before the writers start; creates add more while they run
INITIAL = 100
ACKNOWLEDGED = 1500  # the run ends once the writers have this many 2xx answers
FEED_LIMIT = 1000
# After the last writer's answer, the feed must show everything well within this.
DRAIN_TIMEOUT = 120
# A 503 (the database stayed busy past its timeout) wrote nothing, so the write may be sent
# again, under a new request id; one write may wait out a few of them on a loaded machine.
ANSWER_TIMEOUT = 4 * REQUEST_TIMEOUT
# While the writers run, an empty poll waits this long for more, less when they finish.
POLL_INTERVAL = 0.05


@dataclass
class Write:
    """An acknowledged write: who sent it, as which of its writes, and what it touched."""

    request_id: str
    writer: int
    n: int
    kind: str
    items: tuple[str, ...]
    answer: dict | None


def send(server, method: str, path: str, body, request_id: str) -> tuple[int, dict | None]:
    """(status, JSON body) of one request sent with its own X-Request-ID, which the answer
    must echo."""
    client = server.client
    connection = http.client.HTTPConnection("127.0.0.1", client.port, timeout=client.timeout)
    try:
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {client.token}",
            "X-Request-ID": request_id,
        }
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        raw = response.read()
        assert response.getheader("X-Request-ID") == request_id, (method, path, response.status, raw[:200])
        return response.status, (json.loads(raw) if raw else None)
    finally:
        connection.close()


def test_feed_shows_every_acknowledged_write_once_in_order_and_replays_to_the_state(server):
    run = uuid.uuid4().hex[:8]
    stop = threading.Event()
    writers_finished = threading.Event()
    progress = Progress()
    pool_lock = threading.Lock()
    pool: list[str] = []  # the ids of every item made so far
    setup: list[Write] = []
    for i in range(ITEMS):
        request_id = f"feed-{run}-setup-{i}"
        status, item = send(server, "POST", "/items", {"name": f"feed {run} {i}", "qty": INITIAL}, request_id)
        assert status == 201, item
        pool.append(item["id"])
        setup.append(Write(request_id, -1, i, "create", (item["id"],), item))

    def writer(i):
        rng = random.Random(9100 + i)
        acked: list[Write] = []
        refused: list[tuple[str, int, dict | None]] = []
        busy: list[str] = []
        holds: list[tuple[str, list[dict]]] = []  # active holds this writer made
        available: dict[str, int] = {}  # the last available seen of each item

        def write(n, method, path, body, expected):
            """(status, body, request id) of the first answer that is not a 503."""
            deadline = time.monotonic() + ANSWER_TIMEOUT
            for attempt in itertools.count():
                request_id = f"feed-{run}-w{i}-{n}-{attempt}"
                status, reply = send(server, method, path, body, request_id)
                if status != 503:
                    assert status in expected, (method, path, body, status, reply)
                    if status >= 400:
                        refused.append((request_id, status, reply))
                        progress.add("refused")
                    return status, reply, request_id
                assert reply["error"] == "database_unavailable", reply
                busy.append(request_id)
                progress.add("busy")
                assert time.monotonic() < deadline, f"{method} {path}: only 503s for {ANSWER_TIMEOUT} s"
                time.sleep(0.05)

        def acknowledged(request_id, n, kind, items, answer):
            acked.append(Write(request_id, i, n, kind, tuple(items), answer))
            progress.add("acknowledged")
            progress.add(kind)

        def seen(item):
            assert item["available"] == item["qty"] - item["reserved"], item
            available[item["id"]] = item["available"]

        def change(item_id):
            """A delta that keeps the item's available in a band, where some are refused."""
            down = rng.random() < (0.7 if available.get(item_id, INITIAL) > 30 else 0.3)
            return -rng.randint(1, 6) if down else rng.randint(1, 6)

        try:
            for n in itertools.count():
                if stop.is_set() or progress.failed:
                    break
                with pool_lock:
                    ids = list(pool)
                roll = rng.random()
                if holds and roll < 0.15:
                    hold_id, lines = holds.pop(rng.randrange(len(holds)))
                    action = rng.choice(["commit", "release"])
                    status, body, request_id = write(n, "POST", f"/holds/{hold_id}/{action}", None, (200,))
                    assert body["state"] == {"commit": "committed", "release": "released"}[action], body
                    acknowledged(request_id, n, action, [line["id"] for line in lines], body)
                elif roll < 0.45:
                    item_id = rng.choice(ids)
                    body = {"delta": change(item_id)}
                    status, reply, request_id = write(n, "PATCH", f"/items/{item_id}/qty", body, (200, 400))
                    if status == 200:
                        seen(reply)
                        acknowledged(request_id, n, "delta", [item_id], reply)
                elif roll < 0.65:
                    chosen = rng.sample(ids, rng.randint(2, 3))
                    body = {"changes": [{"id": item_id, "delta": change(item_id)} for item_id in chosen]}
                    status, reply, request_id = write(n, "POST", "/adjustments", body, (200, 400))
                    if status == 200:
                        for item in reply["items"]:
                            seen(item)
                        acknowledged(request_id, n, "batch", chosen, reply)
                elif roll < 0.88:
                    chosen = rng.sample(ids, rng.randint(1, 2))
                    lines = [{"id": item_id, "qty": rng.randint(1, 3)} for item_id in chosen]
                    status, reply, request_id = write(n, "POST", "/holds", {"lines": lines}, (201, 409))
                    if status == 201:
                        assert reply["state"] == "active" and reply["lines"] == lines, reply
                        holds.append((reply["id"], lines))
                        acknowledged(request_id, n, "hold", chosen, reply)
                    else:
                        assert reply["error"] == "not enough available stock", reply
                        available[reply["id"]] = reply["available"]
                elif roll < 0.95:
                    body = {"name": f"feed {run} w{i} n{n}", "qty": rng.randint(0, INITIAL)}
                    status, reply, request_id = write(n, "POST", "/items", body, (201,))
                    with pool_lock:
                        pool.append(reply["id"])
                    acknowledged(request_id, n, "create", [reply["id"]], reply)
                else:
                    # A write refused whole: its events must never appear.
                    item_id, other = rng.sample(ids, 2)
                    path, body, expected = rng.choice(
                        [
                            (f"/items/{item_id}/qty", {"delta": -(10**12)}, (400,)),
                            (
                                "/adjustments",
                                {"changes": [{"id": other, "delta": 1}, {"id": item_id, "delta": -(10**12)}]},
                                (400,),
                            ),
                            (
                                "/holds",
                                {"lines": [{"id": other, "qty": 1}, {"id": item_id, "qty": 10**12}]},
                                (409,),
                            ),
                            (f"/items/{uuid.uuid4()}/qty", {"delta": 1}, (404,)),
                        ]
                    )
                    write(n, "PATCH" if path.endswith("/qty") else "POST", path, body, expected)
            return acked, refused, busy
        finally:
            progress.add("writers done")
            if progress["writers done"] == WRITERS:
                writers_finished.set()

    def coordinator():
        try:
            progress.wait_until(
                lambda c: c["acknowledged"] >= ACKNOWLEDGED, f"{ACKNOWLEDGED} acknowledged writes"
            )
        finally:
            stop.set()  # also when the wait failed, so that the writers end

    feed: list[dict] = []
    polls = Counter()

    def consumer():
        """Poll with `next` while the writers run; once they are done, until two polls in a
        row bring nothing new."""
        after, empty, drain_deadline = None, 0, None
        while True:
            finished = writers_finished.is_set()  # read before the poll: it then sees every write
            if finished and drain_deadline is None:
                drain_deadline = time.monotonic() + DRAIN_TIMEOUT
            query = {"limit": FEED_LIMIT} | ({"after": after} if after is not None else {})
            status, page = server.client.request("GET", f"/events?{urlencode(query)}")
            polls["polls"] += 1
            assert status == 200, (status, page)
            assert page["next"] is not None and len(page["events"]) <= FEED_LIMIT, page
            feed.extend(page["events"])
            after = page["next"]
            if page["events"]:
                empty = 0
            elif finished:
                empty += 1
                if empty == 2:
                    return
            else:
                polls["empty while writing"] += 1
                writers_finished.wait(POLL_INTERVAL)
            if drain_deadline is not None:
                assert time.monotonic() < drain_deadline, (
                    f"the feed still brought events {DRAIN_TIMEOUT} s after the last write ({len(feed)} seen)"
                )

    def run_one(i):
        if i < WRITERS:
            return writer(i)
        if i == WRITERS:
            return coordinator()
        return consumer()

    started = time.monotonic()
    results = parallel(WRITERS + 2, run_one, progress)[:WRITERS]
    ran = time.monotonic() - started
    counts = progress.counts()

    acked = setup + [write for result in results for write in result[0]]
    refused = [entry for result in results for entry in result[1]]
    busy = [request_id for result in results for request_id in result[2]]
    by_id = {write.request_id: write for write in acked}
    assert len(by_id) == len(acked)

    # No event twice.
    twice = {event_id: n for event_id, n in Counter(event["id"] for event in feed).items() if n > 1}
    assert not twice, f"{len(twice)} event ids seen more than once: {list(twice.items())[:10]}"

    # Every acknowledged write's events, none of a refused or busy one's, and nothing else.
    positions: dict[str, list[int]] = defaultdict(list)
    for k, event in enumerate(feed):
        positions[event["request_id"]].append(k)
    missing = [write for write in acked if write.request_id not in positions]
    assert not missing, (
        f"{len(missing)} of {len(acked)} acknowledged writes have no event in the feed: "
        + "; ".join(f"{w.request_id} {w.kind} {w.items}" for w in missing[:10])
    )
    leaked = [(rid, status) for rid, status, _ in refused if rid in positions] + [
        (rid, 503) for rid in busy if rid in positions
    ]
    assert not leaked, f"refused writes have events: {leaked[:10]}"
    strangers = Counter(rid for rid in positions if rid not in by_id)
    assert not strangers, f"events of no acknowledged write: {dict(strangers)}"

    # The events of one write come together, and name exactly the items it touched.
    for request_id, found in positions.items():
        assert found == list(range(found[0], found[-1] + 1)), (
            f"{request_id}: its events are split in the feed, at positions {found}"
        )
        touched = {feed[k]["item_id"] for k in found} - {None}
        assert touched == set(by_id[request_id].items), (request_id, by_id[request_id], touched)

    # What a delta or a batch answered is what its qty_changed events say.
    for write in acked:
        if write.kind not in ("delta", "batch"):
            continue
        answered = [write.answer] if write.kind == "delta" else write.answer["items"]
        said = {
            feed[k]["item_id"]: feed[k]["data"]
            for k in positions[write.request_id]
            if feed[k]["type"] == "item.qty_changed"
        }
        for item in answered:
            data = said[item["id"]]
            assert (data["qty"], data["reserved"], data["available"]) == (
                item["qty"],
                item["reserved"],
                item["available"],
            ), (write.request_id, item, data)

    # For one writer's writes to one item, one after another: feed order is answer order.
    where: dict[tuple[str, str], list[int]] = defaultdict(list)
    for k, event in enumerate(feed):
        if event["item_id"] is not None:
            where[event["request_id"], event["item_id"]].append(k)
    ordered_pairs = 0
    for result in results:
        last: dict[str, Write] = {}
        for write in result[0]:
            for item_id in write.items:
                before = last.get(item_id)
                if before is not None:
                    earlier, later = where[before.request_id, item_id], where[write.request_id, item_id]
                    assert max(earlier) < min(later), (
                        f"writer {write.writer}, item {item_id}: {before.request_id} ({before.kind}) was "
                        f"answered before {write.request_id} ({write.kind}) was sent, yet the feed has "
                        f"them at {earlier} and {later}"
                    )
                    ordered_pairs += 1
                last[item_id] = write

    # Replaying the feed over an empty state gives the state.
    model: dict[str, dict] = {}
    for event in feed:
        item_id, data = event["item_id"], event["data"]
        if event["type"] in ("item.created", "item.updated"):
            model[item_id] = {"name": data["name"], "qty": data["qty"], "reserved": data["reserved"]}
        elif event["type"] == "item.deleted":
            model.pop(item_id, None)
        elif event["type"] == "item.qty_changed":
            assert item_id in model, f"qty_changed before the item's creation: {event}"
            assert data["available"] == data["qty"] - data["reserved"], event
            model[item_id]["qty"], model[item_id]["reserved"] = data["qty"], data["reserved"]
    final = {
        item["id"]: {k: item[k] for k in ("name", "qty", "reserved")} for item in server.client.all_items()
    }
    assert sorted(final) == sorted(pool)
    differing = {
        item_id: (model.get(item_id), final.get(item_id))
        for item_id in set(model) | set(final)
        if model.get(item_id) != final.get(item_id)
    }
    assert not differing, f"replay != state for {len(differing)} items (replayed, listed): {differing}"
    server.verify()

    print(
        f"feed: {WRITERS} writers, {len(acked)} writes acknowledged ({len(setup)} setup creates + "
        f"{counts['delta']} deltas, {counts['batch']} batches, {counts['hold']} holds, {counts['commit']} "
        f"commits, {counts['release']} releases, {counts['create']} creates), {counts['refused']} refused "
        f"(4xx: {dict(Counter(status for _, status, _ in refused))}), {counts['busy']} 503s retried; "
        f"{len(feed)} events seen ({dict(Counter(event['type'] for event in feed))}) in "
        f"{polls['polls']} polls ({polls['empty while writing']} empty while writing); {ran:.1f} s"
    )
    print(
        f"feed checks: every acknowledged write's events, none twice, none of a refused write, each "
        f"write's together; {ordered_pairs} same-writer same-item pairs in answer order; replay == "
        f"GET /items for all {len(final)} items (qty, reserved, name); verify ok"
    )
