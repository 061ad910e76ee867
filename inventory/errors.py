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


class QtyAboveMax(InvalidInput):
    message = "qty cannot go above 9223372036854775807"


class InvalidCursor(InvalidInput):
    message = "cursor is not one this service issued"


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


class IdempotencyKeyInUse(InventoryError):
    message = "a request with this Idempotency-Key is still running"


class IdempotencyKeyReused(InventoryError):
    message = "this Idempotency-Key was used for a different request"


class TokenNameTaken(InventoryError):
    message = "an active token with this name already exists"
