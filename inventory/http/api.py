"""The API: one NinjaAPI with its JSON parser, bearer-token auth and error mapping, and one
Router per resource mounted on it."""

import json

from django.http import HttpRequest
from django.urls import register_converter
from ninja import NinjaAPI
from ninja.errors import AuthorizationError
from ninja.parser import Parser
from ninja.security import HttpBearer

from inventory import tokens
from inventory.http import errors, events, holds, items, operations, webhooks
from inventory.invariants import ID_PATTERN
from inventory.models import Token

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class IdConverter:
    """`{id:name}` in a route: an id spelled as bodies spell it (invariants.ID_PATTERN).
    Anything else does not match the route, so it gets the same 404 as an unknown path."""

    regex = ID_PATTERN

    def to_python(self, value: str) -> str:
        return value  # the view's uuid.UUID annotation converts it

    def to_url(self, value) -> str:
        return str(value)


register_converter(IdConverter, "id")


class StrictJSONParser(Parser):
    """json.loads of an application/json body, minus what JSON does not allow or means two things.

    Requiring the JSON media type also stops a browser's cross-site form or text/plain
    "simple request" from ever reaching a write.
    """

    def parse_body(self, request: HttpRequest) -> dict:
        if request.content_type != "application/json":
            raise errors.UnsupportedMediaType("the body must be application/json")
        # RFC 9110, section 8.4: a coding the server does not apply is 415. The body is read
        # as it comes, so only identity is accepted.
        codings = request.headers.get("Content-Encoding", "identity")
        if any(coding.strip().lower() not in ("identity", "") for coding in codings.split(",")):
            raise errors.UnsupportedMediaType("the body must not have a Content-Encoding")
        return json.loads(request.body, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return obj


class BearerToken(HttpBearer):
    """`Authorization: Bearer <token>`. Scope `read` may GET (and HEAD), `write` may do
    everything, `admin` everything too; routes mounted with `BearerToken(admin=True)`
    (webhooks) need `admin`. Returns the token (ninja sets request.auth), or None for 401;
    raises for 403. One class for every route, so the OpenAPI document has one scheme."""

    # Each scope may do what those before it may.
    SCOPE_ORDER = (Token.READ, Token.WRITE, Token.ADMIN)

    def __init__(self, *, admin: bool = False):
        super().__init__()
        self.admin = admin

    def __call__(self, request):
        # Parsed here rather than by HttpBearer, which logs a malformed header in DEBUG:
        # the header may hold a real token.
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return None
        return self.authenticate(request, credentials.strip())

    def authenticate(self, request, token):
        found = tokens.token_for(token)
        if found is None:
            return None
        request.token_name = found.name  # for the request's log line
        if self.admin:
            needed = Token.ADMIN
        else:
            needed = Token.READ if request.method in READ_METHODS else Token.WRITE
        if self.SCOPE_ORDER.index(found.scope) < self.SCOPE_ORDER.index(needed):
            raise AuthorizationError(
                message=f"this token's scope is {found.scope}; this request needs {needed}"
            )
        return found


class InventoryAPI(NinjaAPI):
    def get_content_type(self) -> str:
        # RFC 8259, section 11: application/json has no charset parameter (it is UTF-8).
        return "application/json"


api = InventoryAPI(
    title="Inventory service",
    version="1.0.0",
    description="Items {id, name, qty} whose quantities change by signed deltas, never below 0, and holds "
    "that set stock aside for a checkout until they are committed, released or expire.",
    parser=StrictJSONParser(),
    auth=BearerToken(),
    urls_namespace="inventory",
)
for error, handler in errors.HANDLERS.items():
    api.add_exception_handler(error, handler)

api.add_router("", items.router)
api.add_router("", holds.router)
api.add_router("", events.router)
api.add_router("", webhooks.router, auth=BearerToken(admin=True))
api.add_router("", operations.router)
