"""Routes of holds: set stock aside, then commit, release or extend it."""

import uuid

from django.http import Http404
from ninja import Router, Status

from inventory import clock, holds, invariants
from inventory.http.idempotency import HEADER, idempotent
from inventory.http.schemas import ExtendIn, HoldIn, HoldOut, idempotent_write_responses, read_responses
from inventory.models import Hold

router = Router(tags=["holds"])


def hold_body(hold: Hold) -> dict:
    """A hold as every response shows it: its state as of now."""
    lines = getattr(hold, "line_list", None) or hold.lines.all()
    return {
        "id": hold.id,
        "state": invariants.hold_state(hold.state, hold.expires_at, clock.now()),
        "lines": [
            {"id": line.item_id, "qty": line.qty} for line in sorted(lines, key=lambda line: line.position)
        ],
        "reference": hold.reference,
        "expires_at": hold.expires_at,
        "created_at": hold.created_at,
        "actor": hold.actor,
    }


def _found(hold: Hold | None) -> dict:
    if hold is None:
        raise Http404
    return hold_body(hold)


@router.post(
    "/holds",
    response=idempotent_write_responses({201: HoldOut}),
    openapi_extra=HEADER,
    summary="Set stock aside: every line or none",
)
@idempotent(location="/holds/{id}")
def create_hold(request, payload: HoldIn):
    lines = [line.model_dump() for line in payload.lines]
    request.log_fields = {"lines": len(lines)}
    hold = holds.hold_create(
        lines=lines,
        ttl_seconds=payload.ttl_seconds,
        reference=payload.reference,
        actor=request.auth.name,
        request_id=request.request_id,
    )
    request.log_fields["hold_id"] = str(hold.id)
    return Status(201, hold_body(hold))


@router.get("/holds/{id:hold_id}", response=read_responses({200: HoldOut}), summary="Get a hold")
def get_hold(request, hold_id: uuid.UUID):
    return _found(holds.hold_get(hold_id=hold_id))


@router.post(
    "/holds/{id:hold_id}/commit",
    response=idempotent_write_responses({200: HoldOut}),
    openapi_extra=HEADER,
    summary="Take the held stock: qty and reserved fall by each line, once",
)
@idempotent()
def commit_hold(request, hold_id: uuid.UUID):
    request.log_fields = {"hold_id": str(hold_id)}
    return _found(holds.hold_commit(hold_id=hold_id, actor=request.auth.name, request_id=request.request_id))


@router.post(
    "/holds/{id:hold_id}/release",
    response=idempotent_write_responses({200: HoldOut}),
    openapi_extra=HEADER,
    summary="Give the held stock back",
)
@idempotent()
def release_hold(request, hold_id: uuid.UUID):
    request.log_fields = {"hold_id": str(hold_id)}
    return _found(holds.hold_release(hold_id=hold_id, actor=request.auth.name, request_id=request.request_id))


@router.post(
    "/holds/{id:hold_id}/extend",
    response=idempotent_write_responses({200: HoldOut}),
    openapi_extra=HEADER,
    summary="Keep an active hold for ttl_seconds from now",
)
@idempotent()
def extend_hold(request, hold_id: uuid.UUID, payload: ExtendIn):
    request.log_fields = {"hold_id": str(hold_id)}
    return _found(
        holds.hold_extend(
            hold_id=hold_id,
            ttl_seconds=payload.ttl_seconds,
            actor=request.auth.name,
            request_id=request.request_id,
        )
    )
