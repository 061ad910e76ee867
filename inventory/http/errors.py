"""The one mapping of errors to HTTP: every typed error a service raises, and every error of
the transport itself, becomes a JSON answer here. Registered on the API in http/api.py."""

import logging

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, OperationalError
from django.http import Http404, JsonResponse
from ninja.errors import AuthenticationError, HttpError, ValidationError

from inventory import metrics
from inventory.errors import (
    Conflict,
    CursorExpired,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InventoryError,
    ItemNotFound,
    StaleQty,
)

logger = logging.getLogger(__name__)


class UnsupportedMediaType(ValueError):
    """The body is not plain application/json (another media type, or a content coding)."""


def error_response(status: int, message: str, **extra) -> JsonResponse:
    return JsonResponse(
        {"error": message, **{k: v for k, v in extra.items() if v is not None}}, status=status
    )


def _snake_case(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


# Every typed error a service raises, and its status; any other InventoryError is a 400.
ERROR_STATUS = {
    ItemNotFound: 404,
    StaleQty: 409,
    Conflict: 409,
    CursorExpired: 410,
    IdempotencyKeyInUse: 409,
    IdempotencyKeyReused: 422,
}


def refused(request, exc: InventoryError) -> JsonResponse:
    metrics.REJECTED_TRANSITIONS.labels(_snake_case(type(exc).__name__)).inc()
    status = next((code for cls, code in ERROR_STATUS.items() if isinstance(exc, cls)), 400)
    item_id = None if exc.item_id is None else str(exc.item_id)
    if status == 404:
        return error_response(404, "not_found", id=item_id)
    return error_response(status, exc.message, field=exc.field, id=item_id, **exc.details())


def invalid(request, exc: ValidationError) -> JsonResponse:
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


def not_found(request, exc: Http404) -> JsonResponse:
    return error_response(404, "not_found")


def too_large(request, exc: RequestDataTooBig) -> JsonResponse:
    return error_response(413, "the body is larger than 1 MiB")


def unauthenticated(request, exc: AuthenticationError) -> JsonResponse:
    response = error_response(401, "a valid bearer token is required")
    response["WWW-Authenticate"] = 'Bearer realm="inventory"'
    return response


def http_error(request, exc: HttpError) -> JsonResponse:
    if isinstance(exc.__cause__, UnsupportedMediaType):  # raised by the parser, wrapped by ninja
        return error_response(415, str(exc.__cause__))
    message = "the body is not valid JSON" if exc.status_code == 400 else str(exc)
    return error_response(exc.status_code, message)


def database_unavailable(request, exc: OperationalError) -> JsonResponse:
    # The database is down, or still busy after the timeout: nothing was committed,
    # and the same request may succeed in a moment.
    logger.warning("database unavailable: %s", exc)
    metrics.DATABASE_ERRORS.labels("unavailable").inc()
    response = error_response(503, "database_unavailable", request_id=getattr(request, "request_id", None))
    response["Retry-After"] = "1"
    return response


# SQLSTATEs that psycopg reports as another class than OperationalError but that mean the
# same: the database ended the transaction, nothing was committed, a retry may succeed
# (PostgreSQL documentation, Appendix A): idle_in_transaction_session_timeout.
UNAVAILABLE_SQLSTATES = {"25P03"}


def unexpected(request, exc: Exception) -> JsonResponse:
    if getattr(exc.__cause__, "sqlstate", None) in UNAVAILABLE_SQLSTATES:
        return database_unavailable(request, exc)
    logger.exception("unexpected error (request %s)", getattr(request, "request_id", None))
    if isinstance(exc, DatabaseError):
        metrics.DATABASE_ERRORS.labels("unexpected").inc()
    return error_response(500, "internal_error", request_id=getattr(request, "request_id", None))


HANDLERS = {
    InventoryError: refused,
    ValidationError: invalid,
    Http404: not_found,
    RequestDataTooBig: too_large,
    AuthenticationError: unauthenticated,
    HttpError: http_error,
    OperationalError: database_unavailable,
    Exception: unexpected,
}
