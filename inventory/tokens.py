"""API tokens: made, revoked and looked up. A token reads `inv_<key>.<secret>`: the key finds
the row, and the secret is checked against the stored sha256 digest in constant time. The
secret has 256 bits of entropy, so a fast hash is enough: there is nothing to guess that a
slow one would protect. Only the digest is stored; the token is shown once, when made."""

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from inventory.errors import TokenNameTaken
from inventory.models import Token

PREFIX = "inv_"

# Tokens found active, by key: (trusted until, token). Each process asks the database again
# after TOKEN_CACHE_SECONDS, so a revocation reaches every process within that time; in the
# process that revokes, at once. Unknown keys are never remembered, so a new token works at
# once and no client can fill the cache with keys it invents; it is bounded all the same.
_found: OrderedDict[str, tuple[float, Token]] = OrderedDict()
CACHE_MAX_TOKENS = 1000


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_create(*, name: str, scope: str) -> str:
    """Make a token; return it. Raises TokenNameTaken when an active token has this name."""
    key, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    try:
        with transaction.atomic():
            Token.objects.create(name=name, scope=scope, key=key, digest=_digest(secret))
    except IntegrityError as exc:
        raise TokenNameTaken(field="name") from exc
    return f"{PREFIX}{key}.{secret}"


def token_revoke(*, name: str) -> bool:
    """Revoke the active token with this name; False if there is none."""
    with transaction.atomic():
        token = Token.objects.select_for_update().filter(name=name, revoked_at__isnull=True).first()
        if token is None:
            return False
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    _found.pop(token.key, None)
    return True


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
        _found.move_to_end(key)
        while len(_found) > CACHE_MAX_TOKENS:
            _found.popitem(last=False)
    if not hmac.compare_digest(token.digest, _digest(secret)):
        return None
    return token
