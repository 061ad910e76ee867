"""What a valid item and a valid change of qty are: the one place that says it.

Pure and deterministic: plain values in, plain values out, no Django, no I/O.
Everything that writes an item goes through here first.
"""

import unicodedata

from inventory.errors import (
    HoldNotActive,
    InvalidInput,
    NotEnoughStock,
    QtyAboveMax,
    QtyBelowReserved,
    QtyBelowZero,
)

QTY_MAX = 2**63 - 1  # a signed 64-bit column on SQLite and PostgreSQL
NAME_MAX_LENGTH = 200
REASON_MAX_LENGTH = 500
REFERENCE_MAX_LENGTH = 200
BATCH_MAX_CHANGES = 1000
HOLD_MAX_LINES = 100
HOLD_TTL_MAX_SECONDS = 7 * 24 * 3600
HOLD_TTL_DEFAULT_SECONDS = 900
ITEM_FIELDS = frozenset({"name", "qty"})
ITEM_OPTIONAL_FIELDS = frozenset({"low_stock_threshold"})

# A hold's life: active -> committed | released | expired, one way.
ACTIVE, COMMITTED, RELEASED, EXPIRED = HOLD_STATES = ("active", "committed", "released", "expired")
COMMIT, RELEASE, EXTEND = "commit", "release", "extend"
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


def _check_text(value: object, field: str, max_length: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string", field=field)
    if len(value) > max_length:
        raise InvalidInput(f"{field} must be at most {max_length} characters", field=field)
    if any(unicodedata.category(char) in _UNSTORABLE_CATEGORIES for char in value):
        raise InvalidInput(f"{field} must not contain control characters", field=field)
    return value


def check_reason(value: object) -> str | None:
    """A movement's free-text reason: absent, or storable text of at most 500 characters."""
    return _check_text(value, "reason", REASON_MAX_LENGTH)


def check_reference(value: object) -> str | None:
    """The outside document a change or hold belongs to (an order number, a URI): absent, or
    storable text of at most 200 characters."""
    return _check_text(value, "reference", REFERENCE_MAX_LENGTH)


def check_threshold(value: object) -> int | None:
    """low_stock_threshold: null, or an integer in 0..QTY_MAX (items)."""
    return None if value is None else check_qty(value, "low_stock_threshold")


def check_ttl(value: object) -> int:
    """A hold's time to live: a JSON integer of seconds in 1..604800 (7 days)."""
    ttl = _require_int(value, "ttl_seconds")
    if not 1 <= ttl <= HOLD_TTL_MAX_SECONDS:
        raise InvalidInput(f"ttl_seconds must be between 1 and {HOLD_TTL_MAX_SECONDS}", field="ttl_seconds")
    return ttl


def _check_lines(lines: list[dict], field: str, max_lines: int, check_line, unit: str) -> list[dict]:
    """1..max_lines lines, each naming an item id once, each checked by check_line(line),
    which returns the line as stored or raises InvalidInput naming its field. An error names
    the line as its position and its id: field "<field>.<position>.<line field>"."""
    if not 1 <= len(lines) <= max_lines:
        raise InvalidInput(f"{field} must hold 1 to {max_lines} {unit}", field=field)
    seen = set()
    checked = []
    for position, line in enumerate(lines):
        item_id = line["id"]
        if item_id in seen:
            # Two lines for one item would each be checked against the same stock.
            raise InvalidInput(
                f"item {item_id} appears more than once", field=f"{field}.{position}.id", item_id=item_id
            )
        seen.add(item_id)
        try:
            checked.append({"id": item_id, **check_line(line)})
        except InvalidInput as error:
            raise InvalidInput(
                error.message.replace(error.field, f"{field}.{position}.{error.field}", 1),
                field=f"{field}.{position}.{error.field}",
                item_id=item_id,
            ) from None
    return checked


def _hold_line(line: dict) -> dict:
    qty = _require_int(line["qty"], "qty")
    if not 1 <= qty <= QTY_MAX:
        raise InvalidInput(f"qty must be between 1 and {QTY_MAX}", field="qty")
    return {"qty": qty}


def check_hold_lines(lines: list[dict]) -> list[dict]:
    """A hold's lines: 1..100 lines {id, qty >= 1}, each id once."""
    return _check_lines(lines, "lines", HOLD_MAX_LINES, _hold_line, "lines")


def line_fits(available: int, qty: int, item_id=None) -> None:
    """A hold line takes at most what is available; raises NotEnoughStock."""
    if qty > available:
        raise NotEnoughStock(available=available, item_id=item_id)


def hold_state(stored: str, expires_at, now) -> str:
    """The state every reader sees: an active hold is expired from the instant now >= expires_at,
    whether or not any process has written so."""
    return EXPIRED if stored == ACTIVE and now >= expires_at else stored


def hold_action(state: str, action: str) -> tuple[str, bool]:
    """The hold state machine: (state after, whether anything changes), or HoldNotActive.
    Repeating the action that made the state is a no-op (commit a committed hold, release a
    released one); releasing an expired hold changes nothing; nothing leaves committed,
    released or expired."""
    if state == ACTIVE:
        return {COMMIT: COMMITTED, RELEASE: RELEASED, EXTEND: ACTIVE}[action], True
    if (state, action) in {(COMMITTED, COMMIT), (RELEASED, RELEASE), (EXPIRED, RELEASE)}:
        return state, False
    raise HoldNotActive(state=state)


def _change(change: dict) -> dict:
    expected = change.get("expected_qty")
    return {
        "delta": check_delta(change["delta"]),
        "expected_qty": None if expected is None else check_qty(expected, "expected_qty"),
    }


def check_changes(changes: list[dict]) -> list[dict]:
    """A batch: 1..1000 changes {id, delta, expected_qty?}, each id once."""
    return _check_lines(changes, "changes", BATCH_MAX_CHANGES, _change, "changes")


def validate_item(data: dict) -> dict:
    """Return the item's fields as stored, or raise InvalidInput naming the first bad field."""
    unknown = sorted(set(data) - ITEM_FIELDS - ITEM_OPTIONAL_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown field: {unknown[0]}", field=unknown[0])
    for field in sorted(ITEM_FIELDS - set(data)):
        raise InvalidInput(f"{field} is required", field=field)
    return {
        "name": normalize_name(data["name"]),
        "qty": check_qty(data["qty"]),
        "low_stock_threshold": check_threshold(data.get("low_stock_threshold")),
    }


def apply_delta(qty: int, delta: int, reserved: int = 0) -> int:
    """The quantity transition qty' = qty + delta, or the reason it is refused, in the
    contract's order: below 0, below reserved (held stock is released first), above the bound."""
    new_qty = qty + delta
    if new_qty < 0:
        raise QtyBelowZero()
    if new_qty < reserved:
        raise QtyBelowReserved(reserved=reserved)
    if new_qty > QTY_MAX:
        raise QtyAboveMax()
    return new_qty


def stock_alerts(
    available_before: int, threshold_before: int | None, available_after: int, threshold_after: int | None
) -> list[str]:
    """The stock alerts a change crossed, not merely ended in: item.low_stock when available
    goes from at or above the threshold (or no threshold) to below it, by a change of stock or
    of the threshold; item.out_of_stock when it reaches 0; item.back_in_stock when it rises
    from 0."""
    alerts = []
    was_low = threshold_before is not None and available_before < threshold_before
    is_low = threshold_after is not None and available_after < threshold_after
    if is_low and not was_low:
        alerts.append("item.low_stock")
    if available_before > 0 and available_after == 0:
        alerts.append("item.out_of_stock")
    if available_before == 0 and available_after > 0:
        alerts.append("item.back_in_stock")
    return alerts
