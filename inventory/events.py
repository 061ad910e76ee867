"""The change feed: every committed change is published as events in its own transaction
(a transactional outbox), so a change and its events exist together or not at all.

A service runs its transaction inside `transition(actor=..., request_id=...)`; the events it
(or anything it calls) emits and the movements it records are written at the end of that
transaction, in the order given: its tail. On PostgreSQL the tail is one statement, sent with
the COMMIT in one message (sql.execute), so the row locks the transaction took are held for
one round trip after its last read, not one per statement.

Commit order. `GET /events` reads events by `seq`, so a reader must never see an event
before every event with a smaller seq is visible. On PostgreSQL a sequence hands out values
in the order transactions ask, not the order they commit, so before writing its events a
transaction takes a transaction-scoped advisory lock (pg_advisory_xact_lock), held until it
commits or rolls back. Its seq values are therefore drawn only after every transaction that
wrote events before it has committed: seq order is commit order, and what a reader sees is
always a prefix of the feed. The lock serialises only the tail of write transactions, from
their events to their commit. On SQLite, writers already take turns on one lock from BEGIN to
COMMIT, so seq order is commit order without more.
"""

import collections
import contextlib
import contextvars
import datetime
import functools
import uuid

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Max

from inventory import clock, invariants, metrics, sql
from inventory.errors import CursorExpired
from inventory.models import Event, FeedState, Hold, Item, Movement

FEED_LOCK = 7_236_961  # the advisory lock key that orders the feed's writers (PostgreSQL)
PRUNE_BATCH = 1000  # events per pruning transaction
TYPES = (
    "item.created",
    "item.updated",
    "item.deleted",
    "item.qty_changed",
    "item.low_stock",
    "item.out_of_stock",
    "item.back_in_stock",
    "hold.created",
    "hold.committed",
    "hold.released",
    "hold.extended",
    "hold.expired",
)


class _Tail:
    """What a transition writes at its end."""

    def __init__(self, actor: str | None, request_id: str | None):
        self.context = {"actor": actor or None, "request_id": request_id or None}
        self.events: list[dict] = []
        self.movements: list[dict] = []


_tail: contextvars.ContextVar[_Tail | None] = contextvars.ContextVar("transition_tail", default=None)


@contextlib.contextmanager
def transition(*, actor: str | None = None, request_id: str | None = None):
    """A write transaction whose movements and events are written at its end, before it
    commits. Nested in another transition, it adds to that one's (one transaction, one
    tail); if it is rolled back, what it added goes with it."""
    outer = _tail.get()
    if outer is not None:
        events, movements = len(outer.events), len(outer.movements)
        try:
            with transaction.atomic():
                yield
        except BaseException:
            del outer.events[events:], outer.movements[movements:]
            raise
        return
    tail = _Tail(actor, request_id)
    token = _tail.set(tail)
    try:
        with transaction.atomic():
            yield
            # Its COMMIT goes with the tail's last statement when this block began the
            # transaction (sql.execute), not when an outer block did.
            _write_tail(sql.database(), tail, commit=True)
    finally:
        _tail.reset(token)


def emit(type_: str, *, data: dict, item_id=None, hold_id=None) -> None:
    """Add an event to the current transition's."""
    tail = _tail.get()
    if tail is None:
        raise RuntimeError("an event was emitted outside a transition")
    tail.events.append({"type": type_, "data": data, "item_id": item_id, "hold_id": hold_id, **tail.context})


def record(*movements: dict) -> None:
    """Add movements (items.movement()) to the current transition's, to be written with its
    events."""
    tail = _tail.get()
    if tail is None:
        raise RuntimeError("a movement was recorded outside a transition")
    tail.movements.extend(movements)


def _write_tail(db, tail: _Tail, *, commit: bool) -> None:
    at = sql.param(Event, "at", clock.now(), db)  # one instant for the movements and the events
    _insert(db, tail.events, at, movements=tail.movements, commit=commit)
    transaction.on_commit(
        functools.partial(
            _count,
            collections.Counter(movement["kind"] for movement in tail.movements),
            collections.Counter(event["type"] for event in tail.events),
        )
    )


def _count(movements: collections.Counter, events: collections.Counter) -> None:
    for kind, count in movements.items():
        metrics.QTY_TRANSITIONS.labels(kind).inc(count)
    for type_, count in events.items():
        metrics.EVENTS.labels(type_).inc(count)


def write(entries: list[dict]) -> None:
    """Insert events, stamped now, inside the caller's transaction (see the module's docstring
    for the lock that orders them)."""
    db = sql.database()
    _insert(db, entries, sql.param(Event, "at", clock.now(), db))


def _insert(db, entries: list[dict], at, movements: list[dict] = (), commit: bool = False) -> None:
    """The movements, then the events; on PostgreSQL in one statement that takes the feed's
    lock before the events' seq values are drawn. commit: the last statement may carry the
    transaction's COMMIT (sql.execute)."""
    rows = [{**entry, "event_id": uuid.uuid4()} for entry in entries]
    if db.vendor == "postgresql" and rows:
        first = ((Movement, movements),) if movements else ()
        sql.insert_locked(db, FEED_LOCK, Event, rows, first=first, commit=commit, at=at)
        return
    if movements:
        sql.insert(db, Movement, movements, commit=commit and not rows, at=at)
    if rows:
        sql.insert(db, Event, rows, commit=commit, at=at)


# What events say -----------------------------------------------------------------------------


def item_data(item: Item) -> dict:
    """An item as clients see it (its `reserved` as given)."""
    return {
        "id": str(item.id),
        "name": item.name,
        "qty": item.qty,
        "reserved": item.reserved,
        "available": item.qty - item.reserved,
        "low_stock_threshold": item.low_stock_threshold,
    }


def hold_data(hold: Hold, state: str, lines=None) -> dict:
    """A hold as clients see it, in the given state."""
    lines = lines if lines is not None else getattr(hold, "line_list", None) or hold.lines.all()
    return {
        "id": str(hold.id),
        "state": state,
        "lines": [
            {"id": str(line.item_id), "qty": line.qty}
            for line in sorted(lines, key=lambda line: line.position)
        ],
        "reference": hold.reference,
        "expires_at": _rfc3339(hold.expires_at),
        "created_at": _rfc3339(hold.created_at),
        "actor": hold.actor,
    }


def stock_changed(
    item: Item,
    *,
    kind: str,
    delta: int = 0,
    reserved_delta: int = 0,
    threshold_before: int | None = ...,
    reason: str | None = None,
    reference: str | None = None,
    hold_id=None,
) -> None:
    """item.qty_changed for a change of qty by delta and of reserved by reserved_delta that
    left `item` as it is now, and the stock alerts the change of `available` crossed."""
    available = item.qty - item.reserved
    before = available - delta + reserved_delta
    threshold = item.low_stock_threshold
    if delta or reserved_delta:
        emit(
            "item.qty_changed",
            item_id=item.id,
            hold_id=hold_id,
            data={
                "kind": kind,
                "delta": delta,
                "qty": item.qty,
                "reserved": item.reserved,
                "available": available,
                "reason": reason,
                "reference": reference,
            },
        )
    old_threshold = threshold if threshold_before is ... else threshold_before
    for alert in invariants.stock_alerts(before, old_threshold, available, threshold):
        data = {"available": available}
        if alert == "item.low_stock":
            data["low_stock_threshold"] = threshold
        emit(alert, item_id=item.id, data=data)


# The feed --------------------------------------------------------------------------------------


def _rfc3339(value: datetime.datetime) -> str:
    """RFC 3339 in UTC, written exactly as every response of the API writes a time (Django's
    JSON encoder: to the millisecond, no fraction when there is none), so that an event reads
    the same in the feed and in a webhook's body."""
    return DjangoJSONEncoder().default(value.astimezone(datetime.UTC))


def event_body(event: Event) -> dict:
    """An event as the feed and webhooks show it."""
    return {
        "id": str(event.event_id),
        "type": event.type,
        "at": _rfc3339(event.at),
        "actor": event.actor,
        "request_id": event.request_id,
        "item_id": None if event.item_id is None else str(event.item_id),
        "hold_id": None if event.hold_id is None else str(event.hold_id),
        "data": event.data,
    }


def pruned_through() -> int:
    return FeedState.objects.filter(pk=1).values_list("pruned_through", flat=True).first() or 0


def event_list(*, after: int | None, limit: int) -> tuple[list[Event], int]:
    """Up to `limit` events after the cursor position `after` (a seq), in commit order, and
    the position to read on from. Without `after`, from the oldest kept. Raises
    CursorExpired when events after `after` were pruned."""
    pruned = pruned_through()
    if after is not None and after < pruned:
        raise CursorExpired()
    start = pruned if after is None else after
    page = list(Event.objects.filter(seq__gt=start).order_by("seq")[:limit])
    return page, (page[-1].seq if page else start)


def events_prune(*, older_than_days: float) -> int:
    """Delete the events written more than that many days ago (and every event before them
    in the feed, so that what is kept is a suffix); returns how many. PRUNE_BATCH events per
    transaction, so writers never wait long behind it."""
    cutoff = clock.now() - datetime.timedelta(days=older_than_days)
    last = Event.objects.filter(at__lt=cutoff).aggregate(last=Max("seq"))["last"]
    removed = 0
    while last is not None:
        with transaction.atomic():
            batch = list(
                Event.objects.filter(seq__lte=last)
                .order_by("seq")
                .values_list("seq", flat=True)[:PRUNE_BATCH]
            )
            if not batch:
                return removed
            removed += Event.objects.filter(seq__in=batch).delete()[0]
            state, _ = FeedState.objects.select_for_update().get_or_create(pk=1)
            state.pruned_through = max(state.pruned_through, batch[-1])
            state.save(update_fields=["pruned_through"])
    return removed
