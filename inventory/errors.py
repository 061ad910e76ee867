"""The typed errors that services raise. inventory/http/errors.py maps each to HTTP in one place."""


class InventoryError(Exception):
    """A rejected transition: the state is unchanged."""

    message = "invalid request"

    def __init__(self, message: str | None = None, *, field: str | None = None, item_id=None):
        self.message = message or self.message
        self.field = field
        self.item_id = item_id  # in a batch, the item whose change was refused
        super().__init__(self.message)

    def details(self) -> dict:
        """Further fields of the error's JSON body (the current qty of a stale compare-and-set)."""
        return {}


class InvalidInput(InventoryError):
    """The input breaks an invariant of the contract."""


class DuplicateName(InvalidInput):
    message = "an item with this name already exists"


class QtyBelowZero(InvalidInput):
    message = "qty cannot go below 0"


class QtyBelowReserved(InvalidInput):
    """A delta would leave less on hand than active holds set aside."""

    message = "qty cannot go below reserved"

    def __init__(self, *, reserved: int, item_id=None):
        super().__init__(item_id=item_id)
        self.reserved = reserved

    def details(self) -> dict:
        return {"reserved": self.reserved}


class QtyAboveMax(InvalidInput):
    message = "qty cannot go above 9223372036854775807"


class InvalidCursor(InvalidInput):
    message = "cursor is not one this service issued"


class CursorExpired(InventoryError):
    """Events after the feed cursor were pruned (410): read again from the oldest kept."""

    message = "cursor expired"


class ItemNotFound(InventoryError):
    """An item a batch names does not exist (a single-item service returns None instead)."""

    message = "not_found"


class StaleQty(InventoryError):
    """expected_qty was given and is not the current qty: someone moved the stock."""

    message = "qty is not expected_qty"

    def __init__(self, *, qty: int, item_id=None):
        super().__init__(field="expected_qty", item_id=item_id)
        self.qty = qty

    def details(self) -> dict:
        return {"qty": self.qty}


class Conflict(InventoryError):
    """The request is valid but the current state refuses it (409)."""


class NotEnoughStock(Conflict):
    """A hold line asks for more than the item's available stock."""

    message = "not enough available stock"

    def __init__(self, *, available: int, item_id=None):
        super().__init__(item_id=item_id)
        self.available = available

    def details(self) -> dict:
        return {"available": self.available}


class HoldNotActive(Conflict):
    """The action needs an active hold (or, for commit and release, one in their own end state)."""

    def __init__(self, *, state: str):
        super().__init__(f"hold is {state}")
        self.state = state


class ItemHasActiveHolds(Conflict):
    message = "item has active holds"


class IdempotencyKeyInUse(InventoryError):
    message = "a request with this Idempotency-Key is still running"


class IdempotencyKeyReused(InventoryError):
    message = "this Idempotency-Key was used for a different request"


class TokenNameTaken(InventoryError):
    message = "an active token with this name already exists"


class WebhookUrlRefused(InvalidInput):
    """A webhook URL the service will not call: not https, malformed, or a host that resolves
    to an address that is not public (loopback, private, link-local, ...)."""

    message = "url is refused"

    def __init__(self, message: str | None = None):
        super().__init__(message, field="url")


class TooManyWebhooks(InvalidInput):
    """At most WEBHOOKS_MAX webhooks exist at once."""

    message = "at most 100 webhooks may exist; delete one first"


# The contract's order of refusals ("Errors"): when several lines of a batch or a hold are
# refused, the first kind in this order is given, for the first such line in id order.
REFUSAL_ORDER = (ItemNotFound, StaleQty, QtyBelowZero, QtyBelowReserved, QtyAboveMax, NotEnoughStock)


def first_refusal(refusals: list[InventoryError]) -> InventoryError:
    """The refusal to give among several lines' (each with its item_id)."""

    def rank(exc: InventoryError) -> tuple[int, str]:
        kind = next((n for n, cls in enumerate(REFUSAL_ORDER) if isinstance(exc, cls)), len(REFUSAL_ORDER))
        return kind, str(exc.item_id)

    return min(refusals, key=rank)
