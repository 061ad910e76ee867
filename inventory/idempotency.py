"""Idempotency keys: a request runs at most once per (token, key), and its answer is stored
in the same transaction as its effect."""

import datetime
from collections.abc import Callable

from django.db import connection, transaction
from django.utils import timezone

from inventory.errors import IdempotencyKeyInUse, IdempotencyKeyReused
from inventory.models import IdempotencyKey, Token
from inventory.transactions import retry_on_conflict

PRUNE_BATCH = 1000  # rows per transaction: the write lock is never held for long


@retry_on_conflict
def run_once(*, token: Token, key: str, fingerprint: str, run: Callable[[], tuple[int, str]]):
    """Run a request once per (token, key): (status, body, replayed).

    The answer is stored in the same transaction as the effect, so a crash leaves both
    or neither, and a retry after it is applied exactly once. A concurrent repeat raises
    IdempotencyKeyInUse on PostgreSQL (a transaction-scoped advisory lock says the first is
    still running); on SQLite, whose writers take turns, it waits for the first and gets its
    replay. The same key with another fingerprint raises IdempotencyKeyReused.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", [f"{token.pk}:{key}"]
                )
                if not cursor.fetchone()[0]:
                    raise IdempotencyKeyInUse(field="Idempotency-Key")
        stored = IdempotencyKey.objects.filter(token=token, key=key).first()
        if stored is not None:
            if stored.fingerprint != fingerprint:
                raise IdempotencyKeyReused(field="Idempotency-Key")
            return stored.status, stored.body, True
        status, body = run()
        IdempotencyKey.objects.create(token=token, key=key, fingerprint=fingerprint, status=status, body=body)
        return status, body, False


def idempotency_keys_prune(*, older_than_hours: float = 24) -> int:
    """Delete keys older than that many hours; returns how many. Deletes PRUNE_BATCH rows per
    transaction, so writers wait at most one short batch, however many keys have piled up."""
    cutoff = timezone.now() - datetime.timedelta(hours=older_than_hours)
    removed = 0
    while True:
        with transaction.atomic():
            batch = list(
                IdempotencyKey.objects.filter(created_at__lt=cutoff).values_list("pk", flat=True)[
                    :PRUNE_BATCH
                ]
            )
            if not batch:
                return removed
            removed += IdempotencyKey.objects.filter(pk__in=batch).delete()[0]
