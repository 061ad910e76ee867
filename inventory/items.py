"""Items: every transition of an item (validate -> commit -> return) and every read of one.

A service returns the item, returns None when the item does not exist, or raises a typed
error from inventory.errors; in every failing case nothing has been written. Every change of
qty writes its movement (the ledger) in the same transaction. No read opens a transaction:
on SQLite that would take the write lock.
"""

import functools
import uuid

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from inventory import invariants, metrics, sql
from inventory.errors import DuplicateName, InventoryError, ItemNotFound, StaleQty
from inventory.models import Item, Movement
from inventory.transactions import retry_on_conflict


def _record(*movements: dict) -> None:
    """Write movements, each from _movement(), in one INSERT."""
    head, row, fields = sql.movement_insert(connection.vendor)
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
    """Raises InvalidInput for a name or qty the invariants refuse, DuplicateName for a taken name."""
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
    """Raises InvalidInput for a name the invariants refuse, DuplicateName for a taken name."""
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


def _guarded_add(item_id: uuid.UUID, delta: int, expected_qty: int | None) -> Item | None:
    """qty += delta in one UPDATE whose guard keeps qty in [0, QTY_MAX] (and, for a
    compare-and-set, requires qty == expected_qty). Returns the item as updated, or None
    when the guard refused or the item does not exist.

    The bound is written so that no intermediate value leaves the 64-bit range:
    SQLite would turn an overflowing sum into a REAL and PostgreSQL would raise.
    """
    statement, order = sql.guarded_update(connection.vendor, delta < 0, expected_qty is not None)
    values = {
        "delta": delta,
        "bound": -delta if delta < 0 else invariants.QTY_MAX - delta,
        "expected_qty": expected_qty,
        "id": Item._meta.pk.get_db_prep_value(item_id, connection),
    }
    with connection.cursor() as cursor:
        cursor.execute(statement, [values[name] for name in order])
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
    """qty' = qty + delta. Raises InvalidInput (bad delta, QtyBelowZero, QtyAboveMax) or
    StaleQty (expected_qty given and not the current qty)."""
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
    """Apply every change or none; raises ItemNotFound or the first refusal in id order.
    Rows are updated in id order, so two batches that touch the same items lock them in the
    same order and cannot deadlock each other."""
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


def item_get(*, item_id: uuid.UUID) -> Item | None:
    pk = Item._meta.pk.get_db_prep_value(item_id, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql.item_select(connection.vendor), [pk])
        row = cursor.fetchone()
    return None if row is None else Item(id=item_id, name=row[0], qty=row[1])


def item_list(*, limit: int, after_name: str | None = None) -> tuple[list[dict], bool]:
    """A page of at most `limit` items ordered by name, as {id, name, qty} (keyset: a deep
    page costs what the first does), and whether more items follow it."""
    items = Item.objects.order_by("name").values("id", "name", "qty")
    if after_name is not None:
        items = items.filter(name__gt=after_name)
    page = list(items[: limit + 1])
    return page[:limit], len(page) > limit


def movement_list(
    *, item_id: uuid.UUID, limit: int, after_id: int | None = None
) -> tuple[list[Movement], bool]:
    """A page of an item's movements, oldest first; ([], False) when it has none."""
    movements = Movement.objects.filter(item_id=item_id).order_by("id")
    if after_id is not None:
        movements = movements.filter(id__gt=after_id)
    page = list(movements[: limit + 1])
    return page[:limit], len(page) > limit


def item_ever_existed(*, item_id: uuid.UUID) -> bool:
    """Every item ever created has a create movement, which is never deleted."""
    return Movement.objects.filter(item_id=item_id).exists()
