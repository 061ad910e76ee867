"""Webhooks: the change feed pushed to receivers, one event per POST, following the Standard
Webhooks specification (standardwebhooks.com, "Signature scheme"): headers webhook-id (the
event id, which receivers deduplicate on), webhook-timestamp (seconds since the epoch, fresh at
every attempt) and webhook-signature (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with the
webhook's secret).

Services and selectors: webhook_create, webhook_update, webhook_delete, webhook_get,
webhook_list, delivery_list. A service raises a typed error from inventory.errors, having
written nothing, or returns None for a webhook that does not exist.

Delivery (deliver_due, called by the worker every round):

- State. A webhook's position in the feed is `delivered_seq`, the seq of the last event it
  acknowledged or passed over; `attempts`, `failing_since` and `next_attempt_at` are the state
  of the event now due. All of it is in the database and moves only when an answer is
  recorded, so killing every process loses nothing: an attempt whose answer was not recorded
  is made again (at least once).
- Order. One attempt per webhook at a time, of the first event after delivered_seq whose type
  it names; the next only once that one is acknowledged. Events it does not name are passed
  over. Only what a reader can see is passed over, and that is a prefix of the feed
  (inventory.events): the end of the feed is read before the events after delivered_seq.
- Claiming. An attempt starts with a conditional UPDATE that sets next_attempt_at to
  now + CLAIM_SECONDS, on the condition that the webhook is enabled, still at the same
  delivered_seq and due. Of two workers (despite the lease) only one matches; the other sees an
  attempt not yet due. The answer is recorded only while that claim is still the webhook's
  (its row locked); an attempt whose worker died is made again once the claim runs out.
- Concurrency. The HTTP requests run in a pool of threads, one per webhook at most, and touch
  no database; recording and claiming run in the calling thread. A receiver that takes its
  full 10 s holds only its own thread: deliver_due records every other answer as it comes and
  starts that webhook's next event at once.
- Back-off. The n-th failure in a row of an event waits 2**n s (capped at an hour, plus up to
  10 % jitter) before the next attempt; after WEBHOOKS_DISABLE_AFTER_SECONDS of failing (24 h)
  the webhook is disabled, and PATCH {"enabled": true} resumes it at the same event.
- The log. Every attempt writes a Delivery row (its answer or why there is none), kept as long
  as events are (EVENTS_RETENTION_DAYS); deliver_due prunes it every 10 minutes.
"""

import base64
import concurrent.futures
import dataclasses
import datetime
import functools
import itertools
import json
import logging
import math
import operator
import os
import secrets
import threading
import time
import unicodedata
import uuid

import standardwebhooks
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Q

from inventory import clock, metrics, outbound
from inventory import events as feed
from inventory.errors import InvalidInput, TooManyWebhooks
from inventory.models import Delivery, Event, Webhook

log = logging.getLogger("inventory.webhooks")

WEBHOOKS_MAX = 100
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
SECRET_BYTES = 32  # the specification asks for 24 to 64 random bytes
DESCRIPTION_MAX_LENGTH = 500
WILDCARDS = ("*", "item.*", "hold.*")
PATTERNS = frozenset(feed.TYPES) | frozenset(WILDCARDS)
BACKOFF_CAP_SECONDS = 3600.0
BACKOFF_JITTER = 0.1  # a delay is lengthened by up to this fraction of itself
# How long a started attempt keeps its claim: longer than an attempt (10 s) and the wait for
# its answer to be recorded.
CLAIM_SECONDS = 60.0
# How long a call of deliver_due goes on recording answers as they come and starting the next
# events, by default: most of the worker's one-second round.
ROUND_SECONDS = 0.8
DELIVERIES_PRUNE_EVERY_SECONDS = 600.0
PRUNE_BATCH = 1000
DISABLED_ON_REQUEST = "disabled on request"
UNSET = object()  # a field webhook_update leaves as it is
_WEBHOOKS_LOCK = 7_236_962  # the advisory lock key that serialises creates (PostgreSQL)
_STATE = ["enabled", "disabled_reason", "delivered_seq", "attempts", "failing_since", "next_attempt_at"]


# Rules ------------------------------------------------------------------------------------------


def check_patterns(value: object) -> list[str]:
    """A webhook's `events`: 1 or more of the event types (inventory.events.TYPES), "item.*",
    "hold.*" or "*", each at most once. Raises InvalidInput."""
    if not isinstance(value, list) or not value:
        raise InvalidInput("events must list at least one event type", field="events")
    for index, pattern in enumerate(value):
        if not isinstance(pattern, str) or pattern not in PATTERNS:
            raise InvalidInput(f"events[{index}] must be an event type, item.*, hold.* or *", field="events")
    if len(set(value)) != len(value):
        raise InvalidInput("events must name each type at most once", field="events")
    return list(value)


def pattern_matches(patterns: list[str], type_: str) -> bool:
    """Whether an event of this type goes to a webhook with these patterns."""
    return any(
        pattern in ("*", type_) or (pattern.endswith(".*") and type_.startswith(pattern[:-1]))
        for pattern in patterns
    )


def _matching(patterns: list[str]) -> Q:
    """pattern_matches as a filter on Event."""
    if "*" in patterns:
        return Q()
    exact = [pattern for pattern in patterns if not pattern.endswith(".*")]
    conditions = [Q(type__startswith=pattern[:-1]) for pattern in patterns if pattern.endswith(".*")]
    if exact:
        conditions.append(Q(type__in=exact))
    return functools.reduce(operator.or_, conditions, Q(pk__in=[]))


def check_description(value: object) -> str:
    """Free text of at most 500 characters, without control characters. Raises InvalidInput."""
    if not isinstance(value, str):
        raise InvalidInput("description must be a string", field="description")
    if len(value) > DESCRIPTION_MAX_LENGTH:
        raise InvalidInput(
            f"description must be at most {DESCRIPTION_MAX_LENGTH} characters", field="description"
        )
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
        raise InvalidInput("description must not contain control characters", field="description")
    return value


def backoff_seconds(attempts: int, *, jitter: float) -> float:
    """Seconds from the attempts-th failure in a row of one event to the next attempt: 2, 4, 8
    ... capped at an hour (from the 12th), lengthened by jitter * 10 % (jitter in [0, 1)) so
    that receivers that failed together are not all tried again together."""
    base = min(2.0 ** min(attempts, 32), BACKOFF_CAP_SECONDS)
    return base * (1 + BACKOFF_JITTER * jitter)


def signed_headers(*, secret: str, msg_id: str, timestamp: datetime.datetime, body: bytes) -> dict[str, str]:
    """The headers of one attempt (Standard Webhooks, "Signature scheme"): webhook-id,
    webhook-timestamp (whole seconds since the epoch), webhook-signature, content-type."""
    at = timestamp.astimezone(datetime.UTC)
    signature = standardwebhooks.Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(math.floor(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def event_json(event: Event) -> bytes:
    """An event as the feed shows it (inventory.events.event_body), as a POST's body."""
    return json.dumps(feed.event_body(event), separators=(",", ":"), ensure_ascii=False).encode()


def _new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


# Services and selectors ---------------------------------------------------------------------------


def webhook_create(*, url: object, events: object, description: object = "") -> tuple[Webhook, str]:
    """Make a webhook that receives the events after the current end of the feed; return it
    and its secret (`whsec_` + base64 of 32 random bytes), which no answer shows again.

    Raises InvalidInput (events, description), WebhookUrlRefused (not https, malformed, or a
    host that does not resolve or resolves to an address that is not public: see
    inventory.outbound; both rules lifted by WEBHOOKS_ALLOW_PRIVATE) and TooManyWebhooks when
    WEBHOOKS_MAX exist already."""
    patterns = check_patterns(events)
    description = check_description(description)
    outbound.check_url(url, allow_private=settings.WEBHOOKS_ALLOW_PRIVATE)
    secret = _new_secret()
    with transaction.atomic():
        if connection.vendor == "postgresql":  # SQLite's writers take turns already
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_WEBHOOKS_LOCK])
        if Webhook.objects.count() >= WEBHOOKS_MAX:
            raise TooManyWebhooks()
        end = Event.objects.aggregate(end=Max("seq"))["end"]
        webhook = Webhook.objects.create(
            url=url,
            events=patterns,
            description=description,
            secret=secret,
            created_at=clock.now(),
            delivered_seq=end if end is not None else feed.pruned_through(),
        )
    return webhook, secret


def webhook_update(
    *,
    webhook_id: uuid.UUID,
    enabled: object = UNSET,
    events: object = UNSET,
    description: object = UNSET,
) -> Webhook | None:
    """Change what is given (a field left UNSET keeps its value). Enabling a disabled webhook
    resumes it where it stopped: its position in the feed is kept, its failing state cleared,
    and its next event is due at once. Disabling it keeps its state. Raises InvalidInput."""
    changes = {}
    if events is not UNSET:
        changes["events"] = check_patterns(events)
    if description is not UNSET:
        changes["description"] = check_description(description)
    if enabled is not UNSET and type(enabled) is not bool:
        raise InvalidInput("enabled must be true or false", field="enabled")
    with transaction.atomic():
        webhook = Webhook.objects.select_for_update().filter(pk=webhook_id).first()
        if webhook is None:
            return None
        for field, value in changes.items():
            setattr(webhook, field, value)
        fields = list(changes)
        if enabled is True and not webhook.enabled:
            webhook.enabled, webhook.disabled_reason = True, None
            webhook.attempts, webhook.failing_since, webhook.next_attempt_at = 0, None, None
            fields += ["enabled", "disabled_reason", "attempts", "failing_since", "next_attempt_at"]
        elif enabled is False and webhook.enabled:
            webhook.enabled, webhook.disabled_reason = False, DISABLED_ON_REQUEST
            fields += ["enabled", "disabled_reason"]
        if fields:
            webhook.save(update_fields=fields)
    return webhook


def webhook_delete(*, webhook_id: uuid.UUID) -> bool:
    """Delete the webhook and its deliveries' log; False when there was none (idempotent).
    An attempt in flight to it is not recorded."""
    with transaction.atomic():
        return Webhook.objects.filter(pk=webhook_id).delete()[0] > 0


def webhook_get(*, webhook_id: uuid.UUID) -> Webhook | None:
    return Webhook.objects.filter(pk=webhook_id).first()


def webhook_list() -> list[Webhook]:
    """Every webhook (at most WEBHOOKS_MAX), oldest first."""
    return list(Webhook.objects.order_by("created_at", "id"))


def delivery_list(
    *, webhook_id: uuid.UUID, limit: int, before_id: int | None = None
) -> tuple[list[Delivery], bool] | None:
    """Up to `limit` attempts to deliver to the webhook, newest first, older than the attempt
    `before_id` when given, and whether there are more; None when the webhook does not exist."""
    if not Webhook.objects.filter(pk=webhook_id).exists():
        return None
    page = Delivery.objects.filter(webhook_id=webhook_id)
    if before_id is not None:
        page = page.filter(id__lt=before_id)
    found = list(page.order_by("-id")[: limit + 1])
    return found[:limit], len(found) > limit


def deliveries_prune(*, older_than_days: float) -> int:
    """Delete the log of attempts made more than that many days ago; returns how many. The
    oldest rows first, PRUNE_BATCH per transaction, found by id (the log's order) rather than
    by scanning for their time."""
    cutoff = clock.now() - datetime.timedelta(days=older_than_days)
    removed = 0
    while True:
        with transaction.atomic():
            oldest = Delivery.objects.order_by("id").values_list("pk", "at")[:PRUNE_BATCH]
            batch = [pk for pk, _ in itertools.takewhile(lambda row: row[1] < cutoff, oldest)]
            if not batch:
                return removed
            removed += Delivery.objects.filter(pk__in=batch).delete()[0]


# Delivery ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Attempt:
    webhook_id: uuid.UUID
    event: Event
    claimed_seq: int  # the webhook's delivered_seq when the attempt was claimed
    claim: datetime.datetime  # the next_attempt_at the claim wrote: the attempt's mark
    started_at: datetime.datetime
    future: concurrent.futures.Future


class _Deliveries:
    """This process's attempts in flight, at most one per webhook, and the threads making them."""

    def __init__(self):
        self.lock = threading.Lock()  # one deliver_due at a time in a process
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.in_flight: dict[uuid.UUID, _Attempt] = {}
        self.gauged: set[str] = set()  # webhooks with a series of the undelivered-age gauge
        self.pruned_at = -math.inf  # time.monotonic() of the last pruning of the log

    def submit(self, *args) -> concurrent.futures.Future:
        if self.pool is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=WEBHOOKS_MAX, thread_name_prefix="webhook"
            )
        return self.pool.submit(_post, *args)


_deliveries = _Deliveries()


def deliver_due(now: datetime.datetime | None = None, *, wait_seconds: float | None = ROUND_SECONDS) -> int:
    """One round of delivery: record the answers that came since the last round, start an
    attempt for every enabled webhook that is due and has an event to send (passing over the
    events it does not name), and set each webhook's undelivered-age gauge. Then, for up to
    `wait_seconds` (None: until no attempt is in flight), record answers as they come and start
    those webhooks' next events. `now` stands for the service's clock throughout, if given.

    Returns the number of answers recorded. Never raises for what a receiver does; raises
    DatabaseError when the database fails (an answer not recorded then is recorded at a later
    round, or the attempt is made again once its claim runs out). A call made while another
    runs in this process returns 0 at once."""
    if not _deliveries.lock.acquire(blocking=False):
        return 0
    try:
        read_clock = clock.now if now is None else lambda: now
        recorded = len(_record_ended(read_clock))
        _start_due(read_clock)
        ends = math.inf if wait_seconds is None else time.monotonic() + wait_seconds
        while _deliveries.in_flight and (left := ends - time.monotonic()) > 0:
            waiting = [attempt.future for attempt in _deliveries.in_flight.values()]
            concurrent.futures.wait(
                waiting,
                timeout=None if left == math.inf else left,
                return_when=concurrent.futures.FIRST_COMPLETED,
            )
            ended = _record_ended(read_clock)
            if not ended:
                break
            recorded += len(ended)
            _start_due(read_clock, only=ended)
        if time.monotonic() - _deliveries.pruned_at >= DELIVERIES_PRUNE_EVERY_SECONDS:
            deliveries_prune(older_than_days=settings.EVENTS_RETENTION_DAYS)
            _deliveries.pruned_at = time.monotonic()
        return recorded
    finally:
        _deliveries.lock.release()


def _start_due(read_clock, *, only: list[uuid.UUID] | None = None) -> None:
    """Start the attempts that are due, of every webhook (and set each one's gauge), or only
    of these webhooks (whose attempts just ended: their next event may be due at once)."""
    now = read_clock()
    gauge = only is None
    # The end of the feed first: every event up to it is visible by now (a prefix), so passing
    # over to it skips nothing that commits later.
    end = Event.objects.aggregate(end=Max("seq"))["end"] or 0
    webhooks = Webhook.objects.all() if gauge else Webhook.objects.filter(pk__in=only)
    seen = set()
    for webhook in webhooks:
        seen.add(str(webhook.pk))
        attempt = _deliveries.in_flight.get(webhook.pk)
        event = attempt.event if attempt is not None else _next_event(webhook, end)
        if gauge:
            age = 0.0 if event is None else max((now - event.at).total_seconds(), 0.0)
            metrics.WEBHOOK_OLDEST_UNDELIVERED.labels(str(webhook.pk)).set(age)
            _deliveries.gauged.add(str(webhook.pk))
        if attempt is not None or not webhook.enabled:
            continue
        if event is None:
            if end > webhook.delivered_seq:
                _pass_over(webhook, end)
        elif webhook.next_attempt_at is None or webhook.next_attempt_at <= now:
            _start(webhook, event, now)
    if gauge:
        _forget_gauges(_deliveries.gauged - seen)


def _next_event(webhook: Webhook, end: int) -> Event | None:
    """The first event after the webhook's position, up to `end`, of a type it names."""
    after = Event.objects.filter(seq__gt=webhook.delivered_seq, seq__lte=end)
    return after.filter(_matching(webhook.events)).order_by("seq").first()


def _pass_over(webhook: Webhook, end: int) -> None:
    with transaction.atomic():
        Webhook.objects.filter(pk=webhook.pk, delivered_seq=webhook.delivered_seq).update(delivered_seq=end)


def _start(webhook: Webhook, event: Event, now: datetime.datetime) -> None:
    """Claim the webhook's due attempt (see the module's docstring) and, if this call got it,
    send the event from the pool."""
    claim = now + datetime.timedelta(seconds=CLAIM_SECONDS)
    with transaction.atomic():
        claimed = (
            Webhook.objects.filter(pk=webhook.pk, enabled=True, delivered_seq=webhook.delivered_seq)
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
            .update(next_attempt_at=claim)
        )
    if not claimed:
        return
    body = event_json(event)
    headers = signed_headers(secret=webhook.secret, msg_id=str(event.event_id), timestamp=now, body=body)
    future = _deliveries.submit(webhook.url, body, headers, settings.WEBHOOKS_ALLOW_PRIVATE)
    _deliveries.in_flight[webhook.pk] = _Attempt(webhook.pk, event, webhook.delivered_seq, claim, now, future)


def _post(url: str, body: bytes, headers: dict[str, str], allow_private: bool) -> outbound.Answer:
    """One attempt, in a pool thread: no database here."""
    try:
        return outbound.post(url, body=body, headers=headers, allow_private=allow_private)
    except Exception:
        log.exception("webhook attempt to %s failed unexpectedly", url)
        return outbound.Answer(None, "internal error", 0.0)


def _record_ended(read_clock) -> list[uuid.UUID]:
    """Record the attempts that have ended; return their webhooks."""
    ended = [attempt for attempt in _deliveries.in_flight.values() if attempt.future.done()]
    for attempt in ended:
        _record(attempt, read_clock())
        del _deliveries.in_flight[attempt.webhook_id]
    return [attempt.webhook_id for attempt in ended]


def _record(attempt: _Attempt, now: datetime.datetime) -> None:
    """Log the attempt, and move the webhook on (acknowledged) or back it off (failed), if the
    attempt's claim is still the webhook's."""
    answer: outbound.Answer = attempt.future.result()
    delivered = answer.status is not None and 200 <= answer.status < 300 and answer.error is None
    metrics.WEBHOOK_DELIVERIES.labels("delivered" if delivered else "failed").inc()
    with transaction.atomic():
        webhook = Webhook.objects.select_for_update().filter(pk=attempt.webhook_id).first()
        if webhook is None:
            return  # deleted meanwhile, with its log
        Delivery.objects.create(
            webhook=webhook,
            event_id=attempt.event.event_id,
            status=answer.status,
            error=answer.error,
            duration_ms=round(answer.seconds * 1000, 3),
            at=attempt.started_at,
        )
        if webhook.delivered_seq != attempt.claimed_seq or webhook.next_attempt_at != attempt.claim:
            return  # no longer this attempt's: re-enabled, passed over, or taken over after its claim ran out
        if delivered:
            webhook.delivered_seq = attempt.event.seq
            webhook.attempts, webhook.failing_since, webhook.next_attempt_at = 0, None, None
        else:
            webhook.attempts += 1
            webhook.failing_since = webhook.failing_since or attempt.started_at
            if (now - webhook.failing_since).total_seconds() >= settings.WEBHOOKS_DISABLE_AFTER_SECONDS:
                last = f"HTTP {answer.status}" if answer.status is not None else answer.error
                since = webhook.failing_since.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
                webhook.enabled, webhook.next_attempt_at = False, None
                webhook.disabled_reason = f"failing since {since}; last attempt: {last}"[:200]
            else:
                delay = backoff_seconds(webhook.attempts, jitter=secrets.randbelow(1000) / 1000)
                webhook.next_attempt_at = now + datetime.timedelta(seconds=delay)
        webhook.save(update_fields=_STATE)


def _forget_gauges(labels: set[str]) -> None:
    """Drop the gauge's series of webhooks that are gone. In multiprocess mode a series cannot
    be removed (inventory.metrics): it is set to 0."""
    multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
    for label in labels:
        if multiprocess:
            metrics.WEBHOOK_OLDEST_UNDELIVERED.labels(label).set(0)
        else:
            metrics.WEBHOOK_OLDEST_UNDELIVERED.remove(label)
        _deliveries.gauged.discard(label)
