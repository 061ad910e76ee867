"""The contract's state machine in plain Python: S' = f(S, input), no Django, no database.

The state is a State: the items, the holds and the time. It is never mutated: every
transition returns (new_state, status, body). body is what the response carries: the item,
the hold, {"items": [...]} for a batch, None for a 204. An error body is {"error": message}
plus the further fields the contract promises (the current qty of a stale compare-and-set,
the reserved of a delta below it, the item a batch or a hold names); message is None where
the contract leaves it free. A response may carry more fields than the model names.

An item is stored as {"id", "name", "qty", "low_stock_threshold"}; its `reserved` and
`available` are not stored but read from the holds at the state's time (item()), as the
contract defines them: what active holds that have not expired set aside. A hold is stored
with the state its last action gave it (active, committed or released); an active hold is
expired from the instant now >= expires_at (hold()), whatever happened since.

Names are checked by inventory.invariants.normalize_name (pure), so the model and the
service cannot disagree on what a name is. Every other rule is written out from the
contract instead, so it also checks the service's own copy of it.
"""

import dataclasses
import datetime
import re
import unicodedata

from inventory.errors import InvalidInput
from inventory.invariants import normalize_name

QTY_MAX = 9223372036854775807  # the contract's bound, 2**63 - 1
TTL_MAX = 604800  # a hold's time to live: 1 second to 7 days
TTL_DEFAULT = 900
HOLD_LINES_MAX = 100
BATCH_CHANGES_MAX = 1000
REFERENCE_MAX = 200

ABSENT = object()  # a field the request leaves out

INVALID = {"error": None}
NOT_FOUND = {"error": "not_found"}
BELOW_ZERO = {"error": "qty cannot go below 0"}
HAS_ACTIVE_HOLDS = {"error": "item has active holds"}
NOT_ENOUGH = "not enough available stock"
ACTIVE, COMMITTED, RELEASED, EXPIRED = "active", "committed", "released", "expired"

_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclasses.dataclass(frozen=True)
class State:
    items: dict  # id -> {"id", "name", "qty", "low_stock_threshold"}
    holds: dict  # id -> the hold as its last action left it, in creation order
    now: datetime.datetime


def empty(now: datetime.datetime) -> State:
    return State(items={}, holds={}, now=now)


def _with_items(state: State, **changed: dict) -> State:
    return dataclasses.replace(state, items={**state.items, **changed})


def _with_hold(state: State, hold: dict) -> State:
    return dataclasses.replace(state, holds={**state.holds, hold["id"]: hold})


# What a client reads.


def hold_state(state: State, hold_id: str) -> str:
    hold = state.holds[hold_id]
    if hold["state"] == ACTIVE and state.now >= hold["expires_at"]:
        return EXPIRED
    return hold["state"]


def reserved(state: State, item_id: str) -> int:
    """The sum of the item's lines in active holds that have not expired."""
    return sum(
        line["qty"]
        for hold_id, hold in state.holds.items()
        if hold_state(state, hold_id) == ACTIVE
        for line in hold["lines"]
        if line["id"] == item_id
    )


def item(state: State, item_id: str) -> dict:
    """GET /items/<id>: the item with its reserved and available stock now."""
    held = reserved(state, item_id)
    stored = state.items[item_id]
    return {**stored, "reserved": held, "available": stored["qty"] - held}


def listing(state: State) -> list[dict]:
    """GET /items: every item, by name in code-point order (Python's str order)."""
    return [item(state, item_id) for item_id in sorted(state.items, key=lambda i: state.items[i]["name"])]


def hold(state: State, hold_id: str) -> dict:
    """GET /holds/<id>: the hold, with its state as of now."""
    return {**state.holds[hold_id], "state": hold_state(state, hold_id)}


def item_holds(state: State, item_id: str):
    """GET /items/<id>/holds: the item's active holds, oldest first."""
    if item_id not in state.items:
        return state, 404, NOT_FOUND
    active = [
        hold(state, hold_id)
        for hold_id, stored in state.holds.items()
        if hold_state(state, hold_id) == ACTIVE and any(line["id"] == item_id for line in stored["lines"])
    ]
    return state, 200, {"holds": active, "next": None}


def get_hold(state: State, hold_id: str):
    if hold_id not in state.holds:
        return state, 404, NOT_FOUND
    return state, 200, hold(state, hold_id)


# Input rules, written out from the contract.


def _name(value: object) -> str | None:
    """The name as stored, or None if the contract rejects it."""
    try:
        return normalize_name(value)
    except InvalidInput:
        return None


def _is_int(value: object) -> bool:
    return type(value) is int  # JSON true arrives as bool, a subclass of int


def _is_qty(value: object) -> bool:
    return _is_int(value) and 0 <= value <= QTY_MAX


def _is_threshold(value: object) -> bool:
    return value is None or _is_qty(value)


def _is_delta(value: object) -> bool:
    # A delta no valid qty can absorb is invalid input, like a non-integer one.
    return _is_int(value) and -QTY_MAX <= value <= QTY_MAX


def _is_ttl(value: object) -> bool:
    return _is_int(value) and 1 <= value <= TTL_MAX


def _is_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _is_reference(value: object) -> bool:
    return value is None or (
        isinstance(value, str)
        and len(value) <= REFERENCE_MAX
        and not any(unicodedata.category(char) in {"Cc", "Cs"} for char in value)
    )


def _fields(value: object, required: set, optional: set = frozenset()) -> bool:
    """A JSON object with the required fields and no unknown one."""
    return isinstance(value, dict) and required <= set(value) <= required | optional


def _unique_ids(lines: list) -> bool:
    ids = [line["id"].lower() for line in lines]
    return len(set(ids)) == len(ids)


def _taken(state: State, name: str, by: str | None = None) -> bool:
    return any(stored["name"] == name for item_id, stored in state.items.items() if item_id != by)


# Items. Input is checked before the id is looked up: an invalid body is a 400 even for an
# unknown id. The contract does not rank the two; the API checks the body first.


def create(state: State, name: object, qty: object, new_id: str, low_stock_threshold: object = ABSENT):
    """new_id is the server's choice: the caller passes the one its response carries."""
    name = _name(name)
    threshold = None if low_stock_threshold is ABSENT else low_stock_threshold
    if name is None or not _is_qty(qty) or not _is_threshold(threshold) or _taken(state, name):
        return state, 400, INVALID
    state = _with_items(
        state, **{new_id: {"id": new_id, "name": name, "qty": qty, "low_stock_threshold": threshold}}
    )
    return state, 201, item(state, new_id)


def update(state: State, item_id: str, name: object = ABSENT, low_stock_threshold: object = ABSENT):
    """PATCH /items/<id>: name and/or low_stock_threshold, at least one."""
    changes = {}
    if name is not ABSENT:
        changes["name"] = _name(name)
        if changes["name"] is None:
            return state, 400, INVALID
    if low_stock_threshold is not ABSENT:
        if not _is_threshold(low_stock_threshold):
            return state, 400, INVALID
        changes["low_stock_threshold"] = low_stock_threshold
    if not changes:
        return state, 400, INVALID
    if item_id not in state.items:
        return state, 404, NOT_FOUND
    if "name" in changes and _taken(state, changes["name"], by=item_id):  # its own name is no duplicate
        return state, 400, INVALID
    state = _with_items(state, **{item_id: {**state.items[item_id], **changes}})
    return state, 200, item(state, item_id)


def delete(state: State, item_id: str):
    if item_id in state.items and reserved(state, item_id) > 0:  # every line holds at least 1
        return state, 409, HAS_ACTIVE_HOLDS
    items = {key: stored for key, stored in state.items.items() if key != item_id}
    return dataclasses.replace(state, items=items), 204, None


# The refusals of a change of qty, in the contract's order: the first that applies is given.
_MISSING, _STALE, _BELOW_ZERO, _BELOW_RESERVED, _ABOVE = range(5)


def _refusal(state: State, item_id: str, delta: int, expected_qty: object):
    """(rank, status, body) of the first refusal of one change, or None if it applies."""
    if item_id not in state.items:
        return _MISSING, 404, NOT_FOUND
    qty = state.items[item_id]["qty"]
    if expected_qty is not ABSENT and expected_qty != qty:
        return _STALE, 409, {"error": None, "qty": qty}
    held = reserved(state, item_id)
    if qty + delta < 0:
        return _BELOW_ZERO, 400, BELOW_ZERO
    if qty + delta < held:
        return _BELOW_RESERVED, 400, {"error": "qty cannot go below reserved", "reserved": held}
    if qty + delta > QTY_MAX:
        return _ABOVE, 400, INVALID
    return None


def adjust(state: State, item_id: str, delta: object, expected_qty: object = ABSENT):
    """PATCH /items/<id>/qty."""
    if not _is_delta(delta) or not (expected_qty is ABSENT or _is_qty(expected_qty)):
        return state, 400, INVALID
    refusal = _refusal(state, item_id, delta, expected_qty)
    if refusal is not None:
        _, status, body = refusal
        return state, status, body
    state = _with_items(
        state, **{item_id: {**state.items[item_id], "qty": state.items[item_id]["qty"] + delta}}
    )
    return state, 200, item(state, item_id)


def _valid_change(change: object) -> bool:
    return (
        _fields(change, {"id", "delta"}, {"expected_qty"})
        and _is_id(change["id"])
        and _is_delta(change["delta"])
        and _is_qty(change.get("expected_qty", 0))
    )


def batch(state: State, changes: object):
    """POST /adjustments: every change or none. When several changes are refused, the refusal
    given is the first in the contract's order (404, stale, below 0, below reserved, above the
    bound), and it names the first change in id order that is refused so."""
    if (
        not isinstance(changes, list)
        or not 1 <= len(changes) <= BATCH_CHANGES_MAX
        or not all(_valid_change(change) for change in changes)
        or not _unique_ids(changes)
    ):
        return state, 400, INVALID
    changes = [{**change, "id": change["id"].lower()} for change in changes]
    refusals = [
        (refusal[0], change["id"], refusal[1:])
        for change in changes
        if (refusal := _refusal(state, change["id"], change["delta"], change.get("expected_qty", ABSENT)))
    ]
    if refusals:
        _, item_id, (status, body) = min(refusals, key=lambda refusal: refusal[:2])
        return state, status, {**body, "id": item_id}
    for change in changes:
        stored = state.items[change["id"]]
        state = _with_items(state, **{change["id"]: {**stored, "qty": stored["qty"] + change["delta"]}})
    return state, 200, {"items": [item(state, change["id"]) for change in changes]}


# Holds.


def _valid_line(line: object) -> bool:
    return (
        _fields(line, {"id", "qty"})
        and _is_id(line["id"])
        and _is_int(line["qty"])
        and 1 <= line["qty"] <= QTY_MAX
    )


def hold_create(
    state: State,
    lines: object,
    new_id: str,
    *,
    ttl_seconds: object = ABSENT,
    reference: object = ABSENT,
    actor: str,
):
    """POST /holds: every line or none. 400 for invalid input; then 404 if an item is missing;
    then 409 if a line asks for more than its item's available stock. The 404 and the 409 name
    the first such line in id order."""
    ttl = TTL_DEFAULT if ttl_seconds is ABSENT else ttl_seconds
    reference = None if reference is ABSENT else reference
    if (
        not isinstance(lines, list)
        or not 1 <= len(lines) <= HOLD_LINES_MAX
        or not all(_valid_line(line) for line in lines)
        or not _unique_ids(lines)
        or not _is_ttl(ttl)
        or not _is_reference(reference)
    ):
        return state, 400, INVALID
    lines = [{"id": line["id"].lower(), "qty": line["qty"]} for line in lines]
    in_id_order = sorted(lines, key=lambda line: line["id"])  # lower-case text sorts as the UUIDs do
    for line in in_id_order:
        if line["id"] not in state.items:
            return state, 404, {**NOT_FOUND, "id": line["id"]}
    for line in in_id_order:
        available = item(state, line["id"])["available"]
        if line["qty"] > available:
            return state, 409, {"error": NOT_ENOUGH, "id": line["id"], "available": available}
    new = {
        "id": new_id,
        "state": ACTIVE,
        "lines": lines,  # in the request's order
        "reference": reference,
        "expires_at": state.now + datetime.timedelta(seconds=ttl),
        "created_at": state.now,
        "actor": actor,
    }
    state = _with_hold(state, new)
    return state, 201, hold(state, new_id)


def _not_active(state: State, hold_id: str):
    return state, 409, {"error": f"hold is {hold_state(state, hold_id)}"}


def hold_commit(state: State, hold_id: str):
    """Each line's qty leaves its item (qty and reserved both fall by it), once."""
    if hold_id not in state.holds:
        return state, 404, NOT_FOUND
    current = hold_state(state, hold_id)
    if current in {EXPIRED, RELEASED}:
        return _not_active(state, hold_id)
    if current == ACTIVE:
        for line in state.holds[hold_id]["lines"]:
            stored = state.items[line["id"]]  # an item with an active hold cannot be deleted
            state = _with_items(state, **{line["id"]: {**stored, "qty": stored["qty"] - line["qty"]}})
        state = _with_hold(state, {**state.holds[hold_id], "state": COMMITTED})
    return state, 200, hold(state, hold_id)


def hold_release(state: State, hold_id: str):
    """Gives the held stock back; a released or expired hold stays as it is."""
    if hold_id not in state.holds:
        return state, 404, NOT_FOUND
    current = hold_state(state, hold_id)
    if current == COMMITTED:
        return _not_active(state, hold_id)
    if current == ACTIVE:
        state = _with_hold(state, {**state.holds[hold_id], "state": RELEASED})
    return state, 200, hold(state, hold_id)


def hold_extend(state: State, hold_id: str, ttl_seconds: object):
    """expires_at = now + ttl, for an active hold only."""
    if not _is_ttl(ttl_seconds):
        return state, 400, INVALID
    if hold_id not in state.holds:
        return state, 404, NOT_FOUND
    if hold_state(state, hold_id) != ACTIVE:
        return _not_active(state, hold_id)
    expires_at = state.now + datetime.timedelta(seconds=ttl_seconds)
    state = _with_hold(state, {**state.holds[hold_id], "expires_at": expires_at})
    return state, 200, hold(state, hold_id)


def advance(state: State, by: datetime.timedelta) -> State:
    """Time passes: holds whose expires_at it reaches stop reserving, with no request made."""
    return dataclasses.replace(state, now=state.now + by)
