"""Every state transition: validate -> commit -> return.

A service returns the item, returns None when the item does not exist, or raises a
typed error from inventory.errors; in every failing case nothing has been written.
Every change of qty writes its movement (the ledger) in the same transaction.
"""

import datetime
import functools
import time
import uuid
from collections.abc import Callable

from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import F
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from inventory import auth, invariants, metrics
from inventory.errors import (
    DuplicateName,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InventoryError,
    ItemNotFound,
    StaleQty,
    TokenNameTaken,
)
from inventory.models import IdempotencyKey, Item, Movement, Token

# PostgreSQL SQLSTATEs after which the whole transaction may simply run again.
_RETRYABLE = {"40001", "40P01"}  # serialization_failure, deadlock_detected


def retry_on_conflict(service: Callable) -> Callable:
    """Run a write again when PostgreSQL aborted it for a deadlock or serialization failure:
    nothing of it was committed, so a second run is the same request, not a repeat."""

    @functools.wraps(service)
    def wrapper(*args, **kwargs):
        for attempt in range(5):
            try:
                return service(*args, **kwargs)
            except OperationalError as exc:
                sqlstate = getattr(exc.__cause__, "sqlstate", None)
                if sqlstate not in _RETRYABLE or attempt == 4 or connection.in_atomic_block:
                    raise
                time.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    return wrapper


@functools.cache
def _movement_insert(vendor: str) -> tuple[str, str, tuple]:
    """The INSERT of movements as SQL: its head, the placeholders of one row, and the fields
    in their order. Built once per process: bulk_create() compiled it again on every write,
    which cost more than the write itself."""
    fields = tuple(field for field in Movement._meta.concrete_fields if not field.primary_key)
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    head = f"INSERT INTO {quote(Movement._meta.db_table)} ({columns}) VALUES "  # noqa: S608 (names from the model)
    return head, "(" + ", ".join(["%s"] * len(fields)) + ")", fields


def _record(*movements: dict) -> None:
    """Write movements, each from _movement(), in one INSERT."""
    head, row, fields = _movement_insert(connection.vendor)
    at = timezone.now()
    params = []
    for movement in movements:
        values = {**movement, "at": at}
        params += [field.get_db_prep_save(values[field.attname], connection) for field in fields]
    with connection.cursor() as cursor:
        cursor.execute(head + ", ".join([row] * len(movements)), params)
    for kind in {movement["kind"] for movement in movements}:
        count = sum(movement["kind"] == kind for movement in movements)
        transaction.on_commit(functools.partial(metrics.QTY_TRANSITIONS.labels(kind).inc, count))


def _movement(item_id, kind: str, delta: int, qty_after: int, reason: str | None, request_id: str) -> dict:
    return {
        "item_id": item_id,
        "kind": kind,
        "delta": delta,
        "qty_after": qty_after,
        "reason": reason,
        "request_id": request_id,
    }


def item_create(*, name: object, qty: object, request_id: str = "") -> Item:
    item = Item(name=name, qty=qty)
    try:
        with transaction.atomic():
            item.save(force_insert=True)
            _record(_movement(item.id, Movement.CREATE, item.qty, item.qty, None, request_id))
    except IntegrityError as exc:
        # The invariants passed, so the constraint that failed is the unique name:
        # a racing create of the same name won.
        raise DuplicateName(field="name") from exc
    return item


def item_rename(*, item_id: uuid.UUID, name: object) -> Item | None:
    new_name = invariants.normalize_name(name)
    try:
        with transaction.atomic():
            item = Item.objects.select_for_update().filter(pk=item_id).first()
            if item is None:
                return None
            item.name = new_name
            item.save(update_fields=["name"])
    except IntegrityError as exc:
        raise DuplicateName(field="name") from exc
    return item


def item_delete(*, item_id: uuid.UUID, request_id: str = "") -> int | None:
    """Delete the item; returns the qty it removed, or None when there was no such item."""
    with transaction.atomic():
        item = Item.objects.select_for_update().filter(pk=item_id).first()
        if item is None:
            return None
        item.delete()
        _record(_movement(item_id, Movement.DELETE, -item.qty, 0, None, request_id))
    return item.qty


@functools.cache
def _guarded_update(vendor: str, lower_bound: bool, compare: bool) -> tuple[str, tuple[str, ...]]:
    """The guarded UPDATE ... RETURNING of one shape as SQL, and the names of its parameters
    in order. The ORM compiles it with F("qty") once per process and shape: compiling it
    again on every request cost more than running it. QuerySet.update() cannot return the
    new row, so RETURNING (SQLite 3.35+, PostgreSQL) is added to the compiled statement."""
    marks = {"delta": 1_000_001, "bound": 1_000_002, "expected_qty": 1_000_003}
    item_id = uuid.UUID(int=1_000_004)
    guard = {"qty__gte" if lower_bound else "qty__lte": marks["bound"]}
    if compare:
        guard["qty"] = marks["expected_qty"]
    update = Item.objects.filter(pk=item_id, **guard).query.chain(UpdateQuery)
    update.add_update_values({"qty": F("qty") + marks["delta"]})
    sql, params = update.get_compiler(connection=connection).as_sql()
    names = {value: name for name, value in marks.items()}
    names[Item._meta.pk.get_db_prep_value(item_id, connection)] = "id"
    quote = connection.ops.quote_name
    return f"{sql} RETURNING {quote('name')}, {quote('qty')}", tuple(names[value] for value in params)


def _guarded_add(item_id: uuid.UUID, delta: int, expected_qty: int | None) -> Item | None:
    """qty += delta in one UPDATE whose guard keeps qty in [0, QTY_MAX] (and, for a
    compare-and-set, requires qty == expected_qty). Returns the item as updated, or None
    when the guard refused or the item does not exist.

    The bound is written so that no intermediate value leaves the 64-bit range:
    SQLite would turn an overflowing sum into a REAL and PostgreSQL would raise.
    """
    sql, order = _guarded_update(connection.vendor, delta < 0, expected_qty is not None)
    values = {
        "delta": delta,
        "bound": -delta if delta < 0 else invariants.QTY_MAX - delta,
        "expected_qty": expected_qty,
        "id": Item._meta.pk.get_db_prep_value(item_id, connection),
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, [values[name] for name in order])
        row = cursor.fetchone()
    return None if row is None else Item(id=item_id, name=row[0], qty=row[1])


def _adjust(item_id: uuid.UUID, delta: int, expected_qty: int | None) -> Item | None:
    """The quantity transition, inside the caller's transaction, which records its movement."""
    item = _guarded_add(item_id, delta, expected_qty)
    if item is None:
        # Refused or missing. Lock the row so the reason we give is the true one:
        # another writer may have moved qty since the guard ran.
        current = Item.objects.select_for_update().filter(pk=item_id).values_list("qty", flat=True).first()
        if current is None:
            return None
        if expected_qty is not None and current != expected_qty:
            raise StaleQty(qty=current, item_id=item_id)
        invariants.apply_delta(current, delta)  # raises the reason it is refused
        # qty moved in between and the delta now fits; the row is locked, so this applies.
        item = _guarded_add(item_id, delta, expected_qty)
    return item


@retry_on_conflict
def qty_adjust(
    *,
    item_id: uuid.UUID,
    delta: object,
    expected_qty: object = None,
    reason: object = None,
    request_id: str = "",
) -> Item | None:
    delta = invariants.check_delta(delta)
    expected_qty = None if expected_qty is None else invariants.check_qty(expected_qty, "expected_qty")
    reason = invariants.check_reason(reason)
    with transaction.atomic():
        item = _adjust(item_id, delta, expected_qty)
        if item is not None:
            _record(_movement(item_id, Movement.ADJUST, delta, item.qty, reason, request_id))
    return item


@retry_on_conflict
def adjustment_apply(*, changes: list[dict], reason: object = None, request_id: str = "") -> list[Item]:
    """Apply every change or none. Rows are updated in id order, so two batches that touch
    the same items lock them in the same order and cannot deadlock each other."""
    changes = invariants.check_changes(changes)
    reason = invariants.check_reason(reason)
    with transaction.atomic():
        applied = {}
        for change in sorted(changes, key=lambda c: c["id"]):
            try:
                item = _adjust(change["id"], change["delta"], change["expected_qty"])
            except InventoryError as exc:
                exc.item_id = change["id"]  # which line; raising rolls back the lines before it
                raise
            if item is None:
                raise ItemNotFound(field="changes", item_id=change["id"])
            applied[change["id"]] = item
        movements = [
            _movement(
                change["id"], Movement.ADJUST, change["delta"], applied[change["id"]].qty, reason, request_id
            )
            for change in changes
        ]
        _record(*movements)
    return [applied[change["id"]] for change in changes]


@retry_on_conflict
def idempotent(*, token: Token, key: str, fingerprint: str, run: Callable[[], tuple[int, str]]):
    """Run a request once per (token, key): (status, body, replayed).

    The answer is stored in the same transaction as the effect, so a crash leaves both
    or neither, and a retry after it is applied exactly once. A concurrent repeat is 409
    on PostgreSQL (a transaction-scoped advisory lock says the first is still running);
    on SQLite, whose writers take turns, it waits for the first and gets its replay.
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
    cutoff = timezone.now() - datetime.timedelta(hours=older_than_hours)
    with transaction.atomic():
        return IdempotencyKey.objects.filter(created_at__lt=cutoff).delete()[0]


def token_create(*, name: str, scope: str) -> str:
    """Make a token; return it. Only its digest is stored, so this is the one time it is seen."""
    shown, key, digest = auth.new_token()
    try:
        with transaction.atomic():
            Token.objects.create(name=name, scope=scope, key=key, digest=digest)
    except IntegrityError as exc:
        raise TokenNameTaken(field="name") from exc
    return shown


def token_revoke(*, name: str) -> bool:
    """Revoke the active token with this name; False if there is none."""
    with transaction.atomic():
        token = Token.objects.select_for_update().filter(name=name, revoked_at__isnull=True).first()
        if token is None:
            return False
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    auth.forget(token.key)
    return True
