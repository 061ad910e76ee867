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

from django.db import transaction
from django.db.models import F

from inventory import clock, events, invariants, items, metrics, reservations, sql
from inventory.errors import HoldNotActive, InventoryError, ItemNotFound, first_refusal
from inventory.models import Hold, HoldLine, Item, Movement
from inventory.transactions import retry_on_conflict


def _count(outcome: str) -> None:
    transaction.on_commit(metrics.HOLDS.labels(outcome).inc)


def _reserve(item_id: uuid.UUID, qty: int, expires_at: datetime.datetime, hold_id: uuid.UUID) -> None:
    """Set qty of the item aside, or raise ItemNotFound / NotEnoughStock."""
    expiry = sql.param(Item, "holds_expire_at", expires_at)
    now = sql.param(Item, "holds_expire_at", clock.now())
    params = [qty, expiry, expiry, sql.param(Item, "id", item_id), now, qty]
    db = sql.database()
    row = sql.execute(db, sql.guarded_reserve(db.vendor), params).fetchone()
    if row is None:
        # Refused, missing or counting an expired hold: with the row locked and expired
        # holds collected (their events first), the true reason.
        item = reservations.lock_item(item_id)
        if item is None:
            raise ItemNotFound(field="lines", item_id=item_id)
        invariants.line_fits(item.qty - item.reserved, qty, item_id)
        row = sql.execute(db, sql.guarded_reserve(db.vendor), params).fetchone()
    item = reservations.item_from_row(item_id, row)
    events.stock_changed(item, kind="hold", reserved_delta=qty, hold_id=hold_id)


@retry_on_conflict
def hold_create(
    *,
    lines: list[dict],
    ttl_seconds: object = None,
    reference: object = None,
    actor: str = "",
    request_id: str = "",
) -> Hold:
    """Hold every line or none. Raises InvalidInput, or the first refusal in the contract's
    order (errors.first_refusal): ItemNotFound, then NotEnoughStock, for the first such line
    in item id order."""
    lines = invariants.check_hold_lines(lines)
    ttl = invariants.HOLD_TTL_DEFAULT_SECONDS if ttl_seconds is None else invariants.check_ttl(ttl_seconds)
    reference = invariants.check_reference(reference)
    try:
        with events.transition(actor=actor, request_id=request_id):
            now = clock.now()
            expires_at = now + datetime.timedelta(seconds=ttl)
            hold_id = Hold._meta.pk.get_default()  # known before the lines, which name it in their events
            refusals = []
            for line in sorted(lines, key=lambda line: line["id"]):
                try:
                    _reserve(line["id"], line["qty"], expires_at, hold_id)
                except InventoryError as exc:
                    # Every line is tried, so that the refusal given is the contract's first
                    # (a missing item before a short one); raising rolls back what was reserved.
                    exc.item_id = line["id"]
                    refusals.append(exc)
            if refusals:
                raise first_refusal(refusals)
            hold = Hold.objects.create(
                id=hold_id,
                state=Hold.ACTIVE,
                reference=reference,
                expires_at=expires_at,
                created_at=now,
                actor=actor,
            )
            hold.line_list = HoldLine.objects.bulk_create(
                HoldLine(
                    hold=hold, position=position, item_id=line["id"], qty=line["qty"], expires_at=expires_at
                )
                for position, line in enumerate(lines)
            )
            events.emit("hold.created", hold_id=hold.id, data=events.hold_data(hold, Hold.ACTIVE))
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
    """The hold's lines in item id order: the order in which items are locked. Read once and
    kept on the hold, for its events and the answer too."""
    if not hasattr(hold, "line_list"):
        hold.line_list = list(hold.lines.all())
    return sorted(hold.line_list, key=lambda line: line.item_id)


def _unreserve(hold: Hold, now: datetime.datetime, kind: str) -> None:
    """Stop counting the hold's lines in their items' `reserved` (those a writer has not
    collected already), each item's row locked in id order; kind is release or expire."""
    for line in _lines(hold):
        item = reservations.lock_item(line.item_id, now)
        if HoldLine.objects.filter(pk=line.pk, reserving=True).update(reserving=False):
            Item.objects.filter(pk=line.item_id).update(reserved=F("reserved") - line.qty)
            reservations.refresh_expiry(line.item_id)
            item.reserved -= line.qty  # the row is locked: nothing else moved it
            events.stock_changed(item, kind=kind, reserved_delta=-line.qty, hold_id=hold.id)


@retry_on_conflict
def hold_commit(*, hold_id: uuid.UUID, actor: str = "", request_id: str = "") -> Hold | None:
    """Take each line's qty from its item (qty and reserved both fall by it), one `commit`
    movement per line, in one transaction. A committed hold answers again and takes nothing
    more. Raises HoldNotActive for an expired or released hold."""
    with events.transition(actor=actor, request_id=request_id):
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
                params = [line.qty, line.qty, sql.param(Item, "id", line.item_id)]
                db = sql.database()
                row = sql.execute(db, sql.take_reserved(db.vendor), params).fetchone()
                item = reservations.item_from_row(line.item_id, row)
                qty_after = item.qty
                reservations.refresh_expiry(line.item_id)
                events.stock_changed(
                    item,
                    kind=Movement.COMMIT,
                    delta=-line.qty,
                    reserved_delta=-line.qty,
                    reference=hold.reference,
                    hold_id=hold.id,
                )
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
            events.record(*moved)
            hold.state = state
            hold.save(update_fields=["state"])
            events.emit("hold.committed", hold_id=hold.id, data=events.hold_data(hold, state))
            _count("committed")
    return hold


@retry_on_conflict
def hold_release(*, hold_id: uuid.UUID, actor: str = "", request_id: str = "") -> Hold | None:
    """Give the held stock back. Releasing a released or expired hold changes nothing (an
    expired hold stays expired). Raises HoldNotActive for a committed hold."""
    with events.transition(actor=actor, request_id=request_id):
        hold, state, now = _locked(hold_id)
        if hold is None:
            return None
        after, changes = invariants.hold_action(state, invariants.RELEASE)
        if changes:
            _unreserve(hold, now, "release")
            hold.state = after
            hold.save(update_fields=["state"])
            events.emit("hold.released", hold_id=hold.id, data=events.hold_data(hold, after))
            _count("released")
        elif state == invariants.EXPIRED and hold.state == Hold.ACTIVE:
            # Expired, and no writer has stored it yet: store it now, changing nothing a
            # client can see.
            _expire(hold, now)
    return hold


def _expire(hold: Hold, now: datetime.datetime) -> None:
    """Store the expiry of a hold that is expired but still stored active, with its events;
    the hold's row is locked."""
    _unreserve(hold, now, "expire")
    reservations.mark_expired({hold.id}, now)
    hold.state = Hold.EXPIRED


def holds_expire_due(*, limit: int = 100) -> int:
    """The sweep: store the expiry, and write the events, of up to `limit` holds (and of the
    items still counting their lines) that expired without any transaction having touched
    their items since; returns how many it expired or collected. Each in a transaction of its
    own, so that none waits long; a hold or item another transaction has locked is left to it."""
    now = clock.now()
    done = 0
    due = Hold.objects.filter(state=Hold.ACTIVE, expires_at__lte=now).order_by("expires_at")
    for hold_id in due.values_list("id", flat=True)[:limit]:
        with events.transition():
            hold = (
                Hold.objects.select_for_update(skip_locked=True).filter(pk=hold_id, state=Hold.ACTIVE).first()
            )
            if hold is not None and invariants.hold_state(hold.state, hold.expires_at, now) == Hold.EXPIRED:
                _expire(hold, now)
                done += 1
    # Lines of holds already stored expired that an item still counts (its holds_expire_at past).
    for item_id in Item.objects.filter(holds_expire_at__lte=now).values_list("id", flat=True)[:limit]:
        with events.transition():
            reservations.lock_item(item_id, now)
            done += 1
    return done


@retry_on_conflict
def hold_extend(
    *, hold_id: uuid.UUID, ttl_seconds: object, actor: str = "", request_id: str = ""
) -> Hold | None:
    """expires_at = now + ttl_seconds. Raises InvalidInput for a bad ttl, HoldNotActive
    unless the hold is active."""
    ttl = invariants.check_ttl(ttl_seconds)
    with events.transition(actor=actor, request_id=request_id):
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
        events.emit("hold.extended", hold_id=hold.id, data=events.hold_data(hold, Hold.ACTIVE))
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
