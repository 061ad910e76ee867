"""No wait inside the service is unbounded: a write that cannot get the database within the
timeout is answered 503 database_unavailable with Retry-After, nothing is written, the process
keeps answering meanwhile, and everything works again once the database is free.

A real server (`make serve`, several workers) on a fresh database; another process holds the
lock: on SQLite the writer queue's lock file, on PostgreSQL a row lock in an open transaction.
"""

import fcntl
import http.client
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e

TIMEOUT = 2  # seconds: the server's lock or busy timeout in these tests
SLACK = 2  # seconds a 503 may take beyond the timeout, as the server measures its answer
# Seconds a client waits for any answer: the bounds above are checked on the server's own
# clock (its log line's duration), so a loaded machine's scheduling does not fail the test,
# but a wait that never ends still does.
ANSWER_DEADLINE = 60
THREADS = 4  # per worker: every write waits on a thread of its own, and /healthz finds a free one
ON_POSTGRES = os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://"))


def call(server: Server, method: str, path: str, body=None, timeout: float = ANSWER_DEADLINE):
    """(status, headers, JSON body, request id). Raises OSError (TimeoutError included) when
    no answer came within `timeout` seconds, so a wait that never ends fails the test."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    request_id = uuid.uuid4().hex
    try:
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {server.client.token}",
            "X-Request-ID": request_id,
        }
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        raw = response.read()
        return (
            response.status,
            response.headers,  # case-insensitive
            json.loads(raw) if raw else None,
            request_id,
        )
    finally:
        connection.close()


def start_server(database_url, tmp_path, **env: str) -> Server:
    server = Server(database_url, tmp_path)
    server.extra_env.update({"THREADS": str(THREADS), **env})
    server.start()
    server.client.token = server.manage("token", "create", "e2e", "--scope", "write").strip()
    return server


def state(server: Server, item_ids: list[str]) -> tuple[list, int]:
    """The items, their movements, and how many items exist: what a write would change."""
    found = []
    for item_id in item_ids:
        status, item = server.client.request("GET", f"/items/{item_id}")
        assert status == 200, item
        found.append((item, server.client.movements(item_id)))
    return found, len(server.client.all_items())


def create_items(server: Server, count: int) -> list[str]:
    ids = []
    for n in range(count):
        status, item = server.client.request("POST", "/items", {"name": f"held {n}", "qty": 5})
        assert status == 201, item
        ids.append(item["id"])
    return ids


def writes(item_ids: list[str], seconds: float) -> list[tuple[str, str, dict | None, float]]:
    """One of each kind of write, each on the next of the items: (method, path, body, the
    seconds its answer may take)."""
    a, b, c, d = (item_ids * 4)[:4]
    return [
        ("PATCH", f"/items/{a}/qty", {"delta": 1}, seconds),
        ("POST", "/adjustments", {"changes": [{"id": b, "delta": -1}]}, seconds),
        ("PATCH", f"/items/{c}", {"name": "renamed"}, seconds),
        ("DELETE", f"/items/{d}", None, seconds),
    ]


def server_seconds(server: Server, request_id: str) -> float:
    """How long the server took to answer the request, from its own log line."""
    for line in server.log.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"request_id": "{request_id}"' in line:
            return json.loads(line)["duration_ms"] / 1000
    raise AssertionError(f"no log line for request {request_id}")


def send_while_locked(server: Server, requests: list, read_id: str) -> None:
    """Every request at once; each must be answered 503 database_unavailable, with Retry-After,
    within its seconds. Meanwhile the process answers /healthz and a read at once."""
    with ThreadPoolExecutor(len(requests)) as pool:
        pending = [pool.submit(call, server, method, path, body) for method, path, body, _ in requests]
        # Nothing here waits for the lock, and the workers' other threads answer at once.
        health, read = call(server, "GET", "/healthz"), call(server, "GET", f"/items/{read_id}")
        results = [future.result() for future in pending]
    assert (health[0], read[0]) == (200, 200)
    assert server_seconds(server, health[3]) < 1 and server_seconds(server, read[3]) < 1
    for (method, path, _, seconds), (status, headers, body, request_id) in zip(
        requests, results, strict=True
    ):
        assert status == 503, (method, path, body)
        assert body["error"] == "database_unavailable", body
        assert int(headers["Retry-After"]) >= 1
        assert server_seconds(server, request_id) <= seconds, (method, path)


def wait_until(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


@pytest.mark.skipif(ON_POSTGRES, reason="the writer queue's lock file is SQLite's")
def test_sqlite_writes_held_up_by_the_writer_lock_are_503_in_time_and_write_nothing(database_url, tmp_path):
    server = start_server(database_url, tmp_path, SQLITE_BUSY_TIMEOUT=str(TIMEOUT))
    try:
        [item_id] = create_items(server, 1)
        before = state(server, [item_id])
        path = database_url.removeprefix("sqlite:///")
        # Another process holds the writer lock for longer than the timeout, as a migration,
        # a stuck worker or one stopped with SIGSTOP would.
        with open(f"{path}-writer", "a") as holder:
            fcntl.flock(holder, fcntl.LOCK_EX)
            try:
                create = ("POST", "/items", {"name": "not written", "qty": 1}, TIMEOUT + SLACK)
                send_while_locked(server, [*writes([item_id], TIMEOUT + SLACK), create], item_id)
            finally:
                fcntl.flock(holder, fcntl.LOCK_UN)
        assert state(server, [item_id]) == before

        # Once the lock is free, every write goes through again.
        status, after = server.client.request("PATCH", f"/items/{item_id}/qty", {"delta": 2})
        assert (status, after["qty"]) == (200, 7), after
        assert server.client.request("POST", "/items", {"name": "written", "qty": 1})[0] == 201
        server.verify()
    finally:
        server.stop()


def sqlite_wrapper(tmp_path, alias: str, timeout: float):
    """A connection of the service's SQLite backend to a database file of its own."""
    from django.db import connections

    from config.sqlite.base import DatabaseWrapper

    settings = {**connections["default"].settings_dict, "ENGINE": "config.sqlite"}
    settings["NAME"] = str(tmp_path / "queue.sqlite3")
    settings["OPTIONS"] = {"timeout": timeout, "transaction_mode": "IMMEDIATE"}
    return DatabaseWrapper(settings, alias)


def begin_and_commit(connection) -> None:
    connection.set_autocommit(False, force_begin_transaction_with_broken_autocommit=True)
    connection.commit()
    connection.set_autocommit(True)


def test_sqlite_abandoned_waits_leave_the_writer_lock_free(tmp_path, django_db_blocker):
    """A wait given up on must not keep the lock when it comes: the next writer of any
    process gets it at once. Direct on the database backend, no server."""
    from django.db import OperationalError

    other = sqlite_wrapper(tmp_path, "other", 0.3)
    # The waiter runs in a thread of its own, so that a wait that never ends fails the test.
    waiter_thread = ThreadPoolExecutor(1)
    waiter = waiter_thread.submit(sqlite_wrapper, tmp_path, "waiter", 0.3).result()
    with django_db_blocker.unblock(), open(f"{other.settings_dict['NAME']}-writer", "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        try:
            for _ in range(3):  # each gives up after its timeout; the same wait carries on
                started = time.monotonic()
                with pytest.raises(OperationalError, match="database is locked"):
                    waiter_thread.submit(begin_and_commit, waiter).result(timeout=5)
                assert 0.3 <= time.monotonic() - started < 1.3
        finally:
            fcntl.flock(holder, fcntl.LOCK_UN)

        # The abandoned wait takes the lock and lets it go at once.
        def free() -> bool:
            try:
                fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(holder, fcntl.LOCK_UN)
            return True

        wait_until(free, 1, "the lock comes free")
        try:
            # Both connections write in turn, the waiter too.
            waiter_thread.submit(begin_and_commit, waiter).result(timeout=5)
            begin_and_commit(other)
            waiter_thread.submit(begin_and_commit, waiter).result(timeout=5)
        finally:
            waiter_thread.submit(waiter.close).result(timeout=5)
            other.close()
            waiter_thread.shutdown()
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("sqlite-writer-lock")],
        1,
        "the lock's helper threads end with their connections",
    )


def test_sqlite_a_write_waits_at_most_the_busy_timeout_in_all(tmp_path, django_db_blocker):
    """The turn at the writer lock and SQLite's own busy handler (for a writer that does not
    queue, such as the sqlite3 shell) share one timeout."""
    import sqlite3

    from django.db import OperationalError

    with django_db_blocker.unblock():
        waiter = sqlite_wrapper(tmp_path, "waiter", 1.0)
        waiter.ensure_connection()
        path = waiter.settings_dict["NAME"]
        outsider = sqlite3.connect(path, isolation_level=None)
        with open(f"{path}-writer", "a") as holder:
            fcntl.flock(holder, fcntl.LOCK_EX)
            outsider.execute("BEGIN IMMEDIATE")  # SQLite's write lock, outside the queue
            threading.Timer(0.5, fcntl.flock, (holder, fcntl.LOCK_UN)).start()
            started = time.monotonic()
            try:
                with pytest.raises(OperationalError, match="database is locked"):
                    begin_and_commit(waiter)  # the queue's turn at 0.5 s, then SQLite's lock
                assert 1.0 <= time.monotonic() - started < 1.35  # not 0.5 + 1.0
            finally:
                outsider.rollback()
                outsider.close()
        # The next write gets the whole timeout again, and goes through.
        begin_and_commit(waiter)
        waiter.close()


@pytest.mark.skipif(not ON_POSTGRES, reason="row locks and lock_timeout are PostgreSQL's")
@pytest.mark.parametrize(
    ("timeouts", "queued_seconds"),
    [
        # lock_timeout fires: LockNotAvailable (SQLSTATE 55P03). It bounds each lock acquisition
        # on its own: a writer queued behind another for the same row waits for the row's
        # queue, then for its holder, so up to twice the timeout.
        ({"DATABASE_LOCK_TIMEOUT": str(TIMEOUT)}, 2 * TIMEOUT + SLACK),
        # lock_timeout off, statement_timeout fires: QueryCanceled (SQLSTATE 57014).
        ({"DATABASE_LOCK_TIMEOUT": "0", "DATABASE_STATEMENT_TIMEOUT": str(TIMEOUT)}, TIMEOUT + SLACK),
    ],
    ids=["lock_timeout", "statement_timeout"],
)
def test_postgres_writes_held_up_by_a_row_lock_are_503_in_time_and_write_nothing(
    database_url, tmp_path, timeouts, queued_seconds
):
    import psycopg

    server = start_server(database_url, tmp_path, **timeouts)
    try:
        item_ids = create_items(server, 4)
        before = state(server, item_ids)
        with psycopg.connect(database_url) as holder:
            # This session waits for nothing and must outlive the test's wait.
            holder.execute("SET idle_in_transaction_session_timeout = 0")
            holder.execute(
                "SELECT id FROM inventory_item WHERE id = ANY(%s) FOR UPDATE",
                [[uuid.UUID(item_id) for item_id in item_ids]],
            )
            try:
                # One write per locked row, and two more on the first row: which of those three
                # waits at the head of the row's queue is the scheduler's choice, so each of
                # them gets the queued bound.
                first, *others = writes(item_ids, TIMEOUT + SLACK)
                queued = writes(item_ids[:1], queued_seconds)[:2]
                requests = [(*first[:3], queued_seconds), *others, *queued]
                send_while_locked(server, requests, item_ids[0])
            finally:
                holder.rollback()
        assert state(server, item_ids) == before

        status, after = server.client.request("PATCH", f"/items/{item_ids[0]}/qty", {"delta": 2})
        assert (status, after["qty"]) == (200, 7), after
        server.verify()
    finally:
        server.stop()


@pytest.mark.skipif(not ON_POSTGRES, reason="idle_in_transaction_session_timeout is PostgreSQL's")
def test_postgres_session_left_idle_in_a_transaction_is_ended_and_its_locks_freed(database_url, tmp_path):
    import psycopg

    server = start_server(database_url, tmp_path, DATABASE_IDLE_IN_TRANSACTION_TIMEOUT=str(TIMEOUT))
    try:
        [item_id] = create_items(server, 1)
        # A client of the same role and database that locks a row and then stalls, as a
        # stopped process would: the role's default ends its session, and the lock with it.
        holder = psycopg.connect(database_url)
        try:
            holder.execute("SELECT id FROM inventory_item WHERE id = %s FOR UPDATE", [uuid.UUID(item_id)])

            def written() -> bool:
                return call(server, "PATCH", f"/items/{item_id}/qty", {"delta": 1})[0] == 200

            wait_until(written, ANSWER_DEADLINE, "a write goes through after the stalled session is ended")
            # psycopg raises IdleInTransactionSessionTimeout (25P03) when it reads the server's
            # farewell, OperationalError when the connection is already gone.
            with pytest.raises((psycopg.errors.IdleInTransactionSessionTimeout, psycopg.OperationalError)):
                holder.execute("SELECT 1")
        finally:
            holder.close()
        server.verify()
    finally:
        server.stop()
