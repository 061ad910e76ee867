"""Routes and thin views: parse, call one service or selector, map the result to HTTP.

Every error a service raises is mapped to HTTP here, in error_response().
"""

import base64
import binascii
import json
import logging
import uuid

from django.core.exceptions import RequestDataTooBig
from django.db import OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import NinjaAPI, Query, Schema, Status
from ninja.errors import HttpError, ValidationError
from ninja.parser import Parser
from pydantic import ConfigDict, Field, StrictInt, StrictStr

from inventory import selectors, services
from inventory.errors import InvalidCursor, InvalidInput, InventoryError
from inventory.invariants import NAME_MAX_LENGTH, QTY_MAX, normalize_name
from inventory.models import Item

logger = logging.getLogger(__name__)


class StrictJSONParser(Parser):
    """json.loads, minus what JSON does not allow or means two things."""

    def parse_body(self, request: HttpRequest) -> dict:
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
    cursor: str | None = None


class Error(Schema):
    error: str
    field: str | None = None


class Health(Schema):
    status: str


def error_response(status: int, message: str, **extra) -> JsonResponse:
    return JsonResponse(
        {"error": message, **{k: v for k, v in extra.items() if v is not None}}, status=status
    )


@api.exception_handler(InventoryError)
def _inventory_error(request, exc: InventoryError):
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


@api.exception_handler(HttpError)
def _http_error(request, exc: HttpError):
    message = "the body is not valid JSON" if exc.status_code == 400 else str(exc)
    return error_response(exc.status_code, message)


@api.exception_handler(OperationalError)
def _database_unavailable(request, exc: OperationalError):
    # The database is down, or still busy after the busy timeout: nothing was committed,
    # and the same request may succeed in a moment.
    logger.warning("database unavailable: %s", exc)
    response = error_response(503, "database_unavailable", request_id=getattr(request, "request_id", None))
    response["Retry-After"] = "1"
    return response


@api.exception_handler(Exception)
def _unexpected(request, exc: Exception):
    logger.exception("unexpected error", extra={"request_id": getattr(request, "request_id", None)})
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


@api.post("/items", response={201: ItemOut, 400: Error}, summary="Create an item")
def create_item(request, payload: ItemIn, response: HttpResponse):
    item = services.item_create(name=payload.name, qty=payload.qty)
    response["Location"] = f"/items/{item.id}"
    return Status(201, _item(item))


@api.get("/items", response={200: ItemPage, 400: Error}, summary="List items by name")
def list_items(request, query: Query[ListQuery]):
    after = None if query.cursor is None else _decode_cursor(query.cursor)
    items, more = selectors.item_list(limit=query.limit, after_name=after)
    return {"items": [_item(i) for i in items], "next": _encode_cursor(items[-1].name) if more else None}


@api.get("/items/{uuid:item_id}", response={200: ItemOut, 404: Error}, summary="Get an item")
def get_item(request, item_id: uuid.UUID):
    item = selectors.item_get(item_id=item_id)
    return _found(item)


@api.patch("/items/{uuid:item_id}", response={200: ItemOut, 400: Error, 404: Error}, summary="Rename an item")
def rename_item(request, item_id: uuid.UUID, payload: RenameIn):
    item = services.item_rename(item_id=item_id, name=payload.name)
    return _found(item)


@api.delete("/items/{uuid:item_id}", response={204: None}, summary="Delete an item (idempotent)")
def delete_item(request, item_id: uuid.UUID):
    services.item_delete(item_id=item_id)
    return Status(204, None)


@api.patch(
    "/items/{uuid:item_id}/qty",
    response={200: ItemOut, 400: Error, 404: Error},
    summary="Change an item's qty by a signed delta",
)
def adjust_qty(request, item_id: uuid.UUID, payload: DeltaIn):
    item = services.qty_adjust(item_id=item_id, delta=payload.delta)
    return _found(item)


@api.get("/healthz", response=Health, summary="The process answers")
def healthz(request):
    return {"status": "ok"}
