"""Routes of webhooks: make, read, change and delete them, and read their deliveries' log.
Mounted with the admin scope (http/api.py): read and write tokens get 403."""

import uuid

from django.http import Http404
from ninja import Query, Router, Status

from inventory import webhooks
from inventory.errors import InvalidInput
from inventory.http import cursors
from inventory.http.idempotency import HEADER, idempotent
from inventory.http.schemas import (
    DeliveryPage,
    Error,
    PageQuery,
    WebhookCreated,
    WebhookIn,
    WebhookList,
    WebhookOut,
    WebhookUpdateIn,
    idempotent_write_responses,
    read_responses,
    write_responses,
)
from inventory.models import Webhook

router = Router(tags=["webhooks"])


def webhook_body(webhook: Webhook) -> dict:
    """A webhook as every response shows it: never its secret."""
    return {
        "id": webhook.id,
        "url": webhook.url,
        "events": webhook.events,
        "description": webhook.description,
        "enabled": webhook.enabled,
        "disabled_reason": webhook.disabled_reason,
        "created_at": webhook.created_at,
        "failing_since": webhook.failing_since,
        "next_attempt_at": webhook.next_attempt_at,
    }


def _found(webhook: Webhook | None) -> dict:
    if webhook is None:
        raise Http404
    return webhook_body(webhook)


@router.post(
    "/webhooks",
    response=idempotent_write_responses({201: WebhookCreated}),
    openapi_extra=HEADER,
    summary="Make a webhook: the events of the types it names are pushed to its URL",
)
@idempotent(location="/webhooks/{id}")
def create_webhook(request, payload: WebhookIn):
    webhook, secret = webhooks.webhook_create(
        url=payload.url, events=payload.events, description=payload.description
    )
    request.log_fields = {"webhook_id": str(webhook.id)}
    return Status(201, {**webhook_body(webhook), "secret": secret})


@router.get("/webhooks", response=read_responses({200: WebhookList, 403: Error}), summary="List webhooks")
def list_webhooks(request):
    return {"webhooks": [webhook_body(webhook) for webhook in webhooks.webhook_list()]}


@router.get(
    "/webhooks/{id:webhook_id}",
    response=read_responses({200: WebhookOut, 403: Error}),
    summary="Get a webhook",
)
def get_webhook(request, webhook_id: uuid.UUID):
    return _found(webhooks.webhook_get(webhook_id=webhook_id))


@router.patch(
    "/webhooks/{id:webhook_id}",
    response=write_responses({200: WebhookOut}),
    summary="Enable (resuming where it stopped) or disable a webhook, or change its events or description",
)
def update_webhook(request, webhook_id: uuid.UUID, payload: WebhookUpdateIn):
    given = payload.model_fields_set
    if not given:
        raise InvalidInput("give enabled, events, description or several")
    request.log_fields = {"webhook_id": str(webhook_id)}
    changes = {field: getattr(payload, field) for field in given}
    return _found(webhooks.webhook_update(webhook_id=webhook_id, **changes))


@router.delete(
    "/webhooks/{id:webhook_id}",
    response=write_responses({204: None}),
    summary="Delete a webhook and its deliveries' log (idempotent)",
)
def delete_webhook(request, webhook_id: uuid.UUID):
    webhooks.webhook_delete(webhook_id=webhook_id)
    request.log_fields = {"webhook_id": str(webhook_id)}
    return Status(204, None)


@router.get(
    "/webhooks/{id:webhook_id}/deliveries",
    response=read_responses({200: DeliveryPage, 400: Error, 403: Error}),
    summary="A webhook's delivery attempts, newest first",
)
def list_deliveries(request, webhook_id: uuid.UUID, query: Query[PageQuery]):
    before = None if query.cursor is None else cursors.decode_id(query.cursor)
    found = webhooks.delivery_list(webhook_id=webhook_id, limit=query.limit, before_id=before)
    if found is None:
        raise Http404
    page, more = found
    return {
        "deliveries": [
            {
                "event_id": delivery.event_id,
                "status": delivery.status,
                "error": delivery.error,
                "duration_ms": delivery.duration_ms,
                "at": delivery.at,
            }
            for delivery in page
        ],
        "next": cursors.encode(page[-1].id) if more else None,
    }
