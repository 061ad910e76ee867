"""Cross-cutting concerns of every request: its id, its log line and metrics, JSON errors."""

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from http import HTTPStatus

from django.core.exceptions import DisallowedHost
from django.http import JsonResponse

from inventory import metrics

request_log = logging.getLogger("inventory.request")

# A client's request id is echoed only when it is short and plain enough to log safely.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CONVERTER = re.compile(r"<(?:\w+:)?(\w+)>")
# The methods of RFC 9110 and PATCH: any other method a client invents is counted as "other",
# so no client can add a series to the metrics.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def request_id(get_response):
    def middleware(request):
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if _SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        response = get_response(request)
        response["X-Request-ID"] = request.request_id
        return response

    return middleware


def access_log(get_response):
    """One JSON line per request, and the request metrics. Never the token, never the body."""

    def middleware(request):
        started = time.perf_counter()
        response = get_response(request)
        duration = time.perf_counter() - started
        route = _route(request)
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": request.request_id,
            "method": request.method[:16],  # a client may send any token as its method
            "route": route,
            "status": response.status_code,
            "duration_ms": round(duration * 1000, 2),
            "token": getattr(request, "token_name", None),
            **getattr(request, "log_fields", {}),
        }
        request_log.info(json.dumps(line, ensure_ascii=False))
        method = request.method if request.method in KNOWN_METHODS else "other"
        metrics.REQUESTS.labels(method, route, str(response.status_code)).inc()
        metrics.LATENCY.labels(route).observe(duration)
        return response

    return middleware


def http_semantics(get_response):
    """HEAD is answered as GET without the body, on every route that answers GET, and 405's
    Allow names it (RFC 9110, section 9.3.2); a 204 or 304 has no body, so no Content-Type."""

    def middleware(request):
        if request.method == "HEAD":
            request.method = "GET"
            try:
                response = get_response(request)
            finally:
                request.method = "HEAD"
            _drop_body(response)
        else:
            response = get_response(request)
        allow = [method.strip() for method in response.get("Allow", "").split(",") if method.strip()]
        if "GET" in allow and "HEAD" not in allow:
            response["Allow"] = ", ".join([*allow, "HEAD"])
        if response.status_code in (204, 304) and "Content-Type" in response:
            del response["Content-Type"]
        return response

    return middleware


def _drop_body(response) -> None:
    """Keep the headers GET would send, Content-Length included; send no body."""
    if response.streaming:
        # Not closed here: the server closes the response (and its file) once it is sent.
        response.streaming_content = []
    else:
        response["Content-Length"] = str(len(response.content))
        response.content = b""


def _route(request) -> str:
    """The route template as the OpenAPI document writes it ("/items/{item_id}"), never the
    raw path: ids would make every line and label unique."""
    match = getattr(request, "resolver_match", None)
    if match is None or match.url_name == "not_found":
        return "(unmatched)"
    return "/" + _CONVERTER.sub(r"{\1}", str(match.route))


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
