"""What a valid item and a valid change of qty are: the one place that says it.

Pure and deterministic: plain values in, plain values out, no Django, no I/O.
Everything that writes an item goes through here first.
"""

import unicodedata

from inventory.errors import InvalidInput, QtyAboveMax, QtyBelowZero

QTY_MAX = 2**63 - 1  # a signed 64-bit column on SQLite and PostgreSQL
NAME_MAX_LENGTH = 200
REASON_MAX_LENGTH = 500
BATCH_MAX_CHANGES = 1000
ITEM_FIELDS = frozenset({"name", "qty"})
# An id is written as RFC 9562 shows a UUID: 8-4-4-4-12 hex digits, either case (section 4:
# case-insensitive on input). The same spelling is accepted in a path, a query and a body.
ID_PATTERN = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# An integer in a query string is written as JSON writes one (RFC 8259, section 6): an
# optional minus and decimal digits without leading zeros; no "+", spaces or other digits.
QUERY_INTEGER_PATTERN = r"-?(0|[1-9][0-9]*)"

# Cc: control characters, NUL included. Cs: lone surrogates, which JSON's \ud800
# escapes can carry but no database can store as text.
_UNSTORABLE_CATEGORIES = frozenset({"Cc", "Cs"})


def normalize_name(value: object) -> str:
    """Return the name as stored: NFC, stripped; raise InvalidInput if it is not storable."""
    if not isinstance(value, str):
        raise InvalidInput("name must be a string", field="name")
    if any(unicodedata.category(char) == "Cs" for char in value):
        raise InvalidInput("name must be valid Unicode text", field="name")
    name = unicodedata.normalize("NFC", value).strip()
    if not name:
        raise InvalidInput("name must not be blank", field="name")
    if len(name) > NAME_MAX_LENGTH:
        raise InvalidInput(f"name must be at most {NAME_MAX_LENGTH} characters", field="name")
    if any(unicodedata.category(char) in _UNSTORABLE_CATEGORIES for char in name):
        raise InvalidInput("name must not contain control characters", field="name")
    return name


def _require_int(value: object, field: str) -> int:
    # type() rather than isinstance(): JSON true arrives as bool, a subclass of int.
    if type(value) is not int:
        raise InvalidInput(f"{field} must be a JSON integer", field=field)
    return value


def check_qty(value: object, field: str = "qty") -> int:
    qty = _require_int(value, field)
    if qty < 0:
        raise InvalidInput(f"{field} must be at least 0", field=field)
    if qty > QTY_MAX:
        raise InvalidInput(f"{field} must be at most {QTY_MAX}", field=field)
    return qty


def check_delta(value: object) -> int:
    """A delta outside [-QTY_MAX, QTY_MAX] can never apply to a valid qty."""
    delta = _require_int(value, "delta")
    if not -QTY_MAX <= delta <= QTY_MAX:
        raise InvalidInput(f"delta must be between {-QTY_MAX} and {QTY_MAX}", field="delta")
    return delta


def check_reason(value: object) -> str | None:
    """A movement's free-text reason: absent, or storable text of at most 500 characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("reason must be a string", field="reason")
    if len(value) > REASON_MAX_LENGTH:
        raise InvalidInput(f"reason must be at most {REASON_MAX_LENGTH} characters", field="reason")
    if any(unicodedata.category(char) in _UNSTORABLE_CATEGORIES for char in value):
        raise InvalidInput("reason must not contain control characters", field="reason")
    return value


def check_changes(changes: list[dict]) -> list[dict]:
    """A batch: 1..1000 changes {id, delta, expected_qty?}, each id once. An error names the
    change as its position and its id: field "changes.<position>.<field>"."""
    if not 1 <= len(changes) <= BATCH_MAX_CHANGES:
        raise InvalidInput(f"changes must hold 1 to {BATCH_MAX_CHANGES} changes", field="changes")
    seen = set()
    checked = []
    for position, change in enumerate(changes):
        item_id = change["id"]
        if item_id in seen:
            # Two lines for one item would be checked against the same stock.
            raise InvalidInput(
                f"item {item_id} appears more than once", field=f"changes.{position}.id", item_id=item_id
            )
        seen.add(item_id)
        expected = change.get("expected_qty")
        try:
            delta = check_delta(change["delta"])
            expected = None if expected is None else check_qty(expected, "expected_qty")
        except InvalidInput as error:
            raise InvalidInput(
                error.message, field=f"changes.{position}.{error.field}", item_id=item_id
            ) from None
        checked.append({"id": item_id, "delta": delta, "expected_qty": expected})
    return checked


def validate_item(data: dict) -> dict:
    """Return the item's fields as stored, or raise InvalidInput naming the first bad field."""
    unknown = sorted(set(data) - ITEM_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field: {unknown[0]}", field=unknown[0])
    for field in sorted(ITEM_FIELDS - set(data)):
        raise InvalidInput(f"{field} is required", field=field)
    return {"name": normalize_name(data["name"]), "qty": check_qty(data["qty"])}


def apply_delta(qty: int, delta: int) -> int:
    """The quantity transition qty' = qty + delta, or the reason it is refused."""
    new_qty = qty + delta
    if new_qty < 0:
        raise QtyBelowZero()
    if new_qty > QTY_MAX:
        raise QtyAboveMax()
    return new_qty
