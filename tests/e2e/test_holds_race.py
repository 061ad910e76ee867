"""Holds under real parallel clients: the last units go to exactly as many holds as they can
fill, never more, and a mixed run of holds, commits, releases, expiries and deltas leaves
every item's qty and reserved exactly what the answers say."""

import itertools
import random
import threading
import time
from collections import Counter

import pytest

from tests.e2e.conftest import (
    PROGRESS_TIMEOUT,
    REQUEST_TIMEOUT,
    Progress,
    create,
    direct_and_pooled,
    parallel,
)

pytestmark = pytest.mark.e2e

CLIENTS = 32
NOT_ENOUGH = "not enough available stock"
BELOW_RESERVED = "qty cannot go below reserved"
BELOW_ZERO = "qty cannot go below 0"
# A 503 (the database stayed busy past its timeout) wrote nothing, so the request may be sent
# again; one request may wait out a few of them on a loaded machine.
ANSWER_TIMEOUT = 4 * REQUEST_TIMEOUT
LONG_TTL = 3600  # longer than any run: these holds end only by commit or release
# A 1 s hold is expired for every reader one second after it was made: waiting for that
# should take seconds, and is given far more, for a machine that answers slowly.
EXPIRY_TIMEOUT = 120


def answer(server, method: str, path: str, body=None, counts: Counter | None = None):
    """(status, body) of the first answer that is not a 503. A 503 wrote nothing, so sending
    the same request again is safe; a short back-off, within a deadline."""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while True:
        status, reply = server.client.request(method, path, body)
        if status != 503:
            return status, reply
        assert reply["error"] == "database_unavailable", reply
        if counts is not None:
            counts["busy"] += 1
        assert time.monotonic() < deadline, f"{method} {path}: only 503s for {ANSWER_TIMEOUT} s"
        time.sleep(0.05)


def check_item_seen(item: dict) -> None:
    """What any answer may show of an item while holds come and go."""
    assert 0 <= item["reserved"] <= item["qty"], item
    assert item["available"] == item["qty"] - item["reserved"], item


def hold_lines(server, hold_id: str) -> tuple[str, list[dict]]:
    status, hold = server.client.request("GET", f"/holds/{hold_id}")
    assert status == 200, (hold_id, status, hold)
    return hold["state"], hold["lines"]


def active_hold_ids(server, item_id: str) -> list[str]:
    """Every page of the item's active holds."""
    return [hold["id"] for page in server.client.pages(f"/items/{item_id}/holds", "holds") for hold in page]


@direct_and_pooled
def test_racing_holds_take_exactly_the_last_units_and_never_more(server):
    rounds, stock = 5, 20
    figures = Counter()
    for round_ in range(rounds):
        item = create(server, f"last units {round_}", stock)
        item_id = item["id"]

        def client(i, item_id=item_id, round_=round_):
            """Ask for 1-3 units until the item is seen sold out, reading it between asks."""
            rng = random.Random(round_ * CLIENTS + i)
            made, refused, seen, counts = [], [], [], Counter()
            deadline = time.monotonic() + PROGRESS_TIMEOUT
            while True:
                assert time.monotonic() < deadline, f"client {i}: not sold out in {PROGRESS_TIMEOUT} s"
                lines = [{"id": item_id, "qty": rng.randint(1, 3)}]
                status, body = answer(server, "POST", "/holds", {"lines": lines}, counts)
                if status == 201:
                    assert body["state"] == "active" and body["lines"] == lines, body
                    made.append((body["id"], lines[0]["qty"]))
                else:
                    assert status == 409, (status, body)
                    assert body["error"] == NOT_ENOUGH and body["id"] == item_id, body
                    assert 0 <= body["available"] < lines[0]["qty"], (body, lines)
                    refused.append(body["available"])
                    if body["available"] == 0:
                        break
                status, seen_item = server.client.request("GET", f"/items/{item_id}")
                assert status == 200, seen_item
                check_item_seen(seen_item)
                seen.append(seen_item)
                if seen_item["available"] == 0:
                    break
            return made, refused, seen, counts

        results = parallel(CLIENTS, client)

        made = [hold for result in results for hold in result[0]]
        refused = [available for result in results for available in result[1]]
        seen = [item for result in results for item in result[2]]
        held = sum(qty for _, qty in made)
        # Nothing releases stock here, so the clients stop only once it is all held: exactly
        # the stock, never a unit more.
        assert held == stock, f"round {round_}: {held} units held of {stock}"
        assert all(seen_item["qty"] == stock for seen_item in seen)
        for hold_id, qty in made:
            assert hold_lines(server, hold_id) == ("active", [{"id": item_id, "qty": qty}]), hold_id
        assert sorted(active_hold_ids(server, item_id)) == sorted(hold_id for hold_id, _ in made)
        final = {listed["id"]: listed for listed in server.client.all_items()}[item_id]
        assert (final["qty"], final["reserved"], final["available"]) == (stock, stock, 0), final
        figures["holds"] += len(made)
        figures["refused"] += len(refused)
        figures["reads"] += len(seen)
        figures["busy"] += sum(result[3]["busy"] for result in results)
    server.verify()
    print(
        f"holds race: {CLIENTS} clients, {rounds} rounds of {stock} units, {figures['holds']} holds made "
        f"(exactly {stock} units each round), {figures['refused']} refused 409 {NOT_ENOUGH!r}, "
        f"{figures['reads']} reads with 0 <= reserved <= qty, {figures['busy']} 503s retried; verify ok"
    )


ITEMS = 4
INITIAL = 30
MIXED_CLIENTS = 16
# The run ends once every count here is reached (and all of them over TOTAL_OPS answers).
TOTAL_OPS = 2000
ENOUGH = {"made": 120, "committed": 25, "released": 25, "short ttl": 25, "acted too late": 5, "applied": 60}
# A client acts on a hold after this many more operations of its own, a number drawn in the
# range: a 1 s hold is then sometimes acted on after it expired, on a fast machine too.
ACT_AFTER = {1: (0, 60), LONG_TTL: (0, 20)}


class Hold:
    def __init__(self, hold_id: str, lines: list[dict], ttl: int, plan: str, due: int):
        self.id, self.lines, self.ttl, self.plan = hold_id, lines, ttl, plan
        self.due = due  # the client's operation count from which it acts on the hold
        self.outcome: str | None = None  # what the answer to the client's action said


def plan_for(rng: random.Random, ttl: int) -> str:
    """What the client will do with a hold. A 1 s hold is mostly left to expire; acting on
    it races its expiry, and either answer is the contract's."""
    if ttl == 1:
        return rng.choices(["expire", "commit", "release"], [6, 2, 2])[0]
    return rng.choices(["commit", "release", "keep"], [45, 40, 15])[0]


@direct_and_pooled
def test_mixed_holds_commits_releases_expiries_and_deltas_account_for_every_unit(server):
    ids = [create(server, f"mixed {i}", INITIAL)["id"] for i in range(ITEMS)]
    stop = threading.Event()
    progress = Progress()

    def client(i):
        rng = random.Random(7000 + i)
        holds, pending, deltas, counts = [], [], [], Counter()
        # The last available seen of each item: deltas push it toward a small band, where
        # holds are refused for lack of stock and deltas for going below reserved.
        available = dict.fromkeys(ids, INITIAL)

        def seen(item):
            check_item_seen(item)
            available[item["id"]] = item["available"]

        for n in itertools.count():
            if stop.is_set() or progress.failed:
                break
            roll = rng.random()
            due = [hold for hold in pending if hold.due <= n]
            if due and roll < 0.35:
                hold = rng.choice(due)
                pending.remove(hold)
                status, body = answer(server, "POST", f"/holds/{hold.id}/{hold.plan}", None, counts)
                if status == 200:
                    assert body["id"] == hold.id and body["lines"] == hold.lines, body
                    expected = ("committed",) if hold.plan == "commit" else ("released", "expired")
                    assert body["state"] in expected, (hold.plan, body)
                    # Releasing an expired hold is 200 and changes nothing: it stays expired.
                    hold.outcome = body["state"]
                    assert hold.outcome != "expired" or hold.ttl == 1, body
                else:
                    # Only a 1 s hold can have expired before its commit.
                    assert (status, body, hold.plan, hold.ttl) == (
                        409,
                        {"error": "hold is expired"},
                        "commit",
                        1,
                    ), (hold.id, status, body)
                    hold.outcome = "expired"
                progress.add(hold.outcome if hold.outcome != "expired" else f"{hold.plan} too late")
                progress.add("acted too late", int(hold.outcome == "expired"))
            elif roll < 0.75:
                chosen = rng.sample(ids, rng.randint(1, 2))
                lines = [{"id": item_id, "qty": rng.randint(1, 4)} for item_id in chosen]
                ttl = 1 if rng.random() < 0.3 else LONG_TTL
                status, body = answer(server, "POST", "/holds", {"lines": lines, "ttl_seconds": ttl}, counts)
                if status == 201:
                    assert body["lines"] == lines, body
                    # The answer shows the state as of its sending: on a slow machine a 1 s
                    # hold may be expired by then.
                    assert body["state"] == "active" or (ttl == 1 and body["state"] == "expired"), body
                    progress.add("expired when answered", int(body["state"] == "expired"))
                    hold = Hold(body["id"], lines, ttl, plan_for(rng, ttl), n + rng.randint(*ACT_AFTER[ttl]))
                    holds.append(hold)
                    if hold.plan in ("commit", "release"):
                        pending.append(hold)
                    progress.add("made")
                    progress.add("short ttl", int(ttl == 1))
                else:
                    assert status == 409 and body["error"] == NOT_ENOUGH, (status, body)
                    line = next(line for line in lines if line["id"] == body["id"])
                    assert 0 <= body["available"] < line["qty"], (body, lines)
                    available[body["id"]] = body["available"]
                    progress.add("refused")
            elif roll < 0.95:
                item_id = rng.choice(ids)
                down = rng.random() < (0.75 if available[item_id] > 12 else 0.3)
                delta = -rng.randint(1, 10) if down else rng.randint(1, 10)
                status, body = answer(server, "PATCH", f"/items/{item_id}/qty", {"delta": delta}, counts)
                deltas.append((item_id, delta, status, body))
                if status == 200:
                    seen(body)
                    progress.add("applied")
                else:
                    assert status == 400 and delta < 0, (delta, status, body)
                    assert body["error"] in (BELOW_RESERVED, BELOW_ZERO), body
                    if body["error"] == BELOW_RESERVED:
                        assert body["reserved"] > 0, body
                    progress.add("below reserved" if body["error"] == BELOW_RESERVED else "below 0")
            else:
                status, body = server.client.request("GET", f"/items/{rng.choice(ids)}")
                assert status == 200, body
                seen(body)
                progress.add("reads")
            progress.add("ops")
        return holds, deltas, counts

    def coordinator(_):
        try:
            progress.wait_until(
                lambda c: c["ops"] >= TOTAL_OPS and all(c[name] >= n for name, n in ENOUGH.items()),
                f"{TOTAL_OPS} operations with at least {ENOUGH}",
            )
        finally:
            stop.set()  # also when the wait failed, so that the clients end

    def run(i):
        return coordinator(i) if i == MIXED_CLIENTS else client(i)

    started = time.monotonic()
    results = parallel(MIXED_CLIENTS + 1, run, progress)[:MIXED_CLIENTS]
    ran = time.monotonic() - started
    holds = [hold for held, _, _ in results for hold in held]
    deltas = [delta for _, made, _ in results for delta in made]
    counts = progress.counts()

    # Every 1 s hold nobody committed or released before it expired must read expired; the
    # last of them were made a moment ago.
    waiting = {hold.id for hold in holds if hold.ttl == 1 and hold.outcome in (None, "expired")}
    expiring = len(waiting)
    deadline = time.monotonic() + EXPIRY_TIMEOUT
    while waiting:
        waiting = {hold_id for hold_id in waiting if hold_lines(server, hold_id)[0] != "expired"}
        if waiting:
            assert time.monotonic() < deadline, (
                f"{len(waiting)} 1 s holds not expired after {EXPIRY_TIMEOUT} s"
            )
            time.sleep(0.2)

    states = {hold.id: hold_lines(server, hold.id) for hold in holds}
    for hold in holds:
        state, lines = states[hold.id]
        assert lines == hold.lines, hold.id
        if hold.outcome is not None:
            assert state == hold.outcome, (hold.id, hold.plan, hold.outcome, state)
        elif hold.ttl == 1:
            assert state == "expired", (hold.id, state)
        else:
            assert state == "active", (hold.id, hold.plan, state)  # kept, or its action not reached
    committed = [hold for hold in holds if hold.outcome == "committed"]
    active = [hold for hold in holds if states[hold.id][0] == "active"]

    final = {item["id"]: item for item in server.client.all_items()}
    assert sorted(final) == sorted(ids)
    for item_id in ids:
        applied = [d for i, d, status, _ in deltas if i == item_id and status == 200]
        taken = [(h.id, line["qty"]) for h in committed for line in h.lines if line["id"] == item_id]
        reserved = sum(line["qty"] for h in active for line in h.lines if line["id"] == item_id)
        item = final[item_id]
        assert item["qty"] == INITIAL + sum(applied) - sum(qty for _, qty in taken), (item, applied, taken)
        assert item["reserved"] == reserved, (item, reserved)
        assert item["available"] == item["qty"] - reserved, item
        listed = sorted(active_hold_ids(server, item_id))
        assert listed == sorted(h.id for h in active if any(line["id"] == item_id for line in h.lines))
        ledger = server.client.movements(item_id)
        assert sorted(m["delta"] for m in ledger if m["kind"] == "adjust") == sorted(applied), item_id
        commits = sorted((m["hold_id"], -m["delta"]) for m in ledger if m["kind"] == "commit")
        assert commits == sorted(taken), item_id
    server.verify()

    refusals = Counter(body["error"] for _, _, status, body in deltas if status == 400)
    by_state = Counter(state for state, _ in states.values())
    print(
        f"mixed holds: {MIXED_CLIENTS} clients, {ITEMS} items of {INITIAL}, {counts['ops']} operations "
        f"in {ran:.1f} s; holds made {counts['made']} ({counts['short ttl']} with ttl 1 s), "
        f"refused 409 {counts['refused']}, {counts['expired when answered']} already expired in their 201; "
        f"committed {counts['committed']}, released {counts['released']}, "
        f"commit too late (409 expired) {counts['commit too late']}, release of an expired hold "
        f"{counts['release too late']}; expired {by_state['expired']} ({expiring} waited on); "
        f"active at the end {by_state['active']}; deltas applied {counts['applied']}, refused "
        f"{refusals[BELOW_RESERVED]} below reserved + {refusals[BELOW_ZERO]} below 0; "
        f"{counts['reads']} reads; {sum(c['busy'] for _, _, c in results)} 503s retried"
    )
    print(
        f"mixed holds final: qty == initial + deltas - commits, reserved == active lines, "
        f"movements match, for all {ITEMS} items: "
        + ", ".join(f"qty {final[i]['qty']} reserved {final[i]['reserved']}" for i in ids)
        + "; verify ok"
    )
