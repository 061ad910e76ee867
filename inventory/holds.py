"""Holds: stock set aside for a while, as a checkout does between "pay" and "paid".

A hold is made whole or not at all: each line is checked against the item's available stock
and reserved in one guarded statement (sql.guarded_reserve), lines in item id order, all in
one transaction, so two holds can never both take the last unit and cannot deadlock each
other. active -> committed | released | expired is one way (invariants.hold_action); an
active hold is expired from the instant now >= expires_at, for every reader and writer,
whether or not any process has run since (inventory.reservations).

A service returns the hold, None when there is no such hold, or raises a typed error from
inventory.errors, having written nothing.
"""

import datetime
import uuid

from django.db import connection, transaction
from django.db.models import F

from inventory import clock, invariants, items, metrics, reservations, sql
from inventory.errors import HoldNotActive, InventoryError, ItemNotFound, first_refusal
from inventory.models import Hold, HoldLine, Item, Movement
from inventory.transactions import retry_on_conflict


def _count(outcome: str) -> None:
    transaction.on_commit(metrics.HOLDS.labels(outcome).inc)


def _reserve(item_id: uuid.UUID, qty: int, expires_at: datetime.datetime) -> None:
    """Set qty of the item aside, or raise ItemNotFound / NotEnoughStock."""
    expiry = sql.param(Item, "holds_expire_at", expires_at)
    params = [qty, expiry, expiry, sql.param(Item, "id", item_id), qty]
    with connection.cursor() as cursor:
        cursor.execute(sql.guarded_reserve(connection.vendor), params)
        if cursor.fetchone() is not None:
            return
        # Refused or missing: with the row locked and expired holds collected, the true reason.
        item = reservations.lock_item(item_id)
        if item is None:
            raise ItemNotFound(field="lines", item_id=item_id)
        invariants.line_fits(item.qty - item.reserved, qty, item_id)
        cursor.execute(sql.guarded_reserve(connection.vendor), params)
        if cursor.fetchone() is None:
            raise AssertionError("a locked row that fits refused the reservation")


@retry_on_conflict
def hold_create(
    *, lines: list[dict], ttl_seconds: object = None, reference: object = None, actor: str = ""
) -> Hold:
    """Hold every line or none. Raises InvalidInput, or the first refusal in the contract's
    order (errors.first_refusal): ItemNotFound, then NotEnoughStock, for the first such line
    in item id order."""
    lines = invariants.check_hold_lines(lines)
    ttl = invariants.HOLD_TTL_DEFAULT_SECONDS if ttl_seconds is None else invariants.check_ttl(ttl_seconds)
    reference = invariants.check_reference(reference)
    try:
        with transaction.atomic():
            now = clock.now()
            expires_at = now + datetime.timedelta(seconds=ttl)
            refusals = []
            for line in sorted(lines, key=lambda line: line["id"]):
                try:
                    _reserve(line["id"], line["qty"], expires_at)
                except InventoryError as exc:
                    # Every line is tried, so that the refusal given is the contract's first
                    # (a missing item before a short one); raising rolls back what was reserved.
                    exc.item_id = line["id"]
                    refusals.append(exc)
            if refusals:
                raise first_refusal(refusals)
            hold = Hold.objects.create(
                state=Hold.ACTIVE, reference=reference, expires_at=expires_at, created_at=now, actor=actor
            )
            hold.line_list = HoldLine.objects.bulk_create(
                HoldLine(
                    hold=hold, position=position, item_id=line["id"], qty=line["qty"], expires_at=expires_at
                )
                for position, line in enumerate(lines)
            )
    except InventoryError:
        metrics.HOLDS.labels("refused").inc()
        raise
    _count("created")
    return hold


def _locked(hold_id: uuid.UUID) -> tuple[Hold | None, str | None, datetime.datetime]:
    """The hold's row locked, the time read once it is locked, and its state at that time:
    that one instant decides the whole transition."""
    hold = Hold.objects.select_for_update().filter(pk=hold_id).first()
    now = clock.now()
    if hold is None:
        return None, None, now
    return hold, invariants.hold_state(hold.state, hold.expires_at, now), now


def _lines(hold: Hold) -> list[HoldLine]:
    """The hold's lines in item id order: the order in which items are locked."""
    return sorted(hold.lines.all(), key=lambda line: line.item_id)


def _unreserve(hold: Hold, now: datetime.datetime) -> None:
    """Stop counting the hold's lines in their items' `reserved` (those a writer has not
    collected already), each item's row locked in id order."""
    for line in _lines(hold):
        reservations.lock_item(line.item_id, now)
        if HoldLine.objects.filter(pk=line.pk, reserving=True).update(reserving=False):
            Item.objects.filter(pk=line.item_id).update(reserved=F("reserved") - line.qty)
            reservations.refresh_expiry(line.item_id)


@retry_on_conflict
def hold_commit(*, hold_id: uuid.UUID, actor: str = "", request_id: str = "") -> Hold | None:
    """Take each line's qty from its item (qty and reserved both fall by it), one `commit`
    movement per line, in one transaction. A committed hold answers again and takes nothing
    more. Raises HoldNotActive for an expired or released hold."""
    with transaction.atomic():
        hold, state, now = _locked(hold_id)
        if hold is None:
            return None
        state, changes = invariants.hold_action(state, invariants.COMMIT)
        if changes:
            moved = []
            for line in _lines(hold):
                reservations.lock_item(line.item_id, now)
                # A line another writer stopped counting expired on its clock: the hold is expired.
                if not HoldLine.objects.filter(pk=line.pk, reserving=True).update(reserving=False):
                    raise HoldNotActive(state=invariants.EXPIRED)
                with connection.cursor() as cursor:
                    params = [line.qty, line.qty, sql.param(Item, "id", line.item_id)]
                    cursor.execute(sql.take_reserved(connection.vendor), params)
                    qty_after = cursor.fetchone()[1]
                reservations.refresh_expiry(line.item_id)
                moved.append(
                    items.movement(
                        line.item_id,
                        Movement.COMMIT,
                        -line.qty,
                        qty_after,
                        reference=hold.reference,
                        hold_id=hold.id,
                        actor=actor,
                        request_id=request_id,
                    )
                )
            items.record(*moved)
            hold.state = state
            hold.save(update_fields=["state"])
            _count("committed")
    return hold


@retry_on_conflict
def hold_release(*, hold_id: uuid.UUID) -> Hold | None:
    """Give the held stock back. Releasing a released or expired hold changes nothing (an
    expired hold stays expired). Raises HoldNotActive for a committed hold."""
    with transaction.atomic():
        hold, state, now = _locked(hold_id)
        if hold is None:
            return None
        after, changes = invariants.hold_action(state, invariants.RELEASE)
        if changes:
            _unreserve(hold, now)
            hold.state = after
            hold.save(update_fields=["state"])
            _count("released")
        elif state == invariants.EXPIRED and hold.state == Hold.ACTIVE:
            # Expired, and no writer has stored it yet: store it now, changing nothing a
            # client can see.
            _unreserve(hold, now)
            reservations.mark_expired({hold.id}, now)
            hold.state = after
    return hold


@retry_on_conflict
def hold_extend(*, hold_id: uuid.UUID, ttl_seconds: object) -> Hold | None:
    """expires_at = now + ttl_seconds. Raises InvalidInput for a bad ttl, HoldNotActive
    unless the hold is active."""
    ttl = invariants.check_ttl(ttl_seconds)
    with transaction.atomic():
        hold, state, now = _locked(hold_id)
        if hold is None:
            return None
        invariants.hold_action(state, invariants.EXTEND)
        hold.expires_at = now + datetime.timedelta(seconds=ttl)
        for line in _lines(hold):
            reservations.lock_item(line.item_id, now)
            HoldLine.objects.filter(pk=line.pk).update(expires_at=hold.expires_at)
            reservations.refresh_expiry(line.item_id)
        hold.save(update_fields=["expires_at"])
    return hold


def hold_get(*, hold_id: uuid.UUID) -> Hold | None:
    """The hold, or None. Its `state` as stored; read it through invariants.hold_state."""
    return Hold.objects.filter(pk=hold_id).prefetch_related("lines").first()


def item_hold_list(
    *, item_id: uuid.UUID, limit: int, after_line: int | None = None
) -> tuple[list[tuple[int, Hold]], bool]:
    """A page of the item's active holds, oldest first, as (cursor key, hold), and whether
    more follow."""
    lines = HoldLine.objects.filter(item_id=item_id, reserving=True, expires_at__gt=clock.now())
    if after_line is not None:
        lines = lines.filter(id__gt=after_line)
    page = list(lines.order_by("id").values_list("id", "hold_id")[: limit + 1])
    holds = Hold.objects.filter(pk__in=[hold_id for _, hold_id in page[:limit]]).prefetch_related("lines")
    by_id = {hold.id: hold for hold in holds}
    return [(line_id, by_id[hold_id]) for line_id, hold_id in page[:limit]], len(page) > limit
