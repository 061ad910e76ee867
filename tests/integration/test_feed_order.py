"""The feed's order is commit order on PostgreSQL, where a sequence hands out values in the
order transactions ask for them, not the order they commit. Two real connections: T1 writes
an event and waits before committing; T2 writes events after it and commits. A reader must
never see T2's events without T1's (the naive "seq > cursor" reading would skip T1's for
good), and once T1 commits both come, T1's first."""

import threading
import uuid

import pytest
from django.db import OperationalError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from inventory import clock, events, items, sql
from inventory.models import Event, Movement

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="writers take turns on SQLite"),
]
TIMEOUT = 30  # for a thread to reach a step; a hang fails with a message


def entry(name: str) -> dict:
    return {
        "type": "item.updated",
        "data": {"writer": name},
        "item_id": None,
        "hold_id": None,
        "actor": name,
        "request_id": name,
    }


def run_pair(reader_sees):
    """T1 writes "t1" and waits; T2 writes "t2a", "t2b" and commits (or blocks on the lock).
    reader_sees() is called while T1 is open and T2 has had every chance to commit; then T1
    commits. Returns what the reader saw meanwhile."""
    t1_wrote, t1_may_commit, t2_started, t2_done = (threading.Event() for _ in range(4))
    errors = []

    def t1():
        try:
            with transaction.atomic():
                events.write([entry("t1")])
                t1_wrote.set()
                assert t1_may_commit.wait(TIMEOUT), "T1 was never released"
        except BaseException as exc:
            errors.append(exc)
            t1_wrote.set()
        finally:
            connections.close_all()

    def t2():
        try:
            assert t1_wrote.wait(TIMEOUT)
            t2_started.set()
            with transaction.atomic():
                events.write([entry("t2a"), entry("t2b")])
            t2_done.set()
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=t1), threading.Thread(target=t2)]
    for thread in threads:
        thread.start()
    assert t2_started.wait(TIMEOUT)
    # T2 either commits (no lock) or waits on T1's lock: give it the time to do the former.
    t2_done.wait(2)
    seen_meanwhile = reader_sees()
    t1_may_commit.set()
    for thread in threads:
        thread.join(TIMEOUT)
        assert not thread.is_alive(), "a writer hung"
    assert not errors, errors
    return seen_meanwhile


def feed_writers(after: int = 0) -> list[str]:
    page, _ = events.event_list(after=after, limit=1000)
    return [event.data["writer"] for event in page]


def test_a_reader_never_sees_a_later_commit_before_an_earlier_open_transaction_s_events():
    seen = run_pair(feed_writers)

    # While T1 is open, T2 (which asked for the lock after T1) cannot have committed.
    assert seen == []
    assert feed_writers() == ["t1", "t2a", "t2b"]


def test_without_the_feed_lock_a_reader_would_skip_the_open_transaction_s_event(monkeypatch):
    """The same run with the lock statement left out: T2 commits while T1 is open, the
    reader's cursor moves past T1's seq, and T1's event is never seen. This is what the lock
    prevents; the test shows that the first test can fail."""

    def write_without_lock(entries):
        db = sql.database()
        rows = [{**entry, "event_id": uuid.uuid4()} for entry in entries]
        sql.insert(db, Event, rows, at=sql.param(Event, "at", clock.now(), db))

    monkeypatch.setattr(events, "write", write_without_lock)
    cursor_position = {}

    def reader():
        page, position = events.event_list(after=0, limit=1000)
        cursor_position["next"] = position
        return [event.data["writer"] for event in page]

    seen = run_pair(reader)

    assert seen == ["t2a", "t2b"]  # T2 committed first, with seqs after T1's
    missed = feed_writers(after=cursor_position["next"])
    assert "t1" not in missed  # the naive reader polling on with `next` never sees T1's event
    assert feed_writers() == ["t1", "t2a", "t2b"]


def test_a_write_whose_tail_waits_too_long_for_the_feed_lock_leaves_nothing_and_the_connection_works():
    """A write's tail (movement, the feed's lock, events) and its COMMIT travel in one
    message: a lock_timeout on the feed's lock must leave the COMMIT unsent, the whole write
    rolled back (qty, movement, event), and the connection taking writes again."""
    item = items.item_create(name="tail", qty=5)
    has_lock, release, errors = threading.Event(), threading.Event(), []

    def holder():
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [events.FEED_LOCK])
                has_lock.set()
                assert release.wait(TIMEOUT), "the holder was never released"
        except BaseException as exc:
            errors.append(exc)
            has_lock.set()
        finally:
            connections.close_all()

    thread = threading.Thread(target=holder)
    thread.start()
    movements, feed = Movement.objects.count(), Event.objects.count()
    try:
        assert has_lock.wait(TIMEOUT)
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")
        with pytest.raises(OperationalError) as raised:
            items.qty_adjust(item_id=item.id, delta=-2)
        assert raised.value.__cause__.sqlstate == "55P03"  # lock_not_available
    finally:
        release.set()
        thread.join(TIMEOUT)
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
    assert not errors, errors
    assert items.item_get(item_id=item.id).qty == 5
    assert (Movement.objects.count(), Event.objects.count()) == (movements, feed)
    assert items.qty_adjust(item_id=item.id, delta=-2).qty == 3
    assert (Movement.objects.count(), Event.objects.count()) == (movements + 1, feed + 1)


def test_the_tail_s_one_statement_takes_the_feed_lock_before_it_draws_any_seq():
    """On PostgreSQL a write's movements, the feed's lock and its events are one statement.
    Its plan must compute the events' seq (nextval) only in rows that come out of the scan
    that takes the lock: in that scan, in the node that joins it, or above."""
    item = items.item_create(name="plan", qty=5)
    with CaptureQueriesContext(connection) as captured:
        items.qty_adjust(item_id=item.id, delta=-1)
    [tail] = [query["sql"] for query in captured.captured_queries if query["sql"].startswith("WITH")]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN VERBOSE " + tail)
        plan = [row[0] for row in cursor.fetchall()]

    def depth(line: str) -> int:
        return len(line) - len(line.lstrip(" ->"))

    [draws] = [number for number, line in enumerate(plan) if f"nextval('{Event._meta.db_table}_" in line]
    node = max(number for number in range(draws) if "->" in plan[number] or number == 0)
    below = [plan[node]]
    for line in plan[node + 1 :]:
        if "->" in line and depth(line) <= depth(plan[node]):
            break
        below.append(line)
    assert any("CTE Scan on locked" in line for line in below), "\n".join(plan)
    assert any("pg_advisory_xact_lock" in line for line in plan)
