"""kill -9 of every server process while clients make holds and commit them: a client that
retries with the same Idempotency-Key gets each hold and each commit applied once, a commit
cut by a kill took its stock wholly or not at all, and no hold is ever half held."""

import http.client
import itertools
import random
import threading
import time

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
ITEMS = 6
INITIAL = 100_000  # more than the run can hold: every hold fits, so each answer is known ahead
KILLS = 4
# Each kill comes after a random number of acknowledged operations in this range (and the
# run ends after as many more): where the kills land varies, and not with the machine's speed.
ACKED_BETWEEN_KILLS = (60, 150)
# A request may wait out a restart and an attempt cut short on either side of it.
ANSWER_TIMEOUT = START_TIMEOUT + 2 * REQUEST_TIMEOUT
LONG_TTL = 3600  # longer than any run: no hold expires here
# How often a client whose commit or release was cut by a kill gives up instead of retrying:
# the outcome is then unknown to it, and only GET /holds/<id> tells.
GIVE_UP = 0.5
STILL_RUNNING = "a request with this Idempotency-Key is still running"
STATE_AFTER = {"commit": "committed", "release": "released"}


def until_answered(server, method: str, path: str, body, key: str, progress: Progress, give_up: bool):
    """Send the same request with the same key until it is answered: (status, body). With
    give_up, return None instead once a kill has cut the request, as a client that stops
    trying does: it was then applied wholly or not at all, and the client does not know which."""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    cut = False
    while time.monotonic() < deadline:
        try:
            status, answer, replayed = keyed_request(server, method, path, body, key)
        except ConnectionRefusedError:
            progress.add("refused while down")  # nothing was sent
        except TimeoutError:
            # The server may still be running it: only the same key makes a retry safe.
            progress.add("timed out")
        except (OSError, http.client.HTTPException):
            progress.add("cut by a kill")  # the server closed the connection: it died
            if give_up:
                return None
            cut = True
        else:
            if status == 503 or (status == 409 and answer["error"] == STILL_RUNNING):
                progress.add("busy")
            else:
                progress.add("replays", int(replayed))
                progress.add("replays after a kill", int(replayed and cut))
                return status, answer
        time.sleep(0.05)
    raise AssertionError(f"no answer to {method} {path} (key {key}) in {ANSWER_TIMEOUT} s")


class Hold:
    def __init__(self, hold_id: str, lines: list[dict], action: str):
        self.id, self.lines, self.action = hold_id, lines, action
        self.outcome: str | None = None  # the state the answer to the action said; None: unknown


def test_kill_9_while_holding_and_committing_takes_stock_once_and_holds_nothing_by_half(server):
    ids = sorted(create(server, f"stock {i}", INITIAL)["id"] for i in range(ITEMS))
    stop = threading.Event()
    progress = Progress()

    def writer(i):
        """Sequential operations: at most one is in flight when the server dies."""
        rng = random.Random(i)
        holds = []
        for n in itertools.count():
            if stop.is_set():
                break
            lines = [
                {"id": item_id, "qty": rng.randint(1, 5)} for item_id in rng.sample(ids, rng.randint(1, 3))
            ]
            key = f"writer-{i}-hold-{n}"
            body = {"lines": lines, "ttl_seconds": LONG_TTL, "reference": key}
            # Always retried: a hold made twice would reserve twice, and the end shows it.
            status, answer = until_answered(server, "POST", "/holds", body, key, progress, give_up=False)
            assert status == 201, (key, status, answer)
            assert answer["state"] == "active" and answer["lines"] == lines, (key, answer)
            assert answer["reference"] == key, answer
            hold = Hold(answer["id"], lines, rng.choices(["commit", "release", "keep"], [70, 15, 15])[0])
            holds.append(hold)
            progress.add("acked")
            if hold.action == "keep":
                hold.outcome = "active"
                continue
            key = f"writer-{i}-{hold.action}-{n}"
            path = f"/holds/{hold.id}/{hold.action}"
            result = until_answered(server, "POST", path, None, key, progress, rng.random() < GIVE_UP)
            if result is None:
                progress.add("gave up")
                continue
            status, answer = result
            expected = STATE_AFTER[hold.action]
            assert (status, answer["state"], answer["lines"]) == (200, expected, lines), (key, answer)
            hold.outcome = expected
            progress.add("acked")
            if hold.action == "commit" and rng.random() < 0.1:
                # Committing a committed hold again, under a new key: 200, and nothing more is taken.
                again = until_answered(server, "POST", path, None, f"{key}-again", progress, give_up=False)
                assert again[0] == 200 and again[1]["state"] == "committed", (key, again)
                progress.add("commits repeated")
                progress.add("acked")
        return holds

    def killer(_):
        kill_between(server, progress, "acked", ACKED_BETWEEN_KILLS, KILLS, stop)

    def run(i):
        return killer(i) if i == WRITERS else writer(i)

    started = time.monotonic()
    holds = [hold for made in parallel(WRITERS + 1, run, progress)[:WRITERS] for hold in made]
    ran = time.monotonic() - started
    counts = progress.counts()

    states = {}
    for hold in holds:
        status, answer = server.client.request("GET", f"/holds/{hold.id}")
        assert status == 200, (hold.id, status, answer)
        assert answer["lines"] == hold.lines, (hold.id, answer)
        states[hold.id] = answer["state"]
        if hold.outcome is not None:
            assert states[hold.id] == hold.outcome, (hold.id, hold.action, hold.outcome, answer)
        else:
            # A commit or release cut by a kill and never retried: wholly applied or not at all.
            assert states[hold.id] in ("active", STATE_AFTER[hold.action]), (hold.id, hold.action, answer)
    unknown = [hold for hold in holds if hold.outcome is None]
    committed = [hold for hold in holds if states[hold.id] == "committed"]
    active = [hold for hold in holds if states[hold.id] == "active"]

    final = {item["id"]: item for item in server.client.all_items()}
    assert sorted(final) == ids
    for item_id in ids:
        item = final[item_id]
        taken = sorted((h.id, line["qty"]) for h in committed for line in h.lines if line["id"] == item_id)
        held = sorted((h.id, line["qty"]) for h in active for line in h.lines if line["id"] == item_id)
        # Every committed hold took its lines once: no more, no less, whatever was retried.
        assert item["qty"] == INITIAL - sum(qty for _, qty in taken), (item, len(taken))
        ledger = server.client.movements(item_id)
        assert [(m["kind"], m["delta"]) for m in ledger[:1]] == [("create", INITIAL)], item_id
        assert all(m["kind"] == "commit" for m in ledger[1:]), item_id
        assert sorted((m["hold_id"], -m["delta"]) for m in ledger[1:]) == taken, item_id
        # Nothing half held: each active hold reserves every line, every other hold none; and
        # no hold exists that no client made (a retried POST /holds applied twice would).
        assert item["reserved"] == sum(qty for _, qty in held), (item, held)
        assert item["available"] == item["qty"] - item["reserved"], item
        listed = [
            hold["id"] for page in server.client.pages(f"/items/{item_id}/holds", "holds") for hold in page
        ]
        assert sorted(listed) == sorted(hold_id for hold_id, _ in held), item_id
    server.verify()

    print(
        f"holds crash: {WRITERS} clients, {KILLS} kills, {counts['acked']} acknowledged operations in "
        f"{ran:.1f} s; holds made {len(holds)}, committed {len(committed)} "
        f"({sum(1 for h in unknown if h.action == 'commit' and states[h.id] == 'committed')} of them "
        f"after a commit given up), released {sum(1 for s in states.values() if s == 'released')}, "
        f"active at the end {len(active)}; {len(unknown)} actions given up after a kill "
        f"({sum(1 for h in unknown if states[h.id] == 'active')} found not applied); "
        f"{counts['cut by a kill']} requests cut by a kill, {counts['refused while down']} refused while "
        f"down, {counts['timed out']} timed out, {counts['busy']} busy (409/503), {counts['replays']} "
        f"replays ({counts['replays after a kill']} after a kill), {counts['commits repeated']} "
        f"commits repeated taking nothing"
    )
    print(
        f"holds crash final: for all {ITEMS} items qty == {INITIAL} - committed lines, reserved == "
        f"active lines, one commit movement per committed line; units taken "
        f"{ITEMS * INITIAL - sum(item['qty'] for item in final.values())}, reserved "
        f"{sum(item['reserved'] for item in final.values())}; verify ok"
    )
