"""`manage.py migrate`, Django's, one at a time per database: several app servers that start at
once (`make serve` migrates first) take turns, and the later ones find nothing left to do.
Without turns, two of them create the same table and all but one fail.

- PostgreSQL: the whole migrate runs in one transaction that first takes a transaction-scoped
  advisory lock (pg_advisory_xact_lock), so it also works through PgBouncer in transaction
  mode, where a session lock would be taken on one server session and released on another.
  COMMIT (or the death of the process) releases it. Every migration is applied or none: a
  migration that cannot run inside a transaction (atomic = False, for CREATE INDEX
  CONCURRENTLY) fails here, and must be run by hand.
- SQLite: an exclusive flock() of `<database>-migrate` beside the database, held for the whole
  run; Django's SQLite schema editor cannot run inside a transaction.

A migrate waits at most MIGRATE_LOCK_TIMEOUT seconds for its turn.
"""

import contextlib
import fcntl
import time
from collections.abc import Iterator

from django.conf import settings
from django.core.management.base import CommandError
from django.core.management.commands import migrate
from django.db import OperationalError, connections, transaction

MIGRATE_LOCK = 7_236_963  # the advisory lock key of migrate (PostgreSQL)
POLL_SECONDS = 0.05  # how often a waiting migrate tries the SQLite lock file again


class Command(migrate.Command):
    help = migrate.Command.help + " One at a time per database: a second waits for the first."

    def handle(self, *args, **options):
        connection = connections[options["database"]]
        if connection.vendor == "postgresql":
            with transaction.atomic(using=connection.alias):
                postgresql_lock(connection)
                return super().handle(*args, **options)
        if connection.vendor == "sqlite" and not connection.is_in_memory_db():
            with file_lock(f"{connection.settings_dict['NAME']}-migrate"):
                return super().handle(*args, **options)
        return super().handle(*args, **options)


def postgresql_lock(connection) -> None:
    """Take MIGRATE_LOCK for the current transaction, waiting at most MIGRATE_LOCK_TIMEOUT
    seconds; the role's own lock_timeout and statement_timeout (inventory/timeouts.py) are
    lifted for that wait only. Raises CommandError when the wait ran out."""
    timeout_ms = round(settings.MIGRATE_LOCK_TIMEOUT * 1000)
    with connection.cursor() as cursor:
        # SET LOCAL ends with the transaction: nothing of it outlives it on a pooled session.
        cursor.execute(f"SET LOCAL lock_timeout = {timeout_ms:d}")
        cursor.execute("SET LOCAL statement_timeout = 0")
        try:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATE_LOCK])
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != "55P03":  # lock_not_available
                raise
            raise CommandError(
                f"another migrate of this database has run for more than {settings.MIGRATE_LOCK_TIMEOUT:g} s "
                "(MIGRATE_LOCK_TIMEOUT)"
            ) from exc
        cursor.execute("SET LOCAL lock_timeout = DEFAULT")
        cursor.execute("SET LOCAL statement_timeout = DEFAULT")


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Hold an exclusive flock() of `path` (made if missing) inside the block, after waiting at
    most MIGRATE_LOCK_TIMEOUT seconds for it. The kernel releases it if the process dies.
    Raises CommandError when the wait ran out."""
    timeout = settings.MIGRATE_LOCK_TIMEOUT
    deadline = time.monotonic() + timeout
    with open(path, "a") as lock:
        # Tries again every POLL_SECONDS: a blocking flock() has no timeout. Starting up is not a
        # hot path, and a start waits for a whole migrate anyway.
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout and time.monotonic() >= deadline:
                    raise CommandError(
                        f"another migrate of this database has run for more than {timeout:g} s "
                        f"(MIGRATE_LOCK_TIMEOUT; it holds {path})"
                    ) from None
                time.sleep(POLL_SECONDS)
        yield  # closing the file releases the lock
