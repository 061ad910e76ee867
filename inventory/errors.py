"""The typed errors that services raise. api.py maps each to HTTP in one place."""


class InventoryError(Exception):
    """A rejected transition: the state is unchanged."""

    message = "invalid request"

    def __init__(self, message: str | None = None, *, field: str | None = None):
        self.message = message or self.message
        self.field = field
        super().__init__(self.message)


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


class TokenNameTaken(InventoryError):
    message = "an active token with this name already exists"
