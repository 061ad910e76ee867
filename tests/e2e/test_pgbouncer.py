"""The service behind PgBouncer in transaction mode (deploy/pgbouncer.ini, as scripts/with-postgres
runs it): nothing it sends leaves state in a server session for the next client's transaction,
and a request that finds no free server session within query_wait_timeout is answered 503
database_unavailable, writes nothing, and the service carries on once one is free. (The races
of test_concurrency, test_bank and test_holds_race run through it too.)"""

import os
import re
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.e2e.conftest import PGBOUNCER, ROOT, Server, create

pytestmark = pytest.mark.e2e

POOL_OF_ONE = "pool_of_one"  # scripts/with-pgbouncer gives this database one server session


def pgbouncer_setting(name: str) -> float:
    """A setting as deploy/pgbouncer.ini gives it, so that the tests follow the file."""
    for line in (ROOT / "deploy" / "pgbouncer.ini").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == name:
            return float(value.split(";")[0])
    raise AssertionError(f"deploy/pgbouncer.ini sets no {name}")


@pytest.fixture
def pool_of_one(tmp_path):
    """A fresh database with a single server session behind PgBouncer: (URL through
    PgBouncer, psycopg module)."""
    base, pooler = os.environ.get("DATABASE_URL", ""), os.environ.get("TEST_PGBOUNCER_URL")
    if not base.startswith(("postgres://", "postgresql://")):
        pytest.skip("PgBouncer runs in front of PostgreSQL only (DATABASE_URL is SQLite)")
    if not pooler:
        pytest.skip("TEST_PGBOUNCER_URL is not set (scripts/with-postgres sets it when PgBouncer is there)")
    import psycopg

    admin_url = urlunsplit(urlsplit(base)._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{POOL_OF_ONE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{POOL_OF_ONE}"')
    yield urlunsplit(urlsplit(pooler)._replace(path=f"/{POOL_OF_ONE}"))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{POOL_OF_ONE}" WITH (FORCE)')


def test_a_write_that_finds_the_pool_full_past_query_wait_timeout_is_a_503_that_wrote_nothing(
    pool_of_one, tmp_path
):
    import psycopg

    wait = pgbouncer_setting("query_wait_timeout")
    server = Server(pool_of_one, tmp_path)
    # No worker: its rounds would take the one server session too.
    server.extra_env.update(DATABASE_POOLER="transaction", WORKER="0")
    try:
        server.start()
        server.client.token = server.manage("token", "create", "e2e", "--scope", "write").strip()
        item = create(server, "pooled", 10)
        path = f"/items/{item['id']}/qty"

        # An open transaction holds the pool's only server session until it ends (or until
        # PostgreSQL ends it, idle for DATABASE_IDLE_IN_TRANSACTION_TIMEOUT).
        holder = psycopg.connect(pool_of_one)
        try:
            holder.execute("SELECT 1")
            started = time.monotonic()
            status, body = server.client.request("PATCH", path, {"delta": 1})
            waited = time.monotonic() - started
        finally:
            holder.close()  # which ends its transaction

        assert status == 503, f"{status} {body} after {waited:.1f} s"
        assert body["error"] == "database_unavailable", body
        # Refused by PgBouncer after query_wait_timeout (checked a few times a second), well
        # within the 10 s the service promises.
        assert wait - 0.5 <= waited < 10, waited
        # The session is free again: the next write succeeds, and the refused one wrote nothing.
        status, after = server.client.request("PATCH", path, {"delta": 1})
        assert (status, after["qty"]) == (200, 11), after
        assert [move["delta"] for move in server.client.movements(item["id"])] == [10, 1]
        server.verify()
    finally:
        server.stop()


# What outlives a transaction in a server session (pgbouncer.org/features, "SQL feature map"),
# as PostgreSQL logs a statement. A session-wide set_config is checked apart: see below.
SESSION_STATE = {
    "SET or RESET for the session": re.compile(
        r"^\s*(?:SET|RESET)\s+(?!LOCAL\b|CONSTRAINTS\b|TRANSACTION\b|(?:SESSION\s+)?(?:TimeZone|DateStyle"
        r"|client_encoding|standard_conforming_strings)\b)",
        re.IGNORECASE,
    ),
    "a cursor WITH HOLD": re.compile(r"\bDECLARE\b.*\bWITH\s+HOLD\b", re.IGNORECASE | re.DOTALL),
    "a prepared statement": re.compile(r"^\s*(?:PREPARE|DEALLOCATE|EXECUTE)\b", re.IGNORECASE),
    "LISTEN": re.compile(r"^\s*(?:UN)?LISTEN\b", re.IGNORECASE),
    "a session advisory lock": re.compile(r"\bpg_(?:try_)?advisory_lock(?:_shared)?\s*\(", re.IGNORECASE),
    "a temporary table": re.compile(r"\bCREATE\s+(?:GLOBAL\s+|LOCAL\s+)?TEMP(?:ORARY)?\b", re.IGNORECASE),
    "LOAD": re.compile(r"^\s*LOAD\b", re.IGNORECASE),
}
# PgBouncer keeps these per client itself, and sets a server session's to the client's before
# its transaction (pgbouncer.ini(5), ignore_startup_parameters): Django's SET of TimeZone on
# connecting (to UTC, when the server reports another zone), and PgBouncer's own SETs of it.
TRACKED_BY_PGBOUNCER = {"client_encoding", "datestyle", "timezone", "standard_conforming_strings"}
SESSION_SET_CONFIG = re.compile(r"set_config\(\s*'([^']*)'\s*,\s*'([^']*)'\s*,\s*false\s*\)", re.IGNORECASE)


def logged_statements(log_path: str, database: str) -> list[tuple[str, str]]:
    """(how, statement) for each statement PostgreSQL logged in `database`: how is
    "statement" (simple protocol) or "execute <name>" (extended; <unnamed> unless prepared).
    A statement's further lines follow its first, each starting with a tab."""
    header = re.compile(rf" db={re.escape(database)} LOG:  (statement|execute [^:]*): (.*)")
    statements: list[tuple[str, str]] = []
    current = None
    with open(log_path, errors="replace") as log:
        for line in log:
            if current is not None and line.startswith("\t"):
                current[1].append(line[1:].rstrip("\n"))
                continue
            current = None
            if found := header.search(line):
                current = (found[1], [found[2]])
                statements.append(current)
    return [(how, "\n".join(lines)) for how, lines in statements]


@pytest.fixture
def statements_logged(database_url):
    """`database_url`, with every statement of every session started in it from now on in
    PostgreSQL's log (TEST_POSTGRES_LOG, which scripts/with-postgres sets): (url, log path)."""
    log_path = os.environ.get("TEST_POSTGRES_LOG")
    if not log_path:
        pytest.skip("TEST_POSTGRES_LOG is not set (scripts/with-postgres sets it)")
    import psycopg

    admin_url = urlunsplit(urlsplit(os.environ["DATABASE_URL"])._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{urlsplit(database_url).path[1:]}\" SET log_statement = 'all'")
    return database_url, log_path


@pytest.mark.parametrize("database_url", [PGBOUNCER], indirect=True)
def test_nothing_the_service_sends_through_pgbouncer_outlives_its_transaction(statements_logged, tmp_path):
    database_url, log_path = statements_logged
    database = urlsplit(database_url).path[1:]
    server = Server(database_url, tmp_path)
    server.extra_env["DATABASE_POOLER"] = "transaction"
    try:
        server.start()  # migrates through PgBouncer
        server.client.token = server.manage("token", "create", "e2e", "--scope", "write").strip()
        # Every kind of write and read, the worker's rounds, and verify's scan.
        first, second = create(server, "audited 1", 20), create(server, "audited 2", 5)
        request = server.client.request
        assert request("PATCH", f"/items/{first['id']}/qty", {"delta": -3})[0] == 200
        assert request("PATCH", f"/items/{first['id']}", {"low_stock_threshold": 10})[0] == 200
        changes = [{"id": first["id"], "delta": -1}, {"id": second["id"], "delta": 1}]
        assert request("POST", "/adjustments", {"changes": changes})[0] == 200
        key = {"Idempotency-Key": f"audit-{uuid.uuid4().hex}"}
        assert request("PATCH", f"/items/{second['id']}/qty", {"delta": 2}, key)[0] == 200
        assert request("PATCH", f"/items/{second['id']}/qty", {"delta": 2}, key)[0] == 200
        held = [request("POST", "/holds", {"lines": [{"id": first["id"], "qty": 2}]})[1] for _ in range(3)]
        assert request("POST", f"/holds/{held[0]['id']}/commit")[0] == 200
        assert request("POST", f"/holds/{held[1]['id']}/release")[0] == 200
        assert request("POST", f"/holds/{held[2]['id']}/extend", {"ttl_seconds": 60})[0] == 200
        assert request("GET", f"/items/{first['id']}/holds")[0] == 200
        assert request("GET", "/events?limit=1000")[0] == 200
        assert server.client.all_items() and server.client.movements(first["id"])
        assert request("GET", "/readyz")[0] == 200
        server.verify()
    finally:
        server.stop()

    statements = logged_statements(log_path, database)
    assert len(statements) > 50, f"too few statements logged for {database}: {statements}"
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"]) as direct:
        # The role's defaults in this database (inventory/timeouts.py): a session that sets one
        # of them to that value is as every session of the role starts, so it carries nothing.
        role_defaults = {
            setting.partition("=")[0].lower(): setting.partition("=")[2]
            for row in direct.execute(
                "SELECT setconfig FROM pg_db_role_setting JOIN pg_database d ON d.oid = setdatabase "
                "WHERE d.datname = %s AND setrole = (SELECT oid FROM pg_roles WHERE rolname = current_user)",
                [database],
            )
            for setting in row[0]
        }
    found = []
    for how, statement in statements:
        if how.startswith("execute") and how != "execute <unnamed>":
            found.append(("a named prepared statement", how, statement))
        found += [
            (what, how, statement) for what, pattern in SESSION_STATE.items() if pattern.search(statement)
        ]
        for name, value in SESSION_SET_CONFIG.findall(statement):
            if name.lower() not in TRACKED_BY_PGBOUNCER and role_defaults.get(name.lower()) != value:
                found.append((f"set_config of {name} to {value!r}, not the role's default", how, statement))
    assert not found, "\n".join(f"{what}: [{how}] {statement[:300]}" for what, how, statement in found[:20])
