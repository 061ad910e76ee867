"""Items: every transition of an item (validate -> commit -> return) and every read of one.

A service returns the item, returns None when the item does not exist, or raises a typed
error from inventory.errors; in every failing case nothing has been written. Every change of
qty writes its movement (the ledger) in the same transaction. No read opens a transaction:
on SQLite that would take the write lock. Every item returned carries its exact `reserved`
(inventory.reservations).
"""

import uuid

from django.db import IntegrityError

from inventory import clock, events, invariants, reservations, sql
from inventory.errors import (
    DuplicateName,
    InventoryError,
    ItemHasActiveHolds,
    ItemNotFound,
    StaleQty,
    first_refusal,
)
from inventory.models import Item, Movement
from inventory.transactions import retry_on_conflict

UNSET = object()  # a field the request leaves as it is


def movement(
    item_id,
    kind: str,
    delta: int,
    qty_after: int,
    *,
    actor: str,
    request_id: str,
    reason: str | None = None,
    reference: str | None = None,
    hold_id=None,
) -> dict:
    return {
        "item_id": item_id,
        "kind": kind,
        "delta": delta,
        "qty_after": qty_after,
        "reason": reason,
        "reference": reference,
        "hold_id": hold_id,
        "actor": actor,
        "request_id": request_id,
    }


def item_create(
    *, name: object, qty: object, low_stock_threshold: object = None, actor: str = "", request_id: str = ""
) -> Item:
    """Raises InvalidInput for a field the invariants refuse, DuplicateName for a taken name."""
    item = Item(name=name, qty=qty, low_stock_threshold=low_stock_threshold)
    try:
        with events.transition(actor=actor, request_id=request_id):
            item.save(force_insert=True)
            events.record(
                movement(item.id, Movement.CREATE, item.qty, item.qty, actor=actor, request_id=request_id)
            )
            events.emit("item.created", item_id=item.id, data=events.item_data(item))
    except IntegrityError as exc:
        # The invariants passed, so the constraint that failed is the unique name:
        # a racing create of the same name won.
        raise DuplicateName(field="name") from exc
    return item


@retry_on_conflict
def item_update(
    *,
    item_id: uuid.UUID,
    name: object = UNSET,
    low_stock_threshold: object = UNSET,
    actor: str = "",
    request_id: str = "",
) -> Item | None:
    """Rename the item and/or set its low_stock_threshold (a field left UNSET keeps its value).
    Raises InvalidInput for a value the invariants refuse, DuplicateName for a taken name."""
    changes = {}
    if name is not UNSET:
        changes["name"] = invariants.normalize_name(name)
    if low_stock_threshold is not UNSET:
        changes["low_stock_threshold"] = invariants.check_threshold(low_stock_threshold)
    try:
        with events.transition(actor=actor, request_id=request_id):
            item = reservations.lock_item(item_id)
            if item is None:
                return None
            threshold_before = item.low_stock_threshold
            Item.objects.filter(pk=item_id).update(**changes)
            for field, value in changes.items():
                setattr(item, field, value)
            events.emit("item.updated", item_id=item.id, data=events.item_data(item))
            events.stock_changed(item, kind="update", threshold_before=threshold_before)
    except IntegrityError as exc:
        raise DuplicateName(field="name") from exc
    return item


@retry_on_conflict
def item_delete(*, item_id: uuid.UUID, actor: str = "", request_id: str = "") -> int | None:
    """Delete the item; returns the qty it removed, or None when there was no such item.
    Raises ItemHasActiveHolds while any hold sets some of it aside."""
    with events.transition(actor=actor, request_id=request_id):
        item = reservations.lock_item(item_id)
        if item is None:
            return None
        if item.reserved:
            raise ItemHasActiveHolds(item_id=item_id)
        Item.objects.filter(pk=item_id).delete()
        events.record(movement(item_id, Movement.DELETE, -item.qty, 0, actor=actor, request_id=request_id))
        events.emit("item.deleted", item_id=item_id, data=events.item_data(item))
    return item.qty


def _guarded_add(item_id: uuid.UUID, delta: int, expected_qty: int | None, now) -> Item | None:
    """qty += delta in one guarded UPDATE (sql.guarded_add). Returns the item as updated,
    or None when the guard refused or the item does not exist."""
    db = sql.database()
    statement = sql.guarded_add(db.vendor, delta < 0, expected_qty is not None)
    bound = -delta if delta < 0 else invariants.QTY_MAX - delta
    params = [delta, sql.param(Item, "id", item_id, db), sql.param(Item, "holds_expire_at", now, db), bound]
    if expected_qty is not None:
        params.append(expected_qty)
    return reservations.item_from_row(item_id, sql.execute(db, statement, params).fetchone())


def adjust(
    item_id: uuid.UUID, delta: int, expected_qty: int | None, *, reason=None, reference=None
) -> Item | None:
    """The quantity transition and its events, inside the caller's transition, which records
    its movement. The guard compares with the stored `reserved`, which may still count expired
    holds: a delta it refuses is tried again once those are collected."""
    # One instant for both tries: the row collected up to a later one always passes this guard.
    now = clock.now()
    item = _guarded_add(item_id, delta, expected_qty, now)
    if item is None:
        # Refused, missing, or counting an expired hold. Lock the row (collecting expired
        # holds, whose events come first) so the reason we give is the true one: another
        # writer may have moved qty since the guard ran.
        current = reservations.lock_item(item_id)
        if current is None:
            return None
        if expected_qty is not None and current.qty != expected_qty:
            raise StaleQty(qty=current.qty, item_id=item_id)
        invariants.apply_delta(current.qty, delta, current.reserved)  # raises the reason it is refused
        # qty moved in between, or expired holds were collected, and the delta now fits;
        # the row is locked, so this applies.
        item = _guarded_add(item_id, delta, expected_qty, now)
    events.stock_changed(item, kind=Movement.ADJUST, delta=delta, reason=reason, reference=reference)
    return item


@retry_on_conflict
def qty_adjust(
    *,
    item_id: uuid.UUID,
    delta: object,
    expected_qty: object = None,
    reason: object = None,
    reference: object = None,
    actor: str = "",
    request_id: str = "",
) -> Item | None:
    """qty' = qty + delta. Raises InvalidInput (bad delta or text, QtyBelowZero,
    QtyBelowReserved, QtyAboveMax) or StaleQty (expected_qty given and not the current qty)."""
    delta = invariants.check_delta(delta)
    expected_qty = None if expected_qty is None else invariants.check_qty(expected_qty, "expected_qty")
    reason = invariants.check_reason(reason)
    reference = invariants.check_reference(reference)
    with events.transition(actor=actor, request_id=request_id):
        item = adjust(item_id, delta, expected_qty, reason=reason, reference=reference)
        if item is not None:
            events.record(
                movement(
                    item_id,
                    Movement.ADJUST,
                    delta,
                    item.qty,
                    reason=reason,
                    reference=reference,
                    actor=actor,
                    request_id=request_id,
                )
            )
    return item


@retry_on_conflict
def adjustment_apply(
    *,
    changes: list[dict],
    reason: object = None,
    reference: object = None,
    actor: str = "",
    request_id: str = "",
) -> list[Item]:
    """Apply every change or none; raises the first refusal in the contract's order
    (errors.first_refusal): ItemNotFound, StaleQty, then the delta's own refusals.
    Rows are updated in id order, so two batches that touch the same items lock them in the
    same order and cannot deadlock each other."""
    changes = invariants.check_changes(changes)
    reason = invariants.check_reason(reason)
    reference = invariants.check_reference(reference)
    with events.transition(actor=actor, request_id=request_id):
        applied, refusals = {}, []
        for change in sorted(changes, key=lambda c: c["id"]):
            try:
                item = adjust(
                    change["id"], change["delta"], change["expected_qty"], reason=reason, reference=reference
                )
            except InventoryError as exc:
                # Every line is tried, so that the refusal given is the contract's first;
                # raising below rolls back whatever applied.
                exc.item_id = change["id"]
                refusals.append(exc)
                continue
            if item is None:
                refusals.append(ItemNotFound(field="changes", item_id=change["id"]))
                continue
            applied[change["id"]] = item
        if refusals:
            raise first_refusal(refusals)
        events.record(
            *(
                movement(
                    change["id"],
                    Movement.ADJUST,
                    change["delta"],
                    applied[change["id"]].qty,
                    reason=reason,
                    reference=reference,
                    actor=actor,
                    request_id=request_id,
                )
                for change in changes
            )
        )
    return [applied[change["id"]] for change in changes]


def item_get(*, item_id: uuid.UUID) -> Item | None:
    """The item with its exact `reserved` at this instant, or None."""
    db = sql.database()
    row = sql.execute(db, sql.item_select(db.vendor, False), [sql.param(Item, "id", item_id, db)]).fetchone()
    item = reservations.item_from_row(item_id, row)
    if item is not None:
        item.reserved = reservations.reserved_now(item_id, item.reserved, item.holds_expire_at, clock.now())
    return item


ITEM_FIELDS = ("id", "name", "qty", "reserved", "low_stock_threshold")


def item_list(*, limit: int, after_name: str | None = None) -> tuple[list[dict], bool]:
    """A page of at most `limit` items ordered by name, as dicts of ITEM_FIELDS (keyset: a
    deep page costs what the first does), and whether more items follow it."""
    items = Item.objects.order_by("name").annotate(reserved_now=reservations.reserved_expression(clock.now()))
    if after_name is not None:
        items = items.filter(name__gt=after_name)
    page = list(items.values("id", "name", "qty", "reserved_now", "low_stock_threshold")[: limit + 1])
    for row in page:
        row["reserved"] = row.pop("reserved_now")
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
