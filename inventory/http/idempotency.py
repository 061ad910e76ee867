"""The Idempotency-Key header on a write view (the contract's "Idempotency"): the view runs
at most once per key and token, and its answer is stored in the same transaction as its
effect, refusals included. A request refused before the view runs (a malformed body, a bad
token) stores nothing: ninja checks those before the wrapper is called, as Stripe does."""

import functools
import hashlib
import json
import re

from django.http import Http404, HttpResponse
from ninja import Status
from ninja.renderers import JSONRenderer

from inventory import idempotency
from inventory.errors import InvalidInput, InventoryError
from inventory.http import errors

# 1..255 visible ASCII characters.
KEY = re.compile(r"[\x21-\x7e]{1,255}")
HEADER = {
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
CONTENT_TYPE = "application/json"
_renderer = JSONRenderer()


def idempotent(*, location: str | None = None):
    """Decorate a write view. `location` is the Location of a 201, formatted with its body
    ("/items/{id}"): a replayed 201 carries it too."""

    def decorate(view):
        @functools.wraps(view)
        def wrapper(request, *args, **kwargs):
            key = request.headers.get("Idempotency-Key")
            if key is None:
                status, body = _render(request, view(request, *args, **kwargs))
                return _response(status, body, location, replayed=False)
            if not KEY.fullmatch(key):
                raise InvalidInput(
                    "Idempotency-Key must be 1 to 255 visible ASCII characters", field="Idempotency-Key"
                )

            def run() -> tuple[int, str]:
                try:
                    return _render(request, view(request, *args, **kwargs))
                except InventoryError as exc:  # a refusal is an answer too, and is replayed as one
                    response = errors.refused(request, exc)
                except Http404 as exc:
                    response = errors.not_found(request, exc)
                return response.status_code, response.content.decode()

            status, body, replayed = idempotency.run_once(
                token=request.auth, key=key, fingerprint=_fingerprint(request), run=run
            )
            return _response(status, body, location, replayed=replayed)

        return wrapper

    return decorate


def _render(request, result) -> tuple[int, str]:
    status, value = (result.status_code, result.value) if isinstance(result, Status) else (200, result)
    return status, _renderer.render(request, value, response_status=status)


def _response(status: int, body: str, location: str | None, *, replayed: bool) -> HttpResponse:
    response = HttpResponse(body, status=status, content_type=CONTENT_TYPE)
    if status == 201 and location is not None:
        response["Location"] = location.format(**json.loads(body))
    if replayed:
        response["Idempotent-Replayed"] = "true"
    return response


def _fingerprint(request) -> str:
    """Method, path and body, the body as canonical JSON: the same request, however spaced."""
    body = json.dumps(json.loads(request.body or b"null"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()
