"""Copying the whole database into another, empty one (SQLite -> PostgreSQL and back).

The copy reads the source from one snapshot, so the service may keep serving while it runs;
what is written after the copy began is not in it (the README's move stops the writers first,
and the copy says how many events the source gained meanwhile). Every table is streamed in
chunks in primary-key order (keyset, so memory stays bounded whatever the size) and written
into the target in one transaction: a copy that fails leaves the target empty. Then the
target's sequences are set past the copied ids, and the two sides are compared: row counts,
and every item's qty, reserved and ledger sum.
"""

import contextlib
import itertools
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.apps import apps
from django.core.management.color import no_style
from django.db import connections, transaction
from django.db.models import Sum

from inventory.models import Event, Item, Movement

CHUNK = 2000  # rows per read and per INSERT


class CopyRefused(Exception):
    """The copy cannot start or did not come out equal; the message says why."""


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows copied
    seconds: float = 0.0
    peak_memory_mib: float = 0.0  # the process's peak resident set, whole run
    events_after_snapshot: int = 0  # events the source committed while the copy ran

    @property
    def rows_per_second(self) -> float:
        return sum(self.rows.values()) / self.seconds if self.seconds else 0.0


def models_in_order() -> list:
    """The service's tables, each after every table it refers to."""
    pending = list(apps.get_app_config("inventory").get_models())
    ordered: list = []
    while pending:
        for model in pending:
            parents = {f.related_model for f in model._meta.concrete_fields if f.is_relation}
            if parents <= set(ordered) | {model}:
                ordered.append(model)
                pending.remove(model)
                break
        else:
            raise RuntimeError(f"the foreign keys of {pending} form a cycle")
    return ordered


def copy_database(source: str, target: str, progress=None) -> CopyReport:
    """Copy every table of the database `source` (an alias) into the empty, migrated database
    `target` (an alias), then compare them. `progress(model, rows)` is called as rows are
    written. Raises CopyRefused when the target holds data or the copy is not equal."""
    started = time.monotonic()
    models = models_in_order()
    report = CopyReport()
    for model in models:
        if model.objects.using(target).exists():
            raise CopyRefused(f"the target is not empty: {model._meta.db_table} has rows")
    with _snapshot(source):
        last_event = _last_event(source)
        with transaction.atomic(using=target):
            _lift_session_bounds(target)
            for model in models:
                report.rows[model._meta.db_table] = _copy_table(model, source, target, progress)
            with connections[target].cursor() as cursor:
                for statement in connections[target].ops.sequence_reset_sql(no_style(), models):
                    cursor.execute(statement)
        _compare(models, source, target)
    report.events_after_snapshot = max(0, _last_event(source) - last_event)
    report.seconds = time.monotonic() - started
    report.peak_memory_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return report


@contextlib.contextmanager
def _snapshot(alias: str) -> Iterator[None]:
    """Every read on `alias` inside sees the database as of one instant, without blocking its
    writers. PostgreSQL: a REPEATABLE READ READ ONLY transaction (PostgreSQL docs, "Transaction
    Isolation"). SQLite: a read transaction, which in WAL mode sees one snapshot until it
    ends (SQLite docs, "Write-Ahead Logging"); BEGIN DEFERRED takes no write lock, where
    Django's atomic() would begin IMMEDIATE and stop every writer for the whole copy."""
    connection = connections[alias]
    if connection.vendor == "postgresql":
        with transaction.atomic(using=alias):
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            _lift_session_bounds(alias)
            yield
        return
    connection.ensure_connection()
    with connection.cursor() as cursor:
        cursor.execute("BEGIN DEFERRED")
        try:
            cursor.execute("SELECT COUNT(*) FROM sqlite_master")  # the snapshot starts here
            yield
        finally:
            cursor.execute("ROLLBACK")


def _lift_session_bounds(alias: str) -> None:
    """The service's statement and idle-in-transaction bounds are for requests; a copy of a
    large database outlasts them. SET LOCAL ends with the transaction (so it is safe behind a
    pooler in transaction mode)."""
    if connections[alias].vendor == "postgresql":
        with connections[alias].cursor() as cursor:
            cursor.execute("SET LOCAL statement_timeout = 0")
            cursor.execute("SET LOCAL idle_in_transaction_session_timeout = 0")


def _last_event(alias: str) -> int:
    return Event.objects.using(alias).order_by("-seq").values_list("seq", flat=True).first() or 0


def _copy_table(model, source: str, target: str, progress) -> int:
    fields = model._meta.concrete_fields
    names = [f.attname for f in fields]
    target_connection = connections[target]
    quote = target_connection.ops.quote_name
    statement = "INSERT INTO {} ({}) VALUES ({})".format(  # noqa: S608 (our tables' quoted names)
        quote(model._meta.db_table),
        ", ".join(quote(f.column) for f in fields),
        ", ".join(["%s"] * len(fields)),
    )
    rows = model.objects.using(source).order_by("pk").values_list(*names)
    copied, after = 0, None
    while True:
        chunk = list((rows if after is None else rows.filter(pk__gt=after))[:CHUNK])
        if not chunk:
            return copied
        with target_connection.cursor() as cursor:
            cursor.executemany(
                statement,
                [
                    [
                        f.get_db_prep_save(value, target_connection)
                        for f, value in zip(fields, row, strict=True)
                    ]
                    for row in chunk
                ],
            )
        after = chunk[-1][names.index(model._meta.pk.attname)]
        copied += len(chunk)
        if progress is not None:
            progress(model, len(chunk))


def _compare(models, source: str, target: str) -> None:
    """Raises CopyRefused naming the first difference: a table's row count, or an item's qty,
    reserved or ledger sum."""
    for model in models:
        counts = [model.objects.using(alias).count() for alias in (source, target)]
        if counts[0] != counts[1]:
            raise CopyRefused(
                f"{model._meta.db_table}: {counts[0]} rows in the source, {counts[1]} in the copy"
            )
    after = None
    while True:
        sides = [_items(alias, after) for alias in (source, target)]
        if sides[0] != sides[1]:
            source_row, copied_row = next(
                pair for pair in itertools.zip_longest(*sides) if pair[0] != pair[1]
            )
            raise CopyRefused(f"items differ: in the source {source_row}, in the copy {copied_row}")
        if not sides[0]:
            return
        after = sides[0][-1][0]


def _items(alias: str, after) -> list[tuple]:
    """A chunk of (id, qty, reserved, ledger sum) in id order, after `after`."""
    items = Item.objects.using(alias).order_by("pk")
    if after is not None:
        items = items.filter(pk__gt=after)
    chunk = list(items.values_list("pk", "qty", "reserved")[:CHUNK])
    ledger = dict(
        Movement.objects.using(alias)
        .filter(item_id__in=[row[0] for row in chunk])
        .values("item_id")
        .annotate(total=Sum("delta"))
        .values_list("item_id", "total")
    )
    return [(item_id, qty, reserved, ledger.get(item_id)) for item_id, qty, reserved in chunk]
