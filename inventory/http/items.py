"""Routes of items, their qty, batches of adjustments and movements: parse, call one service,
map its result to HTTP."""

import uuid

from django.http import Http404
from ninja import Query, Router, Status

from inventory import holds, items
from inventory.errors import InvalidInput
from inventory.http import cursors
from inventory.http.holds import hold_body
from inventory.http.idempotency import HEADER, idempotent
from inventory.http.schemas import (
    AdjustmentIn,
    DeltaIn,
    Error,
    HoldPage,
    ItemIn,
    ItemList,
    ItemOut,
    ItemPage,
    ItemUpdateIn,
    MovementPage,
    PageQuery,
    idempotent_write_responses,
    read_responses,
    write_responses,
)
from inventory.models import Item

router = Router(tags=["items"])


def item_body(item: Item | dict) -> dict:
    """An item as every response shows it."""
    if isinstance(item, Item):
        item = {
            "id": item.id,
            "name": item.name,
            "qty": item.qty,
            "reserved": item.reserved,
            "low_stock_threshold": item.low_stock_threshold,
        }
    return {**item, "available": item["qty"] - item["reserved"]}


def actor(request) -> str:
    """The name of the token that made the request: every movement records it."""
    return request.auth.name


def _found(item: Item | None) -> dict:
    """A service's None means the item does not exist."""
    if item is None:
        raise Http404
    return item_body(item)


@router.post(
    "/items",
    response=idempotent_write_responses({201: ItemOut}),
    openapi_extra=HEADER,
    summary="Create an item",
)
@idempotent(location="/items/{id}")
def create_item(request, payload: ItemIn):
    item = items.item_create(
        name=payload.name,
        qty=payload.qty,
        low_stock_threshold=payload.low_stock_threshold,
        actor=actor(request),
        request_id=request.request_id,
    )
    request.log_fields = {"item_id": str(item.id), "delta": item.qty}
    return Status(201, item_body(item))


@router.get("/items", response=read_responses({200: ItemPage, 400: Error}), summary="List items by name")
def list_items(request, query: Query[PageQuery]):
    after = None if query.cursor is None else cursors.decode_name(query.cursor)
    page, more = items.item_list(limit=query.limit, after_name=after)
    return {
        "items": [item_body(item) for item in page],
        "next": cursors.encode(page[-1]["name"]) if more else None,
    }


@router.get("/items/{id:item_id}", response=read_responses({200: ItemOut}), summary="Get an item")
def get_item(request, item_id: uuid.UUID):
    return _found(items.item_get(item_id=item_id))


@router.get(
    "/items/{id:item_id}/holds",
    response=read_responses({200: HoldPage, 400: Error}),
    summary="An item's active holds, oldest first",
    tags=["holds"],
)
def list_item_holds(request, item_id: uuid.UUID, query: Query[PageQuery]):
    after = None if query.cursor is None else cursors.decode_id(query.cursor)
    page, more = holds.item_hold_list(item_id=item_id, limit=query.limit, after_line=after)
    if not page and items.item_get(item_id=item_id) is None:
        raise Http404
    return {
        "holds": [hold_body(hold) for _, hold in page],
        "next": cursors.encode(page[-1][0]) if more else None,
    }


@router.patch(
    "/items/{id:item_id}",
    response=idempotent_write_responses({200: ItemOut}),
    openapi_extra=HEADER,
    summary="Rename an item or set its low-stock threshold",
)
@idempotent()
def update_item(request, item_id: uuid.UUID, payload: ItemUpdateIn):
    given = payload.model_fields_set
    if not given:
        raise InvalidInput("give name, low_stock_threshold or both")
    changes = {field: getattr(payload, field) for field in given}
    return _found(
        items.item_update(item_id=item_id, actor=actor(request), request_id=request.request_id, **changes)
    )


@router.delete(
    "/items/{id:item_id}", response=write_responses({204: None}), summary="Delete an item (idempotent)"
)
def delete_item(request, item_id: uuid.UUID):
    removed = items.item_delete(item_id=item_id, actor=actor(request), request_id=request.request_id)
    request.log_fields = {"item_id": str(item_id)}
    if removed is not None:  # a delete of what is already gone changes no stock
        request.log_fields["delta"] = -removed
    return Status(204, None)


@router.patch(
    "/items/{id:item_id}/qty",
    response=idempotent_write_responses({200: ItemOut}),
    openapi_extra=HEADER,
    summary="Change an item's qty by a signed delta",
)
@idempotent()
def adjust_qty(request, item_id: uuid.UUID, payload: DeltaIn):
    request.log_fields = {"item_id": str(item_id), "delta": payload.delta}
    item = items.qty_adjust(
        item_id=item_id,
        delta=payload.delta,
        expected_qty=payload.expected_qty,
        reason=payload.reason,
        reference=payload.reference,
        actor=actor(request),
        request_id=request.request_id,
    )
    return _found(item)


@router.post(
    "/adjustments",
    response=idempotent_write_responses({200: ItemList}),
    openapi_extra=HEADER,
    summary="Apply several changes of qty in one transaction: all or none",
    tags=["adjustments"],
)
@idempotent()
def apply_adjustments(request, payload: AdjustmentIn):
    changes = [change.model_dump() for change in payload.changes]
    request.log_fields = {"changes": len(changes)}
    applied = items.adjustment_apply(
        changes=changes,
        reason=payload.reason,
        reference=payload.reference,
        actor=actor(request),
        request_id=request.request_id,
    )
    return {"items": [item_body(item) for item in applied]}


@router.get(
    "/items/{id:item_id}/movements",
    response=read_responses({200: MovementPage, 400: Error}),
    summary="An item's movements, oldest first; kept after it is deleted",
    tags=["movements"],
)
def list_movements(request, item_id: uuid.UUID, query: Query[PageQuery]):
    after = None if query.cursor is None else cursors.decode_id(query.cursor)
    movements, more = items.movement_list(item_id=item_id, limit=query.limit, after_id=after)
    if not movements and not items.item_ever_existed(item_id=item_id):
        raise Http404
    return {
        "movements": [
            {
                "kind": m.kind,
                "delta": m.delta,
                "qty_after": m.qty_after,
                "reason": m.reason,
                "reference": m.reference,
                "hold_id": m.hold_id,
                "actor": m.actor,
                "request_id": m.request_id,
                "at": m.at,
            }
            for m in movements
        ],
        "next": cursors.encode(movements[-1].id) if more else None,
    }
