"""The stored `reserved` counter of an item, kept exact for every reader.

An item's `reserved` is the sum of its hold lines that count (HoldLine.reserving). A hold
that expires stops reserving at that instant, but no process needs to run then: every read
leaves out the lines whose expires_at has passed (reserved_now), and every write that needs
the item's stock first collects them (collect_expired), in its own transaction. The item's
`holds_expire_at`, the earliest expiry among the lines it counts, tells when the stored
counter stops being exact, so neither step costs anything before that instant.

Locks are taken in one order, so that no two writers wait on each other: a hold's row, then
its items in id order, then their lines; a line is only changed while its item is locked.
"""

import datetime
import functools
import uuid

from django.db import transaction
from django.db.models import Case, F, Min, OuterRef, Q, Subquery, Sum, Value, When
from django.db.models.functions import Coalesce

from inventory import clock, events, metrics, sql
from inventory.models import Hold, HoldLine, Item


def is_exact(holds_expire_at: datetime.datetime | None, now: datetime.datetime) -> bool:
    """The stored counter counts no expired line."""
    return holds_expire_at is None or holds_expire_at > now


def reserved_now(item_id: uuid.UUID, stored: int, holds_expire_at, now: datetime.datetime) -> int:
    """What the item reserves at `now` (items), reading its lines only when the stored
    counter may count an expired one."""
    if is_exact(holds_expire_at, now):
        return stored
    params = [sql.param(Item, "id", item_id), sql.param(HoldLine, "expires_at", now)]
    db = sql.database()
    return sql.execute(db, sql.reserved_at(db.vendor), params).fetchone()[0]


def reserved_expression(now: datetime.datetime):
    """reserved_now() as an expression, for pages of items."""
    lines = (
        HoldLine.objects.filter(item_id=OuterRef("pk"), reserving=True, expires_at__gt=now)
        .values("item_id")
        .annotate(total=Sum("qty"))
        .values("total")
    )
    exact = Q(holds_expire_at__isnull=True) | Q(holds_expire_at__gt=now)

    return Case(When(exact, then=F("reserved")), default=Coalesce(Subquery(lines), Value(0)))


def collect_expired(item_id: uuid.UUID, now: datetime.datetime) -> None:
    """Stop counting the item's expired lines in its stored `reserved`, and mark their holds
    expired. Call it with the item's row locked, inside the writer's transaction."""
    expired = list(
        HoldLine.objects.filter(item_id=item_id, reserving=True, expires_at__lte=now).values_list(
            "id", "qty", "hold_id"
        )
    )
    if expired:
        HoldLine.objects.filter(id__in=[line_id for line_id, _, _ in expired]).update(reserving=False)
        total = sum(qty for _, qty, _ in expired)
        Item.objects.filter(pk=item_id).update(reserved=F("reserved") - total)
        mark_expired({hold_id for _, _, hold_id in expired}, now)
    refresh_expiry(item_id)


def mark_expired(hold_ids: set, now: datetime.datetime) -> None:
    """Write the expired state of these holds, those still stored active, once. A hold whose
    row another transaction has locked is skipped (SKIP LOCKED): that transaction is acting
    on the hold and writes its state itself, and waiting for it here could close a cycle of
    locks."""
    due = Hold.objects.filter(id__in=hold_ids, state=Hold.ACTIVE, expires_at__lte=now)
    ids = list(due.select_for_update(skip_locked=True).values_list("id", flat=True))
    if ids:
        expired = Hold.objects.filter(id__in=ids, state=Hold.ACTIVE).update(state=Hold.EXPIRED)
        transaction.on_commit(functools.partial(metrics.HOLDS.labels("expired").inc, expired))
        for hold in Hold.objects.filter(id__in=ids).prefetch_related("lines").order_by("expires_at", "id"):
            events.emit("hold.expired", hold_id=hold.id, data=events.hold_data(hold, Hold.EXPIRED))


def refresh_expiry(item_id: uuid.UUID) -> None:
    """Set the item's holds_expire_at to the earliest expiry among the lines it counts."""
    earliest = HoldLine.objects.filter(item_id=OuterRef("pk"), reserving=True).values("item_id")
    earliest = earliest.annotate(first=Min("expires_at")).values("first")
    Item.objects.filter(pk=item_id).update(holds_expire_at=Subquery(earliest))


def lock_item(item_id: uuid.UUID, now: datetime.datetime | None = None) -> Item | None:
    """Lock the item's row, collect the lines that have expired by `now` (by default the time
    read once the row is locked; a hold's action passes the time it read once the hold's row
    was locked, so that one instant decides the whole transition), and return the item with
    its exact `reserved`; None if there is no such item."""
    item = item_from_row(item_id, _select(item_id, for_update=True))
    now = clock.now() if now is None else now
    if item is not None and not is_exact(item.holds_expire_at, now):
        stored = item.reserved
        collect_expired(item_id, now)
        item = item_from_row(item_id, _select(item_id, for_update=False))
        events.stock_changed(item, kind="expire", reserved_delta=item.reserved - stored)
        if not is_exact(item.holds_expire_at, now):
            item.reserved = reserved_now(item_id, item.reserved, item.holds_expire_at, now)
    return item


def _select(item_id: uuid.UUID, *, for_update: bool):
    db = sql.database()
    return sql.execute(
        db, sql.item_select(db.vendor, for_update), [sql.param(Item, "id", item_id, db)]
    ).fetchone()


def item_from_row(item_id: uuid.UUID, row) -> Item | None:
    """An Item from a row of sql.ITEM_COLUMNS (None for no row). Its `reserved` is as
    stored: exact when is_exact(item.holds_expire_at, now)."""
    if row is None:
        return None
    name, qty, reserved, holds_expire_at, threshold = row
    return Item(
        id=item_id,
        name=name,
        qty=qty,
        reserved=reserved,
        holds_expire_at=sql.as_datetime(holds_expire_at),
        low_stock_threshold=threshold,
    )
