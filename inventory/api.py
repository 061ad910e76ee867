"""Routes and thin views: parse, call one service or selector, map the result to HTTP.

Every error a service raises is mapped to HTTP here, in error_response().
"""

import base64
import binascii
import json
import logging
import uuid

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from pydantic import ConfigDict, Field, StrictInt, StrictStr

from inventory import metrics, selectors, services
from inventory.auth import BearerToken
from inventory.errors import InvalidCursor, InvalidInput, InventoryError
from inventory.invariants import NAME_MAX_LENGTH, QTY_MAX, normalize_name
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


NAME_RULE = "normalised to NFC and stripped; then 1..200 characters, no control characters, unique"


class Strict(Schema):
    model_config = ConfigDict(extra="forbid")


class ItemIn(Strict):
    # Bounds are documented here and enforced by inventory.invariants, the one place for them.
    name: StrictStr = Field(
        description=NAME_RULE, json_schema_extra={"minLength": 1, "maxLength": NAME_MAX_LENGTH}
    )
    qty: StrictInt = Field(json_schema_extra={"minimum": 0, "maximum": QTY_MAX})


class RenameIn(Strict):
    name: StrictStr = Field(
        description=NAME_RULE, json_schema_extra={"minLength": 1, "maxLength": NAME_MAX_LENGTH}
    )


class DeltaIn(Strict):
    delta: StrictInt = Field(
        description="the signed change: -1 decrements, +5 increments",
        json_schema_extra={"minimum": -QTY_MAX, "maximum": QTY_MAX},
    )


class ItemOut(Schema):
    id: uuid.UUID
    name: str
    qty: int


class ItemPage(Schema):
    items: list[ItemOut]
    next: str | None = Field(description="cursor of the next page, or null on the last")


class ListQuery(Schema):
    limit: int = Field(100, ge=1, le=1000)
    cursor: str | None = Field(
        None, description="the `next` of the previous page", pattern=r"^[A-Za-z0-9_-]+$"
    )


class Error(Schema):
    error: str
    field: str | None = None


class Health(Schema):
    status: str


def read_responses(success: dict) -> dict:
    """What a GET may answer besides success: 404 also for an id that is not a UUID."""
    return {**success, 401: Error, 404: Error, 503: Error}


def write_responses(success: dict) -> dict:
    return {**read_responses(success), 400: Error, 403: Error, 413: Error, 415: Error}


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


@api.exception_handler(InventoryError)
def _inventory_error(request, exc: InventoryError):
    metrics.REJECTED_TRANSITIONS.labels(_snake_case(type(exc).__name__)).inc()
    return error_response(400, exc.message, field=exc.field)


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
def _not_found(request, exc: Http404):
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


def _encode_cursor(name: str) -> str:
    raw = json.dumps({"after": name}).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        after = json.loads(raw)["after"]
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise InvalidCursor(field="cursor") from exc
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


@api.post("/items", response=write_responses({201: ItemOut}), summary="Create an item")
def create_item(request, payload: ItemIn, response: HttpResponse):
    item = services.item_create(name=payload.name, qty=payload.qty)
    request.log_fields = {"item_id": str(item.id), "delta": item.qty}
    response["Location"] = f"/items/{item.id}"
    return Status(201, _item(item))


@api.get("/items", response=read_responses({200: ItemPage, 400: Error}), summary="List items by name")
def list_items(request, query: Query[ListQuery]):
    after = None if query.cursor is None else _decode_cursor(query.cursor)
    items, more = selectors.item_list(limit=query.limit, after_name=after)
    return {"items": [_item(i) for i in items], "next": _encode_cursor(items[-1].name) if more else None}


@api.get("/items/{uuid:item_id}", response=read_responses({200: ItemOut}), summary="Get an item")
def get_item(request, item_id: uuid.UUID):
    item = selectors.item_get(item_id=item_id)
    return _found(item)


@api.patch("/items/{uuid:item_id}", response=write_responses({200: ItemOut}), summary="Rename an item")
def rename_item(request, item_id: uuid.UUID, payload: RenameIn):
    item = services.item_rename(item_id=item_id, name=payload.name)
    return _found(item)


@api.delete(
    "/items/{uuid:item_id}", response=write_responses({204: None}), summary="Delete an item (idempotent)"
)
def delete_item(request, item_id: uuid.UUID):
    request.log_fields = {"item_id": str(item_id)}
    services.item_delete(item_id=item_id)
    return Status(204, None)


@api.patch(
    "/items/{uuid:item_id}/qty",
    response=write_responses({200: ItemOut}),
    summary="Change an item's qty by a signed delta",
)
def adjust_qty(request, item_id: uuid.UUID, payload: DeltaIn):
    request.log_fields = {"item_id": str(item_id), "delta": payload.delta}
    item = services.qty_adjust(item_id=item_id, delta=payload.delta)
    return _found(item)


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
