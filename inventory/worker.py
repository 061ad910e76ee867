"""The process beside the web server (`manage.py worker`; config/serve.py starts it and starts
it again when it dies): the service's own background duties, one round a second.

- every round, `holds.holds_expire_due`: writes the expiry (and its events) of holds whose
  `expires_at` has passed, so that an expiry is published within a minute even on an item
  that nobody touches again;
- every round, `webhooks.deliver_due`: delivers the webhook attempts that are due;
- every 10 minutes, prunes events older than EVENTS_RETENTION_DAYS and idempotency keys older
  than 24 hours.

Several app servers may each run a worker against one database: a lease (the `Lease` row
"worker") lets one of them work at a time. The holder renews it every round for LEASE_SECONDS;
the others try every round too, and one of them takes it over once it has expired (a holder
killed with -9, a host that is gone). A worker that stops cleanly gives the lease up at once.
The lease saves work; it is not what keeps the duties correct: each is safe when two workers
run it at once (row locks, conditional claims), as they may for a moment when a holder
overruns its lease.

A duty that raises is logged and the others still run; when the database fails, rounds come
further apart (up to BACKOFF_MAX_SECONDS), and the worker carries on once it is back. The
duties of other modules are looked up at every call, so a worker runs (and says what it
skips) in a build that lacks one of them.
"""

import datetime
import functools
import importlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable

from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections, connection, transaction
from django.db.models import Q

from inventory import clock, idempotency, sql
from inventory.models import Lease

log = logging.getLogger("inventory.worker")

LEASE_NAME = "worker"
LEASE_SECONDS = 15.0  # how long a taken or renewed lease lasts
# A holder starts no duty in the last seconds of its lease: room for the duty already running
# and for app servers whose clocks disagree a little (NTP keeps them within milliseconds).
LEASE_MARGIN_SECONDS = 5.0
ROUND_SECONDS = 1.0  # from the start of one round to the start of the next
BACKOFF_MAX_SECONDS = 30.0  # the longest pause between rounds while the database fails
SWEEP_LIMIT = 100  # holds per call of the sweep (one transaction each)
# Seconds a round may spend sweeping a backlog (after an outage): delivery still runs every
# round, and the next round goes on with what is left.
SWEEP_BUDGET_SECONDS = 5.0
PRUNE_EVERY_SECONDS = 600.0
IDEMPOTENCY_KEYS_KEPT_HOURS = 24.0  # the contract keeps keys at least 24 hours
STOP_POLL_SECONDS = 0.1  # how soon a pause notices a request to stop


@functools.cache
def _insert_if_absent(vendor: str) -> str:
    quote = connection.ops.quote_name
    table, name, holder, expires_at = (
        quote(part) for part in (Lease._meta.db_table, "name", "holder", "expires_at")
    )
    # Table and column names from the model; every value is a parameter.
    return (
        f"INSERT INTO {table} ({name}, {holder}, {expires_at}) VALUES (%s, %s, %s) "  # noqa: S608
        f"ON CONFLICT ({name}) DO NOTHING"
    )


def lease_take(*, name: str, holder: str, seconds: float = LEASE_SECONDS) -> bool:
    """Take the lease `name` for `holder` until now + `seconds`, or renew it if holder has it.
    True iff holder holds it now; False while another holder's lease has not expired.

    One conditional UPDATE (the row is holder's, or expired) and, when it matched nothing, an
    INSERT that does nothing if the row exists. Two takers never both win: on PostgreSQL the
    second UPDATE of a row waits for the first and checks its condition again on the new row,
    and the second INSERT waits for the first and does nothing; SQLite runs one at a time.
    """
    now = clock.now()
    until = now + datetime.timedelta(seconds=seconds)
    with transaction.atomic():
        taken = Lease.objects.filter(Q(holder=holder) | Q(expires_at__lte=now), name=name).update(
            holder=holder, expires_at=until
        )
        if taken:
            return True
        with connection.cursor() as cursor:
            cursor.execute(
                _insert_if_absent(connection.vendor), [name, holder, sql.param(Lease, "expires_at", until)]
            )
            return cursor.rowcount == 1


def lease_release(*, name: str, holder: str) -> bool:
    """Give the lease up, if holder has it, so that another may take it at once."""
    with transaction.atomic():
        return Lease.objects.filter(name=name, holder=holder).delete()[0] > 0


def holder_name() -> str:
    """hostname:pid:random, unique to this process even across hosts and pid reuse."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"


def duty(module: str, name: str) -> Callable | None:
    """The function `name` of inventory.<module>, or None while that module or function does
    not exist. A module that exists but fails to import raises, as any duty's failure does."""
    path = f"inventory.{module}"
    try:
        found = importlib.import_module(path)
    except ModuleNotFoundError as exc:
        if exc.name != path:
            raise
        return None
    return getattr(found, name, None)


def pause_after(failures: int) -> float:
    """Seconds from one round's start to the next after that many failed rounds in a row:
    1 s, then 2, 4, 8, 16, 30, 30 ... while the database fails."""
    return min(BACKOFF_MAX_SECONDS, ROUND_SECONDS * 2**failures)


class Worker:
    """The loop. `run()` until `stop()`; `stop()` may be called from a signal handler."""

    def __init__(self, *, holder: str | None = None, parent_pid: int | None = None):
        self.holder = holder or holder_name()
        self.parent_pid = parent_pid  # stop when this process is no longer our parent
        self.stopping = False  # a plain flag: setting it is safe in a signal handler
        self.held = False  # whether the last renewal that reached the database got the lease
        self.holds_until = 0.0  # time.monotonic() until which this worker may start a duty
        self.failures = 0  # rounds in a row that met a database error
        self.due_at: dict[str, float] = {}  # duty -> time.monotonic() when it next runs
        self.missing: set[str] = set()  # duties not found, each reported once

    def stop(self) -> None:
        self.stopping = True

    def run(self) -> None:
        """Run rounds until stop() (SIGTERM, SIGINT) or the parent has gone, then give the
        lease up."""
        log.info("worker %s: started", self.holder)
        try:
            while not self.stopping:
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    log.warning("worker %s: the server that started it is gone; stopping", self.holder)
                    break
                started = time.monotonic()
                healthy = self.round()
                if healthy and self.failures:
                    log.info(
                        "worker %s: the database answers again, after %d failed rounds",
                        self.holder,
                        self.failures,
                    )
                self.failures = 0 if healthy else self.failures + 1
                self._pause(started + pause_after(self.failures))
        finally:
            self._let_go()
            log.info("worker %s: stopped", self.holder)

    def round(self) -> bool:
        """One round: renew (or take) the lease, then, while it is ours, each duty that is due.
        False when the database failed, so that the next round comes later."""
        healthy = True
        try:
            # What Django does around each request: drop a connection that broke or is too old.
            close_old_connections()
            self._renew()
        except Exception:
            log.exception("worker %s: could not renew the lease", self.holder)
            self.holds_until = 0.0
            return False
        for name, every, run in self._duties():
            if not self.holding() or self.stopping:
                break
            if time.monotonic() < self.due_at.get(name, 0.0):
                continue
            # Set before running: a duty that keeps failing is tried at its pace, not every round.
            self.due_at[name] = time.monotonic() + every
            try:
                run()
            except Exception as exc:
                log.exception("worker %s: %s failed", self.holder, name)
                if isinstance(exc, DatabaseError | InterfaceError):
                    healthy = False
        return healthy

    def holding(self) -> bool:
        return time.monotonic() < self.holds_until

    def _duties(self) -> list[tuple[str, float, Callable[[], None]]]:
        """(name, seconds between runs, function), in the order a round runs them."""
        return [
            ("holds.holds_expire_due", 0.0, self._sweep),
            ("webhooks.deliver_due", 0.0, self._deliver),
            ("events.events_prune", PRUNE_EVERY_SECONDS, self._prune_events),
            ("idempotency.idempotency_keys_prune", PRUNE_EVERY_SECONDS, self._prune_idempotency_keys),
        ]

    def _renew(self) -> None:
        started = time.monotonic()
        held = lease_take(name=LEASE_NAME, holder=self.holder, seconds=LEASE_SECONDS)
        # Counted from before the UPDATE, so this process never believes it longer than the row says.
        self.holds_until = started + LEASE_SECONDS - LEASE_MARGIN_SECONDS if held else 0.0
        if held and not self.held:
            log.info("worker %s: took the lease", self.holder)
        elif self.held and not held:
            log.warning("worker %s: lost the lease to another worker", self.holder)
        self.held = held

    def _find(self, module: str, name: str) -> Callable | None:
        found = duty(module, name)
        if found is None and f"{module}.{name}" not in self.missing:
            self.missing.add(f"{module}.{name}")
            log.warning("worker %s: inventory.%s.%s does not exist; skipped", self.holder, module, name)
        return found

    def _sweep(self) -> None:
        """Expire due holds, a batch at a time, until a batch comes back short."""
        expire_due = self._find("holds", "holds_expire_due")
        if expire_due is None:
            return
        budget_ends = time.monotonic() + SWEEP_BUDGET_SECONDS
        while expire_due(limit=SWEEP_LIMIT) >= SWEEP_LIMIT:
            if time.monotonic() >= budget_ends or not self.holding() or self.stopping:
                return

    def _deliver(self) -> None:
        deliver_due = self._find("webhooks", "deliver_due")
        if deliver_due is not None:
            deliver_due()

    def _prune_events(self) -> None:
        events_prune = self._find("events", "events_prune")
        if events_prune is not None:
            events_prune(older_than_days=settings.EVENTS_RETENTION_DAYS)

    def _prune_idempotency_keys(self) -> None:
        idempotency.idempotency_keys_prune(older_than_hours=IDEMPOTENCY_KEYS_KEPT_HOURS)

    def _pause(self, until: float) -> None:
        """Sleep until time.monotonic() reaches `until`, or stop() is called."""
        while not self.stopping and (left := until - time.monotonic()) > 0:
            time.sleep(min(left, STOP_POLL_SECONDS))

    def _let_go(self) -> None:
        if not self.held:
            return
        try:
            lease_release(name=LEASE_NAME, holder=self.holder)
            self.held = False
        except Exception:
            # It expires by itself within LEASE_SECONDS.
            log.exception("worker %s: could not give the lease up", self.holder)
