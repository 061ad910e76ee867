"""Several app servers started at once each run `manage.py migrate` (as `make serve` does) on
one fresh database: every one of them succeeds, and each migration is applied once."""

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest

from inventory.management.commands.migrate import MIGRATE_LOCK
from tests.e2e.conftest import ROOT, START_TIMEOUT, direct_and_pooled, through_pgbouncer

pytestmark = pytest.mark.e2e

APP_SERVERS = 6


def manage(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@direct_and_pooled
def test_app_servers_migrating_one_fresh_database_at_once_all_succeed(database_url):
    env = {**os.environ, "DATABASE_URL": database_url}
    if through_pgbouncer(database_url):
        env["DATABASE_POOLER"] = "transaction"

    # Started back to back: each spends the same second or so importing Django before it
    # migrates, so their migrations overlap.
    migrations = [manage(env, "migrate", "--noinput") for _ in range(APP_SERVERS)]
    answers = [(process.communicate(timeout=START_TIMEOUT)[0], process.returncode) for process in migrations]

    failed = [output for output, code in answers if code != 0]
    assert not failed, f"{len(failed)} of {APP_SERVERS} migrations failed; one said:\n{failed[0][-3000:]}"
    # Nothing left to apply, and each migration recorded once.
    check = manage(env, "migrate", "--check")
    output = check.communicate(timeout=START_TIMEOUT)[0]
    assert check.returncode == 0, output
    count = (
        "from django.db.migrations.recorder import MigrationRecorder as R; "
        "rows = list(R.Migration.objects.values_list('app', 'name')); print(len(rows) - len(set(rows)))"
    )
    recount = manage(env, "shell", "--no-imports", "-c", count)
    output = recount.communicate(timeout=START_TIMEOUT)[0]
    assert recount.returncode == 0 and output.strip().splitlines()[-1] == "0", output


def test_a_migrate_waits_for_another_at_most_migrate_lock_timeout(database_url):
    """While another migrate holds the database's turn (its lock, here held by the test), a
    migrate gives up after MIGRATE_LOCK_TIMEOUT seconds, saying why, and applies nothing."""
    env = {**os.environ, "DATABASE_URL": database_url, "MIGRATE_LOCK_TIMEOUT": "1"}
    with contextlib.ExitStack() as held:
        if database_url.startswith("sqlite"):
            lock = held.enter_context(open(urlsplit(database_url).path + "-migrate", "a"))
            fcntl.flock(lock, fcntl.LOCK_EX)
        else:
            import psycopg

            holder = held.enter_context(psycopg.connect(database_url, autocommit=True))
            holder.execute("SELECT pg_advisory_lock(%s)", [MIGRATE_LOCK])
        started = time.monotonic()
        migrate = manage(env, "migrate", "--noinput")
        output = migrate.communicate(timeout=START_TIMEOUT)[0]
        waited = time.monotonic() - started

    assert migrate.returncode != 0 and "another migrate of this database" in output, output
    assert waited < START_TIMEOUT / 2, waited
    check = manage(env, "migrate", "--check")
    output = check.communicate(timeout=START_TIMEOUT)[0]
    assert check.returncode == 1, f"migrations should be left to apply: {output}"
