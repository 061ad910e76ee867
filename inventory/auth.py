"""Bearer tokens: `Authorization: Bearer <token>`, scope `read` (GET) or `write` (everything).

A token reads `inv_<key>.<secret>`: the key finds the row, and the secret is checked against
the stored sha256 digest in constant time. The secret has 256 bits of entropy, so a fast
hash is enough: there is nothing to guess that a slow one would protect.
"""

import hashlib
import hmac
import secrets
import time

from django.conf import settings
from ninja.errors import AuthorizationError
from ninja.security import HttpBearer

from inventory.models import Token

PREFIX = "inv_"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> tuple[str, str, str]:
    """(token shown to its owner, key, digest to store)."""
    key, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    return f"{PREFIX}{key}.{secret}", key, digest(secret)


# Tokens found active, by key: (trusted until, token). Each process asks the database again
# after TOKEN_CACHE_SECONDS, so a revocation reaches every process within that time; in the
# process that revokes, at once. Unknown keys are never remembered, so a new token works at once.
_found: dict[str, tuple[float, Token]] = {}


def token_for(presented: str) -> Token | None:
    """The active token that `presented` is, or None."""
    key, dot, secret = presented.removeprefix(PREFIX).partition(".")
    if not presented.startswith(PREFIX) or not dot or not key.isalnum() or len(key) > 32:
        return None
    now = time.monotonic()
    trusted_until, token = _found.get(key, (0.0, None))
    if now >= trusted_until:
        token = Token.objects.filter(key=key, revoked_at__isnull=True).first()
        if token is None:
            _found.pop(key, None)
            return None
        _found[key] = (now + settings.TOKEN_CACHE_SECONDS, token)
    if not hmac.compare_digest(token.digest, digest(secret)):
        return None
    return token


def forget(key: str) -> None:
    """Stop trusting a token in this process (it was revoked here)."""
    _found.pop(key, None)


class BearerToken(HttpBearer):
    """Returns the token (ninja sets request.auth), or None for 401; raises for 403."""

    def __call__(self, request):
        # Parsed here rather than by HttpBearer, which logs a malformed header in DEBUG:
        # the header may hold a real token.
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return None
        return self.authenticate(request, credentials.strip())

    def authenticate(self, request, token):
        found = token_for(token)
        if found is None:
            return None
        request.token_name = found.name  # for the request's log line
        if request.method not in READ_METHODS and found.scope != Token.WRITE:
            raise AuthorizationError(message="this token's scope is read; this request needs write")
        return found
