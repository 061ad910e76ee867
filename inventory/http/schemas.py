"""Request and response models. Bounds are documented here and enforced by
inventory.invariants, the one place for them."""

import datetime
import re
import uuid
from typing import Annotated

from ninja import Schema
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr, WithJsonSchema

from inventory import webhooks
from inventory.invariants import (
    BATCH_MAX_CHANGES,
    HOLD_MAX_LINES,
    HOLD_STATES,
    HOLD_TTL_DEFAULT_SECONDS,
    HOLD_TTL_MAX_SECONDS,
    ID_PATTERN,
    NAME_MAX_LENGTH,
    QTY_MAX,
    QUERY_INTEGER_PATTERN,
    REASON_MAX_LENGTH,
    REFERENCE_MAX_LENGTH,
)

DELTA = {"minimum": -QTY_MAX, "maximum": QTY_MAX}
QTY = {"minimum": 0, "maximum": QTY_MAX}
EXPECTED_QTY_RULE = "apply only if qty is this now (compare-and-set); otherwise 409 with the current qty"
REASON = {"maxLength": REASON_MAX_LENGTH}
NAME_RULE = "normalised to NFC and stripped; then 1..200 characters, no control characters, unique"
NAME = {"minLength": 1, "maxLength": NAME_MAX_LENGTH}
REFERENCE = {"maxLength": REFERENCE_MAX_LENGTH}
REFERENCE_RULE = "the outside document: an order number, a URI"
THRESHOLD_RULE = "item.low_stock alerts when available falls below it; null for none"
TTL = {"minimum": 1, "maximum": HOLD_TTL_MAX_SECONDS}

_ID = re.compile(ID_PATTERN)
_QUERY_INTEGER = re.compile(QUERY_INTEGER_PATTERN)


def _id_spelling(value: object) -> object:
    # pydantic alone would also take 32 bare hex digits, braces or a urn:uuid: prefix,
    # which no path accepts.
    if isinstance(value, str) and not _ID.fullmatch(value):
        raise ValueError("must be a UUID written 8-4-4-4-12")
    return value


def _query_integer(value: object) -> object:
    if isinstance(value, str) and not _QUERY_INTEGER.fullmatch(value):
        raise ValueError("must be an integer in plain decimal digits")
    return value


Id = Annotated[
    uuid.UUID,
    BeforeValidator(_id_spelling),
    WithJsonSchema({"type": "string", "format": "uuid", "pattern": f"^{ID_PATTERN}$"}),
]
QueryInt = Annotated[int, BeforeValidator(_query_integer)]


# Responses are plain pydantic models: ninja's Schema runs a Python root validator on every
# object it checks, which cost more than the query on a page of 100 items.
class ItemOut(BaseModel):
    id: uuid.UUID
    name: str
    qty: int = Field(description="on hand")
    reserved: int = Field(description="set aside by active holds")
    available: int = Field(description="qty - reserved: what a new hold or a sale may take")
    low_stock_threshold: int | None


class Strict(Schema):
    model_config = ConfigDict(extra="forbid")


class ItemIn(Strict):
    name: StrictStr = Field(description=NAME_RULE, json_schema_extra=NAME)
    qty: StrictInt = Field(json_schema_extra=QTY)
    low_stock_threshold: StrictInt | None = Field(None, description=THRESHOLD_RULE, json_schema_extra=QTY)


class ItemUpdateIn(Strict):
    """At least one field; a field left out keeps its value."""

    name: StrictStr = Field(None, description=NAME_RULE, json_schema_extra=NAME)
    low_stock_threshold: StrictInt | None = Field(None, description=THRESHOLD_RULE, json_schema_extra=QTY)


class DeltaIn(Strict):
    delta: StrictInt = Field(
        description="the signed change: -1 decrements, +5 increments", json_schema_extra=DELTA
    )
    expected_qty: StrictInt | None = Field(None, description=EXPECTED_QTY_RULE, json_schema_extra=QTY)
    reason: StrictStr | None = Field(None, description="recorded in the movement", json_schema_extra=REASON)
    reference: StrictStr | None = Field(None, description=REFERENCE_RULE, json_schema_extra=REFERENCE)


class ChangeIn(Strict):
    id: Id
    delta: StrictInt = Field(json_schema_extra=DELTA)
    expected_qty: StrictInt | None = Field(None, description=EXPECTED_QTY_RULE, json_schema_extra=QTY)


class AdjustmentIn(Strict):
    changes: list[ChangeIn] = Field(
        description="applied all together or not at all; each id at most once",
        json_schema_extra={"minItems": 1, "maxItems": BATCH_MAX_CHANGES},
    )
    reason: StrictStr | None = Field(None, description="recorded in every movement", json_schema_extra=REASON)
    reference: StrictStr | None = Field(None, description=REFERENCE_RULE, json_schema_extra=REFERENCE)


class ItemList(BaseModel):
    items: list[ItemOut]


class MovementOut(BaseModel):
    kind: str
    delta: int
    qty_after: int
    reason: str | None
    reference: str | None
    hold_id: uuid.UUID | None
    actor: str = Field(description="the name of the token that made the change")
    request_id: str
    at: datetime.datetime


class MovementPage(BaseModel):
    movements: list[MovementOut]
    next: str | None = Field(description="cursor of the next page, or null on the last")


class ItemPage(BaseModel):
    items: list[ItemOut]
    next: str | None = Field(description="cursor of the next page, or null on the last")


class HoldLineIn(Strict):
    id: Id
    qty: StrictInt = Field(json_schema_extra={"minimum": 1, "maximum": QTY_MAX})


class HoldIn(Strict):
    lines: list[HoldLineIn] = Field(
        description="held all together or not at all; each item at most once",
        json_schema_extra={"minItems": 1, "maxItems": HOLD_MAX_LINES},
    )
    ttl_seconds: StrictInt = Field(
        HOLD_TTL_DEFAULT_SECONDS, description="seconds until the hold expires", json_schema_extra=TTL
    )
    reference: StrictStr | None = Field(None, description=REFERENCE_RULE, json_schema_extra=REFERENCE)


class ExtendIn(Strict):
    ttl_seconds: StrictInt = Field(
        description="the hold expires this many seconds from now", json_schema_extra=TTL
    )


class HoldLineOut(BaseModel):
    id: uuid.UUID
    qty: int


class HoldOut(BaseModel):
    id: uuid.UUID
    state: str = Field(description=" | ".join(HOLD_STATES))
    lines: list[HoldLineOut]
    reference: str | None
    expires_at: datetime.datetime
    created_at: datetime.datetime
    actor: str


class HoldPage(BaseModel):
    holds: list[HoldOut]
    next: str | None = Field(description="cursor of the next page, or null on the last")


class PageQuery(Schema):
    limit: QueryInt = Field(100, ge=1, le=1000)
    cursor: str | None = Field(
        None, description="the `next` of the previous page", pattern=r"^[A-Za-z0-9_-]+$"
    )


class Error(BaseModel):
    error: str
    field: str | None = None
    qty: int | None = Field(None, description="with 409: the current qty")
    reserved: int | None = Field(None, description="with qty cannot go below reserved")
    available: int | None = Field(None, description="with not enough available stock")
    id: uuid.UUID | None = Field(None, description="in a batch or hold: the item whose line was refused")


class Health(BaseModel):
    status: str


def read_responses(success: dict) -> dict:
    """What a GET may answer besides success: 404 also for an id that is not a UUID."""
    return {**success, 401: Error, 404: Error, 503: Error}


def write_responses(success: dict) -> dict:
    return {**read_responses(success), 400: Error, 403: Error, 413: Error, 415: Error}


def idempotent_write_responses(success: dict) -> dict:
    """A write taking an Idempotency-Key: 409 while its first use runs, 422 on reuse."""
    return {**write_responses(success), 409: Error, 422: Error}


class EventOut(BaseModel):
    id: str = Field(description="unique, never reused: receivers deduplicate on it")
    type: str
    # Passed through as events.event_body wrote it, so that the feed and a webhook's body
    # carry the same text, not a time parsed and written again.
    at: str = Field(json_schema_extra={"format": "date-time"})
    actor: str | None
    request_id: str | None
    item_id: uuid.UUID | None
    hold_id: uuid.UUID | None
    data: dict


class EventPage(BaseModel):
    events: list[EventOut]
    next: str = Field(description="never null: poll again with it as `after`")


class FeedQuery(Schema):
    after: str | None = Field(
        None,
        description="the `next` of the previous page; absent: from the oldest event kept",
        pattern=r"^[A-Za-z0-9_-]+$",
    )
    limit: QueryInt = Field(100, ge=1, le=1000)


WEBHOOK_URL_RULE = (
    "https, to a host that resolves only to public addresses (checked again at every delivery); "
    "WEBHOOKS_ALLOW_PRIVATE lifts both rules"
)
WEBHOOK_EVENTS_RULE = "event types, item.*, hold.* or *, each at most once"
WEBHOOK_EVENTS = {
    "items": {"type": "string", "enum": sorted(webhooks.PATTERNS)},
    "minItems": 1,
    "maxItems": len(webhooks.PATTERNS),
    "uniqueItems": True,
}
WEBHOOK_DESCRIPTION = {"maxLength": webhooks.DESCRIPTION_MAX_LENGTH}


class WebhookIn(Strict):
    url: StrictStr = Field(description=WEBHOOK_URL_RULE, json_schema_extra={"maxLength": 2000})
    events: list[StrictStr] = Field(description=WEBHOOK_EVENTS_RULE, json_schema_extra=WEBHOOK_EVENTS)
    description: StrictStr = Field("", json_schema_extra=WEBHOOK_DESCRIPTION)


class WebhookUpdateIn(Strict):
    """At least one field; a field left out keeps its value."""

    enabled: bool = Field(None, strict=True, description="true resumes a disabled webhook where it stopped")
    events: list[StrictStr] = Field(None, description=WEBHOOK_EVENTS_RULE, json_schema_extra=WEBHOOK_EVENTS)
    description: StrictStr = Field(None, json_schema_extra=WEBHOOK_DESCRIPTION)


class WebhookOut(BaseModel):
    id: uuid.UUID
    url: str
    events: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None = Field(description="why it is disabled: null while enabled")
    created_at: datetime.datetime
    failing_since: datetime.datetime | None = Field(
        description="the first failed attempt of the event now due; null while delivering"
    )
    next_attempt_at: datetime.datetime | None = Field(
        description="when the event now due is tried next (null: as soon as there is one)"
    )


class WebhookCreated(WebhookOut):
    secret: str = Field(description="signs every delivery (Standard Webhooks); shown this once")


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]


class DeliveryOut(BaseModel):
    event_id: uuid.UUID
    status: int | None = Field(description="the receiver's HTTP status; null when it gave none")
    error: str | None = Field(description="why the attempt failed, or the start of the receiver's answer")
    duration_ms: float
    at: datetime.datetime = Field(description="when the attempt started")


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryOut]
    next: str | None = Field(description="cursor of the next (older) page, or null on the last")
