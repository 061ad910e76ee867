"""Opaque page cursors: base64url of {"after": <the last key of the page>}. A cursor that
does not decode to a key this service could have issued is refused (InvalidCursor) before
it reaches the database."""

import base64
import binascii
import json

from inventory.errors import InvalidCursor, InvalidInput
from inventory.invariants import QTY_MAX, normalize_name


def encode(after: str | int) -> str:
    raw = json.dumps({"after": after}).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _after(cursor: str, field: str = "cursor") -> object:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return json.loads(raw)["after"]
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise InvalidCursor(field=field) from exc


def decode_name(cursor: str) -> str:
    after = _after(cursor)
    # Cursors carry a stored name; anything else (a NUL, a lone surrogate) is forged and
    # must not reach the database, which would refuse to compare it.
    try:
        valid = normalize_name(after) == after
    except InvalidInput:
        valid = False
    if not valid:
        raise InvalidCursor(field="cursor")
    return after


def decode_id(cursor: str, field: str = "cursor") -> int:
    after = _after(cursor, field)
    if type(after) is not int or not 0 <= after <= QTY_MAX:
        raise InvalidCursor(field=field)
    return after
