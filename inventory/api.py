"""Routes and thin views: parse, call one service or selector, map the result to HTTP.

Every error a service raises is mapped to HTTP here, in error_response().
"""

import base64
import binascii
import datetime
import functools
import hashlib
import json
import logging
import re
import uuid

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from inventory import metrics, selectors, services
from inventory.auth import BearerToken
from inventory.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidCursor,
    InvalidInput,
    InventoryError,
    ItemNotFound,
    StaleQty,
)
from inventory.invariants import (
    BATCH_MAX_CHANGES,
    NAME_MAX_LENGTH,
    QTY_MAX,
    REASON_MAX_LENGTH,
    normalize_name,
)
from inventory.models import Item

logger = logging.getLogger(__name__)


class UnsupportedMediaType(ValueError):
    pass


class StrictJSONParser(Parser):
    """json.loads of an application/json body, minus what JSON does not allow or means two things.

    Requiring the JSON media type also stops a browser's cross-site form or text/plain
    "simple request" from ever reaching a write.
    """

    def parse_body(self, request: HttpRequest) -> dict:
        if request.content_type != "application/json":
            raise UnsupportedMediaType(request.content_type)
        return json.loads(request.body, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return obj


api = NinjaAPI(
    title="Inventory service",
    version="1.0.0",
    description="Items {id, name, qty} whose quantities change by signed deltas, never below 0.",
    parser=StrictJSONParser(),
    auth=BearerToken(),
    urls_namespace="inventory",
)


DELTA = {"minimum": -QTY_MAX, "maximum": QTY_MAX}
QTY = {"minimum": 0, "maximum": QTY_MAX}
EXPECTED_QTY_RULE = "apply only if qty is this now (compare-and-set); otherwise 409 with the current qty"
REASON = {"maxLength": REASON_MAX_LENGTH}
NAME_RULE = "normalised to NFC and stripped; then 1..200 characters, no control characters, unique"


# Responses are plain pydantic models: ninja's Schema runs a Python root validator on every
# object it checks, which cost more than the query on a page of 100 items.
class ItemOut(BaseModel):
    id: uuid.UUID
    name: str
    qty: int


class Strict(Schema):
    model_config = ConfigDict(extra="forbid")


class ItemIn(Strict):
    # Bounds are documented here and enforced by inventory.invariants, the one place for them.
    name: StrictStr = Field(
        description=NAME_RULE, json_schema_extra={"minLength": 1, "maxLength": NAME_MAX_LENGTH}
    )
    qty: StrictInt = Field(json_schema_extra=QTY)


class RenameIn(Strict):
    name: StrictStr = Field(
        description=NAME_RULE, json_schema_extra={"minLength": 1, "maxLength": NAME_MAX_LENGTH}
    )


class DeltaIn(Strict):
    delta: StrictInt = Field(
        description="the signed change: -1 decrements, +5 increments", json_schema_extra=DELTA
    )
    expected_qty: StrictInt | None = Field(None, description=EXPECTED_QTY_RULE, json_schema_extra=QTY)
    reason: StrictStr | None = Field(None, description="recorded in the movement", json_schema_extra=REASON)


class ChangeIn(Strict):
    id: uuid.UUID
    delta: StrictInt = Field(json_schema_extra=DELTA)
    expected_qty: StrictInt | None = Field(None, description=EXPECTED_QTY_RULE, json_schema_extra=QTY)


class AdjustmentIn(Strict):
    changes: list[ChangeIn] = Field(
        description="applied all together or not at all; each id at most once",
        json_schema_extra={"minItems": 1, "maxItems": BATCH_MAX_CHANGES},
    )
    reason: StrictStr | None = Field(None, description="recorded in every movement", json_schema_extra=REASON)


class ItemList(BaseModel):
    items: list[ItemOut]


class MovementOut(BaseModel):
    kind: str
    delta: int
    qty_after: int
    reason: str | None
    request_id: str
    at: datetime.datetime


class MovementPage(BaseModel):
    movements: list[MovementOut]
    next: str | None = Field(description="cursor of the next page, or null on the last")


class ItemPage(BaseModel):
    items: list[ItemOut]
    next: str | None = Field(description="cursor of the next page, or null on the last")


class PageQuery(Schema):
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = Field(
        None, description="the `next` of the previous page", pattern=r"^[A-Za-z0-9_-]+$"
    )


class Error(BaseModel):
    error: str
    field: str | None = None
    qty: int | None = Field(None, description="with 409: the current qty")
    id: uuid.UUID | None = Field(None, description="in a batch: the item whose change was refused")


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


PROMETHEUS_TEXT = {
    "responses": {
        200: {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
        401: {"description": "Unauthorized", "content": {"application/json": {"schema": {"type": "object"}}}},
    }
}


def error_response(status: int, message: str, **extra) -> JsonResponse:
    return JsonResponse(
        {"error": message, **{k: v for k, v in extra.items() if v is not None}}, status=status
    )


def _snake_case(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


# Every typed error a service raises, and its status; any other InventoryError is a 400.
ERROR_STATUS = {ItemNotFound: 404, StaleQty: 409, IdempotencyKeyInUse: 409, IdempotencyKeyReused: 422}


@api.exception_handler(InventoryError)
def inventory_error_response(request, exc: InventoryError) -> JsonResponse:
    metrics.REJECTED_TRANSITIONS.labels(_snake_case(type(exc).__name__)).inc()
    status = next((code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls)), 400)
    item_id = None if exc.item_id is None else str(exc.item_id)
    if status == 404:
        return error_response(404, "not_found", id=item_id)
    qty = exc.qty if isinstance(exc, StaleQty) else None
    return error_response(status, exc.message, field=exc.field, id=item_id, qty=qty)


@api.exception_handler(ValidationError)
def _validation_error(request, exc: ValidationError):
    first = exc.errors[0]
    # loc is (source, field, ...): ("body", "payload", "qty") or ("query", "limit")
    location = [str(part) for part in first["loc"][1:] if part != "payload"]
    field = ".".join(location) or None
    message = first["msg"] if field is None else f"{field}: {first['msg']}"
    if tuple(first["loc"]) == ("body", "payload"):
        message = "the body must be a JSON object"
    elif first["type"] == "extra_forbidden":
        message = f"unknown field: {field}"
    elif first["type"] == "missing":
        message = f"{field} is required"
    return error_response(400, message, field=field)


@api.exception_handler(Http404)
def not_found_response(request, exc: Http404) -> JsonResponse:
    return error_response(404, "not_found")


@api.exception_handler(RequestDataTooBig)
def _too_large(request, exc: RequestDataTooBig):
    return error_response(413, "the body is larger than 1 MiB")


@api.exception_handler(AuthenticationError)
def _unauthenticated(request, exc: AuthenticationError):
    response = error_response(401, "a valid bearer token is required")
    response["WWW-Authenticate"] = 'Bearer realm="inventory"'
    return response


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    if isinstance(exc.__cause__, UnsupportedMediaType):  # raised by the parser, wrapped by ninja
        return error_response(415, "the body must be application/json")
    message = "the body is not valid JSON" if exc.status_code == 400 else str(exc)
    return error_response(exc.status_code, message)


@api.exception_handler(OperationalError)
def _database_unavailable(request, exc: OperationalError):
    # The database is down, or still busy after the busy timeout: nothing was committed,
    # and the same request may succeed in a moment.
    logger.warning("database unavailable: %s", exc)
    metrics.DATABASE_ERRORS.labels("unavailable").inc()
    response = error_response(503, "database_unavailable", request_id=getattr(request, "request_id", None))
    response["Retry-After"] = "1"
    return response


@api.exception_handler(Exception)
def _unexpected(request, exc: Exception):
    logger.exception("unexpected error (request %s)", getattr(request, "request_id", None))
    if isinstance(exc, DatabaseError):
        metrics.DATABASE_ERRORS.labels("unexpected").inc()
    return error_response(500, "internal_error", request_id=getattr(request, "request_id", None))


def _encode_cursor(after: str | int) -> str:
    raw = json.dumps({"after": after}).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _cursor_after(cursor: str) -> object:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return json.loads(raw)["after"]
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise InvalidCursor(field="cursor") from exc


def _decode_name_cursor(cursor: str) -> str:
    after = _cursor_after(cursor)
    # Cursors carry a stored name; anything else (a NUL, a lone surrogate) is forged and
    # must not reach the database, which would refuse to compare it.
    try:
        valid = normalize_name(after) == after
    except InvalidInput:
        valid = False
    if not valid:
        raise InvalidCursor(field="cursor")
    return after


def _item(item: Item) -> dict:
    return {"id": item.id, "name": item.name, "qty": item.qty}


def _found(item: Item | None) -> dict:
    """A service's None means the item does not exist."""
    if item is None:
        raise Http404
    return _item(item)


def _decode_id_cursor(cursor: str) -> int:
    after = _cursor_after(cursor)
    if type(after) is not int or not 0 <= after <= QTY_MAX:
        raise InvalidCursor(field="cursor")
    return after


# 1..255 visible ASCII characters (the contract's "Idempotency").
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")
IDEMPOTENCY_HEADER = {
    "parameters": [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "A repeat with the same key and request gets the first answer back, "
            "with Idempotent-Replayed: true, and changes nothing; the key with another request is a 422, "
            "and a repeat while the first is still running a 409. 1..255 visible ASCII characters.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
        }
    ]
}


def idempotent(view):
    """Idempotency-Key support for a write view: the view runs at most once per key and
    token, and its answer is stored in the same transaction as its effect."""

    @functools.wraps(view)
    def wrapper(request, *args, **kwargs):
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return view(request, *args, **kwargs)
        if not IDEMPOTENCY_KEY.fullmatch(key):
            raise InvalidInput(
                "Idempotency-Key must be 1 to 255 visible ASCII characters", field="Idempotency-Key"
            )

        def run() -> tuple[int, str]:
            try:
                result = view(request, *args, **kwargs)
                status, value = (
                    (result.status_code, result.value) if isinstance(result, Status) else (200, result)
                )
                return status, api.renderer.render(request, value, response_status=status)
            except InventoryError as exc:  # a refusal is an answer too, and is replayed as one
                response = inventory_error_response(request, exc)
            except Http404 as exc:
                response = not_found_response(request, exc)
            return response.status_code, response.content.decode()

        status, body, replayed = services.idempotent(
            token=request.auth, key=key, fingerprint=_fingerprint(request), run=run
        )
        response = HttpResponse(body, status=status, content_type=api.get_content_type())
        if status == 201:
            response["Location"] = f"/items/{json.loads(body)['id']}"
        if replayed:
            response["Idempotent-Replayed"] = "true"
        return response

    return wrapper


def _fingerprint(request) -> str:
    """Method, path and body, the body as canonical JSON: the same request, however spaced."""
    body = json.dumps(json.loads(request.body or b"null"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


@api.post(
    "/items",
    response=idempotent_write_responses({201: ItemOut}),
    openapi_extra=IDEMPOTENCY_HEADER,
    summary="Create an item",
)
@idempotent
def create_item(request, payload: ItemIn, response: HttpResponse):
    item = services.item_create(name=payload.name, qty=payload.qty, request_id=request.request_id)
    request.log_fields = {"item_id": str(item.id), "delta": item.qty}
    response["Location"] = f"/items/{item.id}"
    return Status(201, _item(item))


@api.get("/items", response=read_responses({200: ItemPage, 400: Error}), summary="List items by name")
def list_items(request, query: Query[PageQuery]):
    after = None if query.cursor is None else _decode_name_cursor(query.cursor)
    items, more = selectors.item_list(limit=query.limit, after_name=after)
    return {"items": items, "next": _encode_cursor(items[-1]["name"]) if more else None}


@api.get("/items/{uuid:item_id}", response=read_responses({200: ItemOut}), summary="Get an item")
def get_item(request, item_id: uuid.UUID):
    item = selectors.item_get(item_id=item_id)
    return _found(item)


@api.patch(
    "/items/{uuid:item_id}",
    response=idempotent_write_responses({200: ItemOut}),
    openapi_extra=IDEMPOTENCY_HEADER,
    summary="Rename an item",
)
@idempotent
def rename_item(request, item_id: uuid.UUID, payload: RenameIn):
    item = services.item_rename(item_id=item_id, name=payload.name)
    return _found(item)


@api.delete(
    "/items/{uuid:item_id}", response=write_responses({204: None}), summary="Delete an item (idempotent)"
)
def delete_item(request, item_id: uuid.UUID):
    removed = services.item_delete(item_id=item_id, request_id=request.request_id)
    request.log_fields = {"item_id": str(item_id)}
    if removed is not None:  # a delete of what is already gone changes no stock
        request.log_fields["delta"] = -removed
    return Status(204, None)


@api.patch(
    "/items/{uuid:item_id}/qty",
    response=idempotent_write_responses({200: ItemOut}),
    openapi_extra=IDEMPOTENCY_HEADER,
    summary="Change an item's qty by a signed delta",
)
@idempotent
def adjust_qty(request, item_id: uuid.UUID, payload: DeltaIn):
    request.log_fields = {"item_id": str(item_id), "delta": payload.delta}
    item = services.qty_adjust(
        item_id=item_id,
        delta=payload.delta,
        expected_qty=payload.expected_qty,
        reason=payload.reason,
        request_id=request.request_id,
    )
    return _found(item)


@api.post(
    "/adjustments",
    response=idempotent_write_responses({200: ItemList}),
    openapi_extra=IDEMPOTENCY_HEADER,
    summary="Apply several changes of qty in one transaction: all or none",
)
@idempotent
def apply_adjustments(request, payload: AdjustmentIn):
    changes = [change.model_dump() for change in payload.changes]
    request.log_fields = {"changes": len(changes)}
    items = services.adjustment_apply(changes=changes, reason=payload.reason, request_id=request.request_id)
    return {"items": [_item(item) for item in items]}


@api.get(
    "/items/{uuid:item_id}/movements",
    response=read_responses({200: MovementPage, 400: Error}),
    summary="An item's movements, oldest first; kept after it is deleted",
)
def list_movements(request, item_id: uuid.UUID, query: Query[PageQuery]):
    after = None if query.cursor is None else _decode_id_cursor(query.cursor)
    movements, more = selectors.movement_list(item_id=item_id, limit=query.limit, after_id=after)
    if not movements and not selectors.item_ever_existed(item_id=item_id):
        raise Http404
    return {
        "movements": [
            {
                "kind": m.kind,
                "delta": m.delta,
                "qty_after": m.qty_after,
                "reason": m.reason,
                "request_id": m.request_id,
                "at": m.at,
            }
            for m in movements
        ],
        "next": _encode_cursor(movements[-1].id) if more else None,
    }


@api.get("/healthz", response=Health, auth=None, summary="The process answers")
def healthz(request):
    return {"status": "ok"}


@api.get(
    "/readyz", response={200: Health, 503: Error}, auth=None, summary="The database is reachable and migrated"
)
def readyz(request):
    if selectors.database_ready():
        return {"status": "ok"}
    return Status(503, {"error": "not_ready"})


@api.get(
    "/metrics", summary="Prometheus metrics, every worker process added up", openapi_extra=PROMETHEUS_TEXT
)
def prometheus_metrics(request):
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)
