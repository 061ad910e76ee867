"""The contract's state machine in plain Python: S' = f(S, input), no Django, no database.

The state is a dict id -> {"id", "name", "qty"} and is never mutated: every transition
returns (new_state, status, body). body is the item on success, None for a 204, and for
an error {"error": message}, where message is None when the contract leaves it free.

Names are checked by inventory.invariants.normalize_name (pure), so the model and the
service cannot disagree on what a name is. The qty rules are written out from the
contract instead, so they also check the service's own copy of them.
"""

from inventory.errors import InvalidInput
from inventory.invariants import normalize_name

QTY_MAX = 9223372036854775807  # the contract's bound, 2**63 - 1

INVALID = {"error": None}
NOT_FOUND = {"error": "not_found"}
BELOW_ZERO = {"error": "qty cannot go below 0"}


def _name(value: object) -> str | None:
    """The name as stored, or None if the contract rejects it."""
    try:
        return normalize_name(value)
    except InvalidInput:
        return None


def _is_int(value: object) -> bool:
    return type(value) is int  # JSON true arrives as bool, a subclass of int


def _taken(state: dict, name: str, by: str | None = None) -> bool:
    return any(item["name"] == name for item_id, item in state.items() if item_id != by)


def listing(state: dict) -> list[dict]:
    """GET /items: every item, by name in code-point order (Python's str order)."""
    return sorted(state.values(), key=lambda item: item["name"])


# Input is checked before the id is looked up: an invalid body is a 400 even for an
# unknown id. The contract does not rank the two; the API checks the body first.


def create(state: dict, name: object, qty: object, new_id: str):
    """new_id is the server's choice: the caller passes the one its response carries."""
    name = _name(name)
    if name is None or not _is_int(qty) or not 0 <= qty <= QTY_MAX or _taken(state, name):
        return state, 400, INVALID
    item = {"id": new_id, "name": name, "qty": qty}
    return {**state, new_id: item}, 201, item


def rename(state: dict, item_id: str, name: object):
    name = _name(name)
    if name is None:
        return state, 400, INVALID
    if item_id not in state:
        return state, 404, NOT_FOUND
    if _taken(state, name, by=item_id):  # its own current name is not a duplicate
        return state, 400, INVALID
    item = {**state[item_id], "name": name}
    return {**state, item_id: item}, 200, item


def delete(state: dict, item_id: str):
    return {key: item for key, item in state.items() if key != item_id}, 204, None


def adjust(state: dict, item_id: str, delta: object):
    # A delta no valid qty can absorb is invalid input, like a non-integer one.
    if not _is_int(delta) or not -QTY_MAX <= delta <= QTY_MAX:
        return state, 400, INVALID
    if item_id not in state:
        return state, 404, NOT_FOUND
    qty = state[item_id]["qty"] + delta
    if qty < 0:
        return state, 400, BELOW_ZERO
    if qty > QTY_MAX:
        return state, 400, INVALID
    item = {**state[item_id], "qty": qty}
    return {**state, item_id: item}, 200, item
