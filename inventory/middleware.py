"""Cross-cutting concerns of every request: its id, and JSON for every error."""

import logging
import re
import uuid
from http import HTTPStatus

from django.core.exceptions import DisallowedHost
from django.http import JsonResponse

logger = logging.getLogger(__name__)

# A client's request id is echoed only when it is short and plain enough to log safely.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(get_response):
    def middleware(request):
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        response = get_response(request)
        response["X-Request-ID"] = request.request_id
        return response

    return middleware


def json_errors(get_response):
    """Every error leaves as JSON, in every mode: Django's own 4xx/5xx pages included."""

    def middleware(request):
        try:
            request.get_host()  # enforces ALLOWED_HOSTS, which nothing else here asks for
        except DisallowedHost:
            return JsonResponse({"error": "host not allowed"}, status=400)
        response = get_response(request)
        if response.status_code >= 400 and not response.get("Content-Type", "").startswith(
            "application/json"
        ):
            return _as_json(request, response)
        return response

    return middleware


def _as_json(request, response):
    status = response.status_code
    if status == 404:
        body = {"error": "not_found"}
    elif status >= 500:
        body = {"error": "internal_error", "request_id": getattr(request, "request_id", None)}
    else:
        body = {"error": HTTPStatus(status).phrase.lower().replace(" ", "_")}
    replacement = JsonResponse(body, status=status)
    for header in ("Allow", "WWW-Authenticate", "Retry-After"):
        if header in response:
            replacement[header] = response[header]
    return replacement
